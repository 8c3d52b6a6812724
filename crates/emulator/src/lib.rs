//! b24emu — an emulator of a farm of Bitrix24 portals and of their OAuth server.
//!
//! Behaviour follows `shared/reference/bitrix24-protocol.md` (§11 checklist); the
//! user guide is `docs/emulator.md`. Map of the crate:
//!
//! - [`config`]: [`EmulatorConfig`], every default (also loadable from TOML).
//! - [`state`]: the in-memory farm ([`state::Farm`]) behind one mutex.
//! - `delivery`: jobs, their encoding, the delivery worker (delay/reordering) and the
//!   delivery log (its own mutex: recording never takes the farm lock).
//! - [`ops`]: farm operations (create app/portal, install, changes, …) shared by the
//!   control API and the Rust API of [`Emulator`].
//! - [`codec`]: the emulator's own PHP-style form encoder and parameter decoder.
//! - `rest`: the portal REST endpoint (dispatcher, methods, batch, offline queue).
//! - [`events`]: the event catalogue and firing (de-duplication, loop TTL).
//! - [`oauth`]: `/oauth/token/` and the OAuth server's `app.info`.
//! - [`limits`]: leaky bucket and operating-time budget.
//! - `control`: the `/_emu/` JSON API. `server`: routers and listeners. [`tls`]: the
//!   local CA and per-SNI certificates.
//! - [`clock`]: the one clock (freezable, advanceable).

pub mod clock;
pub mod codec;
pub mod config;
mod control;
mod delivery;
pub mod events;
pub mod limits;
pub mod oauth;
pub mod ops;
mod rest;
mod server;
pub mod state;
pub mod tls;

use std::sync::Arc;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use clock::Clock;
pub use config::{EmulatorConfig, UpdateEvent};
pub use delivery::{DeliveryRecord, DeliverySpec};
pub use ops::{
    AppSpec, ChangeInfo, ChangeSpec, ClockSpec, ConfirmSpec, FaultsSpec, InstallInfo, InstallSpec,
    LimitsSpec, PaymentSpec, PortalInfo, PortalSpec, RenameSpec, Shared, TokenInfo, UninstallSpec,
    UpdateSpec, WebhookSpec,
};
pub use state::{App, AppKind, Farm, Plan, PortalLimits, Urls};

/// Errors of the emulator's API.
#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("conflict: {0}")]
    Conflict(String),
}

/// A running farm. Dropping it without [`Emulator::shutdown`] leaves the listeners
/// running until the runtime ends.
pub struct Emulator {
    shared: Arc<Shared>,
    urls: Urls,
    ca_pem: Option<String>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(addr: std::net::SocketAddr) -> Result<(TcpListener, u16), EmuError> {
    let l = TcpListener::bind(addr).await?;
    let port = l.local_addr()?.port();
    Ok((l, port))
}

impl Emulator {
    /// Binds the listeners (port 0 = any free port) and starts serving.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmuError> {
        // reqwest is built without a default crypto provider; deliveries to https
        // handlers need one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = Arc::new(config);
        let (http_l, http_port) = bind(cfg.listen).await?;
        let (oauth_l, oauth_port) = bind(cfg.oauth_listen).await?;
        let https = match cfg.https_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let ip = |a: std::net::SocketAddr| match a.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            ip => ip.to_string(),
        };
        let http = format!("http://{}:{http_port}", ip(cfg.listen));
        let urls = Urls {
            control: format!("{http}/_emu"),
            http,
            https: https
                .as_ref()
                .map(|(_, p)| format!("https://{}:{p}", ip(cfg.https_listen.expect("set")))),
            oauth: format!("http://{}:{oauth_port}", ip(cfg.oauth_listen)),
            http_port,
            https_port: https.as_ref().map(|(_, p)| *p),
            oauth_host: format!("{}:{oauth_port}", ip(cfg.oauth_listen)),
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(
            cfg.clone(),
            Farm::new(cfg.clone(), urls.clone()),
            tx,
        ));
        let client = reqwest::Client::builder()
            .no_proxy()
            .user_agent(cfg.delivery.user_agent.clone())
            .pool_max_idle_per_host(cfg.delivery.concurrency.max(1))
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| EmuError::Config(format!("delivery client: {e}")))?;
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(delivery::run_worker(
            shared.clone(),
            rx,
            client,
        )));
        let portal = server::portal_router(shared.clone());
        tasks.push(tokio::spawn(server::serve_http(
            http_l,
            portal.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(server::serve_http(
            oauth_l,
            server::oauth_router(shared.clone()),
            stop_rx.clone(),
        )));
        let mut ca_pem = None;
        if let Some((l, _)) = https {
            let ca = Arc::new(tls::Ca::generate()?);
            if let Some(dir) = &cfg.cert_dir {
                ca.write_to(dir)?;
            }
            ca_pem = Some(ca.pem.clone());
            let tls_cfg = Arc::new(tls::server_config(ca)?);
            tasks.push(tokio::spawn(server::serve_https(
                l,
                portal,
                tls_cfg,
                stop_rx.clone(),
            )));
        }
        Ok(Emulator {
            shared,
            urls,
            ca_pem,
            stop,
            tasks,
        })
    }

    /// `http://127.0.0.1:PORT` (portals and control API).
    pub fn http_url(&self) -> &str {
        &self.urls.http
    }

    /// `https://127.0.0.1:PORT` when HTTPS is on.
    pub fn https_url(&self) -> Option<&str> {
        self.urls.https.as_deref()
    }

    /// The OAuth server base: `{oauth}/oauth/token/`, `{oauth}/rest/app.info`.
    pub fn oauth_url(&self) -> &str {
        &self.urls.oauth
    }

    /// `{http}/_emu`.
    pub fn control_url(&self) -> &str {
        &self.urls.control
    }

    /// All base URLs.
    pub fn urls(&self) -> &Urls {
        &self.urls
    }

    /// The ready line the binary prints: `{"http":…,"https":…,"oauth":…,"control":…}`.
    pub fn ready_line(&self) -> String {
        serde_json::json!({
            "http": self.urls.http, "https": self.urls.https, "oauth": self.urls.oauth, "control": self.urls.control,
        })
        .to_string()
    }

    /// PEM of the local CA (HTTPS only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Direct access to the farm: `emu.state().with(|farm| …)` runs under the lock and
    /// dispatches any deliveries the closure produced.
    pub fn state(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The farm clock (freeze/advance to expire tokens or drain buckets).
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    pub fn create_app(&self, spec: AppSpec) -> Result<App, EmuError> {
        self.shared.with(|f| f.create_app(spec))
    }

    /// Registers the redirect URI of the app's full OAuth flow (`/oauth/authorize/`).
    pub fn set_redirect_uri(&self, client_id: &str, uri: &str) -> Result<App, EmuError> {
        self.shared.with(|f| f.set_redirect_uri(client_id, uri))
    }

    pub fn create_portal(&self, spec: PortalSpec) -> Result<PortalInfo, EmuError> {
        self.shared.with(|f| f.create_portal(spec))
    }

    pub fn install(&self, member_id: &str, spec: InstallSpec) -> Result<InstallInfo, EmuError> {
        self.shared.with(|f| f.install(member_id, spec))
    }

    pub fn install_finish(&self, member_id: &str, spec: InstallSpec) -> Result<(), EmuError> {
        self.shared.with(|f| f.install_finish(member_id, spec))
    }

    pub fn update(&self, member_id: &str, spec: UpdateSpec) -> Result<u32, EmuError> {
        self.shared.with(|f| f.update(member_id, spec))
    }

    pub fn uninstall(&self, member_id: &str, spec: UninstallSpec) -> Result<(), EmuError> {
        self.shared.with(|f| f.uninstall(member_id, spec))
    }

    pub fn reinstall(&self, member_id: &str, spec: InstallSpec) -> Result<InstallInfo, EmuError> {
        self.shared.with(|f| f.reinstall(member_id, spec))
    }

    pub fn tokens(&self, member_id: &str, spec: InstallSpec) -> Result<TokenInfo, EmuError> {
        self.shared.with(|f| f.tokens(member_id, spec))
    }

    pub fn auth_code(&self, member_id: &str, spec: InstallSpec) -> Result<String, EmuError> {
        self.shared.with(|f| f.auth_code(member_id, spec))
    }

    pub fn changes(&self, member_id: &str, spec: ChangeSpec) -> Result<ChangeInfo, EmuError> {
        self.shared.changes(member_id, spec)
    }

    pub fn confirm(&self, member_id: &str, spec: ConfirmSpec) -> Result<usize, EmuError> {
        self.shared.with(|f| f.confirm(member_id, spec))
    }

    pub fn rename(&self, member_id: &str, spec: RenameSpec) -> Result<PortalInfo, EmuError> {
        self.shared.with(|f| f.rename(member_id, spec))
    }

    pub fn create_webhook(&self, member_id: &str, spec: WebhookSpec) -> Result<Value, EmuError> {
        self.shared.with(|f| f.create_webhook(member_id, spec))
    }

    pub fn set_faults(&self, spec: FaultsSpec) -> Result<Value, EmuError> {
        self.shared.with(|f| f.set_faults(spec))
    }

    pub fn payment(&self, member_id: &str, spec: PaymentSpec) -> Result<(), EmuError> {
        self.shared.with(|f| f.payment(member_id, spec))
    }

    pub fn set_limits(&self, member_id: &str, spec: LimitsSpec) -> Result<PortalLimits, EmuError> {
        self.shared.with(|f| f.set_limits(member_id, spec))
    }

    pub fn portal_state(&self, member_id: &str) -> Result<Value, EmuError> {
        self.shared.portal_state(member_id)
    }

    pub fn deliveries(&self, member_id: &str) -> Result<Vec<DeliveryRecord>, EmuError> {
        self.shared.deliveries(member_id, 0)
    }

    /// Switches random delivery delay and reordering (`POST /_emu/delivery`).
    pub fn set_delivery(&self, spec: DeliverySpec) -> Value {
        self.shared.set_delivery(spec)
    }

    pub fn stats(&self) -> Value {
        self.shared.stats_json()
    }

    /// Stops the listeners and the delivery worker.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks;
        // The worker (first task) only ends when every sender is gone; abort it.
        if let Some(w) = tasks.first() {
            w.abort();
        }
        for t in tasks.drain(..) {
            let deadline = tokio::time::Duration::from_secs(2);
            let abort = t.abort_handle();
            if tokio::time::timeout(deadline, t).await.is_err() {
                abort.abort();
            }
        }
    }
}
