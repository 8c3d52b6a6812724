//! The portal cache in front of `check_app_token`: changes made through the
//! same handle are seen at once, changes made by another process within the
//! TTL, and a token the cache does not know is re-checked before it is
//! refused.

use std::time::Duration;

use store::{OpenOptions, PortalStatus, Store, TokenCheck};

use crate::common::{Install, T0, TestDb, app_token, tokens};

crate::conformance!(
    cached_portal_is_dropped_on_every_change_made_through_the_handle,
    another_process_change_is_seen_within_the_ttl,
    a_new_token_is_rechecked_before_it_is_refused,
    zero_ttl_reads_the_database_every_time,
);

/// A handle on `db` with its own pools and a cache of `ttl`, as another
/// process would open it.
async fn handle(db: &TestDb, ttl: Duration) -> Store {
    let opts = OpenOptions {
        portal_cache_ttl: ttl,
        ..OpenOptions::default()
    };
    Store::open(&db.url, db.keys.clone(), &opts).await.unwrap()
}

const HOUR: Duration = Duration::from_secs(3600);

async fn cached_portal_is_dropped_on_every_change_made_through_the_handle(db: &TestDb) {
    // An hour-long TTL: only the invalidations can make these answers fresh.
    let s = handle(db, HOUR).await;
    let mut i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    let first = i.app_token.clone();
    assert_eq!(
        s.check_app_token(m, &first, T0).await.unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Installing,
            generation: 1
        }
    );
    s.set_status(m, PortalStatus::Installed, None, "engine", T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        s.check_app_token(m, &first, T0 + 2).await.unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Installed,
            generation: 1
        },
        "a status change is seen at once"
    );
    // Reinstall with a new token: the old one stops matching at once.
    i.app_token = app_token("second");
    i.tokens = tokens("second");
    s.record_verified_install(&i.verified(), T0 + 3)
        .await
        .unwrap();
    assert_eq!(
        s.check_app_token(m, &first, T0 + 4).await.unwrap(),
        TokenCheck::Mismatch,
        "the replaced token is refused at once"
    );
    assert_eq!(
        s.check_app_token(m, &i.app_token, T0 + 4).await.unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Installing,
            generation: 2
        }
    );
    s.set_status(m, PortalStatus::Installed, None, "engine", T0 + 5)
        .await
        .unwrap();
    assert!(matches!(
        s.check_app_token(m, &i.app_token, T0 + 5).await.unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Installed,
            ..
        }
    ));
    s.mark_uninstalled(m, true, None, T0 + 6).await.unwrap();
    assert_eq!(
        s.check_app_token(m, &i.app_token, T0 + 7).await.unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Uninstalled,
            generation: 2
        },
        "an uninstall is seen at once"
    );
    s.purge_portal(m, T0 + 8).await.unwrap();
    assert_eq!(
        s.check_app_token(m, &i.app_token, T0 + 9).await.unwrap(),
        TokenCheck::Mismatch,
        "a purged portal has no token"
    );
    s.close().await;
}

async fn another_process_change_is_seen_within_the_ttl(db: &TestDb) {
    let ttl = Duration::from_millis(1_000);
    let a = handle(db, ttl).await;
    let b = &db.store; // the other process
    let mut i = Install::new("acme");
    let m = i.member_id.as_str();
    b.record_verified_install(&i.verified(), T0).await.unwrap();
    b.set_status(m, PortalStatus::Installed, None, "engine", T0)
        .await
        .unwrap();
    let old = i.app_token.clone();
    assert!(matches!(
        a.check_app_token(m, &old, T0).await.unwrap(),
        TokenCheck::Match { generation: 1, .. }
    ));
    // b uninstalls: a's entry from T0 is answered until T0 + ttl, not after.
    b.mark_uninstalled(m, false, None, T0 + 1).await.unwrap();
    assert_eq!(
        a.check_app_token(m, &old, T0 + 999).await.unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Installed,
            generation: 1
        },
        "within the TTL the cached entry answers"
    );
    assert_eq!(
        a.check_app_token(m, &old, T0 + 1_000).await.unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Uninstalled,
            generation: 1
        },
        "at the TTL the database answers"
    );
    // b reinstalls with a new token: the old one is refused once the TTL is
    // over.
    i.app_token = app_token("second");
    i.tokens = tokens("second");
    b.record_verified_install(&i.verified(), T0 + 1_001)
        .await
        .unwrap();
    assert!(matches!(
        a.check_app_token(m, &old, T0 + 1_999).await.unwrap(),
        TokenCheck::Match { generation: 1, .. }
    ));
    assert_eq!(
        a.check_app_token(m, &old, T0 + 2_000).await.unwrap(),
        TokenCheck::Mismatch
    );
    // A clock that went backwards does not extend an entry's life.
    b.mark_uninstalled(m, true, None, T0 + 2_001).await.unwrap();
    assert!(matches!(
        a.check_app_token(m, &i.app_token, T0 + 1).await.unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Uninstalled,
            generation: 2
        }
    ));
    a.close().await;
}

async fn a_new_token_is_rechecked_before_it_is_refused(db: &TestDb) {
    let a = handle(db, HOUR).await;
    let b = &db.store;
    let mut i = Install::new("acme");
    let m = i.member_id.as_str();
    b.record_verified_install(&i.verified(), T0).await.unwrap();
    let old = i.app_token.clone();
    assert!(matches!(
        a.check_app_token(m, &old, T0).await.unwrap(),
        TokenCheck::Match { generation: 1, .. }
    ));
    i.app_token = app_token("second");
    i.tokens = tokens("second");
    b.record_verified_install(&i.verified(), T0 + 1)
        .await
        .unwrap();
    // The cache still holds the old hash, yet the genuine new token is
    // accepted at once, and the answer replaces the cached entry.
    assert_eq!(
        a.check_app_token(m, &i.app_token, T0 + 2).await.unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Installing,
            generation: 2
        }
    );
    assert_eq!(
        a.check_app_token(m, &old, T0 + 3).await.unwrap(),
        TokenCheck::Mismatch,
        "the re-check refreshed the entry"
    );
    assert_eq!(
        a.check_app_token(m, &app_token("forged"), T0 + 3)
            .await
            .unwrap(),
        TokenCheck::Mismatch
    );
    // An unknown portal is never remembered: once b records it, a knows it.
    let j = Install::new("later");
    let n = j.member_id.as_str();
    assert_eq!(
        a.check_app_token(n, &j.app_token, T0 + 4).await.unwrap(),
        TokenCheck::UnknownPortal
    );
    b.record_verified_install(&j.verified(), T0 + 5)
        .await
        .unwrap();
    assert!(matches!(
        a.check_app_token(n, &j.app_token, T0 + 6).await.unwrap(),
        TokenCheck::Match { generation: 1, .. }
    ));
    a.close().await;
}

async fn zero_ttl_reads_the_database_every_time(db: &TestDb) {
    let a = handle(db, Duration::ZERO).await;
    let b = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    b.record_verified_install(&i.verified(), T0).await.unwrap();
    assert!(matches!(
        a.check_app_token(m, &i.app_token, T0).await.unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Installing,
            ..
        }
    ));
    b.set_status(m, PortalStatus::Installed, None, "engine", T0)
        .await
        .unwrap();
    assert!(matches!(
        a.check_app_token(m, &i.app_token, T0).await.unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Installed,
            ..
        }
    ));
    a.close().await;
}
