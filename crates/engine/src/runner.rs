//! The worker pool: claims jobs from the store, runs each with the handler of
//! its kind, heartbeats its lease while it runs, and records the outcome —
//! done, retry later (jittered schedule, or a `Retry-After` the handler
//! passes on), or dead letter. A rescuer returns the jobs of crashed workers.
//!
//! Shutdown stops claiming, lets running jobs finish within a grace period,
//! and leaves the rest to the rescuer (their leases run out): nothing that
//! was claimed is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use store::{FailOutcome, Job, Store};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::NowFn;
use crate::retry::{RetrySchedule, random_unit};

/// How a job attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Worth another attempt; `after` overrides the schedule when longer
    /// (a `Retry-After`, an operating-limit reset).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Will never succeed: dead-letter it now.
    Permanent(String),
}

impl JobError {
    pub fn retry(reason: impl Into<String>) -> JobError {
        JobError::Retry {
            reason: reason.into(),
            after: None,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> JobError {
        JobError::Permanent(reason.into())
    }
}

/// Runs the jobs of one kind. Must be idempotent: an attempt may be repeated
/// after a crash (BRIEF §3 invariant 5).
pub trait JobHandler: Send + Sync + 'static {
    fn run<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>>;

    /// The retry schedule of this kind.
    fn schedule(&self) -> RetrySchedule {
        RetrySchedule::lifecycle()
    }
}

#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Concurrent jobs in this process.
    pub workers: usize,
    /// Lease of a claimed job; heartbeats renew it at a third of this.
    pub lease: Duration,
    /// How often idle workers look for due jobs (a local notify wakes them
    /// sooner).
    pub poll: Duration,
    /// How long shutdown waits for running jobs.
    pub grace: Duration,
    /// This process's name in `locked_by`.
    pub worker_id: String,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            workers: 4,
            lease: Duration::from_secs(60),
            poll: Duration::from_millis(250),
            grace: Duration::from_secs(10),
            worker_id: format!("b24gate-{}", hex::encode(random_id())),
        }
    }
}

fn random_id() -> [u8; 6] {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    b
}

/// The registry of handlers by job kind.
#[derive(Default, Clone)]
pub struct Handlers {
    map: HashMap<String, Arc<dyn JobHandler>>,
}

impl Handlers {
    pub fn insert(&mut self, kind: &str, handler: Arc<dyn JobHandler>) {
        self.map.insert(kind.to_owned(), handler);
    }

    fn get(&self, kind: &str) -> Option<&Arc<dyn JobHandler>> {
        self.map.get(kind)
    }
}

/// A running pool. Drop or [`RunningPool::shutdown`] to stop it.
pub struct RunningPool {
    stop: watch::Sender<bool>,
    wake: Arc<Notify>,
    tasks: JoinSet<()>,
    grace: Duration,
}

impl RunningPool {
    /// A handle that wakes idle workers (after an enqueue in this process).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Stops claiming, waits up to the grace period for running jobs.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.wake.notify_waiters();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace, all).await.is_err() {
            self.tasks.abort_all();
        }
    }
}

/// Starts `opts.workers` workers and the rescuer on the current runtime.
pub fn start(store: Store, handlers: Handlers, now: NowFn, opts: RunnerOptions) -> RunningPool {
    let (stop, stop_rx) = watch::channel(false);
    let wake = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let (done, done_rx) = mpsc::unbounded_channel();
    let w = Arc::new(Worker {
        store: store.clone(),
        handlers: Arc::new(handlers),
        now: now.clone(),
        id: opts.worker_id.clone(),
        lease: opts.lease,
        done,
    });
    // Ends when the last worker is gone (the claimer, after its jobs).
    tasks.spawn(completer(
        store.clone(),
        opts.worker_id.clone(),
        now.clone(),
        done_rx,
    ));
    tasks.spawn(claimer(w, opts.clone(), wake.clone(), stop_rx.clone()));
    tasks.spawn(rescuer(store, now, opts.clone(), stop_rx));
    RunningPool {
        stop,
        wake,
        tasks,
        grace: opts.grace,
    }
}

struct Worker {
    store: Store,
    handlers: Arc<Handlers>,
    now: NowFn,
    /// This process's name in `locked_by`.
    id: String,
    lease: Duration,
    /// To the [`completer`].
    done: mpsc::UnboundedSender<Completion>,
}

/// A finished job to mark completed, and who waits for the answer (whether
/// it was still this worker's).
type Completion = (i64, oneshot::Sender<Result<bool, String>>);

/// Most completions committed in one transaction.
const MAX_COMPLETIONS: usize = 256;

/// Marks finished jobs completed in groups: the jobs that finish while one
/// commit is in flight share the next one (one transaction, one fsync)
/// instead of a commit each. A worker waits for its job's commit before it
/// frees its slot, as with one commit each.
async fn completer(
    store: Store,
    worker: String,
    now: NowFn,
    mut rx: mpsc::UnboundedReceiver<Completion>,
) {
    let mut batch: Vec<Completion> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_COMPLETIONS {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
        let outcome = store.complete_jobs(&ids, &worker, now()).await;
        for (id, reply) in batch.drain(..) {
            let r = match &outcome {
                Ok(done) => Ok(done.contains(&id)),
                Err(e) => Err(e.to_string()),
            };
            let _ = reply.send(r);
        }
    }
}

/// How long a nearly full pool waits for more free slots before it claims.
const CLAIM_GATHER: Duration = Duration::from_millis(2);

/// Claims as many due jobs as there are free slots, in one claim (one
/// transaction, not one per job), and runs each in a task of its own, at
/// most `workers` at a time. Stopping stops the claiming; running jobs get
/// the pool's grace period. Aborting the pool aborts them with it.
async fn claimer(
    w: Arc<Worker>,
    opts: RunnerOptions,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let workers = opts.workers.max(1);
    let min_claim = (workers / 8).max(1);
    let lease_ms = w.lease.as_millis() as i64;
    let mut running: JoinSet<()> = JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        if *stop.borrow() {
            break;
        }
        let mut free = workers.saturating_sub(running.len());
        if free == 0 {
            tokio::select! {
                _ = running.join_next() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        // A claim is a commit: with the pool nearly full, give more slots a
        // moment to free up so one claim fills several (a busy pool would
        // otherwise commit a claim per finished job).
        if free < min_claim && !running.is_empty() {
            let gather = tokio::time::sleep(CLAIM_GATHER);
            tokio::pin!(gather);
            while workers.saturating_sub(running.len()) < min_claim && !running.is_empty() {
                tokio::select! {
                    _ = running.join_next() => {}
                    _ = &mut gather => break,
                    _ = stop.changed() => break,
                }
            }
            if *stop.borrow() {
                break;
            }
            free = workers.saturating_sub(running.len());
        }
        let claimed = match w
            .store
            .claim_jobs(&w.id, free as i64, lease_ms, (w.now)())
            .await
        {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "job claim failed");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            let notified = wake.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(opts.poll) => {}
                _ = stop.changed() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
            continue;
        }
        for job in claimed {
            let w = w.clone();
            running.spawn(async move { w.run_one(job).await });
        }
    }
    while running.join_next().await.is_some() {}
}

impl Worker {
    /// Marks a job completed through the [`completer`] (directly if it is
    /// gone); false if the job was no longer this worker's.
    async fn complete(&self, id: i64, now: i64) -> Result<bool, String> {
        let (tx, rx) = oneshot::channel();
        if self.done.send((id, tx)).is_ok()
            && let Ok(r) = rx.await
        {
            return r;
        }
        self.store
            .complete_job(id, &self.id, now)
            .await
            .map_err(|e| e.to_string())
    }

    async fn run_one(&self, job: Job) {
        let Some(handler) = self.handlers.get(&job.kind).cloned() else {
            let _ = self
                .store
                .fail_job(
                    job.id,
                    &self.id,
                    &format!("no handler for job kind `{}`", job.kind),
                    None,
                    (self.now)(),
                )
                .await;
            return;
        };
        let lease_ms = self.lease.as_millis() as i64;
        // Heartbeat while the handler runs, so a slow REST call does not
        // lose the lease to the rescuer. The heartbeat is a future polled
        // side by side with the work, never a `select!` arm body: a body
        // awaiting the store would stop polling the work, and work that
        // holds SQLite's one writer connection mid-transaction would then
        // never hand it back to the heartbeat waiting for it (a deadlock
        // broken only by the pool's acquire timeout, again and again). Being
        // part of this future, the heartbeat stops when the worker stops or
        // is aborted, and the lease can run out.
        let work = handler.run(&job);
        let heartbeat = async {
            let mut beat = tokio::time::interval(self.lease / 3);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            beat.tick().await;
            loop {
                beat.tick().await;
                let renewed = self
                    .store
                    .heartbeat_job(job.id, &self.id, lease_ms, (self.now)())
                    .await;
                if !matches!(renewed, Ok(true)) {
                    tracing::debug!(job = job.id, "lease lost while running");
                }
            }
        };
        let result = tokio::select! {
            r = work => r,
            _ = heartbeat => unreachable!("the heartbeat loop never ends"),
        };
        let now = (self.now)();
        let outcome = match result {
            Ok(()) => {
                if let Err(e) = self.complete(job.id, now).await {
                    tracing::warn!(error = %e, job = job.id, "completing a job failed");
                }
                return;
            }
            Err(JobError::Permanent(reason)) => {
                self.store
                    .fail_job(job.id, &self.id, &reason, None, now)
                    .await
            }
            Err(JobError::Retry { reason, after }) => {
                let scheduled = handler.schedule().delay(job.attempt, random_unit());
                let at = match (scheduled, after) {
                    (None, _) => None,
                    (Some(d), None) => Some(d),
                    (Some(d), Some(a)) => Some(d.max(a)),
                };
                let retry_at = at.map(|d| now + d.as_millis() as i64);
                self.store
                    .fail_job(job.id, &self.id, &reason, retry_at, now)
                    .await
            }
        };
        match outcome {
            Ok(FailOutcome::Discarded) => {
                tracing::warn!(job = job.id, kind = %job.kind, "job dead-lettered");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, job = job.id, "recording a job failure failed"),
        }
    }
}

/// Returns jobs whose lease ran out; one process at a time does it.
async fn rescuer(store: Store, now: NowFn, opts: RunnerOptions, mut stop: watch::Receiver<bool>) {
    let every = (opts.lease / 2).max(Duration::from_millis(100));
    let lease_ms = (every.as_millis() as i64) * 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let t = now();
        if matches!(
            store
                .try_lease("jobs.rescuer", &opts.worker_id, lease_ms, t)
                .await,
            Ok(true)
        ) {
            match store.rescue_jobs(t).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rescued = n, "returned jobs of stopped workers"),
                Err(e) => tracing::warn!(error = %e, "job rescue failed"),
            }
        }
    }
}
