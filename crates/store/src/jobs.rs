//! The job queue (BRIEF §3 "Jobs"), on the same database as everything else
//! so that enqueueing can share a transaction with the write that causes it.
//!
//! States: `available` → `running` → `completed`, or back to `retryable`
//! after a failure (with a later `run_at`), `discarded` after the last attempt
//! (the dead letter, replayable), `cancelled` when its portal is uninstalled.
//!
//! - Claims are exclusive: PostgreSQL picks with `FOR UPDATE SKIP LOCKED`;
//!   SQLite runs a single `UPDATE … RETURNING` under `BEGIN IMMEDIATE` (one
//!   writer, so nothing else holds the rows).
//! - A claim is a lease (`locked_until`), not a held transaction: REST calls
//!   are slow. [`Store::rescue_jobs`] returns jobs of crashed workers.
//! - `unique_key` is enforced by a partial unique index over live states.
//! - `serial_key` serialises: a job runs only when no job with its key is
//!   running and none older is waiting, so a portal's lifecycle steps never
//!   interleave and keep their order.

use crate::{Backend, Result, Store, StoreError, UnixMillis, with_pool, with_tx};

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub kind: &'a str,
    pub member_id: Option<&'a str>,
    pub serial_key: Option<&'a str>,
    pub unique_key: Option<&'a str>,
    /// Whether the job calls the portal (REST): such jobs are cancelled when
    /// the portal is uninstalled; the others (forwards to the app) go on.
    pub calls_portal: bool,
    pub payload: &'a serde_json::Value,
    pub max_attempts: i64,
    pub run_at: UnixMillis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Created(i64),
    /// A live job with the same `unique_key` already exists.
    Duplicate(i64),
}

impl Enqueued {
    pub fn id(self) -> i64 {
        match self {
            Enqueued::Created(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub member_id: Option<String>,
    pub serial_key: Option<String>,
    pub unique_key: Option<String>,
    pub payload: String,
    pub state: String,
    /// Attempts started so far, this one included once claimed.
    pub attempt: i64,
    pub max_attempts: i64,
    pub run_at: i64,
    pub locked_by: Option<String>,
    pub locked_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub finalized_at: Option<i64>,
}

impl Job {
    pub fn payload_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// What [`Store::fail_job`] did with a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Will run again at the given time.
    Retry(UnixMillis),
    /// Attempts exhausted (or the failure was permanent): dead letter.
    Discarded,
    /// The job was no longer this worker's (lease lost, cancelled).
    NotOwner,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter<'a> {
    pub state: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub member_id: Option<&'a str>,
    pub limit: Option<i64>,
}

#[cfg(test)]
const JOB_COLUMNS: &str = "id, kind, member_id, serial_key, unique_key, payload, state, attempt, \
    max_attempts, run_at, locked_by, locked_until, last_error, created_at, finalized_at";

/// A due job of one state (`$state`, a SQL literal) whose serial key, if
/// any, has no running job and no earlier waiting one. One state per scan,
/// so the `(state, run_at, id)` index yields candidates in claim order and
/// the scan stops at the limit instead of sorting every due job.
macro_rules! claimable {
    ($state:literal) => {
        concat!(
            "SELECT j.id, j.run_at FROM jobs j WHERE j.state = '",
            $state,
            "' AND j.run_at <= $3 \
             AND (j.serial_key IS NULL OR NOT EXISTS (SELECT 1 FROM jobs o \
                  WHERE o.serial_key = j.serial_key AND o.id <> j.id \
                  AND (o.state = 'running' OR (o.state IN ('available', 'retryable') AND o.id < j.id)))) \
             ORDER BY j.run_at, j.id LIMIT $4"
        )
    };
}

const CLAIM_SQLITE: &str = concat!(
    "UPDATE jobs SET state = 'running', attempt = attempt + 1, locked_by = $1, locked_until = $2 \
     WHERE id IN (SELECT id FROM (SELECT * FROM (",
    claimable!("available"),
    ") UNION ALL SELECT * FROM (",
    claimable!("retryable"),
    ")) ORDER BY run_at, id LIMIT $4) \
     RETURNING id, kind, member_id, serial_key, unique_key, payload, state, attempt, \
     max_attempts, run_at, locked_by, locked_until, last_error, created_at, finalized_at"
);

const CLAIM_POSTGRES: &str = concat!(
    "WITH a AS (",
    claimable!("available"),
    " FOR UPDATE SKIP LOCKED), r AS (",
    claimable!("retryable"),
    " FOR UPDATE SKIP LOCKED), \
     picked AS (SELECT id FROM (SELECT id, run_at FROM a UNION ALL SELECT id, run_at FROM r) u \
     ORDER BY run_at, id LIMIT $4) \
     UPDATE jobs SET state = 'running', attempt = jobs.attempt + 1, locked_by = $1, locked_until = $2 \
     FROM picked WHERE jobs.id = picked.id \
     RETURNING jobs.id, jobs.kind, jobs.member_id, jobs.serial_key, jobs.unique_key, jobs.payload, \
     jobs.state, jobs.attempt, jobs.max_attempts, jobs.run_at, jobs.locked_by, jobs.locked_until, \
     jobs.last_error, jobs.created_at, jobs.finalized_at"
);

pub(crate) const CANCEL_PORTAL_JOBS: &str = "UPDATE jobs SET state = 'cancelled', finalized_at = $2, \
    locked_by = NULL, locked_until = NULL \
    WHERE member_id = $1 AND calls_portal AND state IN ('available', 'retryable', 'running')";

pub(crate) const INSERT_JOB: &str = "INSERT INTO jobs (kind, member_id, serial_key, unique_key, payload, state, \
    attempt, max_attempts, run_at, created_at, calls_portal) \
    VALUES ($1, $2, $3, $4, $5, 'available', 0, $6, $7, $8, $9) ON CONFLICT DO NOTHING RETURNING id";
pub(crate) const EXISTING_JOB: &str = "SELECT id FROM jobs WHERE unique_key = $1 \
    AND state IN ('available', 'running', 'retryable')";

/// Inserts `$job` inside the transaction `$tx`, or finds the live job with
/// its `unique_key`; evaluates to [`Enqueued`].
macro_rules! insert_job {
    ($tx:ident, $job:expr, $now:expr) => {{
        let job: &NewJob<'_> = $job;
        let id: Option<i64> = sqlx::query_scalar($crate::jobs::INSERT_JOB)
            .bind(job.kind)
            .bind(job.member_id)
            .bind(job.serial_key)
            .bind(job.unique_key)
            .bind(job.payload.to_string())
            .bind(job.max_attempts.max(1))
            .bind(job.run_at)
            .bind($now)
            .bind(job.calls_portal)
            .fetch_optional(&mut *$tx)
            .await?;
        match id {
            Some(id) => $crate::jobs::Enqueued::Created(id),
            None => {
                let existing: i64 = sqlx::query_scalar($crate::jobs::EXISTING_JOB)
                    .bind(job.unique_key)
                    .fetch_one(&mut *$tx)
                    .await?;
                $crate::jobs::Enqueued::Duplicate(existing)
            }
        }
    }};
}
pub(crate) use insert_job;

/// Jobs per transaction of [`Store::enqueue_jobs`].
pub const ENQUEUE_CHUNK: usize = 500;
/// Ids per statement of [`Store::complete_jobs`] (well under either
/// dialect's limit on bound parameters).
const COMPLETE_CHUNK: usize = 500;

/// Longest error text kept on a job (the tail is cut).
const MAX_ERROR_LEN: usize = 2000;

fn clip(s: &str) -> &str {
    if s.len() <= MAX_ERROR_LEN {
        return s;
    }
    let mut end = MAX_ERROR_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Store {
    /// Adds a job, or finds the live one with the same `unique_key`.
    pub async fn enqueue_job(&self, job: &NewJob<'_>, now: UnixMillis) -> Result<Enqueued> {
        with_tx!(self, |tx| Ok::<_, StoreError>(insert_job!(tx, job, now)))
    }

    /// Adds many jobs, [`Store::enqueue_job`] for each, in transactions of
    /// up to [`ENQUEUE_CHUNK`] jobs (one commit per chunk instead of one per
    /// job). The outcomes are in the order of `jobs`.
    pub async fn enqueue_jobs(
        &self,
        jobs: &[NewJob<'_>],
        now: UnixMillis,
    ) -> Result<Vec<Enqueued>> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let part = with_tx!(self, |tx| {
                let mut part = Vec::with_capacity(chunk.len());
                for job in chunk {
                    part.push(insert_job!(tx, job, now));
                }
                Ok::<_, StoreError>(part)
            })?;
            out.extend(part);
        }
        Ok(out)
    }

    /// Claims up to `limit` runnable jobs for `worker`, leased for `lease_ms`.
    pub async fn claim_jobs(
        &self,
        worker: &str,
        limit: i64,
        lease_ms: i64,
        now: UnixMillis,
    ) -> Result<Vec<Job>> {
        let sql = match self.backend() {
            Backend::Sqlite => CLAIM_SQLITE,
            Backend::Postgres => CLAIM_POSTGRES,
        };
        let mut jobs = with_tx!(self, |tx| {
            sqlx::query_as::<_, Job>(sql)
                .bind(worker)
                .bind(now + lease_ms)
                .bind(now)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::from)
        })?;
        jobs.sort_by_key(|j| (j.run_at, j.id));
        Ok(jobs)
    }

    /// Extends a running job's lease; false if it is no longer `worker`'s.
    pub async fn heartbeat_job(
        &self,
        id: i64,
        worker: &str,
        lease_ms: i64,
        now: UnixMillis,
    ) -> Result<bool> {
        const SQL: &str = "UPDATE jobs SET locked_until = $3 \
            WHERE id = $1 AND locked_by = $2 AND state = 'running'";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(id)
            .bind(worker)
            .bind(now + lease_ms)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Marks `worker`'s running job done; false if it was no longer theirs.
    pub async fn complete_job(&self, id: i64, worker: &str, now: UnixMillis) -> Result<bool> {
        const SQL: &str = "UPDATE jobs SET state = 'completed', finalized_at = $3, locked_by = NULL, \
            locked_until = NULL WHERE id = $1 AND locked_by = $2 AND state = 'running'";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(id)
            .bind(worker)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// [`Store::complete_job`] for many of `worker`'s jobs in one
    /// transaction; returns the ids that were completed (the others were no
    /// longer theirs).
    pub async fn complete_jobs(
        &self,
        ids: &[i64],
        worker: &str,
        now: UnixMillis,
    ) -> Result<Vec<i64>> {
        let mut done = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(COMPLETE_CHUNK) {
            // `$3…$n`: one placeholder per id (both dialects number them).
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "UPDATE jobs SET state = 'completed', finalized_at = $2, locked_by = NULL, \
                 locked_until = NULL WHERE locked_by = $1 AND state = 'running' AND id IN ({list}) \
                 RETURNING id"
            );
            let part: Vec<i64> = with_pool!(self, write, |p| {
                let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(worker)
                    .bind(now);
                for id in chunk {
                    q = q.bind(*id);
                }
                q.fetch_all(p).await
            })?;
            done.extend(part);
        }
        Ok(done)
    }

    /// Records a failed attempt: retry at `retry_at`, or dead-letter when
    /// attempts are exhausted or `retry_at` is `None` (permanent failure).
    /// `error` must not contain a secret.
    pub async fn fail_job(
        &self,
        id: i64,
        worker: &str,
        error: &str,
        retry_at: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Result<FailOutcome> {
        const SQL: &str = "UPDATE jobs SET \
            state = CASE WHEN $4 IS NULL OR attempt >= max_attempts THEN 'discarded' ELSE 'retryable' END, \
            run_at = COALESCE($4, run_at), last_error = $3, locked_by = NULL, locked_until = NULL, \
            finalized_at = CASE WHEN $4 IS NULL OR attempt >= max_attempts THEN $5 ELSE NULL END \
            WHERE id = $1 AND locked_by = $2 AND state = 'running' RETURNING state, run_at";
        let row: Option<(String, i64)> = with_pool!(self, write, |p| sqlx::query_as(SQL)
            .bind(id)
            .bind(worker)
            .bind(clip(error))
            .bind(retry_at)
            .bind(now)
            .fetch_optional(p)
            .await)?;
        Ok(match row {
            None => FailOutcome::NotOwner,
            Some((s, _)) if s == "discarded" => FailOutcome::Discarded,
            Some((_, at)) => FailOutcome::Retry(at),
        })
    }

    /// Returns jobs whose lease ran out (their worker died) to the queue, or
    /// to the dead letter when that was their last attempt. Returns how many.
    pub async fn rescue_jobs(&self, now: UnixMillis) -> Result<u64> {
        const SQL: &str = "UPDATE jobs SET \
            state = CASE WHEN attempt >= max_attempts THEN 'discarded' ELSE 'retryable' END, \
            finalized_at = CASE WHEN attempt >= max_attempts THEN $1 ELSE NULL END, \
            run_at = $1, last_error = 'lease expired: the worker stopped before finishing', \
            locked_by = NULL, locked_until = NULL \
            WHERE state = 'running' AND locked_until < $1";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n)
    }

    /// Cancels every live job of a portal that calls it (uninstall: no REST
    /// call from here on). A running one keeps running but can no longer
    /// complete. Forwards of its acknowledged events go on.
    pub async fn cancel_portal_jobs(&self, member_id: &str, now: UnixMillis) -> Result<u64> {
        let n = with_pool!(self, write, |p| sqlx::query(CANCEL_PORTAL_JOBS)
            .bind(member_id)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n)
    }

    /// Puts a dead-lettered (or cancelled) job back in the queue with a fresh
    /// set of attempts. False if it is not in a final failed state.
    pub async fn retry_job(&self, id: i64, now: UnixMillis) -> Result<bool> {
        const SQL: &str = "UPDATE jobs SET state = 'available', attempt = 0, run_at = $2, \
            finalized_at = NULL WHERE id = $1 AND state IN ('discarded', 'cancelled')";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(id)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Moves a waiting job to the dead letter by hand (`b24gate jobs discard`).
    pub async fn discard_job(&self, id: i64, reason: &str, now: UnixMillis) -> Result<bool> {
        const SQL: &str = "UPDATE jobs SET state = 'discarded', finalized_at = $2, last_error = $3 \
            WHERE id = $1 AND state IN ('available', 'retryable')";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(id)
            .bind(now)
            .bind(clip(reason))
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    pub async fn get_job(&self, id: i64) -> Result<Option<Job>> {
        const SQL: &str = "SELECT id, kind, member_id, serial_key, unique_key, payload, state, attempt, \
            max_attempts, run_at, locked_by, locked_until, last_error, created_at, finalized_at \
            FROM jobs WHERE id = $1";
        let job = with_pool!(self, read, |p| sqlx::query_as::<_, Job>(SQL)
            .bind(id)
            .fetch_optional(p)
            .await)?;
        Ok(job)
    }

    pub async fn list_jobs(&self, f: &JobFilter<'_>) -> Result<Vec<Job>> {
        const SQL: &str = "SELECT id, kind, member_id, serial_key, unique_key, payload, state, attempt, \
            max_attempts, run_at, locked_by, locked_until, last_error, created_at, finalized_at \
            FROM jobs WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR kind = $2) \
            AND ($3 IS NULL OR member_id = $3) ORDER BY id LIMIT $4";
        let jobs = with_pool!(self, read, |p| sqlx::query_as::<_, Job>(SQL)
            .bind(f.state)
            .bind(f.kind)
            .bind(f.member_id)
            .bind(f.limit.unwrap_or(i64::MAX))
            .fetch_all(p)
            .await)?;
        Ok(jobs)
    }

    /// Job counts per state (for metrics and `/v1/status`), every state listed.
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>> {
        const SQL: &str = "SELECT state, COUNT(*) FROM jobs GROUP BY state";
        let rows: Vec<(String, i64)> =
            with_pool!(self, read, |p| sqlx::query_as(SQL).fetch_all(p).await)?;
        Ok(JOB_STATES
            .iter()
            .map(|s| {
                let n = rows.iter().find(|(st, _)| st == s).map_or(0, |(_, n)| *n);
                ((*s).to_owned(), n)
            })
            .collect())
    }

    /// Deletes completed and cancelled jobs finalised before `before`; dead
    /// letters are kept until replayed or discarded by hand.
    pub async fn prune_jobs(&self, before: UnixMillis, limit: i64) -> Result<u64> {
        const SQL: &str = "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
            WHERE state IN ('completed', 'cancelled') AND finalized_at < $1 LIMIT $2)";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(before)
            .bind(limit)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n)
    }
}

/// Every job state, in lifecycle order.
pub const JOB_STATES: [&str; 6] = [
    "available",
    "running",
    "retryable",
    "completed",
    "discarded",
    "cancelled",
];

#[cfg(test)]
mod tests {
    #[test]
    fn claim_returns_every_column() {
        let cols: Vec<_> = super::JOB_COLUMNS.split(',').map(str::trim).collect();
        for c in cols {
            assert!(super::CLAIM_SQLITE.contains(c), "{c}");
            assert!(super::CLAIM_POSTGRES.contains(&format!("jobs.{c}")), "{c}");
        }
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        let long = "é".repeat(5000);
        assert!(super::clip(&long).len() <= super::MAX_ERROR_LEN);
        assert_eq!(super::clip("short"), "short");
    }
}
