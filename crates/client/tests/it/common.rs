//! Shared helpers: an emulator farm on port 0 with one installed portal, a
//! real `store::Store` on a temporary SQLite file (the adapter the engine
//! will have, in miniature), and a client configured for loopback.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use b24emu::{AppSpec, Emulator, EmulatorConfig, InstallSpec, LimitsSpec, PortalInfo, PortalSpec};
use client::{
    AllowList, Bucket, Client, ClientConfig, Clock, CredentialStore, EnvError, OAuthApp, Plan,
    PortalClient, PortalTarget, RateConfig, RateLimiter, RetryPolicy, StoredCredentials, Timeouts,
    TokenSet,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use store::{Keyring, OpenOptions, PortalStatus, Store, VerifiedInstall};
use wire::{
    AccessToken, ApplicationToken, ClientSecret, Endpoint, MemberId, PortalDomain, RefreshToken,
};

/// Every test finishes within this or fails.
pub const TEST_DEADLINE: Duration = Duration::from_secs(90);

/// Runs a test body with a deadline, so a hang fails instead of blocking CI.
pub async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_DEADLINE, f)
        .await
        .expect("test exceeded its deadline");
}

/// The store as the engine will adapt it to the client's traits.
#[derive(Clone)]
pub struct StoreEnv {
    pub store: Store,
}

fn env_err(e: store::StoreError) -> EnvError {
    EnvError::new(e)
}

fn to_store(t: &TokenSet) -> store::TokenSet {
    store::TokenSet {
        access: t.access.clone(),
        refresh: t.refresh.clone(),
        expires_at: t.expires_at_ms,
        scope: t.scope.clone(),
        user_id: t.user_id,
    }
}

impl CredentialStore for StoreEnv {
    fn portal<'a>(
        &'a self,
        member_id: &'a MemberId,
    ) -> BoxFuture<'a, Result<Option<PortalTarget>, EnvError>> {
        async move {
            let Some(p) = self
                .store
                .get_portal(member_id.as_str())
                .await
                .map_err(env_err)?
            else {
                return Ok(None);
            };
            let client_endpoint = Endpoint::parse(&p.client_endpoint)
                .map_err(|_| EnvError::new("stored client_endpoint does not parse"))?;
            Ok(Some(PortalTarget {
                domain: p.domain,
                client_endpoint,
                rest_allowed: p.status.allows_rest(),
                status: p.status.as_str().to_owned(),
                plan: Plan::from_text(&p.plan),
            }))
        }
        .boxed()
    }

    fn load<'a>(
        &'a self,
        member_id: &'a MemberId,
    ) -> BoxFuture<'a, Result<Option<StoredCredentials>, EnvError>> {
        async move {
            let c = self
                .store
                .load_credentials(member_id.as_str())
                .await
                .map_err(env_err)?;
            Ok(c.map(|c| StoredCredentials {
                tokens: TokenSet {
                    access: c.tokens.access,
                    refresh: c.tokens.refresh,
                    expires_at_ms: c.tokens.expires_at,
                    scope: c.tokens.scope,
                    user_id: c.tokens.user_id,
                },
                version: c.version,
            }))
        }
        .boxed()
    }

    fn try_lock_refresh<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<bool, EnvError>> {
        async move {
            self.store
                .try_lock_refresh(member_id.as_str(), owner, now_ms, ttl_ms)
                .await
                .map_err(env_err)
        }
        .boxed()
    }

    fn finish_refresh<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
        expected_version: i64,
        tokens: &'a TokenSet,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, EnvError>> {
        async move {
            self.store
                .finish_refresh(
                    member_id.as_str(),
                    owner,
                    expected_version,
                    &to_store(tokens),
                    now_ms,
                )
                .await
                .map_err(env_err)
        }
        .boxed()
    }

    fn release_refresh_lock<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        async move {
            self.store
                .release_refresh_lock(member_id.as_str(), owner)
                .await
                .map_err(env_err)
        }
        .boxed()
    }

    fn mark_needs_reauth<'a>(
        &'a self,
        member_id: &'a MemberId,
        reason: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        async move {
            self.store
                .set_status(
                    member_id.as_str(),
                    PortalStatus::NeedsReauth,
                    Some(reason),
                    "client",
                    now_ms,
                )
                .await
                .map(|_| ())
                .map_err(env_err)
        }
        .boxed()
    }

    fn record_rename<'a>(
        &'a self,
        member_id: &'a MemberId,
        domain: &'a PortalDomain,
        client_endpoint: &'a Endpoint,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        async move {
            self.store
                .update_endpoint(member_id.as_str(), domain, client_endpoint.as_str(), now_ms)
                .await
                .map_err(env_err)
        }
        .boxed()
    }

    fn fingerprint(&self, token: &AccessToken) -> String {
        self.store.keys().fingerprint(token.expose_secret())
    }
}

impl RateLimiter for StoreEnv {
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        bucket: Bucket,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Duration, EnvError>> {
        async move {
            let wait = self
                .store
                .reserve_rate_slot(key, bucket.interval_ms(), bucket.burst, now_ms)
                .await
                .map_err(env_err)?;
            Ok(Duration::from_millis(wait.max(0) as u64))
        }
        .boxed()
    }

    fn penalise<'a>(
        &'a self,
        key: &'a str,
        bucket: Bucket,
        pause: Duration,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        async move {
            let full = f64::from(bucket.burst) * bucket.interval_ms();
            self.store
                .penalise_rate(key, full + pause.as_millis() as f64, now_ms)
                .await
                .map_err(env_err)
        }
        .boxed()
    }
}

/// A migrated SQLite store in a temporary directory (on tmpfs when there
/// is one: the rate tests write one row per request and must not wait on
/// the disk of a loaded machine).
pub struct Db {
    pub store: Store,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Db {
    pub async fn new() -> Db {
        let dir = match std::path::Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm").unwrap(),
            false => tempfile::tempdir().unwrap(),
        };
        let url = format!("sqlite://{}", dir.path().join("client.db").display());
        let store = Store::open(&url, keys(), &OpenOptions::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        Db {
            store,
            url,
            _dir: dir,
        }
    }

    /// Another handle on the same database, as a second process has.
    pub async fn second_handle(&self) -> Store {
        Store::open(&self.url, keys(), &OpenOptions::default())
            .await
            .unwrap()
    }
}

fn keys() -> Keyring {
    Keyring::from_hex(&"42".repeat(32)).unwrap()
}

/// How to set up the farm.
#[derive(Default)]
pub struct Setup {
    pub scopes: Vec<String>,
    /// Route the portal by `Host` under this name (`acme.localhost`); the
    /// port of the emulator is appended.
    pub host: Option<String>,
    pub emulator: Option<EmulatorConfig>,
}

/// One emulated portal with the app installed, recorded in a store as an
/// installed portal.
pub struct Fixture {
    pub emu: Emulator,
    pub db: Db,
    pub member: MemberId,
    pub portal: PortalInfo,
    pub client_id: String,
    pub client_secret: String,
    pub access: String,
    pub refresh: String,
}

pub fn emulator_config() -> EmulatorConfig {
    let mut cfg = EmulatorConfig {
        seed: Some(11),
        ..Default::default()
    };
    // Tests that need the bucket switch it on per portal, sized for speed.
    cfg.limits.rate_limit = false;
    cfg
}

pub async fn fixture() -> Fixture {
    fixture_with(Setup::default()).await
}

pub async fn fixture_with(setup: Setup) -> Fixture {
    let emu = Emulator::start(setup.emulator.unwrap_or_else(emulator_config))
        .await
        .expect("emulator starts");
    let scopes = if setup.scopes.is_empty() {
        vec!["crm".to_string()]
    } else {
        setup.scopes
    };
    let app = emu
        .create_app(AppSpec {
            scopes,
            ..Default::default()
        })
        .unwrap();
    let domain = setup.host.map(|h| format!("{h}:{}", emu.urls().http_port));
    let portal = emu
        .create_portal(PortalSpec {
            domain,
            ..Default::default()
        })
        .unwrap();
    let info = emu
        .install(
            &portal.member_id,
            InstallSpec {
                client_id: app.client_id.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    let db = Db::new().await;
    let member = MemberId::parse(&portal.member_id).unwrap();
    let t = &info.tokens;
    let tokens = store::TokenSet {
        access: AccessToken::parse(&t.access_token).unwrap(),
        refresh: RefreshToken::parse(&t.refresh_token).unwrap(),
        expires_at: t.expires * 1000,
        scope: t.scope.clone(),
        user_id: Some(t.user_id as i64),
    };
    let now = Clock::system().now_ms();
    db.store
        .record_verified_install(
            &VerifiedInstall {
                member_id: &member,
                domain: &PortalDomain::parse(&portal.domain).unwrap(),
                client_endpoint: &portal.client_endpoint,
                server_endpoint: &portal.server_endpoint,
                application_token: Some(&ApplicationToken::parse(&t.application_token).unwrap()),
                flow: "event",
                app_status: Some(&t.status),
                language: Some("en"),
                tokens: &tokens,
            },
            now,
        )
        .await
        .unwrap();
    db.store
        .set_status(
            member.as_str(),
            PortalStatus::Installed,
            None,
            "engine",
            now,
        )
        .await
        .unwrap();
    Fixture {
        emu,
        db,
        member,
        portal,
        client_id: app.client_id,
        client_secret: app.client_secret,
        access: t.access_token.clone(),
        refresh: t.refresh_token.clone(),
    }
}

impl Fixture {
    /// A client configuration for this farm: loopback allowed over http,
    /// fast retries, no rate limit to speak of.
    pub fn config(&self) -> ClientConfig {
        let mut resolve = Vec::new();
        let lo = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        if let Some((host, _)) = self.portal.domain.rsplit_once(':')
            && host.ends_with(".localhost")
        {
            resolve.push((host.to_owned(), lo));
        }
        ClientConfig {
            oauth: Some(OAuthApp::new(
                self.emu.oauth_url(),
                &self.client_id,
                ClientSecret::parse(&self.client_secret).unwrap(),
            )),
            allow: AllowList::new(["127.0.0.1", "*.localhost"], true),
            rate: RateConfig::uniform(10_000.0, 10_000),
            retry: RetryPolicy {
                min_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
                max_retries: 3,
                jitter: true,
            },
            timeouts: Timeouts {
                connect: Duration::from_secs(2),
                request: Duration::from_secs(10),
                call: Duration::from_secs(30),
            },
            resolve,
            ..ClientConfig::default()
        }
    }

    pub fn env(&self) -> Arc<StoreEnv> {
        Arc::new(StoreEnv {
            store: self.db.store.clone(),
        })
    }

    /// A client over this fixture's store (limiter in the store too).
    pub fn client(&self, cfg: ClientConfig) -> Client {
        let env = self.env();
        Client::new(cfg, env.clone(), env, Clock::system()).unwrap()
    }

    pub fn portal_client(&self) -> PortalClient {
        self.client(self.config()).portal(&self.member)
    }

    pub fn stat(&self, key: &str) -> u64 {
        self.emu.stats()[key].as_u64().unwrap_or(0)
    }

    /// Requests the emulator counted for one method.
    pub fn method_count(&self, method: &str) -> u64 {
        self.emu.stats()["requests_per_method"][method]
            .as_u64()
            .unwrap_or(0)
    }

    /// Switches the portal's leaky bucket on with this size.
    pub fn set_bucket(&self, drain: f64, burst: f64) {
        self.emu
            .set_limits(
                &self.member.to_string(),
                LimitsSpec {
                    rate_limit: Some(true),
                    drain: Some(drain),
                    burst: Some(burst),
                    reset: true,
                    ..Default::default()
                },
            )
            .unwrap();
    }

    /// Deals on the emulated portal, added outside REST.
    pub fn add_deals(&self, count: u64) {
        self.emu
            .changes(
                &self.member.to_string(),
                b24emu::ChangeSpec {
                    count,
                    ..Default::default()
                },
            )
            .unwrap();
    }
}

impl Fixture {
    /// Spends a refresh token behind the client's back (a stale copy used
    /// elsewhere); returns the HTTP status of the token endpoint.
    pub async fn spend_refresh_token(&self, refresh: &str) -> u16 {
        let body = wire::form::encode(
            &wire::FormMap::new()
                .with("grant_type", "refresh_token")
                .with("client_id", self.client_id.as_str())
                .with("client_secret", self.client_secret.as_str())
                .with("refresh_token", refresh),
        );
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}/oauth/token/", self.emu.oauth_url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

pub fn deal_id(v: &Value) -> u64 {
    match &v["ID"] {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_u64().unwrap(),
        other => panic!("deal without ID: {other}"),
    }
}
