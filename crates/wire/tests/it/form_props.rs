use proptest::prelude::*;
use wire::form::{self, FormMap, FormValue, Limits};

/// Keys that survive form encoding unchanged: non-empty (an empty nested key
/// means "append"), no `[`/`]` (brackets are syntax once decoded), and not a
/// PHP integer (a map keyed `0..n` comes back as a list) — hence the
/// non-digit first character. Includes characters that need escaping.
fn key() -> impl Strategy<Value = String> {
    "[a-zA-Z_ .%&=+~é-][a-zA-Z0-9_ .%&=+~é#/-]{0,7}"
}

/// Trees without empty lists or maps: those produce no pairs at all in form
/// encoding (as in PHP) and so cannot come back.
fn tree() -> impl Strategy<Value = FormValue> {
    let leaf = any::<String>().prop_map(FormValue::Text);
    leaf.prop_recursive(5, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(FormValue::List),
            prop::collection::vec((key(), inner), 1..4)
                .prop_map(|entries| FormValue::Map(entries.into_iter().collect())),
        ]
    })
}

fn root() -> impl Strategy<Value = FormMap> {
    prop::collection::vec((key(), tree()), 0..6).prop_map(|e| e.into_iter().collect())
}

/// Bodies made of form syntax, more likely than random bytes to reach the
/// bracket and escape code paths.
fn formish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        "[a-c0-9\\[\\]%&=+5BbDd]{0,80}".prop_map(String::into_bytes),
        prop::collection::vec(
            prop_oneof![
                Just(&b"["[..]),
                Just(&b"]"[..]),
                Just(&b"%5B"[..]),
                Just(&b"%5d"[..]),
                Just(&b"[]"[..]),
                Just(&b"="[..]),
                Just(&b"&"[..]),
                Just(&b"%"[..]),
                Just(&b"a"[..]),
                Just(&b"0"[..]),
                Just(&b"9223372036854775807"[..]),
                Just(&b"\xff"[..]),
            ],
            0..40
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn generous() -> Limits {
    Limits {
        max_key_len: usize::MAX,
        ..Limits::default()
    }
}

proptest! {
    #[test]
    fn decode_inverts_encode(tree in root()) {
        let body = form::encode(&tree);
        let back = form::decode(body.as_bytes(), &generous());
        prop_assert_eq!(back, Ok(tree));
    }

    #[test]
    fn decode_never_panics_and_its_trees_are_stable(body in formish()) {
        // Every decoded tree is in the encoder's image: re-encoding and
        // decoding again changes nothing.
        if let Ok(tree) = form::decode(&body, &Limits::default()) {
            let again = form::decode(form::encode(&tree).as_bytes(), &generous());
            prop_assert_eq!(again, Ok(tree));
        }
    }

    #[test]
    fn encoded_bodies_use_only_http_build_query_characters(tree in root()) {
        let body = form::encode(&tree);
        prop_assert!(body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.%+=&".contains(&b)));
        prop_assert!(!body.contains('[') && !body.contains(']'));
    }
}
