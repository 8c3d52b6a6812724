//! event.bind/unbind/get/test and online entity events, compared field by field with
//! the reference tables (§2.2–§2.4).

use b24emu::{ChangeSpec, PortalSpec};
use serde_json::json;

use crate::common::*;

const USER_AUTH: &[&str] = &[
    "access_token",
    "application_token",
    "client_endpoint",
    "domain",
    "expires",
    "expires_in",
    "member_id",
    "scope",
    "server_endpoint",
    "status",
    "user_id",
];
const SYSTEM_AUTH: &[&str] = &[
    "application_token",
    "client_endpoint",
    "domain",
    "member_id",
    "server_endpoint",
];

#[tokio::test]
async fn duplicate_bind_is_handler_already_binded() {
    let emu = emu().await;
    let s = setup(&emu, "dup", crm_app(), PortalSpec::default());
    let p = json!({"event": "onCrmDealAdd", "handler": "https://app.example.com/h"});
    assert_eq!(
        ok(&s.endpoint, &s.token, "event.bind", p.clone()).await,
        json!(true)
    );
    let (st, v) = call(&s.endpoint, &s.token, "event.bind", p).await;
    assert_eq!(st, 400);
    assert_eq!(
        v,
        json!({"error": "ERROR_CORE", "error_description": "Unable to set event handler: Handler already binded"})
    );
    let got = ok(&s.endpoint, &s.token, "event.get", json!({})).await;
    assert_eq!(
        got,
        json!([{"event": "ONCRMDEALADD", "handler": "https://app.example.com/h", "auth_type": "0", "offline": 0}])
    );
}

#[tokio::test]
async fn bind_validates_event_handler_and_scope() {
    let emu = emu().await;
    let s = setup(&emu, "val", crm_app(), PortalSpec::default());
    let cases = [
        (
            json!({"handler": "https://a.example/x"}),
            400,
            "ERROR_ARGUMENT",
        ),
        (
            json!({"event": "ONCRMDEALADD", "handler": "http://localhost/x"}),
            400,
            "ERROR_WRONG_HANDLER_URL",
        ),
        (
            json!({"event": "ONCRMDEALADD", "handler": "ftp://a.example/x"}),
            400,
            "ERROR_UNSUPPORTED_PROTOCOL",
        ),
        (
            json!({"event": "ONTASKADD", "handler": "https://a.example/x"}),
            400,
            "ERROR_EVENT_NOT_FOUND",
        ),
        (
            json!({"event": "ONNOSUCHEVENT", "handler": "https://a.example/x"}),
            400,
            "ERROR_EVENT_NOT_FOUND",
        ),
        (json!({"event": "ONCRMDEALADD"}), 400, "ERROR_ARGUMENT"),
        (
            json!({"event": "ONOFFLINEEVENT", "event_type": "offline"}),
            400,
            "ERROR_ARGUMENT",
        ),
        (
            json!({"event": "ONCRMDEALADD", "event_type": "offline", "auth_connector": "x"}),
            403,
            "WRONG_LICENSE",
        ),
    ];
    for (p, st, code) in cases {
        let (s2, v) = call(&s.endpoint, &s.token, "event.bind", p.clone()).await;
        assert_eq!((s2, v["error"].as_str()), (st, Some(code)), "{p}");
        assert!(v.get("time").is_none(), "errors have no time block");
    }
    let (_, v) = call(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"handler": "https://a.example/x"}),
    )
    .await;
    assert_eq!(
        v,
        json!({"error": "ERROR_ARGUMENT", "error_description": "Argument 'EVENT' is null or empty", "argument": "EVENT"})
    );
}

#[tokio::test]
async fn unbind_counts_and_events_lists_scoped_names() {
    let emu = emu().await;
    let s = setup(&emu, "unb", crm_app(), PortalSpec::default());
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONCRMDEALADD", "handler": "https://a.example/1"}),
    )
    .await;
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONCRMDEALADD", "handler": "https://a.example/1", "auth_type": 1}),
    )
    .await;
    let r = ok(
        &s.endpoint,
        &s.token,
        "event.unbind",
        json!({"event": "ONCRMDEALADD", "handler": "https://a.example/1"}),
    )
    .await;
    assert_eq!(
        r,
        json!({"count": 1}),
        "auth_type 0 only matches bindings without a user"
    );
    let r = ok(
        &s.endpoint,
        &s.token,
        "event.unbind",
        json!({"event": "ONCRMDEALADD", "handler": "https://a.example/1", "auth_type": 1}),
    )
    .await;
    assert_eq!(r, json!({"count": 1}));
    let names = ok(&s.endpoint, &s.token, "events", json!({})).await;
    let names: Vec<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for g in [
        "ONAPPUNINSTALL",
        "ONAPPINSTALL",
        "ONAPPUPDATE",
        "ONAPPPAYMENT",
        "ONAPPTEST",
        "ONAPPMETHODCONFIRM",
        "ONOFFLINEEVENT",
        "ONCRMDEALADD",
    ] {
        assert!(names.contains(&g), "{g}");
    }
    assert!(!names.contains(&"ONTASKADD"), "not in the app's scopes");
    let global = ok(&s.endpoint, &s.token, "events", json!({"SCOPE": ""})).await;
    assert_eq!(global.as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn entity_events_match_the_reference_tables_for_user_and_system_changes() {
    let emu = emu().await;
    let rx = Receiver::start().await;
    let s = setup(&emu, "ent", crm_app(), PortalSpec::default());
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONCRMDEALADD", "handler": rx.url("/deal")}),
    )
    .await;
    let (st, ch) = control(
        &emu,
        &format!("/portals/{}/changes", s.member_id),
        json!({"entity": "deal", "action": "add", "count": 1, "user_id": 1}),
    )
    .await;
    assert_eq!(st, 200);
    let id = ch["ids"][0].as_u64().unwrap();
    let hit = rx.wait("/deal", 1).await.remove(0);
    assert!(
        hit.body.starts_with("event=ONCRMDEALADD&event_handler_id="),
        "field order §2.5: {}",
        hit.body
    );
    assert!(
        hit.body
            .contains(&format!("data%5BFIELDS%5D%5BID%5D={id}&ts="))
    );
    let f = hit.form();
    let top: Vec<&str> = {
        let mut t: Vec<&str> = f.keys().map(|k| k.split('[').next().unwrap()).collect();
        t.dedup();
        t
    };
    assert_eq!(top, ["auth", "data", "event", "event_handler_id", "ts"]);
    assert_eq!(sub_keys(&f, "data"), ["FIELDS"]);
    assert_eq!(f["data[FIELDS][ID]"], id.to_string());
    assert_eq!(
        sub_keys(&f, "auth"),
        sorted(USER_AUTH),
        "user change: tokens, no refresh_token"
    );
    assert!(is_hex(&f["auth[access_token]"], 70));
    assert_eq!(f["auth[user_id]"], "1");
    assert!(f["ts"].bytes().all(|b| b.is_ascii_digit()));
    let token = f["auth[access_token]"].clone();
    assert_eq!(
        ok(&s.endpoint, &token, "profile", json!({})).await["ID"],
        "1"
    );

    emu.changes(
        &s.member_id,
        ChangeSpec {
            user_id: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let f = rx.wait("/deal", 2).await.remove(1).form();
    assert_eq!(
        sub_keys(&f, "auth"),
        sorted(SYSTEM_AUTH),
        "system change: no tokens"
    );
    assert_eq!(f["auth[application_token]"], s.application_token);
}

#[tokio::test]
async fn rest_writes_fire_events_and_failures_are_logged_without_retry() {
    let emu = emu().await;
    let rx = Receiver::start().await;
    let s = setup(&emu, "wr", crm_app(), PortalSpec::default());
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONCRMDEALUPDATE", "handler": rx.url("/fail")}),
    )
    .await;
    let id = ok(
        &s.endpoint,
        &s.token,
        "crm.deal.add",
        json!({"fields": {"TITLE": "x"}}),
    )
    .await;
    ok(
        &s.endpoint,
        &s.token,
        "crm.deal.update",
        json!({"id": id, "fields": {"TITLE": "y"}}),
    )
    .await;
    let f = rx.wait("/fail", 1).await.remove(0).form();
    assert_eq!(f["event"], "ONCRMDEALUPDATE");
    assert_eq!(f["data[FIELDS][ID]"], id.to_string());
    settle(&emu).await;
    assert_eq!(rx.wait("/fail", 1).await.len(), 1, "no retries");
    let d = control_get(&emu, &format!("/portals/{}/deliveries", s.member_id)).await;
    let d = d.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (d["status"].as_u64(), d["ok"].as_bool(), d["event"].as_str()),
        (Some(500), Some(false), Some("ONCRMDEALUPDATE"))
    );
    assert!(d["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(emu.stats()["deliveries_failed"], 1);
}

#[tokio::test]
async fn event_test_sends_onapptest_with_query_and_refresh_token() {
    let emu = emu().await;
    let rx = Receiver::start().await;
    let s = setup(&emu, "tst", crm_app(), PortalSpec::default());
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONAPPTEST", "handler": rx.url("/t")}),
    )
    .await;
    assert_eq!(
        ok(
            &s.endpoint,
            &s.token,
            "event.test",
            json!({"any": "thing", "n": 5})
        )
        .await,
        json!(1)
    );
    let f = rx.wait("/t", 1).await.remove(0).form();
    assert_eq!(f["event"], "ONAPPTEST");
    assert_eq!(
        (f["data[QUERY][any]"].as_str(), f["data[QUERY][n]"].as_str()),
        ("thing", "5")
    );
    assert_eq!(f["data[LANGUAGE_ID]"], "en");
    assert!(is_hex(&f["auth[refresh_token]"], 70));
    assert!(
        !f.contains_key("data[QUERY][auth]"),
        "the token is not echoed"
    );
}

#[tokio::test]
async fn identical_deliveries_within_one_batch_are_sent_once() {
    let emu = emu().await;
    let rx = Receiver::start().await;
    let s = setup(&emu, "dedup", crm_app(), PortalSpec::default());
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONCRMDEALUPDATE", "handler": rx.url("/u")}),
    )
    .await;
    let id = ok(&s.endpoint, &s.token, "crm.deal.add", json!({})).await;
    let before = queued(&emu);
    let cmd = json!({"a": format!("crm.deal.update?id={id}&fields[TITLE]=1"), "b": format!("crm.deal.update?id={id}&fields[TITLE]=2")});
    ok(&s.endpoint, &s.token, "batch", json!({"cmd": cmd})).await;
    assert_eq!(queued(&emu) - before, 1, "one hit, one delivery");
    ok(
        &s.endpoint,
        &s.token,
        "crm.deal.update",
        json!({"id": id, "fields": {"TITLE": "3"}}),
    )
    .await;
    assert_eq!(queued(&emu) - before, 2, "a new hit delivers again");
    rx.wait("/u", 2).await;
}

#[tokio::test]
async fn identical_deliveries_are_sent_once_per_handler_and_dedup_can_be_switched_off() {
    for (dedup, each) in [(true, 1), (false, 2)] {
        let emu = emu_with(b24emu::EmulatorConfig {
            seed: Some(7),
            dedup_within_hit: dedup,
            ..Default::default()
        })
        .await;
        let rx = Receiver::start().await;
        let s = setup(&emu, "dedup2", crm_app(), PortalSpec::default());
        for path in ["/a", "/b"] {
            bind(&s, "ONCRMDEALUPDATE", &rx.url(path)).await;
        }
        let id = ok(&s.endpoint, &s.token, "crm.deal.add", json!({})).await;
        let cmd = json!([
            format!("crm.deal.update?id={id}&fields[TITLE]=1"),
            format!("crm.deal.update?id={id}&fields[TITLE]=2"),
        ]);
        ok(&s.endpoint, &s.token, "batch", json!({"cmd": cmd})).await;
        settle(&emu).await;
        for path in ["/a", "/b"] {
            let n = rx.hits().iter().filter(|h| h.path == path).count();
            assert_eq!(n, each, "dedup_within_hit={dedup}: deliveries to {path}");
        }
    }
}

/// Plays the handler of an event loop: every ONCRMDEALUPDATE it receives makes it
/// update the deal again with the event's own token. Returns how many generations
/// of events were delivered before a write fired nothing (at most `max`), and the
/// tokens the generations carried.
async fn event_loop_generations(emu: &b24emu::Emulator, max: usize) -> (usize, Vec<String>) {
    let rx = Receiver::start().await;
    let s = setup(emu, "loop", crm_app(), PortalSpec::default());
    bind(&s, "ONCRMDEALUPDATE", &rx.url("/u")).await;
    let id = ok(&s.endpoint, &s.token, "crm.deal.add", json!({})).await;
    let mut token = s.token.clone();
    let mut seen = Vec::new();
    for generation in 0..max {
        let before = queued(emu);
        let fields = json!({"TITLE": generation.to_string()});
        ok(
            &s.endpoint,
            &token,
            "crm.deal.update",
            json!({"id": id, "fields": fields}),
        )
        .await;
        // Deliveries are queued before the call answers: none queued = none fired.
        if queued(emu) == before {
            settle(emu).await;
            assert_eq!(rx.hits().len(), generation, "nothing arrives afterwards");
            // A call with an ordinary token starts a new event session.
            let fresh = json!({"id": id, "fields": {"TITLE": "fresh"}});
            ok(&s.endpoint, &s.token, "crm.deal.update", fresh).await;
            assert_eq!(queued(emu), before + 1);
            return (generation, seen);
        }
        let hit = rx.wait("/u", generation + 1).await.remove(generation);
        token = hit.form()["auth[access_token]"].clone();
        seen.push(token.clone());
    }
    (max, seen)
}

#[tokio::test]
async fn event_loops_stop_after_seven_generations() {
    let emu = emu().await;
    let (generations, mut tokens) = event_loop_generations(&emu, 20).await;
    assert_eq!(generations, 7);
    assert_eq!(emu.stats()["events_ttl_exceeded"], 1);
    tokens.sort();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        7,
        "each generation's token carries its own TTL"
    );
}

#[tokio::test]
async fn the_event_loop_ttl_is_configurable_and_0_switches_it_off() {
    for (ttl, generations) in [(2, 2), (0, 12)] {
        let emu = emu_with(b24emu::EmulatorConfig {
            seed: Some(7),
            event_session_ttl: ttl,
            ..Default::default()
        })
        .await;
        assert_eq!(
            event_loop_generations(&emu, 12).await.0,
            generations,
            "event_session_ttl={ttl}"
        );
    }
}
