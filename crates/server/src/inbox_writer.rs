//! Group commit for the inbox. Each request hands its event to one writer
//! task and waits; the task takes everything queued (up to a batch size) and
//! appends it in one transaction, so N concurrent requests cost one fsync,
//! not N. A request is answered only after its batch committed.

use std::sync::Arc;
use store::{Appended, NewInboxEvent, Store};

use tokio::sync::{Notify, mpsc, oneshot};

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

impl InboxWriter {
    /// Starts the writer task; batches hold at most `max_batch` events.
    pub fn start(
        store: Store,
        now: NowFn,
        max_batch: usize,
        wake: Option<Arc<Notify>>,
    ) -> InboxWriter {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        tokio::spawn(run(store, now, rx, max_batch.max(1), wake));
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
    wake: Option<Arc<Notify>>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let events: Vec<NewInboxEvent<'_>> = batch.iter().map(|p| p.event.borrow()).collect();
        let result = store.append_inbox(&events, now()).await;
        drop(events);
        match result {
            Ok(outcomes) => {
                for (p, o) in batch.drain(..).zip(outcomes) {
                    let _ = p.reply.send(Ok(o));
                }
                if let Some(w) = &wake {
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
}
