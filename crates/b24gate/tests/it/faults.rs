//! The fault suite: b24emu answers a share of REST calls with 5xx and slow
//! 504s, a few portals have a bucket far smaller than their plan's (limit
//! errors), every access token expires at once mid-run, five portals are
//! renamed to another domain — and 50 portals still complete the whole
//! lifecycle: install, events, update with a new binding, uninstall.

use std::time::Duration;

use b24emu::{ChangeSpec, EmulatorConfig, FaultsSpec, LimitsSpec, RenameSpec, UninstallSpec};
use store::{AuditFilter, PortalStatus};

use crate::harness::World;

const MANIFEST: &str = r#"
[[binding]]
event = "ONCRMDEALADD"
owner = "app"
"#;

const V2: &str = r#"
[[binding]]
event = "ONCRMDEALADD"
owner = "app"
[[binding]]
event = "ONCRMDEALDELETE"
owner = "app"
"#;

async fn all_reach(
    w: &World,
    members: &[String],
    what: &str,
    want: impl Fn(&store::Portal) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let portals = w.store.list_portals().await.unwrap();
        let behind: Vec<&String> = members
            .iter()
            .filter(|m| {
                !portals
                    .iter()
                    .any(|p| p.member_id.as_str() == m.as_str() && want(p))
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let mut why = String::new();
            for m in behind.iter().take(3) {
                let f = store::JobFilter {
                    member_id: Some(m.as_str()),
                    ..store::JobFilter::default()
                };
                for j in w.store.list_jobs(&f).await.unwrap() {
                    why.push_str(&format!(
                        "\n  {m} {} {} attempt {}/{} run_at {} {:?}",
                        j.kind, j.state, j.attempt, j.max_attempts, j.run_at, j.last_error
                    ));
                }
            }
            panic!("{} of 50 portals never reached {what}:{why}", behind.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_portals_complete_the_lifecycle_under_faults() {
    let emu_config = EmulatorConfig {
        seed: Some(7),
        // A "timeout" is a 504 after this long.
        fault_timeout_ms: 300,
        ..EmulatorConfig::default()
    };
    // Portals 40–49 live under their own host name (as real portals do);
    // 45–49 are renamed mid-run to `…-moved.localhost`.
    let hosts: Vec<String> = (40..50)
        .flat_map(|i| [format!("f{i}.localhost"), format!("f{i}-moved.localhost")])
        .collect();
    let mut w = World::start_resolving(MANIFEST, false, emu_config, hosts).await;
    let mut members = Vec::new();
    for i in 0..50 {
        let p = if i < 40 {
            w.portal(&format!("f{i}"), &[])
        } else {
            w.portal_at(&format!("f{i}"), &format!("f{i}.localhost"))
        };
        members.push(p.member_id);
    }
    let port = w.emu.urls().http_port;
    let moved = |i: usize| format!("f{i}-moved.localhost:{port}");
    // Ten portals with a bucket of 1 call draining one per 5 s: the gateway's
    // own limiter expects 50/2, so these answer QUERY_LIMIT_EXCEEDED.
    for m in &members[..10] {
        w.emu
            .set_limits(
                m,
                LimitsSpec {
                    rate_limit: Some(true),
                    burst: Some(1.0),
                    drain: Some(0.2),
                    ..LimitsSpec::default()
                },
            )
            .unwrap();
    }
    w.emu
        .set_faults(FaultsSpec {
            error_rate: Some(0.1),
            timeout_rate: Some(0.03),
            ..FaultsSpec::default()
        })
        .unwrap();
    for m in &members {
        w.install(m);
    }
    all_reach(&w, &members, "installed", |p| {
        p.status == PortalStatus::Installed
    })
    .await;

    // Five portals change their domain: the old host answers 302 from now on.
    for (i, m) in members.iter().enumerate().skip(45) {
        w.emu
            .rename(
                m,
                RenameSpec {
                    domain: Some(moved(i)),
                    name: None,
                },
            )
            .unwrap();
    }

    // Every token expires: the next calls refresh, under the same faults.
    w.emu
        .set_faults(FaultsSpec {
            expire_tokens: true,
            ..FaultsSpec::default()
        })
        .unwrap();
    for m in &members {
        w.emu
            .changes(
                m,
                ChangeSpec {
                    entity: "deal".into(),
                    action: "add".into(),
                    count: 4,
                    user_id: 1,
                    ..ChangeSpec::default()
                },
            )
            .unwrap();
    }
    let r = w.receiver.clone();
    w.until("200 additions at the app", Duration::from_secs(120), || {
        let r = r.clone();
        async move { r.of("ONCRMDEALADD").len() >= 200 }
    })
    .await;

    // Update: version 2 wants one more binding; drift alone reconciles.
    w.restart(V2, 2).await;
    all_reach(&w, &members, "version 2", |p| {
        p.installed_version == Some(2)
    })
    .await;
    for m in &members {
        let matrix = w.store.binding_matrix(Some(m)).await.unwrap();
        assert!(
            matrix
                .iter()
                .any(|r| r.record.key.name == "ONCRMDEALDELETE" && r.record.state == "bound"),
            "{m}: the new binding is bound"
        );
    }
    // The renamed portals' calls followed the 302 once: the store has the
    // new domain and endpoint, with one audit entry each.
    for (i, m) in members.iter().enumerate().skip(45) {
        let p = w.store.get_portal(m).await.unwrap().unwrap();
        assert_eq!(p.domain.as_str(), moved(i), "{m}");
        assert_eq!(p.client_endpoint, format!("http://{}/rest/", moved(i)));
        let audit = w
            .store
            .list_audit(&AuditFilter {
                member_id: Some(m),
                action_prefix: Some("portal.renamed"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(audit.len(), 1, "{m}: {audit:?}");
    }
    let stats = w.emu.stats();
    assert!(stats["faults_injected"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["query_limit_errors"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        stats["oauth_requests"].as_u64().unwrap() > 0,
        "tokens were refreshed: {stats}"
    );

    for m in &members {
        w.emu
            .uninstall(
                m,
                UninstallSpec {
                    client_id: w.client_id.clone(),
                    clean: true,
                },
            )
            .unwrap();
    }
    all_reach(&w, &members, "purged", |p| p.status == PortalStatus::Purged).await;
    eprintln!(
        "faults: {} injected, {} limit errors, {} OAuth requests",
        stats["faults_injected"], stats["query_limit_errors"], stats["oauth_requests"]
    );
    w.shutdown().await;
}
