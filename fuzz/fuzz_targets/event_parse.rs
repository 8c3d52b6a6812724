//! `wire::Event::parse` with the default limits: never panics; an accepted
//! event is internally consistent and its secrets redact themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{Event, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(e) = Event::parse(data, &limits) else {
        return;
    };
    // Decoded within the limits: at most one field per pair of the body.
    assert!(e.raw().len() <= limits.max_keys);
    let name = e.name.as_str();
    assert!(!name.is_empty() && name.len() <= 64);
    assert_eq!(
        name,
        name.to_ascii_uppercase(),
        "event name not upper-cased"
    );
    // The typed view is a function of the decoded form.
    let again = Event::from_form(e.raw().clone()).expect("re-checking the decoded form");
    assert_eq!(again.name, e.name);
    assert_eq!(again.ts, e.ts);
    assert_eq!(again.auth, e.auth);
    assert_eq!(again.data, e.data);
    assert_eq!(again.canonical_data(), e.canonical_data());
    let _ = format!("{e:?}");
    if let Some(t) = &e.auth.application_token {
        assert!(!format!("{t:?}{t}").contains(t.expose_secret()));
    }
    if let Some(u) = &e.auth.user {
        let t = &u.access_token;
        assert!(!format!("{t:?}{t}").contains(t.expose_secret()));
        if let Some(r) = &u.refresh_token {
            assert!(!format!("{r:?}{r}").contains(r.expose_secret()));
        }
    }
});
