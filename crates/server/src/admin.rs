//! The admin API (`/v1/…`): a bearer token from the environment
//! (`B24GATE_ADMIN_TOKEN`), compared in constant time. Without a configured
//! token the admin API answers 503 and does nothing.
//!
//! - `POST /v1/portals/{member_id}/rest/{method}`: the REST proxy. The
//!   gateway handles tokens, refresh, the portal's rate limit and method
//!   confirmation: `200` with the result, or `202` with a pending call's id
//!   when the portal waits for an admin's confirmation (protocol §9).
//! - `GET /v1/pending/{id}`: how a parked call stands.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::confirm::ProxyOutcome;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use wire::MemberId;

use crate::AppState;

/// What the admin routes need.
pub struct Admin {
    /// The bearer token; `None` disables the admin API.
    pub token: Option<String>,
    pub client: client::Client,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

/// Checks `Authorization: Bearer …` in constant time; `Some` is the
/// refusal to send.
pub(crate) fn refuse(admin: Option<&Arc<Admin>>, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = admin.and_then(|a| a.token.as_deref()) else {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin_disabled",
            "the admin API is off: set B24GATE_ADMIN_TOKEN",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok =
        given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()));
    (!ok).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin token",
        )
    })
}

fn client_error(e: &client::Error) -> Response {
    use client::Error as E;
    let msg = e.to_string();
    match e {
        E::UnknownPortal(_) => error(StatusCode::NOT_FOUND, "unknown_portal", msg),
        E::PortalInactive { .. } | E::NeedsReauth(_) | E::NoCredentials(_) => {
            error(StatusCode::CONFLICT, "portal_unavailable", msg)
        }
        E::ConfirmationDenied(_) => error(StatusCode::FORBIDDEN, "METHOD_CONFIRM_DENIED", msg),
        E::Api { error: api, .. } => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"error": api.code.as_str(), "error_description": api.description, "message": msg})),
        )
            .into_response(),
        E::Invalid(_) => error(StatusCode::BAD_REQUEST, "invalid", msg),
        _ => error(StatusCode::BAD_GATEWAY, "upstream", msg),
    }
}

pub(crate) async fn rest_proxy(
    State(state): State<AppState>,
    Path((member_id, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refuse(state.admin.as_ref(), &headers) {
        return r;
    }
    let Some(admin) = &state.admin else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin_disabled",
            "no admin API",
        );
    };
    let Ok(member_id) = MemberId::parse(&member_id) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "member_id must be 32 hex characters",
        );
    };
    let params: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "the body must be a JSON object of parameters",
                );
            }
        }
    };
    match engine::confirm::proxy_call(
        &state.store,
        &admin.client,
        &state.now,
        &member_id,
        &method,
        params,
    )
    .await
    {
        ProxyOutcome::Done(s) => {
            let mut out = json!({"result": s.result});
            if let Some(n) = s.next {
                out["next"] = json!(n);
            }
            if let Some(t) = s.total {
                out["total"] = json!(t);
            }
            (StatusCode::OK, Json(out)).into_response()
        }
        ProxyOutcome::Parked(id) => (
            StatusCode::ACCEPTED,
            Json(json!({"pending_call_id": id, "state": "waiting",
                "message": "the portal waits for an administrator to confirm this method"})),
        )
            .into_response(),
        ProxyOutcome::Failed(e) => client_error(&e),
    }
}

pub(crate) async fn pending(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refuse(state.admin.as_ref(), &headers) {
        return r;
    }
    match state.store.get_pending_call(id).await {
        Ok(Some(c)) => Json(json!({
            "id": c.id,
            "member_id": c.member_id,
            "method": c.method,
            "state": c.state,
            "result": c.result.as_deref().and_then(|r| serde_json::from_str::<Value>(r).ok()),
            "requested_at": c.requested_at,
        }))
        .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such pending call"),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_error",
            e.to_string(),
        ),
    }
}
