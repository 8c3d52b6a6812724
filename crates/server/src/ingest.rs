//! The Bitrix24-facing routes: the hot path (BRIEF §3 "Ingest path").
//!
//! Raw bytes under a limit and a deadline → one decode → portal lookup and a
//! constant-time check of the application token's keyed hash → dedupe key →
//! inbox (group commit) → 200. No outbound call: install verification and
//! everything else runs in jobs.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use store::{Appended, PortalStatus, TokenCheck};
use wire::{AppPagePost, Event, EventData, event};

use crate::body::{BodyError, read_body};
use crate::inbox_writer::OwnedInboxEvent;
use crate::{AppState, IngestOutcome};

/// The inbox `event` name of an installer (flow B) POST; it is not a
/// Bitrix24 event, so it cannot collide with one.
pub const INSTALLER_POST: &str = "b24gate.installer_post";

fn reject(
    state: &AppState,
    event: Option<&str>,
    outcome: IngestOutcome,
    status: StatusCode,
    message: String,
) -> Response {
    state.stats.record(event, outcome);
    tracing::debug!(
        outcome = outcome.as_str(),
        status = status.as_u16(),
        "ingest rejected"
    );
    (
        status,
        Json(json!({"error": outcome.as_str(), "message": message})),
    )
        .into_response()
}

async fn body_or_reject(state: &AppState, body: Body) -> Result<Vec<u8>, Response> {
    match read_body(body, state.ingest.body_limit, state.ingest.body_deadline).await {
        Ok(b) => Ok(b),
        Err(BodyError::TooLarge) => Err(reject(
            state,
            None,
            IngestOutcome::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {} bytes", state.ingest.body_limit),
        )),
        Err(BodyError::Deadline) => Err(reject(
            state,
            None,
            IngestOutcome::Timeout,
            StatusCode::REQUEST_TIMEOUT,
            "body not received within the deadline".into(),
        )),
        Err(BodyError::Broken) => Err(reject(
            state,
            None,
            IngestOutcome::Malformed,
            StatusCode::BAD_REQUEST,
            "body could not be read".into(),
        )),
    }
}

/// `POST /b24/events`: every online delivery (and `ONAPPINSTALL`, when the
/// app's install URL points here too).
pub(crate) async fn events(State(state): State<AppState>, body: Body) -> Response {
    let started = Instant::now();
    let r = match body_or_reject(&state, body).await {
        Ok(bytes) => ingest_event(&state, &bytes).await,
        Err(r) => r,
    };
    state.stats.ack_events.observe(started.elapsed());
    r
}

/// `POST /b24/install`: flow A (an `ONAPPINSTALL` event) or flow B (the
/// installer page POST of protocol §3.5, answered with a page that calls
/// `BX24.installFinish()` once the server side is done).
pub(crate) async fn install(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let started = Instant::now();
    let r = match body_or_reject(&state, body).await {
        Ok(bytes) if looks_like_event(&bytes) => ingest_event(&state, &bytes).await,
        Ok(bytes) => ingest_installer(&state, query.unwrap_or_default().as_bytes(), &bytes).await,
        Err(r) => r,
    };
    state.stats.ack_install.observe(started.elapsed());
    r
}

/// An event body has a top-level `event=` field; an installer POST does not.
fn looks_like_event(body: &[u8]) -> bool {
    body.split(|b| *b == b'&')
        .any(|pair| pair.starts_with(b"event="))
}

/// The dedupe key of an online delivery: portal, event, binding, `ts` and
/// the canonical `data`. Hashed, because `data` may hold a token
/// (ONAPPMETHODCONFIRM).
pub fn dedupe_key_online(e: &Event) -> String {
    let mut h = Sha256::new();
    for part in [
        e.auth.member_id.as_str(),
        e.name.as_str(),
        &e.handler_id.map(|h| h.to_string()).unwrap_or_default(),
        &e.ts.to_string(),
        &e.canonical_data(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    format!("on:{}", hex::encode(h.finalize()))
}

async fn ingest_event(state: &AppState, bytes: &[u8]) -> Response {
    let e = match Event::parse(bytes, &state.ingest.form_limits) {
        Ok(e) => e,
        Err(err) => {
            return reject(
                state,
                None,
                IngestOutcome::Malformed,
                StatusCode::BAD_REQUEST,
                err.to_string(),
            );
        }
    };
    let name = e.name.as_str().to_owned();
    let member_id = e.auth.member_id.as_str();
    let is_install = name == event::ONAPPINSTALL;
    let check = match &e.auth.application_token {
        Some(token) => {
            state
                .store
                .check_app_token(member_id, token, (state.now)())
                .await
        }
        None => Ok(TokenCheck::Mismatch),
    };
    let check = match check {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "portal lookup failed");
            return reject(
                state,
                Some(&name),
                IngestOutcome::StoreError,
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable".into(),
            );
        }
    };
    // ONAPPINSTALL is the one event accepted without a stored token: it is
    // verified by a job against the OAuth server (BRIEF §3 "Ingest path").
    let verified = match (check, is_install) {
        (TokenCheck::Match { .. }, true) => true,
        (_, true) => false,
        (TokenCheck::UnknownPortal, false) => {
            return reject(
                state,
                Some(&name),
                IngestOutcome::UnknownPortal,
                StatusCode::UNAUTHORIZED,
                "unknown portal".into(),
            );
        }
        (TokenCheck::Mismatch, false) => {
            audit_forged_lifecycle(state, member_id, &name);
            return reject(
                state,
                Some(&name),
                IngestOutcome::BadToken,
                StatusCode::UNAUTHORIZED,
                "application token does not match".into(),
            );
        }
        (TokenCheck::Match { status, .. }, false) => {
            let open = matches!(
                status,
                PortalStatus::Installing | PortalStatus::Installed | PortalStatus::NeedsReauth
            );
            // A repeated ONAPPUNINSTALL is stored so the engine can log it as
            // a no-op; any other event for a gone portal is refused.
            if !open && name != event::ONAPPUNINSTALL {
                return reject(
                    state,
                    Some(&name),
                    IngestOutcome::NotInstalled,
                    StatusCode::UNAUTHORIZED,
                    format!("portal is {status}"),
                );
            }
            true
        }
    };
    let (payload, secrets) = split_secrets(state, &e);
    let row = OwnedInboxEvent {
        member_id: member_id.to_owned(),
        dedupe_key: dedupe_key_online(&e),
        event: name.clone(),
        source: "online",
        verified,
        ts: i64::try_from(e.ts).ok(),
        payload,
        secrets,
    };
    let outcome = if verified {
        IngestOutcome::Accepted
    } else {
        IngestOutcome::AcceptedUnverified
    };
    append(state, &name, row, outcome).await
}

/// A lifecycle event (uninstall, method confirmation) with a wrong token is
/// an attack on a known portal: leave an audit entry (besides the counter),
/// at most one per portal and event a minute so a flood cannot fill the log.
/// Written off the request path.
fn audit_forged_lifecycle(state: &AppState, member_id: &str, name: &str) {
    if name != event::ONAPPUNINSTALL && name != event::ONAPPMETHODCONFIRM {
        return;
    }
    let now = (state.now)();
    if !state.stats.should_audit(member_id, name, now) {
        return;
    }
    let store = state.store.clone();
    let (member_id, name) = (member_id.to_owned(), name.to_owned());
    tokio::spawn(async move {
        let entry = store::NewAudit {
            member_id: Some(&member_id),
            actor: "bitrix24",
            action: "event.forged",
            outcome: "rejected",
            detail: json!({"event": name, "reason": "application token does not match"}),
        };
        if let Err(e) = store.append_audit(&entry, now).await {
            tracing::warn!(error = %e, "audit append failed");
        }
    });
}

async fn append(
    state: &AppState,
    name: &str,
    row: OwnedInboxEvent,
    outcome: IngestOutcome,
) -> Response {
    match state.inbox.append(row).await {
        Ok(Appended::Inserted(id)) => {
            state.stats.record(Some(name), outcome);
            (StatusCode::OK, Json(json!({"ok": true, "id": id}))).into_response()
        }
        Ok(Appended::Duplicate) => {
            state.stats.record(Some(name), IngestOutcome::Duplicate);
            (StatusCode::OK, Json(json!({"ok": true, "duplicate": true}))).into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "inbox append failed");
            reject(
                state,
                Some(name),
                IngestOutcome::StoreError,
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable".into(),
            )
        }
    }
}

/// Splits a delivery into what is stored in clear (the event without its
/// secrets) and the secrets the engine needs later, sealed by the store:
/// the install/update token set, and the token a method confirmation is
/// bound to. Other events' tokens are not kept — stored credentials serve.
fn split_secrets(state: &AppState, e: &Event) -> (Value, Option<String>) {
    let a = &e.auth;
    let mut auth = json!({
        "member_id": a.member_id.as_str(),
        "domain": a.domain.as_str(),
        "client_endpoint": a.client_endpoint.as_str(),
        "server_endpoint": a.server_endpoint.as_str(),
    });
    if let Some(u) = &a.user {
        auth["user_id"] = json!(u.user_id);
        auth["scope"] = json!(u.scope.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        auth["status"] = json!(u.status.as_str());
        auth["expires"] = json!(u.expires);
    }
    let mut data = e.raw_data().map_or(Value::Null, |d| d.to_json());
    let mut secrets = serde_json::Map::new();
    match &e.data {
        EventData::AppInstall(_) | EventData::AppUpdate(_) => {
            if let Some(t) = &a.application_token {
                secrets.insert("application_token".into(), json!(t.expose_secret()));
            }
            if let Some(u) = &a.user {
                secrets.insert("access_token".into(), json!(u.access_token.expose_secret()));
                if let Some(r) = &u.refresh_token {
                    secrets.insert("refresh_token".into(), json!(r.expose_secret()));
                }
                secrets.insert("expires".into(), json!(u.expires));
            }
        }
        EventData::AppMethodConfirm(c) => {
            secrets.insert("method_token".into(), json!(c.token.expose_secret()));
            let fingerprint = state.store.keys().fingerprint(c.token.expose_secret());
            if let Some(obj) = data.as_object_mut() {
                obj.insert("TOKEN".into(), json!(format!("fingerprint:{fingerprint}")));
            }
        }
        _ => {}
    }
    let payload = json!({
        "event": e.name.as_str(),
        "event_handler_id": e.handler_id,
        "ts": e.ts,
        "auth": auth,
        "data": data,
    });
    let secrets = (!secrets.is_empty()).then(|| Value::Object(secrets).to_string());
    (payload, secrets)
}

async fn ingest_installer(state: &AppState, query: &[u8], body: &[u8]) -> Response {
    let post = match AppPagePost::parse(query, body, &state.ingest.form_limits) {
        Ok(p) => p,
        Err(err) => {
            return reject(
                state,
                Some(INSTALLER_POST),
                IngestOutcome::Malformed,
                StatusCode::BAD_REQUEST,
                err.to_string(),
            );
        }
    };
    let mut h = Sha256::new();
    h.update(post.member_id.as_str().as_bytes());
    h.update([0u8]);
    h.update(post.access_token.expose_secret().as_bytes());
    let key = hex::encode(h.finalize());
    let payload = json!({
        "event": INSTALLER_POST,
        "member_id": post.member_id.as_str(),
        "domain": post.domain.as_str(),
        "https": post.https,
        "lang": post.lang,
        "placement": post.placement,
        "status": post.status.as_str(),
        "server_endpoint": post.server_endpoint.as_ref().map(|e| e.as_str()),
        "client_endpoint": post.client_endpoint().as_str(),
        "scope": post.scope.as_ref().map(|s| s.iter().map(|x| x.as_str()).collect::<Vec<_>>()),
        "expires_in": post.expires_in,
    });
    let mut secrets = json!({
        "access_token": post.access_token.expose_secret(),
        "refresh_token": post.refresh_token.expose_secret(),
        "expires_in": post.expires_in,
    });
    if let Some(t) = &post.application_token {
        secrets["application_token"] = json!(t.expose_secret());
    }
    let row = OwnedInboxEvent {
        member_id: post.member_id.as_str().to_owned(),
        dedupe_key: format!("installer:{key}"),
        event: INSTALLER_POST.to_owned(),
        source: "installer",
        verified: false,
        ts: None,
        payload,
        secrets: Some(secrets.to_string()),
    };
    match state.inbox.append(row).await {
        Ok(Appended::Inserted(id)) => {
            state
                .stats
                .record(Some(INSTALLER_POST), IngestOutcome::AcceptedUnverified);
            installer_page(id, &key)
        }
        Ok(Appended::Duplicate) => {
            state
                .stats
                .record(Some(INSTALLER_POST), IngestOutcome::Duplicate);
            match state.store.find_inbox_id(&format!("installer:{key}")).await {
                Ok(Some(id)) => installer_page(id, &key),
                _ => reject(
                    state,
                    Some(INSTALLER_POST),
                    IngestOutcome::StoreError,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unavailable".into(),
                ),
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "inbox append failed");
            reject(
                state,
                Some(INSTALLER_POST),
                IngestOutcome::StoreError,
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable".into(),
            )
        }
    }
}

/// The installer page: it waits until the server side of the install is
/// done, then calls `BX24.installFinish()` (protocol §3.3). It must allow
/// framing, so no `X-Frame-Options` is sent.
fn installer_page(id: i64, key: &str) -> Response {
    let page = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Installing…</title>
<script src="//api.bitrix24.com/api/v1/"></script></head>
<body><p id="state">Setting up the application…</p>
<script>
(function () {{
  var url = "install/status/{id}?key={key}";
  function poll() {{
    fetch(url).then(function (r) {{ return r.json(); }}).then(function (s) {{
      if (s.state === "ready") {{
        document.getElementById("state").textContent = "Done.";
        if (window.BX24) {{ BX24.init(function () {{ BX24.installFinish(); }}); }}
      }} else if (s.state === "failed") {{
        document.getElementById("state").textContent = "Installation failed: " + s.reason;
      }} else {{ setTimeout(poll, 1000); }}
    }}).catch(function () {{ setTimeout(poll, 2000); }});
  }}
  poll();
}})();
</script></body></html>"#
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

#[derive(serde::Deserialize)]
pub(crate) struct StatusQuery {
    key: String,
}

/// `GET /b24/install/status/{id}?key=…`: what the installer page polls.
/// `ready` once the install was verified and the portal set up.
pub(crate) async fn install_status(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<StatusQuery>,
) -> Response {
    let Ok(Some(row)) = state.store.get_inbox(id).await else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))).into_response();
    };
    // The key is the unguessable hash given to the page; compare in full.
    if row.dedupe_key != format!("installer:{}", q.key) {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))).into_response();
    }
    let portal = state.store.get_portal(&row.member_id).await.ok().flatten();
    let (s, reason) = match (row.state.as_str(), portal.map(|p| p.status)) {
        ("rejected", _) => ("failed", "the install could not be verified"),
        ("processed", Some(PortalStatus::Installing | PortalStatus::Installed)) => ("ready", ""),
        ("processed", Some(PortalStatus::Failed)) => ("failed", "the install did not complete"),
        _ => ("pending", ""),
    };
    Json(json!({"state": s, "reason": reason})).into_response()
}

#[derive(serde::Deserialize)]
pub(crate) struct PingQuery {
    nonce: String,
}

/// `GET /b24/ping?nonce=…`: echoes the nonce, so `b24gate doctor` can prove
/// that a request through the public URL reaches this gateway.
pub(crate) async fn ping(Query(q): Query<PingQuery>) -> Response {
    let nonce: String = q
        .nonce
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(64)
        .collect();
    Json(json!({"b24gate": true, "nonce": nonce})).into_response()
}
