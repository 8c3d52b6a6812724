//! Group commit for the inbox. Each request hands its event to one writer
//! task and waits; the task takes everything queued (up to a batch size) and
//! appends it in one transaction, so N concurrent requests cost one fsync,
//! not N. A request is answered only after its batch committed.
//!
//! Pipelined: up to [`WriterOptions::in_flight`] batches are being committed
//! at once (each is one statement, see [`Store::append_inbox`]). The writer
//! gathers the next batch as soon as a slot is free; on PostgreSQL, where two
//! are in flight, batch N+1 commits on another connection while batch N waits
//! for its WAL flush. When every slot is busy, new requests queue and make
//! the next batch larger.

use std::sync::Arc;
use store::{Appended, Backend, NewInboxEvent, Store};

use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::NowFn;

/// An inbox row to append, owned so it can cross to the writer task.
#[derive(Debug, Clone)]
pub struct OwnedInboxEvent {
    pub member_id: String,
    pub dedupe_key: String,
    pub event: String,
    pub source: &'static str,
    pub verified: bool,
    pub ts: Option<i64>,
    pub payload: serde_json::Value,
    pub secrets: Option<String>,
}

impl OwnedInboxEvent {
    fn borrow(&self) -> NewInboxEvent<'_> {
        NewInboxEvent {
            member_id: &self.member_id,
            dedupe_key: &self.dedupe_key,
            event: &self.event,
            source: self.source,
            verified: self.verified,
            ts: self.ts,
            payload: &self.payload,
            secrets: self.secrets.as_deref(),
        }
    }
}

struct Pending {
    event: OwnedInboxEvent,
    reply: oneshot::Sender<Result<Appended, String>>,
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct InboxWriter {
    tx: mpsc::Sender<Pending>,
}

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Most events in one transaction.
    pub max_batch: usize,
    /// Most batches being committed at once.
    pub in_flight: usize,
}

impl WriterOptions {
    /// The defaults for `backend`: batches of up to 256. On SQLite one in
    /// flight: there is one write connection, and a second batch taken while
    /// the first commits would be small (the first batch's senders have not
    /// sent again yet) and only wait. On PostgreSQL two: each commits on a
    /// connection of its own (the pool is shared with the engine, so not
    /// more) and the server flushes the WAL for both at once.
    pub fn for_backend(backend: Backend) -> WriterOptions {
        WriterOptions {
            max_batch: 256,
            in_flight: match backend {
                Backend::Sqlite => 1,
                Backend::Postgres => 2,
            },
        }
    }
}

impl InboxWriter {
    /// Starts the writer task on the current runtime; batches hold at most
    /// `max_batch` events, and the backend's default number are in flight.
    pub fn start(
        store: Store,
        now: NowFn,
        max_batch: usize,
        wake: Option<Arc<Notify>>,
    ) -> InboxWriter {
        let opts = WriterOptions {
            max_batch,
            ..WriterOptions::for_backend(store.backend())
        };
        Self::start_with(store, now, opts, wake)
    }

    /// As [`InboxWriter::start`], with every option given.
    pub fn start_with(
        store: Store,
        now: NowFn,
        opts: WriterOptions,
        wake: Option<Arc<Notify>>,
    ) -> InboxWriter {
        let max_batch = opts.max_batch.max(1);
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tokio::spawn(run(store, now, rx, max_batch, opts.in_flight.max(1), wake));
        InboxWriter { tx }
    }

    /// Appends one event; returns once it is durable (or failed).
    pub async fn append(&self, event: OwnedInboxEvent) -> Result<Appended, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { event, reply })
            .await
            .map_err(|_| "inbox writer stopped".to_owned())?;
        rx.await.map_err(|_| "inbox writer stopped".to_owned())?
    }
}

async fn run(
    store: Store,
    now: NowFn,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    in_flight: usize,
    wake: Option<Arc<Notify>>,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        // A free slot first: while all are busy, requests queue in the
        // channel and the next batch takes them all.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            // Every handle is gone: return once the batches in flight are
            // answered.
            drop(slot);
            let _ = slots.acquire_many(in_flight as u32).await;
            return;
        };
        let mut batch: Vec<Pending> = Vec::with_capacity(max_batch.min(64));
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (store, now, wake) = (store.clone(), now.clone(), wake.clone());
        tokio::spawn(async move {
            commit(&store, now(), batch, wake.as_deref()).await;
            drop(slot);
        });
    }
}

/// Appends one batch and answers each of its requests.
async fn commit(store: &Store, now: i64, mut batch: Vec<Pending>, wake: Option<&Notify>) {
    let events: Vec<NewInboxEvent<'_>> = batch.iter().map(|p| p.event.borrow()).collect();
    let result = store.append_inbox(&events, now).await;
    drop(events);
    match result {
        Ok(outcomes) => {
            for (p, o) in batch.drain(..).zip(outcomes) {
                let _ = p.reply.send(Ok(o));
            }
            if let Some(w) = wake {
                w.notify_one();
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = batch.len(), "inbox append failed");
            let msg = e.to_string();
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(msg.clone()));
            }
        }
    }
}
