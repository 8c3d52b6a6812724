//! The crash suite: the `b24gate serve` process is killed with SIGKILL
//! during a burst of online events and during an offline drain, then started
//! again on the same database (SQLite, and PostgreSQL): every acknowledged
//! event reaches the app, no offline row is cleared before it is stored, and
//! an event forwarded again after a crash carries the same `webhook-id`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use b24emu::{AppKind, AppSpec, ChangeSpec, Emulator, EmulatorConfig, InstallSpec, PortalSpec};
use rand::Rng;
use store::{Keyring, OpenOptions, PortalStatus, Store};

use crate::harness::{Receiver, TARGET_SECRET, acknowledged, drains_settled, seeded};

pub(crate) const MASTER_KEY: &str =
    "4242424242424242424242424242424242424242424242424242424242424242";

/// One `b24gate serve` child process, restartable on the same port and
/// database.
pub(crate) struct Gate {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) port: u16,
    pub(crate) client_secret: String,
    pub(crate) child: Option<Child>,
    pub(crate) starts: u32,
}

impl Gate {
    pub(crate) fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gate.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_b24gate"))
            .current_dir(self.dir.path())
            .args(["-c", "b24gate.toml", "serve"])
            .env("B24GATE_MASTER_KEY", MASTER_KEY)
            .env("B24GATE_APP_CLIENT_SECRET", &self.client_secret)
            .env("B24GATE_TARGET_APP_SECRET", TARGET_SECRET)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.starts += 1;
    }

    /// Starts the process and waits for `/healthz`; a port still held by the
    /// killed process's last connections is retried.
    pub(crate) async fn start(&mut self) {
        let http = reqwest::Client::new();
        for _ in 0..5 {
            self.spawn();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline {
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    eprintln!("gateway exited early ({status}); retrying");
                    break;
                }
                let url = format!("http://127.0.0.1:{}/healthz", self.port);
                if let Ok(r) = http.get(&url).send().await
                    && r.status() == 200
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the gateway did not start: {}", self.log());
    }

    pub(crate) fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            let ok = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
            assert!(ok.success());
            c.wait().unwrap();
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let _ = c.wait();
        }
    }

    pub(crate) fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("gate.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.sigkill();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn change(action: &str, count: u64) -> ChangeSpec {
    ChangeSpec {
        entity: "deal".into(),
        action: action.into(),
        count,
        user_id: 1,
        ..ChangeSpec::default()
    }
}

/// The database of one run: a SQLite file in the gateway's directory, or a
/// PostgreSQL schema of its own (dropped at the end).
pub(crate) enum Db {
    Sqlite,
    Postgres { base: String, schema: String },
}

impl Db {
    pub(crate) async fn postgres() -> Db {
        let base = std::env::var("B24GATE_TEST_PG_URL")
            .expect("B24GATE_TEST_PG_URL must name a PostgreSQL database (.ci/run sets it)");
        let mut b = [0u8; 6];
        getrandom_fill(&mut b);
        let schema = format!(
            "crash_{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        );
        let admin = sqlx::PgPool::connect(&base).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        Db::Postgres { base, schema }
    }

    pub(crate) fn url(&self, dir: &std::path::Path) -> String {
        match self {
            Db::Sqlite => format!("sqlite://{}", dir.join("gate.db").display()),
            Db::Postgres { base, schema } => {
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}options=-c%20search_path%3D{schema}")
            }
        }
    }

    pub(crate) async fn drop_schema(&self) {
        if let Db::Postgres { base, schema } = self {
            let admin = sqlx::PgPool::connect(base).await.unwrap();
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&admin)
                .await;
            admin.close().await;
        }
    }
}

fn getrandom_fill(b: &mut [u8]) {
    let mut rng = rand::rng();
    rng.fill(b);
}

pub(crate) async fn until<F, Fut>(gate: &Gate, what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; gateway log:\n{}",
            gate.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let app = emu
        .create_app(AppSpec {
            client_id: None,
            client_secret: None,
            scopes: ["crm", "user_brief"].map(String::from).into(),
            version: Some(1),
            install_url: format!("{gate_url}/b24/install"),
            installer: false,
            kind: AppKind::Local,
            update_event: None,
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = db.url(dir.path());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "{gate_url}"
database_url = "{db_url}"
allow_insecure_http = true
job_lease = "2s"
[app]
client_id = "{client_id}"
version = 1
scopes = ["crm", "user_brief"]
oauth_url = "{oauth}"
allowed_domains = ["127.0.0.1", "*.localhost"]
[offline]
drain_every = "500ms"
[[target]]
name = "app"
url = "{hook_url}"
[[binding]]
event = "ONCRMDEALADD"
owner = "app"
[[binding]]
event = "ONCRMDEALUPDATE"
mode = "offline"
owner = "app"
"#,
        client_id = app.client_id,
        oauth = emu.oauth_url(),
    );
    std::fs::write(dir.path().join("b24gate.toml"), config).unwrap();
    let mut gate = Gate {
        dir,
        port,
        client_secret: app.client_secret.clone(),
        child: None,
        starts: 0,
    };
    gate.start().await;
    let store = Store::open(
        &db_url,
        Keyring::from_hex(MASTER_KEY).unwrap(),
        &OpenOptions::default(),
    )
    .await
    .unwrap();

    let mut members = Vec::new();
    for i in 0..5 {
        let p = emu
            .create_portal(PortalSpec {
                name: Some(format!("crash{i}")),
                features: vec!["rest_offline_extended".into()],
                ..PortalSpec::default()
            })
            .unwrap();
        emu.install(
            &p.member_id,
            InstallSpec {
                client_id: app.client_id.clone(),
                ..InstallSpec::default()
            },
        )
        .unwrap();
        members.push(p.member_id);
    }
    for m in &members {
        let (store, m) = (store.clone(), m.clone());
        until(&gate, "portal installed", Duration::from_secs(60), || {
            let (store, m) = (store.clone(), m.clone());
            async move {
                store.get_portal(&m).await.unwrap().map(|p| p.status)
                    == Some(PortalStatus::Installed)
            }
        })
        .await;
    }

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
        || async {
            let s = emu.stats();
            let done =
                s["deliveries_ok"].as_u64().unwrap() + s["deliveries_failed"].as_u64().unwrap();
            done >= s["deliveries_queued"].as_u64().unwrap()
        },
    )
    .await;
    let acked = acknowledged(&emu, &members, "ONCRMDEALADD");
    assert!(
        acked.len() >= 500,
        "most additions acknowledged ({})",
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
