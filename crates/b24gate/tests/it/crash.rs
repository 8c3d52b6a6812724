//! The crash suite: the `b24gate serve` process is killed with SIGKILL
//! during a burst of online events and during an offline drain, then started
//! again on the same database (SQLite, and PostgreSQL): every acknowledged
//! event reaches the app, no offline row is cleared before it is stored, and
//! an event forwarded again after a crash carries the same `webhook-id`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use b24emu::{ChangeSpec, Emulator, EmulatorConfig};
use rand::Rng;

use crate::harness::{Receiver, acknowledged, deliveries_tried, drains_settled, seeded, wait_for};
use crate::procs::{Db, Gate, Serve, create_app, free_port, install_fleet, open_store};

pub(crate) fn change(action: &str, count: u64) -> ChangeSpec {
    ChangeSpec {
        entity: "deal".into(),
        action: action.into(),
        count,
        user_id: 1,
        ..ChangeSpec::default()
    }
}

/// [`wait_for`] with the gateway's log tail on failure.
async fn until<F, Fut>(gate: &Gate, what: &str, within: Duration, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, within, || gate.log(), cond).await
}

/// `member:deal id` → the webhook ids it reached the app under.
pub(crate) fn at_app(r: &Receiver, event: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, e) in r.events.lock().unwrap().iter() {
        if e["event"] == event {
            let key = format!(
                "{}:{}",
                e["portal"]["member_id"].as_str().unwrap_or_default(),
                e["data"]["FIELDS"]["ID"].to_string().trim_matches('"')
            );
            out.entry(key).or_default().insert(id.clone());
        }
    }
    out
}

/// Every event reached the app under exactly one `webhook-id`: an event
/// forwarded twice (its job re-run after the crash) kept its id.
pub(crate) fn one_webhook_id_each(seen: &BTreeMap<String, BTreeSet<String>>) {
    for (event, ids) in seen {
        assert_eq!(
            ids.len(),
            1,
            "{event} reached the app under several webhook ids: {ids:?}"
        );
    }
}

async fn sigkill_during_bursts_and_drains(db: Db) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut rng = seeded("crash suite");
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let (receiver, hook_url) = Receiver::start().await;
    let port = free_port();
    let gate_url = format!("http://127.0.0.1:{port}");
    let app = create_app(&emu, &gate_url);
    let dir = tempfile::tempdir().unwrap();
    let db_url = db.url(dir.path());
    let mut gate = Serve {
        port,
        public_url: &gate_url,
        db_url: &db_url,
        client_id: &app.client_id,
        oauth_url: emu.oauth_url(),
        hook_url: &hook_url,
        server_extra: "",
        drain_every: "500ms",
    }
    .gate(&app.client_secret);
    gate.start().await;
    let store = open_store(&db_url).await;
    let members = install_fleet(
        &emu,
        &store,
        &app.client_id,
        "crash",
        5,
        Duration::from_secs(60),
        || gate.log(),
    )
    .await;

    // Online: 1,000 deal additions in waves, SIGKILL at a random point.
    let kill_at = rng.random_range(5..35);
    let mut step = 0;
    for _ in 0..8 {
        for m in &members {
            emu.changes(m, change("add", 25)).unwrap();
            if step == kill_at {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
                gate.sigkill();
                gate.start().await;
            }
            step += 1;
        }
    }
    until(
        &gate,
        "the emulator to finish delivering",
        Duration::from_secs(60),
        || async { deliveries_tried(&emu) },
    )
    .await;
    // Deliveries that met the dead process failed (the portal does not
    // retry); every wave fired after the restart met a live one. So at
    // least those were acknowledged — and then everything acknowledged
    // must reach the app.
    let acked = acknowledged(&emu, &members, "ONCRMDEALADD");
    let after_restart = (8 * members.len() - kill_at - 1) * 25;
    eprintln!(
        "crash suite: killed after wave {kill_at}; {} of 1,000 additions acknowledged",
        acked.len()
    );
    assert!(
        acked.len() >= after_restart,
        "the {after_restart} additions fired after the restart were acknowledged ({})",
        acked.len()
    );
    let want = acked.clone();
    until(
        &gate,
        "every acknowledged addition at the app",
        Duration::from_secs(90),
        || {
            let want = want.clone();
            let r = receiver.clone();
            async move {
                let got: BTreeSet<String> = at_app(&r, "ONCRMDEALADD").into_keys().collect();
                got.is_superset(&want)
            }
        },
    )
    .await;
    one_webhook_id_each(&at_app(&receiver, "ONCRMDEALADD"));

    // Offline: 1,000 deal updates queued on the portals, SIGKILL twice
    // while they drain.
    for m in &members {
        emu.changes(m, change("update", 200)).unwrap();
    }
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..700))).await;
        gate.sigkill();
        gate.start().await;
    }
    until(
        &gate,
        "1,000 offline updates at the app",
        Duration::from_secs(120),
        || {
            let r = receiver.clone();
            async move { at_app(&r, "ONCRMDEALUPDATE").len() >= 1_000 }
        },
    )
    .await;
    let updates = at_app(&receiver, "ONCRMDEALUPDATE");
    assert_eq!(updates.len(), 1_000, "every queued row reached the app");
    one_webhook_id_each(&updates);
    until(
        &gate,
        "every drain to settle",
        Duration::from_secs(30),
        || drains_settled(&store, &members),
    )
    .await;
    let mut stored = BTreeSet::new();
    for m in &members {
        let q = &emu.portal_state(m).unwrap()["apps"][0]["offline_queue"];
        assert_eq!(q["size"], 0, "queue of {m} not empty: {q}");
        for row in store.inbox_since(m, 0, 1_000_000).await.unwrap() {
            if row.source == "offline" {
                let key = format!("{m}:{}", row.payload_json()["message_id"]);
                assert!(stored.insert(key.clone()), "MESSAGE_ID {key} stored twice");
            }
        }
    }
    assert_eq!(stored.len(), 1_000);
    eprintln!(
        "crash suite: {} gateway starts, {} receiver requests for {} events",
        gate.starts,
        receiver.requests.load(std::sync::atomic::Ordering::SeqCst),
        receiver.events.lock().unwrap().len()
    );
    gate.stop();
    store.close().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_during_bursts_and_drains_loses_nothing() {
    sigkill_during_bursts_and_drains(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_during_bursts_and_drains_loses_nothing() {
    sigkill_during_bursts_and_drains(Db::postgres().await).await;
}
