//! Random delivery delay and reordering (§11 item 7), seeded and switchable through
//! `POST /_emu/delivery`.

use b24emu::config::DeliveryConfig;
use b24emu::{EmulatorConfig, PortalSpec};
use serde_json::{Value, json};

use crate::common::*;

fn cfg(seed: u64, delivery: DeliveryConfig) -> EmulatorConfig {
    EmulatorConfig {
        seed: Some(seed),
        delivery,
        ..Default::default()
    }
}

/// Fires `n` ONCRMDEALADD in one control call; returns the deal ids in the order the
/// receiver got them. With one delivery in flight at a time the arrival order is
/// the order the worker sent them in.
async fn arrival_order(emu: &b24emu::Emulator, n: u64) -> Vec<u64> {
    let rx = Receiver::start().await;
    let s = setup(emu, "order", crm_app(), PortalSpec::default());
    bind(&s, "ONCRMDEALADD", &rx.url("/d")).await;
    let path = format!("/portals/{}/changes", s.member_id);
    let (st, _) = control(emu, &path, json!({"count": n, "user_id": 1})).await;
    assert_eq!(st, 200);
    rx.wait("/d", n as usize)
        .await
        .iter()
        .map(|h| h.form()["data[FIELDS][ID]"].parse().unwrap())
        .collect()
}

fn serial() -> DeliveryConfig {
    DeliveryConfig {
        concurrency: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn reordering_shuffles_a_hit_the_same_way_under_the_same_seed() {
    let emu = emu_with(cfg(3, serial())).await;
    assert_eq!(arrival_order(&emu, 8).await, (1..=8).collect::<Vec<_>>());

    let mut orders = Vec::new();
    for _ in 0..2 {
        let emu = emu_with(cfg(3, serial())).await;
        let (st, v) = control(&emu, "/delivery", json!({"reorder": true})).await;
        assert_eq!(st, 200);
        assert_eq!(
            v,
            json!({"delay_min_ms": 0, "delay_max_ms": 0, "reorder": true})
        );
        assert_eq!(control_get(&emu, "/delivery").await["reorder"], true);
        orders.push(arrival_order(&emu, 8).await);
    }
    let mut sorted = orders[0].clone();
    sorted.sort();
    assert_eq!(sorted, (1..=8).collect::<Vec<_>>(), "each delivered once");
    assert_ne!(orders[0], sorted, "shuffled");
    assert_eq!(orders[0], orders[1], "the same seed, the same order");
}

/// Fires six events; returns deal id → `delay_ms` from the delivery log.
async fn delays(emu: &b24emu::Emulator) -> Vec<(u64, u64)> {
    let ids = arrival_order(emu, 6).await;
    assert_eq!(ids.len(), 6);
    settle(emu).await;
    let member = control_get(emu, "/portals").await[0]["member_id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = control_get(emu, &format!("/portals/{member}/deliveries")).await;
    let mut out: Vec<(u64, u64)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let f = flat(d["body"].as_str().unwrap());
            (
                f["data[FIELDS][ID]"].parse().unwrap(),
                d["delay_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn delays_are_drawn_in_the_configured_range_from_the_seed_and_can_be_switched_off() {
    let delayed = DeliveryConfig {
        delay_min_ms: 5,
        delay_max_ms: 40,
        ..Default::default()
    };
    let emu = emu_with(cfg(5, delayed.clone())).await;
    let a = delays(&emu).await;
    assert_eq!(
        a.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert!(a.iter().all(|(_, d)| (5..=40).contains(d)), "{a:?}");
    assert!(a.iter().any(|(_, d)| *d != a[0].1), "random: {a:?}");
    let b = delays(&emu_with(cfg(5, delayed)).await).await;
    assert_eq!(a, b, "the same seed, the same delays");

    let emu = emu_with(cfg(5, Default::default())).await;
    let (_, v) = control(
        &emu,
        "/delivery",
        json!({"delay_min_ms": 5, "delay_max_ms": 40}),
    )
    .await;
    assert_eq!(v["delay_max_ms"], 40);
    assert_eq!(
        delays(&emu).await,
        a,
        "switched on at run time: the same draws"
    );
    let (_, v) = control(
        &emu,
        "/delivery",
        json!({"delay_min_ms": 0, "delay_max_ms": 0}),
    )
    .await;
    assert_eq!(
        v,
        json!({"delay_min_ms": 0, "delay_max_ms": 0, "reorder": false})
    );
    let member = control_get(&emu, "/portals").await[0]["member_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/portals/{member}/changes");
    control(&emu, &path, json!({"count": 1, "user_id": 1})).await;
    settle(&emu).await;
    let log: Value = control_get(&emu, &format!("/portals/{member}/deliveries?since=6")).await;
    assert_eq!(log[0]["delay_ms"], 0, "{log}");
}
