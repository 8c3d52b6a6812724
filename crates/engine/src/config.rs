//! The configuration and manifest (`b24gate.toml`), documented key by key in
//! `docs/configuration.md`.
//!
//! Loading is layered: built-in defaults, then the TOML file, then
//! `B24GATE_*` environment variables (`B24GATE_SERVER_LISTEN` sets
//! `server.listen`). Secrets come only from the environment (or files named by
//! it): a secret-looking key in the TOML file is refused, so a committed
//! config can never hold one. Every error names the key and what was wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use wire::{ClientSecret, EventName, Scope};

/// A configuration error: the key (`server.listen`, `binding[2].owner`,
/// `B24GATE_APP_VERSION`) and what was wrong with it. Never contains a secret
/// value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub app: AppConfig,
    #[serde(default, rename = "binding")]
    pub bindings: Vec<BindingConfig>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    #[serde(default, rename = "placement")]
    pub placements: Vec<PlacementConfig>,
    #[serde(default, rename = "migration")]
    pub migrations: Vec<MigrationConfig>,
    #[serde(default)]
    pub uninstall: UninstallConfig,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    #[serde(default)]
    pub offline: OfflineConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[offline]`: how offline queues are drained (docs/configuration.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineConfig {
    /// Drain portals without `rest_offline_extended` with `clear=1`, which
    /// deletes rows as it reads them (a crash loses that batch). Off: such
    /// portals' offline bindings are recorded unsatisfiable, with the reason.
    #[serde(default)]
    pub allow_lossy_clear: bool,
    /// Rows per `event.offline.get` (the portal's own default is 50).
    #[serde(default = "default_offline_batch")]
    pub batch: u32,
    /// How often every portal with offline bindings is drained even without
    /// an `ONOFFLINEEVENT` (an online event, which may be lost).
    #[serde(default = "default_drain_every", with = "duration_text")]
    pub drain_every: Duration,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        Self {
            allow_lossy_clear: false,
            batch: default_offline_batch(),
            drain_every: default_drain_every(),
        }
    }
}

fn default_offline_batch() -> u32 {
    50
}
fn default_drain_every() -> Duration {
    Duration::from_secs(60)
}

/// `/metrics` settings (docs/metrics.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` without the admin token (for a scraper on a private
    /// network). Off by default.
    #[serde(default)]
    pub open: bool,
    /// Add per-portal families with a `portal` label — only for small
    /// fleets: the label's cardinality is the number of portals.
    #[serde(default)]
    pub portal_label: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where `b24gate serve` listens.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The public base URL Bitrix24 reaches us at: install URL =
    /// `{public_url}/b24/install`, event handler = `{public_url}/b24/events`.
    #[serde(default = "default_public_url")]
    pub public_url: String,
    /// `sqlite://path` (embedded default) or `postgres://…`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// Allow plain `http://` portal and OAuth endpoints. Only for the
    /// emulator on loopback; production configs leave it off.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Job workers per process.
    #[serde(default = "default_workers")]
    pub workers: u32,
    /// Largest accepted request body.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: u64,
    /// How long a claimed job stays this process's without a heartbeat:
    /// after a crash (or SIGKILL) another process, or this one restarted,
    /// takes the job over once it runs out.
    #[serde(default = "default_job_lease", with = "duration_text")]
    pub job_lease: Duration,
    /// How long the ingest path may answer a portal's token check from
    /// memory; a change made by another instance on the same database is
    /// seen at most this late (`0s` turns the cache off).
    #[serde(default = "default_portal_cache_ttl", with = "duration_text")]
    pub portal_cache_ttl: Duration,
}

fn default_job_lease() -> Duration {
    Duration::from_secs(60)
}

fn default_portal_cache_ttl() -> Duration {
    store::portals::DEFAULT_PORTAL_CACHE_TTL
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            public_url: default_public_url(),
            database_url: default_database_url(),
            allow_insecure_http: false,
            job_lease: default_job_lease(),
            portal_cache_ttl: default_portal_cache_ttl(),
            workers: default_workers(),
            body_limit_bytes: default_body_limit(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_public_url() -> String {
    "http://127.0.0.1:8080".into()
}
fn default_database_url() -> String {
    "sqlite://b24gate.db".into()
}
fn default_workers() -> u32 {
    4
}
fn default_body_limit() -> u64 {
    1024 * 1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    Local,
    Market,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// `local.…` or `app.…`; the secret is `B24GATE_APP_CLIENT_SECRET`.
    pub client_id: String,
    /// The manifest version; a portal recorded below it is reconciled and
    /// migrated (version drift, independent of `ONAPPUPDATE`).
    pub version: i64,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Whether the app has an installer page (install flow B).
    #[serde(default)]
    pub installer: bool,
    #[serde(default = "default_kind")]
    pub kind: AppKind,
    /// The OAuth server: tokens and install verification go here, never to
    /// a host taken from a request (protocol §1, §7.1).
    #[serde(default = "default_oauth_url")]
    pub oauth_url: String,
    /// Portal domains accepted at install: exact hosts or `*.suffix`.
    #[serde(default = "default_allowed_domains")]
    pub allowed_domains: Vec<String>,
    /// An install not finished within this time expires (`1h`, `30m`).
    #[serde(default = "default_install_ttl", with = "duration_text")]
    pub install_ttl: Duration,
}

fn default_kind() -> AppKind {
    AppKind::Local
}
fn default_oauth_url() -> String {
    "https://oauth.bitrix.info".into()
}
fn default_allowed_domains() -> Vec<String> {
    [
        "*.bitrix24.com",
        "*.bitrix24.de",
        "*.bitrix24.ru",
        "*.bitrix24.eu",
    ]
    .map(String::from)
    .into()
}
fn default_install_ttl() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindingMode {
    Online,
    Offline,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    pub event: String,
    #[serde(default = "default_mode")]
    pub mode: BindingMode,
    /// The `[[target]]` that receives these events.
    pub owner: Option<String>,
    /// Defaults to our ingest URL; online bindings only.
    pub handler: Option<String>,
    /// The user id whose token is sent (`0`: the user who made the change).
    #[serde(default)]
    pub auth_type: i64,
    /// Source key for offline events (needs `rest_auth_connector`).
    #[serde(default)]
    pub auth_connector: String,
    /// Per-event options, e.g. `{ minTimeout = 5 }` for `ONOFFLINEEVENT`.
    #[serde(default)]
    pub options: toml::Table,
}

fn default_mode() -> BindingMode {
    BindingMode::Online
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    /// Where events are POSTed; the signing secret is
    /// `B24GATE_TARGET_{NAME}_SECRET`.
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementConfig {
    pub code: String,
    pub handler: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub group_name: Option<String>,
    #[serde(default)]
    pub options: toml::Table,
    /// Per-language texts: `lang_all.de = { title = "…", description = "…" }`.
    #[serde(default)]
    pub lang_all: BTreeMap<String, PlacementText>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementText {
    pub title: Option<String>,
    pub description: Option<String>,
    pub group_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// Applied to portals whose recorded version is below this one.
    pub version: i64,
    /// Unique and stable: a migration is recorded per portal by id.
    pub id: String,
    pub steps: Vec<MigrationStep>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationStep {
    pub method: String,
    #[serde(default)]
    pub params: toml::Table,
}

/// What to do with a portal's data after `ONAPPUNINSTALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionPolicy {
    /// Delete at once.
    Purge,
    /// Delete after this long.
    Retain(Duration),
    /// Never delete automatically.
    Keep,
}

impl RetentionPolicy {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "purge" => Ok(Self::Purge),
            "keep" => Ok(Self::Keep),
            _ => match s.strip_prefix("retain ") {
                Some(d) => parse_duration(d).map(Self::Retain),
                None => Err(
                    "expected \"purge\", \"keep\" or \"retain <duration>\" (e.g. \"retain 30d\")"
                        .into(),
                ),
            },
        }
    }
}

impl<'de> Deserialize<'de> for RetentionPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RetentionPolicy::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninstallConfig {
    /// `CLEAN=1`: the admin asked to delete the app's data.
    #[serde(default = "default_on_clean")]
    pub on_clean: RetentionPolicy,
    /// `CLEAN=0`: data kept for a possible reinstall.
    #[serde(default = "default_on_keep")]
    pub on_keep: RetentionPolicy,
}

impl Default for UninstallConfig {
    fn default() -> Self {
        Self {
            on_clean: default_on_clean(),
            on_keep: default_on_keep(),
        }
    }
}

fn default_on_clean() -> RetentionPolicy {
    RetentionPolicy::Purge
}
fn default_on_keep() -> RetentionPolicy {
    RetentionPolicy::Retain(Duration::from_secs(30 * 86_400))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Most stale bindings of ours removed per portal per run.
    #[serde(default = "default_max_unbind")]
    pub max_unbind_per_run: u32,
    /// How often every portal is checked for drift.
    #[serde(default = "default_drift_interval", with = "duration_text")]
    pub drift_check_interval: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            max_unbind_per_run: default_max_unbind(),
            drift_check_interval: default_drift_interval(),
        }
    }
}

fn default_max_unbind() -> u32 {
    10
}
fn default_drift_interval() -> Duration {
    Duration::from_secs(6 * 3600)
}

/// Parses `500ms`, `90s`, `15m`, `1h`, `30d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("`{s}` is not a duration like 500ms, 90s, 15m, 1h or 30d");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult_ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

mod duration_text {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Secrets, read only from the environment. Debug-redacted.
#[derive(Clone, Default)]
pub struct Secrets {
    /// `B24GATE_MASTER_KEY`: 64 hex characters; seals tokens at rest.
    pub master_key: Option<String>,
    /// `B24GATE_APP_CLIENT_SECRET`.
    pub client_secret: Option<ClientSecret>,
    /// `B24GATE_ADMIN_TOKEN`: bearer token of the admin API.
    pub admin_token: Option<String>,
    /// `B24GATE_TARGET_{NAME}_SECRET` per target name.
    pub target_secrets: BTreeMap<String, String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |b: bool| if b { "[set]" } else { "[unset]" };
        f.debug_struct("Secrets")
            .field("master_key", &set(self.master_key.is_some()))
            .field("client_secret", &set(self.client_secret.is_some()))
            .field("admin_token", &set(self.admin_token.is_some()))
            .field(
                "target_secrets",
                &self.target_secrets.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Environment variables with a `B24GATE_` prefix that are not config keys.
const NON_CONFIG_VARS: [&str; 6] = [
    "B24GATE_CONFIG",
    "B24GATE_LOG",
    "B24GATE_MASTER_KEY",
    "B24GATE_APP_CLIENT_SECRET",
    "B24GATE_ADMIN_TOKEN",
    "B24GATE_TEST_PG_URL",
];

/// Scalar and list keys settable from the environment, with their kind.
const ENV_KEYS: [(&str, EnvKind); 23] = [
    ("metrics.open", EnvKind::Bool),
    ("metrics.portal_label", EnvKind::Bool),
    ("server.listen", EnvKind::Text),
    ("server.public_url", EnvKind::Text),
    ("server.database_url", EnvKind::Text),
    ("server.allow_insecure_http", EnvKind::Bool),
    ("server.workers", EnvKind::Int),
    ("server.body_limit_bytes", EnvKind::Int),
    ("server.job_lease", EnvKind::Text),
    ("server.portal_cache_ttl", EnvKind::Text),
    ("offline.allow_lossy_clear", EnvKind::Bool),
    ("offline.batch", EnvKind::Int),
    ("offline.drain_every", EnvKind::Text),
    ("app.client_id", EnvKind::Text),
    ("app.version", EnvKind::Int),
    ("app.scopes", EnvKind::List),
    ("app.installer", EnvKind::Bool),
    ("app.kind", EnvKind::Text),
    ("app.oauth_url", EnvKind::Text),
    ("app.allowed_domains", EnvKind::List),
    ("app.install_ttl", EnvKind::Text),
    ("uninstall.on_clean", EnvKind::Text),
    ("uninstall.on_keep", EnvKind::Text),
];

#[derive(Clone, Copy)]
enum EnvKind {
    Text,
    Bool,
    Int,
    List,
}

/// Keys that would hold a secret: refused in the file.
const SECRET_KEY_NAMES: [&str; 6] = [
    "client_secret",
    "secret",
    "master_key",
    "admin_token",
    "password",
    "token",
];

fn env_name(key: &str) -> String {
    format!("B24GATE_{}", key.replace('.', "_").to_ascii_uppercase())
}

impl Config {
    /// Loads from TOML text (may be empty) and an environment given as
    /// name/value pairs (`std::env::vars()` in the binary), then validates.
    pub fn load(
        toml_text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Secrets), ConfigError> {
        let mut table: toml::Table = toml_text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(0, |s| {
                toml_text[..s.start.min(toml_text.len())]
                    .lines()
                    .count()
                    .max(1)
            });
            err(
                format!("(line {line})"),
                format!("invalid TOML: {}", e.message()),
            )
        })?;
        reject_secret_keys(&table, "")?;
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("B24GATE_"))
            .collect();
        let mut secrets = Secrets::default();
        for (name, value) in &env {
            if let Some(rest) = name.strip_prefix("B24GATE_TARGET_")
                && let Some(target) = rest.strip_suffix("_SECRET")
            {
                secrets
                    .target_secrets
                    .insert(target.to_ascii_lowercase(), value.clone());
                continue;
            }
            match name.as_str() {
                "B24GATE_MASTER_KEY" => secrets.master_key = Some(value.clone()),
                "B24GATE_APP_CLIENT_SECRET" => {
                    secrets.client_secret =
                        Some(ClientSecret::parse(value).map_err(|e| err(name.as_str(), e.reason))?)
                }
                "B24GATE_ADMIN_TOKEN" => secrets.admin_token = Some(value.clone()),
                n if NON_CONFIG_VARS.contains(&n) || n.starts_with("B24GATE_TEST_") => {}
                n => {
                    let Some((key, kind)) = ENV_KEYS.iter().find(|(k, _)| env_name(k) == n) else {
                        return Err(err(n, "unknown b24gate environment variable"));
                    };
                    set_path(&mut table, key, env_value(n, value, *kind)?);
                }
            }
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let message = e.inner().message().to_owned();
                err(serde_key(&e.path().to_string(), &message), message)
            })?;
        config.validate(&secrets)?;
        Ok((config, secrets))
    }

    /// The install URL Bitrix24 is given: `{public_url}/b24/install`.
    pub fn install_url(&self) -> String {
        format!(
            "{}/b24/install",
            self.server.public_url.trim_end_matches('/')
        )
    }

    /// Our event handler URL: `{public_url}/b24/events`.
    pub fn events_url(&self) -> String {
        format!(
            "{}/b24/events",
            self.server.public_url.trim_end_matches('/')
        )
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().expect("validated at load")
    }

    /// Whether `host` (no port) is one of the allowed portal domains.
    pub fn domain_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.app
            .allowed_domains
            .iter()
            .any(|pat| match pat.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => host == *pat,
            })
    }

    fn validate(&self, secrets: &Secrets) -> Result<(), ConfigError> {
        self.server.listen.parse::<SocketAddr>().map_err(|_| {
            err(
                "server.listen",
                "not a socket address (expected host:port, e.g. 127.0.0.1:8080)",
            )
        })?;
        let http_ok = self.server.allow_insecure_http;
        check_url("server.public_url", &self.server.public_url, true)?;
        if !(self.server.database_url.starts_with("sqlite:")
            || self.server.database_url.starts_with("postgres://")
            || self.server.database_url.starts_with("postgresql://"))
        {
            return Err(err(
                "server.database_url",
                "expected sqlite://path or postgres://…",
            ));
        }
        if self.server.workers == 0 {
            return Err(err("server.workers", "must be at least 1"));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(err("server.body_limit_bytes", "must be at least 1024"));
        }
        if self.server.job_lease < Duration::from_secs(1) {
            return Err(err("server.job_lease", "must be at least 1s"));
        }
        if self.server.portal_cache_ttl > Duration::from_secs(60) {
            return Err(err("server.portal_cache_ttl", "must be at most 60s"));
        }
        if !(1..=1000).contains(&self.offline.batch) {
            return Err(err("offline.batch", "must be between 1 and 1000"));
        }
        if self.offline.drain_every < Duration::from_millis(100) {
            return Err(err("offline.drain_every", "must be at least 100ms"));
        }
        let id = &self.app.client_id;
        let well_formed = (id.starts_with("local.") || id.starts_with("app."))
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if !well_formed {
            return Err(err(
                "app.client_id",
                "expected a Bitrix24 client id such as local.0123456789abcd.12345678 or app.…",
            ));
        }
        if self.app.version < 1 {
            return Err(err("app.version", "must be a positive integer"));
        }
        for (i, s) in self.app.scopes.iter().enumerate() {
            Scope::parse(s).map_err(|e| err(format!("app.scopes[{i}]"), e.reason))?;
        }
        check_url("app.oauth_url", &self.app.oauth_url, http_ok)?;
        if self.app.allowed_domains.is_empty() {
            return Err(err("app.allowed_domains", "must list at least one domain"));
        }
        for (i, d) in self.app.allowed_domains.iter().enumerate() {
            let host = d.strip_prefix("*.").unwrap_or(d);
            let ok = !host.is_empty()
                && !host.contains('*')
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if !ok {
                return Err(err(
                    format!("app.allowed_domains[{i}]"),
                    "expected a host name or *.suffix",
                ));
            }
        }
        let mut names = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = format!("target[{i}]");
            if t.name.is_empty()
                || !t
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(err(
                    format!("{key}.name"),
                    "must be letters, digits and '_'",
                ));
            }
            if names.contains(&t.name.to_ascii_lowercase()) {
                return Err(err(format!("{key}.name"), "duplicate target name"));
            }
            names.push(t.name.to_ascii_lowercase());
            check_url(&format!("{key}.url"), &t.url, true)?;
        }
        let mut seen = Vec::new();
        for (i, b) in self.bindings.iter().enumerate() {
            let key = format!("binding[{i}]");
            let event =
                EventName::parse(&b.event).map_err(|e| err(format!("{key}.event"), e.reason))?;
            if let Some(owner) = &b.owner
                && !names.contains(&owner.to_ascii_lowercase())
            {
                return Err(err(
                    format!("{key}.owner"),
                    format!("names no [[target]] (`{owner}`)"),
                ));
            }
            match (b.mode, &b.handler) {
                (BindingMode::Offline, Some(_)) => {
                    return Err(err(
                        format!("{key}.handler"),
                        "offline bindings have no handler",
                    ));
                }
                (BindingMode::Online, Some(h)) => check_url(&format!("{key}.handler"), h, true)?,
                _ => {}
            }
            if b.mode == BindingMode::Offline && event.as_str() == "ONOFFLINEEVENT" {
                return Err(err(
                    format!("{key}.mode"),
                    "ONOFFLINEEVENT cannot itself be bound offline (protocol §4.6)",
                ));
            }
            let id = (
                event.as_str().to_owned(),
                b.mode,
                b.handler.clone(),
                b.auth_connector.clone(),
            );
            if seen.contains(&id) {
                return Err(err(format!("{key}.event"), "duplicate binding"));
            }
            seen.push(id);
        }
        for (i, p) in self.placements.iter().enumerate() {
            let key = format!("placement[{i}]");
            if p.code.is_empty() || p.code.eq_ignore_ascii_case("DEFAULT") {
                return Err(err(
                    format!("{key}.code"),
                    "must name a placement other than DEFAULT",
                ));
            }
            check_url(&format!("{key}.handler"), &p.handler, true)?;
        }
        let mut ids = Vec::new();
        for (i, m) in self.migrations.iter().enumerate() {
            let key = format!("migration[{i}]");
            if m.version < 1 || m.version > self.app.version {
                return Err(err(
                    format!("{key}.version"),
                    "must be between 1 and app.version",
                ));
            }
            if m.id.is_empty() || ids.contains(&m.id) {
                return Err(err(format!("{key}.id"), "must be non-empty and unique"));
            }
            ids.push(m.id.clone());
            for (j, s) in m.steps.iter().enumerate() {
                // A step is one REST call: `method` plus `params`.
                if s.method.is_empty()
                    || !s
                        .method
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
                {
                    return Err(err(
                        format!("{key}.steps[{j}].method"),
                        "not a REST method name",
                    ));
                }
            }
        }
        if let Some(k) = &secrets.master_key
            && (k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(err(
                "B24GATE_MASTER_KEY",
                "must be 64 hex characters (32 bytes)",
            ));
        }
        Ok(())
    }
}

fn check_url(key: &str, value: &str, allow_http: bool) -> Result<(), ConfigError> {
    let url = url::Url::parse(value).map_err(|_| err(key, "not a URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(err(
                key,
                "plain http is allowed only with server.allow_insecure_http = true",
            ));
        }
        _ => return Err(err(key, "must be an http(s) URL")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(err(key, "URL has no host"));
    }
    Ok(())
}

fn reject_secret_keys(table: &toml::Table, prefix: &str) -> Result<(), ConfigError> {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if SECRET_KEY_NAMES.contains(&k.as_str()) || k.ends_with("_secret") {
            return Err(err(
                path,
                "secrets are read only from the environment (see docs/configuration.md)",
            ));
        }
        match v {
            toml::Value::Table(t) => reject_secret_keys(t, &path)?,
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(t) = item {
                        reject_secret_keys(t, &format!("{path}[{i}]"))?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn env_value(name: &str, raw: &str, kind: EnvKind) -> Result<toml::Value, ConfigError> {
    Ok(match kind {
        EnvKind::Text => toml::Value::String(raw.to_owned()),
        EnvKind::Bool => match raw.trim() {
            "true" | "1" | "yes" => toml::Value::Boolean(true),
            "false" | "0" | "no" => toml::Value::Boolean(false),
            _ => return Err(err(name, "expected true or false")),
        },
        EnvKind::Int => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| err(name, "expected an integer"))?,
        ),
        EnvKind::List => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
    })
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let (section, leaf) = key.split_once('.').expect("env keys are section.leaf");
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    if let toml::Value::Table(t) = entry {
        t.insert(leaf.to_owned(), value);
    }
}

/// The failing key: serde's path to the value, plus the field named in an
/// unknown- or missing-field message (`path` then points at the parent).
fn serde_key(path: &str, message: &str) -> String {
    let path = if path == "." { "" } else { path };
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match (path, field) {
        ("", Some(f)) => f.to_owned(),
        (p, Some(f)) if p == f || p.ends_with(&format!(".{f}")) => p.to_owned(),
        (p, Some(f)) => format!("{p}.{f}"),
        ("", None) => "(config)".to_owned(),
        (p, None) => p.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[app]
client_id = "local.0123456789abcd.12345678"
version = 3
scopes = ["crm", "placement"]
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let (c, s) = Config::load(MINIMAL, env(&[])).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.server.database_url, "sqlite://b24gate.db");
        assert_eq!(c.app.version, 3);
        assert_eq!(c.uninstall.on_clean, RetentionPolicy::Purge);
        assert_eq!(
            c.uninstall.on_keep,
            RetentionPolicy::Retain(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(c.events_url(), "http://127.0.0.1:8080/b24/events");
        assert!(s.master_key.is_none());
    }

    #[test]
    fn environment_overrides_the_file() {
        let (c, s) = Config::load(
            MINIMAL,
            env(&[
                ("B24GATE_SERVER_LISTEN", "0.0.0.0:9999"),
                ("B24GATE_APP_VERSION", "7"),
                ("B24GATE_APP_SCOPES", "crm, user_brief"),
                ("B24GATE_APP_CLIENT_SECRET", "s3cr3t"),
                ("B24GATE_TARGET_DEALS_SECRET", "whsec"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9999");
        assert_eq!(c.app.version, 7);
        assert_eq!(c.app.scopes, ["crm", "user_brief"]);
        assert_eq!(s.client_secret.unwrap().expose_secret(), "s3cr3t");
        assert_eq!(s.target_secrets["deals"], "whsec");
    }

    #[test]
    fn errors_name_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("[app]\nversion = 1\n", &[], "app.client_id"),
            (
                MINIMAL,
                &[("B24GATE_SERVER_LISTEN", "nope")],
                "server.listen",
            ),
            (
                MINIMAL,
                &[("B24GATE_APP_VERSION", "x")],
                "B24GATE_APP_VERSION",
            ),
            (MINIMAL, &[("B24GATE_NOPE", "1")], "B24GATE_NOPE"),
            (
                MINIMAL,
                &[("B24GATE_APP_SCOPES", "crm,bad scope!")],
                "app.scopes[1]",
            ),
            (
                MINIMAL,
                &[("B24GATE_MASTER_KEY", "short")],
                "B24GATE_MASTER_KEY",
            ),
            (
                &format!("{MINIMAL}\n[[binding]]\nevent = \"ONCRMDEALADD\"\nowner = \"ghost\"\n"),
                &[],
                "binding[0].owner",
            ),
            (
                &format!("{MINIMAL}\nclient_secret = \"x\"\n"),
                &[],
                "app.client_secret",
            ),
            (&format!("{MINIMAL}\nwhat = 1\n"), &[], "app.what"),
            (&format!("what = 1\n{MINIMAL}"), &[], "what"),
            (
                &format!("{MINIMAL}\n[uninstall]\non_keep = \"retain forever\"\n"),
                &[],
                "uninstall.on_keep",
            ),
            (
                &format!("{MINIMAL}\n[[binding]]\nevent = \"X\"\nmode = \"sometimes\"\n"),
                &[],
                "binding[0].mode",
            ),
            (
                &format!("{MINIMAL}\n[[migration]]\nversion = 9\nid = \"m\"\nsteps = []\n"),
                &[],
                "migration[0].version",
            ),
        ];
        for (text, vars, key) in cases {
            let e = Config::load(text, env(vars)).unwrap_err();
            assert_eq!(&e.key, key, "{e}");
        }
    }

    #[test]
    fn oauth_url_must_be_https_unless_allowed() {
        let text = format!("{MINIMAL}oauth_url = \"http://127.0.0.1:9000\"\n");
        let e = Config::load(&text, env(&[])).unwrap_err();
        assert_eq!(e.key, "app.oauth_url");
        let ok = Config::load(
            &text,
            env(&[("B24GATE_SERVER_ALLOW_INSECURE_HTTP", "true")]),
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn allowed_domains_match_suffix_and_exact() {
        let text = format!(
            "{MINIMAL}allowed_domains = [\"*.bitrix24.com\", \"127.0.0.1\", \"*.localhost\"]\n"
        );
        let (c, _) = Config::load(&text, env(&[])).unwrap();
        assert!(c.domain_allowed("acme.bitrix24.com"));
        assert!(c.domain_allowed("ACME.bitrix24.com"));
        assert!(!c.domain_allowed("bitrix24.com"));
        assert!(!c.domain_allowed("evilbitrix24.com"));
        assert!(!c.domain_allowed("acme.bitrix24.com.evil.io"));
        assert!(c.domain_allowed("127.0.0.1"));
        assert!(c.domain_allowed("a.localhost"));
    }

    #[test]
    fn metrics_settings_default_off_and_come_from_file_or_env() {
        let (c, _) = Config::load(MINIMAL, env(&[])).unwrap();
        assert!(!c.metrics.open && !c.metrics.portal_label);
        let text = format!("{MINIMAL}\n[metrics]\nportal_label = true\n");
        let (c, _) = Config::load(&text, env(&[("B24GATE_METRICS_OPEN", "true")])).unwrap();
        assert!(c.metrics.open && c.metrics.portal_label);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(2_592_000)
        );
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn secrets_debug_is_redacted() {
        let (_, s) = Config::load(MINIMAL, env(&[("B24GATE_ADMIN_TOKEN", "adm1n-t0ken")])).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("adm1n-t0ken"));
        assert!(shown.contains("[set]"));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The example shipped in `examples/` must stay loadable.
    #[test]
    fn example_config_loads() {
        let text = include_str!("../../../examples/b24gate.toml");
        let (c, _) = Config::load(text, Vec::new()).unwrap();
        assert_eq!(c.app.version, 3);
        assert_eq!(c.bindings.len(), 3);
        assert_eq!(c.bindings[1].mode, BindingMode::Offline);
        assert_eq!(
            c.placements[0].lang_all["de"].title.as_deref(),
            Some("Deal-Reiter")
        );
        assert_eq!(c.migrations[0].steps[0].method, "app.option.set");
        assert_eq!(c.install_url(), "https://gate.example.com/b24/install");
    }
}
