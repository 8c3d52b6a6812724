//! A whole gateway in one process: the store, the engine (dispatcher, worker
//! pool, housekeeping) and the HTTP server on a bound listener.

use std::sync::Arc;

use engine::{Config, EngineOptions, RunningEngine, Secrets};
use store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What may be tuned beyond the configuration.
#[derive(Default)]
pub struct GatewayOptions {
    pub engine: EngineOptions,
    pub ingest: server::IngestConfig,
    /// Receives every event in this process (library use), besides targets.
    pub handler: Option<Arc<dyn engine::forward::EventHandler>>,
}

/// What it takes to build the engine again.
struct Restart {
    config: Arc<Config>,
    secrets: Secrets,
    engine: EngineOptions,
    handler: Option<Arc<dyn engine::forward::EventHandler>>,
}

impl Restart {
    fn engine(&self, store: &Store) -> anyhow::Result<engine::Engine> {
        let mut e = engine::Engine::new(
            self.config.clone(),
            &self.secrets,
            store.clone(),
            engine::system_now(),
            self.engine.clone(),
        )?;
        if let Some(h) = &self.handler {
            e = e.with_event_handler(h.clone());
        }
        Ok(e)
    }
}

/// A running gateway.
pub struct Gateway {
    /// `http://addr` of the listener.
    pub url: String,
    pub store: Store,
    pub client: client::Client,
    pub stats: Arc<server::IngestStats>,
    /// Shared only with the server's `/metrics` and status routes, which
    /// hold a weak reference (target health), so shutdown can take it back.
    engine: Arc<RunningEngine>,
    restart: Restart,
    /// What tells `/readyz` whether the workers run.
    observe: server::Observe,
    server: JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Gateway {
    /// Starts everything on `listener`; `store` must be migrated.
    pub async fn start(
        config: Arc<Config>,
        secrets: &Secrets,
        store: Store,
        listener: TcpListener,
        opts: GatewayOptions,
    ) -> anyhow::Result<Gateway> {
        let addr = listener.local_addr()?;
        let restart = Restart {
            config: config.clone(),
            secrets: secrets.clone(),
            engine: opts.engine.clone(),
            handler: opts.handler.clone(),
        };
        let engine = restart.engine(&store)?;
        let client = engine.client().clone();
        let engine = Arc::new(engine.start());
        let ingest = server::IngestConfig {
            body_limit: config.server.body_limit_bytes as usize,
            ..opts.ingest
        };
        let mut state =
            server::AppState::with_waker(store.clone(), ingest, Some(engine.inbox_waker()));
        state.admin = Some(Arc::new(server::admin::Admin {
            token: secrets.admin_token.clone(),
            client: client.clone(),
        }));
        let weak = Arc::downgrade(&engine);
        state.observe.client = Some(client.clone());
        state.observe.targets = Some(Arc::new(move || {
            weak.upgrade()
                .map(|e| e.target_health())
                .unwrap_or_default()
        }));
        state.observe.target_names = config
            .targets
            .iter()
            .map(|t| t.name.to_ascii_lowercase())
            .collect();
        state.observe.metrics_open = config.metrics.open;
        state.observe.portal_label = config.metrics.portal_label;
        state.observe.set_workers_running(true);
        let observe = state.observe.clone();
        let stats = state.stats.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Ok(Gateway {
            url: format!("http://{addr}"),
            store,
            client,
            stats,
            engine,
            restart,
            observe,
            server,
            stop,
        })
    }

    /// Health of the forwarding targets, by name.
    pub fn target_health(
        &self,
    ) -> std::collections::HashMap<String, engine::forward::TargetHealth> {
        self.engine.target_health()
    }

    /// Kills the engine mid-flight — dispatcher, workers and running jobs
    /// aborted wherever they are, leases left to expire — and starts a new
    /// one on the same database with pools of its own, as a restarted worker
    /// process would. The server keeps answering meanwhile.
    pub async fn crash_engine(&mut self) -> anyhow::Result<()> {
        let store = self.store.reopen().await?;
        let fresh = Arc::new(self.restart.engine(&store)?.start());
        // Dropping the last handle aborts every task of the old engine.
        drop(std::mem::replace(&mut self.engine, fresh));
        Ok(())
    }

    /// Stops everything at once, mid-flight, as a crash would (in-process):
    /// requests in progress are cut, running jobs lose their leases.
    pub fn abort(self) {
        self.server.abort();
        drop(self.engine);
    }

    /// Stops accepting requests, drains them, then stops the engine.
    pub async fn shutdown(self) {
        self.observe.set_workers_running(false);
        let _ = self.stop.send(());
        let _ = self.server.await;
        // The server has stopped: no route holds the engine any more.
        match Arc::into_inner(self.engine) {
            Some(engine) => engine.shutdown().await,
            None => tracing::error!("engine still referenced at shutdown; its loops are dropped"),
        }
    }
}
