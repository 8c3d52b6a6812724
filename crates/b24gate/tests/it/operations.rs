use store::PortalStatus;

use crate::harness::World;

const MANIFEST: &str = r#"
[[binding]]
event = "ONCRMDEALADD"
owner = "app"
"#;

fn outcome(steps: &[b24gate::ops::Step], n: u8) -> &'static str {
    steps
        .iter()
        .find(|s| s.step == n)
        .map(|s| s.outcome)
        .unwrap_or("absent")
}

/// The recovery playbook: a binding lost on the portal is found (step 3),
/// repaired with --fix (step 4), and a second run passes.
#[tokio::test]
async fn doctor_finds_a_dropped_binding_fix_repairs_it_and_then_passes() {
    let w = World::start(MANIFEST, false).await;
    let p = w.portal("acme", &[]);
    w.install(&p.member_id);
    w.wait_status(&p.member_id, PortalStatus::Installed).await;
    let ops = w.ops();
    let m = wire::MemberId::parse(&p.member_id).unwrap();
    let healthy = b24gate::ops::doctor_portal(&ops, &m, false).await.unwrap();
    assert!(healthy.iter().all(|s| s.outcome != "fail"), "{healthy:#?}");
    // The portal loses its online handlers.
    w.emu
        .set_faults(b24emu::FaultsSpec {
            member_id: Some(p.member_id.clone()),
            drop_bindings: true,
            ..Default::default()
        })
        .unwrap();
    // A dry run lists the binds it would make, and changes nothing.
    let dry = ops.lifecycle().bring_up(&m, false).await.unwrap();
    assert!(
        dry.plan
            .iter()
            .any(|c| c.starts_with("event.bind") && c.contains("ONCRMDEALADD")),
        "{:?}",
        dry.plan
    );
    let sick = b24gate::ops::doctor_portal(&ops, &m, false).await.unwrap();
    assert_eq!(outcome(&sick, 3), "fail", "{sick:#?}");
    assert_eq!(outcome(&sick, 4), "skip");
    assert!(
        sick.iter()
            .find(|s| s.step == 3)
            .unwrap()
            .next
            .contains("--fix")
    );
    let fixed = b24gate::ops::doctor_portal(&ops, &m, true).await.unwrap();
    assert_eq!(outcome(&fixed, 4), "pass", "{fixed:#?}");
    let again = b24gate::ops::doctor_portal(&ops, &m, false).await.unwrap();
    assert!(again.iter().all(|s| s.outcome != "fail"), "{again:#?}");
    assert_eq!(
        outcome(&again, 2),
        "pass",
        "the public URL reaches this gateway"
    );
    assert_eq!(outcome(&again, 5), "pass");
    w.shutdown().await;
}

/// `docs/binding-matrix.md` is generated from the example manifest; this
/// fails when it is stale (regenerate with
/// `b24gate -c examples/b24gate.toml bindings --manifest --markdown`).
#[test]
fn binding_matrix_document_matches_the_example_manifest() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let example = std::fs::read_to_string(format!("{root}/examples/b24gate.toml")).unwrap();
    let (config, _) = engine::Config::load(&example, Vec::new()).unwrap();
    let table = b24gate::ops::manifest_markdown(&config);
    let doc = std::fs::read_to_string(format!("{root}/docs/binding-matrix.md")).unwrap();
    assert!(
        doc.contains(&table),
        "docs/binding-matrix.md is stale; regenerate it:\n{table}"
    );
}

/// The operations commands of the binary against a live gateway's database:
/// listings in JSON, replay, and the job commands' refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_commands_list_replay_and_refuse_with_exit_codes() {
    let w = World::start(MANIFEST, false).await;
    let p = w.portal("acme", &[]);
    w.install(&p.member_id);
    w.wait_status(&p.member_id, PortalStatus::Installed).await;
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();

    let (code, out, err) = w.cli(&["portals", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let portals = json(&out);
    assert_eq!(portals[0]["member_id"], p.member_id.as_str());
    assert_eq!(portals[0]["status"], "installed");

    let (code, out, err) = w
        .cli(&["bindings", "--portal", &p.member_id, "--json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let rows = json(&out);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["event"] == "ONCRMDEALADD")
        .unwrap();
    assert_eq!(
        (
            row["expected"].as_bool(),
            row["actual"].as_bool(),
            row["status"].as_str()
        ),
        (Some(true), Some(true), Some("bound"))
    );
    let (code, md, _) = w.cli(&["bindings", "--markdown"]).await;
    assert_eq!(code, 0);
    assert!(md.starts_with("| portal | event |"), "{md}");

    // Nothing missing: a dry-run reconcile plans no call and changes nothing.
    let (code, out, err) = w
        .cli(&["reconcile", "--portal", &p.member_id, "--dry-run", "--json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let plan = json(&out);
    assert_eq!(plan[0]["ok"], true, "{plan}");
    assert_eq!(plan[0]["plan"]["plan"], serde_json::json!([]), "{plan}");
    let (code, _, err) = w.cli(&["reconcile"]).await;
    assert_eq!(code, 1, "neither --portal nor --all: {err}");
    let (code, out, _) = w
        .cli(&["audit", "--portal", &p.member_id, "--since", "1h", "--json"])
        .await;
    assert_eq!(code, 0);
    assert!(
        json(&out)
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "install.completed")
    );

    let (code, out, _) = w
        .cli(&["jobs", "list", "--state", "completed", "--json"])
        .await;
    assert_eq!(code, 0);
    let done = json(&out);
    assert!(!done.as_array().unwrap().is_empty());
    let id = done[0]["id"].as_i64().unwrap().to_string();
    let (code, _, err) = w.cli(&["jobs", "retry", &id]).await;
    assert_eq!(code, 1, "a completed job is not replayed: {err}");
    assert!(err.contains("not dead-lettered"), "{err}");

    w.emu
        .changes(
            &p.member_id,
            b24emu::ChangeSpec {
                entity: "deal".into(),
                action: "add".into(),
                count: 2,
                user_id: 1,
                id: None,
                client_id: None,
                auth_connector: String::new(),
                fields: Default::default(),
            },
        )
        .unwrap();
    let r = w.receiver.clone();
    w.until("2 events", std::time::Duration::from_secs(30), || {
        let r = r.clone();
        async move { r.of("ONCRMDEALADD").len() == 2 }
    })
    .await;
    // Counted before the replay: the running gateway may deliver it at once.
    let before = w
        .receiver
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    let (code, out, err) = w
        .cli(&[
            "events",
            "replay",
            "--portal",
            &p.member_id,
            "--since",
            "1h",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["forwards_queued"], 2);
    // The running gateway delivers the replay with the same webhook-ids: the
    // app sees the same two events again.
    let r = w.receiver.clone();
    w.until("the replay", std::time::Duration::from_secs(30), || {
        let r = r.clone();
        async move { r.requests.load(std::sync::atomic::Ordering::SeqCst) >= before + 2 }
    })
    .await;
    assert_eq!(
        w.receiver.of("ONCRMDEALADD").len(),
        2,
        "same ids: deduplicated by the app"
    );

    let (code, _, err) = w.cli(&["portals", "--portal-typo"]).await;
    assert_eq!(code, 2, "{err}");
    w.shutdown().await;
}
