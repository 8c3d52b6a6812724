use crate::common::{T0, TestDb};

crate::conformance!(
    shared_bucket_allows_burst_then_drains,
    shared_bucket_holds_across_handles,
    grouped_reservations_match_one_by_one
);

async fn shared_bucket_allows_burst_then_drains(db: &TestDb) {
    let s = &db.store;
    // 2 requests/s (500 ms interval), burst 50: the standard plan.
    for k in 0..50 {
        assert_eq!(
            s.reserve_rate_slot("m1", 500.0, 50, T0).await.unwrap(),
            0,
            "request {k}"
        );
    }
    assert_eq!(
        s.reserve_rate_slot("m1", 500.0, 50, T0).await.unwrap(),
        500,
        "51st waits one interval"
    );
    assert_eq!(
        s.reserve_rate_slot("m1", 500.0, 50, T0).await.unwrap(),
        1000
    );
    // Another portal has its own bucket.
    assert_eq!(s.reserve_rate_slot("m2", 500.0, 50, T0).await.unwrap(), 0);
    // After a long pause the bucket is empty again.
    assert_eq!(
        s.reserve_rate_slot("m1", 500.0, 50, T0 + 60_000)
            .await
            .unwrap(),
        0
    );
    // A penalty pushes the next slot back; a repeat does not stack.
    s.penalise_rate("m2", 30_000.0, T0).await.unwrap();
    s.penalise_rate("m2", 30_000.0, T0).await.unwrap();
    // Free again at T0 + 30 s - burst × interval = T0 + 5 s.
    assert_eq!(
        s.reserve_rate_slot("m2", 500.0, 50, T0).await.unwrap(),
        5_500
    );
}

async fn shared_bucket_holds_across_handles(db: &TestDb) {
    let a = db.store.clone();
    let b = db.second_handle().await;
    let mut tasks = Vec::new();
    for s in [a, b.clone()] {
        tasks.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            for _ in 0..30 {
                waits.push(s.reserve_rate_slot("m1", 10.0, 20, T0).await.unwrap());
            }
            waits
        }));
    }
    let mut waits: Vec<i64> = Vec::new();
    for t in tasks {
        waits.extend(t.await.unwrap());
    }
    waits.sort_unstable();
    // 60 requests at once: 20 go now, the other 40 are spaced one interval apart.
    assert_eq!(waits.iter().filter(|w| **w == 0).count(), 20);
    let expected: Vec<i64> = (0..20).map(|_| 0).chain((1..=40).map(|k| k * 10)).collect();
    assert_eq!(waits, expected);
    b.close().await;
}

async fn grouped_reservations_match_one_by_one(db: &TestDb) {
    let s = &db.store;
    // Burst 2 at 500 ms: two portals interleaved, in order, one commit.
    let req = |m: &'static str, now: i64| store::RateRequest {
        member_id: m,
        interval_ms: 500.0,
        burst: 2,
        now,
    };
    let waits = s
        .reserve_rate_slots(&[
            req("g1", T0),
            req("g2", T0),
            req("g1", T0),
            req("g1", T0),
            req("g2", T0),
            req("g1", T0 + 1),
        ])
        .await
        .unwrap();
    assert_eq!(waits, [0, 0, 0, 500, 0, 999]);
    // The same buckets as the one-by-one reservation sees.
    assert_eq!(s.reserve_rate_slot("g2", 500.0, 2, T0).await.unwrap(), 500);
    assert_eq!(s.reserve_rate_slot("g1", 500.0, 2, T0).await.unwrap(), 1500);
    assert!(s.reserve_rate_slots(&[]).await.unwrap().is_empty());
}
