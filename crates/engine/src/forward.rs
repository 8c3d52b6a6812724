//! Forwarding events to the app: each target (`[[target]]`) gets a JSON POST
//! signed per the Standard Webhooks spec — `webhook-id` (stable across
//! retries, so the app can dedupe), `webhook-timestamp`, `webhook-signature`
//! (`v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`). 2xx is done;
//! anything else is retried on the forwarding schedule (about a day, ±20 %,
//! honouring `Retry-After` within bounds), then dead-lettered — still in the
//! store, replayable. In library use, an in-process [`EventHandler`] receives
//! the same events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use store::{InboxEvent, Job, Store};

use crate::NowFn;
use crate::retry::RetrySchedule;
use crate::runner::{JobError, JobHandler};

/// The job kind of a forward to a target.
pub const FORWARD: &str = "forward";
/// The job kind of a delivery to the in-process handler.
pub const HANDLE: &str = "handle";

/// Longest `Retry-After` honoured; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

/// The JSON every target receives (and the in-process handler).
pub fn event_json(row: &InboxEvent, domain: Option<&str>) -> Value {
    let p = row.payload_json();
    let mut out = json!({
        "id": webhook_id(row.id),
        "event": row.event,
        "portal": {"member_id": row.member_id, "domain": domain.or_else(|| p["auth"]["domain"].as_str())},
        "data": p.get("data").cloned().unwrap_or(Value::Null),
        "ts": row.ts,
        "received_at": row.received_at,
        "source": row.source,
    });
    if row.source == "offline" {
        // Which queue partition (`auth_connector`) and row it came from:
        // an app with several connectors tells its own changes apart.
        out["offline"] = json!({
            "connector": p["connector"],
            "message_id": p["message_id"],
            "offline_id": p["offline_id"],
            "timestamp": p["timestamp"],
        });
    }
    out
}

/// Stable per event across retries and targets.
pub fn webhook_id(inbox_id: i64) -> String {
    format!("evt_{inbox_id}")
}

/// A Standard Webhooks signing key: `whsec_<base64>` or any other string
/// used as raw bytes.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    pub fn parse(secret: &str) -> SigningKey {
        match secret.strip_prefix("whsec_") {
            Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(k) => SigningKey(k),
                Err(_) => SigningKey(secret.as_bytes().to_vec()),
            },
            None => SigningKey(secret.as_bytes().to_vec()),
        }
    }

    /// The `webhook-signature` header value.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body.as_bytes());
        let sig = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(sig)
        )
    }
}

/// One forwarding target.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub key: Option<SigningKey>,
}

/// Per-target delivery health, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetHealth {
    pub attempts: u64,
    pub failures: u64,
    pub consecutive_failures: u64,
    pub last_status: Option<u16>,
}

impl TargetHealth {
    /// Unhealthy after this many failures in a row.
    pub const UNHEALTHY_AFTER: u64 = 5;

    pub fn healthy(&self) -> bool {
        self.consecutive_failures < Self::UNHEALTHY_AFTER
    }
}

/// The `forward` job handler.
pub struct Forwarder {
    store: Store,
    http: reqwest::Client,
    targets: HashMap<String, Target>,
    schedule: RetrySchedule,
    now: NowFn,
    health: Mutex<HashMap<String, TargetHealth>>,
}

impl Forwarder {
    pub fn new(
        store: Store,
        targets: Vec<Target>,
        schedule: RetrySchedule,
        now: NowFn,
        timeout: Duration,
    ) -> Result<Forwarder, reqwest::Error> {
        crate::install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Forwarder {
            store,
            http,
            targets: targets.into_iter().map(|t| (t.name.clone(), t)).collect(),
            schedule,
            now,
            health: Mutex::new(HashMap::new()),
        })
    }

    pub fn health(&self) -> HashMap<String, TargetHealth> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn note(&self, target: &str, status: Option<u16>, ok: bool) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let e = h.entry(target.to_owned()).or_default();
        e.attempts += 1;
        e.last_status = status;
        if ok {
            e.consecutive_failures = 0;
        } else {
            e.failures += 1;
            e.consecutive_failures += 1;
        }
    }

    async fn forward(&self, job: &Job) -> Result<(), JobError> {
        let p = job.payload_json();
        let (Some(inbox_id), Some(target)) = (p["inbox_id"].as_i64(), p["target"].as_str()) else {
            return Err(JobError::permanent("forward job without inbox_id/target"));
        };
        let Some(t) = self.targets.get(target) else {
            return Err(JobError::permanent(format!(
                "target `{target}` is not configured"
            )));
        };
        let row = self
            .store
            .get_inbox(inbox_id)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?
            .ok_or_else(|| JobError::permanent("event no longer in the inbox"))?;
        let domain = self
            .store
            .get_portal(&row.member_id)
            .await
            .ok()
            .flatten()
            .map(|p| p.domain.as_str().to_owned());
        let body = event_json(&row, domain.as_deref()).to_string();
        let id = webhook_id(row.id);
        let ts = (self.now)().div_euclid(1000);
        let mut req = self
            .http
            .post(&t.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string());
        if let Some(k) = &t.key {
            req = req.header("webhook-signature", k.sign(&id, ts, &body));
        }
        match req.body(body).send().await {
            Ok(r) if r.status().is_success() => {
                self.note(target, Some(r.status().as_u16()), true);
                Ok(())
            }
            Ok(r) => {
                let status = r.status().as_u16();
                self.note(target, Some(status), false);
                let after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
                Err(JobError::Retry {
                    reason: format!("target `{target}` answered {status}"),
                    after,
                })
            }
            Err(e) => {
                self.note(target, None, false);
                let kind = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "refused the connection"
                } else {
                    "failed"
                };
                Err(JobError::retry(format!("target `{target}` {kind}")))
            }
        }
    }
}

impl JobHandler for Forwarder {
    fn run<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(self.forward(job))
    }

    fn schedule(&self) -> RetrySchedule {
        self.schedule.clone()
    }
}

/// The app's own code, in library use: receives every event the targets
/// would, as the same JSON. An `Err` is retried like a failed forward.
pub trait EventHandler: Send + Sync + 'static {
    fn handle<'a>(&'a self, event: &'a Value) -> BoxFuture<'a, Result<(), String>>;
}

/// The `handle` job handler: feeds an [`EventHandler`].
pub struct InProcess {
    pub(crate) store: Store,
    pub(crate) handler: Arc<dyn EventHandler>,
    pub(crate) schedule: RetrySchedule,
}

impl JobHandler for InProcess {
    fn run<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let Some(inbox_id) = job.payload_json()["inbox_id"].as_i64() else {
                return Err(JobError::permanent("handle job without inbox_id"));
            };
            let row = self
                .store
                .get_inbox(inbox_id)
                .await
                .map_err(|e| JobError::retry(e.to_string()))?
                .ok_or_else(|| JobError::permanent("event no longer in the inbox"))?;
            let domain = self
                .store
                .get_portal(&row.member_id)
                .await
                .ok()
                .flatten()
                .map(|p| p.domain.as_str().to_owned());
            self.handler
                .handle(&event_json(&row, domain.as_deref()))
                .await
                .map_err(JobError::retry)
        })
    }

    fn schedule(&self) -> RetrySchedule {
        self.schedule.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signature_matches_the_spec_example() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let sig = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(format!("{key:?}").contains("redacted"));
    }
}
