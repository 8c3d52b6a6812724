//! The fault suite: b24emu answers a share of REST calls with 5xx and slow
//! 504s, a few portals have a bucket far smaller than their plan's (limit
//! errors), every access token expires at once mid-run — and 50 portals
//! still complete the whole lifecycle: install, events, update with a new
//! binding, uninstall.

use std::time::Duration;

use b24emu::{ChangeSpec, EmulatorConfig, FaultsSpec, LimitsSpec, UninstallSpec};
use store::PortalStatus;

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
    let mut w = World::start_with(MANIFEST, false, emu_config).await;
    let mut members = Vec::new();
    for i in 0..50 {
        members.push(w.portal(&format!("f{i}"), &[]).member_id);
    }
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
