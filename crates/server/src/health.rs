//! Health: `GET /healthz` (the process answers), `GET /readyz` (it can do
//! its work: database reachable, migrations current, workers running) and
//! `GET /v1/status` (admin token: a JSON summary of the whole fleet).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use store::PortalStatus;

use crate::AppState;
use crate::observe::{Snapshot, auth_failures, is_active, recent_rejections};

/// `GET /readyz`: 200 when every check passes, else 503; the body names
/// each check either way (no secret, no portal data: it is unauthenticated).
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let database = state.store.ping().await.is_ok();
    let pending = if database {
        state.store.pending_migrations().await.ok()
    } else {
        None
    };
    let migrations = pending == Some(0);
    let workers = state.observe.workers_running();
    let ready = database && migrations && workers;
    let body = json!({
        "ready": ready,
        "checks": {
            "database": if database { "ok" } else { "unreachable" },
            "migrations": match pending {
                Some(0) => "ok".to_owned(),
                Some(n) => format!("{n} pending: run b24gate migrate"),
                None => "unknown".to_owned(),
            },
            "workers": if workers { "running" } else { "not running" },
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /v1/status`: the fleet at a glance, for scripts and dashboards;
/// `/status` renders the same [`Snapshot`] as a page.
pub(crate) async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = crate::admin::refuse(state.admin.as_ref(), &headers) {
        return r;
    }
    match summary(&state).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "status: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "store_error", "message": "store unavailable"})),
            )
                .into_response()
        }
    }
}

async fn summary(state: &AppState) -> Result<Value, store::StoreError> {
    let snap = Snapshot::collect(state).await?;
    let mut portals: BTreeMap<&str, usize> =
        PortalStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for p in &snap.portals {
        *portals.entry(p.status.as_str()).or_default() += 1;
    }
    let mut bindings: BTreeMap<&str, usize> = BTreeMap::new();
    for r in snap.active_bindings() {
        *bindings.entry(r.record.state.as_str()).or_default() += 1;
    }
    let jobs: serde_json::Map<String, Value> = snap
        .jobs
        .iter()
        .map(|(s, n)| (s.clone(), json!(n)))
        .collect();
    let dead = snap.dead_letters_by_target();
    let offline: Vec<Value> = snap
        .drains
        .iter()
        .map(|d| {
            json!({
                "member_id": d.state.member_id,
                "connector": d.state.connector,
                "reservation_open": d.state.process_id.is_some(),
                "lag_seconds": d.lag_seconds,
                "drained_total": d.state.drained_total,
                "error_total": d.state.error_total,
                "last_error": d.state.last_error,
                "last_drain_at": d.state.last_drain_at,
            })
        })
        .collect();
    let targets: serde_json::Map<String, Value> = snap
        .targets
        .iter()
        .map(|(name, h)| {
            (
                name.clone(),
                json!({
                    "healthy": h.healthy(),
                    "attempts": h.attempts,
                    "failures": h.failures,
                    "consecutive_failures": h.consecutive_failures,
                    "last_status": h.last_status,
                }),
            )
        })
        .collect();
    let unhealthy: Vec<Value> = snap
        .portals
        .iter()
        .filter(|p| is_active(p.status))
        .filter_map(|p| {
            let problems = snap.problems(p);
            (!problems.is_empty()).then(|| {
                json!({
                    "member_id": p.member_id.as_str(),
                    "domain": p.domain.as_str(),
                    "status": p.status.as_str(),
                    "problems": problems.iter().map(|x| json!({"problem": x.what, "fix": x.fix})).collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    let failures: serde_json::Map<String, Value> = auth_failures(&state.stats)
        .into_iter()
        .map(|(k, n)| (k.to_owned(), json!(n)))
        .collect();
    let rejected: Vec<Value> = recent_rejections(state, snap.now, 20)
        .await?
        .into_iter()
        .map(|a| {
            json!({
                "at": a.at,
                "member_id": a.member_id,
                "action": a.action,
                "detail": a.detail_json(),
            })
        })
        .collect();
    Ok(json!({
        "generated_at": snap.now,
        "workers_running": state.observe.workers_running(),
        "portals": {"total": snap.portals.len(), "by_status": portals},
        "bindings": {"by_state": bindings},
        "jobs": {"by_state": jobs},
        "inbox_depth": snap.inbox_depth,
        "dead_letters": {"total": dead.values().sum::<u64>(), "by_target": dead},
        "offline": offline,
        "targets": targets,
        "auth_failures": {"since_start": failures, "rejected_24h": rejected},
        "unhealthy_portals": unhealthy,
    }))
}
