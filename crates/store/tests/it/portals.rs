use store::{AuditFilter, PortalStatus, StoreError, TokenCheck};
use wire::{PortalDomain, Scope};

use crate::common::{Install, T0, TestDb, app_token, tokens};

crate::conformance!(
    install_stores_identity_credentials_and_audit,
    reinstall_keeps_the_key_and_replaces_token,
    status_machine_refuses_invalid_transitions,
    application_token_check_distinguishes_outcomes,
    uninstall_drops_credentials_and_repeats_are_noops,
    purge_removes_residue_but_keeps_audit,
    stale_installs_expire_with_audit,
    rename_updates_endpoint_with_audit,
    probe_profile_round_trips,
);

async fn install_stores_identity_credentials_and_audit(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let out = s.record_verified_install(&i.verified(), T0).await.unwrap();
    assert_eq!(out.previous, None);
    assert_eq!(out.generation, 1);
    let p = s.get_portal(i.member_id.as_str()).await.unwrap().unwrap();
    assert_eq!(p.member_id, i.member_id);
    assert_eq!(p.domain.as_str(), "acme.bitrix24.com");
    assert_eq!(p.client_endpoint, "https://acme.bitrix24.com/rest/");
    assert_eq!(p.server_endpoint, "https://oauth.bitrix.info/rest/");
    assert_eq!(p.status, PortalStatus::Installing);
    assert_eq!(p.install_flow.as_deref(), Some("event"));
    assert_eq!(p.language.as_deref(), Some("en"));
    assert_eq!(p.install_started_at, Some(T0));
    let c = s
        .load_credentials(i.member_id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.tokens, i.tokens);
    assert_eq!(c.version, T0, "a new row starts at the time it was written");
    let audit = s
        .list_audit(&AuditFilter {
            member_id: Some(i.member_id.as_str()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "install.verified");
    assert_eq!(audit[0].detail_json()["domain"], "acme.bitrix24.com");
    assert_eq!(s.list_portals().await.unwrap().len(), 1);
}

async fn reinstall_keeps_the_key_and_replaces_token(db: &TestDb) {
    let s = &db.store;
    let mut i = Install::new("acme");
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    s.set_status(
        i.member_id.as_str(),
        PortalStatus::Installed,
        None,
        "engine",
        T0,
    )
    .await
    .unwrap();
    s.mark_uninstalled(i.member_id.as_str(), false, None, T0 + 1)
        .await
        .unwrap();
    let old_token = i.app_token.clone();
    i.app_token = app_token("second");
    i.tokens = tokens("second");
    i.domain = PortalDomain::parse("renamed.bitrix24.com").unwrap();
    let out = s
        .record_verified_install(&i.verified(), T0 + 2)
        .await
        .unwrap();
    assert_eq!(out.previous, Some(PortalStatus::Uninstalled));
    assert!(out.is_reinstall());
    assert_eq!(out.generation, 2);
    let p = s.get_portal(i.member_id.as_str()).await.unwrap().unwrap();
    assert_eq!(p.status, PortalStatus::Installing);
    assert_eq!(p.domain.as_str(), "renamed.bitrix24.com");
    assert_eq!(p.uninstalled_at, None);
    assert_eq!(
        s.check_app_token(i.member_id.as_str(), &old_token, T0)
            .await
            .unwrap(),
        TokenCheck::Mismatch
    );
    assert!(matches!(
        s.check_app_token(i.member_id.as_str(), &i.app_token, T0)
            .await
            .unwrap(),
        TokenCheck::Match { generation: 2, .. }
    ));
    let c = s
        .load_credentials(i.member_id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.tokens, i.tokens);
    // A repeat ONAPPINSTALL over an installed portal is a reinstall too.
    s.set_status(
        i.member_id.as_str(),
        PortalStatus::Installed,
        None,
        "engine",
        T0 + 3,
    )
    .await
    .unwrap();
    let again = s
        .record_verified_install(&i.verified(), T0 + 4)
        .await
        .unwrap();
    assert_eq!(again.previous, Some(PortalStatus::Installed));
    assert_eq!(again.generation, 3);
}

async fn status_machine_refuses_invalid_transitions(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    assert_eq!(
        s.set_status(m, PortalStatus::Installed, None, "engine", T0)
            .await
            .unwrap(),
        Some(PortalStatus::Installing)
    );
    // Same state: a no-op, not an error.
    assert_eq!(
        s.set_status(m, PortalStatus::Installed, None, "engine", T0)
            .await
            .unwrap(),
        None
    );
    let err = s
        .set_status(m, PortalStatus::Purged, None, "engine", T0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidTransition {
                from: PortalStatus::Installed,
                to: PortalStatus::Purged,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        s.get_portal(m).await.unwrap().unwrap().status,
        PortalStatus::Installed
    );
    let p = s.get_portal(m).await.unwrap().unwrap();
    assert_eq!(p.installed_at, Some(T0));
    let unknown = crate::common::member_id();
    assert!(matches!(
        s.set_status(
            unknown.as_str(),
            PortalStatus::Installed,
            None,
            "engine",
            T0
        )
        .await
        .unwrap_err(),
        StoreError::PortalNotFound(_)
    ));
    let changes = s
        .list_audit(&AuditFilter {
            member_id: Some(m),
            action_prefix: Some("portal.status"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(changes.len(), 1, "only the real transition is audited");
    assert_eq!(changes[0].detail_json()["to"], "installed");
}

async fn application_token_check_distinguishes_outcomes(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    assert!(matches!(
        s.check_app_token(i.member_id.as_str(), &i.app_token, T0)
            .await
            .unwrap(),
        TokenCheck::Match {
            status: PortalStatus::Installing,
            generation: 1
        }
    ));
    assert_eq!(
        s.check_app_token(i.member_id.as_str(), &app_token("forged"), T0)
            .await
            .unwrap(),
        TokenCheck::Mismatch
    );
    let unknown = crate::common::member_id();
    assert_eq!(
        s.check_app_token(unknown.as_str(), &i.app_token, T0)
            .await
            .unwrap(),
        TokenCheck::UnknownPortal
    );
}

async fn uninstall_drops_credentials_and_repeats_are_noops(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    s.set_status(m, PortalStatus::Installed, None, "engine", T0)
        .await
        .unwrap();
    assert!(
        s.mark_uninstalled(m, true, Some(T0 + 10), T0 + 1)
            .await
            .unwrap()
    );
    let p = s.get_portal(m).await.unwrap().unwrap();
    assert_eq!(p.status, PortalStatus::Uninstalled);
    assert_eq!(p.status_reason.as_deref(), Some("clean=1"));
    assert_eq!(p.purge_after, Some(T0 + 10));
    assert_eq!(p.uninstalled_at, Some(T0 + 1));
    assert!(s.due_purges(T0 + 9).await.unwrap().is_empty());
    assert_eq!(s.due_purges(T0 + 10).await.unwrap(), [m.to_owned()]);
    assert!(s.load_credentials(m).await.unwrap().is_none());
    assert!(!PortalStatus::Uninstalled.allows_rest());
    assert!(!s.mark_uninstalled(m, true, None, T0 + 2).await.unwrap());
    let entries = s
        .list_audit(&AuditFilter {
            member_id: Some(m),
            action_prefix: Some("uninstall"),
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = entries
        .iter()
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(actions, [("uninstall", "ok"), ("uninstall.repeat", "noop")]);
    // The repeat did not move the purge time.
    assert_eq!(
        s.get_portal(m).await.unwrap().unwrap().purge_after,
        Some(T0 + 10)
    );
}

async fn purge_removes_residue_but_keeps_audit(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    s.set_status(m, PortalStatus::Installed, None, "engine", T0)
        .await
        .unwrap();
    assert!(matches!(
        s.purge_portal(m, T0).await.unwrap_err(),
        StoreError::NotAllowed {
            status: PortalStatus::Installed,
            ..
        }
    ));
    s.mark_uninstalled(m, true, None, T0 + 1).await.unwrap();
    let before = s
        .list_audit(&AuditFilter {
            member_id: Some(m),
            ..Default::default()
        })
        .await
        .unwrap()
        .len();
    assert!(s.purge_portal(m, T0 + 2).await.unwrap());
    assert!(
        !s.purge_portal(m, T0 + 3).await.unwrap(),
        "second purge is a no-op"
    );
    let p = s.get_portal(m).await.unwrap().unwrap();
    assert_eq!(p.status, PortalStatus::Purged);
    assert!(p.scopes.is_empty());
    assert_eq!(
        s.check_app_token(m, &i.app_token, T0).await.unwrap(),
        TokenCheck::Mismatch
    );
    let after = s
        .list_audit(&AuditFilter {
            member_id: Some(m),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(after.len(), before + 1);
    assert_eq!(after.last().unwrap().action, "portal.purged");
    // Reinstall after a purge starts over from the same key.
    let out = s
        .record_verified_install(&i.verified(), T0 + 4)
        .await
        .unwrap();
    assert_eq!(out.previous, Some(PortalStatus::Purged));
}

async fn stale_installs_expire_with_audit(db: &TestDb) {
    let s = &db.store;
    let old = Install::new("old");
    let fresh = Install::new("fresh");
    s.record_verified_install(&old.verified(), T0)
        .await
        .unwrap();
    s.record_verified_install(&fresh.verified(), T0 + 60_000)
        .await
        .unwrap();
    let expired = s
        .expire_stale_installs(T0 + 30_000, T0 + 90_000)
        .await
        .unwrap();
    assert_eq!(expired, [old.member_id.as_str().to_owned()]);
    let p = s.get_portal(old.member_id.as_str()).await.unwrap().unwrap();
    assert_eq!(p.status, PortalStatus::Failed);
    assert_eq!(p.status_reason.as_deref(), Some("install expired"));
    assert_eq!(
        s.get_portal(fresh.member_id.as_str())
            .await
            .unwrap()
            .unwrap()
            .status,
        PortalStatus::Installing
    );
    assert!(
        s.expire_stale_installs(T0 + 30_000, T0 + 90_000)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn rename_updates_endpoint_with_audit(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    let new = PortalDomain::parse("acme-new.bitrix24.com").unwrap();
    s.update_endpoint(m, &new, "https://acme-new.bitrix24.com/rest/", T0 + 1)
        .await
        .unwrap();
    let p = s.get_portal(m).await.unwrap().unwrap();
    assert_eq!(p.domain, new);
    assert_eq!(p.client_endpoint, "https://acme-new.bitrix24.com/rest/");
    let e = s
        .list_audit(&AuditFilter {
            member_id: Some(m),
            action_prefix: Some("portal.renamed"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].detail_json()["from"], "acme.bitrix24.com");
}

async fn probe_profile_round_trips(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    let scopes = Scope::parse_list("crm,placement").unwrap();
    let profile = serde_json::json!({"features": {"rest_offline_extended": true}, "methods": {"crm.deal.add": true}});
    s.update_profile(
        m,
        &scopes,
        &profile,
        "enterprise",
        Some("en_ent250"),
        T0 + 1,
    )
    .await
    .unwrap();
    s.set_installed_version(m, 3, T0 + 1).await.unwrap();
    let p = s.get_portal(m).await.unwrap().unwrap();
    assert_eq!(p.scopes, scopes);
    assert_eq!(p.profile, profile);
    assert_eq!(p.plan, "enterprise");
    assert_eq!(p.license.as_deref(), Some("en_ent250"));
    assert_eq!(p.installed_version, Some(3));
    let unknown = crate::common::member_id();
    assert!(matches!(
        s.set_installed_version(unknown.as_str(), 1, T0)
            .await
            .unwrap_err(),
        StoreError::PortalNotFound(_)
    ));
}
