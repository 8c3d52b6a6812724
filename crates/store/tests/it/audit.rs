use store::{AuditFilter, NewAudit};

use crate::common::{T0, TestDb};

crate::conformance!(
    audit_filters_by_portal_time_and_action,
    audit_log_is_append_only
);

async fn audit_filters_by_portal_time_and_action(db: &TestDb) {
    let s = &db.store;
    for (k, (m, action)) in [
        ("m1", "install.verified"),
        ("m2", "install.verified"),
        ("m1", "portal.status"),
        ("m1", "uninstall"),
    ]
    .into_iter()
    .enumerate()
    {
        s.append_audit(
            &NewAudit {
                member_id: Some(m),
                actor: "test",
                action,
                outcome: "ok",
                detail: serde_json::json!({"k": k}),
            },
            T0 + k as i64,
        )
        .await
        .unwrap();
    }
    let m1 = s
        .list_audit(&AuditFilter {
            member_id: Some("m1"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        m1.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["install.verified", "portal.status", "uninstall"]
    );
    let since = s
        .list_audit(&AuditFilter {
            since: Some(T0 + 2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(since.len(), 2);
    let installs = s
        .list_audit(&AuditFilter {
            action_prefix: Some("install."),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(installs.len(), 1);
    assert_eq!(installs[0].member_id.as_deref(), Some("m1"));
}

async fn audit_log_is_append_only(db: &TestDb) {
    db.store
        .append_audit(
            &NewAudit {
                member_id: Some("m1"),
                actor: "test",
                action: "install.verified",
                outcome: "ok",
                detail: serde_json::json!({}),
            },
            T0,
        )
        .await
        .unwrap();
    // Even a direct connection cannot rewrite history.
    let update = "UPDATE audit_log SET outcome = 'rewritten'";
    let delete = "DELETE FROM audit_log";
    if db.url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        assert!(sqlx::query(update).execute(&pool).await.is_err());
        assert!(sqlx::query(delete).execute(&pool).await.is_err());
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        assert!(sqlx::query(update).execute(&pool).await.is_err());
        assert!(sqlx::query(delete).execute(&pool).await.is_err());
        pool.close().await;
    }
    let all = db.store.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].outcome, "ok");
}
