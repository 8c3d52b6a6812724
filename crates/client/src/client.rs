//! The client: one per process (one HTTP pool, one limiter, one clock),
//! handing out cheap [`PortalClient`]s, one per portal or webhook.
//!
//! Every logical call runs the same loop ([`PortalClient::execute`]):
//! refuse without the network if the portal may not be called, get a token
//! that is not about to expire, wait for the method's operating budget and
//! for a request slot, send one request, then decide from the answer —
//! done, refresh and re-issue, follow a checked rename, back off and retry
//! (only when repeating cannot duplicate a write), or fail with a typed error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tracing::{debug, info, trace, warn};
use wire::rest::parse_response;
use wire::{ApiError, Endpoint, ErrorClass, MemberId, PortalDomain, RestError, Success};

use crate::clock::Clock;
use crate::config::{ClientConfig, MAX_REQUEST_TIMEOUT};
use crate::env::{Bucket, CredentialStore, RateLimiter, StoredCredentials};
use crate::error::{Confirmation, Error, TransportKind};
use crate::memory::MemoryRateLimiter;

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Overrides the method-name convention of [`is_read_method`]: `true`
    /// lets the client repeat the call after a 5xx or a timeout.
    pub idempotent: Option<bool>,
    /// Overall deadline of this call (default [`crate::Timeouts::call`]).
    pub deadline: Option<Duration>,
}

/// Counters, for metrics. Cumulative since the client was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent to portals (token requests not included).
    pub requests: u64,
    /// Token requests sent to the OAuth server.
    pub refreshes: u64,
    /// Refreshes that failed, `invalid_grant` included.
    pub refresh_failures: u64,
    /// Portals marked as needing re-authorisation.
    pub reauth_marked: u64,
    /// Attempts repeated after a retryable failure.
    pub retries: u64,
    /// `QUERY_LIMIT_EXCEEDED` answers received.
    pub rate_limited: u64,
    /// `OPERATION_TIME_LIMIT` answers received.
    pub operating_limited: u64,
    /// Renames followed and recorded.
    pub renames: u64,
    /// Logical calls that succeeded.
    pub ok: u64,
    /// Logical calls that ended with a Bitrix24 error.
    pub api_errors: u64,
    /// Logical calls that ended with a transport error, deadline or bad response.
    pub transport_errors: u64,
    /// Times a portal's retry-storm breaker opened.
    pub breaker_trips: u64,
    /// Calls refused because a portal's breaker was open.
    pub breaker_refusals: u64,
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
    reauth_marked: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    operating_limited: AtomicU64,
    renames: AtomicU64,
    ok: AtomicU64,
    api_errors: AtomicU64,
    transport_errors: AtomicU64,
    breaker_trips: AtomicU64,
    breaker_refusals: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) struct Inner {
    pub(crate) cfg: ClientConfig,
    http: reqwest::Client,
    store: Option<Arc<dyn CredentialStore>>,
    limiter: Arc<dyn RateLimiter>,
    pub(crate) clock: Clock,
    /// This client's name as a refresh-lease owner (random per client, so
    /// two clients in one process behave as two processes would).
    owner: String,
    portals: Mutex<HashMap<MemberId, Arc<PortalState>>>,
    stats: Stats,
}

/// What one portal (or webhook) needs across calls.
#[derive(Default)]
pub(crate) struct PortalState {
    /// The last credentials read or written, with their version.
    creds: Mutex<Option<StoredCredentials>>,
    /// In-process single flight of refreshes.
    refresh: tokio::sync::Mutex<()>,
    /// Set on `invalid_grant`: refuse calls without asking the store.
    dead: AtomicBool,
    /// Operating-time budget per method (lower case).
    budgets: Mutex<HashMap<String, Budget>>,
    /// When this process last penalised the bucket (dedupes a burst of 503s).
    last_penalty_ms: AtomicI64,
    /// Rate factor after 503s and when it was set (see [`crate::RateConfig::recovery`]).
    slow: Mutex<(f64, i64)>,
    /// Webhook mode: the base URL (`…/rest/{user}/{code}/`). Secret.
    webhook: Mutex<Option<Endpoint>>,
    /// Retry times in the breaker's window, and until when it is open.
    breaker: Mutex<(std::collections::VecDeque<i64>, i64)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Budget {
    operating: f64,
    /// Unix seconds.
    reset_at: i64,
    /// Set after an `OPERATION_TIME_LIMIT`: no call before this (ms).
    blocked_until_ms: i64,
}

/// The REST client of a process. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

fn random_owner() -> String {
    let mut b = [0u8; 8];
    // A failing OS RNG only weakens lease names, which are not secrets.
    let _ = getrandom::fill(&mut b);
    format!("client-{}", hex::encode(b))
}

enum Mode {
    OAuth(MemberId),
    Webhook { key: String },
}

/// Calls for one portal (OAuth, through the credential store) or one
/// incoming webhook. Cheap to clone.
#[derive(Clone)]
pub struct PortalClient {
    pub(crate) inner: Arc<Inner>,
    state: Arc<PortalState>,
    mode: Arc<Mode>,
}

impl std::fmt::Debug for PortalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.mode {
            Mode::OAuth(m) => write!(f, "PortalClient({m})"),
            Mode::Webhook { key } => write!(f, "PortalClient(webhook {key})"),
        }
    }
}

impl Client {
    /// A client for OAuth portals whose records and credentials live in
    /// `store`, with request slots from `limiter`.
    pub fn new(
        cfg: ClientConfig,
        store: Arc<dyn CredentialStore>,
        limiter: Arc<dyn RateLimiter>,
        clock: Clock,
    ) -> Result<Client, Error> {
        Self::build(cfg, Some(store), limiter, clock)
    }

    /// A client for incoming webhooks only (no credential store).
    pub fn webhooks_only(
        cfg: ClientConfig,
        limiter: Arc<dyn RateLimiter>,
        clock: Clock,
    ) -> Result<Client, Error> {
        Self::build(cfg, None, limiter, clock)
    }

    /// The CLI's `--webhook URL` mode in one step: an in-memory limiter,
    /// the system clock, and a [`PortalClient`] for the webhook.
    pub fn for_webhook(url: &str, cfg: ClientConfig) -> Result<PortalClient, Error> {
        let client = Self::webhooks_only(cfg, Arc::new(MemoryRateLimiter::new()), Clock::system())?;
        client.webhook(url)
    }

    fn build(
        mut cfg: ClientConfig,
        store: Option<Arc<dyn CredentialStore>>,
        limiter: Arc<dyn RateLimiter>,
        clock: Clock,
    ) -> Result<Client, Error> {
        cfg.timeouts.request = cfg.timeouts.request.min(MAX_REQUEST_TIMEOUT);
        if let Some(o) = &cfg.oauth {
            let url = reqwest::Url::parse(&o.token_url)
                .map_err(|_| Error::Config("oauth token URL does not parse".into()))?;
            if !cfg.allow.allows_scheme(url.scheme()) {
                return Err(Error::Config(
                    "oauth token URL: plain http is not allowed".into(),
                ));
            }
        }
        // reqwest is built without a default TLS crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            // Never follow a redirect: a 302 is a portal rename, checked
            // against the allow-list first (protocol §6.2).
            .redirect(reqwest::redirect::Policy::none())
            // Outbound hosts are allow-listed; a proxy from the environment
            // would be an unlisted hop.
            .no_proxy()
            .connect_timeout(cfg.timeouts.connect)
            .user_agent(cfg.user_agent.clone());
        for (name, addr) in &cfg.resolve {
            b = b.resolve(name, *addr);
        }
        let http = b
            .build()
            .map_err(|e| Error::Config(format!("http client: {}", e.without_url())))?;
        Ok(Client {
            inner: Arc::new(Inner {
                cfg,
                http,
                store,
                limiter,
                clock,
                owner: random_owner(),
                portals: Mutex::new(HashMap::new()),
                stats: Stats::default(),
            }),
        })
    }

    /// Calls for an OAuth portal known to the credential store.
    pub fn portal(&self, member_id: &MemberId) -> PortalClient {
        let mut map = self.inner.portals.lock().unwrap_or_else(|e| e.into_inner());
        let state = map.entry(member_id.clone()).or_default().clone();
        PortalClient {
            inner: self.inner.clone(),
            state,
            mode: Arc::new(Mode::OAuth(member_id.clone())),
        }
    }

    /// Calls through an incoming webhook, `https://<portal>/rest/{user_id}/{code}/`
    /// (no refresh: the code is the credential). The URL is a secret: it
    /// appears in no error or log line, only its host does.
    pub fn webhook(&self, url: &str) -> Result<PortalClient, Error> {
        let endpoint = parse_webhook(url)?;
        let key = format!("hook:{}", endpoint.host());
        let state = Arc::new(PortalState::default());
        *state.webhook.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint);
        Ok(PortalClient {
            inner: self.inner.clone(),
            state,
            mode: Arc::new(Mode::Webhook { key }),
        })
    }

    pub fn stats(&self) -> ClientStats {
        self.inner.stats_snapshot()
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Asks the configured OAuth server what it knows of `token`
    /// (`app.info`, protocol §5.12): the gateway's install verification.
    /// Never goes to a host from a request or a response.
    pub async fn oauth_app_info(&self, token: &wire::AccessToken) -> Result<Value, Error> {
        crate::oauth::app_info(
            &self.inner.http,
            self.inner.cfg.oauth.as_ref(),
            token,
            self.inner.cfg.timeouts.request,
        )
        .await
    }
}

impl Inner {
    fn stats_snapshot(&self) -> ClientStats {
        let s = &self.stats;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            requests: l(&s.requests),
            refreshes: l(&s.refreshes),
            refresh_failures: l(&s.refresh_failures),
            reauth_marked: l(&s.reauth_marked),
            retries: l(&s.retries),
            rate_limited: l(&s.rate_limited),
            operating_limited: l(&s.operating_limited),
            renames: l(&s.renames),
            ok: l(&s.ok),
            api_errors: l(&s.api_errors),
            transport_errors: l(&s.transport_errors),
            breaker_trips: l(&s.breaker_trips),
            breaker_refusals: l(&s.breaker_refusals),
        }
    }

    fn store(&self) -> Result<&Arc<dyn CredentialStore>, Error> {
        self.store
            .as_ref()
            .ok_or_else(|| Error::Config("this client has no credential store".into()))
    }
}

/// Parses an incoming-webhook URL; errors never echo it (it is a secret).
fn parse_webhook(url: &str) -> Result<Endpoint, Error> {
    let bad = || {
        Error::Invalid("webhook URL must look like https://<portal>/rest/<user_id>/<code>/".into())
    };
    let e = Endpoint::parse(url).map_err(|_| bad())?;
    let path = e
        .as_str()
        .split_once("://")
        .and_then(|(_, r)| r.split_once('/'))
        .map_or("", |(_, p)| p);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let n = segs.len();
    let ok = n >= 3
        && segs[n - 3] == "rest"
        && segs[n - 2].bytes().all(|b| b.is_ascii_digit())
        && segs[n - 1].bytes().all(|b| b.is_ascii_alphanumeric());
    if ok { Ok(e) } else { Err(bad()) }
}

/// Whether a method only reads, by the platform's naming convention, so
/// that repeating it after a 5xx or a timeout cannot duplicate a write.
/// `event.offline.get` is excluded: it reserves (and by default clears)
/// queue rows (protocol §5.6).
pub fn is_read_method(method: &str) -> bool {
    let m = method.to_ascii_lowercase();
    const EXACT: &[&str] = &[
        "scope",
        "methods",
        "method.get",
        "feature.get",
        "app.info",
        "profile",
        "events",
        "event.get",
        "placement.get",
        "placement.list",
        "user.admin",
        "user.current",
        "server.time",
        "app.option.get",
        "user.option.get",
    ];
    if m == "event.offline.get" {
        return false;
    }
    EXACT.contains(&m.as_str())
        || m.ends_with(".get")
        || m.ends_with(".list")
        || m.ends_with(".fields")
        || m.ends_with(".search")
}

/// Method names go into the URL path: letters, digits, `.` and `_` only.
pub(crate) fn check_method(method: &str) -> Result<(), Error> {
    let ok = !method.is_empty()
        && method.len() <= 128
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "method names are letters, digits, '.' and '_'".into(),
        ))
    }
}

pub(crate) fn params_map(params: Value) -> Result<Map<String, Value>, Error> {
    match params {
        Value::Null => Ok(Map::new()),
        Value::Object(m) => Ok(m),
        _ => Err(Error::Invalid("params must be a JSON object".into())),
    }
}

/// `scheme://host[:port]` of a URL-ish string, for messages.
fn origin(scheme: &str, host: &str) -> String {
    format!("{scheme}://{host}")
}

fn split_host_port(hostport: &str) -> &str {
    hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
}

/// One logical request as [`PortalClient::execute`] runs it.
pub(crate) struct Req {
    /// The top-level method (`batch` for batches).
    pub method: String,
    pub params: Map<String, Value>,
    pub idempotent: bool,
    /// Methods whose operating budget the request spends (the sub-methods of
    /// a batch; the `batch` wrapper itself is not counted, §5.15).
    pub budget_methods: Vec<String>,
    pub deadline_ms: i64,
    /// Send with this access token instead of the stored one, and never
    /// refresh it: a confirmed method is approved for one token only (§9).
    pub pinned: Option<wire::AccessToken>,
}

/// Where a request goes.
struct Target {
    endpoint: Endpoint,
    bucket: Bucket,
    /// Rate-limit key: the member id, or `hook:<host>`.
    key: String,
}

/// What one HTTP attempt gave.
enum Attempt {
    Done(Success),
    Api(ApiError),
    Redirect(String),
    Response(RestError),
    Transport(TransportKind, String),
}

impl PortalClient {
    /// The portal's member id (OAuth mode).
    pub fn member_id(&self) -> Option<&MemberId> {
        match &*self.mode {
            Mode::OAuth(m) => Some(m),
            Mode::Webhook { .. } => None,
        }
    }

    /// Calls `method` with `params` (a JSON object, or null).
    pub async fn call(&self, method: &str, params: Value) -> Result<Success, Error> {
        self.call_with(method, params, &CallOptions::default())
            .await
    }

    pub async fn call_with(
        &self,
        method: &str,
        params: Value,
        opts: &CallOptions,
    ) -> Result<Success, Error> {
        check_method(method)?;
        if method.eq_ignore_ascii_case("batch") {
            return Err(Error::Invalid("use PortalClient::batch for batch".into()));
        }
        let req = Req {
            method: method.to_owned(),
            params: params_map(params)?,
            idempotent: opts.idempotent.unwrap_or_else(|| is_read_method(method)),
            budget_methods: vec![method.to_ascii_lowercase()],
            deadline_ms: self.deadline_ms(opts),
            pinned: None,
        };
        let r = self.execute(&req).await;
        self.note_outcome(&r);
        let s = r?;
        if let Some(t) = &s.time {
            self.note_time(method, t);
        }
        Ok(s)
    }

    /// Calls `method` with exactly `token` — the token a method
    /// confirmation was granted for (protocol §9: the approval binds to the
    /// access token, and a refreshed one would need a new approval). The
    /// token is not refreshed: if it expired, the call fails with that error.
    /// Not repeated after a 5xx (the confirmed calls are writes as often as not).
    pub async fn call_pinned(
        &self,
        method: &str,
        params: Value,
        token: &wire::AccessToken,
    ) -> Result<Success, Error> {
        check_method(method)?;
        let req = Req {
            method: method.to_owned(),
            params: params_map(params)?,
            idempotent: false,
            budget_methods: vec![method.to_ascii_lowercase()],
            deadline_ms: self.deadline_ms(&CallOptions::default()),
            pinned: Some(token.clone()),
        };
        let r = self.execute(&req).await;
        self.note_outcome(&r);
        r
    }

    /// Counts how a logical call ended (metrics: REST calls by outcome).
    pub(crate) fn note_outcome<T>(&self, r: &Result<T, Error>) {
        let s = &self.inner.stats;
        match r {
            Ok(_) => bump(&s.ok),
            Err(
                Error::Api { .. } | Error::ConfirmationWaiting(_) | Error::ConfirmationDenied(_),
            ) => bump(&s.api_errors),
            Err(Error::Transport { .. } | Error::Deadline { .. } | Error::Response { .. }) => {
                bump(&s.transport_errors)
            }
            Err(_) => {}
        }
    }

    /// Refuses without the network while this portal's breaker is open.
    fn breaker_check(&self) -> Result<(), Error> {
        let until = self
            .state
            .breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1;
        if until > self.inner.clock.now_ms() {
            bump(&self.inner.stats.breaker_refusals);
            return Err(Error::CircuitOpen {
                portal: self.key_for_log().to_owned(),
                until_ms: until,
            });
        }
        Ok(())
    }

    /// A retry storm — more than `breaker.max_retries` retries within
    /// `breaker.window` for one portal — opens its breaker for
    /// `breaker.cooldown`: its outbound work pauses, it is logged once and
    /// counted, and it closes by itself.
    fn breaker_note_retry(&self) {
        let cfg = &self.inner.cfg.breaker;
        if cfg.max_retries == 0 {
            return;
        }
        let now = self.inner.clock.now_ms();
        let mut b = self.state.breaker.lock().unwrap_or_else(|e| e.into_inner());
        let window = cfg.window.as_millis() as i64;
        b.0.push_back(now);
        while b.0.front().is_some_and(|t| *t < now - window) {
            b.0.pop_front();
        }
        if b.0.len() > cfg.max_retries && b.1 <= now {
            b.1 = now + cfg.cooldown.as_millis() as i64;
            b.0.clear();
            bump(&self.inner.stats.breaker_trips);
            tracing::warn!(
                portal = self.key_for_log(),
                cooldown_ms = cfg.cooldown.as_millis() as u64,
                "retry storm: outbound calls to this portal paused"
            );
        }
    }

    pub(crate) fn deadline_ms(&self, opts: &CallOptions) -> i64 {
        let d = opts.deadline.unwrap_or(self.inner.cfg.timeouts.call);
        self.inner.clock.now_ms() + d.as_millis() as i64
    }

    fn key_for_log(&self) -> &str {
        match &*self.mode {
            Mode::OAuth(m) => m.as_str(),
            Mode::Webhook { key } => key,
        }
    }

    /// The call loop (see the module documentation).
    pub(crate) async fn execute(&self, req: &Req) -> Result<Success, Error> {
        let inner = &self.inner;
        let mut backoff = inner.cfg.retry.backoff();
        let mut refreshed = false;
        let mut redirects = 0;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.breaker_check()?;
            let target = self.target().await?;
            let creds = match &*self.mode {
                Mode::OAuth(m) => Some(self.credentials(m, req.deadline_ms).await?),
                Mode::Webhook { .. } => None,
            };
            self.wait_budget(req).await?;
            self.wait_slot(&target, req).await?;
            let now = inner.clock.now_ms();
            let left = Duration::from_millis((req.deadline_ms - now).max(1) as u64);
            let mut body = req.params.clone();
            if let Some(t) = &req.pinned {
                body.insert("auth".into(), Value::String(t.expose_secret().to_owned()));
            } else if let Some(c) = &creds {
                body.insert(
                    "auth".into(),
                    Value::String(c.tokens.access.expose_secret().to_owned()),
                );
            }
            let url = format!("{}{}", target.endpoint, req.method);
            debug!(portal = self.key_for_log(), method = %req.method, attempt, "REST request");
            let timeout = inner.cfg.timeouts.request.min(left);
            let outcome = self.send(&url, &body, timeout).await;
            drop(body);
            let (err, may_retry) = match outcome {
                Attempt::Done(s) => {
                    trace!(portal = self.key_for_log(), method = %req.method, "REST success");
                    return Ok(s);
                }
                Attempt::Redirect(location) => {
                    redirects += 1;
                    if redirects > 5 {
                        return Err(Error::Redirect("more than 5 redirects".into()));
                    }
                    self.follow_rename(&target, &req.method, &location).await?;
                    continue;
                }
                Attempt::Api(e) => {
                    let class = e.class();
                    let err = Error::Api {
                        method: req.method.clone(),
                        error: e.clone(),
                    };
                    match class {
                        ErrorClass::Refresh if req.pinned.is_some() => return Err(err),
                        ErrorClass::Refresh if !refreshed => {
                            if let (Mode::OAuth(m), Some(c)) = (&*self.mode, &creds) {
                                refreshed = true;
                                self.refresh(m, c.version, req.deadline_ms).await?;
                                continue;
                            }
                            return Err(err);
                        }
                        // A token the portal does not know: after a reinstall
                        // another process may have stored a new pair. Use it
                        // once if there is one; otherwise the error stands.
                        ErrorClass::PortalGone
                            if !refreshed && e.code == wire::ErrorCode::InvalidToken =>
                        {
                            if let (Mode::OAuth(m), Some(c)) = (&*self.mode, &creds)
                                && let Some(newer) = inner.store()?.load(m).await?
                                && newer.version > c.version
                            {
                                refreshed = true;
                                self.set_cached(newer);
                                continue;
                            }
                            return Err(err);
                        }
                        // Rejected before processing (§8.1): safe to repeat.
                        ErrorClass::RateLimited => {
                            bump(&inner.stats.rate_limited);
                            self.penalise(&target).await;
                            (err, true)
                        }
                        // Rejected before processing (§8.2): the next
                        // attempt waits for the reset, or fails if that is
                        // past the deadline.
                        ErrorClass::OperatingLimit => {
                            bump(&inner.stats.operating_limited);
                            self.block_methods(&req.budget_methods);
                            (err, true)
                        }
                        ErrorClass::ConfirmationWaiting | ErrorClass::ConfirmationDenied => {
                            let fp = match (&req.pinned, &creds, &inner.store) {
                                (Some(t), _, Some(s)) => s.fingerprint(t),
                                (None, Some(c), Some(s)) => s.fingerprint(&c.tokens.access),
                                _ => String::new(),
                            };
                            let c = Confirmation {
                                method: req.method.to_ascii_lowercase(),
                                token_fingerprint: fp,
                            };
                            return Err(if class == ErrorClass::ConfirmationWaiting {
                                Error::ConfirmationWaiting(c)
                            } else {
                                Error::ConfirmationDenied(c)
                            });
                        }
                        ErrorClass::RetryLater => (err, req.idempotent),
                        _ => return Err(err),
                    }
                }
                Attempt::Response(e) => {
                    let server_side = matches!(e, RestError::Http { status } if status >= 500);
                    let err = Error::Response {
                        method: req.method.clone(),
                        error: e,
                    };
                    (err, server_side && req.idempotent)
                }
                Attempt::Transport(kind, message) => {
                    let err = Error::Transport {
                        method: req.method.clone(),
                        kind,
                        message,
                    };
                    // Not sent at all: safe to repeat whatever the method.
                    (err, kind == TransportKind::Connect || req.idempotent)
                }
            };
            if !may_retry {
                debug!(portal = self.key_for_log(), method = %req.method, error = %err, "not retried");
                return Err(err);
            }
            let Some(delay) = backoff.next() else {
                return Err(err);
            };
            if inner.clock.now_ms() + delay.as_millis() as i64 >= req.deadline_ms {
                return Err(err);
            }
            bump(&inner.stats.retries);
            self.breaker_note_retry();
            debug!(portal = self.key_for_log(), method = %req.method, error = %err, delay_ms = delay.as_millis() as u64, "retrying");
            inner.clock.sleep(delay).await;
        }
    }

    /// Sends one request. The body carries the token; it is never logged.
    async fn send(&self, url: &str, body: &Map<String, Value>, timeout: Duration) -> Attempt {
        let bytes = match serde_json::to_vec(body) {
            Ok(b) => b,
            Err(_) => {
                return Attempt::Transport(TransportKind::Connect, "unserialisable params".into());
            }
        };
        bump(&self.inner.stats.requests);
        let sent = self
            .inner
            .http
            .post(url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(bytes)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return transport(e),
        };
        let status = resp.status().as_u16();
        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            let loc = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return match loc {
                Some(l) => Attempt::Redirect(l),
                None => Attempt::Response(RestError::Http { status }),
            };
        }
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return transport(e),
        };
        trace!(status, bytes = body.len(), "REST response");
        match parse_response(status, &body) {
            Ok(s) => Attempt::Done(s),
            Err(RestError::Api(e)) => Attempt::Api(e),
            Err(e) => Attempt::Response(e),
        }
    }

    /// Where to send, after the refusals that need no network.
    async fn target(&self) -> Result<Target, Error> {
        let inner = &self.inner;
        let (endpoint, bucket, key) = match &*self.mode {
            Mode::OAuth(m) => {
                if self.state.dead.load(Ordering::Relaxed) {
                    return Err(Error::NeedsReauth(m.clone()));
                }
                let t = inner
                    .store()?
                    .portal(m)
                    .await?
                    .ok_or_else(|| Error::UnknownPortal(m.clone()))?;
                if !t.rest_allowed {
                    if t.status == "needs_reauth" {
                        return Err(Error::NeedsReauth(m.clone()));
                    }
                    return Err(Error::PortalInactive {
                        member_id: m.clone(),
                        status: t.status,
                    });
                }
                (
                    t.client_endpoint,
                    inner.cfg.rate.bucket(t.plan),
                    m.as_str().to_owned(),
                )
            }
            Mode::Webhook { key } => {
                let e = self
                    .state
                    .webhook
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .ok_or_else(|| Error::Config("webhook without URL".into()))?;
                (
                    e,
                    inner.cfg.rate.bucket(inner.cfg.webhook_plan),
                    key.clone(),
                )
            }
        };
        self.check_allowed(&endpoint)?;
        Ok(Target {
            endpoint,
            bucket,
            key,
        })
    }

    fn check_allowed(&self, endpoint: &Endpoint) -> Result<(), Error> {
        let allow = &self.inner.cfg.allow;
        let scheme = endpoint.as_str().split("://").next().unwrap_or_default();
        let hostport = endpoint.host();
        let host = split_host_port(&hostport);
        if allow.allows_scheme(scheme) && allow.allows_host(host) {
            Ok(())
        } else {
            Err(Error::HostNotAllowed(origin(scheme, &hostport)))
        }
    }

    /// Usable credentials: the cached ones unless about to expire, else
    /// the store's, else a refresh.
    async fn credentials(
        &self,
        member_id: &MemberId,
        deadline_ms: i64,
    ) -> Result<StoredCredentials, Error> {
        let cached = self.cached();
        if let Some(c) = &cached
            && !self.expiring(c)
        {
            return Ok(c.clone());
        }
        let seen = match cached {
            Some(c) => c.version,
            None => {
                let _g = self.state.refresh.lock().await;
                if let Some(c) = self.cached() {
                    c.version
                } else {
                    let c = self
                        .inner
                        .store()?
                        .load(member_id)
                        .await?
                        .ok_or_else(|| Error::NoCredentials(member_id.clone()))?;
                    self.set_cached(c.clone());
                    if !self.expiring(&c) {
                        return Ok(c);
                    }
                    c.version
                }
            }
        };
        self.refresh(member_id, seen, deadline_ms).await
    }

    fn cached(&self) -> Option<StoredCredentials> {
        self.state
            .creds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_cached(&self, c: StoredCredentials) {
        *self.state.creds.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    fn expiring(&self, c: &StoredCredentials) -> bool {
        let margin = self.inner.cfg.refresh_margin.as_millis() as i64;
        c.tokens.expires_at_ms - margin <= self.inner.clock.now_ms()
    }

    /// Replaces the credentials at version `seen`, which are expired or were
    /// refused. Single-flight in the process (a mutex per portal) and across
    /// processes (the store's lease, re-read after locking): whoever finds
    /// newer credentials than `seen` uses them instead of spending the
    /// rotating refresh token a second time (protocol §7.4).
    pub(crate) async fn refresh(
        &self,
        member_id: &MemberId,
        seen: i64,
        deadline_ms: i64,
    ) -> Result<StoredCredentials, Error> {
        let inner = &self.inner;
        let store = inner.store()?;
        let _g = self.state.refresh.lock().await;
        if self.state.dead.load(Ordering::Relaxed) {
            return Err(Error::NeedsReauth(member_id.clone()));
        }
        if let Some(c) = self.cached()
            && c.version > seen
            && !self.expiring(&c)
        {
            return Ok(c);
        }
        let mut stored = store
            .load(member_id)
            .await?
            .ok_or_else(|| Error::NoCredentials(member_id.clone()))?;
        if stored.version > seen && !self.expiring(&stored) {
            self.set_cached(stored.clone());
            return Ok(stored);
        }
        let lease = inner.cfg.refresh_lease.as_millis() as i64;
        let mut poll = Duration::from_millis(20);
        loop {
            let now = inner.clock.now_ms();
            if store
                .try_lock_refresh(member_id, &inner.owner, now, lease)
                .await?
            {
                break;
            }
            // A sibling process is refreshing: wait for its result.
            if now + poll.as_millis() as i64 >= deadline_ms {
                return Err(Error::Deadline {
                    method: "oauth refresh".into(),
                });
            }
            inner.clock.sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(250));
            if let Some(c) = store.load(member_id).await?
                && c.version > stored.version
            {
                if !self.expiring(&c) {
                    debug!(portal = %member_id, "a sibling refreshed the token");
                    self.set_cached(c.clone());
                    return Ok(c);
                }
                stored = c;
            }
        }
        // Re-read under the lease: a sibling may have rotated the pair
        // between our read and our lock.
        let current = store
            .load(member_id)
            .await?
            .ok_or_else(|| Error::NoCredentials(member_id.clone()))?;
        if current.version > seen && !self.expiring(&current) {
            store.release_refresh_lock(member_id, &inner.owner).await?;
            self.set_cached(current.clone());
            return Ok(current);
        }
        let now = inner.clock.now_ms();
        let left = Duration::from_millis((deadline_ms - now).max(1) as u64);
        bump(&inner.stats.refreshes);
        let got = crate::oauth::refresh(
            &inner.http,
            inner.cfg.oauth.as_ref(),
            &current.tokens.refresh,
            inner.cfg.timeouts.request.min(left),
            now,
        )
        .await;
        let tokens = match got {
            Ok(t) => t,
            Err(crate::oauth::RefreshError::Refused(code)) => {
                bump(&inner.stats.refresh_failures);
                store.release_refresh_lock(member_id, &inner.owner).await?;
                self.state.dead.store(true, Ordering::Relaxed);
                let reason = format!("refresh refused: {code}");
                store
                    .mark_needs_reauth(member_id, &reason, inner.clock.now_ms())
                    .await?;
                bump(&inner.stats.reauth_marked);
                warn!(portal = %member_id, code = %code, "refresh token refused; portal needs re-authorisation");
                return Err(Error::NeedsReauth(member_id.clone()));
            }
            Err(crate::oauth::RefreshError::Other(e)) => {
                bump(&inner.stats.refresh_failures);
                store.release_refresh_lock(member_id, &inner.owner).await?;
                return Err(e);
            }
        };
        let stored_ok = store
            .finish_refresh(
                member_id,
                &inner.owner,
                current.version,
                &tokens,
                inner.clock.now_ms(),
            )
            .await?;
        let fresh = store
            .load(member_id)
            .await?
            .ok_or_else(|| Error::NoCredentials(member_id.clone()))?;
        if !stored_ok && fresh.version <= current.version {
            // Our lease lapsed and nobody stored anything: the pair we got is
            // not persisted, so it is not used (the next call retries).
            return Err(Error::Refresh("refresh lease lapsed before storing".into()));
        }
        info!(portal = %member_id, version = fresh.version, "token refreshed");
        self.set_cached(fresh.clone());
        Ok(fresh)
    }

    /// Waits until none of the request's methods is near its operating
    /// budget, or fails when that is past the deadline (§8.2, §8.4).
    async fn wait_budget(&self, req: &Req) -> Result<(), Error> {
        let cfg = &self.inner.cfg.operating;
        let limit = cfg.budget.as_secs_f64() * cfg.threshold;
        let slack = cfg.reset_slack.as_millis() as i64;
        let now = self.inner.clock.now_ms();
        let mut until = 0i64;
        let mut which = None;
        {
            let budgets = self.state.budgets.lock().unwrap_or_else(|e| e.into_inner());
            for m in &req.budget_methods {
                let Some(b) = budgets.get(m) else { continue };
                let mut at = b.blocked_until_ms;
                if b.operating >= limit && b.reset_at * 1000 + slack > now {
                    at = at.max(b.reset_at * 1000 + slack);
                }
                if at > now && at > until {
                    until = at;
                    which = Some((m.clone(), b.reset_at.max(at / 1000)));
                }
            }
        }
        let Some((method, reset_at)) = which else {
            return Ok(());
        };
        if until >= req.deadline_ms {
            return Err(Error::OperatingLimit { method, reset_at });
        }
        debug!(portal = self.key_for_log(), method = %method, wait_ms = until - now, "waiting for the operating budget");
        self.inner.clock.sleep_until(until).await;
        let mut budgets = self.state.budgets.lock().unwrap_or_else(|e| e.into_inner());
        for m in &req.budget_methods {
            if let Some(b) = budgets.get_mut(m)
                && b.reset_at * 1000 + slack <= until
            {
                *b = Budget::default();
            }
        }
        Ok(())
    }

    /// Records a method's `time.operating` / `operating_reset_at`.
    pub(crate) fn note_time(&self, method: &str, t: &wire::Time) {
        let (Some(op), Some(reset)) = (t.operating, t.operating_reset_at) else {
            return;
        };
        let mut budgets = self.state.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let b = budgets.entry(method.to_ascii_lowercase()).or_default();
        b.operating = op;
        b.reset_at = reset;
    }

    /// After `OPERATION_TIME_LIMIT`: the methods wait until the known reset,
    /// or a minute (one budget bucket) when none is known.
    pub(crate) fn block_methods(&self, methods: &[String]) {
        let now = self.inner.clock.now_ms();
        let slack = self.inner.cfg.operating.reset_slack.as_millis() as i64;
        let mut budgets = self.state.budgets.lock().unwrap_or_else(|e| e.into_inner());
        for m in methods {
            let b = budgets.entry(m.clone()).or_default();
            let known = b.reset_at * 1000 + slack;
            b.blocked_until_ms = if known > now { known } else { now + 60_000 };
        }
    }

    /// The bucket this process uses now: the configured one, slowed after
    /// `QUERY_LIMIT_EXCEEDED` and recovering exponentially.
    fn effective_bucket(&self, b: Bucket, now: i64) -> Bucket {
        let (factor, since) = *self.state.slow.lock().unwrap_or_else(|e| e.into_inner());
        if factor <= 0.0 || factor >= 1.0 {
            return b;
        }
        let window = self.inner.cfg.rate.recovery.as_millis().max(1) as f64;
        let f = (factor * 2f64.powf((now - since) as f64 / window)).min(1.0);
        Bucket {
            per_second: b.per_second * f,
            burst: ((f64::from(b.burst) * f).floor() as u32).max(1),
        }
    }

    /// Reserves a request slot and waits for it. A slot reserved before a
    /// `QUERY_LIMIT_EXCEEDED` was received is stale (it was planned at the
    /// old rate): reserve again at the slowed one.
    async fn wait_slot(&self, target: &Target, req: &Req) -> Result<(), Error> {
        loop {
            let now = self.inner.clock.now_ms();
            let bucket = self.effective_bucket(target.bucket, now);
            let wait = self.inner.limiter.reserve(&target.key, bucket, now).await?;
            if wait.is_zero() {
                return Ok(());
            }
            if now + wait.as_millis() as i64 >= req.deadline_ms {
                return Err(Error::Deadline {
                    method: req.method.clone(),
                });
            }
            trace!(
                portal = self.key_for_log(),
                wait_ms = wait.as_millis() as u64,
                "waiting for a request slot"
            );
            self.inner.clock.sleep(wait).await;
            if self.state.last_penalty_ms.load(Ordering::Relaxed) < now {
                return Ok(());
            }
        }
    }

    /// Treats the bucket as full after a `QUERY_LIMIT_EXCEEDED`, once per
    /// penalty window in this process.
    async fn penalise(&self, target: &Target) {
        let pause = self.inner.cfg.rate.penalty;
        let now = self.inner.clock.now_ms();
        let last = self.state.last_penalty_ms.load(Ordering::Relaxed);
        if now - last < pause.as_millis() as i64 {
            return;
        }
        self.state.last_penalty_ms.store(now, Ordering::Relaxed);
        let current =
            self.effective_bucket(target.bucket, now).per_second / target.bucket.per_second;
        *self.state.slow.lock().unwrap_or_else(|e| e.into_inner()) =
            ((current / 2.0).max(1.0 / 16.0), now);
        warn!(
            portal = self.key_for_log(),
            "QUERY_LIMIT_EXCEEDED: slowing down"
        );
        if let Err(e) = self
            .inner
            .limiter
            .penalise(&target.key, target.bucket, pause, now)
            .await
        {
            warn!(portal = self.key_for_log(), error = %e, "could not penalise the shared bucket");
        }
    }

    /// A 302: the portal was renamed (protocol §6.2). The new host must be
    /// allow-listed; then the new domain and endpoint are stored (with an
    /// audit entry) and the call is re-issued there.
    async fn follow_rename(
        &self,
        target: &Target,
        method: &str,
        location: &str,
    ) -> Result<(), Error> {
        let base = reqwest::Url::parse(&format!("{}{method}", target.endpoint))
            .map_err(|_| Error::Redirect("request URL does not parse".into()))?;
        let url = base
            .join(location)
            .map_err(|_| Error::Redirect("Location does not parse".into()))?;
        let scheme = url.scheme().to_owned();
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let hostport = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let allow = &self.inner.cfg.allow;
        if !allow.allows_scheme(&scheme) || !allow.allows_host(&host) {
            warn!(portal = self.key_for_log(), to = %origin(&scheme, &hostport), "redirect to a host outside the allow-list refused");
            return Err(Error::HostNotAllowed(origin(&scheme, &hostport)));
        }
        let path = url.path();
        let base_path = if path
            .to_ascii_lowercase()
            .ends_with(&method.to_ascii_lowercase())
        {
            &path[..path.len() - method.len()]
        } else {
            match path.rfind("/rest/") {
                Some(i) => &path[..i + "/rest/".len()],
                None => return Err(Error::Redirect("Location is not a REST URL".into())),
            }
        };
        let endpoint = Endpoint::parse(&format!("{scheme}://{hostport}{base_path}"))
            .map_err(|_| Error::Redirect("Location is not a REST URL".into()))?;
        if endpoint == target.endpoint {
            return Err(Error::Redirect("redirect loop".into()));
        }
        match &*self.mode {
            Mode::OAuth(m) => {
                let domain = PortalDomain::parse(&hostport)
                    .map_err(|_| Error::Redirect("Location host is not a domain".into()))?;
                let store = self.inner.store()?;
                let current = store.portal(m).await?;
                if current.is_some_and(|t| t.client_endpoint != endpoint) {
                    store
                        .record_rename(m, &domain, &endpoint, self.inner.clock.now_ms())
                        .await?;
                    bump(&self.inner.stats.renames);
                    info!(portal = %m, to = %domain, "portal renamed; endpoint updated");
                }
            }
            Mode::Webhook { .. } => {
                *self.state.webhook.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint);
                bump(&self.inner.stats.renames);
                info!(portal = self.key_for_log(), to = %origin(&scheme, &hostport), "webhook portal renamed");
            }
        }
        Ok(())
    }
}

/// A reqwest error as a transport failure, without its URL (a webhook URL
/// carries its secret code).
fn transport(e: reqwest::Error) -> Attempt {
    let kind = if e.is_connect() {
        TransportKind::Connect
    } else if e.is_timeout() {
        TransportKind::Timeout
    } else {
        TransportKind::Other
    };
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Attempt::Transport(kind, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_methods_by_convention() {
        for m in [
            "crm.deal.get",
            "crm.deal.list",
            "CRM.DEAL.FIELDS",
            "scope",
            "method.get",
            "feature.get",
            "app.info",
            "profile",
            "event.get",
            "placement.get",
        ] {
            assert!(is_read_method(m), "{m}");
        }
        for m in [
            "crm.deal.add",
            "crm.deal.update",
            "event.bind",
            "event.offline.get",
            "event.offline.clear",
            "placement.bind",
        ] {
            assert!(!is_read_method(m), "{m}");
        }
    }

    #[test]
    fn webhook_urls() {
        assert!(parse_webhook("https://a.bitrix24.com/rest/1/abc123/").is_ok());
        assert!(parse_webhook("http://127.0.0.1:8/p/acme/rest/12/xyz").is_ok());
        for bad in [
            "https://a.bitrix24.com/rest/",
            "https://a.bitrix24.com/rest/x/abc/",
            "ftp://a/rest/1/a/",
        ] {
            let e = parse_webhook(bad).unwrap_err().to_string();
            assert!(!e.contains("bitrix24.com"), "{e}");
        }
    }

    #[test]
    fn method_names_cannot_leave_the_path() {
        assert!(check_method("crm.deal.list").is_ok());
        assert!(check_method("../oauth/token").is_err());
        assert!(check_method("a?b").is_err());
        assert!(check_method("").is_err());
    }
}
