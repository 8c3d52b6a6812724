//! Fleet-sized work in few commits: the drift check enqueues a reconcile per
//! drifted portal in chunked transactions, and the pool's completions of
//! jobs that finish together share commits — without losing or repeating a
//! job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::runner::{Handlers, JobError, JobHandler, RunnerOptions};
use futures::future::BoxFuture;
use serde_json::json;

use crate::helpers::{config, install, member, sqlite_store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_check_enqueues_one_reconcile_per_drifted_portal() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let cfg = config("http://127.0.0.1:9");
    // More portals than one enqueue transaction holds; every third one is
    // already at the manifest version, one is not installed yet.
    let n = store::jobs::ENQUEUE_CHUNK * 2 + 50;
    let mut drifted = Vec::new();
    for i in 0..n {
        let m = member(i);
        install(&store, &m, &format!("{:032x}", i + 1)).await;
        if i % 3 == 0 {
            store
                .set_installed_version(&m, cfg.app.version, 0)
                .await
                .unwrap();
        } else {
            drifted.push(m);
        }
    }
    let now = 1_000;
    assert_eq!(
        engine::drift_check(&store, &cfg, now).await.unwrap(),
        drifted.len()
    );
    // Already queued: nothing new.
    assert_eq!(engine::drift_check(&store, &cfg, now + 1).await.unwrap(), 0);
    let jobs = store
        .list_jobs(&store::JobFilter {
            kind: Some("reconcile"),
            ..store::JobFilter::default()
        })
        .await
        .unwrap();
    let mut members: Vec<String> = jobs
        .iter()
        .map(|j| {
            assert_eq!(j.state, "available");
            assert_eq!(j.run_at, now);
            let m = j.member_id.clone().unwrap();
            assert_eq!(j.payload_json()["member_id"], m.as_str());
            assert_eq!(
                j.serial_key.as_deref(),
                Some(format!("portal:{m}").as_str())
            );
            assert_eq!(
                j.unique_key.as_deref(),
                Some(format!("reconcile:{m}").as_str())
            );
            m
        })
        .collect();
    members.sort();
    drifted.sort();
    assert_eq!(members, drifted);
}

/// Counts runs per job id.
struct Count(Arc<Mutex<HashMap<i64, u32>>>);

impl JobHandler for Count {
    fn run<'a>(&'a self, job: &'a store::Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            *self.0.lock().unwrap().entry(job.id).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_finishing_together_are_all_completed_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let mut handlers = Handlers::default();
    handlers.insert("count", Arc::new(Count(runs.clone())));
    let pool = engine::runner::start(
        store.clone(),
        handlers,
        engine::system_now(),
        RunnerOptions {
            workers: 32,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(10),
            ..RunnerOptions::default()
        },
    );
    let payload = json!({});
    let now = engine::system_now()();
    let jobs: Vec<store::NewJob<'_>> = (0..600)
        .map(|_| store::NewJob {
            kind: "count",
            member_id: None,
            serial_key: None,
            unique_key: None,
            calls_portal: false,
            payload: &payload,
            max_attempts: 1,
            run_at: now,
        })
        .collect();
    let ids: Vec<i64> = store
        .enqueue_jobs(&jobs, now)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id())
        .collect();
    pool.waker().notify_waiters();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let counts = store.job_counts().await.unwrap();
        let completed = counts
            .iter()
            .find(|(s, _)| s == "completed")
            .map_or(0, |(_, n)| *n);
        if completed == ids.len() as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {completed} of {} jobs completed: {counts:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.shutdown().await;
    {
        let runs = runs.lock().unwrap();
        assert_eq!(runs.len(), ids.len());
        assert!(runs.values().all(|n| *n == 1), "a job ran twice");
    }
    for id in ids {
        let j = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(j.state, "completed");
        assert!(j.finalized_at.is_some() && j.locked_by.is_none());
    }
}
