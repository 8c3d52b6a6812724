use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use engine::retry::RetrySchedule;
use engine::runner::RunnerOptions;
use engine::{Engine, EngineOptions, Secrets};
use serde_json::json;

use crate::helpers::{Receiver, config, ingest, install, member, sqlite_store};

fn fast_opts() -> EngineOptions {
    EngineOptions {
        runner: RunnerOptions {
            workers: 8,
            lease: Duration::from_secs(2),
            poll: Duration::from_millis(20),
            grace: Duration::from_secs(2),
            ..RunnerOptions::default()
        },
        dispatch_every: Duration::from_millis(20),
        forward_timeout: Duration::from_secs(5),
        // Retries in milliseconds so the test stays short; the shape is the
        // production one.
        forward_schedule: RetrySchedule::new(vec![Duration::from_millis(30); 12], 0.2),
        ..EngineOptions::default()
    }
}

fn secrets() -> Secrets {
    let mut s = Secrets::default();
    s.target_secrets
        .insert("deals".into(), crate::helpers::SECRET.into());
    s
}

#[tokio::test]
async fn every_event_reaches_the_app_once_despite_30_percent_failures() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let (rx, url) = Receiver::start(3).await; // every third request fails
    let cfg = Arc::new(config(&url));
    for p in 0..20 {
        install(&store, &member(p), "apptoken").await;
    }
    for i in 0..2000 {
        let m = member(i % 20);
        ingest(
            &store,
            &m,
            "ONCRMDEALADD",
            &format!("k{i}"),
            json!({"FIELDS": {"ID": i.to_string()}}),
        )
        .await;
    }
    // An event no binding owns is not forwarded.
    ingest(&store, &member(0), "ONCRMLEADADD", "lead", json!({})).await;
    let engine = Engine::new(
        cfg,
        &secrets(),
        store.clone(),
        engine::system_now(),
        fast_opts(),
    )
    .unwrap()
    .start();
    rx.wait_for(2000, Duration::from_secs(120)).await;
    engine.shutdown().await;
    assert_eq!(rx.unique(), 2000);
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
    assert!(
        rx.failures.load(Ordering::SeqCst) >= 900,
        "the receiver did fail a third of requests"
    );
    let ids: std::collections::HashSet<_> = rx
        .accepted
        .lock()
        .unwrap()
        .values()
        .map(|v| v["data"]["FIELDS"]["ID"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2000, "none missing");
    let sample = rx
        .accepted
        .lock()
        .unwrap()
        .values()
        .next()
        .cloned()
        .unwrap();
    assert_eq!(sample["event"], "ONCRMDEALADD");
    assert_eq!(sample["source"], "online");
    assert!(
        sample["portal"]["domain"]
            .as_str()
            .unwrap()
            .ends_with(".bitrix24.com")
    );
    assert_eq!(store.inbox_depth().await.unwrap(), 0);
    let counts = store.job_counts().await.unwrap();
    assert!(counts.contains(&("completed".into(), 2000)), "{counts:?}");
}

#[tokio::test]
async fn engine_aborted_repeatedly_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let (rx, url) = Receiver::start(0).await;
    let cfg = Arc::new(config(&url));
    for p in 0..5 {
        install(&store, &member(p), "apptoken").await;
    }
    for i in 0..500 {
        ingest(
            &store,
            &member(i % 5),
            "ONCRMDEALADD",
            &format!("k{i}"),
            json!({"FIELDS": {"ID": i.to_string()}}),
        )
        .await;
    }
    // Run and kill the engine at varying points: dropping a running engine
    // aborts its tasks mid-flight, as a crash would.
    for round in 0..6u64 {
        let e = Engine::new(
            cfg.clone(),
            &secrets(),
            store.clone(),
            engine::system_now(),
            fast_opts(),
        )
        .unwrap()
        .start();
        tokio::time::sleep(Duration::from_millis(40 + 37 * round)).await;
        drop(e);
    }
    let e = Engine::new(
        cfg,
        &secrets(),
        store.clone(),
        engine::system_now(),
        fast_opts(),
    )
    .unwrap()
    .start();
    rx.wait_for(500, Duration::from_secs(60)).await;
    e.shutdown().await;
    assert_eq!(rx.unique(), 500, "every acknowledged event was forwarded");
    // At-least-once: a forward cut off after the app answered is sent again,
    // with the same webhook-id, which the receiver's map deduplicates.
    assert!(rx.deliveries.load(Ordering::SeqCst) >= 500);
}

#[tokio::test]
async fn uninstall_applies_the_clean_policy_and_keeps_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let (rx, url) = Receiver::start(0).await;
    let cfg = Arc::new(config(&url));
    let (purged, kept) = (member(1), member(2));
    install(&store, &purged, "t1").await;
    install(&store, &kept, "t2").await;
    ingest(
        &store,
        &purged,
        "ONAPPUNINSTALL",
        "u1",
        json!({"CLEAN": "1", "LANGUAGE_ID": "en"}),
    )
    .await;
    ingest(&store, &kept, "ONAPPUNINSTALL", "u2", json!({"CLEAN": "0"})).await;
    // A repeat of an uninstall is a logged no-op.
    ingest(&store, &kept, "ONAPPUNINSTALL", "u3", json!({"CLEAN": "0"})).await;
    let e = Engine::new(
        cfg,
        &secrets(),
        store.clone(),
        engine::system_now(),
        fast_opts(),
    )
    .unwrap()
    .start();
    rx.wait_for(3, Duration::from_secs(30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = store.get_portal(&purged).await.unwrap().unwrap();
        let k = store.get_portal(&kept).await.unwrap().unwrap();
        let repeats = store
            .list_audit(&store::AuditFilter {
                member_id: Some(&kept),
                action_prefix: Some("uninstall.repeat"),
                ..Default::default()
            })
            .await
            .unwrap();
        if p.status == store::PortalStatus::Purged
            && k.status == store::PortalStatus::Uninstalled
            && !repeats.is_empty()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?} {:?}",
            p.status,
            k.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.shutdown().await;
    let k = store.get_portal(&kept).await.unwrap().unwrap();
    assert_eq!(k.purge_after, None, "CLEAN=0 keeps per policy");
    assert!(
        store.load_credentials(&kept).await.unwrap().is_none(),
        "tokens are dead"
    );
    let audit = store
        .list_audit(&store::AuditFilter {
            member_id: Some(&purged),
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = audit.iter().map(|a| a.action.as_str()).collect();
    assert!(actions.contains(&"uninstall"), "{actions:?}");
    assert!(actions.contains(&"portal.purged"), "{actions:?}");
    let repeats = store
        .list_audit(&store::AuditFilter {
            member_id: Some(&kept),
            action_prefix: Some("uninstall.repeat"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(repeats.len(), 1);
}

/// Library use: an in-process handler receives the same events the targets
/// do, and a failing handler is retried like a failing target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_handler_receives_every_event_and_is_retried() {
    use std::sync::Mutex;
    struct Collect {
        seen: Arc<Mutex<Vec<serde_json::Value>>>,
        fail_first: std::sync::atomic::AtomicBool,
    }
    impl engine::forward::EventHandler for Collect {
        fn handle<'a>(
            &'a self,
            event: &'a serde_json::Value,
        ) -> futures::future::BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                if self.fail_first.swap(false, Ordering::SeqCst) {
                    return Err("the app's code failed once".into());
                }
                self.seen.lock().unwrap().push(event.clone());
                Ok(())
            })
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let (rx, url) = Receiver::start(0).await;
    let cfg = Arc::new(config(&url));
    install(&store, &member(1), "apptoken").await;
    for i in 0..10 {
        ingest(
            &store,
            &member(1),
            "ONCRMDEALADD",
            &format!("k{i}"),
            json!({"FIELDS": {"ID": i.to_string()}}),
        )
        .await;
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = Arc::new(Collect {
        seen: seen.clone(),
        fail_first: std::sync::atomic::AtomicBool::new(true),
    });
    let e = Engine::new(
        cfg,
        &secrets(),
        store.clone(),
        engine::system_now(),
        fast_opts(),
    )
    .unwrap()
    .with_event_handler(handler)
    .start();
    rx.wait_for(10, Duration::from_secs(30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handler saw {}",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.shutdown().await;
    let seen = seen.lock().unwrap();
    let ids: std::collections::BTreeSet<_> = seen
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 10, "every event once, the failed one retried");
    let from_target: std::collections::BTreeSet<_> =
        rx.accepted.lock().unwrap().keys().cloned().collect();
    assert_eq!(
        ids, from_target,
        "the same events, with the same ids, as the target"
    );
}

/// A target answering 503 with `Retry-After: 120` is not retried sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_the_target_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(|| async {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "120")],
                "busy",
            )
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let cfg = Arc::new(config(&url));
    install(&store, &member(1), "apptoken").await;
    ingest(
        &store,
        &member(1),
        "ONCRMDEALADD",
        "k1",
        json!({"FIELDS": {"ID": "1"}}),
    )
    .await;
    let started = engine::system_now()();
    let e = Engine::new(
        cfg,
        &secrets(),
        store.clone(),
        engine::system_now(),
        fast_opts(),
    )
    .unwrap()
    .start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let job = loop {
        let jobs = store
            .list_jobs(&store::JobFilter {
                state: Some("retryable"),
                kind: Some("forward"),
                ..Default::default()
            })
            .await
            .unwrap();
        if let Some(j) = jobs.into_iter().next() {
            break j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retryable forward"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    e.shutdown().await;
    assert!(
        job.run_at >= started + 119_000,
        "retried after {} ms",
        job.run_at - started
    );
    assert!(job.last_error.unwrap().contains("503"));
}

/// A job that writes to the store over and over while its heartbeat keeps
/// firing finishes: the heartbeat waiting for SQLite's one writer connection
/// must not stop the job, which may be holding that connection, from being
/// polled. (With the heartbeat awaited in a `select!` arm body each meeting
/// cost the pool's 30 s acquire timeout, and drains stalled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_heavy_job_is_not_stalled_by_its_own_heartbeat() {
    use engine::runner::{Handlers, JobError, JobHandler};
    use futures::future::BoxFuture;

    struct Writer(store::Store, engine::NowFn);
    impl JobHandler for Writer {
        fn run<'a>(&'a self, job: &'a store::Job) -> BoxFuture<'a, Result<(), JobError>> {
            Box::pin(async move {
                for i in 0..400 {
                    let entry = store::NewAudit {
                        member_id: None,
                        actor: "test",
                        action: "test.write",
                        outcome: "ok",
                        detail: json!({"job": job.id, "i": i}),
                    };
                    self.0
                        .append_audit(&entry, (self.1)())
                        .await
                        .map_err(|e| JobError::Permanent(e.to_string()))?;
                }
                Ok(())
            })
        }
    }

    let now = engine::system_now();
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let mut handlers = Handlers::default();
    handlers.insert("write", Arc::new(Writer(store.clone(), now.clone())));
    let opts = RunnerOptions {
        workers: 2,
        // Heartbeats every 10 ms: hundreds of them meet the job's writes.
        lease: Duration::from_millis(30),
        poll: Duration::from_millis(10),
        ..RunnerOptions::default()
    };
    let pool = engine::runner::start(store.clone(), handlers, engine::system_now(), opts);
    let payload = json!({});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let job = store::NewJob {
            kind: "write",
            member_id: None,
            serial_key: None,
            unique_key: None,
            calls_portal: false,
            payload: &payload,
            max_attempts: 1,
            run_at: now(),
        };
        ids.push(store.enqueue_job(&job, now()).await.unwrap().id());
    }
    pool.waker().notify_waiters();
    // Well inside one acquire timeout (30 s): a single stall fails the test.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    loop {
        let mut done = 0;
        for id in &ids {
            let j = store.get_job(*id).await.unwrap().unwrap();
            assert_ne!(j.state, "discarded", "job failed: {:?}", j.last_error);
            done += usize::from(j.state == "completed");
        }
        if done == ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the jobs stalled behind their heartbeats"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.shutdown().await;
}
