//! `wire::AppPagePost::parse` with the default limits: never panics; an
//! accepted post has a placement code and redacting secrets. The first
//! input byte says where the query string ends and the body begins.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{AppPagePost, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (query, body) = rest.split_at(usize::from(split).min(rest.len()));
    let Ok(p) = AppPagePost::parse(query, body, &Limits::default()) else {
        return;
    };
    assert!(p.placement.len() <= 128);
    assert!(
        p.placement
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    );
    let _ = p.client_endpoint();
    let _ = format!("{p:?}");
    let t = &p.access_token;
    assert!(!format!("{t:?}{t}").contains(t.expose_secret()));
    let r = &p.refresh_token;
    assert!(!format!("{r:?}{r}").contains(r.expose_secret()));
    if let Some(a) = &p.application_token {
        assert!(!format!("{a:?}{a}").contains(a.expose_secret()));
    }
});
