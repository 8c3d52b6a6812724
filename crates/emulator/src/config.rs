//! Farm-wide configuration: listeners, lifetimes, disputed HTTP statuses, limit and
//! delivery defaults. Loadable from a TOML file (`b24emu serve --config FILE`); every
//! field has a default, documented in `docs/emulator.md`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which lifecycle event(s) an app version update fires (reference §4.1: the module
/// source re-fires ONAPPINSTALL, the docs promise ONAPPUPDATE; cloud is unconfirmed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpdateEvent {
    /// Re-fire ONAPPINSTALL (and, for apps with an installer, reset INSTALLED=N).
    #[default]
    Install,
    /// Fire ONAPPUPDATE with VERSION/PREVIOUS_VERSION.
    Update,
    /// Both, ONAPPUPDATE first.
    Both,
}

/// Everything configurable about a farm. `Default` gives a farm on loopback port 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Plain HTTP listener: portals (path and Host routing) and the control API.
    pub listen: SocketAddr,
    /// HTTPS listener (same router), only when set.
    pub https_listen: Option<SocketAddr>,
    /// Where the local CA certificate (`ca.pem`) and key (`ca.key`) are written.
    /// Required for HTTPS to be useful to clients; a temp-less in-memory CA is used when
    /// absent (read it with `Emulator::ca_pem`).
    pub cert_dir: Option<PathBuf>,
    /// The OAuth server listener (stands in for oauth.bitrix.info).
    pub oauth_listen: SocketAddr,
    /// Seed for all randomness (tokens, ids, faults). None = from the OS.
    pub seed: Option<u64>,
    /// Access-token lifetime (`expires_in`), reference §7.4: 3600.
    pub access_token_lifetime_secs: u64,
    /// Refresh-token lifetime, reference §7.4: 180 days.
    pub refresh_token_lifetime_secs: u64,
    /// Authorization-code lifetime, reference §7.1: 30 s.
    pub auth_code_lifetime_secs: u64,
    /// Portal language (`LANGUAGE_ID` in lifecycle events, `LANG` in installer POSTs).
    pub language_id: String,
    /// HTTP statuses the reference marks as disputed.
    pub statuses: Statuses,
    /// Default limits for new portals (each portal can be re-sized via the control API).
    pub limits: LimitDefaults,
    /// Outgoing delivery (events, installer POSTs).
    pub delivery: DeliveryConfig,
    /// How long a request hit by a timeout fault hangs before answering 504.
    pub fault_timeout_ms: u64,
    /// Default `update_event` for apps registered without one.
    pub default_update_event: UpdateEvent,
    /// Whether reinstall/update issues a new `application_token` (reference §7.6:
    /// unconfirmed; the module source derives it, so it stays the same by default).
    pub rotate_application_token: bool,
    /// Whether version updates delete the app's event bindings ([D-EN] event-bind.md says
    /// so, the module source does not; reference §4.1). Default false.
    pub update_removes_bindings: bool,
    /// Send identical entity deliveries (same binding, user and data) once per "hit"
    /// (one REST call, batch or control call), as the portal's event buffer does (§2.6).
    pub dedup_within_hit: bool,
    /// Event-session TTL (§2.6 loop protection, module source `HANDLER_SESSION_TTL`):
    /// events fired by a REST call made with an event's token carry one less; a call
    /// made with a token of TTL 1 fires none, so event → handler → REST write chains
    /// stop after this many generations. 0 switches the protection off. Default 7
    /// (module source; cloud unconfirmed).
    pub event_session_ttl: u32,
    /// Offline-queue rows older than this (by TIMESTAMP_X, reserved or not) are
    /// purged (§5.5: `PROCESS_ID_LIFETIME` = 2,952,000 s, ~34 days). 0 = never.
    pub offline_row_lifetime_secs: u64,
}

/// Disputed statuses, reference §6.3 / §13. Defaults are the docs column.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Statuses {
    /// `insufficient_scope`: docs 403, module source 401.
    pub insufficient_scope: u16,
    /// `PORTAL_DELETED`: docs 500, module 403, PY-SDK 410.
    pub portal_deleted: u16,
    /// OAuth `invalid_client`: PHP-SDK 401, PY-SDK 400.
    pub oauth_invalid_client: u16,
    /// `PAYMENT_REQUIRED` (SDK: 401).
    pub payment_required: u16,
}

impl Default for Statuses {
    fn default() -> Self {
        Statuses {
            insufficient_scope: 403,
            portal_deleted: 500,
            oauth_invalid_client: 401,
            payment_required: 401,
        }
    }
}

/// Leaky-bucket sizes and the operating-time budget, reference §8.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitDefaults {
    /// Whether new portals enforce the request-rate bucket.
    pub rate_limit: bool,
    /// Whether new portals enforce the per-method operating-time budget.
    pub operating_limit: bool,
    /// Drain per second / burst for `standard` portals (2 / 50).
    pub standard_drain: f64,
    pub standard_burst: f64,
    /// Drain per second / burst for `enterprise` portals (5 / 250).
    pub enterprise_drain: f64,
    pub enterprise_burst: f64,
    /// Operating budget per (app, method) over the 10-minute window: 480 s (docs; the
    /// module source says 420).
    pub operating_budget_secs: f64,
    /// Simulated execution time charged per call, in ms, on top of the real one (0).
    pub default_cost_ms: f64,
}

impl Default for LimitDefaults {
    fn default() -> Self {
        LimitDefaults {
            rate_limit: true,
            operating_limit: true,
            standard_drain: 2.0,
            standard_burst: 50.0,
            enterprise_drain: 5.0,
            enterprise_burst: 250.0,
            operating_budget_secs: 480.0,
            default_cost_ms: 0.0,
        }
    }
}

/// The outgoing delivery worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Per-attempt timeout (the real queue's is undocumented, reference §13).
    pub timeout_ms: u64,
    /// Delivery records kept per portal (oldest dropped first).
    pub log_capacity: usize,
    /// Whether raw bodies are kept in delivery records.
    pub keep_bodies: bool,
    /// `User-Agent` of deliveries (unconfirmed, reference §2.1).
    pub user_agent: String,
    /// Each delivery is held back by a random delay in `[delay_min_ms, delay_max_ms]`
    /// before it is sent (§11 item 7; off when `delay_max_ms` is 0). Switchable at run
    /// time (`POST /_emu/delivery`); drawn from the seeded generator.
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
    /// Shuffle the deliveries of each hit (seeded) before they are sent.
    pub reorder: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            concurrency: 256,
            timeout_ms: 10_000,
            log_capacity: 1000,
            keep_bodies: true,
            user_agent: "Bitrix24 Webhook Engine".to_string(),
            delay_min_ms: 0,
            delay_max_ms: 0,
            reorder: false,
        }
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        let lo = |p| SocketAddr::from(([127, 0, 0, 1], p));
        EmulatorConfig {
            listen: lo(0),
            https_listen: None,
            cert_dir: None,
            oauth_listen: lo(0),
            seed: None,
            access_token_lifetime_secs: 3600,
            refresh_token_lifetime_secs: 180 * 86_400,
            auth_code_lifetime_secs: 30,
            language_id: "en".to_string(),
            statuses: Statuses::default(),
            limits: LimitDefaults::default(),
            delivery: DeliveryConfig::default(),
            fault_timeout_ms: 60_000,
            default_update_event: UpdateEvent::Install,
            rotate_application_token: false,
            update_removes_bindings: false,
            dedup_within_hit: true,
            event_session_ttl: 7,
            offline_row_lifetime_secs: 2_952_000,
        }
    }
}

impl EmulatorConfig {
    /// Parses a TOML configuration file's contents.
    pub fn from_toml(text: &str) -> Result<Self, crate::EmuError> {
        toml::from_str(text).map_err(|e| crate::EmuError::Config(e.to_string()))
    }
}
