//! Farm operations: what the control API does, callable directly from Rust tests
//! through [`crate::Emulator`]. Each takes the farm lock once, except `changes`,
//! which releases it between chunks of its entities.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::EmuError;
use crate::clock::Clock;
use crate::codec;
use crate::config::{EmulatorConfig, UpdateEvent};
use crate::delivery::{Chaos, DeliveryLog, DeliveryRecord, DeliverySpec, Job};
use crate::events::Initiator;
use crate::state::{
    App, AppKind, Binding, Confirmation, Farm, FaultSpec, Hit, Install, OfflineQueue, Plan, Portal,
    PortalLimits, RefreshToken, Webhook,
};

/// Entities a `changes` call creates and fires per hold of the farm lock: a bulk
/// change of thousands must not keep a shared runtime's threads waiting on the lock.
const CHANGE_CHUNK: usize = 64;

/// State shared by every listener and worker.
pub struct Shared {
    pub cfg: Arc<EmulatorConfig>,
    pub clock: Clock,
    pub farm: Mutex<Farm>,
    pub(crate) jobs: UnboundedSender<Vec<Job>>,
    pub(crate) log: DeliveryLog,
    pub(crate) chaos: Chaos,
}

impl Shared {
    pub(crate) fn new(
        cfg: Arc<EmulatorConfig>,
        farm: Farm,
        jobs: UnboundedSender<Vec<Job>>,
    ) -> Self {
        Shared {
            log: DeliveryLog::new(cfg.delivery.log_capacity),
            chaos: Chaos::new(&cfg.delivery),
            clock: Clock::default(),
            farm: Mutex::new(farm),
            jobs,
            cfg,
        }
    }

    /// Runs `f` under the farm lock as one hit, with the clock read once, then hands
    /// the deliveries it produced to the worker (after the lock is released).
    pub fn with<T>(&self, f: impl FnOnce(&mut Farm) -> T) -> T {
        self.with_hit(&mut Hit::default(), f)
    }

    /// Like [`Shared::with`], continuing `hit` (one hit spread over several holds of
    /// the lock).
    pub(crate) fn with_hit<T>(&self, hit: &mut Hit, f: impl FnOnce(&mut Farm) -> T) -> T {
        let mut g = self.farm.lock().unwrap_or_else(|e| e.into_inner());
        g.now_us = self.clock.now_us();
        std::mem::swap(&mut g.hit, hit);
        g.run_agents();
        let out = f(&mut g);
        std::mem::swap(&mut g.hit, hit);
        let jobs = std::mem::take(&mut g.pending);
        drop(g);
        if !jobs.is_empty() {
            let _ = self.jobs.send(jobs);
        }
        out
    }

    /// Entity changes ([`Farm::changes`]) as one hit, `CHANGE_CHUNK` entities per hold
    /// of the lock, so deliveries start while the rest is still being made.
    pub fn changes(&self, member_id: &str, spec: ChangeSpec) -> Result<ChangeInfo, EmuError> {
        let mut hit = Hit::default();
        let mut plan = self.with_hit(&mut hit, |f| f.change_plan(member_id, spec))?;
        while !plan.is_done() {
            self.with_hit(&mut hit, |f| {
                f.change_step(member_id, &mut plan, CHANGE_CHUNK)
            });
        }
        Ok(plan.info())
    }

    /// Farm counters with the delivery log's.
    pub fn stats_json(&self) -> Value {
        let mut v = self.with(|f| f.stats_json());
        let (ok, failed) = self.log.totals();
        v["deliveries_ok"] = json!(ok);
        v["deliveries_failed"] = json!(failed);
        v
    }

    /// The state of one portal, with its delivery count.
    pub fn portal_state(&self, member_id: &str) -> Result<Value, EmuError> {
        let mut v = self.with(|f| f.portal_state(member_id))?;
        v["deliveries"] = json!(self.log.count(member_id));
        Ok(v)
    }

    /// Delivery records of a portal with id > `since`.
    pub fn deliveries(&self, member_id: &str, since: u64) -> Result<Vec<DeliveryRecord>, EmuError> {
        if !self.with(|f| f.portals.contains_key(member_id)) {
            return Err(not_found("portal", member_id));
        }
        Ok(self.log.since(member_id, since))
    }

    /// Switches delivery delay and reordering; answers the settings in force.
    pub fn set_delivery(&self, spec: DeliverySpec) -> Value {
        self.chaos.set(&spec);
        self.chaos.to_json()
    }

    /// The delivery delay and reordering settings in force.
    pub fn delivery_settings(&self) -> Value {
        self.chaos.to_json()
    }
}

/// A `changes` call in progress: what it does, and how far it got.
pub(crate) struct ChangePlan {
    entity: String,
    action: String,
    event: String,
    user: u64,
    initiator: Initiator,
    fields: Map<String, Value>,
    /// `add`: entities still to create.
    adds_left: u64,
    /// `update`/`delete`: ids still to change.
    targets: VecDeque<u64>,
    done: Vec<u64>,
}

impl ChangePlan {
    fn is_done(&self) -> bool {
        self.adds_left == 0 && self.targets.is_empty()
    }

    fn info(self) -> ChangeInfo {
        ChangeInfo {
            event: self.event,
            ids: self.done,
        }
    }
}

fn scopes_de<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<S>::deserialize(d)? {
        None => Vec::new(),
        Some(S::One(s)) => s
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Some(S::Many(v)) => v,
    })
}

/// `POST /_emu/apps`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AppSpec {
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// List or comma-separated string. Default `crm`.
    #[serde(deserialize_with = "scopes_de")]
    pub scopes: Vec<String>,
    pub version: Option<u32>,
    pub install_url: String,
    pub installer: bool,
    pub kind: AppKind,
    pub update_event: Option<UpdateEvent>,
}

/// `POST /_emu/portals`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PortalSpec {
    pub name: Option<String>,
    pub plan: Plan,
    pub features: Vec<String>,
    /// host[:port]; when given the portal is routed by `Host` and its client_endpoint
    /// is `{scheme}://{domain}/rest/`.
    pub domain: Option<String>,
    /// Hand out https endpoints (needs the HTTPS listener).
    pub https: bool,
    /// Admin user ids (default `[1]`).
    pub admins: Option<Vec<u64>>,
    pub member_id: Option<String>,
}

/// What a portal creation or rename answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortalInfo {
    pub member_id: String,
    pub name: String,
    pub domain: String,
    pub client_endpoint: String,
    pub server_endpoint: String,
    /// `client_endpoint` minus `rest/`: where installer-style URLs and webhooks live.
    pub base_url: String,
}

/// `install`, `install-finish`, `reinstall`, `tokens`, `codes` bodies.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct InstallSpec {
    pub client_id: String,
    /// Installing/acting user (default: the first admin).
    pub user_id: Option<u64>,
    /// App status letter for market apps (`F` default; local apps are always `L`).
    pub status: Option<String>,
}

/// Tokens as a user gets them when opening the app (and what install returns).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub access_token: String,
    pub refresh_token: String,
    pub expires: i64,
    pub expires_in: i64,
    pub user_id: u64,
    pub member_id: String,
    pub client_id: String,
    pub domain: String,
    pub client_endpoint: String,
    pub server_endpoint: String,
    pub application_token: String,
    pub status: String,
    pub scope: String,
}

/// `POST …/install` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallInfo {
    /// `A` (install callback: ONAPPINSTALL) or `B` (installer page POST).
    pub flow: String,
    pub installed: bool,
    pub tokens: TokenInfo,
}

/// `POST …/update`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct UpdateSpec {
    pub client_id: String,
    /// New version; default current + 1.
    pub version: Option<u32>,
    /// Override the app's `update_event` for this update.
    pub update_event: Option<UpdateEvent>,
}

/// `POST …/uninstall`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct UninstallSpec {
    pub client_id: String,
    /// `data[CLEAN]`: also delete the app's options (local apps always lose them, §3.8).
    pub clean: bool,
}

/// `POST …/changes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ChangeSpec {
    /// `deal`, `lead`, `contact`, `company`, `task`.
    pub entity: String,
    /// `add`, `update`, `delete`.
    pub action: String,
    pub count: u64,
    /// 0 = system change (agent/robot): deliveries carry no tokens.
    pub user_id: u64,
    /// For update/delete: this id (default: the `count` newest).
    pub id: Option<u64>,
    /// Treat the change as made by this app (offline self-suppression).
    pub client_id: Option<String>,
    pub auth_connector: String,
    /// Fields for added/updated deals.
    pub fields: Map<String, Value>,
}

impl Default for ChangeSpec {
    fn default() -> Self {
        ChangeSpec {
            entity: "deal".into(),
            action: "add".into(),
            count: 1,
            user_id: 0,
            id: None,
            client_id: None,
            auth_connector: String::new(),
            fields: Map::new(),
        }
    }
}

/// `POST …/changes` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeInfo {
    pub event: String,
    pub ids: Vec<u64>,
}

/// `POST …/confirm`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConfirmSpec {
    pub client_id: String,
    pub method: String,
    pub confirmed: bool,
}

/// `POST …/rename`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RenameSpec {
    pub domain: Option<String>,
    /// New path prefix (path-mode portals; default: first label of `domain`).
    pub name: Option<String>,
}

/// `POST …/webhooks`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WebhookSpec {
    pub user_id: Option<u64>,
    #[serde(deserialize_with = "scopes_de")]
    pub scopes: Vec<String>,
}

/// `POST /_emu/faults`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FaultsSpec {
    pub member_id: Option<String>,
    pub error_rate: Option<f64>,
    pub timeout_rate: Option<f64>,
    pub latency_ms: Option<u64>,
    /// One-shot: delete the online bindings ("handlers lost").
    pub drop_bindings: bool,
    /// One-shot: every access token expires now.
    pub expire_tokens: bool,
}

/// `POST …/payment`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PaymentSpec {
    pub client_id: String,
    pub status: Option<String>,
    pub payment_expired: Option<bool>,
    pub days: Option<i64>,
}

/// `POST …/limits`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LimitsSpec {
    pub rate_limit: Option<bool>,
    pub drain: Option<f64>,
    pub burst: Option<f64>,
    pub operating_limit: Option<bool>,
    pub operating_budget_secs: Option<f64>,
    pub default_cost_ms: Option<f64>,
    /// Simulated execution time per method (lower-case name → ms).
    pub cost_ms: HashMap<String, f64>,
    /// Empty the bucket and the operating windows.
    pub reset: bool,
}

/// `POST /_emu/clock`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ClockSpec {
    pub advance_secs: Option<f64>,
    pub freeze: Option<bool>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn not_found(what: &str, id: &str) -> EmuError {
    EmuError::NotFound(format!("{what} {id}"))
}

impl Farm {
    pub(crate) fn portal_info(&self, p: &Portal) -> PortalInfo {
        PortalInfo {
            member_id: p.member_id.clone(),
            name: p.name.clone(),
            domain: p.domain.clone(),
            client_endpoint: self.client_endpoint(p),
            server_endpoint: self.server_endpoint(),
            base_url: self.portal_base(p),
        }
    }

    pub fn create_app(&mut self, spec: AppSpec) -> Result<App, EmuError> {
        let id = self.next_app_id;
        let prefix = match spec.kind {
            AppKind::Local => "local",
            AppKind::Market => "app",
        };
        let client_id = match spec.client_id {
            Some(c) if !c.is_empty() => c,
            _ => format!(
                "{prefix}.{}.{:08}",
                self.hex(7),
                self.rng_u32() % 100_000_000
            ),
        };
        if self.apps.contains_key(&client_id) {
            return Err(EmuError::Conflict(format!("app {client_id} exists")));
        }
        let client_secret = spec.client_secret.unwrap_or_else(|| self.alnum(50));
        let scopes = if spec.scopes.is_empty() {
            vec!["crm".to_string()]
        } else {
            spec.scopes
        };
        let app = App {
            id,
            client_id: client_id.clone(),
            client_secret,
            scopes,
            version: spec.version.unwrap_or(1),
            install_url: spec.install_url,
            redirect_uri: String::new(),
            installer: spec.installer,
            kind: spec.kind,
            update_event: spec.update_event.unwrap_or(self.cfg.default_update_event),
        };
        self.next_app_id += 1;
        self.apps.insert(client_id, app.clone());
        Ok(app)
    }

    /// Registers the redirect URI of an app's full OAuth flow (`/oauth/authorize/`);
    /// empty = none (the code is shown on the page).
    pub fn set_redirect_uri(&mut self, client_id: &str, uri: &str) -> Result<App, EmuError> {
        let app = self
            .apps
            .get_mut(client_id)
            .ok_or_else(|| not_found("app", client_id))?;
        app.redirect_uri = uri.to_string();
        Ok(app.clone())
    }

    fn rng_u32(&mut self) -> u32 {
        use rand::Rng;
        self.rng.random()
    }

    pub fn create_portal(&mut self, spec: PortalSpec) -> Result<PortalInfo, EmuError> {
        let name = match spec.name {
            Some(n) => n.to_ascii_lowercase(),
            None => format!("portal{}", self.portals.len() + 1),
        };
        if !valid_name(&name) {
            return Err(EmuError::Invalid(format!(
                "portal name {name:?}: use [a-z0-9-]"
            )));
        }
        if self.by_name.contains_key(&name) {
            return Err(EmuError::Conflict(format!("portal {name} exists")));
        }
        let member_id = match spec.member_id {
            Some(m) => m,
            None => self.hex(16),
        };
        if self.portals.contains_key(&member_id) {
            return Err(EmuError::Conflict(format!("member_id {member_id} exists")));
        }
        let https = spec.https && self.urls.https.is_some();
        let (domain, host_mode) = match spec.domain {
            Some(d) => (d.to_ascii_lowercase(), true),
            None => (self.default_domain(&name, https), false),
        };
        if self.by_host.contains_key(&domain) {
            return Err(EmuError::Conflict(format!("domain {domain} in use")));
        }
        let d = &self.cfg.limits;
        let (drain, burst) = match spec.plan {
            Plan::Standard => (d.standard_drain, d.standard_burst),
            Plan::Enterprise => (d.enterprise_drain, d.enterprise_burst),
        };
        let limits = PortalLimits {
            rate_enabled: d.rate_limit,
            drain,
            burst,
            operating_enabled: d.operating_limit,
            operating_budget_secs: d.operating_budget_secs,
            default_cost_ms: d.default_cost_ms,
            cost_ms: HashMap::new(),
            level: 0.0,
            last: self.now_f(),
            usage: HashMap::new(),
        };
        let portal = Portal {
            member_id: member_id.clone(),
            name: name.clone(),
            domain: domain.clone(),
            host_mode,
            https,
            plan: spec.plan,
            features: spec.features.into_iter().collect(),
            admins: spec
                .admins
                .unwrap_or_else(|| vec![1])
                .into_iter()
                .collect::<BTreeSet<_>>(),
            deleted: false,
            installs: HashMap::new(),
            bindings: Vec::new(),
            placements: Vec::new(),
            offline: OfflineQueue::default(),
            deals: Default::default(),
            next_deal_id: 0,
            entity_counters: HashMap::new(),
            webhooks: HashMap::new(),
            limits,
        };
        let info = self.portal_info(&portal);
        self.by_name.insert(name, member_id.clone());
        self.by_host.insert(domain, member_id.clone());
        self.portals.insert(member_id, portal);
        Ok(info)
    }

    fn first_admin(&self, member_id: &str) -> u64 {
        self.portals
            .get(member_id)
            .and_then(|p| p.admins.iter().next().copied())
            .unwrap_or(1)
    }

    pub(crate) fn token_info(
        &mut self,
        member_id: &str,
        client_id: &str,
        user_id: u64,
    ) -> Result<TokenInfo, EmuError> {
        let (access, refresh, expires) = self.issue_pair(member_id, client_id, user_id);
        let p = self
            .portals
            .get(member_id)
            .ok_or_else(|| not_found("portal", member_id))?;
        let i = p
            .installs
            .get(client_id)
            .ok_or_else(|| not_found("install", client_id))?;
        Ok(TokenInfo {
            access_token: access,
            refresh_token: refresh,
            expires,
            expires_in: self.cfg.access_token_lifetime_secs as i64,
            user_id,
            member_id: member_id.to_string(),
            client_id: client_id.to_string(),
            domain: p.domain.clone(),
            client_endpoint: self.client_endpoint(p),
            server_endpoint: self.server_endpoint(),
            application_token: i.application_token.clone(),
            status: i.status.clone(),
            scope: self
                .apps
                .get(client_id)
                .map(|a| a.scopes.join(","))
                .unwrap_or_default(),
        })
    }

    fn check_portal_app(&self, member_id: &str, client_id: &str) -> Result<(), EmuError> {
        if !self.portals.contains_key(member_id) {
            return Err(not_found("portal", member_id));
        }
        if !self.apps.contains_key(client_id) {
            return Err(not_found("app", client_id));
        }
        Ok(())
    }

    fn active_install(&self, member_id: &str, client_id: &str) -> Result<&Install, EmuError> {
        self.check_portal_app(member_id, client_id)?;
        self.portals[member_id]
            .installs
            .get(client_id)
            .filter(|i| i.active)
            .ok_or_else(|| {
                EmuError::Conflict(format!("app {client_id} is not installed on {member_id}"))
            })
    }

    fn install_mut(&mut self, member_id: &str, client_id: &str) -> &mut Install {
        self.portals
            .get_mut(member_id)
            .and_then(|p| p.installs.get_mut(client_id))
            .expect("checked install")
    }

    fn lang(&self) -> String {
        self.cfg.language_id.clone()
    }

    /// Installs an app: flow A (ONAPPINSTALL to the install URL) or, for apps with an
    /// installer page, flow B (the §3.5 POST; events wait for install-finish).
    pub fn install(&mut self, member_id: &str, spec: InstallSpec) -> Result<InstallInfo, EmuError> {
        self.check_portal_app(member_id, &spec.client_id)?;
        let app = self.apps[&spec.client_id].clone();
        let user = spec.user_id.unwrap_or_else(|| self.first_admin(member_id));
        let existing = self.portals[member_id]
            .installs
            .get(&app.client_id)
            .cloned();
        if existing.as_ref().is_some_and(|i| i.active) {
            return Err(EmuError::Conflict(format!(
                "app {} already installed; use update or reinstall",
                app.client_id
            )));
        }
        let app_token = match &existing {
            Some(i) if !self.cfg.rotate_application_token => i.application_token.clone(),
            _ => self.hex(16),
        };
        let status = match app.kind {
            AppKind::Local => "L".to_string(),
            AppKind::Market => spec.status.clone().unwrap_or_else(|| "F".to_string()),
        };
        let install = Install {
            client_id: app.client_id.clone(),
            active: true,
            installed: !app.installer,
            status,
            version: app.version,
            application_token: app_token,
            options: existing.map(|i| i.options).unwrap_or_default(),
            payment_expired: false,
            days: None,
            confirmations: HashMap::new(),
            event_tokens: HashMap::new(),
            context: None,
            installed_by: user,
        };
        self.portals
            .get_mut(member_id)
            .expect("checked")
            .installs
            .insert(app.client_id.clone(), install);
        let tokens = self.token_info(member_id, &app.client_id, user)?;
        if app.installer {
            self.installer_post(member_id, &app.client_id, &tokens);
        } else {
            // Flow A: the install URL is registered as an ONAPPINSTALL handler (§3.2).
            if !app.install_url.is_empty() {
                self.add_binding(
                    member_id,
                    &app.client_id,
                    "ONAPPINSTALL",
                    &app.install_url,
                    0,
                    false,
                    "",
                    None,
                );
            }
            self.fire_install_event(member_id, &app.client_id, user);
        }
        Ok(InstallInfo {
            flow: if app.installer { "B" } else { "A" }.to_string(),
            installed: !app.installer,
            tokens,
        })
    }

    fn fire_install_event(&mut self, member_id: &str, client_id: &str, user: u64) {
        let version = self.portals[member_id].installs[client_id].version;
        let data = json!({"VERSION": version.to_string(), "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": self.lang()});
        self.fire_app(member_id, client_id, "ONAPPINSTALL", data, user, true);
    }

    /// Adds a binding unless an identical one exists; returns false on duplicate.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_binding(
        &mut self,
        member_id: &str,
        client_id: &str,
        event: &str,
        handler: &str,
        auth_type: u64,
        offline: bool,
        connector: &str,
        min_timeout: Option<f64>,
    ) -> bool {
        let id = self.next_binding_id;
        let Some(p) = self.portals.get_mut(member_id) else {
            return false;
        };
        if p.bindings.iter().any(|b| {
            b.client_id == client_id
                && b.event == event
                && b.handler == handler
                && b.auth_type == auth_type
                && b.offline == offline
                && b.connector == connector
        }) {
            return false;
        }
        p.bindings.push(Binding {
            id,
            client_id: client_id.to_string(),
            event: event.to_string(),
            handler: handler.to_string(),
            auth_type,
            offline,
            connector: connector.to_string(),
            min_timeout,
            last_notified: None,
        });
        self.next_binding_id += 1;
        true
    }

    /// The installer-page POST of §3.5 (flow B), as the portal's iframe form submits it.
    fn installer_post(&mut self, member_id: &str, client_id: &str, t: &TokenInfo) {
        let install_url = self.apps[client_id].install_url.clone();
        if install_url.is_empty() {
            return;
        }
        let app_sid = self.hex(16);
        let p = &self.portals[member_id];
        let protocol = if self.client_endpoint(p).starts_with("https") {
            "1"
        } else {
            "0"
        };
        let sep = if install_url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{sep}DOMAIN={}&PROTOCOL={protocol}&LANG={}&APP_SID={app_sid}",
            install_url,
            codec::urlencode(&t.domain),
            codec::urlencode(&self.cfg.language_id),
        );
        let mut body = Map::new();
        body.insert("AUTH_ID".into(), json!(t.access_token));
        body.insert("AUTH_EXPIRES".into(), json!(t.expires_in.to_string()));
        body.insert("REFRESH_ID".into(), json!(t.refresh_token));
        body.insert("SERVER_ENDPOINT".into(), json!(t.server_endpoint));
        body.insert("APPLICATION_TOKEN".into(), json!(t.application_token));
        body.insert("APPLICATION_SCOPE".into(), json!(t.scope));
        body.insert("member_id".into(), json!(t.member_id));
        body.insert("status".into(), json!(t.status));
        body.insert("PLACEMENT".into(), json!("DEFAULT"));
        let ts = self.now();
        self.stats.deliveries_queued += 1;
        let app = self.app_context(member_id, client_id);
        self.pending.push(Job::installer(app, url, body, ts));
    }

    /// installFinish (flow B): INSTALLED=Y, then ONAPPINSTALL to the handlers bound so far.
    pub fn install_finish(&mut self, member_id: &str, spec: InstallSpec) -> Result<(), EmuError> {
        let i = self.active_install(member_id, &spec.client_id)?;
        if i.installed {
            return Err(EmuError::Conflict("installation already finished".into()));
        }
        let user = spec.user_id.unwrap_or(i.installed_by);
        self.install_mut(member_id, &spec.client_id).installed = true;
        self.fire_install_event(member_id, &spec.client_id, user);
        Ok(())
    }

    /// Version update: ONAPPUPDATE and/or ONAPPINSTALL per the app's `update_event`.
    pub fn update(&mut self, member_id: &str, spec: UpdateSpec) -> Result<u32, EmuError> {
        let i = self.active_install(member_id, &spec.client_id)?;
        let prev = i.version;
        let user = i.installed_by;
        let new = spec.version.unwrap_or(prev + 1);
        let rotate = self.cfg.rotate_application_token;
        let token = if rotate { Some(self.hex(16)) } else { None };
        let client = spec.client_id.clone();
        let app = self.apps.get_mut(&client).expect("checked");
        app.version = app.version.max(new);
        let mode = spec.update_event.unwrap_or(app.update_event);
        let installer = app.installer;
        let install_url = app.install_url.clone();
        {
            let inst = self.install_mut(member_id, &client);
            inst.version = new;
            if let Some(t) = token {
                inst.application_token = t;
            }
        }
        if self.cfg.update_removes_bindings
            && let Some(p) = self.portals.get_mut(member_id)
        {
            p.bindings.retain(|b| b.client_id != client);
        }
        if matches!(mode, UpdateEvent::Update | UpdateEvent::Both) {
            let data = json!({"VERSION": new.to_string(), "PREVIOUS_VERSION": prev.to_string(), "LANGUAGE_ID": self.lang()});
            self.fire_app(member_id, &client, "ONAPPUPDATE", data, user, true);
        }
        if matches!(mode, UpdateEvent::Install | UpdateEvent::Both) {
            if installer {
                // §4.1: for apps with an installer the wizard runs again.
                self.install_mut(member_id, &client).installed = false;
                let t = self.token_info(member_id, &client, user)?;
                self.installer_post(member_id, &client, &t);
            } else {
                if !install_url.is_empty() {
                    self.add_binding(
                        member_id,
                        &client,
                        "ONAPPINSTALL",
                        &install_url,
                        0,
                        false,
                        "",
                        None,
                    );
                }
                self.fire_install_event(member_id, &client, user);
            }
        }
        Ok(new)
    }

    /// Uninstall in the §4.2 order: ONAPPUNINSTALL (no tokens), then bindings,
    /// placements and offline rows deleted, tokens revoked; the row is kept.
    pub fn uninstall(&mut self, member_id: &str, spec: UninstallSpec) -> Result<(), EmuError> {
        self.active_install(member_id, &spec.client_id)?;
        let client = spec.client_id.clone();
        let data = json!({"LANGUAGE_ID": self.lang(), "CLEAN": if spec.clean { "1" } else { "0" }});
        self.fire_app(member_id, &client, "ONAPPUNINSTALL", data, 0, false);
        let local = self.apps[&client].kind == AppKind::Local;
        let p = self.portals.get_mut(member_id).expect("checked");
        p.bindings.retain(|b| b.client_id != client);
        p.placements.retain(|b| b.client_id != client);
        p.offline.rows.retain(|_, r| r.client_id != client);
        p.offline.unreserved.retain(|k, _| k.0 != client);
        let i = p.installs.get_mut(&client).expect("checked");
        if spec.clean || local {
            i.options.clear();
        }
        i.active = false;
        i.installed = false;
        self.revoke(member_id, &client);
        Ok(())
    }

    /// Reinstall: uninstall (CLEAN=0) when still installed, then install.
    pub fn reinstall(
        &mut self,
        member_id: &str,
        spec: InstallSpec,
    ) -> Result<InstallInfo, EmuError> {
        self.check_portal_app(member_id, &spec.client_id)?;
        if self.portals[member_id]
            .installs
            .get(&spec.client_id)
            .is_some_and(|i| i.active)
        {
            self.uninstall(
                member_id,
                UninstallSpec {
                    client_id: spec.client_id.clone(),
                    clean: false,
                },
            )?;
        }
        self.install(member_id, spec)
    }

    /// A fresh token pair for a user, as when the user opens the app.
    pub fn tokens(&mut self, member_id: &str, spec: InstallSpec) -> Result<TokenInfo, EmuError> {
        let i = self.active_install(member_id, &spec.client_id)?;
        let user = spec.user_id.unwrap_or(i.installed_by);
        self.token_info(member_id, &spec.client_id, user)
    }

    /// An authorization code for the `authorization_code` grant (lives 30 s, §7.1).
    pub fn auth_code(&mut self, member_id: &str, spec: InstallSpec) -> Result<String, EmuError> {
        let i = self.active_install(member_id, &spec.client_id)?;
        let user = spec.user_id.unwrap_or(i.installed_by);
        let code = self.hex(35);
        let expires = self.now() + self.cfg.auth_code_lifetime_secs as i64;
        self.codes.insert(
            code.clone(),
            RefreshToken {
                member_id: member_id.into(),
                client_id: spec.client_id,
                user_id: user,
                expires,
            },
        );
        Ok(code)
    }

    /// Entity changes made outside REST (by a user in the UI, or by the system), all
    /// under this one hold of the lock ([`Shared::changes`] releases it in between).
    pub fn changes(&mut self, member_id: &str, spec: ChangeSpec) -> Result<ChangeInfo, EmuError> {
        let mut plan = self.change_plan(member_id, spec)?;
        self.change_step(member_id, &mut plan, usize::MAX);
        Ok(plan.info())
    }

    /// Checks a change and picks the ids of an update or delete (the `count` newest
    /// unless `id` is given).
    pub(crate) fn change_plan(
        &mut self,
        member_id: &str,
        spec: ChangeSpec,
    ) -> Result<ChangePlan, EmuError> {
        let Some(p) = self.portals.get(member_id) else {
            return Err(not_found("portal", member_id));
        };
        let ent = spec.entity.to_ascii_lowercase();
        let act = spec.action.to_ascii_lowercase();
        let prefix = match ent.as_str() {
            "deal" | "lead" | "contact" | "company" => format!("ONCRM{}", ent.to_ascii_uppercase()),
            "task" => "ONTASK".to_string(),
            _ => {
                return Err(EmuError::Invalid(format!(
                    "entity {ent:?}: deal, lead, contact, company, task"
                )));
            }
        };
        let suffix = match act.as_str() {
            "add" => "ADD",
            "update" => "UPDATE",
            "delete" => "DELETE",
            _ => {
                return Err(EmuError::Invalid(format!(
                    "action {act:?}: add, update, delete"
                )));
            }
        };
        let count = spec.count.max(1);
        let targets = if act == "add" {
            VecDeque::new()
        } else {
            match spec.id {
                Some(id) => VecDeque::from([id]),
                None if ent == "deal" => {
                    p.deals.keys().rev().take(count as usize).copied().collect()
                }
                None => {
                    let n = p.entity_counters.get(&ent).copied().unwrap_or(0);
                    (n.saturating_sub(count) + 1..=n).rev().collect()
                }
            }
        };
        Ok(ChangePlan {
            event: format!("{prefix}{suffix}"),
            adds_left: if act == "add" { count } else { 0 },
            entity: ent,
            action: act,
            user: spec.user_id,
            initiator: Initiator {
                client_id: spec.client_id,
                connector: spec.auth_connector,
            },
            fields: spec.fields,
            targets,
            done: Vec::new(),
        })
    }

    /// Makes up to `n` more of the plan's changes and fires their events.
    pub(crate) fn change_step(&mut self, member_id: &str, plan: &mut ChangePlan, n: usize) {
        if !self.portals.contains_key(member_id) {
            plan.adds_left = 0;
            plan.targets.clear();
            return;
        }
        let user = plan.user;
        let mut ids = Vec::new();
        if plan.adds_left > 0 {
            let k = plan.adds_left.min(n as u64);
            plan.adds_left -= k;
            for _ in 0..k {
                let id = if plan.entity == "deal" {
                    self.deal_add(member_id, plan.fields.clone(), user.max(1))
                } else {
                    let p = self.portals.get_mut(member_id).expect("checked");
                    let c = p.entity_counters.entry(plan.entity.clone()).or_insert(0);
                    *c += 1;
                    *c
                };
                ids.push(id);
            }
        } else {
            let k = plan.targets.len().min(n);
            ids.extend(plan.targets.drain(..k));
            if plan.entity == "deal" {
                for id in &ids {
                    if plan.action == "update" {
                        self.deal_update(member_id, *id, &plan.fields, user.max(1));
                    } else if let Some(p) = self.portals.get_mut(member_id) {
                        p.deals.remove(id);
                    }
                }
            }
        }
        for id in &ids {
            let data = entity_event_data(&plan.entity, &plan.action, *id);
            self.fire_entity(member_id, &plan.event, data, user, &plan.initiator);
        }
        plan.done.extend(ids);
    }

    /// The admin's decision on pending confirmations of `method` (§9); fires
    /// ONAPPMETHODCONFIRM per pending token. Returns how many were decided.
    pub fn confirm(&mut self, member_id: &str, spec: ConfirmSpec) -> Result<usize, EmuError> {
        self.active_install(member_id, &spec.client_id)?;
        let method = spec.method.to_ascii_lowercase();
        let state = if spec.confirmed {
            Confirmation::Confirmed
        } else {
            Confirmation::Denied
        };
        let inst = self.install_mut(member_id, &spec.client_id);
        let mut tokens = Vec::new();
        for ((tok, m), st) in inst.confirmations.iter_mut() {
            if *m == method && *st == Confirmation::Waiting {
                *st = state;
                tokens.push(tok.clone());
            }
        }
        for tok in &tokens {
            let data = json!({"TOKEN": tok, "METHOD": method, "CONFIRMED": if spec.confirmed {"1"} else {"0"}, "LANGUAGE_ID": self.lang()});
            self.fire_app(
                member_id,
                &spec.client_id,
                "ONAPPMETHODCONFIRM",
                data,
                0,
                true,
            );
        }
        Ok(tokens.len())
    }

    /// Domain rename: the old host (and path prefix) answer 302 to the new one.
    pub fn rename(&mut self, member_id: &str, spec: RenameSpec) -> Result<PortalInfo, EmuError> {
        let p = self
            .portals
            .get(member_id)
            .ok_or_else(|| not_found("portal", member_id))?;
        let (old_name, old_domain, host_mode, https) =
            (p.name.clone(), p.domain.clone(), p.host_mode, p.https);
        let new_name = match (&spec.name, &spec.domain) {
            (Some(n), _) => n.to_ascii_lowercase(),
            (None, Some(d)) if !host_mode => d
                .split(['.', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_lowercase(),
            _ => old_name.clone(),
        };
        if !valid_name(&new_name) {
            return Err(EmuError::Invalid(format!("portal name {new_name:?}")));
        }
        let new_domain = match &spec.domain {
            Some(d) => d.to_ascii_lowercase(),
            None if !host_mode => self.default_domain(&new_name, https),
            None => old_domain.clone(),
        };
        if new_name != old_name && self.by_name.contains_key(&new_name) {
            return Err(EmuError::Conflict(format!("portal {new_name} exists")));
        }
        if new_domain != old_domain && self.by_host.contains_key(&new_domain) {
            return Err(EmuError::Conflict(format!("domain {new_domain} in use")));
        }
        if new_name != old_name {
            self.by_name.remove(&old_name);
            self.by_name.insert(new_name.clone(), member_id.to_string());
            self.moved_names.insert(old_name, member_id.to_string());
            self.moved_names.remove(&new_name);
        }
        if new_domain != old_domain {
            self.by_host.remove(&old_domain);
            self.by_host
                .insert(new_domain.clone(), member_id.to_string());
            self.moved_hosts.insert(old_domain, member_id.to_string());
            self.moved_hosts.remove(&new_domain);
        }
        let p = self.portals.get_mut(member_id).expect("checked");
        p.name = new_name;
        p.domain = new_domain;
        let p = &self.portals[member_id];
        Ok(self.portal_info(p))
    }

    /// Creates an incoming webhook; returns its base URL (`…/rest/{user_id}/{code}/`).
    pub fn create_webhook(
        &mut self,
        member_id: &str,
        spec: WebhookSpec,
    ) -> Result<Value, EmuError> {
        if !self.portals.contains_key(member_id) {
            return Err(not_found("portal", member_id));
        }
        let user = spec.user_id.unwrap_or_else(|| self.first_admin(member_id));
        let code = self.alnum(16).to_ascii_lowercase();
        let scopes = if spec.scopes.is_empty() {
            vec!["crm".to_string()]
        } else {
            spec.scopes
        };
        let p = self.portals.get_mut(member_id).expect("checked");
        p.webhooks.insert(
            code.clone(),
            Webhook {
                user_id: user,
                code: code.clone(),
                scopes: scopes.clone(),
            },
        );
        let p = &self.portals[member_id];
        let url = format!("{}{}/{}/", self.client_endpoint(p), user, code);
        Ok(json!({"url": url, "user_id": user, "code": code, "scopes": scopes}))
    }

    /// Sets fault rates (global or per portal) and runs the one-shot faults.
    pub fn set_faults(&mut self, spec: FaultsSpec) -> Result<Value, EmuError> {
        if let Some(m) = &spec.member_id
            && !self.portals.contains_key(m)
        {
            return Err(not_found("portal", m));
        }
        let target: &mut FaultSpec = match &spec.member_id {
            Some(m) => self.faults_portal.entry(m.clone()).or_default(),
            None => &mut self.faults_global,
        };
        if let Some(r) = spec.error_rate {
            target.error_rate = r.clamp(0.0, 1.0);
        }
        if let Some(r) = spec.timeout_rate {
            target.timeout_rate = r.clamp(0.0, 1.0);
        }
        if let Some(l) = spec.latency_ms {
            target.latency_ms = l;
        }
        let current = target.clone();
        let mut dropped = 0;
        if spec.drop_bindings {
            for p in self.portals.values_mut() {
                if spec.member_id.as_ref().is_some_and(|m| *m != p.member_id) {
                    continue;
                }
                let before = p.bindings.len();
                p.bindings.retain(|b| b.offline);
                dropped += before - p.bindings.len();
            }
        }
        let mut expired = 0;
        if spec.expire_tokens {
            let now = self.now();
            for t in self.tokens.values_mut() {
                if spec.member_id.as_ref().is_none_or(|m| *m == t.member_id) && t.expires > now {
                    t.expires = now;
                    expired += 1;
                }
            }
        }
        Ok(json!({"faults": current, "dropped_bindings": dropped, "expired_tokens": expired}))
    }

    /// Payment status of a market app (gates events when expired; REST refused after
    /// the 14-day grace period, §5.12).
    pub fn payment(&mut self, member_id: &str, spec: PaymentSpec) -> Result<(), EmuError> {
        self.active_install(member_id, &spec.client_id)?;
        let version = self.apps[&spec.client_id].version;
        let i = self.install_mut(member_id, &spec.client_id);
        if let Some(s) = spec.status {
            i.status = s;
        }
        if let Some(e) = spec.payment_expired {
            i.payment_expired = e;
        }
        if spec.days.is_some() {
            i.days = spec.days;
        }
        let data = json!({
            "CODE": spec.client_id, "VERSION": version.to_string(), "STATUS": i.status,
            "PAYMENT_EXPIRED": if i.payment_expired {"Y"} else {"N"},
            "DAYS": i.days.map(|d| d.to_string()).unwrap_or_default(), "LANGUAGE_ID": self.lang(),
        });
        self.fire_app(member_id, &spec.client_id, "ONAPPPAYMENT", data, 0, false);
        Ok(())
    }

    /// Switches and sizes a portal's limits.
    pub fn set_limits(
        &mut self,
        member_id: &str,
        spec: LimitsSpec,
    ) -> Result<PortalLimits, EmuError> {
        let now = self.now_f();
        let p = self
            .portals
            .get_mut(member_id)
            .ok_or_else(|| not_found("portal", member_id))?;
        let l = &mut p.limits;
        if let Some(v) = spec.rate_limit {
            l.rate_enabled = v;
        }
        if let Some(v) = spec.drain {
            l.drain = v;
        }
        if let Some(v) = spec.burst {
            l.burst = v;
        }
        if let Some(v) = spec.operating_limit {
            l.operating_enabled = v;
        }
        if let Some(v) = spec.operating_budget_secs {
            l.operating_budget_secs = v;
        }
        if let Some(v) = spec.default_cost_ms {
            l.default_cost_ms = v;
        }
        for (k, v) in spec.cost_ms {
            l.cost_ms.insert(k.to_ascii_lowercase(), v);
        }
        if spec.reset {
            l.level = 0.0;
            l.last = now;
            l.usage.clear();
        }
        Ok(l.clone())
    }

    /// Marks a portal deleted (REST answers `PORTAL_DELETED`).
    pub fn delete_portal(&mut self, member_id: &str) -> Result<(), EmuError> {
        let p = self
            .portals
            .get_mut(member_id)
            .ok_or_else(|| not_found("portal", member_id))?;
        p.deleted = true;
        Ok(())
    }

    /// The state of one portal as the control API shows it.
    pub fn portal_state(&self, member_id: &str) -> Result<Value, EmuError> {
        let p = self
            .portals
            .get(member_id)
            .ok_or_else(|| not_found("portal", member_id))?;
        let now = self.now();
        let mut apps = Vec::new();
        let mut clients: Vec<&String> = p.installs.keys().collect();
        clients.sort();
        for c in clients {
            let i = &p.installs[c];
            let (mut valid, mut expired) = (0, 0);
            for t in self.tokens.values() {
                if t.member_id == p.member_id && t.client_id == *c {
                    if t.expires > now {
                        valid += 1
                    } else {
                        expired += 1
                    }
                }
            }
            let refresh = self
                .refresh_tokens
                .values()
                .filter(|t| t.member_id == p.member_id && t.client_id == *c)
                .count();
            let online: Vec<Value> = p
                .bindings
                .iter()
                .filter(|b| b.client_id == *c && !b.offline)
                .map(|b| json!(b))
                .collect();
            let offline: Vec<Value> = p
                .bindings
                .iter()
                .filter(|b| b.client_id == *c && b.offline)
                .map(|b| json!(b))
                .collect();
            let placements: Vec<Value> = p
                .placements
                .iter()
                .filter(|b| b.client_id == *c)
                .map(|b| json!(b))
                .collect();
            let rows: Vec<_> = p
                .offline
                .rows
                .values()
                .filter(|r| r.client_id == *c)
                .collect();
            let confirmations: Vec<Value> = i
                .confirmations
                .iter()
                .map(|((_, m), s)| json!({"method": m, "state": s}))
                .collect();
            apps.push(json!({
                "client_id": c, "active": i.active, "installed": i.installed, "status": i.status,
                "version": i.version, "payment_expired": i.payment_expired, "days": i.days,
                "application_token": i.application_token, "options": i.options,
                "bindings": {"online": online, "offline": offline},
                "placements": placements,
                "offline_queue": {
                    "size": rows.len(),
                    "reserved": rows.iter().filter(|r| r.process_id.is_some()).count(),
                    "errors": rows.iter().filter(|r| r.error).count(),
                },
                "tokens": {"valid": valid, "expired": expired, "refresh": refresh},
                "confirmations": confirmations,
            }));
        }
        let info = self.portal_info(p);
        Ok(json!({
            "member_id": p.member_id, "name": p.name, "domain": p.domain,
            "client_endpoint": info.client_endpoint, "server_endpoint": info.server_endpoint,
            "base_url": info.base_url, "plan": p.plan, "features": p.features, "deleted": p.deleted,
            "apps": apps, "deals": p.deals.len(), "limits": p.limits,
            "webhooks": p.webhooks.values().collect::<Vec<_>>(),
        }))
    }

    /// Farm counters.
    pub fn stats_json(&self) -> Value {
        let mut v = json!(self.stats);
        v["portals"] = json!(self.portals.len());
        v["apps"] = json!(self.apps.len());
        v["access_tokens"] = json!(self.tokens.len());
        v
    }
}

fn entity_event_data(entity: &str, action: &str, id: u64) -> Value {
    if entity == "task" {
        let key = if action == "delete" {
            "FIELDS_BEFORE"
        } else {
            "FIELDS_AFTER"
        };
        json!({ key: {"ID": id} })
    } else {
        json!({"FIELDS": {"ID": id}})
    }
}
