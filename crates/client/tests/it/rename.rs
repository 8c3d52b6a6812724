//! Portal rename: a 302 is followed only to an allow-listed host; the store
//! gets the new domain and endpoint with an audit entry; calls go on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use b24emu::RenameSpec;
use client::Error;
use serde_json::json;
use store::AuditFilter;

use crate::common::{Setup, bounded, fixture_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_mid_run_calls_continue_on_the_new_domain() {
    bounded(async {
        let f = fixture_with(Setup {
            host: Some("acme.localhost".into()),
            ..Default::default()
        })
        .await;
        let port = f.emu.urls().http_port;
        let mut cfg = f.config();
        cfg.resolve.push((
            "acme-new.localhost".into(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        ));
        let client = f.client(cfg);
        let p = client.portal(&f.member);
        let runner = tokio::spawn({
            let p = p.clone();
            async move {
                for i in 0..150 {
                    p.call(
                        "crm.deal.add",
                        json!({"fields": {"TITLE": format!("d{i}")}}),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("call {i}: {e}"));
                }
            }
        });
        // Rename once the run is under way.
        let deadline = Instant::now() + Duration::from_secs(30);
        while f.method_count("crm.deal.add") < 50 {
            assert!(Instant::now() < deadline, "run did not start");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let new_domain = format!("acme-new.localhost:{port}");
        f.emu
            .rename(
                &f.member.to_string(),
                RenameSpec {
                    domain: Some(new_domain.clone()),
                    name: None,
                },
            )
            .unwrap();
        runner.await.unwrap();
        let deals = f.emu.portal_state(&f.member.to_string()).unwrap()["deals"].clone();
        assert_eq!(deals, json!(150), "every call ran exactly once");
        let st =
            f.db.store
                .get_portal(f.member.as_str())
                .await
                .unwrap()
                .unwrap();
        assert_eq!(st.domain.as_str(), new_domain);
        assert_eq!(st.client_endpoint, format!("http://{new_domain}/rest/"));
        let audit =
            f.db.store
                .list_audit(&AuditFilter {
                    member_id: Some(f.member.as_str()),
                    action_prefix: Some("portal.renamed"),
                    ..Default::default()
                })
                .await
                .unwrap();
        assert_eq!(audit.len(), 1, "{audit:?}");
        assert_eq!(client.stats().renames, 1);
        // New calls go straight to the new host.
        let redirects_before = f.stat("requests");
        p.call("profile", json!({})).await.unwrap();
        assert_eq!(f.stat("requests") - redirects_before, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_to_a_host_outside_the_allow_list_is_refused() {
    bounded(async {
        let f = fixture_with(Setup {
            host: Some("acme.localhost".into()),
            ..Default::default()
        })
        .await;
        let port = f.emu.urls().http_port;
        let p = f.portal_client();
        p.call("profile", json!({})).await.unwrap();
        f.emu
            .rename(
                &f.member.to_string(),
                RenameSpec {
                    domain: Some(format!("portal.evil.example:{port}")),
                    name: None,
                },
            )
            .unwrap();
        let e = p.call("profile", json!({})).await.unwrap_err();
        let Error::HostNotAllowed(host) = &e else {
            panic!("{e}")
        };
        assert_eq!(host, &format!("http://portal.evil.example:{port}"));
        let st =
            f.db.store
                .get_portal(f.member.as_str())
                .await
                .unwrap()
                .unwrap();
        assert_eq!(
            st.domain.as_str(),
            format!("acme.localhost:{port}"),
            "store unchanged"
        );
    })
    .await;
}
