//! Events: the catalogue, firing (online jobs and the offline queue), and the delivery
//! worker that POSTs form-encoded bodies (reference §2) without retries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::codec;
use crate::ops::Shared;
use crate::state::{DeliveryRecord, Farm, Job, OfflineRow};

/// What the portal knows about one event code.
#[derive(Debug, Clone, Copy)]
pub struct EventDef {
    pub name: &'static str,
    /// Scope that must be granted to bind it; `None` = global (§5.4).
    pub scope: Option<&'static str>,
    /// Tokens are added when a user context exists (`sendAuth`, §2.3).
    pub send_auth: bool,
    /// `auth[refresh_token]` is added (`sendRefreshToken`, §2.3).
    pub send_refresh: bool,
    /// Can be bound with `event_type=offline` (ONOFFLINEEVENT cannot, §4.6).
    pub offline_allowed: bool,
}

const fn ev(
    name: &'static str,
    scope: Option<&'static str>,
    auth: bool,
    refresh: bool,
) -> EventDef {
    EventDef {
        name,
        scope,
        send_auth: auth,
        send_refresh: refresh,
        offline_allowed: true,
    }
}

/// The event catalogue of every emulated portal.
pub const EVENTS: &[EventDef] = &[
    ev("ONAPPUNINSTALL", None, false, false),
    ev("ONAPPINSTALL", None, true, true),
    ev("ONAPPUPDATE", None, true, true),
    ev("ONAPPPAYMENT", None, false, false),
    ev("ONAPPTEST", None, true, true),
    ev("ONAPPMETHODCONFIRM", None, false, false),
    EventDef {
        name: "ONOFFLINEEVENT",
        scope: None,
        send_auth: true,
        send_refresh: true,
        offline_allowed: false,
    },
    ev("ONCRMDEALADD", Some("crm"), true, false),
    ev("ONCRMDEALUPDATE", Some("crm"), true, false),
    ev("ONCRMDEALDELETE", Some("crm"), true, false),
    ev("ONCRMLEADADD", Some("crm"), true, false),
    ev("ONCRMLEADUPDATE", Some("crm"), true, false),
    ev("ONCRMLEADDELETE", Some("crm"), true, false),
    ev("ONCRMCONTACTADD", Some("crm"), true, false),
    ev("ONCRMCONTACTUPDATE", Some("crm"), true, false),
    ev("ONCRMCONTACTDELETE", Some("crm"), true, false),
    ev("ONCRMCOMPANYADD", Some("crm"), true, false),
    ev("ONCRMCOMPANYUPDATE", Some("crm"), true, false),
    ev("ONCRMCOMPANYDELETE", Some("crm"), true, false),
    ev("ONTASKADD", Some("task"), true, false),
    ev("ONTASKUPDATE", Some("task"), true, false),
    ev("ONTASKDELETE", Some("task"), true, false),
    ev("ONUSERADD", Some("user"), true, false),
];

/// Looks an event up by name, any case.
pub fn event_def(name: &str) -> Option<&'static EventDef> {
    EVENTS.iter().find(|e| e.name.eq_ignore_ascii_case(name))
}

/// `MESSAGE_ID = md5(EVENT_NAME + "|" + json(EVENT_DATA))`, §5.5.
pub fn message_id(event: &str, data: &Value) -> String {
    let mut h = Md5::new();
    h.update(event.as_bytes());
    h.update(b"|");
    h.update(serde_json::to_string(data).unwrap_or_default().as_bytes());
    hex::encode(h.finalize())
}

/// Who caused a change: used for offline self-suppression (§5.5).
#[derive(Debug, Clone, Default)]
pub struct Initiator {
    pub client_id: Option<String>,
    pub connector: String,
}

impl Farm {
    /// Builds the `auth[...]` block of a delivery per the presence matrix (§2.4).
    pub(crate) fn auth_block(
        &mut self,
        member_id: &str,
        client_id: &str,
        user_id: u64,
        tokens: bool,
        refresh: bool,
    ) -> Map<String, Value> {
        let mut a = Map::new();
        let (domain, ce, app_token, status) = {
            let Some(p) = self.portals.get(member_id) else {
                return a;
            };
            let i = p.installs.get(client_id);
            (
                p.domain.clone(),
                self.client_endpoint(p),
                i.map(|i| i.application_token.clone()).unwrap_or_default(),
                i.map(|i| i.status.clone()).unwrap_or_default(),
            )
        };
        let se = self.server_endpoint();
        if tokens && user_id > 0 {
            let now = self.now();
            let (access, refresh_token, expires) = if refresh {
                let (a, r, e) = self.issue_pair(member_id, client_id, user_id);
                (a, Some(r), e)
            } else {
                self.event_token(member_id, client_id, user_id)
            };
            let scope = self
                .apps
                .get(client_id)
                .map(|a| a.scopes.join(","))
                .unwrap_or_default();
            a.insert("access_token".into(), json!(access));
            a.insert("expires".into(), json!(expires.to_string()));
            a.insert(
                "expires_in".into(),
                json!((expires - now).max(0).to_string()),
            );
            a.insert("scope".into(), json!(scope));
            a.insert("domain".into(), json!(domain));
            a.insert("server_endpoint".into(), json!(se));
            a.insert("status".into(), json!(status));
            a.insert("client_endpoint".into(), json!(ce));
            a.insert("member_id".into(), json!(member_id));
            a.insert("user_id".into(), json!(user_id.to_string()));
            if let Some(r) = refresh_token {
                a.insert("refresh_token".into(), json!(r));
            }
            a.insert("application_token".into(), json!(app_token));
        } else {
            a.insert("domain".into(), json!(domain));
            a.insert("client_endpoint".into(), json!(ce));
            a.insert("server_endpoint".into(), json!(se));
            a.insert("member_id".into(), json!(member_id));
            a.insert("application_token".into(), json!(app_token));
        }
        a
    }

    /// A still-valid access token for deliveries to (app, user), reused across events.
    fn event_token(
        &mut self,
        member_id: &str,
        client_id: &str,
        user_id: u64,
    ) -> (String, Option<String>, i64) {
        let now = self.now();
        let cached = self
            .portals
            .get(member_id)
            .and_then(|p| p.installs.get(client_id))
            .and_then(|i| i.event_tokens.get(&user_id))
            .cloned();
        if let Some(t) = cached
            && let Some(at) = self.tokens.get(&t)
            && at.expires > now + 60
        {
            return (t, None, at.expires);
        }
        let t = self.issue_access(member_id, client_id, user_id);
        let expires = self.tokens.get(&t).map(|a| a.expires).unwrap_or(now);
        if let Some(i) = self
            .portals
            .get_mut(member_id)
            .and_then(|p| p.installs.get_mut(client_id))
        {
            i.event_tokens.insert(user_id, t.clone());
        }
        (t, None, expires)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_job(
        &mut self,
        member_id: &str,
        client_id: &str,
        event: &str,
        binding_id: u64,
        url: &str,
        data: Value,
        auth: Map<String, Value>,
    ) {
        let ts = self.now();
        let mut body = Map::new();
        body.insert("event".into(), json!(event));
        body.insert("event_handler_id".into(), json!(binding_id.to_string()));
        body.insert("data".into(), data);
        body.insert("ts".into(), json!(ts.to_string()));
        body.insert("auth".into(), Value::Object(auth));
        self.stats.deliveries_queued += 1;
        self.pending.push(Job {
            member_id: member_id.to_string(),
            client_id: client_id.to_string(),
            event: event.to_string(),
            binding_id: Some(binding_id),
            url: url.to_string(),
            body,
            ts,
        });
    }

    fn app_receives_events(&self, member_id: &str, client_id: &str) -> bool {
        self.portals
            .get(member_id)
            .and_then(|p| p.installs.get(client_id))
            .is_some_and(|i| i.active && i.installed && !i.payment_expired)
    }

    /// Fires an entity event (ONCRMDEALADD, …) on a portal: online jobs for bound
    /// handlers, rows in the offline queue, then ONOFFLINEEVENT notifications.
    /// `user_id` 0 = system change (no tokens, §2.3).
    pub fn fire_entity(
        &mut self,
        member_id: &str,
        event: &str,
        data: Value,
        user_id: u64,
        initiator: &Initiator,
    ) {
        let Some(def) = event_def(event) else { return };
        let Some(p) = self.portals.get(member_id) else {
            return;
        };
        let targets: Vec<(u64, String, String, u64, bool, String)> = p
            .bindings
            .iter()
            .filter(|b| b.event == def.name)
            .map(|b| {
                (
                    b.id,
                    b.client_id.clone(),
                    b.handler.clone(),
                    b.auth_type,
                    b.offline,
                    b.connector.clone(),
                )
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        let mut notify: Vec<String> = Vec::new();
        let data_json = if self.cfg.dedup_within_hit {
            serde_json::to_string(&data).unwrap_or_default()
        } else {
            String::new()
        };
        for (id, client, handler, auth_type, offline, connector) in targets {
            if !self.app_receives_events(member_id, &client) {
                continue;
            }
            if offline {
                // Self-suppression (§5.5): the app's own change on the same connector
                // is not queued for it.
                if initiator.client_id.as_deref() == Some(client.as_str())
                    && initiator.connector == connector
                {
                    continue;
                }
                self.offline_upsert(member_id, &client, &connector, def.name, &data, user_id);
                if !notify.contains(&client) {
                    notify.push(client);
                }
            } else {
                let uid = if auth_type > 0 { auth_type } else { user_id };
                // Identical (handler, event, user, data) items within one hit are sent
                // once (§2.6, `Buffer` in the module source).
                if self.cfg.dedup_within_hit
                    && !self.hit_seen.insert(format!("{id}|{uid}|{data_json}"))
                {
                    continue;
                }
                let auth =
                    self.auth_block(member_id, &client, uid, def.send_auth, def.send_refresh);
                self.push_job(
                    member_id,
                    &client,
                    def.name,
                    id,
                    &handler,
                    data.clone(),
                    auth,
                );
            }
        }
        for client in notify {
            self.notify_offline(member_id, &client, user_id);
        }
    }

    fn offline_upsert(
        &mut self,
        member_id: &str,
        client: &str,
        connector: &str,
        event: &str,
        data: &Value,
        user_id: u64,
    ) {
        let mid = message_id(event, data);
        let now = self.now_us;
        let Some(p) = self.portals.get_mut(member_id) else {
            return;
        };
        let q = &mut p.offline;
        let key = (client.to_string(), connector.to_string(), mid);
        if let Some(id) = q.unreserved.get(&key)
            && let Some(row) = q.rows.get_mut(id)
        {
            row.timestamp_us = now;
            row.event_data = data.clone();
            row.user_id = user_id;
            return;
        }
        q.next_id += 1;
        let id = q.next_id;
        q.rows.insert(
            id,
            OfflineRow {
                id,
                timestamp_us: now,
                event_name: event.to_string(),
                event_data: data.clone(),
                user_id,
                message_id: key.2.clone(),
                client_id: key.0.clone(),
                connector: key.1.clone(),
                process_id: None,
                error: false,
            },
        );
        q.unreserved.insert(key, id);
    }

    /// ONOFFLINEEVENT to the app's online handlers, honouring `minTimeout` (§4.6).
    fn notify_offline(&mut self, member_id: &str, client: &str, user_id: u64) {
        let now = self.now_f();
        let mut send = Vec::new();
        let Some(p) = self.portals.get_mut(member_id) else {
            return;
        };
        for b in p.bindings.iter_mut() {
            if b.client_id != client || b.event != "ONOFFLINEEVENT" || b.offline {
                continue;
            }
            let min = b.min_timeout.unwrap_or(1.0);
            if min <= 0.0 {
                if !self.hit_notified.insert(b.id) {
                    continue;
                }
            } else if b.last_notified.is_some_and(|t| now - t < min) {
                continue;
            }
            b.last_notified = Some(now);
            send.push((b.id, b.handler.clone(), b.auth_type));
        }
        for (id, handler, auth_type) in send {
            let uid = if auth_type > 0 { auth_type } else { user_id };
            let auth = self.auth_block(member_id, client, uid, true, true);
            self.push_job(
                member_id,
                client,
                "ONOFFLINEEVENT",
                id,
                &handler,
                json!([]),
                auth,
            );
        }
    }

    /// Fires a lifecycle event (ONAPP*) to the handlers of one app only (§4).
    /// `gated` = subject to ACTIVE/INSTALLED/payment gating.
    pub fn fire_app(
        &mut self,
        member_id: &str,
        client: &str,
        event: &str,
        data: Value,
        user_id: u64,
        gated: bool,
    ) {
        let Some(def) = event_def(event) else { return };
        if gated && !self.app_receives_events(member_id, client) {
            return;
        }
        let Some(p) = self.portals.get(member_id) else {
            return;
        };
        let targets: Vec<(u64, String, u64)> = p
            .bindings
            .iter()
            .filter(|b| b.client_id == client && b.event == def.name && !b.offline)
            .map(|b| (b.id, b.handler.clone(), b.auth_type))
            .collect();
        for (id, handler, auth_type) in targets {
            let uid = if auth_type > 0 { auth_type } else { user_id };
            let auth = self.auth_block(member_id, client, uid, def.send_auth, def.send_refresh);
            self.push_job(
                member_id,
                client,
                def.name,
                id,
                &handler,
                data.clone(),
                auth,
            );
        }
    }

    /// Records a finished delivery attempt.
    pub(crate) fn record_delivery(
        &mut self,
        job: &Job,
        status: Option<u16>,
        error: Option<String>,
        latency_ms: f64,
        body: Option<String>,
    ) {
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        if ok {
            self.stats.deliveries_ok += 1;
        } else {
            self.stats.deliveries_failed += 1;
        }
        let cap = self.cfg.delivery.log_capacity;
        let Some(p) = self.portals.get_mut(&job.member_id) else {
            return;
        };
        p.next_delivery_id += 1;
        if cap == 0 {
            return;
        }
        if p.deliveries.len() >= cap {
            p.deliveries.pop_front();
        }
        p.deliveries.push_back(DeliveryRecord {
            id: p.next_delivery_id,
            event: job.event.clone(),
            client_id: job.client_id.clone(),
            event_handler_id: job.binding_id,
            url: job.url.clone(),
            ts: job.ts,
            status,
            ok,
            error,
            latency_ms,
            body,
        });
    }
}

/// The delivery worker: one loop receiving jobs, each sent by its own task, at most
/// `delivery.concurrency` in flight. Deliveries share one keep-alive client.
pub(crate) async fn run_worker(
    shared: Arc<Shared>,
    mut rx: UnboundedReceiver<Job>,
    client: reqwest::Client,
) {
    let sem = Arc::new(Semaphore::new(shared.cfg.delivery.concurrency.max(1)));
    let timeout = Duration::from_millis(shared.cfg.delivery.timeout_ms);
    while let Some(job) = rx.recv().await {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let shared = shared.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let body = codec::encode_form(&job.body);
            let started = Instant::now();
            let res = client
                .post(&job.url)
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
            let latency = started.elapsed().as_secs_f64() * 1000.0;
            tracing::debug!(event = %job.event, url = %job.url, ?status, latency_ms = latency, "delivery");
            let keep = shared.cfg.delivery.keep_bodies.then_some(body);
            shared.with(|f| f.record_delivery(&job, status, error, latency, keep));
            drop(permit);
        });
    }
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

impl Job {
    /// An installer POST (§3.5): the query string is already in `url`.
    pub(crate) fn installer(
        member_id: &str,
        client_id: &str,
        url: String,
        body: Map<String, Value>,
        ts: i64,
    ) -> Job {
        Job {
            member_id: member_id.to_string(),
            client_id: client_id.to_string(),
            event: "INSTALLER".to_string(),
            binding_id: None,
            url,
            body,
            ts,
        }
    }
}
