use store::{Keyring, OpenOptions, Store};

use crate::common::TestDb;

crate::conformance!(migrations_apply_once_and_report_pending);

async fn migrations_apply_once_and_report_pending(db: &TestDb) {
    // The TestDb is migrated already: a second run applies nothing.
    assert_eq!(db.store.migrate().await.unwrap(), 0);
    assert_eq!(db.store.pending_migrations().await.unwrap(), 0);
    db.store.ping().await.unwrap();
}

#[tokio::test]
async fn fresh_sqlite_reports_pending_then_none() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let keys = Keyring::from_hex(&"42".repeat(32)).unwrap();
    let s = Store::open(&url, keys, &OpenOptions::default())
        .await
        .unwrap();
    let pending = s.pending_migrations().await.unwrap();
    assert!(pending >= 1);
    assert_eq!(s.migrate().await.unwrap(), pending);
    assert_eq!(s.pending_migrations().await.unwrap(), 0);
    s.close().await;
}

#[tokio::test]
async fn unknown_url_scheme_is_refused() {
    let keys = Keyring::from_hex(&"42".repeat(32)).unwrap();
    let err = Store::open("mysql://localhost/x", keys, &OpenOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, store::StoreError::BadUrl), "{err}");
}
