//! HTTP plumbing: the portal router (path and Host routing, control API), the OAuth
//! router, and the HTTPS accept loop that serves the portal router over TLS.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::codec;
use crate::ops::Shared;
use crate::rest::{self, BodyKind, RestRequest, Route};

type AppState = Arc<Shared>;

pub(crate) fn json_response(status: u16, body: String) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

fn body_kind(headers: &HeaderMap) -> BodyKind {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_string();
    let lower = ct.to_ascii_lowercase();
    if lower.starts_with("application/json") {
        BodyKind::Json
    } else if lower.starts_with("multipart/form-data") {
        let b = ct
            .split(';')
            .find_map(|p| {
                p.trim()
                    .strip_prefix("boundary=")
                    .map(|b| b.trim_matches('"').to_string())
            })
            .unwrap_or_default();
        BodyKind::Multipart(b)
    } else {
        BodyKind::Form
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, tok) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| tok.trim().to_string())
}

fn host(headers: &HeaderMap, uri: &Uri) -> String {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

async fn rest_common(
    shared: &Shared,
    route: Route,
    tail: String,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = RestRequest {
        route,
        tail,
        path_and_query: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        query: uri.query().unwrap_or("").as_bytes().to_vec(),
        body_kind: body_kind(&headers),
        body: body.to_vec(),
        bearer: bearer(&headers),
    };
    let r = rest::handle(shared, req).await;
    if let Some(loc) = r.location {
        return Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, loc)
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    json_response(r.status, r.body)
}

async fn rest_by_name(
    State(s): State<AppState>,
    Path((name, tail)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rest_common(
        &s,
        Route::Name(name.to_ascii_lowercase()),
        tail,
        uri,
        headers,
        body,
    )
    .await
}

async fn rest_by_host(
    State(s): State<AppState>,
    Path(tail): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = host(&headers, &uri);
    rest_common(&s, Route::Host(h), tail, uri, headers, body).await
}

/// The portal's `/oauth/authorize/` (§7.1), in path or Host routing.
async fn authorize_common(shared: &Shared, route: Route, uri: Uri) -> Response {
    use crate::oauth::Authorize;
    let params = codec::decode_form(uri.query().unwrap_or("").as_bytes());
    let pq = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let answer = shared.with(|f| match rest::resolve(f, &route, &pq) {
        Ok(rest::Resolved::Portal(m)) => crate::oauth::authorize(f, &m, &params),
        Ok(rest::Resolved::Moved(to)) => Authorize::Redirect(to),
        Err(e) => Authorize::Error(e.status, e.to_json()),
    });
    match answer {
        Authorize::Redirect(to) => Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, to)
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Authorize::Code(code) => Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Body::from(format!(
                "<!doctype html><title>Authorization code</title>\n\
                 <p>Authorization code: <code id=\"code\">{code}</code></p>\n"
            )))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Authorize::Error(status, v) => json_response(status, v.to_string()),
    }
}

async fn authorize_by_name(
    State(s): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    authorize_common(&s, Route::Name(name.to_ascii_lowercase()), uri).await
}

async fn authorize_by_host(State(s): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let h = host(&headers, &uri);
    authorize_common(&s, Route::Host(h), uri).await
}

async fn not_found() -> Response {
    json_response(
        404,
        r#"{"error":"NOT_FOUND","error_description":"Not found"}"#.to_string(),
    )
}

/// The router of the portal listeners (HTTP and HTTPS).
pub(crate) fn portal_router(shared: AppState) -> Router {
    Router::new()
        .route("/p/{name}/rest/{*tail}", any(rest_by_name))
        .route("/rest/{*tail}", any(rest_by_host))
        .route("/p/{name}/oauth/authorize/", get(authorize_by_name))
        .route("/p/{name}/oauth/authorize", get(authorize_by_name))
        .route("/oauth/authorize/", get(authorize_by_host))
        .route("/oauth/authorize", get(authorize_by_host))
        .nest("/_emu", crate::control::router())
        .fallback(not_found)
        .with_state(shared)
}

fn oauth_params(
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> serde_json::Map<String, serde_json::Value> {
    let mut p = codec::decode_form(uri.query().unwrap_or("").as_bytes());
    let b = if is_json(headers) {
        codec::decode_json(body).unwrap_or_default()
    } else {
        codec::decode_form(body)
    };
    p.extend(b);
    p
}

async fn oauth_token(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = oauth_params(&uri, &headers, &body);
    let (status, v) = s.with(|f| crate::oauth::token(f, &p));
    json_response(status, v.to_string())
}

async fn oauth_rest(
    State(s): State<AppState>,
    Path(tail): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _ = method;
    let m = tail.trim_end_matches(".json").to_ascii_lowercase();
    if m != "app.info" {
        return json_response(
            404,
            r#"{"error":"ERROR_METHOD_NOT_FOUND","error_description":"Method not found!"}"#.into(),
        );
    }
    let p = oauth_params(&uri, &headers, &body);
    let token = bearer(&headers).or_else(|| {
        codec::param(&p, "auth")
            .or_else(|| codec::param(&p, "access_token"))
            .and_then(codec::scalar_str)
    });
    let (status, v) = s.with(|f| crate::oauth::app_info(f, token));
    json_response(status, v.to_string())
}

/// The OAuth server's router.
pub(crate) fn oauth_router(shared: AppState) -> Router {
    Router::new()
        .route("/oauth/token/", any(oauth_token))
        .route("/oauth/token", any(oauth_token))
        .route("/rest/{*tail}", any(oauth_rest))
        .fallback(not_found)
        .with_state(shared)
}

/// Serves `router` on `listener` until `stop` flips.
pub(crate) async fn serve_http(
    listener: TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

/// Serves `router` over TLS on `listener` until `stop` flips.
pub(crate) async fn serve_https(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(router);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
