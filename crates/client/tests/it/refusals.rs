//! Refusals without the network, method confirmation, and the webhook mode.

use std::sync::Arc;

use client::{AllowList, Client, Clock, Error, MemoryRateLimiter};
use serde_json::json;
use store::PortalStatus;
use wire::MemberId;

use crate::common::{Setup, bounded, fixture, fixture_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_for_a_portal_that_may_not_be_called() {
    bounded(async {
        let f = fixture().await;
        let p = f.portal_client();
        p.call("profile", json!({})).await.unwrap();
        let requests = f.stat("requests");

        f.db.store
            .set_status(
                f.member.as_str(),
                PortalStatus::Uninstalled,
                None,
                "engine",
                1,
            )
            .await
            .unwrap();
        let e = p.call("profile", json!({})).await.unwrap_err();
        assert!(
            matches!(&e, Error::PortalInactive { status, .. } if status == "uninstalled"),
            "{e}"
        );

        let unknown = MemberId::parse(&"ab".repeat(16)).unwrap();
        let e = f
            .client(f.config())
            .portal(&unknown)
            .call("profile", json!({}))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::UnknownPortal(_)), "{e}");
        assert_eq!(f.stat("requests"), requests);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_outside_the_allow_list_and_plain_http_are_refused() {
    bounded(async {
        let f = fixture().await;
        let requests = f.stat("requests");
        // Plain http not allowed.
        let mut cfg = f.config();
        cfg.allow.allow_http = false;
        cfg.oauth = None;
        let e = f
            .client(cfg)
            .portal(&f.member)
            .call("profile", json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::HostNotAllowed(h) if h.starts_with("http://127.0.0.1")),
            "{e}"
        );
        // Host not listed.
        let mut cfg = f.config();
        cfg.allow = AllowList::new(["*.bitrix24.com"], true);
        let e = f
            .client(cfg)
            .portal(&f.member)
            .call("profile", json!({}))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::HostNotAllowed(_)), "{e}");
        assert_eq!(f.stat("requests"), requests);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_confirmation_is_a_typed_result_bound_to_the_token() {
    bounded(async {
        let f = fixture_with(Setup {
            scopes: vec!["crm".into(), "telephony".into()],
            ..Default::default()
        })
        .await;
        let p = f.portal_client();
        let e = p.call("voximplant.user.get", json!({})).await.unwrap_err();
        let Error::ConfirmationWaiting(c) = &e else {
            panic!("{e}")
        };
        assert_eq!(c.method, "voximplant.user.get");
        assert_eq!(
            c.token_fingerprint,
            f.db.store.keys().fingerprint(&f.access)
        );
        assert!(!c.token_fingerprint.contains(&f.access));
        f.emu
            .confirm(
                &f.member.to_string(),
                b24emu::ConfirmSpec {
                    client_id: f.client_id.clone(),
                    method: "voximplant.user.get".into(),
                    confirmed: true,
                },
            )
            .unwrap();
        p.call("voximplant.user.get", json!({})).await.unwrap();

        // Denied for another token (approval binds to the token, §9).
        let f2 = fixture_with(Setup {
            scopes: vec!["crm".into(), "telephony".into()],
            ..Default::default()
        })
        .await;
        let p2 = f2.portal_client();
        assert!(p2.call("voximplant.user.get", json!({})).await.is_err());
        f2.emu
            .confirm(
                &f2.member.to_string(),
                b24emu::ConfirmSpec {
                    client_id: f2.client_id.clone(),
                    method: "voximplant.user.get".into(),
                    confirmed: false,
                },
            )
            .unwrap();
        let e = p2.call("voximplant.user.get", json!({})).await.unwrap_err();
        assert!(matches!(e, Error::ConfirmationDenied(_)), "{e}");
        assert!(e.confirmation().is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_webhook_calls_without_refresh() {
    bounded(async {
        let f = fixture().await;
        let hook = f
            .emu
            .create_webhook(&f.member.to_string(), Default::default())
            .unwrap();
        let url = hook["url"].as_str().unwrap();
        let client = Client::webhooks_only(
            f.config(),
            Arc::new(MemoryRateLimiter::new()),
            Clock::system(),
        )
        .unwrap();
        let p = client.webhook(url).unwrap();
        let oauth = f.stat("oauth_requests");
        let id = p
            .call("crm.deal.add", json!({"fields": {"TITLE": "via hook"}}))
            .await
            .unwrap()
            .result;
        let got = p.call("crm.deal.get", json!({"id": id})).await.unwrap();
        assert_eq!(got.result["TITLE"], "via hook");
        assert_eq!(f.stat("oauth_requests"), oauth);
        // The CLI's one-step constructor.
        let cli = Client::for_webhook(url, f.config()).unwrap();
        cli.call("profile", json!({})).await.unwrap();
        // OAuth-only methods answer WRONG_AUTH_TYPE, typed.
        let e = p.call("event.get", json!({})).await.unwrap_err();
        assert_eq!(
            e.api().map(|a| a.code.as_str()),
            Some("WRONG_AUTH_TYPE"),
            "{e}"
        );
    })
    .await;
}
