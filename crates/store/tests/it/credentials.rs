use crate::common::{Install, T0, TestDb, tokens};

crate::conformance!(
    refresh_is_single_flight_across_handles,
    concurrent_writers_from_two_handles_lose_nothing,
);

async fn refresh_is_single_flight_across_handles(db: &TestDb) {
    let a = &db.store;
    let b = db.second_handle().await;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    a.record_verified_install(&i.verified(), T0).await.unwrap();
    let v1 = a.load_credentials(m).await.unwrap().unwrap().version;

    assert!(a.try_lock_refresh(m, "proc-a", T0, 30_000).await.unwrap());
    assert!(
        !b.try_lock_refresh(m, "proc-b", T0 + 1, 30_000)
            .await
            .unwrap()
    );
    // Re-entrant for its owner.
    assert!(
        a.try_lock_refresh(m, "proc-a", T0 + 2, 30_000)
            .await
            .unwrap()
    );

    let rotated = tokens("rotated");
    assert!(
        a.finish_refresh(m, "proc-a", v1, &rotated, T0 + 3)
            .await
            .unwrap()
    );
    // B now gets the lease, re-reads and sees A's pair instead of spending
    // the dead refresh token.
    assert!(
        b.try_lock_refresh(m, "proc-b", T0 + 4, 30_000)
            .await
            .unwrap()
    );
    let seen = b.load_credentials(m).await.unwrap().unwrap();
    assert_eq!(seen.tokens, rotated);
    assert_eq!(seen.version, v1 + 1);
    assert_eq!(seen.refreshed_at, Some(T0 + 3));
    // A stale compare-and-swap stores nothing.
    assert!(
        !b.finish_refresh(m, "proc-b", v1, &tokens("stale"), T0 + 5)
            .await
            .unwrap()
    );
    assert_eq!(
        b.load_credentials(m).await.unwrap().unwrap().tokens,
        rotated
    );
    b.release_refresh_lock(m, "proc-b").await.unwrap();
    // An expired lease can be taken over.
    assert!(a.try_lock_refresh(m, "proc-a", T0 + 6, 10).await.unwrap());
    assert!(b.try_lock_refresh(m, "proc-b", T0 + 17, 10).await.unwrap());
    b.close().await;
}

async fn concurrent_writers_from_two_handles_lose_nothing(db: &TestDb) {
    let a = db.store.clone();
    let b = db.second_handle().await;
    let i = Install::new("acme");
    let m = i.member_id.as_str().to_owned();
    a.record_verified_install(&i.verified(), T0).await.unwrap();
    let mut tasks = Vec::new();
    for (n, s) in [(0, a.clone()), (1, b.clone())] {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..100 {
                s.append_audit(
                    &store::NewAudit {
                        member_id: Some(&m),
                        actor: "test",
                        action: "writer",
                        outcome: "ok",
                        detail: serde_json::json!({"writer": n, "k": k}),
                    },
                    T0 + k,
                )
                .await
                .unwrap();
                if k % 10 == 0 {
                    s.save_credentials(&m, &tokens(&format!("w{n}k{k}")), T0 + k)
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows = a
        .list_audit(&store::AuditFilter {
            member_id: Some(&m),
            action_prefix: Some("writer"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 200);
    let c = a.load_credentials(&m).await.unwrap().unwrap();
    let v0 = T0;
    assert_eq!(c.version, v0 + 20, "every credential write was applied");
    b.close().await;
}
