use std::time::Duration;

use b24emu::ChangeSpec;
use store::PortalStatus;

use crate::harness::World;

const MANIFEST: &str = r#"
[[binding]]
event = "ONCRMDEALADD"
owner = "app"
[[binding]]
event = "ONCRMDEALUPDATE"
mode = "offline"
owner = "app"
[[placement]]
code = "CRM_DEAL_DETAIL_TAB"
handler = "https://app.example.com/deal-tab"
title = "Deal tab"
"#;

fn deal_added(count: u64, user_id: u64) -> ChangeSpec {
    ChangeSpec {
        entity: "deal".into(),
        action: "add".into(),
        count,
        user_id,
        id: None,
        client_id: None,
        auth_connector: String::new(),
        fields: Default::default(),
    }
}

#[tokio::test]
async fn install_flow_a_verifies_binds_and_events_reach_the_app() {
    let w = World::start(MANIFEST, false).await;
    let p = w.portal("acme", &["rest_offline_extended"]);
    w.install(&p.member_id);
    w.wait_status(&p.member_id, PortalStatus::Installed).await;

    let portal = w.store.get_portal(&p.member_id).await.unwrap().unwrap();
    assert_eq!(
        portal.client_endpoint, p.client_endpoint,
        "endpoint from the OAuth server"
    );
    assert_eq!(portal.installed_version, Some(1));
    assert_eq!(portal.install_flow.as_deref(), Some("event"));
    assert_eq!(portal.profile["features"]["rest_offline_extended"], true);
    let matrix = w.store.binding_matrix(Some(&p.member_id)).await.unwrap();
    let state = |name: &str, mode: &str| {
        matrix
            .iter()
            .find(|r| r.record.key.name == name && r.record.key.mode == mode)
            .map(|r| r.record.state.clone())
    };
    assert_eq!(
        state("ONCRMDEALADD", "online").as_deref(),
        Some("bound"),
        "{matrix:#?}"
    );
    assert_eq!(
        state("ONCRMDEALUPDATE", "offline").as_deref(),
        Some("bound")
    );
    assert_eq!(state("ONAPPUNINSTALL", "online").as_deref(), Some("bound"));
    assert_eq!(
        state("CRM_DEAL_DETAIL_TAB", "online").as_deref(),
        Some("bound")
    );
    // The portal really has them.
    let emu_state = w.emu.portal_state(&p.member_id).unwrap();
    let emu_text = emu_state.to_string();
    assert!(emu_text.contains("ONCRMDEALADD"), "{emu_state}");
    assert!(emu_text.contains("CRM_DEAL_DETAIL_TAB"), "{emu_state}");

    w.emu.changes(&p.member_id, deal_added(3, 1)).unwrap();
    let r = w.receiver.clone();
    w.until("3 deals forwarded", Duration::from_secs(30), || {
        let r = r.clone();
        async move { r.of("ONCRMDEALADD").len() == 3 }
    })
    .await;
    let ev = &w.receiver.of("ONCRMDEALADD")[0];
    assert_eq!(ev["portal"]["member_id"], p.member_id.as_str());
    assert_eq!(ev["source"], "online");
    let audit = w
        .store
        .list_audit(&store::AuditFilter {
            member_id: Some(&p.member_id),
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = audit.iter().map(|a| a.action.as_str()).collect();
    assert!(actions.contains(&"install.verified"), "{actions:?}");
    assert!(actions.contains(&"install.completed"), "{actions:?}");
    w.shutdown().await;
}

fn deals_updated(count: u64, user_id: u64) -> ChangeSpec {
    ChangeSpec {
        action: "update".into(),
        ..deal_added(count, user_id)
    }
}

fn offline_queue(w: &World, member_id: &str) -> serde_json::Value {
    let s = w.emu.portal_state(member_id).unwrap();
    s["apps"][0]["offline_queue"].clone()
}

#[tokio::test]
async fn offline_events_are_drained_stored_then_cleared() {
    let w = World::start(MANIFEST, false).await;
    let p = w.portal("acme", &["rest_offline_extended"]);
    w.install(&p.member_id);
    w.wait_status(&p.member_id, PortalStatus::Installed).await;
    w.emu.changes(&p.member_id, deal_added(120, 1)).unwrap();
    w.emu.changes(&p.member_id, deals_updated(120, 1)).unwrap();
    let r = w.receiver.clone();
    w.until(
        "120 offline updates forwarded",
        Duration::from_secs(60),
        || {
            let r = r.clone();
            async move { r.of("ONCRMDEALUPDATE").len() == 120 }
        },
    )
    .await;
    let ups = w.receiver.of("ONCRMDEALUPDATE");
    assert!(ups.iter().all(|e| e["source"] == "offline"));
    let ids: std::collections::BTreeSet<_> = ups
        .iter()
        .map(|e| {
            e["data"]["FIELDS"]["ID"]
                .to_string()
                .trim_matches('"')
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 120, "every deal once");
    let q = offline_queue(&w, &p.member_id);
    assert_eq!(q["size"], 0, "the portal's queue ends empty: {q}");
    // The drain timer may be checking the (now empty) queue again: wait for
    // that pass to settle, then nothing is reserved and all 120 were drained.
    let store = w.store.clone();
    let m = p.member_id.clone();
    w.until("the drain to settle", Duration::from_secs(30), || {
        let store = store.clone();
        let m = m.clone();
        async move {
            let d = store.drain_state(&m, "").await.unwrap().unwrap();
            d.process_id.is_none() && !d.reserving
        }
    })
    .await;
    let d = w
        .store
        .drain_state(&p.member_id, "")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.drained_total, 120);
    // A second change of the same deals is a new occurrence, not a duplicate.
    w.emu.changes(&p.member_id, deals_updated(5, 1)).unwrap();
    let r = w.receiver.clone();
    w.until("5 more offline updates", Duration::from_secs(60), || {
        let r = r.clone();
        async move { r.of("ONCRMDEALUPDATE").len() == 125 }
    })
    .await;
    w.shutdown().await;
}

#[tokio::test]
async fn method_confirmation_parks_then_runs_with_the_same_token_or_denies() {
    use crate::harness::ADMIN_TOKEN;
    let w = World::start(MANIFEST, false).await;
    let p = w.portal("acme", &["rest_offline_extended"]);
    w.install(&p.member_id);
    w.wait_status(&p.member_id, PortalStatus::Installed).await;
    let m = p.member_id.as_str();
    // The admin API refuses a wrong token.
    let (s, _) = w.proxy(m, "scope", serde_json::json!({}), "wrong").await;
    assert_eq!(s, 401);
    // A plain call goes through the proxy.
    let (s, v) = w
        .proxy(m, "scope", serde_json::json!({}), ADMIN_TOKEN)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["result"].as_array().unwrap().iter().any(|x| x == "crm"));
    // The method that needs confirmation is parked.
    let (s, v) = w
        .proxy(
            m,
            "voximplant.user.get",
            serde_json::json!({"USER_ID": 1}),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["pending_call_id"].as_i64().unwrap();
    let (_, pc) = w.admin_get(&format!("/v1/pending/{id}")).await;
    assert_eq!(pc["state"], "waiting");
    w.emu
        .confirm(
            m,
            b24emu::ConfirmSpec {
                client_id: w.client_id.clone(),
                method: "voximplant.user.get".into(),
                confirmed: true,
            },
        )
        .unwrap();
    let url = format!("/v1/pending/{id}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, pc) = w.admin_get(&url).await;
        if pc["state"] == "done" {
            assert!(
                pc["result"]["result"].is_array() || pc["result"]["result"].is_object(),
                "{pc}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {pc}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = w.receiver.clone();
    w.until("the outcome event", Duration::from_secs(30), || {
        let r = r.clone();
        async move { !r.of("b24gate.method_confirm").is_empty() }
    })
    .await;
    assert_eq!(
        w.receiver.of("b24gate.method_confirm")[0]["data"]["state"],
        "done"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn denied_confirmation_marks_the_parked_call_denied() {
    use crate::harness::ADMIN_TOKEN;
    let w = World::start(MANIFEST, false).await;
    let p = w.portal("acme", &[]);
    w.install(&p.member_id);
    w.wait_status(&p.member_id, PortalStatus::Installed).await;
    let m = p.member_id.as_str();
    let (s, v) = w
        .proxy(m, "voximplant.user.get", serde_json::json!({}), ADMIN_TOKEN)
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["pending_call_id"].as_i64().unwrap();
    w.emu
        .confirm(
            m,
            b24emu::ConfirmSpec {
                client_id: w.client_id.clone(),
                method: "voximplant.user.get".into(),
                confirmed: false,
            },
        )
        .unwrap();
    let url = format!("/v1/pending/{id}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, pc) = w.admin_get(&url).await;
        if pc["state"] == "denied" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {pc}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Asked again, the portal itself now answers 403 denied.
    let (s, v) = w
        .proxy(m, "voximplant.user.get", serde_json::json!({}), ADMIN_TOKEN)
        .await;
    assert_eq!(s, 403, "{v}");
    w.shutdown().await;
}

fn requests(w: &World) -> u64 {
    w.emu.stats()["requests"].as_u64().unwrap()
}

#[tokio::test]
async fn uninstall_honours_clean_makes_no_rest_call_and_reinstall_recreates_bindings() {
    use crate::harness::ADMIN_TOKEN;
    let manifest =
        format!("{MANIFEST}\n[uninstall]\non_clean = \"purge\"\non_keep = \"retain 30d\"\n");
    let w = World::start(&manifest, false).await;
    let keep = w.portal("keep", &["rest_offline_extended"]);
    let clean = w.portal("clean", &["rest_offline_extended"]);
    for p in [&keep, &clean] {
        w.install(&p.member_id);
        w.wait_status(&p.member_id, PortalStatus::Installed).await;
    }
    let un = |m: &str, clean: bool| {
        w.emu
            .uninstall(
                m,
                b24emu::UninstallSpec {
                    client_id: w.client_id.clone(),
                    clean,
                },
            )
            .unwrap()
    };
    un(&keep.member_id, false);
    un(&clean.member_id, true);
    w.wait_status(&keep.member_id, PortalStatus::Uninstalled)
        .await;
    w.wait_status(&clean.member_id, PortalStatus::Purged).await;
    let k = w.store.get_portal(&keep.member_id).await.unwrap().unwrap();
    assert!(k.purge_after.is_some(), "CLEAN=0: retained for 30 days");
    assert!(
        w.store
            .load_credentials(&keep.member_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        w.store
            .binding_matrix(Some(&clean.member_id))
            .await
            .unwrap()
            .is_empty(),
        "purged"
    );
    // No REST call from now on: the client refuses without the network.
    let before = requests(&w);
    let (s, v) = w
        .proxy(&keep.member_id, "scope", serde_json::json!({}), ADMIN_TOKEN)
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(
        requests(&w),
        before,
        "a call reached the portal after uninstall"
    );
    // The audit log survives the purge.
    let audit = w
        .store
        .list_audit(&store::AuditFilter {
            member_id: Some(&clean.member_id),
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = audit.iter().map(|a| a.action.as_str()).collect();
    assert!(
        actions.contains(&"install.verified") && actions.contains(&"portal.purged"),
        "{actions:?}"
    );

    // Reinstall after either CLEAN: new token, bindings recreated.
    for p in [&keep, &clean] {
        w.emu
            .reinstall(
                &p.member_id,
                b24emu::InstallSpec {
                    client_id: w.client_id.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
        w.wait_status(&p.member_id, PortalStatus::Installed).await;
        let portal = w.store.get_portal(&p.member_id).await.unwrap().unwrap();
        assert!(portal.generation >= 2);
        let matrix = w.store.binding_matrix(Some(&p.member_id)).await.unwrap();
        assert!(
            matrix
                .iter()
                .any(|r| r.record.key.name == "ONCRMDEALADD" && r.record.state == "bound"),
            "{matrix:#?}"
        );
        let emu = w.emu.portal_state(&p.member_id).unwrap().to_string();
        assert!(
            emu.contains("ONCRMDEALADD"),
            "bindings recreated on the portal"
        );
    }
    // Events flow again after the reinstall.
    w.emu.changes(&keep.member_id, deal_added(1, 1)).unwrap();
    let r = w.receiver.clone();
    w.until("an event after reinstall", Duration::from_secs(30), || {
        let r = r.clone();
        async move { !r.of("ONCRMDEALADD").is_empty() }
    })
    .await;
    w.shutdown().await;
}

#[tokio::test]
async fn forged_install_creates_no_portal_and_is_audited() {
    let w = World::start(MANIFEST, false).await;
    let gate = w.gate.as_ref().unwrap().url.clone();
    let m = "0123456789abcdef0123456789abcdef";
    let body = format!(
        "event=ONAPPINSTALL&event_handler_id=1&data%5BVERSION%5D=1&data%5BACTIVE%5D=Y&data%5BINSTALLED%5D=Y&ts=1766047124\
         &auth%5Baccess_token%5D={tok}&auth%5Bexpires%5D=1766050724&auth%5Bexpires_in%5D=3600&auth%5Bscope%5D=crm\
         &auth%5Bdomain%5D=acme.localhost&auth%5Bserver_endpoint%5D=http%3A%2F%2F127.0.0.1%3A1%2Frest%2F&auth%5Bstatus%5D=L\
         &auth%5Bclient_endpoint%5D=http%3A%2F%2F127.0.0.1%3A1%2Frest%2F&auth%5Bmember_id%5D={m}&auth%5Buser_id%5D=1\
         &auth%5Brefresh_token%5D={tok}&auth%5Bapplication_token%5D=forgedforgedforgedforgedforged12",
        tok = "f".repeat(70),
    );
    let r = reqwest::Client::new()
        .post(format!("{gate}/b24/install"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "accepted into the inbox, unverified");
    let store = w.store.clone();
    w.until(
        "the forged install to be rejected",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move {
                store
                    .list_audit(&store::AuditFilter {
                        action_prefix: Some("install.rejected"),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .len()
                    == 1
            }
        },
    )
    .await;
    assert!(
        w.store.get_portal(m).await.unwrap().is_none(),
        "no portal for a forged install"
    );
    let a = w
        .store
        .list_audit(&store::AuditFilter {
            action_prefix: Some("install.rejected"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        a[0].detail_json()["reason"],
        "the OAuth server does not know this token"
    );
    assert!(
        !a[0].detail.contains(&"f".repeat(70)),
        "no token in the audit log"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn install_from_a_domain_outside_the_allow_list_is_refused_without_calling_out() {
    let w = World::start(MANIFEST, false).await;
    let gate = w.gate.as_ref().unwrap().url.clone();
    let oauth_before = w.emu.stats()["oauth_requests"].as_u64().unwrap();
    let body = format!(
        "event=ONAPPINSTALL&data%5BVERSION%5D=1&data%5BACTIVE%5D=Y&data%5BINSTALLED%5D=Y&ts=1766047124\
         &auth%5Baccess_token%5D={tok}&auth%5Bexpires%5D=1766050724&auth%5Bexpires_in%5D=3600&auth%5Bscope%5D=crm\
         &auth%5Bdomain%5D=evil.example.com&auth%5Bserver_endpoint%5D=https%3A%2F%2Fevil.example.com%2Frest%2F&auth%5Bstatus%5D=L\
         &auth%5Bclient_endpoint%5D=https%3A%2F%2Fevil.example.com%2Frest%2F&auth%5Bmember_id%5D={m}&auth%5Buser_id%5D=1\
         &auth%5Brefresh_token%5D={tok}&auth%5Bapplication_token%5D=forgedforgedforgedforgedforged12",
        tok = "e".repeat(70),
        m = "fedcba9876543210fedcba9876543210",
    );
    let r = reqwest::Client::new()
        .post(format!("{gate}/b24/events"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let store = w.store.clone();
    w.until("the install to be refused", Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            !store
                .list_audit(&store::AuditFilter {
                    action_prefix: Some("install.rejected"),
                    ..Default::default()
                })
                .await
                .unwrap()
                .is_empty()
        }
    })
    .await;
    let a = w
        .store
        .list_audit(&store::AuditFilter {
            action_prefix: Some("install.rejected"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        a[0].detail_json()["reason"],
        "portal domain is not in app.allowed_domains"
    );
    assert_eq!(
        w.emu.stats()["oauth_requests"].as_u64().unwrap(),
        oauth_before,
        "not even the OAuth server was asked"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn install_flow_b_sets_up_before_install_finish_and_events_follow_it() {
    let w = World::start(MANIFEST, true).await;
    let p = w.portal("wizard", &["rest_offline_extended"]);
    w.install(&p.member_id);
    // The installer POST was verified and the portal set up server-side.
    w.wait_status(&p.member_id, PortalStatus::Installed).await;
    let portal = w.store.get_portal(&p.member_id).await.unwrap().unwrap();
    assert_eq!(portal.install_flow.as_deref(), Some("installer"));
    // Until the page calls installFinish the portal sends no events.
    w.emu.changes(&p.member_id, deal_added(1, 1)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        w.receiver.of("ONCRMDEALADD").is_empty(),
        "events are gated until installFinish"
    );
    // What the installer page does once the server side reports ready.
    w.emu
        .install_finish(
            &p.member_id,
            b24emu::InstallSpec {
                client_id: w.client_id.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    // installFinish fires ONAPPINSTALL to the handler we bound: a repeat
    // install of a known portal, taken as a reinstall, idempotently.
    let store = w.store.clone();
    let m = p.member_id.clone();
    w.until(
        "the ONAPPINSTALL after installFinish",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            let m = m.clone();
            async move {
                store
                    .get_portal(&m)
                    .await
                    .unwrap()
                    .is_some_and(|p| p.generation >= 2 && p.status == PortalStatus::Installed)
            }
        },
    )
    .await;
    w.emu.changes(&p.member_id, deal_added(2, 1)).unwrap();
    let r = w.receiver.clone();
    w.until(
        "events after installFinish",
        Duration::from_secs(30),
        || {
            let r = r.clone();
            async move { r.of("ONCRMDEALADD").len() == 2 }
        },
    )
    .await;
    w.shutdown().await;
}

#[tokio::test]
async fn version_drift_alone_reconciles_and_runs_each_migration_once() {
    let mut w = World::start(MANIFEST, false).await;
    let p = w.portal("acme", &["rest_offline_extended"]);
    w.install(&p.member_id);
    w.wait_status(&p.member_id, PortalStatus::Installed).await;
    // Version 2 adds a binding and a migration; no ONAPPUPDATE is sent.
    let v2 = format!(
        "{MANIFEST}\n[[binding]]\nevent = \"ONCRMDEALDELETE\"\nowner = \"app\"\n\
         [[migration]]\nversion = 2\nid = \"deal-tab-on\"\n\
         steps = [{{ method = \"app.option.set\", params = {{ options = {{ deal_tab = \"on\" }} }} }}]\n"
    );
    w.restart(&v2, 2).await;
    let store = w.store.clone();
    let m = p.member_id.clone();
    w.until("the portal at version 2", Duration::from_secs(30), || {
        let store = store.clone();
        let m = m.clone();
        async move {
            store
                .get_portal(&m)
                .await
                .unwrap()
                .unwrap()
                .installed_version
                == Some(2)
        }
    })
    .await;
    let matrix = w.store.binding_matrix(Some(&p.member_id)).await.unwrap();
    assert!(
        matrix
            .iter()
            .any(|r| r.record.key.name == "ONCRMDEALDELETE" && r.record.state == "bound"),
        "{matrix:#?}"
    );
    let options = &w.emu.portal_state(&p.member_id).unwrap()["apps"][0]["options"];
    assert_eq!(options["deal_tab"], "on", "{options}");
    // A restart at the same version runs nothing again.
    w.restart(&v2, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied = w
        .store
        .list_audit(&store::AuditFilter {
            member_id: Some(&p.member_id),
            action_prefix: Some("migration.applied"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(applied.len(), 1, "each migration exactly once");
    w.shutdown().await;
}

const CONNECTORS: &str = r#"
[[binding]]
event = "ONCRMDEALUPDATE"
mode = "offline"
owner = "app"
[[binding]]
event = "ONCRMDEALUPDATE"
mode = "offline"
owner = "app"
auth_connector = "crm_sync"
"#;

/// Forwarded offline events of one connector partition.
fn of_connector(w: &World, connector: &str) -> Vec<serde_json::Value> {
    w.receiver
        .of("ONCRMDEALUPDATE")
        .into_iter()
        .filter(|e| e["offline"]["connector"] == connector)
        .collect()
}

/// Two offline bindings of one event, the default partition and
/// `auth_connector = "crm_sync"`: each partition is reserved, stored and
/// cleared on its own; a change the app made through `crm_sync` reaches
/// only the other partition (self-suppression), and every forwarded event
/// says which partition it came from.
#[tokio::test]
async fn offline_partitions_by_auth_connector_are_drained_apart() {
    let w = World::start(CONNECTORS, false).await;
    let p = w.portal("acme", &["rest_offline_extended", "rest_auth_connector"]);
    w.install(&p.member_id);
    w.wait_status(&p.member_id, PortalStatus::Installed).await;
    let matrix = w.store.binding_matrix(Some(&p.member_id)).await.unwrap();
    for c in ["", "crm_sync"] {
        assert!(
            matrix.iter().any(|r| r.record.key.name == "ONCRMDEALUPDATE"
                && r.record.key.connector == c
                && r.record.state == "bound"),
            "offline binding with connector `{c}` bound: {:?}",
            matrix
                .iter()
                .map(|r| (&r.record.key, &r.record.state))
                .collect::<Vec<_>>()
        );
    }
    w.emu.changes(&p.member_id, deal_added(30, 1)).unwrap();
    // A user's change: queued in both partitions.
    w.emu.changes(&p.member_id, deals_updated(30, 1)).unwrap();
    let rw = &w;
    rw.until("30 updates in each partition", Duration::from_secs(60), || async move {
        of_connector(rw, "").len() == 30 && of_connector(rw, "crm_sync").len() == 30
    })
    .await;
    // The app's own sync writes through `crm_sync`: not queued there.
    let own = ChangeSpec {
        client_id: Some(w.client_id.clone()),
        auth_connector: "crm_sync".into(),
        ..deals_updated(10, 1)
    };
    w.emu.changes(&p.member_id, own).unwrap();
    rw.until(
        "10 more in the default partition",
        Duration::from_secs(60),
        || async move { of_connector(rw, "").len() == 40 },
    )
    .await;
    let store = w.store.clone();
    let m = p.member_id.clone();
    w.until("both drains to settle", Duration::from_secs(30), || {
        let (store, m) = (store.clone(), m.clone());
        async move {
            for c in ["", "crm_sync"] {
                match store.drain_state(&m, c).await.unwrap() {
                    Some(d) if d.process_id.is_none() && !d.reserving => {}
                    _ => return false,
                }
            }
            true
        }
    })
    .await;
    assert_eq!(
        of_connector(&w, "crm_sync").len(),
        30,
        "own changes suppressed"
    );
    let total: i64 = {
        let mut t = 0;
        for c in ["", "crm_sync"] {
            t += w
                .store
                .drain_state(&p.member_id, c)
                .await
                .unwrap()
                .unwrap()
                .drained_total;
        }
        t
    };
    assert_eq!(total, 70);
    for e in w.receiver.of("ONCRMDEALUPDATE") {
        assert_eq!(e["source"], "offline");
        let mid = e["offline"]["message_id"].as_str().unwrap();
        assert_eq!(mid.len(), 32, "MESSAGE_ID forwarded: {e}");
    }
    let q = offline_queue(&w, &p.member_id);
    assert_eq!(q["size"], 0, "every partition ends empty: {q}");
    w.shutdown().await;
}

/// Without `rest_offline_extended` there is no safe reservation: by default
/// the offline binding is recorded unsatisfiable, with the reason, and not
/// bound; with `[offline] allow_lossy_clear = true` it is bound and drained
/// with `clear=1`.
#[tokio::test]
async fn lossy_clear_runs_only_when_the_operator_opted_in() {
    let w = World::start(MANIFEST, false).await;
    let p = w.portal("plain", &[]);
    w.install(&p.member_id);
    w.wait_status(&p.member_id, PortalStatus::Installed).await;
    let matrix = w.store.binding_matrix(Some(&p.member_id)).await.unwrap();
    let row = matrix
        .iter()
        .find(|r| r.record.key.name == "ONCRMDEALUPDATE")
        .expect("the offline binding is in the matrix");
    assert_eq!(row.record.state, "unsatisfiable");
    assert!(
        row.record
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("rest_offline_extended")),
        "the reason names the feature: {:?}",
        row.record.reason
    );
    let st = w.emu.portal_state(&p.member_id).unwrap();
    assert!(
        !st["apps"][0]["bindings"]["offline"]
            .to_string()
            .contains("ONCRMDEALUPDATE"),
        "not bound on the portal: {}",
        st["apps"][0]["bindings"]["offline"]
    );
    w.shutdown().await;

    let lossy =
        format!("{MANIFEST}\n[offline]\nallow_lossy_clear = true\ndrain_every = \"500ms\"\n");
    let w = World::start(&lossy, false).await;
    let p = w.portal("plain", &[]);
    w.install(&p.member_id);
    w.wait_status(&p.member_id, PortalStatus::Installed).await;
    let matrix = w.store.binding_matrix(Some(&p.member_id)).await.unwrap();
    assert!(
        matrix
            .iter()
            .any(|r| r.record.key.name == "ONCRMDEALUPDATE" && r.record.state == "bound")
    );
    w.emu.changes(&p.member_id, deal_added(25, 1)).unwrap();
    w.emu.changes(&p.member_id, deals_updated(25, 1)).unwrap();
    let r = w.receiver.clone();
    w.until(
        "25 offline updates forwarded",
        Duration::from_secs(60),
        || {
            let r = r.clone();
            async move { r.of("ONCRMDEALUPDATE").len() == 25 }
        },
    )
    .await;
    let q = offline_queue(&w, &p.member_id);
    assert_eq!(q["size"], 0, "{q}");
    w.shutdown().await;
}
