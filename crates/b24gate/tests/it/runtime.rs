//! The runtime's promises end to end against b24emu: every delivery the
//! gateway acknowledged reaches the app, exactly once after the app's dedupe,
//! through receiver failures and through the gateway being killed and
//! restarted mid-run; offline queues end empty with nothing cleared before
//! it was stored.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;

use b24emu::ChangeSpec;
use store::PortalStatus;

use crate::harness::{World, acknowledged, deliveries_tried, drains_settled, seeded};

const MANIFEST: &str = r#"
[[binding]]
event = "ONCRMDEALADD"
owner = "app"
[[binding]]
event = "ONCRMDEALUPDATE"
mode = "offline"
owner = "app"
"#;

fn change(action: &str, count: u64) -> ChangeSpec {
    ChangeSpec {
        entity: "deal".into(),
        action: action.into(),
        count,
        user_id: 1,
        id: None,
        client_id: None,
        auth_connector: String::new(),
        fields: Default::default(),
    }
}

fn received(w: &World, event: &str) -> BTreeSet<String> {
    w.receiver
        .of(event)
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["portal"]["member_id"].as_str().unwrap(),
                e["data"]["FIELDS"]["ID"].to_string().trim_matches('"')
            )
        })
        .collect()
}

async fn install_all(w: &World, n: usize, features: &[&str]) -> Vec<String> {
    let mut members = Vec::new();
    for i in 0..n {
        let p = w.portal(&format!("p{i}"), features);
        w.install(&p.member_id);
        members.push(p.member_id);
    }
    for m in &members {
        w.wait_status(m, PortalStatus::Installed).await;
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_online_changes_reach_the_app_once_despite_failures_and_crashes() {
    let mut w = World::start(MANIFEST, false).await;
    w.receiver.fail_every.store(3, Ordering::SeqCst); // a third of requests fail
    let members = install_all(&w, 20, &[]).await;
    let mut rng = seeded("online run");
    // 2,000 changes in ten waves; the engine is aborted at random points
    // of the run (between portals, after a random pause), three times.
    let mut crashes: BTreeSet<usize> = BTreeSet::new();
    while crashes.len() < 3 {
        crashes.insert(rng.random_range(0..200));
    }
    let mut step = 0;
    for _ in 0..10 {
        for m in &members {
            w.emu.changes(m, change("add", 10)).unwrap();
            if crashes.contains(&step) {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
                w.crash_engine().await;
            }
            step += 1;
        }
    }
    // The emulator delivers asynchronously: wait until it has tried them all.
    let rw = &w;
    rw.until(
        "the emulator to finish delivering",
        Duration::from_secs(60),
        || async move { deliveries_tried(&rw.emu) },
    )
    .await;
    let acked = acknowledged(&w.emu, &members, "ONCRMDEALADD");
    assert!(
        acked.len() >= 1_600,
        "most deliveries were acknowledged ({})",
        acked.len()
    );
    let r = w.receiver.clone();
    let want = acked.clone();
    let rw = &w;
    rw.until(
        "every acknowledged event at the app",
        Duration::from_secs(120),
        || {
            let _ = &r;
            let want = want.clone();
            async move { received(rw, "ONCRMDEALADD").is_superset(&want) }
        },
    )
    .await;
    let got = received(&w, "ONCRMDEALADD");
    assert!(got.is_superset(&acked), "an acknowledged event was lost");
    assert!(
        w.receiver.failures.load(Ordering::SeqCst) > 300,
        "the receiver did fail"
    );
    w.shutdown().await;
}

/// 5,000 offline events across 5 portals, with the engine killed mid-drain
/// six times: all forwarded, the portals' queues end empty, no offline row
/// stored twice. On 2 runtime threads, as on the machine CI runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_offline_events_drain_completely_through_crashes() {
    let mut w = World::start(MANIFEST, false).await;
    let members = install_all(&w, 5, &["rest_offline_extended"]).await;
    for m in &members {
        w.emu.changes(m, change("add", 1000)).unwrap();
        w.emu.changes(m, change("update", 1000)).unwrap();
    }
    let mut rng = seeded("offline run");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
        w.crash_engine().await;
    }
    let rw = &w;
    rw.until(
        "5,000 offline events at the app",
        Duration::from_secs(150),
        || async move { received(rw, "ONCRMDEALUPDATE").len() >= 5_000 },
    )
    .await;
    assert_eq!(
        received(&w, "ONCRMDEALUPDATE").len(),
        5_000,
        "every row at the app"
    );
    let store = w.store.clone();
    w.until("every drain to settle", Duration::from_secs(30), || {
        drains_settled(&store, &members)
    })
    .await;
    for m in &members {
        let q = &w.emu.portal_state(m).unwrap()["apps"][0]["offline_queue"];
        assert_eq!(q["size"], 0, "queue of {m} not empty: {q}");
    }
    let mut seen = BTreeSet::new();
    for m in &members {
        for row in w.store.inbox_since(m, 0, 1_000_000).await.unwrap() {
            if row.source == "offline" {
                let p = row.payload_json();
                // Each deal changed once here, so its MESSAGE_ID occurs once.
                let key = format!("{m}:{}", p["message_id"]);
                assert!(seen.insert(key.clone()), "MESSAGE_ID {key} stored twice");
            }
        }
    }
    assert_eq!(seen.len(), 5_000);
    w.shutdown().await;
}
