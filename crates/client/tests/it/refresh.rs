//! Refresh: single-flight in a process and across processes sharing a store;
//! ahead of expiry; `invalid_grant` stops the portal.

use std::sync::Arc;
use std::time::Duration;

use b24emu::FaultsSpec;
use client::{Client, Clock, Error};
use futures::future::join_all;
use serde_json::json;
use store::{AuditFilter, PortalStatus};

use crate::common::{StoreEnv, bounded, fixture};

fn expire_all(f: &crate::common::Fixture) {
    let v = f
        .emu
        .set_faults(FaultsSpec {
            member_id: Some(f.member.to_string()),
            expire_tokens: true,
            ..Default::default()
        })
        .unwrap();
    assert!(v["expired_tokens"].as_u64().unwrap() >= 1, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_calls_with_an_expired_token_refresh_once() {
    bounded(async {
        let f = fixture().await;
        let portal = f.portal_client();
        portal.call("profile", json!({})).await.unwrap();
        expire_all(&f);
        let oauth_before = f.stat("oauth_requests");
        let calls = (0..100).map(|_| portal.call("crm.deal.fields", json!({})));
        for r in join_all(calls).await {
            r.unwrap();
        }
        assert_eq!(
            f.stat("oauth_requests") - oauth_before,
            1,
            "exactly one refresh"
        );
        let creds =
            f.db.store
                .load_credentials(f.member.as_str())
                .await
                .unwrap()
                .unwrap();
        assert_ne!(
            creds.tokens.access.expose_secret(),
            f.access,
            "rotated pair stored"
        );
        // The stored pair is the live one: a fresh client uses it without refreshing.
        let again = f.portal_client();
        again.call("profile", json!({})).await.unwrap();
        assert_eq!(f.stat("oauth_requests") - oauth_before, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_sharing_a_store_refresh_once_and_both_keep_a_live_token() {
    bounded(async {
        let f = fixture().await;
        let a = f.portal_client();
        // The second "process": its own store handle, its own client.
        let env_b = Arc::new(StoreEnv {
            store: f.db.second_handle().await,
        });
        let b = Client::new(f.config(), env_b.clone(), env_b, Clock::system())
            .unwrap()
            .portal(&f.member);
        a.call("profile", json!({})).await.unwrap();
        b.call("profile", json!({})).await.unwrap();
        expire_all(&f);
        let oauth_before = f.stat("oauth_requests");
        let mut calls = Vec::new();
        for i in 0..40 {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            calls.push(async move { c.call("crm.deal.fields", json!({})).await });
        }
        for r in join_all(calls).await {
            r.unwrap();
        }
        assert_eq!(
            f.stat("oauth_requests") - oauth_before,
            1,
            "exactly one refresh"
        );
        // Neither holds a dead token: both still call without refreshing.
        a.call("profile", json!({})).await.unwrap();
        b.call("profile", json!({})).await.unwrap();
        assert_eq!(f.stat("oauth_requests") - oauth_before, 1);
        let st =
            f.db.store
                .get_portal(f.member.as_str())
                .await
                .unwrap()
                .unwrap();
        assert_eq!(st.status, PortalStatus::Installed);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_ahead_of_expiry_without_a_failed_call() {
    bounded(async {
        let f = fixture().await;
        let mut cfg = f.config();
        // Emulator tokens live 3600 s; a margin beyond that means "due now".
        cfg.refresh_margin = Duration::from_secs(3700);
        let portal = f.client(cfg).portal(&f.member);
        let oauth_before = f.stat("oauth_requests");
        portal.call("profile", json!({})).await.unwrap();
        assert_eq!(f.stat("oauth_requests") - oauth_before, 1);
        let errors = f.emu.stats()["errors_per_code"].clone();
        assert!(errors.get("expired_token").is_none(), "{errors}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_marks_needs_reauth_and_stops_calls() {
    bounded(async {
        let f = fixture().await;
        // Another party spends the refresh token (a stale copy elsewhere).
        let client = f.client(f.config());
        let portal = client.portal(&f.member);
        portal.call("profile", json!({})).await.unwrap();
        assert_eq!(f.spend_refresh_token(&f.refresh).await, 200);
        expire_all(&f);
        let e = portal.call("profile", json!({})).await.unwrap_err();
        assert!(matches!(e, Error::NeedsReauth(_)), "{e}");
        let st =
            f.db.store
                .get_portal(f.member.as_str())
                .await
                .unwrap()
                .unwrap();
        assert_eq!(st.status, PortalStatus::NeedsReauth);
        let audit =
            f.db.store
                .list_audit(&AuditFilter {
                    member_id: Some(f.member.as_str()),
                    action_prefix: Some("portal.status"),
                    ..Default::default()
                })
                .await
                .unwrap();
        assert!(
            audit.iter().any(|a| a.detail.contains("needs_reauth")),
            "{audit:?}"
        );
        assert_eq!(client.stats().reauth_marked, 1);
        // Further calls are refused without the network, by this client and
        // by a new one that only sees the store.
        let requests = f.stat("requests");
        let oauth = f.stat("oauth_requests");
        for p in [portal.clone(), f.portal_client()] {
            let e = p.call("profile", json!({})).await.unwrap_err();
            assert!(matches!(e, Error::NeedsReauth(_)), "{e}");
        }
        assert_eq!(f.stat("requests"), requests);
        assert_eq!(f.stat("oauth_requests"), oauth);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_refreshes_once_and_records_renames() {
    bounded(async {
        use client::{MemoryCredentialStore, MemoryRateLimiter, Plan, PortalTarget, TokenSet};
        use wire::{AccessToken, Endpoint, PortalDomain, RefreshToken};
        let f = fixture().await;
        let mem = Arc::new(MemoryCredentialStore::new());
        mem.insert(
            f.member.clone(),
            PortalTarget {
                domain: PortalDomain::parse(&f.portal.domain).unwrap(),
                client_endpoint: Endpoint::parse(&f.portal.client_endpoint).unwrap(),
                rest_allowed: true,
                status: "installed".into(),
                plan: Plan::Standard,
            },
            TokenSet {
                access: AccessToken::parse(&f.access).unwrap(),
                refresh: RefreshToken::parse(&f.refresh).unwrap(),
                expires_at_ms: Clock::system().now_ms() + 3_600_000,
                scope: "crm".into(),
                user_id: Some(1),
            },
        );
        let client = Client::new(
            f.config(),
            mem.clone(),
            Arc::new(MemoryRateLimiter::new()),
            Clock::system(),
        )
        .unwrap();
        let p = client.portal(&f.member);
        p.call("profile", json!({})).await.unwrap();
        expire_all(&f);
        let before = f.stat("oauth_requests");
        let calls = (0..20).map(|_| p.call("crm.deal.fields", json!({})));
        for r in join_all(calls).await {
            r.unwrap();
        }
        assert_eq!(f.stat("oauth_requests") - before, 1);
        assert_eq!(client.stats().refreshes, 1);
        mem.set_status(&f.member, "uninstalled", false);
        let e = p.call("profile", json!({})).await.unwrap_err();
        assert!(matches!(e, Error::PortalInactive { .. }), "{e}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstall_stored_by_another_process_is_picked_up_on_invalid_token() {
    bounded(async {
        let f = fixture().await;
        let p = f.portal_client();
        p.call("profile", json!({})).await.unwrap();
        // Reinstall: the old tokens are revoked; the engine (elsewhere)
        // stores the new pair.
        let info = f
            .emu
            .reinstall(
                &f.member.to_string(),
                b24emu::InstallSpec {
                    client_id: f.client_id.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
        let t = &info.tokens;
        f.db.store
            .save_credentials(
                f.member.as_str(),
                &store::TokenSet {
                    access: wire::AccessToken::parse(&t.access_token).unwrap(),
                    refresh: wire::RefreshToken::parse(&t.refresh_token).unwrap(),
                    expires_at: t.expires * 1000,
                    scope: t.scope.clone(),
                    user_id: Some(t.user_id as i64),
                },
                Clock::system().now_ms(),
            )
            .await
            .unwrap();
        let oauth = f.stat("oauth_requests");
        p.call("profile", json!({})).await.unwrap();
        assert_eq!(f.stat("oauth_requests"), oauth, "no refresh needed");
    })
    .await;
}
