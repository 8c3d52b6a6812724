//! The offline queue (§5.5–§5.9) and ONOFFLINEEVENT (§4.6).

use b24emu::{ChangeSpec, ClockSpec, PortalSpec};
use md5::{Digest, Md5};
use serde_json::{Value, json};

use crate::common::*;

fn extended() -> PortalSpec {
    PortalSpec {
        features: vec!["rest_offline_extended".into(), "rest_auth_connector".into()],
        ..Default::default()
    }
}

async fn offline_setup(emu: &b24emu::Emulator, name: &str) -> Setup {
    let s = setup(emu, name, crm_app(), extended());
    for ev in ["ONCRMDEALADD", "ONCRMDEALUPDATE"] {
        ok(
            &s.endpoint,
            &s.token,
            "event.bind",
            json!({"event": ev, "event_type": "offline"}),
        )
        .await;
    }
    s
}

fn ids(r: &Value) -> Vec<String> {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ID"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn clear0_reserves_and_a_reread_with_the_process_id_returns_the_same_rows() {
    let emu = emu().await;
    let s = offline_setup(&emu, "off").await;
    let got = ok(&s.endpoint, &s.token, "event.get", json!({})).await;
    assert_eq!(
        got[0],
        json!({"event": "ONCRMDEALADD", "connector_id": "", "offline": 1})
    );
    emu.changes(
        &s.member_id,
        ChangeSpec {
            count: 3,
            user_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let first = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"clear": 0, "limit": 2}),
    )
    .await;
    let pid = first["process_id"].as_str().unwrap().to_string();
    assert!(pid.len() == 32 && pid.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(ids(&first).len(), 2);
    let ev = &first["events"][0];
    assert_eq!(
        keys(ev),
        sorted(&[
            "EVENT_ADDITIONAL",
            "EVENT_DATA",
            "EVENT_NAME",
            "ID",
            "MESSAGE_ID",
            "TIMESTAMP_X"
        ])
    );
    assert_eq!(ev["EVENT_NAME"], "ONCRMDEALADD");
    assert_eq!(ev["EVENT_ADDITIONAL"], json!({"user_id": "1"}));
    let data = ev["EVENT_DATA"].clone();
    let mut h = Md5::new();
    h.update(format!(
        "ONCRMDEALADD|{}",
        serde_json::to_string(&data).unwrap()
    ));
    assert_eq!(ev["MESSAGE_ID"], hex::encode(h.finalize()));
    assert!(ev["TIMESTAMP_X"].as_str().unwrap().ends_with("+00:00"));
    // A crash-like re-read: same process_id, same rows.
    let again = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"clear": 0, "process_id": pid, "limit": 2}),
    )
    .await;
    assert_eq!(again, first);
    // A parallel reader gets the disjoint rest.
    let other = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"clear": 0}),
    )
    .await;
    assert_eq!(ids(&other).len(), 1);
    assert!(!ids(&first).contains(&ids(&other)[0]));
    assert_eq!(
        ok(
            &s.endpoint,
            &s.token,
            "event.offline.clear",
            json!({"process_id": pid})
        )
        .await,
        json!(true)
    );
    let list = call(&s.endpoint, &s.token, "event.offline.list", json!({}))
        .await
        .1;
    assert_eq!(list["total"], 1);
    assert_eq!(list["result"][0]["PROCESS_ID"], other["process_id"]);
    assert_eq!(list["result"][0]["ERROR"], "0");
}

#[tokio::test]
async fn message_id_upsert_keeps_the_latest_state_per_object() {
    let emu = emu().await;
    let s = offline_setup(&emu, "ups").await;
    let id = emu
        .changes(&s.member_id, ChangeSpec::default())
        .unwrap()
        .ids[0];
    for _ in 0..3 {
        emu.changes(
            &s.member_id,
            ChangeSpec {
                action: "update".into(),
                id: Some(id),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let r = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"clear": 1}),
    )
    .await;
    let names: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["EVENT_NAME"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ONCRMDEALADD", "ONCRMDEALUPDATE"]);
    assert_eq!(r["process_id"], Value::Null);
    let r = ok(&s.endpoint, &s.token, "event.offline.get", json!({})).await;
    assert_eq!(r["events"], json!([]), "clear=1 deleted them");
}

#[tokio::test]
async fn own_changes_are_not_queued_for_the_app_but_other_connectors_are() {
    let emu = emu().await;
    let s = offline_setup(&emu, "self").await;
    ok(
        &s.endpoint,
        &s.token,
        "crm.deal.add",
        json!({"fields": {"TITLE": "mine"}}),
    )
    .await;
    let st = emu.portal_state(&s.member_id).unwrap();
    assert_eq!(st["apps"][0]["offline_queue"]["size"], 0, "self-suppressed");
    // Same app writing through another connector is a different source.
    ok(
        &s.endpoint,
        &s.token,
        "crm.deal.add",
        json!({"fields": {"TITLE": "sync"}, "auth_connector": "crm-sync"}),
    )
    .await;
    // A user change in the UI is queued.
    emu.changes(
        &s.member_id,
        ChangeSpec {
            user_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let r = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"clear": 0}),
    )
    .await;
    assert_eq!(ids(&r).len(), 2);
    // A binding on the connector partition sees only its own rows.
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONCRMDEALADD", "event_type": "offline", "auth_connector": "crm-sync"}),
    )
    .await;
    ok(
        &s.endpoint,
        &s.token,
        "crm.deal.add",
        json!({"fields": {"TITLE": "sync2"}, "auth_connector": "crm-sync"}),
    )
    .await;
    emu.changes(
        &s.member_id,
        ChangeSpec {
            user_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let part = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"auth_connector": "crm-sync"}),
    )
    .await;
    assert_eq!(
        ids(&part).len(),
        1,
        "crm-sync's own write suppressed, the UI change queued"
    );
}

#[tokio::test]
async fn error_rows_are_released_and_read_with_error_1() {
    let emu = emu().await;
    let s = offline_setup(&emu, "err").await;
    emu.changes(
        &s.member_id,
        ChangeSpec {
            count: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let r = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"clear": 0}),
    )
    .await;
    let pid = r["process_id"].clone();
    let bad = r["events"][0]["MESSAGE_ID"].clone();
    assert_eq!(
        ok(
            &s.endpoint,
            &s.token,
            "event.offline.error",
            json!({"process_id": pid, "message_id": [bad]})
        )
        .await,
        json!(true)
    );
    let e = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"error": 1, "clear": 0}),
    )
    .await;
    assert_eq!(e["events"][0]["MESSAGE_ID"], bad);
    let (st, v) = call(&s.endpoint, &s.token, "event.offline.clear", json!({})).await;
    assert_eq!((st, v["argument"].as_str()), (400, Some("PROCESS_ID")));
    let (st, v) = call(
        &s.endpoint,
        &s.token,
        "event.offline.clear",
        json!({"process_id": pid, "message_id": "x"}),
    )
    .await;
    assert_eq!(
        (st, v["error_description"].as_str()),
        (400, Some("Value must be array of MESSAGE_ID values"))
    );
    let (st, v) = call(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"limit": 0}),
    )
    .await;
    assert_eq!((st, v["argument"].as_str()), (400, Some("LIMIT")));
    let (st, v) = call(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"filter": {"!ID": 1}}),
    )
    .await;
    assert_eq!(
        (st, v["error_description"].as_str()),
        (400, Some("Filter operation not allowed: !"))
    );
}

#[tokio::test]
async fn reservation_needs_the_extended_feature() {
    let emu = emu().await;
    let s = setup(&emu, "basic", crm_app(), PortalSpec::default());
    let (st, v) = call(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"clear": 0}),
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (403, Some("WRONG_LICENSE")));
    let (st, _) = call(&s.endpoint, &s.token, "event.offline.get", json!({})).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn onofflineevent_honours_min_timeout() {
    let emu = emu().await;
    let rx = Receiver::start().await;
    let s = offline_setup(&emu, "notify").await;
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONOFFLINEEVENT", "handler": rx.url("/n"), "options": {"minTimeout": 60}}),
    )
    .await;
    emu.clock().set_frozen(true);
    let _ = ClockSpec::default();
    emu.changes(
        &s.member_id,
        ChangeSpec {
            user_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    emu.changes(
        &s.member_id,
        ChangeSpec {
            user_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let f = rx.wait("/n", 1).await.remove(0).form();
    assert_eq!(f["event"], "ONOFFLINEEVENT");
    assert!(
        !f.keys().any(|k| k.starts_with("data")),
        "empty data vanishes in form encoding"
    );
    assert!(is_hex(&f["auth[refresh_token]"], 70));
    settle(&emu).await;
    assert_eq!(
        rx.wait("/n", 1).await.len(),
        1,
        "second change within minTimeout: no notification"
    );
    emu.clock().advance(61.0);
    emu.changes(
        &s.member_id,
        ChangeSpec {
            user_id: 0,
            ..Default::default()
        },
    )
    .unwrap();
    rx.wait("/n", 2).await;
}

/// A new access token for the installing admin (the install's has expired after a
/// clock jump of days).
async fn fresh_token(emu: &b24emu::Emulator, s: &Setup) -> String {
    let path = format!("/portals/{}/tokens", s.member_id);
    let (st, v) = control(emu, &path, json!({"client_id": s.client_id})).await;
    assert_eq!(st, 200, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn rows_older_than_34_days_are_purged_reserved_or_not() {
    let emu = emu().await;
    let s = offline_setup(&emu, "purge").await;
    let (st, _) = control(&emu, "/clock", json!({"freeze": true})).await;
    assert_eq!(st, 200);
    let changes = format!("/portals/{}/changes", s.member_id);
    control(&emu, &changes, json!({"count": 2, "user_id": 1})).await;
    let reserved = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"clear": 0, "limit": 1}),
    )
    .await;
    let pid = reserved["process_id"].as_str().unwrap().to_string();
    assert_eq!(ids(&reserved), vec!["1"]);
    control(&emu, "/clock", json!({"advance_secs": 30 * 86_400})).await;
    control(&emu, &changes, json!({"count": 1, "user_id": 1})).await;
    let token = fresh_token(&emu, &s).await;
    let list = ok(&s.endpoint, &token, "event.offline.list", json!({})).await;
    assert_eq!(list.as_array().unwrap().len(), 3, "30 days: all kept");

    // 2,952,000 s (PROCESS_ID_LIFETIME) after the first two rows were written.
    control(
        &emu,
        "/clock",
        json!({"advance_secs": 2_952_001 - 30 * 86_400}),
    )
    .await;
    let token = fresh_token(&emu, &s).await;
    let list = ok(&s.endpoint, &token, "event.offline.list", json!({})).await;
    let left: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ID"].as_str().unwrap())
        .collect();
    assert_eq!(
        left,
        vec!["3"],
        "the reserved row 1 and the free row 2 are gone"
    );
    let again = ok(
        &s.endpoint,
        &token,
        "event.offline.get",
        json!({"clear": 0, "process_id": pid}),
    )
    .await;
    assert_eq!(ids(&again), Vec::<String>::new());
    let state = control_get(&emu, &format!("/portals/{}", s.member_id)).await;
    assert_eq!(
        state["apps"][0]["offline_queue"],
        json!({"size": 1, "reserved": 0, "errors": 0})
    );
    assert_eq!(control_get(&emu, "/stats").await["offline_rows_purged"], 2);
}

#[tokio::test]
async fn the_offline_row_lifetime_is_configurable_and_0_keeps_rows() {
    let emu = emu_with(b24emu::EmulatorConfig {
        seed: Some(7),
        offline_row_lifetime_secs: 0,
        ..Default::default()
    })
    .await;
    let s = offline_setup(&emu, "keep").await;
    control(&emu, "/clock", json!({"freeze": true})).await;
    let changes = format!("/portals/{}/changes", s.member_id);
    control(&emu, &changes, json!({"count": 2, "user_id": 1})).await;
    control(&emu, "/clock", json!({"advance_secs": 400 * 86_400})).await;
    let token = fresh_token(&emu, &s).await;
    let list = ok(&s.endpoint, &token, "event.offline.list", json!({})).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
}

/// `limit` picks the first rows of the whole queue in the requested order,
/// whatever the queue's size: the lowest IDs ascending, the highest
/// descending, with the rest left unreserved.
#[tokio::test]
async fn get_with_a_limit_takes_the_first_rows_of_the_whole_queue_in_order() {
    let emu = emu().await;
    let s = offline_setup(&emu, "offtop").await;
    emu.changes(
        &s.member_id,
        ChangeSpec {
            count: 300,
            user_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let all = ok(
        &s.endpoint,
        &s.token,
        "event.offline.list",
        json!({"order": {"ID": "ASC"}}),
    )
    .await;
    let first_id: u64 = all[0]["ID"].as_str().unwrap().parse().unwrap();
    let want = |range: Vec<u64>| -> Vec<String> { range.iter().map(u64::to_string).collect() };
    let desc = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"clear": 0, "limit": 7, "order": {"ID": "DESC"}}),
    )
    .await;
    let top = first_id + 299;
    assert_eq!(ids(&desc), want((top - 6..=top).rev().collect()));
    let asc = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"clear": 0, "limit": 5, "order": {"ID": "ASC"}}),
    )
    .await;
    assert_eq!(ids(&asc), want((first_id..first_id + 5).collect()));
    // Everything else is still unreserved: 300 − 12 rows come in one get.
    let rest = ok(
        &s.endpoint,
        &s.token,
        "event.offline.get",
        json!({"clear": 0, "limit": 1000}),
    )
    .await;
    assert_eq!(ids(&rest).len(), 288);
}
