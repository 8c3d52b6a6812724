//! The control API under `/_emu/` (JSON). Every handler parses its body into the spec
//! type of [`crate::ops`] and calls the same farm operation the Rust API exposes.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::EmuError;
use crate::ops::{self, Shared};
use crate::server::json_response;

type AppState = Arc<Shared>;

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, EmuError> {
    let b: &[u8] = if body.iter().all(|c| c.is_ascii_whitespace()) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(b).map_err(|e| EmuError::Invalid(format!("body: {e}")))
}

fn reply(r: Result<Value, EmuError>) -> Response {
    match r {
        Ok(v) => json_response(200, v.to_string()),
        Err(e) => {
            let status = match e {
                EmuError::NotFound(_) => 404,
                EmuError::Invalid(_) => 400,
                EmuError::Conflict(_) => 409,
                _ => 500,
            };
            json_response(status, json!({"error": e.to_string()}).to_string())
        }
    }
}

fn to_value<T: serde::Serialize>(t: T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

async fn index(State(s): State<AppState>) -> Response {
    let urls = s.with(|f| to_value(&f.urls));
    reply(Ok(
        json!({"b24emu": env!("CARGO_PKG_VERSION"), "urls": urls}),
    ))
}

/// `POST /_emu/apps` body: an [`ops::AppSpec`] plus the redirect URI.
#[derive(serde::Deserialize)]
struct NewApp {
    #[serde(flatten)]
    spec: ops::AppSpec,
    #[serde(default)]
    redirect_uri: String,
}

async fn create_app(State(s): State<AppState>, body: Bytes) -> Response {
    reply(parse::<NewApp>(&body).and_then(|a| {
        s.with(|f| {
            let app = f.create_app(a.spec)?;
            f.set_redirect_uri(&app.client_id, &a.redirect_uri)
        })
        .map(to_value)
    }))
}

async fn list_apps(State(s): State<AppState>) -> Response {
    reply(Ok(s.with(|f| {
        let mut apps: Vec<_> = f.apps.values().cloned().collect();
        apps.sort_by_key(|a| a.id);
        to_value(apps)
    })))
}

async fn create_portal(State(s): State<AppState>, body: Bytes) -> Response {
    reply(
        parse::<ops::PortalSpec>(&body)
            .and_then(|spec| s.with(|f| f.create_portal(spec)).map(to_value)),
    )
}

async fn list_portals(State(s): State<AppState>) -> Response {
    reply(Ok(s.with(|f| {
        let mut v: Vec<_> = f.portals.values().map(|p| f.portal_info(p)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        to_value(v)
    })))
}

async fn portal_get(State(s): State<AppState>, Path(m): Path<String>) -> Response {
    reply(s.portal_state(&m))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Since {
    since: u64,
}

async fn deliveries(
    State(s): State<AppState>,
    Path(m): Path<String>,
    Query(q): Query<Since>,
) -> Response {
    reply(s.deliveries(&m, q.since).map(to_value))
}

async fn portal_action(
    State(s): State<AppState>,
    Path((m, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let r: Result<Value, EmuError> =
        match action.as_str() {
            "install" => parse(&body).and_then(|x| s.with(|f| f.install(&m, x)).map(to_value)),
            "install-finish" => parse(&body).and_then(|x| {
                s.with(|f| f.install_finish(&m, x))
                    .map(|_| json!({"installed": true}))
            }),
            "update" => parse(&body)
                .and_then(|x| s.with(|f| f.update(&m, x)).map(|v| json!({"version": v}))),
            "uninstall" => parse(&body).and_then(|x| {
                s.with(|f| f.uninstall(&m, x))
                    .map(|_| json!({"uninstalled": true}))
            }),
            "reinstall" => parse(&body).and_then(|x| s.with(|f| f.reinstall(&m, x)).map(to_value)),
            "tokens" => parse(&body).and_then(|x| s.with(|f| f.tokens(&m, x)).map(to_value)),
            "codes" => parse(&body)
                .and_then(|x| s.with(|f| f.auth_code(&m, x)).map(|c| json!({"code": c}))),
            "changes" => parse(&body).and_then(|x| s.changes(&m, x).map(to_value)),
            "confirm" => parse(&body)
                .and_then(|x| s.with(|f| f.confirm(&m, x)).map(|n| json!({"decided": n}))),
            "rename" => parse(&body).and_then(|x| s.with(|f| f.rename(&m, x)).map(to_value)),
            "webhooks" => parse(&body).and_then(|x| s.with(|f| f.create_webhook(&m, x))),
            "payment" => {
                parse(&body).and_then(|x| s.with(|f| f.payment(&m, x)).map(|_| json!({"ok": true})))
            }
            "limits" => parse(&body).and_then(|x| s.with(|f| f.set_limits(&m, x)).map(to_value)),
            "delete" => s
                .with(|f| f.delete_portal(&m))
                .map(|_| json!({"deleted": true})),
            _ => Err(EmuError::NotFound(format!("control call {action}"))),
        };
    reply(r)
}

async fn faults(State(s): State<AppState>, body: Bytes) -> Response {
    reply(parse::<ops::FaultsSpec>(&body).and_then(|x| s.with(|f| f.set_faults(x))))
}

async fn stats(State(s): State<AppState>) -> Response {
    reply(Ok(s.stats_json()))
}

async fn delivery(State(s): State<AppState>, body: Bytes) -> Response {
    reply(parse::<crate::DeliverySpec>(&body).map(|x| s.set_delivery(x)))
}

async fn delivery_get(State(s): State<AppState>) -> Response {
    reply(Ok(s.delivery_settings()))
}

async fn clock(State(s): State<AppState>, body: Bytes) -> Response {
    reply(parse::<ops::ClockSpec>(&body).map(|c| {
        if let Some(fz) = c.freeze {
            s.clock.set_frozen(fz);
        }
        if let Some(a) = c.advance_secs {
            s.clock.advance(a);
        }
        json!({"now": s.clock.now(), "frozen": s.clock.is_frozen()})
    }))
}

async fn clock_get(State(s): State<AppState>) -> Response {
    reply(Ok(
        json!({"now": s.clock.now(), "frozen": s.clock.is_frozen()}),
    ))
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/apps", post(create_app).get(list_apps))
        .route("/portals", post(create_portal).get(list_portals))
        .route("/portals/{member_id}", get(portal_get))
        .route("/portals/{member_id}/deliveries", get(deliveries))
        .route("/portals/{member_id}/{action}", post(portal_action))
        .route("/faults", post(faults))
        .route("/stats", get(stats))
        .route("/delivery", post(delivery).get(delivery_get))
        .route("/clock", post(clock).get(clock_get))
}
