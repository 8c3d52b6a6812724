//! What the observability routes (`/metrics`, `/readyz`, `/v1/status`,
//! `/status`) read, and the one place that decides whether a portal is
//! healthy — so the JSON summary and the page never disagree.
//!
//! Everything from the store is read at request time ([`Snapshot::collect`]);
//! the in-process counters (REST client, forwarding targets, ingest) are
//! read through [`Observe`], which the gateway fills in.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use client::ClientStats;
use engine::forward::TargetHealth;
use store::{DrainState, Job, JobFilter, MatrixRow, Portal, PortalStatus, StoreError};

use crate::AppState;

/// Reads the forwarding targets' health (the engine's forwarder).
pub type TargetHealthFn = Arc<dyn Fn() -> HashMap<String, TargetHealth> + Send + Sync>;

/// The in-process sources and switches of the observability routes. The
/// defaults observe nothing beyond the store and report the workers as not
/// running, so `/readyz` stays 503 until whoever runs the engine says so.
#[derive(Clone, Default)]
pub struct Observe {
    /// The REST client whose counters `/metrics` exports.
    pub client: Option<client::Client>,
    /// Health of the forwarding targets.
    pub targets: Option<TargetHealthFn>,
    /// Configured target names, so every target has series before its
    /// first attempt.
    pub target_names: Vec<String>,
    /// `/metrics` without the admin token (for a scraper on a private
    /// network). Off by default.
    pub metrics_open: bool,
    /// Adds a `portal` (member_id) label to the per-portal gauges. Only
    /// for small fleets: one series per portal.
    pub portal_label: bool,
    workers: Arc<AtomicBool>,
}

impl Observe {
    /// Called by whoever runs the engine: `true` once the dispatcher and
    /// the worker pool run, `false` when they stop.
    pub fn set_workers_running(&self, running: bool) {
        self.workers.store(running, Ordering::SeqCst);
    }

    pub fn workers_running(&self) -> bool {
        self.workers.load(Ordering::SeqCst)
    }
}

/// An offline drain reserved longer ago than this is lagging.
pub const LAG_WARN_SECONDS: i64 = 300;

/// Dead letters are counted up to this many per job kind per request.
const DEAD_LETTER_SCAN: i64 = 100_000;

/// A portal whose bindings, status or drains are counted: the others are
/// gone (uninstalled, purged) or never finished.
pub(crate) fn is_active(status: PortalStatus) -> bool {
    matches!(
        status,
        PortalStatus::Installing | PortalStatus::Installed | PortalStatus::NeedsReauth
    )
}

/// One drain as the routes show it.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    pub state: DrainState,
    /// Seconds since the open reservation was made; 0 without one.
    pub lag_seconds: i64,
}

/// One problem of one portal, with the command that fixes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    pub what: String,
    pub fix: String,
}

/// Everything the routes show, read once per request.
pub(crate) struct Snapshot {
    pub now: i64,
    pub portals: Vec<Portal>,
    pub matrix: Vec<MatrixRow>,
    pub jobs: Vec<(String, i64)>,
    pub inbox_depth: i64,
    pub drains: Vec<Drain>,
    /// Discarded `forward` and `handle` jobs.
    pub dead_letters: Vec<Job>,
    /// By target name: configured ones, then any other seen.
    pub targets: BTreeMap<String, TargetHealth>,
    pub client: Option<ClientStats>,
}

impl Snapshot {
    pub(crate) async fn collect(state: &AppState) -> Result<Snapshot, StoreError> {
        let s = &state.store;
        let now = (state.now)();
        let mut dead_letters = Vec::new();
        for kind in [engine::forward::FORWARD, engine::forward::HANDLE] {
            dead_letters.extend(
                s.list_jobs(&JobFilter {
                    state: Some("discarded"),
                    kind: Some(kind),
                    member_id: None,
                    limit: Some(DEAD_LETTER_SCAN),
                })
                .await?,
            );
        }
        let drains = s
            .drain_states()
            .await?
            .into_iter()
            .map(|d| Drain {
                lag_seconds: match (&d.process_id, d.reserved_at) {
                    (Some(_), Some(at)) => (now - at).max(0) / 1000,
                    _ => 0,
                },
                state: d,
            })
            .collect();
        let mut targets: BTreeMap<String, TargetHealth> = state
            .observe
            .target_names
            .iter()
            .map(|n| (n.clone(), TargetHealth::default()))
            .collect();
        if let Some(f) = &state.observe.targets {
            targets.extend(f());
        }
        Ok(Snapshot {
            now,
            portals: s.list_portals().await?,
            matrix: s.binding_matrix(None).await?,
            jobs: s.job_counts().await?,
            inbox_depth: s.inbox_depth().await?,
            drains,
            dead_letters,
            targets,
            client: state.observe.client.as_ref().map(|c| c.stats()),
        })
    }

    /// The binding rows of active portals.
    pub(crate) fn active_bindings(&self) -> impl Iterator<Item = &MatrixRow> {
        let active: std::collections::HashSet<&str> = self
            .portals
            .iter()
            .filter(|p| is_active(p.status))
            .map(|p| p.member_id.as_str())
            .collect();
        self.matrix
            .iter()
            .filter(move |r| active.contains(r.member_id.as_str()))
    }

    /// Dead letters by target (`in-process` for the in-process handler).
    pub(crate) fn dead_letters_by_target(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = self.targets.keys().map(|t| (t.clone(), 0)).collect();
        for j in &self.dead_letters {
            let target = if j.kind == engine::forward::HANDLE {
                "in-process".to_owned()
            } else {
                j.payload_json()["target"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_owned()
            };
            *out.entry(target).or_default() += 1;
        }
        out
    }

    /// What is wrong with `portal`, each with the command that fixes it.
    /// Empty for a healthy portal (and for one that is gone).
    pub(crate) fn problems(&self, portal: &Portal) -> Vec<Problem> {
        let m = portal.member_id.as_str();
        let doctor = format!("b24gate doctor --portal {m} --fix");
        let mut out = Vec::new();
        match portal.status {
            PortalStatus::NeedsReauth => out.push(Problem {
                what: "the refresh token was refused: an administrator must open the app \
                       (or reinstall it) to bring new tokens"
                    .into(),
                fix: format!("b24gate doctor --portal {m}"),
            }),
            PortalStatus::Failed => out.push(Problem {
                what: format!(
                    "the install did not complete{}",
                    portal
                        .status_reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
                fix: doctor.clone(),
            }),
            _ => {}
        }
        if !is_active(portal.status) {
            return out;
        }
        for r in self.matrix.iter().filter(|r| r.member_id == m) {
            let b = &r.record;
            if matches!(b.state.as_str(), "missing" | "failed") {
                let mut what = format!(
                    "{} {} ({}) is {}",
                    b.key.kind, b.key.name, b.key.mode, b.state
                );
                if let Some(reason) = b.reason.as_deref().or(b.last_result.as_deref()) {
                    what.push_str(": ");
                    what.push_str(reason);
                }
                out.push(Problem {
                    what,
                    fix: doctor.clone(),
                });
            }
        }
        for d in self.drains.iter().filter(|d| d.state.member_id == m) {
            let connector = if d.state.connector.is_empty() {
                "default connector".to_owned()
            } else {
                format!("connector {}", d.state.connector)
            };
            if d.lag_seconds >= LAG_WARN_SECONDS {
                out.push(Problem {
                    what: format!(
                        "offline drain ({connector}) has held a reservation for {} s",
                        d.lag_seconds
                    ),
                    fix: doctor.clone(),
                });
            }
            if let Some(e) = &d.state.last_error {
                out.push(Problem {
                    what: format!("offline drain ({connector}) failed: {e}"),
                    fix: doctor.clone(),
                });
            }
        }
        let dead = self
            .dead_letters
            .iter()
            .filter(|j| j.member_id.as_deref() == Some(m))
            .count();
        if dead > 0 {
            out.push(Problem {
                what: format!("dead-lettered deliveries: {dead}"),
                fix: format!(
                    "b24gate jobs list --state discarded --portal {m}, then b24gate jobs retry <id>"
                ),
            });
        }
        out
    }

    /// `(bound or otherwise satisfied, expected)` for one portal.
    pub(crate) fn binding_health(&self, member_id: &str) -> (usize, usize) {
        let rows = self.matrix.iter().filter(|r| r.member_id == member_id);
        let expected = rows.clone().filter(|r| r.record.expected).count();
        let bound = rows
            .filter(|r| r.record.expected && r.record.actual && r.record.state == "bound")
            .count();
        (bound, expected)
    }
}

/// Ingest rejections that mean someone called with the wrong identity:
/// `(outcome, total since the process started)`.
pub(crate) fn auth_failures(stats: &crate::IngestStats) -> Vec<(&'static str, u64)> {
    use crate::IngestOutcome as O;
    [O::BadToken, O::UnknownPortal, O::NotInstalled]
        .into_iter()
        .map(|o| (o.as_str(), stats.total(o)))
        .collect()
}

/// Audit entries of refused identities in the last day — installs that
/// failed verification (`install.rejected`) and lifecycle events with a
/// wrong application token for a known portal (`event.forged`) — newest
/// first, at most `limit`.
pub(crate) async fn recent_rejections(
    state: &AppState,
    now: i64,
    limit: usize,
) -> Result<Vec<store::AuditEntry>, StoreError> {
    let mut rows = Vec::new();
    for prefix in ["install.rejected", "event.forged"] {
        rows.extend(
            state
                .store
                .list_audit(&store::AuditFilter {
                    since: Some(now - 24 * 3600 * 1000),
                    action_prefix: Some(prefix),
                    ..Default::default()
                })
                .await?,
        );
    }
    rows.sort_by_key(|a| std::cmp::Reverse(a.id));
    rows.truncate(limit);
    Ok(rows)
}
