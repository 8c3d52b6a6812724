//! The event inbox: every delivery b24gate acknowledged, online or drained
//! from the offline queue. Bitrix24 never redelivers (protocol §2.6), so a row
//! here is the only copy: it is written before the answer, in a transaction
//! that may carry many concurrent requests at once (group commit — one fsync
//! for the batch, see [`Store::append_inbox`]).

use crate::jobs::{Enqueued, NewJob, insert_job};
use crate::{Db, Result, Store, StoreError, UnixMillis, with_pool, with_tx};

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

/// One row of a batch, ready to bind.
struct Row<'a, 'e> {
    e: &'a NewInboxEvent<'e>,
    payload: String,
    secrets: Option<Vec<u8>>,
}

/// The row counts of the multi-row SQLite `INSERT`s (each prepared once and
/// cached by the connection). A batch takes the smallest shape that holds it
/// and fills the rest with copies of its last row, which the statement's own
/// `ON CONFLICT DO NOTHING` skips; at most a third of a statement is filler.
/// The largest, 8 parameters a row plus `received_at`, binds 2,049 values,
/// far below the bundled SQLite's limit of 32,766.
pub const SQLITE_ROWS: [usize; 16] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256];

type SqliteInsert<'q> = sqlx::query::QueryAs<
    'q,
    sqlx::Sqlite,
    (i64, String),
    <sqlx::Sqlite as sqlx::Database>::Arguments,
>;

/// One multi-row `INSERT` of `rows` (at most the largest shape), padded to
/// its shape.
fn sqlite_insert<'q>(rows: &'q [Row<'_, 'q>], now: UnixMillis) -> SqliteInsert<'q> {
    let shape = SQLITE_ROWS
        .iter()
        .position(|&n| n >= rows.len())
        .expect("a batch no larger than the largest shape");
    let mut q =
        sqlx::query_as::<_, (i64, String)>(sqlx::AssertSqlSafe(sqlite_insert_sql(shape))).bind(now);
    let last = rows.last().expect("a non-empty batch");
    for i in 0..SQLITE_ROWS[shape] {
        let r = rows.get(i).unwrap_or(last);
        q = q
            .bind(r.e.member_id)
            .bind(r.e.dedupe_key)
            .bind(r.e.event)
            .bind(r.e.source)
            .bind(r.e.verified)
            .bind(r.e.ts)
            .bind(r.payload.as_str())
            .bind(r.secrets.as_deref());
    }
    q
}

/// The SQL of shape `shape` (an index into [`SQLITE_ROWS`]); built once.
/// `$1` is `received_at`.
fn sqlite_insert_sql(shape: usize) -> std::sync::Arc<str> {
    static SQL: std::sync::OnceLock<Vec<std::sync::Arc<str>>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        SQLITE_ROWS
            .iter()
            .map(|&n| {
                let mut sql = String::from(
                    "INSERT INTO inbox (received_at, member_id, dedupe_key, event, source, \
                     verified, ts, payload, secrets) VALUES ",
                );
                for r in 0..n {
                    let b = 2 + r * 8;
                    if r > 0 {
                        sql.push(',');
                    }
                    sql.push_str("($1");
                    for k in 0..8 {
                        sql.push_str(&format!(", ${}", b + k));
                    }
                    sql.push(')');
                }
                sql.push_str(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key");
                sql.into()
            })
            .collect()
    });
    all[shape].clone()
}

impl Store {
    /// Appends a batch of deliveries atomically: all are durable when this
    /// returns, and a duplicate `dedupe_key` is reported, not stored —
    /// whether it is already in the inbox or repeats an earlier event of the
    /// same batch (the first occurrence is the one stored).
    ///
    /// A batch is one statement, so it needs no explicit transaction and
    /// costs one round trip to the database: on PostgreSQL an `INSERT …
    /// SELECT FROM UNNEST` of arrays; on SQLite a multi-row `VALUES` list
    /// (see [`SQLITE_ROWS`] for its shapes; a batch larger than the largest
    /// shape is split over several statements in one `BEGIN IMMEDIATE`
    /// transaction). Rows are inserted in the batch's order, so ids follow it.
    pub async fn append_inbox(
        &self,
        events: &[NewInboxEvent<'_>],
        now: UnixMillis,
    ) -> Result<Vec<Appended>> {
        let mut out = vec![Appended::Duplicate; events.len()];
        if events.is_empty() {
            return Ok(out);
        }
        // Only the first occurrence of a key goes to the database; a later
        // one in the same batch is a duplicate without asking.
        let mut seen = std::collections::HashSet::with_capacity(events.len());
        let firsts: Vec<usize> = (0..events.len())
            .filter(|&i| seen.insert(events[i].dedupe_key))
            .collect();
        drop(seen);
        let mut rows = Vec::with_capacity(firsts.len());
        for &i in &firsts {
            let e = &events[i];
            let secrets = match e.secrets {
                Some(s) => Some(self.keys.seal(&secrets_ctx(e.dedupe_key), s.as_bytes())?),
                None => None,
            };
            rows.push(Row {
                e,
                payload: e.payload.to_string(),
                secrets,
            });
        }
        let inserted: Vec<(i64, String)> = match &self.db {
            Db::Sqlite { write, .. } => {
                let largest = *SQLITE_ROWS.last().expect("shapes");
                if rows.len() <= largest {
                    sqlite_insert(&rows, now).fetch_all(write).await?
                } else {
                    let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
                    let mut got = Vec::with_capacity(rows.len());
                    for chunk in rows.chunks(largest) {
                        got.extend(sqlite_insert(chunk, now).fetch_all(&mut *tx).await?);
                    }
                    tx.commit().await?;
                    got
                }
            }
            Db::Postgres(pool) => {
                const SQL: &str = "INSERT INTO inbox (member_id, dedupe_key, event, source, \
                    verified, ts, received_at, payload, secrets) \
                    SELECT m, k, e, s, v, t, $9, p, x FROM UNNEST($1::text[], $2::text[], \
                    $3::text[], $4::text[], $5::bool[], $6::int8[], $7::text[], $8::bytea[]) \
                    WITH ORDINALITY AS u(m, k, e, s, v, t, p, x, n) ORDER BY n \
                    ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key";
                sqlx::query_as::<_, (i64, String)>(SQL)
                    .bind(rows.iter().map(|r| r.e.member_id).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.e.dedupe_key).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.e.event).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.e.source).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.e.verified).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.e.ts).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
                    .bind(
                        rows.iter()
                            .map(|r| r.secrets.as_deref())
                            .collect::<Vec<_>>(),
                    )
                    .bind(now)
                    .fetch_all(pool)
                    .await?
            }
        };
        let ids: std::collections::HashMap<String, i64> =
            inserted.into_iter().map(|(id, k)| (k, id)).collect();
        for i in firsts {
            if let Some(&id) = ids.get(events[i].dedupe_key) {
                out[i] = Appended::Inserted(id);
            }
        }
        Ok(out)
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
