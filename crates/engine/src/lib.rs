//! `engine`: the b24gate lifecycle and runtime.
//!
//! Map:
//! - [`config`]: the manifest ([`Config`]) and its loader.
//! - [`env`]: [`env::StoreEnv`], the client's credential store and shared
//!   rate limiter over the store; [`env::GroupedLimiter`], the same limiter
//!   committing concurrent reservations together.
//! - [`confirm`]: method confirmation — parked calls, re-run with the
//!   approved token.
//! - [`dispatch`]: inbox rows → the jobs they cause ([`dispatch::Router`]).
//! - [`runner`]: the worker pool over the store's job queue
//!   ([`runner::JobHandler`], [`runner::JobError`]), with the rescuer.
//! - [`retry`]: [`retry::RetrySchedule`], jittered job retry schedules.
//! - [`forward`]: Standard Webhooks delivery to the app's targets
//!   ([`forward::Forwarder`]) and the in-process [`forward::EventHandler`].
//! - [`lifecycle`]: install (verify, record, bring up), update, reconcile.
//! - [`offline`]: the crash-safe offline-event drain.
//! - [`reconcile`]: desired vs actual bindings, the plan, bind/unbind calls.
//! - [`uninstall`]: `ONAPPUNINSTALL` and the retention policy; purges.
//!
//! [`Engine`] wires them: a dispatcher loop, the worker pool and a
//! housekeeping loop (due purges, stale installs, pruning).

pub mod config;
pub mod confirm;
pub mod dispatch;
pub mod env;
pub mod forward;
pub mod lifecycle;
pub mod offline;
pub mod reconcile;
pub mod retry;
pub mod runner;
pub mod uninstall;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

pub use config::{Config, ConfigError, Secrets};

/// A source of Unix milliseconds; tests pin or advance it.
pub type NowFn = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock as a [`NowFn`].
pub fn system_now() -> NowFn {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

/// reqwest is built without a bundled TLS provider; every HTTP client of the
/// process uses ring's.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("cannot build the REST client: {0}")]
    Client(#[from] client::Error),
}

/// The REST client's configuration from the manifest: the OAuth server and
/// app, the allow-list (plus plain http only with
/// `server.allow_insecure_http`).
pub fn client_config(config: &Config, secrets: &Secrets) -> client::ClientConfig {
    client::ClientConfig {
        oauth: secrets
            .client_secret
            .clone()
            .map(|s| client::OAuthApp::new(&config.app.oauth_url, &config.app.client_id, s)),
        allow: client::AllowList::new(
            config.app.allowed_domains.iter().cloned(),
            config.server.allow_insecure_http,
        ),
        ..client::ClientConfig::default()
    }
}

/// Intervals and sizes of the engine's loops.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub runner: runner::RunnerOptions,
    /// How often the dispatcher looks at the inbox (a notify wakes it sooner).
    pub dispatch_every: Duration,
    /// Timeout of one forward attempt.
    pub forward_timeout: Duration,
    /// Retry delays of install, update and reconcile jobs (the number of
    /// attempts stays that of [`retry::RetrySchedule::lifecycle`], which
    /// the jobs are enqueued with). Tests shrink the delays.
    pub lifecycle_schedule: retry::RetrySchedule,
    /// Retry schedule of forwards (and of the in-process handler).
    pub forward_schedule: retry::RetrySchedule,
    /// How often due purges, stale installs and old jobs are handled.
    pub housekeeping_every: Duration,
    /// Completed jobs are kept this long (for `b24gate jobs`).
    pub keep_completed: Duration,
    /// The REST client's configuration; `None` derives it from the manifest
    /// ([`client_config`]). Tests shrink limits here.
    pub client: Option<client::ClientConfig>,
    /// The clock the REST client waits on.
    pub clock: client::Clock,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            runner: runner::RunnerOptions::default(),
            dispatch_every: Duration::from_millis(100),
            forward_timeout: Duration::from_secs(15),
            forward_schedule: retry::RetrySchedule::forwarding(),
            lifecycle_schedule: retry::RetrySchedule::lifecycle(),
            housekeeping_every: Duration::from_secs(30),
            keep_completed: Duration::from_secs(24 * 3600),
            client: None,
            clock: client::Clock::system(),
        }
    }
}

/// The engine before it runs: configuration, store and job handlers.
pub struct Engine {
    store: store::Store,
    client: client::Client,
    config: Arc<Config>,
    now: NowFn,
    handlers: runner::Handlers,
    forwarder: Arc<forward::Forwarder>,
    in_process: bool,
    opts: EngineOptions,
}

impl Engine {
    pub fn new(
        config: Arc<Config>,
        secrets: &Secrets,
        store: store::Store,
        now: NowFn,
        opts: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let targets = config
            .targets
            .iter()
            .map(|t| forward::Target {
                name: t.name.to_ascii_lowercase(),
                url: t.url.clone(),
                key: secrets
                    .target_secrets
                    .get(&t.name.to_ascii_lowercase())
                    .map(|s| forward::SigningKey::parse(s)),
            })
            .collect();
        let forwarder = Arc::new(forward::Forwarder::new(
            store.clone(),
            targets,
            opts.forward_schedule.clone(),
            now.clone(),
            opts.forward_timeout,
        )?);
        let env = Arc::new(env::StoreEnv {
            store: store.clone(),
        });
        // Request slots in group commits when there is a runtime to run
        // the committing task on.
        let limiter: Arc<dyn client::env::RateLimiter> =
            match env::GroupedLimiter::start(store.clone()) {
                Some(l) => Arc::new(l),
                None => env.clone(),
            };
        let client = client::Client::new(
            opts.client
                .clone()
                .unwrap_or_else(|| client_config(&config, secrets)),
            env,
            limiter,
            opts.clock.clone(),
        )?;
        let lifecycle = Arc::new(lifecycle::Lifecycle {
            store: store.clone(),
            client: client.clone(),
            config: config.clone(),
            now: now.clone(),
            reconcile: reconcile::ReconcileOptions {
                allow_lossy_offline: config.offline.allow_lossy_clear,
            },
        });
        let mut handlers = runner::Handlers::default();
        for kind in [
            dispatch::kinds::INSTALL,
            dispatch::kinds::UPDATE,
            dispatch::kinds::RECONCILE,
        ] {
            handlers.insert(
                kind,
                Arc::new(lifecycle::Step {
                    lifecycle: lifecycle.clone(),
                    kind,
                    schedule: opts.lifecycle_schedule.clone(),
                }),
            );
        }
        handlers.insert(
            dispatch::kinds::OFFLINE_DRAIN,
            Arc::new(offline::Drainer {
                store: store.clone(),
                client: client.clone(),
                config: config.clone(),
                now: now.clone(),
                opts: offline::DrainOptions {
                    batch: config.offline.batch,
                    allow_lossy: config.offline.allow_lossy_clear,
                },
            }),
        );
        handlers.insert(
            dispatch::kinds::METHOD_CONFIRM,
            Arc::new(confirm::Confirmer {
                store: store.clone(),
                client: client.clone(),
                now: now.clone(),
            }),
        );
        handlers.insert(forward::FORWARD, forwarder.clone());
        handlers.insert(
            dispatch::kinds::UNINSTALL,
            Arc::new(uninstall::Uninstaller {
                store: store.clone(),
                policy: config.uninstall.clone(),
                now: now.clone(),
            }),
        );
        Ok(Engine {
            store,
            client,
            config,
            now,
            handlers,
            forwarder,
            in_process: false,
            opts,
        })
    }

    /// Delivers every event to `handler` in this process, as well as to the
    /// configured targets.
    pub fn with_event_handler(mut self, handler: Arc<dyn forward::EventHandler>) -> Engine {
        self.handlers.insert(
            forward::HANDLE,
            Arc::new(forward::InProcess {
                store: self.store.clone(),
                handler,
                schedule: self.opts.forward_schedule.clone(),
            }),
        );
        self.in_process = true;
        self
    }

    /// The REST client the engine calls portals with.
    pub fn client(&self) -> &client::Client {
        &self.client
    }

    /// Registers (or replaces) the handler of a job kind.
    pub fn register(&mut self, kind: &str, handler: Arc<dyn runner::JobHandler>) {
        self.handlers.insert(kind, handler);
    }

    /// Starts the dispatcher, the worker pool and housekeeping.
    pub fn start(self) -> RunningEngine {
        let router = Arc::new(dispatch::Router::new(
            &self.config,
            self.in_process,
            self.opts.forward_schedule.max_attempts(),
        ));
        let pool = runner::start(
            self.store.clone(),
            self.handlers,
            self.now.clone(),
            self.opts.runner.clone(),
        );
        let (stop, stop_rx) = watch::channel(false);
        let inbox_wake = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        tasks.spawn(dispatcher(
            self.store.clone(),
            router,
            self.now.clone(),
            self.opts.dispatch_every,
            inbox_wake.clone(),
            pool.waker(),
            stop_rx.clone(),
        ));
        tasks.spawn(housekeeping(
            self.store.clone(),
            self.config.clone(),
            self.now.clone(),
            self.opts.clone(),
            pool.waker(),
            stop_rx,
        ));
        RunningEngine {
            pool,
            tasks,
            stop,
            inbox_wake,
            forwarder: self.forwarder,
        }
    }
}

/// A running engine.
pub struct RunningEngine {
    pool: runner::RunningPool,
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
    inbox_wake: Arc<Notify>,
    forwarder: Arc<forward::Forwarder>,
}

impl RunningEngine {
    /// Wakes the dispatcher (the server calls it after an inbox commit).
    pub fn inbox_waker(&self) -> Arc<Notify> {
        self.inbox_wake.clone()
    }

    pub fn target_health(&self) -> std::collections::HashMap<String, forward::TargetHealth> {
        self.forwarder.health()
    }

    /// Stops the loops and the pool (running jobs get the grace period).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.pool.shutdown().await;
    }
}

async fn dispatcher(
    store: store::Store,
    router: Arc<dispatch::Router>,
    now: NowFn,
    every: Duration,
    wake: Arc<Notify>,
    jobs_wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match router.dispatch_pending(&store, 500, now()).await {
            Ok(0) => {}
            Ok(_) => {
                jobs_wake.notify_waiters();
                continue;
            }
            Err(e) => tracing::warn!(error = %e, "inbox dispatch failed"),
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn housekeeping(
    store: store::Store,
    config: Arc<Config>,
    now: NowFn,
    opts: EngineOptions,
    jobs_wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_drain = i64::MIN;
    loop {
        let t = now();
        if let Err(e) = uninstall::purge_due(&store, t).await {
            tracing::warn!(error = %e, "purge failed");
        }
        let ttl = config.app.install_ttl.as_millis() as i64;
        if let Err(e) = store.expire_stale_installs(t - ttl, t).await {
            tracing::warn!(error = %e, "expiring stale installs failed");
        }
        match drift_check(&store, &config, t).await {
            Ok(0) => {}
            Ok(_) => jobs_wake.notify_waiters(),
            Err(e) => tracing::warn!(error = %e, "drift check failed"),
        }
        let every = config.offline.drain_every.as_millis() as i64;
        if t.saturating_sub(last_drain) >= every && !offline::connectors(&config).is_empty() {
            last_drain = t;
            if let Err(e) = schedule_drains(&store, t).await {
                tracing::warn!(error = %e, "scheduling offline drains failed");
            }
        }
        let keep = opts.keep_completed.as_millis() as i64;
        if let Err(e) = store.prune_jobs(t - keep, 10_000).await {
            tracing::warn!(error = %e, "pruning jobs failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.housekeeping_every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Version drift (BRIEF §2 "Update"): an installed portal recorded below the
/// manifest version gets a reconcile job — `ONAPPUPDATE` is not relied on.
/// The jobs are enqueued in transactions of [`store::jobs::ENQUEUE_CHUNK`]
/// (a bump of 10,000 portals is 20 commits, not 10,000); returns how many
/// were new (a portal whose reconcile is already queued keeps that one).
pub async fn drift_check(store: &store::Store, config: &Config, now: i64) -> store::Result<usize> {
    let members = store.portals_below_version(config.app.version).await?;
    let max_attempts = retry::RetrySchedule::lifecycle().max_attempts();
    let mut n = 0;
    for chunk in members.chunks(store::jobs::ENQUEUE_CHUNK) {
        let keys: Vec<(serde_json::Value, String, String)> = chunk
            .iter()
            .map(|m| {
                (
                    serde_json::json!({"member_id": m, "reason": "version drift"}),
                    format!("portal:{m}"),
                    format!("reconcile:{m}"),
                )
            })
            .collect();
        let jobs: Vec<store::NewJob<'_>> = chunk
            .iter()
            .zip(&keys)
            .map(|(m, (payload, serial, unique))| store::NewJob {
                kind: dispatch::kinds::RECONCILE,
                member_id: Some(m),
                serial_key: Some(serial),
                unique_key: Some(unique),
                calls_portal: true,
                payload,
                max_attempts,
                run_at: now,
            })
            .collect();
        n += store
            .enqueue_jobs(&jobs, now)
            .await?
            .iter()
            .filter(|e| matches!(e, store::Enqueued::Created(_)))
            .count();
    }
    Ok(n)
}

/// Enqueues an offline drain for every installed portal with a bound
/// offline binding (one live drain per portal: the unique key).
pub async fn schedule_drains(store: &store::Store, now: i64) -> store::Result<usize> {
    let mut n = 0;
    let rows = store.binding_matrix(None).await?;
    let mut members: Vec<&str> = rows
        .iter()
        .filter(|r| r.record.key.mode == "offline" && r.record.state == "bound")
        .map(|r| r.member_id.as_str())
        .collect();
    members.dedup();
    for m in members {
        if !store
            .get_portal(m)
            .await?
            .is_some_and(|p| p.status.allows_rest())
        {
            continue;
        }
        let payload = serde_json::json!({"member_id": m});
        let key = format!("drain:{m}");
        if enqueue_lifecycle(
            store,
            dispatch::kinds::OFFLINE_DRAIN,
            m,
            &key,
            &key,
            &payload,
            now,
        )
        .await?
        {
            n += 1;
        }
    }
    Ok(n)
}

/// Enqueues a lifecycle job of a portal (it calls the portal, serialised by
/// `serial`, one live job per `unique`); true if it was not queued already.
async fn enqueue_lifecycle(
    store: &store::Store,
    kind: &str,
    member_id: &str,
    serial: &str,
    unique: &str,
    payload: &serde_json::Value,
    now: i64,
) -> store::Result<bool> {
    let job = store::NewJob {
        kind,
        member_id: Some(member_id),
        serial_key: Some(serial),
        unique_key: Some(unique),
        calls_portal: true,
        payload,
        max_attempts: retry::RetrySchedule::lifecycle().max_attempts(),
        run_at: now,
    };
    Ok(matches!(
        store.enqueue_job(&job, now).await?,
        store::Enqueued::Created(_)
    ))
}
