//! The system-under-test side: its own tokio runtime (so the load generator
//! and the server do not share worker threads, as two processes would not),
//! and the no-op baseline server.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;

/// An emulator measured for speed: seeded, rate and operating limits off,
/// delivery bodies not kept and a delivery log of `log_capacity` entries.
pub fn fast_emulator(log_capacity: usize) -> b24emu::EmulatorConfig {
    b24emu::EmulatorConfig {
        seed: Some(1),
        limits: b24emu::config::LimitDefaults {
            rate_limit: false,
            operating_limit: false,
            ..Default::default()
        },
        delivery: b24emu::config::DeliveryConfig {
            keep_bodies: false,
            log_capacity,
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn runtime(name: &str, threads: usize) -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// Runs `f` on the SUT runtime and waits for it.
pub async fn on<F>(sut: &Handle, f: F) -> anyhow::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(sut.spawn(f).await?)
}

/// A running server; stops when dropped.
pub struct Running {
    pub url: String,
    _stop: oneshot::Sender<()>,
}

/// Serves `router` on 127.0.0.1:0 on the runtime `rt`.
pub async fn serve(rt: &Handle, router: Router) -> anyhow::Result<Running> {
    let listener = on(rt, tokio::net::TcpListener::bind("127.0.0.1:0")).await??;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    rt.spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    Ok(Running {
        url: format!("http://{addr}"),
        _stop: tx,
    })
}

/// The baseline: every path and method reads the whole body and answers an
/// empty 200.
pub fn noop_router() -> Router {
    Router::new().fallback(|body: Bytes| async move {
        std::hint::black_box(body.len());
        StatusCode::OK
    })
}

/// Gives spawned servers a moment to stop before the runtime goes.
pub fn shutdown(rt: Runtime) {
    rt.shutdown_timeout(Duration::from_secs(2));
}
