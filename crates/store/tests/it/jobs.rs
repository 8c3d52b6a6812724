use std::collections::HashSet;

use store::{Enqueued, FailOutcome, JobFilter, NewJob};

use crate::common::{Install, T0, TestDb};

crate::conformance!(
    unique_key_dedupes_live_jobs_only,
    claims_are_exclusive_under_concurrency,
    retries_then_dead_letter_then_replay,
    rescuer_returns_jobs_of_dead_workers,
    serial_key_keeps_order_and_never_interleaves,
    uninstall_cancels_a_portals_jobs,
    leases_are_exclusive_until_they_expire,
    enqueue_jobs_chunks_and_dedupes_like_enqueue_job,
    complete_jobs_completes_only_the_workers_running_jobs,
);

fn job<'a>(kind: &'a str, payload: &'a serde_json::Value) -> NewJob<'a> {
    NewJob {
        kind,
        member_id: None,
        serial_key: None,
        unique_key: None,
        calls_portal: true,
        payload,
        max_attempts: 3,
        run_at: T0,
    }
}

async fn unique_key_dedupes_live_jobs_only(db: &TestDb) {
    let s = &db.store;
    let p = serde_json::json!({"n": 1});
    let first = s
        .enqueue_job(
            &NewJob {
                unique_key: Some("forward:1"),
                ..job("forward", &p)
            },
            T0,
        )
        .await
        .unwrap();
    assert!(matches!(first, Enqueued::Created(_)));
    let again = s
        .enqueue_job(
            &NewJob {
                unique_key: Some("forward:1"),
                ..job("forward", &p)
            },
            T0,
        )
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Duplicate(first.id()));
    // Once the job is final, the key is free again.
    let claimed = s.claim_jobs("w1", 10, 30_000, T0).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(s.complete_job(first.id(), "w1", T0 + 1).await.unwrap());
    let third = s
        .enqueue_job(
            &NewJob {
                unique_key: Some("forward:1"),
                ..job("forward", &p)
            },
            T0 + 2,
        )
        .await
        .unwrap();
    assert!(matches!(third, Enqueued::Created(id) if id != first.id()));
    let counts = s.job_counts().await.unwrap();
    assert!(counts.contains(&("completed".into(), 1)));
    assert!(counts.contains(&("available".into(), 1)));
}

async fn claims_are_exclusive_under_concurrency(db: &TestDb) {
    let p = serde_json::json!({});
    for _ in 0..120 {
        db.store.enqueue_job(&job("work", &p), T0).await.unwrap();
    }
    let other = db.second_handle().await;
    let mut tasks = Vec::new();
    for (w, s) in [
        ("a", db.store.clone()),
        ("b", other.clone()),
        ("c", db.store.clone()),
        ("d", other.clone()),
    ] {
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s.claim_jobs(w, 7, 30_000, T0).await.unwrap();
                if got.is_empty() {
                    break;
                }
                for j in got {
                    assert_eq!(j.state, "running");
                    assert_eq!(j.locked_by.as_deref(), Some(w));
                    assert_eq!(j.attempt, 1);
                    assert!(s.complete_job(j.id, w, T0).await.unwrap());
                    mine.push(j.id);
                }
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 120, "every job claimed");
    assert_eq!(unique.len(), 120, "no job claimed twice");
    other.close().await;
}

async fn retries_then_dead_letter_then_replay(db: &TestDb) {
    let s = &db.store;
    let p = serde_json::json!({"x": 1});
    let id = s.enqueue_job(&job("forward", &p), T0).await.unwrap().id();
    let mut now = T0;
    for attempt in 1..=2 {
        let j = s.claim_jobs("w", 1, 30_000, now).await.unwrap().remove(0);
        assert_eq!(j.attempt, attempt);
        let out = s
            .fail_job(id, "w", "target answered 503", Some(now + 1000), now)
            .await
            .unwrap();
        assert_eq!(out, FailOutcome::Retry(now + 1000));
        // Not runnable before its time.
        assert!(
            s.claim_jobs("w", 1, 30_000, now + 999)
                .await
                .unwrap()
                .is_empty()
        );
        now += 1000;
    }
    s.claim_jobs("w", 1, 30_000, now).await.unwrap();
    let out = s
        .fail_job(id, "w", "target answered 503", Some(now + 1000), now)
        .await
        .unwrap();
    assert_eq!(
        out,
        FailOutcome::Discarded,
        "third failure of three attempts"
    );
    let j = s.get_job(id).await.unwrap().unwrap();
    assert_eq!(j.state, "discarded");
    assert_eq!(j.last_error.as_deref(), Some("target answered 503"));
    assert_eq!(j.finalized_at, Some(now));
    assert!(
        s.claim_jobs("w", 1, 30_000, now + 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    // A stranger cannot fail or complete a job it does not hold.
    assert_eq!(
        s.fail_job(id, "w", "x", None, now).await.unwrap(),
        FailOutcome::NotOwner
    );
    // Replay from the dead letter.
    assert!(s.retry_job(id, now + 1).await.unwrap());
    assert!(
        !s.retry_job(id, now + 1).await.unwrap(),
        "only final jobs replay"
    );
    let j = s
        .claim_jobs("w", 1, 30_000, now + 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(j.attempt, 1);
    assert_eq!(j.payload_json(), p);
    // A permanent failure dead-letters at once.
    assert_eq!(
        s.fail_job(id, "w", "bad request", None, now + 2)
            .await
            .unwrap(),
        FailOutcome::Discarded
    );
    let dead = s
        .list_jobs(&JobFilter {
            state: Some("discarded"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
}

async fn rescuer_returns_jobs_of_dead_workers(db: &TestDb) {
    let s = &db.store;
    let p = serde_json::json!({});
    let a = s.enqueue_job(&job("work", &p), T0).await.unwrap().id();
    let b = s
        .enqueue_job(
            &NewJob {
                max_attempts: 1,
                ..job("work", &p)
            },
            T0,
        )
        .await
        .unwrap()
        .id();
    assert_eq!(s.claim_jobs("dead", 10, 5_000, T0).await.unwrap().len(), 2);
    // A live worker heartbeats; nothing is rescued while leases hold.
    assert!(s.heartbeat_job(a, "dead", 5_000, T0 + 1_000).await.unwrap());
    assert!(
        !s.heartbeat_job(a, "someone-else", 5_000, T0 + 1_000)
            .await
            .unwrap()
    );
    assert_eq!(s.rescue_jobs(T0 + 4_000).await.unwrap(), 0);
    assert_eq!(s.rescue_jobs(T0 + 7_000).await.unwrap(), 2);
    let ja = s.get_job(a).await.unwrap().unwrap();
    assert_eq!(ja.state, "retryable");
    assert!(ja.last_error.unwrap().contains("lease expired"));
    assert_eq!(
        s.get_job(b).await.unwrap().unwrap().state,
        "discarded",
        "it was its last attempt"
    );
    // The dead worker can no longer complete what it lost.
    assert!(!s.complete_job(a, "dead", T0 + 7_001).await.unwrap());
    let again = s.claim_jobs("alive", 10, 5_000, T0 + 7_001).await.unwrap();
    assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), [a]);
    assert_eq!(again[0].attempt, 2);
}

async fn serial_key_keeps_order_and_never_interleaves(db: &TestDb) {
    let s = &db.store;
    let p = serde_json::json!({});
    let mut ids = Vec::new();
    for kind in ["install", "reconcile", "migrate"] {
        ids.push(
            s.enqueue_job(
                &NewJob {
                    serial_key: Some("portal:a"),
                    ..job(kind, &p)
                },
                T0,
            )
            .await
            .unwrap()
            .id(),
        );
    }
    let other = s
        .enqueue_job(
            &NewJob {
                serial_key: Some("portal:b"),
                ..job("install", &p)
            },
            T0,
        )
        .await
        .unwrap()
        .id();
    let first = s.claim_jobs("w1", 10, 30_000, T0).await.unwrap();
    let got: Vec<_> = first.iter().map(|j| j.id).collect();
    assert_eq!(got, [ids[0], other], "one job per key, the oldest");
    assert!(s.claim_jobs("w2", 10, 30_000, T0).await.unwrap().is_empty());
    // A failure with a retry keeps the younger ones waiting: order holds.
    s.fail_job(ids[0], "w1", "timeout", Some(T0 + 100), T0)
        .await
        .unwrap();
    assert!(
        s.claim_jobs("w2", 10, 30_000, T0 + 50)
            .await
            .unwrap()
            .is_empty()
    );
    let j = s.claim_jobs("w2", 10, 30_000, T0 + 100).await.unwrap();
    assert_eq!(j.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[0]]);
    s.complete_job(ids[0], "w2", T0 + 101).await.unwrap();
    let j = s.claim_jobs("w2", 10, 30_000, T0 + 101).await.unwrap();
    assert_eq!(j.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[1]]);
}

async fn uninstall_cancels_a_portals_jobs(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    let p = serde_json::json!({});
    for _ in 0..3 {
        s.enqueue_job(
            &NewJob {
                member_id: Some(m),
                ..job("reconcile", &p)
            },
            T0,
        )
        .await
        .unwrap();
    }
    let unrelated = s.enqueue_job(&job("prune", &p), T0).await.unwrap().id();
    // A forward of an event the portal sent before uninstalling goes on.
    let forward = s
        .enqueue_job(
            &NewJob {
                member_id: Some(m),
                calls_portal: false,
                ..job("forward", &p)
            },
            T0,
        )
        .await
        .unwrap()
        .id();
    let running = s.claim_jobs("w", 1, 30_000, T0).await.unwrap().remove(0);
    assert_eq!(running.member_id.as_deref(), Some(m));
    assert!(s.mark_uninstalled(m, false, None, T0 + 1).await.unwrap());
    let jobs = s
        .list_jobs(&JobFilter {
            member_id: Some(m),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.len(), 4);
    assert!(
        jobs.iter()
            .filter(|j| j.id != forward)
            .all(|j| j.state == "cancelled")
    );
    assert_eq!(
        s.get_job(forward).await.unwrap().unwrap().state,
        "available"
    );
    assert!(!s.complete_job(running.id, "w", T0 + 2).await.unwrap());
    assert_eq!(
        s.get_job(unrelated).await.unwrap().unwrap().state,
        "available"
    );
    let audit = s
        .list_audit(&store::AuditFilter {
            member_id: Some(m),
            action_prefix: Some("uninstall"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit[0].detail_json()["jobs_cancelled"], 3);
    assert_eq!(s.cancel_portal_jobs(m, T0 + 3).await.unwrap(), 0);
    // Purging keeps it too.
    assert!(s.purge_portal(m, T0 + 4).await.unwrap());
    assert_eq!(
        s.get_job(forward).await.unwrap().unwrap().state,
        "available"
    );
}

async fn leases_are_exclusive_until_they_expire(db: &TestDb) {
    let a = &db.store;
    let b = db.second_handle().await;
    assert!(a.try_lease("drain:m1", "a", 1_000, T0).await.unwrap());
    assert!(!b.try_lease("drain:m1", "b", 1_000, T0 + 10).await.unwrap());
    assert!(
        a.try_lease("drain:m1", "a", 1_000, T0 + 500).await.unwrap(),
        "renewal"
    );
    assert!(
        !b.try_lease("drain:m1", "b", 1_000, T0 + 1_400)
            .await
            .unwrap()
    );
    assert!(
        b.try_lease("drain:m1", "b", 1_000, T0 + 1_500)
            .await
            .unwrap(),
        "expired: taken over"
    );
    assert!(
        !a.try_lease("drain:m1", "a", 1_000, T0 + 1_600)
            .await
            .unwrap()
    );
    b.release_lease("drain:m1", "b").await.unwrap();
    assert!(
        a.try_lease("drain:m1", "a", 1_000, T0 + 1_700)
            .await
            .unwrap()
    );
    b.close().await;
}

async fn enqueue_jobs_chunks_and_dedupes_like_enqueue_job(db: &TestDb) {
    let s = &db.store;
    let p = serde_json::json!({"n": 1});
    let live = s
        .enqueue_job(
            &NewJob {
                unique_key: Some("reconcile:0"),
                ..job("reconcile", &p)
            },
            T0,
        )
        .await
        .unwrap();
    // More than one transaction's worth, one key twice, one already live.
    let n = store::jobs::ENQUEUE_CHUNK + 7;
    let keys: Vec<String> = (0..n)
        .map(|i| format!("reconcile:{}", i.min(n - 2)))
        .collect();
    let jobs: Vec<NewJob<'_>> = keys
        .iter()
        .map(|k| NewJob {
            unique_key: Some(k),
            ..job("reconcile", &p)
        })
        .collect();
    let out = s.enqueue_jobs(&jobs, T0).await.unwrap();
    assert_eq!(out.len(), n);
    assert_eq!(out[0], Enqueued::Duplicate(live.id()));
    let created: Vec<i64> = out
        .iter()
        .filter_map(|e| match e {
            Enqueued::Created(id) => Some(*id),
            Enqueued::Duplicate(_) => None,
        })
        .collect();
    assert_eq!(
        created.len(),
        n - 2,
        "the live key and the repeat are duplicates"
    );
    assert_eq!(out[n - 1], Enqueued::Duplicate(out[n - 2].id()));
    let ids: HashSet<i64> = created.iter().copied().collect();
    assert_eq!(ids.len(), created.len());
    let all = s
        .list_jobs(&JobFilter {
            state: Some("available"),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), n - 1);
    assert!(s.enqueue_jobs(&[], T0).await.unwrap().is_empty());
}

async fn complete_jobs_completes_only_the_workers_running_jobs(db: &TestDb) {
    let s = &db.store;
    let p = serde_json::json!({"n": 1});
    for _ in 0..6 {
        s.enqueue_job(&job("forward", &p), T0).await.unwrap();
    }
    let mine: Vec<i64> = s
        .claim_jobs("w1", 4, 30_000, T0)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    let theirs = s.claim_jobs("w2", 1, 30_000, T0).await.unwrap()[0].id;
    let waiting = s
        .list_jobs(&JobFilter {
            state: Some("available"),
            ..JobFilter::default()
        })
        .await
        .unwrap()[0]
        .id;
    // A failed one is no longer running.
    s.fail_job(mine[3], "w1", "boom", Some(T0 + 10), T0)
        .await
        .unwrap();
    let mut ask = mine.clone();
    ask.extend([theirs, waiting]);
    let mut done = s.complete_jobs(&ask, "w1", T0 + 5).await.unwrap();
    done.sort_unstable();
    assert_eq!(done, mine[..3].to_vec());
    for id in &mine[..3] {
        let j = s.get_job(*id).await.unwrap().unwrap();
        assert_eq!(j.state, "completed");
        assert_eq!(j.finalized_at, Some(T0 + 5));
        assert_eq!(j.locked_by, None);
    }
    assert_eq!(
        s.get_job(mine[3]).await.unwrap().unwrap().state,
        "retryable"
    );
    assert_eq!(s.get_job(theirs).await.unwrap().unwrap().state, "running");
    assert_eq!(
        s.get_job(waiting).await.unwrap().unwrap().state,
        "available"
    );
    // Again: nothing left to complete.
    assert!(
        s.complete_jobs(&mine, "w1", T0 + 6)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.complete_jobs(&[], "w1", T0 + 6).await.unwrap().is_empty());
}
