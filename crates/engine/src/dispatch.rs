//! From the inbox to jobs: every pending delivery becomes the jobs it causes
//! — a forward per target that owns a binding of its event, a lifecycle step
//! for install/update/uninstall/method-confirm, an offline drain for
//! `ONOFFLINEEVENT` — enqueued in the same transaction that marks it handed
//! on ([`store::Store::dispatch_inbox`]), so a crash repeats nothing and
//! loses nothing.

use std::collections::BTreeSet;

use serde_json::json;
use store::{InboxEvent, NewJob, Store};
use wire::event;

use crate::config::Config;
use crate::forward::{FORWARD, HANDLE};
use crate::retry::RetrySchedule;

/// Job kinds of the lifecycle.
pub mod kinds {
    pub const INSTALL: &str = "install";
    pub const UPDATE: &str = "update";
    pub const UNINSTALL: &str = "uninstall";
    pub const METHOD_CONFIRM: &str = "method_confirm";
    pub const OFFLINE_DRAIN: &str = "offline_drain";
    pub const RECONCILE: &str = "reconcile";
}

/// The inbox event name of an installer POST (must match the server's).
pub const INSTALLER_POST: &str = "b24gate.installer_post";

/// What one pending delivery turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `dispatched` when a job will still read the row's secrets,
    /// `processed` otherwise.
    pub state: &'static str,
    pub jobs: Vec<PlannedJob>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJob {
    pub kind: &'static str,
    pub serial_key: Option<String>,
    pub unique_key: String,
    /// Cancelled at uninstall when true (it calls the portal).
    pub calls_portal: bool,
    pub payload: serde_json::Value,
    pub max_attempts: i64,
}

/// The routing rules, from the manifest.
#[derive(Debug, Clone)]
pub struct Router {
    /// (event, target) for every binding with an owner.
    owners: BTreeSet<(String, String)>,
    /// Every target: gateway events (method-confirm outcomes) go to all.
    targets: Vec<String>,
    in_process: bool,
    forwarding_attempts: i64,
    lifecycle_attempts: i64,
}

impl Router {
    pub fn new(config: &Config, in_process: bool, forwarding_attempts: i64) -> Router {
        let owners = config
            .bindings
            .iter()
            .filter_map(|b| {
                b.owner
                    .as_ref()
                    .map(|o| (b.event.to_ascii_uppercase(), o.to_ascii_lowercase()))
            })
            .collect();
        Router {
            owners,
            targets: config
                .targets
                .iter()
                .map(|t| t.name.to_ascii_lowercase())
                .collect(),
            in_process,
            forwarding_attempts,
            lifecycle_attempts: RetrySchedule::lifecycle().max_attempts(),
        }
    }

    /// The jobs a delivery causes.
    pub fn plan(&self, row: &InboxEvent) -> Plan {
        let portal_key = Some(format!("portal:{}", row.member_id));
        let inbox = json!({"inbox_id": row.id});
        let lifecycle = |kind: &'static str| PlannedJob {
            kind,
            serial_key: portal_key.clone(),
            unique_key: format!("{kind}:{}", row.id),
            // The uninstall step itself makes no REST call and must survive
            // the cancellation it performs.
            calls_portal: kind != kinds::UNINSTALL,
            payload: inbox.clone(),
            max_attempts: self.lifecycle_attempts,
        };
        let mut jobs = Vec::new();
        let mut state = "processed";
        match row.event.as_str() {
            event::ONAPPINSTALL | INSTALLER_POST => {
                jobs.push(lifecycle(kinds::INSTALL));
                state = "dispatched";
            }
            _ if !row.verified => {
                // Only installs are stored unverified; anything else is
                // dropped here rather than acted on.
                return Plan {
                    state: "rejected",
                    jobs,
                };
            }
            event::ONAPPUPDATE => {
                jobs.push(lifecycle(kinds::UPDATE));
                state = "dispatched";
            }
            event::ONAPPUNINSTALL => jobs.push(lifecycle(kinds::UNINSTALL)),
            event::ONAPPMETHODCONFIRM => {
                jobs.push(lifecycle(kinds::METHOD_CONFIRM));
                state = "dispatched";
            }
            event::ONOFFLINEEVENT => jobs.push(PlannedJob {
                kind: kinds::OFFLINE_DRAIN,
                serial_key: Some(format!("drain:{}", row.member_id)),
                // One pending drain per portal is enough: a burst of
                // notifications collapses into it.
                unique_key: format!("drain:{}", row.member_id),
                calls_portal: true,
                payload: json!({"member_id": row.member_id}),
                max_attempts: self.lifecycle_attempts,
            }),
            _ => {}
        }
        let lifecycle_event = matches!(
            row.event.as_str(),
            event::ONAPPINSTALL | INSTALLER_POST | event::ONAPPUPDATE | event::ONAPPUNINSTALL
        );
        if row.verified || !lifecycle_event {
            let owners: Vec<&String> = if row.event == crate::confirm::OUTCOME_EVENT {
                self.targets.iter().collect()
            } else {
                self.owners
                    .iter()
                    .filter(|(ev, _)| *ev == row.event)
                    .map(|(_, t)| t)
                    .collect()
            };
            for target in owners {
                {
                    jobs.push(PlannedJob {
                        kind: FORWARD,
                        serial_key: None,
                        unique_key: format!("forward:{}:{target}", row.id),
                        calls_portal: false,
                        payload: json!({"inbox_id": row.id, "target": target}),
                        max_attempts: self.forwarding_attempts,
                    });
                }
            }
            if self.in_process && row.event != INSTALLER_POST {
                jobs.push(PlannedJob {
                    kind: HANDLE,
                    serial_key: None,
                    unique_key: format!("handle:{}", row.id),
                    calls_portal: false,
                    payload: inbox.clone(),
                    max_attempts: self.forwarding_attempts,
                });
            }
        }
        Plan { state, jobs }
    }

    /// Dispatches up to `limit` pending deliveries in one transaction;
    /// returns how many.
    pub async fn dispatch_pending(
        &self,
        store: &Store,
        limit: i64,
        now: i64,
    ) -> store::Result<usize> {
        let rows = store.pending_inbox(limit).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let plans: Vec<(&InboxEvent, Plan)> = rows.iter().map(|r| (r, self.plan(r))).collect();
        let entries: Vec<(i64, &str, Vec<NewJob<'_>>)> = plans
            .iter()
            .map(|(row, plan)| {
                let jobs = plan
                    .jobs
                    .iter()
                    .map(|j| NewJob {
                        kind: j.kind,
                        member_id: Some(&row.member_id),
                        serial_key: j.serial_key.as_deref(),
                        unique_key: Some(&j.unique_key),
                        calls_portal: j.calls_portal,
                        payload: &j.payload,
                        max_attempts: j.max_attempts,
                        run_at: now,
                    })
                    .collect();
                (row.id, plan.state, jobs)
            })
            .collect();
        store.dispatch_inbox_batch(&entries, now).await
    }
}
