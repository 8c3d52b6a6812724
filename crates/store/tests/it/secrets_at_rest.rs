//! No plaintext token may be found in the database: not in the SQLite file
//! (nor its WAL), not in any PostgreSQL column.

use crate::common::{Install, T0, TestDb};

fn secrets(i: &Install) -> Vec<String> {
    vec![
        i.tokens.access.expose_secret().to_owned(),
        i.tokens.refresh.expose_secret().to_owned(),
        i.app_token.expose_secret().to_owned(),
    ]
}

#[tokio::test]
async fn sqlite_file_holds_no_plaintext_token() {
    let db = TestDb::sqlite().await;
    let i = Install::new("leakcheck");
    db.store
        .record_verified_install(&i.verified(), T0)
        .await
        .unwrap();
    db.store
        .save_credentials(i.member_id.as_str(), &i.tokens, T0 + 1)
        .await
        .unwrap();
    let path = db.url.trim_start_matches("sqlite://").to_owned();
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(b) = std::fs::read(format!("{path}{suffix}")) {
            bytes.extend(b);
        }
    }
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The scan works: non-secret identity is there in plain text.
    assert!(contains(i.member_id.as_str()), "scan found no member_id");
    assert!(contains("leakcheck.bitrix24.com"));
    for s in secrets(&i) {
        assert!(!contains(&s), "a plaintext secret is in the SQLite file");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_rows_hold_no_plaintext_token() {
    let db = TestDb::postgres().await;
    let i = Install::new("leakcheck");
    db.store
        .record_verified_install(&i.verified(), T0)
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut dump = String::new();
    for table in ["portals", "credentials", "audit_log"] {
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM {table} t"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        for (r,) in rows {
            dump.push_str(&r);
        }
    }
    pool.close().await;
    assert!(
        dump.contains(i.member_id.as_str()),
        "dump found no member_id"
    );
    for s in secrets(&i) {
        assert!(!dump.contains(&s), "a plaintext secret is in PostgreSQL");
        // BYTEA renders as hex in JSON: check that form too.
        assert!(!dump.contains(&hex::encode(s.as_bytes())));
    }
    db.cleanup().await;
}
