//! Limits: the leaky bucket holds (one client, and two clients sharing the
//! store's bucket), 503s slow the client down and it recovers, and a method
//! near its operating budget waits while other methods go on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use b24emu::LimitsSpec;
use client::{
    CallOptions, Client, Clock, Error, MemoryRateLimiter, OperatingConfig, PortalClient,
    RateConfig, RetryPolicy,
};
use serde_json::json;

use crate::common::{Fixture, StoreEnv, bounded, fixture};

const DRAIN: f64 = 100.0;
const BURST: u32 = 50;
const CALLS: usize = 1000;

/// Fires `CALLS` reads at once across `clients` and returns the seconds from
/// the first to the last answer.
async fn burst(clients: &[PortalClient]) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CALLS {
        let c = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(
            async move { c.call("profile", json!({})).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    start.elapsed().as_secs_f64()
}

fn assert_drain_rate(f: &Fixture, elapsed: f64) {
    assert_eq!(
        f.stat("query_limit_errors"),
        0,
        "the emulator saw no QUERY_LIMIT_EXCEEDED"
    );
    // After the burst allowance the bucket drains DRAIN per second.
    let rate = (CALLS as f64 - f64::from(BURST)) / elapsed;
    println!("{CALLS} calls in {elapsed:.2} s: {rate:.1}/s after the burst");
    assert!(
        (DRAIN * 0.9..=DRAIN * 1.1).contains(&rate),
        "throughput {rate:.1}/s after the burst, bucket drains {DRAIN}/s ({elapsed:.2} s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_1000_calls_holds_the_bucket_at_its_drain_rate() {
    bounded(async {
        let f = fixture().await;
        f.set_bucket(DRAIN, f64::from(BURST));
        let mut cfg = f.config();
        cfg.rate = RateConfig::uniform(DRAIN, BURST);
        // In-process bucket: the library/single-process configuration.
        let client = Client::new(
            cfg,
            f.env(),
            Arc::new(MemoryRateLimiter::new()),
            Clock::system(),
        )
        .unwrap();
        let elapsed = burst(&[client.portal(&f.member)]).await;
        assert_drain_rate(&f, elapsed);
        assert_eq!(client.stats().retries, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_sharing_the_store_bucket_hold_it_together() {
    bounded(async {
        let f = fixture().await;
        f.set_bucket(DRAIN, f64::from(BURST));
        let mut cfg = f.config();
        cfg.rate = RateConfig::uniform(DRAIN, BURST);
        let a = f.client(cfg.clone());
        let env_b = Arc::new(StoreEnv {
            store: f.db.second_handle().await,
        });
        let b = Client::new(cfg, env_b.clone(), env_b, Clock::system()).unwrap();
        let elapsed = burst(&[a.portal(&f.member), b.portal(&f.member)]).await;
        assert_drain_rate(&f, elapsed);
        // Each alone would have sent at the full rate: together they did not
        // exceed it, so they shared one bucket.
        assert!(a.stats().requests > 300 && b.stats().requests > 300);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_limit_exceeded_slows_the_client_and_it_recovers() {
    bounded(async {
        let f = fixture().await;
        // The portal's bucket is much smaller than the client believes.
        f.set_bucket(20.0, 5.0);
        let clock = Clock::system();
        let mut cfg = f.config();
        cfg.rate = RateConfig {
            penalty: Duration::from_millis(200),
            recovery: Duration::from_secs(2),
            ..RateConfig::uniform(100.0, 20)
        };
        cfg.retry = RetryPolicy {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_retries: 20,
            jitter: true,
        };
        let client = Client::new(
            cfg,
            f.env(),
            Arc::new(MemoryRateLimiter::new()),
            clock.clone(),
        )
        .unwrap();
        let p = client.portal(&f.member);
        let calls: Vec<_> = (0..60)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.call("profile", json!({})).await })
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let limited = f.stat("query_limit_errors");
        assert!(limited > 0, "the mismatch was noticed");
        assert_eq!(client.stats().rate_limited, limited);
        // Slowing down kept the 503s well below one per call.
        assert!(limited < 60, "{limited} QUERY_LIMIT_EXCEEDED for 60 calls");

        // The portal's bucket is back to what the client expects; after a few
        // recovery windows the client runs at the full rate again.
        f.set_bucket(100.0, 20.0);
        clock.advance(Duration::from_secs(20));
        let start = Instant::now();
        let calls: Vec<_> = (0..100)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.call("profile", json!({})).await })
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let rate = 80.0 / start.elapsed().as_secs_f64();
        assert_eq!(f.stat("query_limit_errors"), limited, "no new 503s");
        assert!(rate > 70.0, "recovered rate {rate:.1}/s");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_near_its_operating_budget_waits_for_the_reset_others_go_on() {
    bounded(async {
        let f = fixture().await;
        f.emu
            .set_limits(
                &f.member.to_string(),
                LimitsSpec {
                    operating_limit: Some(true),
                    operating_budget_secs: Some(1.0),
                    cost_ms: [("crm.deal.list".to_string(), 300.0)].into(),
                    ..Default::default()
                },
            )
            .unwrap();
        let clock = Clock::system();
        let mut cfg = f.config();
        cfg.operating = OperatingConfig {
            budget: Duration::from_secs(1),
            threshold: 0.8,
            reset_slack: Duration::from_secs(1),
        };
        let env = f.env();
        let client = Client::new(cfg, env.clone(), env, clock.clone()).unwrap();
        let p = client.portal(&f.member);
        for _ in 0..3 {
            p.call("crm.deal.list", json!({})).await.unwrap();
        }
        // 0.9 s of 1 s used: the next list call would have to wait minutes.
        let lists = f.method_count("crm.deal.list");
        let short = CallOptions {
            deadline: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let e = p
            .call_with("crm.deal.list", json!({}), &short)
            .await
            .unwrap_err();
        let Error::OperatingLimit { method, reset_at } = &e else {
            panic!("{e}")
        };
        assert_eq!(method, "crm.deal.list");
        assert!(*reset_at > clock.now_secs(), "{e}");
        assert_eq!(
            f.method_count("crm.deal.list"),
            lists,
            "refused without a request"
        );
        // Other methods go on.
        p.call("crm.deal.fields", json!({})).await.unwrap();
        // A call with time to wait sleeps until the reset, then succeeds.
        let patient = CallOptions {
            deadline: Some(Duration::from_secs(1200)),
            ..Default::default()
        };
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.call_with("crm.deal.list", json!({}), &patient).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the call waits for the reset");
        f.emu.clock().advance(660.0);
        clock.advance(Duration::from_secs(660));
        waiting.await.unwrap().unwrap();
        assert_eq!(
            f.stat("operation_limit_errors"),
            0,
            "the budget was never overrun"
        );
    })
    .await;
}
