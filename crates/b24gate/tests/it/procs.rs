//! `b24gate serve` as child processes: the process, its configuration, its
//! database, and a fleet of installed portals — shared by the crash and the
//! multi-instance suites.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use b24emu::{App, AppKind, AppSpec, Emulator, InstallSpec, PortalSpec};
use rand::Rng;
use store::{Keyring, OpenOptions, PortalStatus, Store};

use crate::harness::{TARGET_SECRET, wait_for};

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

/// What differs between the `serve` configurations of the suites.
pub(crate) struct Serve<'a> {
    pub(crate) port: u16,
    /// The URL the portals know (the instance itself, or a balancer).
    pub(crate) public_url: &'a str,
    pub(crate) db_url: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) oauth_url: &'a str,
    pub(crate) hook_url: &'a str,
    /// Extra `[server]` lines (`workers = 4`).
    pub(crate) server_extra: &'a str,
    pub(crate) drain_every: &'a str,
}

impl Serve<'_> {
    /// The configuration text: one online and one offline deal binding,
    /// forwarded to the receiver.
    pub(crate) fn config(&self) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "{public}"
database_url = "{db_url}"
allow_insecure_http = true
job_lease = "2s"
{server_extra}
[app]
client_id = "{client_id}"
version = 1
scopes = ["crm", "user_brief"]
oauth_url = "{oauth}"
allowed_domains = ["127.0.0.1", "*.localhost"]
[offline]
drain_every = "{drain_every}"
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
            port = self.port,
            public = self.public_url,
            db_url = self.db_url,
            server_extra = self.server_extra,
            client_id = self.client_id,
            oauth = self.oauth_url,
            drain_every = self.drain_every,
            hook_url = self.hook_url,
        )
    }

    /// A stopped gateway process in a directory of its own with this
    /// configuration written there.
    pub(crate) fn gate(&self, client_secret: &str) -> Gate {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b24gate.toml"), self.config()).unwrap();
        Gate {
            dir,
            port: self.port,
            client_secret: client_secret.to_owned(),
            child: None,
            starts: 0,
        }
    }
}

/// The app the suites install: crm and user_brief, installed through
/// `ONAPPINSTALL` at `{public_url}/b24/install`.
pub(crate) fn create_app(emu: &Emulator, public_url: &str) -> App {
    emu.create_app(AppSpec {
        client_id: None,
        client_secret: None,
        scopes: ["crm", "user_brief"].map(String::from).into(),
        version: Some(1),
        install_url: format!("{public_url}/b24/install"),
        installer: false,
        kind: AppKind::Local,
        update_event: None,
    })
    .unwrap()
}

/// The store the gateway processes use, opened by the test to inspect it.
pub(crate) async fn open_store(db_url: &str) -> Store {
    Store::open(
        db_url,
        Keyring::from_hex(MASTER_KEY).unwrap(),
        &OpenOptions::default(),
    )
    .await
    .unwrap()
}

/// `n` portals `{prefix}0…` with `rest_offline_extended`, the app installed
/// on each; returns once the store has every one `installed`.
pub(crate) async fn install_fleet(
    emu: &Emulator,
    store: &Store,
    client_id: &str,
    prefix: &str,
    n: usize,
    within: Duration,
    log: impl Fn() -> String,
) -> Vec<String> {
    let mut members = Vec::new();
    for i in 0..n {
        let p = emu
            .create_portal(PortalSpec {
                name: Some(format!("{prefix}{i}")),
                features: vec!["rest_offline_extended".into()],
                ..PortalSpec::default()
            })
            .unwrap();
        emu.install(
            &p.member_id,
            InstallSpec {
                client_id: client_id.to_owned(),
                ..InstallSpec::default()
            },
        )
        .unwrap();
        members.push(p.member_id);
    }
    wait_for(&format!("{n} portals installed"), within, log, || async {
        let portals = store.list_portals().await.unwrap();
        members.iter().all(|m| {
            portals
                .iter()
                .any(|p| p.member_id.as_str() == m && p.status == PortalStatus::Installed)
        })
    })
    .await;
    members
}
