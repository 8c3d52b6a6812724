//! Retries: reads are repeated after a 5xx or a timeout, writes are not;
//! a request that never left (connection refused) is repeated either way.

use std::time::Duration;

use b24emu::{EmulatorConfig, FaultsSpec};
use client::{CallOptions, Error, TransportKind};
use serde_json::json;

use crate::common::{Setup, bounded, emulator_config, fixture, fixture_with};

fn faults(f: &crate::common::Fixture, error_rate: f64, timeout_rate: f64) {
    f.emu
        .set_faults(FaultsSpec {
            member_id: Some(f.member.to_string()),
            error_rate: Some(error_rate),
            timeout_rate: Some(timeout_rate),
            ..Default::default()
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_got_a_5xx_is_not_repeated_a_read_is() {
    bounded(async {
        let f = fixture().await;
        let client = f.client(f.config());
        let p = client.portal(&f.member);
        faults(&f, 1.0, 0.0);
        let before = f.stat("faults_injected");
        let e = p
            .call("crm.deal.add", json!({"fields": {"TITLE": "once"}}))
            .await
            .unwrap_err();
        assert_eq!(
            e.api().map(|a| a.code.as_str()),
            Some("INTERNAL_SERVER_ERROR"),
            "{e}"
        );
        assert_eq!(
            f.stat("faults_injected") - before,
            1,
            "the write was sent once"
        );

        let before = f.stat("faults_injected");
        let e = p.call("crm.deal.get", json!({"id": 1})).await.unwrap_err();
        assert!(e.api().is_some(), "{e}");
        // 1 attempt + max_retries (3).
        assert_eq!(
            f.stat("faults_injected") - before,
            4,
            "the read was retried"
        );

        // An explicit override makes a write repeatable (e.g. an idempotent
        // update the caller knows about).
        let before = f.stat("faults_injected");
        let opts = CallOptions {
            idempotent: Some(true),
            ..Default::default()
        };
        let _ = p
            .call_with("crm.deal.update", json!({"id": 1, "fields": {}}), &opts)
            .await;
        assert_eq!(f.stat("faults_injected") - before, 4);

        // With the faults gone the read succeeds on retry; the deal was never
        // created twice.
        faults(&f, 0.0, 0.0);
        let deals = f.emu.portal_state(&f.member.to_string()).unwrap()["deals"].clone();
        assert_eq!(deals, json!(0));
        assert!(client.stats().retries >= 6);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_repeat_reads_only() {
    bounded(async {
        let mut emu = emulator_config();
        emu.fault_timeout_ms = 3_000;
        let f = fixture_with(Setup {
            emulator: Some(emu),
            ..Default::default()
        })
        .await;
        let mut cfg = f.config();
        cfg.timeouts.request = Duration::from_millis(200);
        let p = f.client(cfg).portal(&f.member);
        faults(&f, 0.0, 1.0);
        let before = f.stat("faults_injected");
        let e = p
            .call("crm.deal.add", json!({"fields": {}}))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Transport {
                    kind: TransportKind::Timeout,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(f.stat("faults_injected") - before, 1);
        let before = f.stat("faults_injected");
        let e = p.call("crm.deal.fields", json!({})).await.unwrap_err();
        assert!(matches!(e, Error::Transport { .. }), "{e}");
        assert_eq!(f.stat("faults_injected") - before, 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overall_deadline_bounds_a_call() {
    bounded(async {
        let f = fixture().await;
        let mut cfg = f.config();
        cfg.retry.min_delay = Duration::from_millis(300);
        cfg.retry.max_delay = Duration::from_millis(300);
        cfg.retry.max_retries = 50;
        let p = f.client(cfg).portal(&f.member);
        faults(&f, 1.0, 0.0);
        let started = std::time::Instant::now();
        let opts = CallOptions {
            deadline: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let e = p
            .call_with("crm.deal.fields", json!({}), &opts)
            .await
            .unwrap_err();
        assert!(e.api().is_some(), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_even_for_writes() {
    bounded(async {
        // A portal whose endpoint points at a closed port.
        let f = fixture_with(Setup {
            emulator: Some(EmulatorConfig {
                ..emulator_config()
            }),
            ..Default::default()
        })
        .await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let dead = wire::Endpoint::parse(&format!("http://127.0.0.1:{port}/rest/")).unwrap();
        let domain = wire::PortalDomain::parse(&format!("127.0.0.1:{port}")).unwrap();
        f.db.store
            .update_endpoint(f.member.as_str(), &domain, dead.as_str(), 1)
            .await
            .unwrap();
        let client = f.client(f.config());
        let e = client
            .portal(&f.member)
            .call("crm.deal.add", json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Transport {
                    kind: TransportKind::Connect,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(client.stats().requests, 4, "not sent, so repeated");
    })
    .await;
}

/// A retry storm opens the portal's breaker: its calls pause without the
/// network for the cool-down, the trip is counted once, and calls resume
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_storm_pauses_the_portal_then_it_recovers() {
    bounded(async {
        let f = fixture().await;
        let mut cfg = f.config();
        cfg.breaker = client::BreakerConfig {
            max_retries: 5,
            window: Duration::from_secs(60),
            cooldown: Duration::from_millis(500),
        };
        let client = f.client(cfg);
        let p = client.portal(&f.member);
        faults(&f, 1.0, 0.0);
        // Reads retry 3 times each: the second call passes 5 retries.
        let _ = p.call("crm.deal.get", json!({"id": 1})).await.unwrap_err();
        let e = p.call("crm.deal.get", json!({"id": 1})).await.unwrap_err();
        let stats = client.stats();
        assert_eq!(stats.breaker_trips, 1, "{e}");
        let before = f.stat("faults_injected");
        let e = p.call("crm.deal.get", json!({"id": 1})).await.unwrap_err();
        assert!(matches!(e, Error::CircuitOpen { .. }), "{e}");
        assert_eq!(
            f.stat("faults_injected"),
            before,
            "no request while the breaker is open"
        );
        // The storming call itself stopped at the trip, and this one never left.
        assert_eq!(client.stats().breaker_refusals, 2);
        assert_eq!(
            client.stats().api_errors,
            1,
            "the first call ended with the portal's error"
        );
        // After the cool-down, with the portal healthy again, calls go through.
        faults(&f, 0.0, 0.0);
        client.clock().advance(Duration::from_millis(600));
        p.call("scope", json!({})).await.unwrap();
        assert_eq!(client.stats().breaker_trips, 1, "logged and counted once");
        assert!(client.stats().ok >= 1);
    })
    .await;
}
