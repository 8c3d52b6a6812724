//! The in-memory farm: apps, portals, installs, bindings, tokens, queues, stats.
//!
//! One `Mutex<Farm>` guards everything but the delivery log; every operation holds it
//! briefly (long control calls release it between chunks) and never across an
//! `.await`. Work that leaves the process (event deliveries, installer POSTs) is
//! collected in `Farm::pending` while the lock is held and handed to the delivery
//! worker after it is released; the worker records results in
//! `crate::delivery::DeliveryLog`, never here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{EmulatorConfig, UpdateEvent};
use crate::delivery::{AppContext, Job};

/// Base URLs of the running listeners.
#[derive(Debug, Clone, Serialize)]
pub struct Urls {
    /// `http://127.0.0.1:PORT`
    pub http: String,
    /// `https://127.0.0.1:PORT` when HTTPS is on.
    pub https: Option<String>,
    /// `http://127.0.0.1:PORT` of the OAuth server.
    pub oauth: String,
    /// `{http}/_emu`
    pub control: String,
    pub http_port: u16,
    pub https_port: Option<u16>,
    /// `127.0.0.1:PORT` of the OAuth server: the `domain` of token responses (§7.3).
    pub oauth_host: String,
}

/// Local (per-portal credentials, status `L`) or marketplace app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    #[default]
    Local,
    Market,
}

/// A registered application (what the vendor console or "local application" form holds).
#[derive(Debug, Clone, Serialize)]
pub struct App {
    pub id: u64,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub version: u32,
    pub install_url: String,
    /// Where the portal's `/oauth/authorize/` sends the user with a code (§7.1); empty:
    /// the code is shown on the page instead, as for apps registered without one.
    pub redirect_uri: String,
    /// Has an installer page (flow B) rather than an install callback (flow A).
    pub installer: bool,
    pub kind: AppKind,
    pub update_event: UpdateEvent,
}

/// Portal plan; sizes the leaky bucket (§8.1) and the license strings of `app.info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    #[default]
    Standard,
    Enterprise,
}

/// One app on one portal (`b_rest_app` row seen from that portal).
#[derive(Debug, Clone, Serialize)]
pub struct Install {
    pub client_id: String,
    pub active: bool,
    /// `INSTALLED`: false while an installer (flow B) has not called installFinish.
    pub installed: bool,
    /// `L`, `F`, `D`, `T`, `P`, `S`.
    pub status: String,
    pub version: u32,
    pub application_token: String,
    pub options: Map<String, Value>,
    pub payment_expired: bool,
    pub days: Option<i64>,
    /// Method confirmations keyed by (access token, method), reference §9.
    #[serde(skip)]
    pub confirmations: HashMap<(String, String), Confirmation>,
    /// Access token reused for entity-event deliveries per (user, event session)
    /// (issuing one per delivery would grow the token table without bound at bench
    /// rates; the session is part of the key because the token carries it, §2.6).
    #[serde(skip)]
    pub event_tokens: HashMap<(u64, Option<u32>), String>,
    /// What deliveries to this install share (see `Farm::app_context`).
    #[serde(skip)]
    pub(crate) context: Option<Arc<AppContext>>,
    /// User id of the admin who installed.
    pub installed_by: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirmation {
    Waiting,
    Confirmed,
    Denied,
}

/// An event binding (`b_rest_event` row). `id` is the `event_handler_id` of deliveries.
#[derive(Debug, Clone, Serialize)]
pub struct Binding {
    pub id: u64,
    pub client_id: String,
    pub event: String,
    pub handler: String,
    pub auth_type: u64,
    pub offline: bool,
    pub connector: String,
    /// ONOFFLINEEVENT `options[minTimeout]` in seconds (default 1, §4.6).
    pub min_timeout: Option<f64>,
    #[serde(skip)]
    pub last_notified: Option<f64>,
}

/// A placement binding.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub client_id: String,
    pub placement: String,
    pub handler: String,
    pub title: String,
    pub description: String,
    pub group_name: String,
    pub lang_all: Value,
    pub options: Value,
    pub user_id: u64,
}

/// An offline-queue row (§5.5).
#[derive(Debug, Clone, Serialize)]
pub struct OfflineRow {
    pub id: u64,
    pub timestamp_us: i64,
    pub event_name: String,
    pub event_data: Value,
    pub user_id: u64,
    pub message_id: String,
    pub client_id: String,
    pub connector: String,
    pub process_id: Option<String>,
    pub error: bool,
}

/// The offline queue of one portal, all apps.
#[derive(Debug, Default)]
pub struct OfflineQueue {
    pub rows: BTreeMap<u64, OfflineRow>,
    /// (client_id, connector, message_id) → id of the unreserved, non-error row, for the
    /// MESSAGE_ID upsert.
    pub unreserved: HashMap<(String, String, String), u64>,
    pub next_id: u64,
}

/// Incoming webhook (`/rest/{user_id}/{code}/{method}`).
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub user_id: u64,
    pub code: String,
    pub scopes: Vec<String>,
}

/// Per-portal limits state (§8), switchable and sizable via the control API.
#[derive(Debug, Clone, Serialize)]
pub struct PortalLimits {
    pub rate_enabled: bool,
    pub drain: f64,
    pub burst: f64,
    pub operating_enabled: bool,
    pub operating_budget_secs: f64,
    pub default_cost_ms: f64,
    pub cost_ms: HashMap<String, f64>,
    #[serde(skip)]
    pub level: f64,
    #[serde(skip)]
    pub last: f64,
    /// (actor, method) → ten one-minute buckets (minute index, seconds).
    #[serde(skip)]
    pub usage: HashMap<(String, String), VecDeque<(i64, f64)>>,
}

/// A portal.
#[derive(Debug)]
pub struct Portal {
    pub member_id: String,
    pub name: String,
    pub domain: String,
    /// Routed by Host (client_endpoint `…://{domain}/rest/`) rather than by path prefix.
    pub host_mode: bool,
    pub https: bool,
    pub plan: Plan,
    pub features: BTreeSet<String>,
    pub admins: BTreeSet<u64>,
    pub deleted: bool,
    pub installs: HashMap<String, Install>,
    pub bindings: Vec<Binding>,
    pub placements: Vec<Placement>,
    pub offline: OfflineQueue,
    pub deals: BTreeMap<u64, Map<String, Value>>,
    pub next_deal_id: u64,
    pub entity_counters: HashMap<String, u64>,
    pub webhooks: HashMap<String, Webhook>,
    pub limits: PortalLimits,
}

/// An access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub member_id: String,
    pub client_id: String,
    pub user_id: u64,
    pub expires: i64,
    /// Event-session TTL of a token issued for an event delivery (§2.6 loop
    /// protection); `None` for every other token.
    pub session: Option<u32>,
}

/// A refresh token (single use, §7.4).
#[derive(Debug, Clone)]
pub struct RefreshToken {
    pub member_id: String,
    pub client_id: String,
    pub user_id: u64,
    pub expires: i64,
}

/// Fault settings (§ issue 3 item 8). Rates are probabilities in [0, 1].
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FaultSpec {
    pub error_rate: f64,
    pub timeout_rate: f64,
    pub latency_ms: u64,
}

/// Farm counters (`GET /_emu/stats`).
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub requests: u64,
    pub requests_per_method: BTreeMap<String, u64>,
    pub errors_per_code: BTreeMap<String, u64>,
    pub query_limit_errors: u64,
    pub operation_limit_errors: u64,
    pub operating_secs: f64,
    /// Deliveries handed to the worker (events and installer POSTs). The ok/failed
    /// counts live in the delivery log.
    pub deliveries_queued: u64,
    pub faults_injected: u64,
    pub oauth_requests: u64,
    /// Hits whose events were not fired because their event session's TTL ran out.
    pub events_ttl_exceeded: u64,
    /// Offline rows deleted by the purge agent for their age (§5.5).
    pub offline_rows_purged: u64,
}

/// What belongs to one "hit" (one REST request, batch or control call): the
/// portal's event buffer de-duplicates within it and its event session decides the
/// TTL of the events it fires (§2.6).
#[derive(Debug, Default)]
pub struct Hit {
    /// ONOFFLINEEVENT bindings already notified (minTimeout=0).
    pub(crate) notified: HashSet<u64>,
    /// (binding, user, data as JSON) of entity deliveries already produced.
    pub(crate) seen: HashSet<(u64, u64, String)>,
    /// Event-session TTL of the token that made this hit's REST call.
    pub(crate) session: Option<u32>,
}

/// The whole farm.
pub struct Farm {
    pub cfg: Arc<EmulatorConfig>,
    pub urls: Urls,
    pub rng: StdRng,
    pub apps: HashMap<String, App>,
    pub next_app_id: u64,
    pub portals: HashMap<String, Portal>,
    pub by_name: HashMap<String, String>,
    pub by_host: HashMap<String, String>,
    pub moved_names: HashMap<String, String>,
    pub moved_hosts: HashMap<String, String>,
    pub tokens: HashMap<String, AccessToken>,
    pub refresh_tokens: HashMap<String, RefreshToken>,
    pub codes: HashMap<String, RefreshToken>,
    pub faults_global: FaultSpec,
    pub faults_portal: HashMap<String, FaultSpec>,
    pub stats: Stats,
    pub next_binding_id: u64,
    pub now_us: i64,
    /// Deliveries produced by the current operation.
    pub(crate) pending: Vec<Job>,
    /// The current hit.
    pub(crate) hit: Hit,
    /// Farm time of the last run of the offline purge agent.
    pub(crate) last_agent_us: Option<i64>,
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl Farm {
    pub fn new(cfg: Arc<EmulatorConfig>, urls: Urls) -> Self {
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => {
                let mut b = [0u8; 8];
                let _ = getrandom::fill(&mut b);
                StdRng::seed_from_u64(u64::from_le_bytes(b))
            }
        };
        Farm {
            cfg,
            urls,
            rng,
            apps: HashMap::new(),
            next_app_id: 1,
            portals: HashMap::new(),
            by_name: HashMap::new(),
            by_host: HashMap::new(),
            moved_names: HashMap::new(),
            moved_hosts: HashMap::new(),
            tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            codes: HashMap::new(),
            faults_global: FaultSpec::default(),
            faults_portal: HashMap::new(),
            stats: Stats::default(),
            next_binding_id: 1,
            now_us: 0,
            pending: Vec::new(),
            hit: Hit::default(),
            last_agent_us: None,
        }
    }

    /// Current time in whole seconds, as set at the start of the operation.
    pub fn now(&self) -> i64 {
        self.now_us.div_euclid(1_000_000)
    }

    pub fn now_f(&self) -> f64 {
        self.now_us as f64 / 1e6
    }

    /// `n` random bytes as lower-case hex (2n chars).
    pub fn hex(&mut self, n: usize) -> String {
        let mut b = vec![0u8; n];
        self.rng.fill(&mut b[..]);
        hex::encode(b)
    }

    /// `n` random alphanumerics (the `process_id` format of §5.6).
    pub fn alnum(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| ALNUM[self.rng.random_range(0..ALNUM.len())] as char)
            .collect()
    }

    /// Issues an access/refresh pair. Returns (access, refresh, expires).
    pub fn issue_pair(
        &mut self,
        member_id: &str,
        client_id: &str,
        user_id: u64,
    ) -> (String, String, i64) {
        let access = self.issue_access(member_id, client_id, user_id);
        let refresh = self.hex(35);
        let expires = self.now() + self.cfg.access_token_lifetime_secs as i64;
        self.refresh_tokens.insert(
            refresh.clone(),
            RefreshToken {
                member_id: member_id.to_string(),
                client_id: client_id.to_string(),
                user_id,
                expires: self.now() + self.cfg.refresh_token_lifetime_secs as i64,
            },
        );
        (access, refresh, expires)
    }

    /// Issues a 70-hex access token.
    pub fn issue_access(&mut self, member_id: &str, client_id: &str, user_id: u64) -> String {
        let access = self.hex(35);
        let expires = self.now() + self.cfg.access_token_lifetime_secs as i64;
        self.tokens.insert(
            access.clone(),
            AccessToken {
                member_id: member_id.to_string(),
                client_id: client_id.to_string(),
                user_id,
                expires,
                session: None,
            },
        );
        access
    }

    /// The portal's periodic agent, run at the start of a hit and at most once a
    /// minute of farm time: offline rows whose TIMESTAMP_X is older than
    /// `offline_row_lifetime_secs` are deleted, reserved or not (§5.5, §12 item 9).
    pub(crate) fn run_agents(&mut self) {
        let now = self.now_us;
        if self
            .last_agent_us
            .is_some_and(|t| now >= t && now - t < 60_000_000)
        {
            return;
        }
        self.last_agent_us = Some(now);
        let life = self.cfg.offline_row_lifetime_secs;
        if life == 0 {
            return;
        }
        let cutoff = now.saturating_sub((life as i64).saturating_mul(1_000_000));
        let mut purged = 0;
        for p in self.portals.values_mut() {
            let q = &mut p.offline;
            let before = q.rows.len();
            q.rows.retain(|_, r| r.timestamp_us >= cutoff);
            if q.rows.len() != before {
                purged += before - q.rows.len();
                let rows = &q.rows;
                q.unreserved.retain(|_, id| rows.contains_key(id));
            }
        }
        self.stats.offline_rows_purged += purged as u64;
    }

    /// Revokes every token of (portal, app): uninstall, §7.7.
    pub fn revoke(&mut self, member_id: &str, client_id: &str) {
        self.tokens
            .retain(|_, t| !(t.member_id == member_id && t.client_id == client_id));
        self.refresh_tokens
            .retain(|_, t| !(t.member_id == member_id && t.client_id == client_id));
        self.codes
            .retain(|_, t| !(t.member_id == member_id && t.client_id == client_id));
        if let Some(p) = self.portals.get_mut(member_id)
            && let Some(i) = p.installs.get_mut(client_id)
        {
            i.event_tokens.clear();
            i.confirmations.clear();
        }
    }

    /// `client_endpoint` of a portal (trailing slash included).
    pub fn client_endpoint(&self, p: &Portal) -> String {
        let (scheme, base) = self.scheme_base(p);
        if p.host_mode {
            format!("{scheme}://{}/rest/", p.domain)
        } else {
            format!("{base}/p/{}/rest/", p.name)
        }
    }

    fn scheme_base(&self, p: &Portal) -> (&'static str, &str) {
        match (&self.urls.https, p.https) {
            (Some(h), true) => ("https", h.as_str()),
            _ => ("http", self.urls.http.as_str()),
        }
    }

    /// Portal base URL (`client_endpoint` minus `rest/`).
    pub fn portal_base(&self, p: &Portal) -> String {
        let ce = self.client_endpoint(p);
        ce.trim_end_matches("rest/")
            .trim_end_matches('/')
            .to_string()
    }

    /// `server_endpoint` = `{oauth}/rest/` in every payload.
    pub fn server_endpoint(&self) -> String {
        format!("{}/rest/", self.urls.oauth)
    }

    /// The default domain of a path-mode portal: `{name}.localhost:{port}`.
    pub fn default_domain(&self, name: &str, https: bool) -> String {
        let port = match (https, self.urls.https_port) {
            (true, Some(p)) => p,
            _ => self.urls.http_port,
        };
        format!("{name}.localhost:{port}")
    }
}
