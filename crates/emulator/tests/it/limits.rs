//! Leaky bucket (503) and operating-time budget (429), §8.

use b24emu::{LimitsSpec, Plan, PortalSpec};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn the_51st_rapid_call_is_503_and_a_call_after_a_pause_succeeds() {
    let emu = emu().await;
    let s = setup(&emu, "rate", crm_app(), PortalSpec::default());
    emu.clock().set_frozen(true);
    for i in 0..50 {
        let (st, _) = call(&s.endpoint, &s.token, "server.time", json!({})).await;
        assert_eq!(st, 200, "call {}", i + 1);
    }
    let (st, v) = call(&s.endpoint, &s.token, "server.time", json!({})).await;
    assert_eq!(
        (st, v),
        (
            503,
            json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
        )
    );
    emu.clock().advance(1.0);
    let (st, _) = call(&s.endpoint, &s.token, "server.time", json!({})).await;
    assert_eq!(st, 200, "2 drained per second");
    assert_eq!(emu.stats()["query_limit_errors"], 1);
}

#[tokio::test]
async fn enterprise_bursts_250_and_limits_can_be_switched_off() {
    let emu = emu().await;
    let s = setup(
        &emu,
        "ent",
        crm_app(),
        PortalSpec {
            plan: Plan::Enterprise,
            ..Default::default()
        },
    );
    emu.clock().set_frozen(true);
    // A batch is one request.
    let batch = json!({"cmd": {"a": "server.time"}});
    for _ in 0..250 {
        assert_eq!(
            call(&s.endpoint, &s.token, "batch", batch.clone()).await.0,
            200
        );
    }
    assert_eq!(
        call(&s.endpoint, &s.token, "batch", batch.clone()).await.0,
        503
    );
    let (st, l) = control(
        &emu,
        &format!("/portals/{}/limits", s.member_id),
        json!({"rate_limit": false}),
    )
    .await;
    assert_eq!((st, l["rate_enabled"].as_bool()), (200, Some(false)));
    assert_eq!(
        call(&s.endpoint, &s.token, "server.time", json!({}))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn operating_budget_blocks_one_method_with_429_until_reset() {
    let emu = emu().await;
    let s = setup(&emu, "op", crm_app(), PortalSpec::default());
    emu.clock().set_frozen(true);
    let mut spec = LimitsSpec {
        operating_budget_secs: Some(1.0),
        ..Default::default()
    };
    spec.cost_ms.insert("crm.deal.list".into(), 600.0);
    emu.set_limits(&s.member_id, spec).unwrap();
    let (_, v) = call(&s.endpoint, &s.token, "crm.deal.list", json!({})).await;
    assert!(
        (v["time"]["operating"].as_f64().unwrap() - 0.6).abs() < 0.05,
        "{v}"
    );
    let reset = v["time"]["operating_reset_at"].as_i64().unwrap();
    assert_eq!(
        call(&s.endpoint, &s.token, "crm.deal.list", json!({}))
            .await
            .0,
        200
    );
    let (st, v) = call(&s.endpoint, &s.token, "crm.deal.list", json!({})).await;
    assert_eq!(
        (st, v),
        (
            429,
            json!({"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked due to operation time limit."})
        )
    );
    assert_eq!(
        call(&s.endpoint, &s.token, "crm.deal.fields", json!({}))
            .await
            .0,
        200,
        "other methods unaffected"
    );
    let now = emu.clock().now();
    emu.clock().advance(reset as f64 - now + 1.0);
    emu.set_limits(
        &s.member_id,
        LimitsSpec {
            rate_limit: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        call(&s.endpoint, &s.token, "crm.deal.list", json!({}))
            .await
            .0,
        200
    );
    assert_eq!(emu.stats()["operation_limit_errors"], 1);
}
