//! `server`: the HTTP surface of b24gate. Thin: it parses, verifies against
//! the store, writes to the inbox and answers; everything else happens in
//! jobs (BRIEF §3 invariant 1 — no route here makes an outbound call, and the
//! server state holds no HTTP client to make one with).
//!
//! Map:
//! - [`app`] builds the router from an [`AppState`]; [`serve`] runs it on a
//!   bound listener until a shutdown signal (tests use port 0).
//! - `ingest`: `POST /b24/events` and `POST /b24/install` (both install
//!   flows), the hot path.
//! - [`InboxWriter`]: group commit — concurrent requests share one
//!   transaction (and one fsync) of [`store::Store::append_inbox`].
//! - [`IngestStats`]: counters by event and outcome.
//! - [`admin`]: the admin API (bearer token): the REST proxy, pending calls.
//! - Observability: `metrics` (`GET /metrics`, Prometheus text, see
//!   `docs/metrics.md`), `health` (`/healthz`, `/readyz`, `/v1/status`),
//!   `status_page` (`GET /status`, server-rendered HTML), all reading one
//!   `observe::Snapshot`; [`Observe`] holds what the gateway plugs in.

pub mod admin;
mod body;
mod health;
mod inbox_writer;
mod ingest;
mod metrics;
pub mod observe;
mod stats;
mod status_page;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;

pub use inbox_writer::{InboxWriter, OwnedInboxEvent, WriterOptions};
pub use ingest::{INSTALLER_POST, dedupe_key_online};
pub use observe::Observe;
pub use stats::{ACK_BUCKETS, HistogramSnapshot, IngestOutcome, IngestStats};

/// Limits of the Bitrix24-facing routes.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Largest body accepted (413 above it).
    pub body_limit: usize,
    /// The whole body must arrive within this (a trickling client is cut off
    /// with 408).
    pub body_deadline: Duration,
    /// Bounds of the form decoder.
    pub form_limits: wire::Limits,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            body_limit: 1024 * 1024,
            body_deadline: Duration::from_secs(10),
            form_limits: wire::Limits::default(),
        }
    }
}

pub use engine::{NowFn, system_now};

/// Everything a request handler may touch: the store (read-only on the hot
/// path), the inbox writer, limits and counters. Deliberately no HTTP client.
#[derive(Clone)]
pub struct AppState {
    pub store: store::Store,
    pub inbox: InboxWriter,
    pub ingest: Arc<IngestConfig>,
    pub stats: Arc<IngestStats>,
    pub now: NowFn,
    /// The admin API; `None` answers 503 on `/v1/…`.
    pub admin: Option<Arc<admin::Admin>>,
    /// What `/metrics`, `/readyz` and the status routes read beyond the store.
    pub observe: Observe,
}

impl AppState {
    /// Builds the state and starts the inbox writer task on the current runtime.
    pub fn new(store: store::Store, ingest: IngestConfig) -> AppState {
        Self::with_waker(store, ingest, None)
    }

    /// As [`AppState::new`]; `wake` is notified after every inbox commit
    /// (the engine's dispatcher, so events move on without waiting a poll).
    pub fn with_waker(
        store: store::Store,
        ingest: IngestConfig,
        wake: Option<Arc<tokio::sync::Notify>>,
    ) -> AppState {
        let now = system_now();
        AppState {
            inbox: InboxWriter::start(store.clone(), now.clone(), 256, wake),
            store,
            ingest: Arc::new(ingest),
            stats: Arc::new(IngestStats::default()),
            now,
            admin: None,
            observe: Observe::default(),
        }
    }
}

/// The router: Bitrix24-facing routes, health, metrics, status and the
/// admin API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/b24/events", post(ingest::events))
        .route("/b24/install", post(ingest::install))
        .route("/b24/install/status/{id}", get(ingest::install_status))
        .route("/b24/ping", get(ingest::ping))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/status", get(health::status))
        .route("/status", get(status_page::page))
        .route(
            "/v1/portals/{member_id}/rest/{method}",
            post(admin::rest_proxy),
        )
        .route("/v1/pending/{id}", get(admin::pending))
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then drains
/// in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
