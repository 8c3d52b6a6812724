//! Hostile bodies: each must end in a typed error (or a bounded success)
//! quickly, never a panic or an unbounded allocation.

use std::time::{Duration, Instant};

use wire::form::{self, FormError, Limits};
use wire::{Event, EventError};

/// Generous even for a debug build on a loaded 2-core machine; a quadratic
/// or exponential path would blow through it by orders of magnitude.
const BOUND: Duration = Duration::from_secs(10);

fn timed<T>(f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    assert!(start.elapsed() < BOUND, "took {:?}", start.elapsed());
    out
}

#[test]
fn deep_nesting_is_refused() {
    let body = format!("a{}=x", "[]".repeat(100_000));
    let err = timed(|| form::decode(body.as_bytes(), &Limits::default())).unwrap_err();
    // With the default key length limit the key is refused before parsing…
    assert!(
        matches!(err, FormError::KeyTooLong { limit: 1024, .. }),
        "{err:?}"
    );
    // …and without it, the depth limit stops at segment 17.
    let no_key_limit = Limits {
        max_key_len: usize::MAX,
        ..Limits::default()
    };
    let err = timed(|| form::decode(body.as_bytes(), &no_key_limit)).unwrap_err();
    let FormError::TooDeep { key, limit } = err else {
        panic!("{err:?}")
    };
    assert_eq!(limit, 16);
    assert!(key.len() <= form::KEY_SHOWN + '…'.len_utf8());
    assert!(key.starts_with("a[][]"));
    // Encoded brackets count the same.
    let body = format!("a{}=x", "%5B%5D".repeat(17));
    assert!(matches!(
        form::decode(body.as_bytes(), &Limits::default()),
        Err(FormError::TooDeep { .. })
    ));
    let body = format!("a{}=x", "%5b%5d".repeat(16));
    assert!(form::decode(body.as_bytes(), &Limits::default()).is_ok());
}

#[test]
fn a_hundred_thousand_keys_are_refused_at_the_limit() {
    let body: String = (0..100_000).map(|i| format!("k{i}=v&")).collect();
    let err = timed(|| form::decode(body.as_bytes(), &Limits::default())).unwrap_err();
    assert_eq!(
        err,
        FormError::TooManyKeys {
            key: "k10000".into(),
            limit: 10_000
        }
    );
}

#[test]
fn a_hundred_thousand_siblings_decode_in_linear_time_when_allowed() {
    let wide = Limits {
        max_keys: 200_000,
        ..Limits::default()
    };
    let body: String = (0..100_000).map(|i| format!("a[k{i}]=v&a[]=w&")).collect();
    let tree = timed(|| form::decode(body.as_bytes(), &wide)).unwrap();
    let a = tree.get("a").and_then(|a| a.as_map()).unwrap();
    assert_eq!(a.len(), 200_000);
    assert_eq!(a.get_text("k99999"), Some("v"));
    assert_eq!(a.get_text("99999"), Some("w"));
    // Repeating one key 100k times keeps one entry.
    let body = "a[x]=1&".repeat(100_000);
    let tree = timed(|| form::decode(body.as_bytes(), &wide)).unwrap();
    assert_eq!(
        tree.get("a").and_then(|a| a.as_map()).map(|m| m.len()),
        Some(1)
    );
}

#[test]
fn invalid_utf8_is_a_typed_error() {
    for body in [
        &b"a=\xff\xfe"[..],
        b"a=%C3%28",
        b"a%C3=1",
        b"\xc3=1",
        b"a=%ED%A0%80",
    ] {
        let err = form::decode(body, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, FormError::InvalidUtf8 { .. }),
            "{body:?}: {err:?}"
        );
    }
}

#[test]
fn lone_percent_is_a_typed_error() {
    for body in ["a=%", "a=%4", "a=%G1", "%=1", "a[%]=1", "a=x%", "a=%%41"] {
        let err = form::decode(body.as_bytes(), &Limits::default()).unwrap_err();
        assert!(
            matches!(err, FormError::BadEscape { .. }),
            "{body}: {err:?}"
        );
    }
}

#[test]
fn huge_indexes_stay_map_keys() {
    let tree = timed(|| form::decode(b"a[99999999]=x&a[]=y", &Limits::default())).unwrap();
    let a = tree.get("a").and_then(|a| a.as_map()).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), ["99999999", "100000000"]);
    let tree = form::decode(b"a[99999999999999999999999999]=x&a[]=y", &Limits::default()).unwrap();
    let a = tree.get("a").and_then(|a| a.as_map()).unwrap();
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        ["99999999999999999999999999", "0"]
    );
    assert!(matches!(
        form::decode(b"a[9223372036854775807]=x&a[]=y", &Limits::default()),
        Err(FormError::IndexOverflow { .. })
    ));
}

#[test]
fn huge_values_are_refused_without_decoding_them() {
    let big = format!("v={}", "x".repeat((1 << 20) + 1));
    let err = timed(|| form::decode(big.as_bytes(), &Limits::default())).unwrap_err();
    assert_eq!(
        err,
        FormError::ValueTooLong {
            key: "v".into(),
            limit: 1 << 20
        }
    );
    assert!(!err.to_string().contains("xxx"));
    let escaped = format!("v={}", "%41".repeat((1 << 20) + 1));
    assert!(matches!(
        timed(|| form::decode(escaped.as_bytes(), &Limits::default())),
        Err(FormError::ValueTooLong { .. })
    ));
    let exactly = format!("v={}", "x".repeat(1 << 20));
    assert!(form::decode(exactly.as_bytes(), &Limits::default()).is_ok());
}

#[test]
fn event_parse_surfaces_form_errors() {
    let deep = format!("event=ONX&ts=1&data{}=x", "[a]".repeat(20));
    for body in [deep.as_bytes(), b"event=ONX&ts=%", b"event=\xff"] {
        let err = Event::parse(body, &Limits::default()).unwrap_err();
        assert!(matches!(err, EventError::Form(_)), "{err:?}");
    }
}
