//! `wire::form::decode` with the default limits: never panics, and what it
//! accepts stays within those limits and survives an encode/decode round
//! trip unchanged (every decoded tree is in the encoder's image).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::form::{self, FormMap, FormValue, Limits};

/// Checks every node under `map` against `limits`; `depth` counts the
/// bracket segments above it (a top-level field is at 0).
fn within(map: &FormMap, limits: &Limits, depth: usize, leaves: &mut usize) {
    assert!(depth <= limits.max_depth, "nested past max_depth");
    for (key, value) in map.iter() {
        assert!(
            key.len() <= limits.max_key_len,
            "key longer than max_key_len"
        );
        value_within(value, limits, depth, leaves);
    }
}

fn value_within(value: &FormValue, limits: &Limits, depth: usize, leaves: &mut usize) {
    match value {
        FormValue::Text(s) => {
            assert!(
                s.len() <= limits.max_value_len,
                "value longer than max_value_len"
            );
            *leaves += 1;
        }
        FormValue::List(items) => {
            assert!(!items.is_empty(), "decode made an empty list");
            for v in items {
                assert!(depth < limits.max_depth, "nested past max_depth");
                value_within(v, limits, depth + 1, leaves);
            }
        }
        FormValue::Map(m) => {
            assert!(!m.is_empty(), "decode made an empty map");
            within(m, limits, depth + 1, leaves);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    match form::decode(data, &limits) {
        Ok(tree) => {
            let mut leaves = 0;
            within(&tree, &limits, 0, &mut leaves);
            assert!(leaves <= limits.max_keys, "more leaves than max_keys");
            // Re-encoding spells brackets as `%5B…%5D`, so keys grow: only
            // the key length limit is lifted for the second decode.
            let generous = Limits {
                max_key_len: usize::MAX,
                ..Limits::default()
            };
            let again = form::decode(form::encode(&tree).as_bytes(), &generous);
            assert_eq!(again.as_ref(), Ok(&tree), "round trip changed the tree");
            let _ = tree.canonical_json();
        }
        Err(e) => {
            // Error messages name a key, cut short; building one must not
            // panic either.
            let _ = e.to_string();
        }
    }
});
