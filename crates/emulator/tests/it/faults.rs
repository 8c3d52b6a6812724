//! Fault injection: 5xx share, timeouts, latency, dropped bindings, expired tokens.

use b24emu::{EmulatorConfig, FaultsSpec, PortalSpec};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn error_rate_applies_per_portal_and_is_deterministic_under_a_seed() {
    async fn outcomes(seed: u64) -> Vec<u16> {
        let emu = emu_with(EmulatorConfig {
            seed: Some(seed),
            ..Default::default()
        })
        .await;
        let s = setup(&emu, "f", crm_app(), PortalSpec::default());
        let other = setup(&emu, "g", crm_app(), PortalSpec::default());
        emu.set_faults(FaultsSpec {
            member_id: Some(s.member_id.clone()),
            error_rate: Some(0.5),
            ..Default::default()
        })
        .unwrap();
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(
                call(&s.endpoint, &s.token, "server.time", json!({}))
                    .await
                    .0,
            );
            assert_eq!(
                call(&other.endpoint, &other.token, "server.time", json!({}))
                    .await
                    .0,
                200
            );
        }
        v
    }
    let a = outcomes(42).await;
    assert!(a.contains(&500) && a.contains(&200), "{a:?}");
    assert_eq!(a, outcomes(42).await);
}

#[tokio::test]
async fn timeouts_and_latency() {
    let emu = emu_with(EmulatorConfig {
        seed: Some(1),
        fault_timeout_ms: 300,
        ..Default::default()
    })
    .await;
    let s = setup(&emu, "slow", crm_app(), PortalSpec::default());
    let (st, v) = control(&emu, "/faults", json!({"timeout_rate": 1.0})).await;
    assert_eq!((st, v["faults"]["timeout_rate"].as_f64()), (200, Some(1.0)));
    let t = std::time::Instant::now();
    let (st, _) = call(&s.endpoint, &s.token, "server.time", json!({})).await;
    assert_eq!(st, 504);
    assert!(t.elapsed().as_millis() >= 300);
    control(
        &emu,
        "/faults",
        json!({"timeout_rate": 0.0, "latency_ms": 150}),
    )
    .await;
    let t = std::time::Instant::now();
    assert_eq!(
        call(&s.endpoint, &s.token, "server.time", json!({}))
            .await
            .0,
        200
    );
    assert!(t.elapsed().as_millis() >= 150);
}

#[tokio::test]
async fn dropped_bindings_and_mass_token_expiry() {
    let emu = emu().await;
    let s = setup(&emu, "lost", crm_app(), PortalSpec::default());
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONCRMDEALADD", "handler": "https://a.example/h"}),
    )
    .await;
    let (_, v) = control(
        &emu,
        "/faults",
        json!({"member_id": s.member_id, "drop_bindings": true}),
    )
    .await;
    assert_eq!(v["dropped_bindings"], 1);
    assert_eq!(
        ok(&s.endpoint, &s.token, "event.get", json!({})).await,
        json!([])
    );
    let (_, v) = control(&emu, "/faults", json!({"expire_tokens": true})).await;
    assert!(v["expired_tokens"].as_u64().unwrap() >= 1);
    let (st, v) = call(&s.endpoint, &s.token, "profile", json!({})).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("expired_token")));
}
