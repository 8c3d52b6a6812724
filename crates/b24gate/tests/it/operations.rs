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
