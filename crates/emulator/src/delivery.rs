//! Outgoing deliveries: the job a fired event becomes, its form encoding, the worker
//! that POSTs it without retries (reference §2.6), optional random delay and
//! reordering, and the delivery log.
//!
//! Nothing here takes the farm lock. The farm hands a hit's jobs over after the lock
//! is released (`Shared::with`); each job is encoded by the task that sends it; its
//! result goes to the [`DeliveryLog`], which has a mutex of its own. So a burst of
//! changes under the farm lock never stalls a delivery that completes meanwhile, and
//! completing deliveries never hold up a REST call (the emulator often shares a
//! two-thread runtime with the gateway under test).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::codec::{self, FormWriter};
use crate::config::DeliveryConfig;
use crate::ops::Shared;

/// What every delivery to one app on one portal shares: the identity part of
/// `auth[...]` (§2.3) and where the result is logged. Built under the farm lock once
/// and cached on the install (`Install::context`), then shared by its jobs.
#[derive(Debug)]
pub(crate) struct AppContext {
    pub member_id: String,
    pub client_id: String,
    /// The portal's name when this was built; with `domain`, `application_token` and
    /// `status` it is what can change, so a cached context is checked against them.
    pub portal_name: String,
    pub domain: String,
    pub client_endpoint: String,
    pub server_endpoint: String,
    pub application_token: String,
    pub status: String,
    /// Granted scopes, comma-separated (§2.3: real payloads use commas).
    pub scope: String,
}

/// The token part of `auth[...]`, present when the event has a user context (§2.4).
#[derive(Debug)]
pub(crate) struct UserAuth {
    pub access_token: String,
    pub expires: i64,
    pub expires_in: i64,
    pub user_id: u64,
    /// Only for ONAPPINSTALL, ONAPPUPDATE, ONAPPTEST, ONOFFLINEEVENT.
    pub refresh_token: Option<String>,
}

#[derive(Debug)]
pub(crate) enum Payload {
    /// An event: `event`, `event_handler_id`, `data`, `ts`, `auth`, in that order.
    Event { data: Value, user: Option<UserAuth> },
    /// A ready-made form (the §3.5 installer POST).
    Form(Map<String, Value>),
}

/// One POST handed to the worker once the farm lock is released.
#[derive(Debug)]
pub(crate) struct Job {
    pub app: Arc<AppContext>,
    /// Event name, or `INSTALLER` for a §3.5 installer POST.
    pub event: &'static str,
    pub binding_id: Option<u64>,
    pub url: String,
    pub ts: i64,
    pub payload: Payload,
}

impl Job {
    /// An installer POST (§3.5): the query string is already in `url`.
    pub(crate) fn installer(
        app: Arc<AppContext>,
        url: String,
        body: Map<String, Value>,
        ts: i64,
    ) -> Job {
        Job {
            app,
            event: "INSTALLER",
            binding_id: None,
            url,
            ts,
            payload: Payload::Form(body),
        }
    }

    /// The form body, PHP `http_build_query` style (§2.1), auth keys in the order of
    /// the §2.4 presence matrix.
    pub(crate) fn encode(&self) -> String {
        let (data, user) = match &self.payload {
            Payload::Form(m) => return codec::encode_form(m),
            Payload::Event { data, user } => (data, user),
        };
        let a = &*self.app;
        let mut w = FormWriter::with_capacity(640);
        w.field(&["event"], self.event);
        if let Some(id) = self.binding_id {
            w.field(&["event_handler_id"], &id.to_string());
        }
        w.value("data", data);
        w.field(&["ts"], &self.ts.to_string());
        match user {
            Some(u) => {
                w.field(&["auth", "access_token"], &u.access_token);
                w.field(&["auth", "expires"], &u.expires.to_string());
                w.field(&["auth", "expires_in"], &u.expires_in.to_string());
                w.field(&["auth", "scope"], &a.scope);
                w.field(&["auth", "domain"], &a.domain);
                w.field(&["auth", "server_endpoint"], &a.server_endpoint);
                w.field(&["auth", "status"], &a.status);
                w.field(&["auth", "client_endpoint"], &a.client_endpoint);
                w.field(&["auth", "member_id"], &a.member_id);
                w.field(&["auth", "user_id"], &u.user_id.to_string());
                if let Some(r) = &u.refresh_token {
                    w.field(&["auth", "refresh_token"], r);
                }
                w.field(&["auth", "application_token"], &a.application_token);
            }
            None => {
                w.field(&["auth", "domain"], &a.domain);
                w.field(&["auth", "client_endpoint"], &a.client_endpoint);
                w.field(&["auth", "server_endpoint"], &a.server_endpoint);
                w.field(&["auth", "member_id"], &a.member_id);
                w.field(&["auth", "application_token"], &a.application_token);
            }
        }
        w.finish()
    }
}

/// One delivery attempt (events never retry, §2.6).
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    pub id: u64,
    /// Event name, or `INSTALLER` for a §3.5 installer POST.
    pub event: String,
    pub client_id: String,
    pub event_handler_id: Option<u64>,
    pub url: String,
    pub ts: i64,
    /// HTTP status, absent when the request failed.
    pub status: Option<u16>,
    pub ok: bool,
    pub error: Option<String>,
    pub latency_ms: f64,
    /// The random delay this delivery was held back by before it was sent (0 unless
    /// delivery delays are on).
    pub delay_ms: u64,
    pub body: Option<String>,
}

#[derive(Default)]
struct PortalLog {
    records: VecDeque<DeliveryRecord>,
    next_id: u64,
}

#[derive(Default)]
struct LogInner {
    portals: HashMap<String, PortalLog>,
    ok: u64,
    failed: u64,
}

/// Delivery records (the newest `log_capacity` per portal) and the ok/failed
/// counters, behind their own mutex, held only to append or copy out.
pub(crate) struct DeliveryLog {
    capacity: usize,
    inner: Mutex<LogInner>,
}

impl DeliveryLog {
    pub(crate) fn new(capacity: usize) -> Self {
        DeliveryLog {
            capacity,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record (its `id` is assigned here) and counts it.
    fn record(&self, member_id: &str, mut r: DeliveryRecord) {
        let mut g = self.lock();
        if r.ok {
            g.ok += 1;
        } else {
            g.failed += 1;
        }
        let log = match g.portals.get_mut(member_id) {
            Some(l) => l,
            None => g.portals.entry(member_id.to_string()).or_default(),
        };
        log.next_id += 1;
        if self.capacity == 0 {
            return;
        }
        if log.records.len() >= self.capacity {
            log.records.pop_front();
        }
        r.id = log.next_id;
        log.records.push_back(r);
    }

    /// Records of a portal with id > `since`.
    pub(crate) fn since(&self, member_id: &str, since: u64) -> Vec<DeliveryRecord> {
        let g = self.lock();
        g.portals
            .get(member_id)
            .map(|l| l.records.iter().filter(|d| d.id > since).cloned().collect())
            .unwrap_or_default()
    }

    /// How many attempts a portal has had (the id of its newest record).
    pub(crate) fn count(&self, member_id: &str) -> u64 {
        self.lock().portals.get(member_id).map_or(0, |l| l.next_id)
    }

    /// (ok, failed) over the whole farm.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let g = self.lock();
        (g.ok, g.failed)
    }
}

/// `POST /_emu/delivery`: random delay and reordering of deliveries (§11 item 7:
/// "optional random delay/reordering to test robustness"). Absent fields keep their
/// current value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DeliverySpec {
    pub delay_min_ms: Option<u64>,
    pub delay_max_ms: Option<u64>,
    pub reorder: Option<bool>,
}

/// The settings in force, switchable at run time; read by the worker once per hit.
pub(crate) struct Chaos {
    delay_min_ms: AtomicU64,
    delay_max_ms: AtomicU64,
    reorder: AtomicBool,
}

impl Chaos {
    pub(crate) fn new(cfg: &DeliveryConfig) -> Self {
        Chaos {
            delay_min_ms: AtomicU64::new(cfg.delay_min_ms),
            delay_max_ms: AtomicU64::new(cfg.delay_max_ms),
            reorder: AtomicBool::new(cfg.reorder),
        }
    }

    pub(crate) fn set(&self, spec: &DeliverySpec) {
        if let Some(v) = spec.delay_min_ms {
            self.delay_min_ms.store(v, Ordering::Relaxed);
        }
        if let Some(v) = spec.delay_max_ms {
            self.delay_max_ms.store(v, Ordering::Relaxed);
        }
        if let Some(v) = spec.reorder {
            self.reorder.store(v, Ordering::Relaxed);
        }
    }

    /// (min, max, reorder); `max` is at least `min`.
    fn get(&self) -> (u64, u64, bool) {
        let min = self.delay_min_ms.load(Ordering::Relaxed);
        let max = self.delay_max_ms.load(Ordering::Relaxed).max(min);
        (min, max, self.reorder.load(Ordering::Relaxed))
    }

    pub(crate) fn to_json(&self) -> Value {
        let (min, max, reorder) = self.get();
        serde_json::json!({"delay_min_ms": min, "delay_max_ms": max, "reorder": reorder})
    }
}

/// Parsed handler URLs, so a busy handler's URL is not parsed again per delivery.
struct UrlCache(HashMap<String, reqwest::Url>);

impl UrlCache {
    fn get(&mut self, url: &str) -> Option<reqwest::Url> {
        if let Some(u) = self.0.get(url) {
            return Some(u.clone());
        }
        let u = reqwest::Url::parse(url).ok()?;
        if self.0.len() >= 4096 {
            self.0.clear();
        }
        self.0.insert(url.to_string(), u.clone());
        Some(u)
    }
}

/// The delivery worker: receives each hit's jobs, shuffles them and draws their
/// delays when that is switched on, and sends each from its own task, at most
/// `delivery.concurrency` at once, over one keep-alive client. Delays and shuffles
/// come from the worker's own generator, seeded from `--seed`, so they are the same
/// in every run that fires the same hits.
pub(crate) async fn run_worker(
    shared: Arc<Shared>,
    mut rx: UnboundedReceiver<Vec<Job>>,
    client: reqwest::Client,
) {
    let sem = Arc::new(Semaphore::new(shared.cfg.delivery.concurrency.max(1)));
    let mut rng = match shared.cfg.seed {
        // A stream of its own: switching delays on must not change the farm's tokens.
        Some(s) => StdRng::seed_from_u64(s ^ 0x6465_6c69_7665_7279),
        None => {
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            StdRng::seed_from_u64(u64::from_le_bytes(b))
        }
    };
    let mut urls = UrlCache(HashMap::new());
    while let Some(mut jobs) = rx.recv().await {
        let (min, max, reorder) = shared.chaos.get();
        if reorder {
            jobs.shuffle(&mut rng);
        }
        for job in jobs {
            let delay = if max > 0 {
                rng.random_range(min..=max)
            } else {
                0
            };
            let url = urls.get(&job.url);
            let (shared, client, sem) = (shared.clone(), client.clone(), sem.clone());
            if delay > 0 {
                // A held-back delivery does not occupy a concurrency slot while it waits.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    if let Ok(permit) = sem.acquire_owned().await {
                        deliver(&shared, &client, url, job, delay).await;
                        drop(permit);
                    }
                });
            } else {
                let Ok(permit) = sem.acquire_owned().await else {
                    break;
                };
                tokio::spawn(async move {
                    deliver(&shared, &client, url, job, 0).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Sends one job and logs the attempt.
async fn deliver(
    shared: &Shared,
    client: &reqwest::Client,
    url: Option<reqwest::Url>,
    job: Job,
    delay_ms: u64,
) {
    let body = Bytes::from(job.encode());
    let timeout = Duration::from_millis(shared.cfg.delivery.timeout_ms);
    let started = Instant::now();
    let req = match url {
        Some(u) => client.post(u),
        // Unparsable: let reqwest report it as a failed request.
        None => client.post(job.url.as_str()),
    };
    let res = req
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .timeout(timeout)
        .body(body.clone())
        .send()
        .await;
    let (status, error) = match res {
        Ok(r) => {
            let s = r.status().as_u16();
            // Drain the body so the connection goes back to the pool.
            let _ = r.bytes().await;
            (Some(s), None)
        }
        Err(e) => (None, Some(describe(&e))),
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::debug!(event = %job.event, url = %job.url, ?status, latency_ms, "delivery");
    let ok = status.is_some_and(|s| (200..300).contains(&s));
    let body = shared
        .cfg
        .delivery
        .keep_bodies
        .then(|| String::from_utf8_lossy(&body).into_owned());
    shared.log.record(
        &job.app.member_id,
        DeliveryRecord {
            id: 0,
            event: job.event.to_string(),
            client_id: job.app.client_id.clone(),
            event_handler_id: job.binding_id,
            url: job.url,
            ts: job.ts,
            status,
            ok,
            error,
            latency_ms,
            delay_ms,
            body,
        },
    );
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".to_string()
    } else if e.is_connect() {
        "connect error".to_string()
    } else {
        "request error".to_string()
    }
}
