use store::{Appended, Enqueued, JobFilter, NewInboxEvent, NewJob};

use crate::common::{T0, TestDb};

crate::conformance!(
    inbox_batch_dedupes_and_seals_secrets,
    batches_of_every_size_keep_order_and_dedupe,
    dispatch_enqueues_jobs_atomically_once
);

async fn inbox_batch_dedupes_and_seals_secrets(db: &TestDb) {
    let s = &db.store;
    let payload = serde_json::json!({"event": "ONCRMDEALADD", "data": {"FIELDS": {"ID": "7"}}});
    let secrets = r#"{"access_token":"inbox-secret-access-token"}"#;
    let ev = |key: &'static str, secrets: Option<&'static str>| NewInboxEvent {
        member_id: "m1",
        dedupe_key: key,
        event: "ONCRMDEALADD",
        source: "online",
        verified: true,
        ts: Some(1_766_047_124),
        payload: &payload,
        secrets,
    };
    let out = s
        .append_inbox(
            &[ev("k1", Some(secrets)), ev("k2", None), ev("k1", None)],
            T0,
        )
        .await
        .unwrap();
    assert!(matches!(out[0], Appended::Inserted(_)));
    assert!(matches!(out[1], Appended::Inserted(_)));
    assert_eq!(out[2], Appended::Duplicate, "a repeat in the same batch");
    assert_eq!(
        s.append_inbox(&[ev("k2", None)], T0 + 1).await.unwrap(),
        [Appended::Duplicate],
        "a repeat in a later batch"
    );
    assert_eq!(s.inbox_depth().await.unwrap(), 2);
    let pending = s.pending_inbox(10).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].dedupe_key, "k1");
    assert_eq!(pending[0].payload_json(), payload);
    assert_eq!(pending[0].received_at, T0);
    assert_eq!(
        s.inbox_secrets(&pending[0]).unwrap().as_deref(),
        Some(secrets)
    );
    assert_eq!(s.inbox_secrets(&pending[1]).unwrap(), None);
    let Appended::Inserted(id) = out[0] else {
        unreachable!()
    };
    assert!(s.finish_inbox(id, "processed", T0 + 2).await.unwrap());
    assert!(!s.finish_inbox(id, "processed", T0 + 3).await.unwrap());
    let done = s.get_inbox(id).await.unwrap().unwrap();
    assert_eq!(done.state, "processed");
    assert!(!done.has_secrets(), "secrets are dropped once handled");
    assert_eq!(s.inbox_depth().await.unwrap(), 1);
}

async fn dispatch_enqueues_jobs_atomically_once(db: &TestDb) {
    let s = &db.store;
    let payload = serde_json::json!({"event": "ONAPPINSTALL"});
    let out = s
        .append_inbox(
            &[NewInboxEvent {
                member_id: "m1",
                dedupe_key: "k1",
                event: "ONAPPINSTALL",
                source: "online",
                verified: false,
                ts: None,
                payload: &payload,
                secrets: Some("{}"),
            }],
            T0,
        )
        .await
        .unwrap();
    let Appended::Inserted(id) = out[0] else {
        unreachable!()
    };
    let jp = serde_json::json!({"inbox_id": id});
    let job = NewJob {
        kind: "install",
        member_id: Some("m1"),
        serial_key: Some("portal:m1"),
        unique_key: Some("install:k1"),
        calls_portal: true,
        payload: &jp,
        max_attempts: 5,
        run_at: T0,
    };
    let got = s
        .dispatch_inbox(id, "dispatched", std::slice::from_ref(&job), T0)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(got[0], Enqueued::Created(_)));
    assert_eq!(
        s.dispatch_inbox(id, "dispatched", &[job], T0)
            .await
            .unwrap(),
        None,
        "only once"
    );
    assert_eq!(s.inbox_depth().await.unwrap(), 0);
    let row = s.get_inbox(id).await.unwrap().unwrap();
    assert_eq!(row.state, "dispatched");
    assert!(
        row.has_secrets(),
        "a dispatched delivery keeps its secrets for the job"
    );
    assert!(s.finish_inbox(id, "processed", T0 + 1).await.unwrap());
    assert!(!s.get_inbox(id).await.unwrap().unwrap().has_secrets());
    let jobs = s
        .list_jobs(&JobFilter {
            kind: Some("install"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
}

/// Batch sizes around the statement shapes and above the largest one (several
/// statements in one transaction), with repeats inside the batch, keys
/// already stored, and a stored key as the last row (the one a statement is
/// padded with).
async fn batches_of_every_size_keep_order_and_dedupe(db: &TestDb) {
    let s = &db.store;
    let payload = serde_json::json!({"event": "ONCRMDEALADD"});
    fn ev<'a>(key: &'a str, payload: &'a serde_json::Value) -> NewInboxEvent<'a> {
        NewInboxEvent {
            member_id: "m1",
            dedupe_key: key,
            event: "ONCRMDEALADD",
            source: "online",
            verified: true,
            ts: None,
            payload,
            secrets: None,
        }
    }
    let mut stored = 0i64;
    for (round, size) in [1usize, 2, 5, 37, 64, 65, 256, 300, 600]
        .into_iter()
        .enumerate()
    {
        let stored_key = format!("r{round}:stored");
        assert_eq!(
            s.append_inbox(&[ev(&stored_key, &payload)], T0)
                .await
                .unwrap()
                .len(),
            1
        );
        stored += 1;
        let mut keys: Vec<String> = (0..size).map(|i| format!("r{round}:k{i}")).collect();
        // Repeats of earlier rows, a stored key, and a stored key last.
        keys.insert(size / 2, keys[0].clone());
        keys.insert(size / 3, stored_key.clone());
        keys.push(stored_key.clone());
        let events: Vec<_> = keys.iter().map(|k| ev(k, &payload)).collect();
        let out = s.append_inbox(&events, T0).await.unwrap();
        assert_eq!(out.len(), keys.len());
        let mut first = std::collections::HashSet::new();
        let mut last_id = 0;
        for (k, o) in keys.iter().zip(&out) {
            if *k == stored_key || !first.insert(k.clone()) {
                assert_eq!(*o, Appended::Duplicate, "{k} (batch of {size})");
            } else {
                let Appended::Inserted(id) = *o else {
                    panic!("{k} must be stored (batch of {size})");
                };
                assert!(id > last_id, "ids follow the batch's order");
                last_id = id;
            }
        }
        stored += size as i64;
        assert_eq!(s.inbox_depth().await.unwrap(), stored, "batch of {size}");
        assert!(s.find_inbox_id(&keys[size]).await.unwrap().is_some());
    }
}
