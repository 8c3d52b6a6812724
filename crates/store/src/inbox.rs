//! The event inbox: every delivery b24gate acknowledged, online or drained
//! from the offline queue. Bitrix24 never redelivers (protocol §2.6), so a row
//! here is the only copy: it is written before the answer, in a transaction
//! that may carry many concurrent requests at once (group commit — one fsync
//! for the batch, see [`Store::append_inbox`]).

use crate::jobs::{Enqueued, NewJob, insert_job};
use crate::{Result, Store, StoreError, UnixMillis, with_pool, with_tx};

/// One delivery to store.
#[derive(Debug, Clone)]
pub struct NewInboxEvent<'a> {
    pub member_id: &'a str,
    /// Online: derived from portal, event, handler id, `ts` and canonical
    /// data; offline: portal and `MESSAGE_ID`. A repeat is not stored twice.
    pub dedupe_key: &'a str,
    pub event: &'a str,
    /// `online` or `offline`.
    pub source: &'a str,
    /// False only for an `ONAPPINSTALL` from a portal not yet known.
    pub verified: bool,
    pub ts: Option<i64>,
    /// The event without its secrets (JSON).
    pub payload: &'a serde_json::Value,
    /// Auth secrets the event carried, as JSON text; sealed before storing.
    pub secrets: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Inserted(i64),
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct InboxEvent {
    pub id: i64,
    pub member_id: String,
    pub dedupe_key: String,
    pub event: String,
    pub source: String,
    pub verified: bool,
    pub ts: Option<i64>,
    pub received_at: i64,
    pub payload: String,
    #[sqlx(default)]
    secrets: Option<Vec<u8>>,
    /// `pending` → `dispatched` (a job will read it) → `processed` or
    /// `rejected`.
    pub state: String,
    pub processed_at: Option<i64>,
}

impl InboxEvent {
    pub fn payload_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload).unwrap_or(serde_json::Value::Null)
    }

    pub fn has_secrets(&self) -> bool {
        self.secrets.is_some()
    }
}

fn secrets_ctx(dedupe_key: &str) -> String {
    format!("inbox.secrets:{dedupe_key}")
}

impl Store {
    /// Appends a batch of deliveries in one transaction: all are durable when
    /// this returns, and a duplicate `dedupe_key` is reported, not stored.
    pub async fn append_inbox(
        &self,
        events: &[NewInboxEvent<'_>],
        now: UnixMillis,
    ) -> Result<Vec<Appended>> {
        const SQL: &str = "INSERT INTO inbox (member_id, dedupe_key, event, source, verified, ts, \
            received_at, payload, secrets) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
            ON CONFLICT (dedupe_key) DO NOTHING RETURNING id";
        let mut sealed = Vec::with_capacity(events.len());
        for e in events {
            sealed.push(match e.secrets {
                Some(s) => Some(self.keys.seal(&secrets_ctx(e.dedupe_key), s.as_bytes())?),
                None => None,
            });
        }
        with_tx!(self, |tx| {
            let mut out = Vec::with_capacity(events.len());
            for (e, secrets) in events.iter().zip(&sealed) {
                let id: Option<i64> = sqlx::query_scalar(SQL)
                    .bind(e.member_id)
                    .bind(e.dedupe_key)
                    .bind(e.event)
                    .bind(e.source)
                    .bind(e.verified)
                    .bind(e.ts)
                    .bind(now)
                    .bind(e.payload.to_string())
                    .bind(secrets.as_deref())
                    .fetch_optional(&mut *tx)
                    .await?;
                out.push(id.map_or(Appended::Duplicate, Appended::Inserted));
            }
            Ok::<_, StoreError>(out)
        })
    }

    /// The oldest pending deliveries, for the dispatcher.
    pub async fn pending_inbox(&self, limit: i64) -> Result<Vec<InboxEvent>> {
        const SQL: &str = "SELECT id, member_id, dedupe_key, event, source, verified, ts, received_at, \
            payload, secrets, state, processed_at FROM inbox WHERE state = 'pending' ORDER BY id LIMIT $1";
        let rows = with_pool!(self, read, |p| sqlx::query_as::<_, InboxEvent>(SQL)
            .bind(limit)
            .fetch_all(p)
            .await)?;
        Ok(rows)
    }

    pub async fn get_inbox(&self, id: i64) -> Result<Option<InboxEvent>> {
        const SQL: &str = "SELECT id, member_id, dedupe_key, event, source, verified, ts, received_at, \
            payload, secrets, state, processed_at FROM inbox WHERE id = $1";
        let row = with_pool!(self, read, |p| sqlx::query_as::<_, InboxEvent>(SQL)
            .bind(id)
            .fetch_optional(p)
            .await)?;
        Ok(row)
    }

    /// The secrets a delivery carried, unsealed (install verification only).
    pub fn inbox_secrets(&self, e: &InboxEvent) -> Result<Option<String>> {
        let Some(sealed) = &e.secrets else {
            return Ok(None);
        };
        let plain = self.keys.open(&secrets_ctx(&e.dedupe_key), sealed)?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|_| StoreError::Corrupt {
                table: "inbox",
                column: "secrets",
            })
    }

    /// Hands a pending delivery on: enqueues the jobs it causes and moves it
    /// to `state` (`dispatched` when a job will still read it, `processed`
    /// when the jobs carry all they need) in one transaction, so a crash
    /// leaves both or neither. False (and nothing enqueued) if it was not
    /// pending.
    pub async fn dispatch_inbox(
        &self,
        id: i64,
        state: &str,
        jobs: &[NewJob<'_>],
        now: UnixMillis,
    ) -> Result<Option<Vec<Enqueued>>> {
        const SQL: &str =
            "UPDATE inbox SET state = $2, processed_at = $3 WHERE id = $1 AND state = 'pending'";
        with_tx!(self, |tx| {
            let n = sqlx::query(SQL)
                .bind(id)
                .bind(state)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Ok(None);
            }
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                out.push(insert_job!(tx, job, now));
            }
            Ok::<_, StoreError>(Some(out))
        })
    }

    /// [`Store::dispatch_inbox`] for many deliveries in one transaction (one
    /// commit, one fsync): each entry is `(inbox id, new state, its jobs)`.
    /// Returns how many were still pending and were dispatched.
    pub async fn dispatch_inbox_batch(
        &self,
        entries: &[(i64, &str, Vec<NewJob<'_>>)],
        now: UnixMillis,
    ) -> Result<usize> {
        const SQL: &str =
            "UPDATE inbox SET state = $2, processed_at = $3 WHERE id = $1 AND state = 'pending'";
        with_tx!(self, |tx| {
            let mut dispatched = 0;
            for (id, state, jobs) in entries {
                let n = sqlx::query(SQL)
                    .bind(id)
                    .bind(*state)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    continue;
                }
                dispatched += 1;
                for job in jobs {
                    insert_job!(tx, job, now);
                }
            }
            Ok::<_, StoreError>(dispatched)
        })
    }

    /// Marks a delivery `processed` or `rejected`; its secrets are dropped
    /// once it has been handled (they are needed only to verify an install).
    pub async fn finish_inbox(&self, id: i64, state: &str, now: UnixMillis) -> Result<bool> {
        const SQL: &str = "UPDATE inbox SET state = $2, processed_at = $3, secrets = NULL \
            WHERE id = $1 AND state IN ('pending', 'dispatched')";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(id)
            .bind(state)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// A portal's deliveries received at or after `since`, oldest first
    /// (`b24gate events replay`).
    pub async fn inbox_since(
        &self,
        member_id: &str,
        since: UnixMillis,
        limit: i64,
    ) -> Result<Vec<InboxEvent>> {
        const SQL: &str = "SELECT id, member_id, dedupe_key, event, source, verified, ts, received_at, \
            payload, secrets, state, processed_at FROM inbox \
            WHERE member_id = $1 AND received_at >= $2 ORDER BY id LIMIT $3";
        let rows = with_pool!(self, read, |p| sqlx::query_as::<_, InboxEvent>(SQL)
            .bind(member_id)
            .bind(since)
            .bind(limit)
            .fetch_all(p)
            .await)?;
        Ok(rows)
    }

    /// The id of the delivery stored under `dedupe_key`, if any.
    pub async fn find_inbox_id(&self, dedupe_key: &str) -> Result<Option<i64>> {
        let id = with_pool!(self, read, |p| sqlx::query_scalar(
            "SELECT id FROM inbox WHERE dedupe_key = $1"
        )
        .bind(dedupe_key)
        .fetch_optional(p)
        .await)?;
        Ok(id)
    }

    /// How many deliveries wait to be dispatched.
    pub async fn inbox_depth(&self) -> Result<i64> {
        let n = with_pool!(self, read, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM inbox WHERE state = 'pending'"
        )
        .fetch_one(p)
        .await)?;
        Ok(n)
    }
}
