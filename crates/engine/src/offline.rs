//! The offline-event drain (BRIEF §3 "Offline drain", protocol §5.5–§5.9).
//!
//! Per portal and auth connector: reserve a batch with
//! `event.offline.get(clear=0)`, store it in the inbox, then — in **one**
//! `batch` request — mark what could not be stored with
//! `event.offline.error`, clear what was stored with `event.offline.clear`,
//! and reserve the next batch. So the drain costs one request per batch, not
//! two, and nothing is cleared on the portal before it is on our disk.
//!
//! Crash safety: the reservation's `process_id` is recorded before its rows
//! are stored, and only forgotten after the clear succeeded; a restart
//! re-reads the same reservation (`event.offline.get(process_id=…)`) and
//! stores it again (the inbox deduplicates). A reserve in flight is marked
//! first (`reserving`); if the process died before learning the new id, the
//! next run finds the orphaned reservation with `event.offline.list` and
//! adopts it.
//!
//! The inbox key of an offline row is portal, connector, row `ID` and
//! `MESSAGE_ID`. `MESSAGE_ID` alone would not do: it is a hash of the event
//! name and data (§5.5), and entity events carry only the entity id, so every
//! later change of the same deal has the same `MESSAGE_ID` and would be
//! dropped as a duplicate forever.

use std::collections::BTreeSet;
use std::sync::Arc;

use client::{Batch, CommandOutcome};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use store::{DrainUpdate, Job, NewInboxEvent, Store};
use wire::MemberId;

use crate::NowFn;
use crate::config::{BindingMode, Config};
use crate::runner::{JobError, JobHandler};

/// Drain settings.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// Rows per `event.offline.get` (the portal's default is 50).
    pub batch: u32,
    /// Drain with the lossy `clear=1` mode on portals without
    /// `rest_offline_extended` (rows are deleted as they are read: a crash
    /// loses the batch). Off by default.
    pub allow_lossy: bool,
}

impl Default for DrainOptions {
    fn default() -> Self {
        Self {
            batch: 50,
            allow_lossy: false,
        }
    }
}

/// What a drain run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DrainReport {
    pub stored: u64,
    pub errors: u64,
    pub requests: u64,
    pub adopted: u64,
}

pub struct Drainer {
    pub store: Store,
    pub client: client::Client,
    pub config: Arc<Config>,
    pub now: NowFn,
    pub opts: DrainOptions,
}

fn retry(e: impl std::fmt::Display) -> JobError {
    JobError::retry(e.to_string())
}

/// Connectors with offline bindings in the manifest.
pub fn connectors(config: &Config) -> BTreeSet<String> {
    config
        .bindings
        .iter()
        .filter(|b| b.mode == BindingMode::Offline)
        .map(|b| b.auth_connector.clone())
        .collect()
}

/// `event.offline.clear`/`event.offline.error` parameters. The portal reads
/// the connector from the call's auth data for every `event.offline.*`
/// method, so a partition's clear carries its `auth_connector` too.
fn mark_params(connector: &str, process_id: &str, message_ids: Option<&[String]>) -> Value {
    let mut p = json!({"process_id": process_id});
    if let Some(ids) = message_ids {
        p["message_id"] = json!(ids);
    }
    if !connector.is_empty() {
        p["auth_connector"] = json!(connector);
    }
    p
}

fn get_params(limit: u32, connector: &str, process_id: Option<&str>, clear: bool) -> Value {
    let mut p = json!({"clear": if clear { 1 } else { 0 }, "limit": limit});
    if let Some(pid) = process_id {
        p["process_id"] = json!(pid);
    }
    if !connector.is_empty() {
        p["auth_connector"] = json!(connector);
    }
    p
}

struct Reserved {
    process_id: Option<String>,
    events: Vec<Value>,
}

fn reserved(v: &Value) -> Reserved {
    Reserved {
        process_id: v["process_id"].as_str().map(str::to_owned),
        events: v["events"].as_array().cloned().unwrap_or_default(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Drainer {
    /// Drains every connector of a portal until its queue is empty.
    pub async fn drain_portal(&self, member_id: &MemberId) -> Result<DrainReport, JobError> {
        let portal = self
            .store
            .get_portal(member_id.as_str())
            .await
            .map_err(retry)?
            .ok_or_else(|| JobError::permanent("portal unknown"))?;
        if !portal.status.allows_rest() {
            return Ok(DrainReport::default());
        }
        let extended = portal.profile["features"]["rest_offline_extended"] == json!(true);
        let mut report = DrainReport::default();
        for connector in connectors(&self.config) {
            if extended {
                self.drain_reserved(member_id, &connector, &mut report)
                    .await?;
            } else if self.opts.allow_lossy {
                self.drain_lossy(member_id, &connector, &mut report).await?;
            } else {
                tracing::debug!(
                    "offline drain skipped: no rest_offline_extended and lossy mode off"
                );
            }
        }
        Ok(report)
    }

    async fn set(&self, u: DrainUpdate<'_>) -> Result<(), JobError> {
        self.store
            .set_drain_process(&u, (self.now)())
            .await
            .map_err(retry)
    }

    async fn drain_reserved(
        &self,
        member_id: &MemberId,
        connector: &str,
        report: &mut DrainReport,
    ) -> Result<(), JobError> {
        let m = member_id.as_str();
        let portal = self.client.portal(member_id);
        let state = self.store.drain_state(m, connector).await.map_err(retry)?;
        let mut pid = state.as_ref().and_then(|s| s.process_id.clone());
        if state.as_ref().is_some_and(|s| s.reserving) {
            report.adopted += self
                .adopt_orphans(member_id, connector, pid.as_deref(), report)
                .await?;
        }
        // The current reservation (after a crash: the same rows again), or a
        // fresh one.
        let mut batch = match &pid {
            Some(p) => {
                let r = portal
                    .call(
                        "event.offline.get",
                        get_params(self.opts.batch, connector, Some(p), false),
                    )
                    .await
                    .map_err(crate::lifecycle::client_failure)?;
                report.requests += 1;
                reserved(&r.result)
            }
            None => {
                self.set(DrainUpdate {
                    member_id: m,
                    connector,
                    reserving: true,
                    ..Default::default()
                })
                .await?;
                let r = portal
                    .call(
                        "event.offline.get",
                        get_params(self.opts.batch, connector, None, false),
                    )
                    .await
                    .map_err(crate::lifecycle::client_failure)?;
                report.requests += 1;
                let b = reserved(&r.result);
                pid = b.process_id.clone().filter(|_| !b.events.is_empty());
                self.set(DrainUpdate {
                    member_id: m,
                    connector,
                    process_id: pid.as_deref(),
                    ..Default::default()
                })
                .await?;
                b
            }
        };
        loop {
            let Some(current) = pid.clone() else {
                return Ok(());
            };
            if batch.events.is_empty() {
                // An empty reservation holds nothing: forget it.
                self.set(DrainUpdate {
                    member_id: m,
                    connector,
                    ..Default::default()
                })
                .await?;
                return Ok(());
            }
            let (stored, bad) = self.store_rows(m, connector, &batch.events).await?;
            // Mark the next reserve before sending it (see the module docs).
            self.set(DrainUpdate {
                member_id: m,
                connector,
                process_id: Some(&current),
                reserving: true,
                ..Default::default()
            })
            .await?;
            let mut b = Batch::new().halt(true);
            if !bad.is_empty() {
                b.push(
                    "error",
                    "event.offline.error",
                    mark_params(connector, &current, Some(&bad)),
                );
            }
            if !stored.is_empty() {
                b.push(
                    "clear",
                    "event.offline.clear",
                    mark_params(connector, &current, Some(&stored)),
                );
            } else {
                b.push(
                    "clear",
                    "event.offline.clear",
                    mark_params(connector, &current, None),
                );
            }
            b.push(
                "next",
                "event.offline.get",
                get_params(self.opts.batch, connector, None, false),
            );
            let out = portal
                .batch(&b)
                .await
                .map_err(crate::lifecycle::client_failure)?;
            report.requests += out.requests as u64;
            match (out.get("error"), out.get("clear")) {
                (Some(CommandOutcome::Err(e)), _) | (_, Some(CommandOutcome::Err(e))) => {
                    return Err(JobError::retry(format!(
                        "offline clear failed: {} {}",
                        e.code.as_str(),
                        e.description
                    )));
                }
                _ => {}
            }
            report.stored += stored.len() as u64;
            report.errors += bad.len() as u64;
            let next = match out.get("next") {
                Some(CommandOutcome::Ok { result, .. }) => reserved(result),
                _ => Reserved {
                    process_id: None,
                    events: Vec::new(),
                },
            };
            pid = next.process_id.clone().filter(|_| !next.events.is_empty());
            self.set(DrainUpdate {
                member_id: m,
                connector,
                process_id: pid.as_deref(),
                drained: stored.len() as i64,
                errors: bad.len() as i64,
                last_error: (!bad.is_empty())
                    .then_some("undecodable offline rows marked with event.offline.error"),
                ..Default::default()
            })
            .await?;
            batch = next;
        }
    }

    /// A reserve was in flight when the drain stopped: find reservations the
    /// portal holds for us that we never recorded, and finish them.
    async fn adopt_orphans(
        &self,
        member_id: &MemberId,
        connector: &str,
        known: Option<&str>,
        report: &mut DrainReport,
    ) -> Result<u64, JobError> {
        let portal = self.client.portal(member_id);
        let mut params = json!({"filter": {">PROCESS_ID": "", "ERROR": 0}, "order": {"ID": "ASC"}});
        if !connector.is_empty() {
            params["auth_connector"] = json!(connector);
        }
        let r = portal
            .call("event.offline.list", params)
            .await
            .map_err(crate::lifecycle::client_failure)?;
        report.requests += 1;
        let pids: BTreeSet<String> = r
            .result
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| text(&row["PROCESS_ID"]))
            .filter(|p| !p.is_empty() && Some(p.as_str()) != known)
            .collect();
        let mut n = 0;
        for p in pids {
            let got = portal
                .call(
                    "event.offline.get",
                    get_params(self.opts.batch, connector, Some(&p), false),
                )
                .await
                .map_err(crate::lifecycle::client_failure)?;
            report.requests += 1;
            let rows = reserved(&got.result).events;
            let (stored, bad) = self
                .store_rows(member_id.as_str(), connector, &rows)
                .await?;
            let mut b = Batch::new().halt(true);
            if !bad.is_empty() {
                b.push(
                    "error",
                    "event.offline.error",
                    mark_params(connector, &p, Some(&bad)),
                );
            }
            b.push(
                "clear",
                "event.offline.clear",
                mark_params(connector, &p, Some(&stored)),
            );
            let out = portal
                .batch(&b)
                .await
                .map_err(crate::lifecycle::client_failure)?;
            report.requests += out.requests as u64;
            if let Some(CommandOutcome::Err(e)) = out.get("clear") {
                return Err(JobError::retry(format!(
                    "offline clear failed: {}",
                    e.code.as_str()
                )));
            }
            report.stored += stored.len() as u64;
            n += 1;
        }
        Ok(n)
    }

    /// Without `rest_offline_extended`: `clear=1` (rows are gone from the
    /// portal as soon as they are read). Only with the operator's opt-in.
    async fn drain_lossy(
        &self,
        member_id: &MemberId,
        connector: &str,
        report: &mut DrainReport,
    ) -> Result<(), JobError> {
        let portal = self.client.portal(member_id);
        loop {
            let r = portal
                .call(
                    "event.offline.get",
                    get_params(self.opts.batch, connector, None, true),
                )
                .await
                .map_err(crate::lifecycle::client_failure)?;
            report.requests += 1;
            let rows = reserved(&r.result).events;
            if rows.is_empty() {
                return Ok(());
            }
            let (stored, bad) = self
                .store_rows(member_id.as_str(), connector, &rows)
                .await?;
            report.stored += stored.len() as u64;
            report.errors += bad.len() as u64;
        }
    }

    /// Stores rows in the inbox; returns the `MESSAGE_ID`s stored and those
    /// that could not be decoded.
    async fn store_rows(
        &self,
        member_id: &str,
        connector: &str,
        rows: &[Value],
    ) -> Result<(Vec<String>, Vec<String>), JobError> {
        let mut keys = Vec::new();
        let mut payloads = Vec::new();
        let mut names = Vec::new();
        let mut stored = Vec::new();
        let mut bad = Vec::new();
        for row in rows {
            let message_id = text(&row["MESSAGE_ID"]).unwrap_or_default();
            let name = text(&row["EVENT_NAME"]).map(|n| n.to_ascii_uppercase());
            let id = text(&row["ID"]);
            let valid_mid =
                message_id.len() == 32 && message_id.bytes().all(|b| b.is_ascii_hexdigit());
            match (name, id, valid_mid) {
                (Some(name), Some(id), true) if wire::EventName::parse(&name).is_ok() => {
                    keys.push(format!("off:{member_id}:{connector}:{id}:{message_id}"));
                    payloads.push(json!({
                        "event": name,
                        "data": if row["EVENT_DATA"].is_object() { row["EVENT_DATA"].clone() } else { Value::Null },
                        "additional": row["EVENT_ADDITIONAL"],
                        "message_id": message_id,
                        "offline_id": id,
                        "connector": connector,
                        "timestamp": row["TIMESTAMP_X"],
                    }));
                    names.push(name);
                    stored.push(message_id);
                }
                _ if valid_mid => bad.push(message_id),
                // A row without a usable MESSAGE_ID cannot even be marked;
                // it stays reserved and is reported.
                _ => tracing::warn!("offline row without a MESSAGE_ID"),
            }
        }
        if !keys.is_empty() {
            let events: Vec<NewInboxEvent<'_>> = keys
                .iter()
                .zip(&payloads)
                .zip(&names)
                .map(|((k, p), n)| NewInboxEvent {
                    member_id,
                    dedupe_key: k,
                    event: n,
                    source: "offline",
                    verified: true,
                    ts: None,
                    payload: p,
                    secrets: None,
                })
                .collect();
            self.store
                .append_inbox(&events, (self.now)())
                .await
                .map_err(retry)?;
        }
        Ok((stored, bad))
    }
}

impl JobHandler for Drainer {
    fn run<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let Some(m) = job.payload_json()["member_id"].as_str().map(str::to_owned) else {
                return Err(JobError::permanent("drain job without member_id"));
            };
            let member_id = MemberId::parse(&m).map_err(|e| JobError::permanent(e.to_string()))?;
            let report = self.drain_portal(&member_id).await?;
            if report.stored > 0 || report.errors > 0 {
                tracing::debug!(
                    stored = report.stored,
                    errors = report.errors,
                    "offline drain"
                );
            }
            Ok(())
        })
    }
}
