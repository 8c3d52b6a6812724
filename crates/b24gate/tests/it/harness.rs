//! One emulator farm, one gateway (SQLite, engine, server on loopback) and a
//! receiver standing in for the app.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use b24emu::{AppKind, AppSpec, Emulator, EmulatorConfig, InstallSpec, PortalInfo, PortalSpec};
use b24gate::gateway::{Gateway, GatewayOptions};
use engine::{Config, EngineOptions};
use store::{Keyring, OpenOptions, PortalStatus, Store};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const TARGET_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Clone, Default)]
pub struct Receiver {
    pub events: Arc<Mutex<HashMap<String, serde_json::Value>>>,
    pub requests: Arc<AtomicU64>,
    /// Fail every n-th request with a 503 (0: never).
    pub fail_every: Arc<AtomicU64>,
    pub failures: Arc<AtomicU64>,
}

impl Receiver {
    pub async fn start() -> (Receiver, String) {
        let r = Receiver::default();
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(hook))
            .with_state(r.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (r, url)
    }

    pub fn of(&self, event: &str) -> Vec<serde_json::Value> {
        self.events
            .lock()
            .unwrap()
            .values()
            .filter(|v| v["event"] == event)
            .cloned()
            .collect()
    }
}

async fn hook(
    State(r): State<Receiver>,
    headers: axum::http::HeaderMap,
    body: String,
) -> StatusCode {
    let n = r.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let every = r.fail_every.load(Ordering::SeqCst);
    if every > 0 && n % every == 0 {
        r.failures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    r.events.lock().unwrap().insert(id, v);
    StatusCode::OK
}

pub struct World {
    pub emu: Emulator,
    pub gate: Option<Gateway>,
    pub store: Store,
    pub client_id: String,
    pub receiver: Receiver,
    setup: Setup,
    _dir: tempfile::TempDir,
}

/// What it takes to (re)start the gateway of a [`World`].
struct Setup {
    /// The configuration the gateway was last started with.
    last: Mutex<Option<(Arc<Config>, engine::Secrets)>>,
    /// The text of that configuration, for driving the binary.
    last_text: Mutex<String>,
    gate_url: String,
    hook_url: String,
    client_id: String,
    client_secret: String,
    oauth: String,
    installer: bool,
    /// Host names (`*.localhost`) the gateway's REST client resolves to
    /// loopback: host-mode portals and the names they are renamed to.
    resolve: Vec<String>,
}

impl Setup {
    async fn gateway(
        &self,
        store: &Store,
        listener: tokio::net::TcpListener,
        manifest: &str,
        version: i64,
    ) -> Gateway {
        let text = format!(
            r#"
[server]
public_url = "{gate_url}"
allow_insecure_http = true
[app]
client_id = "{client_id}"
version = {version}
scopes = ["crm", "placement", "user_brief"]
oauth_url = "{oauth}"
allowed_domains = ["127.0.0.1", "*.localhost"]
installer = {installer}
{offline}
[[target]]
name = "app"
url = "{hook_url}"
{manifest}
"#,
            // A quick drain timer unless the test's manifest sets its own.
            offline = if manifest.contains("[offline]") {
                ""
            } else {
                "[offline]\ndrain_every = \"500ms\""
            },
            gate_url = self.gate_url,
            client_id = self.client_id,
            oauth = self.oauth,
            installer = self.installer,
            hook_url = self.hook_url,
        );
        let env = vec![
            (
                "B24GATE_APP_CLIENT_SECRET".to_owned(),
                self.client_secret.clone(),
            ),
            (
                "B24GATE_TARGET_APP_SECRET".to_owned(),
                TARGET_SECRET.to_owned(),
            ),
            ("B24GATE_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
        ];
        let (config, secrets) = Config::load(&text, env).unwrap();
        *self.last.lock().unwrap() = Some((Arc::new(config.clone()), secrets.clone()));
        *self.last_text.lock().unwrap() = text.clone();
        let mut engine = fast_engine();
        if !self.resolve.is_empty() {
            let mut client = engine::client_config(&config, &secrets);
            let lo = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            client.resolve = self.resolve.iter().map(|h| (h.clone(), lo)).collect();
            engine.client = Some(client);
        }
        Gateway::start(
            Arc::new(config),
            &secrets,
            store.clone(),
            listener,
            GatewayOptions {
                engine,
                ..GatewayOptions::default()
            },
        )
        .await
        .unwrap()
    }
}

pub fn fast_engine() -> EngineOptions {
    let mut o = EngineOptions::default();
    o.runner.poll = Duration::from_millis(20);
    o.runner.lease = Duration::from_secs(5);
    o.dispatch_every = Duration::from_millis(20);
    o.housekeeping_every = Duration::from_millis(100);
    o.forward_schedule =
        engine::retry::RetrySchedule::new(vec![Duration::from_millis(50); 10], 0.2);
    // The production shape (8 delays), in fractions of a second.
    o.lifecycle_schedule =
        engine::retry::RetrySchedule::new(vec![Duration::from_millis(200); 8], 0.2);
    o
}

impl World {
    /// `manifest` is appended to the generated configuration (bindings,
    /// placements, migrations…); `installer` selects install flow B.
    pub async fn start(manifest: &str, installer: bool) -> World {
        World::start_with(manifest, installer, EmulatorConfig::default()).await
    }

    /// [`World::start`] with an emulator configuration of the test's own.
    pub async fn start_with(manifest: &str, installer: bool, emu_config: EmulatorConfig) -> World {
        World::start_resolving(manifest, installer, emu_config, Vec::new()).await
    }

    /// [`World::start_with`] whose gateway resolves `hosts` (names under
    /// `.localhost`) to loopback, for portals made with [`World::portal_at`]
    /// and for the names they are renamed to.
    pub async fn start_resolving(
        manifest: &str,
        installer: bool,
        emu_config: EmulatorConfig,
        hosts: Vec<String>,
    ) -> World {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // `B24GATE_TEST_LOG=debug` shows the gateway's logs while debugging.
        if let Ok(filter) = std::env::var("B24GATE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let emu = Emulator::start(emu_config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate_url = format!("http://{}", listener.local_addr().unwrap());
        let (receiver, hook_url) = Receiver::start().await;
        let app = emu
            .create_app(AppSpec {
                client_id: None,
                client_secret: None,
                scopes: ["crm", "placement", "user_brief", "telephony"]
                    .map(String::from)
                    .into(),
                version: Some(1),
                install_url: format!("{gate_url}/b24/install"),
                installer,
                kind: AppKind::Local,
                update_event: None,
            })
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("gate.db").display());
        let store = Store::open(
            &url,
            Keyring::from_hex(&"42".repeat(32)).unwrap(),
            &OpenOptions::default(),
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let setup = Setup {
            last: Mutex::new(None),
            last_text: Mutex::new(String::new()),
            gate_url,
            hook_url,
            client_id: app.client_id.clone(),
            client_secret: app.client_secret.clone(),
            oauth: emu.oauth_url().to_owned(),
            installer,
            resolve: hosts,
        };
        let gate = setup.gateway(&store, listener, manifest, 1).await;
        World {
            emu,
            gate: Some(gate),
            store,
            client_id: app.client_id,
            receiver,
            setup,
            _dir: dir,
        }
    }

    /// Runs the `b24gate` binary against this world's configuration and
    /// database; returns (exit code, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let cfg = self._dir.path().join("b24gate.toml");
        std::fs::write(&cfg, &*self.setup.last_text.lock().unwrap()).unwrap();
        let db = format!("sqlite://{}", self._dir.path().join("gate.db").display());
        let mut all = vec!["-c".to_owned(), cfg.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let out = tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_b24gate"));
            for (k, _) in std::env::vars() {
                if k.starts_with("B24GATE_") {
                    cmd.env_remove(k);
                }
            }
            cmd.args(&all)
                .env("B24GATE_SERVER_DATABASE_URL", db)
                .env("B24GATE_MASTER_KEY", "42".repeat(32))
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The operations commands over this world's gateway configuration.
    pub fn ops(&self) -> b24gate::ops::Ops {
        let (config, secrets) = self.setup.last.lock().unwrap().clone().unwrap();
        b24gate::ops::Ops::new(config, &secrets, self.store.clone()).unwrap()
    }

    /// Kills the gateway's engine mid-flight and starts a new one on the
    /// same database (see `Gateway::crash_engine`).
    pub async fn crash_engine(&mut self) {
        self.gate.as_mut().unwrap().crash_engine().await.unwrap();
    }

    /// Stops the gateway and starts a new one on the same address and
    /// database with another manifest and version (an upgrade, a restart).
    pub async fn restart(&mut self, manifest: &str, version: i64) {
        if let Some(g) = self.gate.take() {
            g.shutdown().await;
        }
        let addr = self.setup.gate_url.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        self.gate = Some(
            self.setup
                .gateway(&self.store, listener, manifest, version)
                .await,
        );
    }

    pub fn portal(&self, name: &str, features: &[&str]) -> PortalInfo {
        self.emu
            .create_portal(PortalSpec {
                name: Some(name.into()),
                features: features.iter().map(|s| s.to_string()).collect(),
                ..PortalSpec::default()
            })
            .unwrap()
    }

    /// A host-mode portal: routed by `Host` under `host` (one of the names
    /// given to [`World::start_resolving`]), on the emulator's port.
    pub fn portal_at(&self, name: &str, host: &str) -> PortalInfo {
        self.emu
            .create_portal(PortalSpec {
                name: Some(name.into()),
                domain: Some(format!("{host}:{}", self.emu.urls().http_port)),
                ..PortalSpec::default()
            })
            .unwrap()
    }

    pub fn install(&self, member_id: &str) {
        self.emu
            .install(
                member_id,
                InstallSpec {
                    client_id: self.client_id.clone(),
                    ..InstallSpec::default()
                },
            )
            .unwrap();
    }

    /// Waits until `cond` holds, polling; fails with `what` after `within`.
    pub async fn until<F, Fut>(&self, what: &str, within: Duration, cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        wait_for(what, within, String::new, cond).await
    }

    pub async fn wait_status(&self, member_id: &str, want: PortalStatus) {
        let store = self.store.clone();
        let m = member_id.to_owned();
        self.until(
            &format!("portal status {want}"),
            Duration::from_secs(30),
            || {
                let store = store.clone();
                let m = m.clone();
                async move { store.get_portal(&m).await.unwrap().map(|p| p.status) == Some(want) }
            },
        )
        .await;
    }

    /// Calls the gateway's REST proxy.
    pub async fn proxy(
        &self,
        member_id: &str,
        method: &str,
        params: serde_json::Value,
        token: &str,
    ) -> (u16, serde_json::Value) {
        let url = format!(
            "{}/v1/portals/{member_id}/rest/{method}",
            self.gate.as_ref().unwrap().url
        );
        let r = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .json(&params)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn admin_get(&self, path: &str) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.gate.as_ref().unwrap().url);
        let r = reqwest::Client::new()
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn shutdown(mut self) {
        if let Some(g) = self.gate.take() {
            g.shutdown().await;
        }
        self.emu.shutdown().await;
    }
}

/// A random generator for crash points and the like: seeded from
/// `B24GATE_TEST_SEED` when set, otherwise at random; the seed is printed so
/// a failing run can be repeated.
/// Polls `cond` until it holds; after `within` fails with `what` and
/// whatever `log` tells (a gateway process's log tail, say).
pub async fn wait_for<F, Fut>(what: &str, within: Duration, log: impl Fn() -> String, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await {
        if tokio::time::Instant::now() >= deadline {
            let log = log();
            if log.is_empty() {
                panic!("timed out waiting for {what}");
            }
            panic!("timed out waiting for {what}; log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn seeded(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = std::env::var("B24GATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: B24GATE_TEST_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Whether the emulator has tried every delivery it queued (it delivers
/// asynchronously; a delivery that failed counts as tried).
pub fn deliveries_tried(emu: &Emulator) -> bool {
    let s = emu.stats();
    let done = s["deliveries_ok"].as_u64().unwrap() + s["deliveries_failed"].as_u64().unwrap();
    done >= s["deliveries_queued"].as_u64().unwrap()
}

/// Deal ids the gateway acknowledged (200) for `event`, per the emulator's
/// delivery log, as `member:id`.
pub fn acknowledged(emu: &Emulator, members: &[String], event: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in members {
        for d in emu.deliveries(m).unwrap() {
            if d.event == event && d.ok {
                let body = d.body.unwrap_or_default();
                let id = body
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("data%5BFIELDS%5D%5BID%5D="))
                    .unwrap_or_default()
                    .to_owned();
                out.insert(format!("{m}:{id}"));
            }
        }
    }
    out
}

/// Every portal's default offline partition has a drain state with no
/// reservation open and no reserve in flight.
pub async fn drains_settled(store: &Store, members: &[String]) -> bool {
    for m in members {
        let d = store.drain_state(m, "").await.unwrap();
        if d.is_none_or(|d| d.process_id.is_some() || d.reserving) {
            return false;
        }
    }
    true
}
