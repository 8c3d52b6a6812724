//! The shared per-portal rate limit: a leaky bucket kept in the database, so
//! it holds across every process that shares it (Bitrix24 counts requests per
//! portal, not per process — protocol §8.1).
//!
//! The bucket is stored as one number, the *theoretical arrival time* (TAT) of
//! the generic cell rate algorithm: each request reserves a slot by moving the
//! TAT forward by one drain interval, and may go once `TAT - burst × interval`
//! has passed. One atomic upsert per request; no read-modify-write race.

use crate::{Backend, Result, Store, StoreError, UnixMillis, with_pool, with_tx};

const RESERVE_SQLITE: &str = "INSERT INTO rate_buckets (member_id, level, updated_at) VALUES ($1, $2 + $3, $4) \
    ON CONFLICT (member_id) DO UPDATE SET level = max(rate_buckets.level, $2) + $3, updated_at = $4 \
    RETURNING level";
const RESERVE_POSTGRES: &str = "INSERT INTO rate_buckets (member_id, level, updated_at) VALUES ($1, $2 + $3, $4) \
    ON CONFLICT (member_id) DO UPDATE SET level = GREATEST(rate_buckets.level, $2) + $3, updated_at = $4 \
    RETURNING level";

/// One reservation of [`Store::reserve_rate_slots`].
#[derive(Debug, Clone, Copy)]
pub struct RateRequest<'a> {
    pub member_id: &'a str,
    pub interval_ms: f64,
    pub burst: u32,
    pub now: UnixMillis,
}

fn wait_ms(tat: f64, interval_ms: f64, burst: u32, now: UnixMillis) -> i64 {
    let allowed_at = tat - f64::from(burst) * interval_ms;
    (allowed_at - now as f64).ceil().max(0.0) as i64
}

impl Store {
    /// [`Store::reserve_rate_slot`] for several requests, in order, in one
    /// transaction (one commit for all); the waits in the same order.
    pub async fn reserve_rate_slots(&self, reqs: &[RateRequest<'_>]) -> Result<Vec<i64>> {
        let sql = match self.backend() {
            Backend::Sqlite => RESERVE_SQLITE,
            Backend::Postgres => RESERVE_POSTGRES,
        };
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        with_tx!(self, |tx| {
            let mut out = Vec::with_capacity(reqs.len());
            for r in reqs {
                let tat: f64 = sqlx::query_scalar(sql)
                    .bind(r.member_id)
                    .bind(r.now as f64)
                    .bind(r.interval_ms)
                    .bind(r.now)
                    .fetch_one(&mut *tx)
                    .await?;
                out.push(wait_ms(tat, r.interval_ms, r.burst, r.now));
            }
            Ok::<_, StoreError>(out)
        })
    }

    /// Reserves the next request slot of `member_id`'s bucket (drain one
    /// request per `interval_ms`, `burst` requests of allowance) and returns
    /// how many milliseconds the caller must wait before sending (0 = now).
    /// The slot is taken either way: a caller that gives up still counts,
    /// which errs on the safe side of the portal's limit.
    pub async fn reserve_rate_slot(
        &self,
        member_id: &str,
        interval_ms: f64,
        burst: u32,
        now: UnixMillis,
    ) -> Result<i64> {
        let sql = match self.backend() {
            Backend::Sqlite => RESERVE_SQLITE,
            Backend::Postgres => RESERVE_POSTGRES,
        };
        let now_f = now as f64;
        let tat: f64 = with_pool!(self, write, |p| sqlx::query_scalar(sql)
            .bind(member_id)
            .bind(now_f)
            .bind(interval_ms)
            .bind(now)
            .fetch_one(p)
            .await)?;
        Ok(wait_ms(tat, interval_ms, burst, now))
    }

    /// Pushes a portal's bucket so that no slot is free before
    /// `now + penalty_ms` (after a `QUERY_LIMIT_EXCEEDED` from the portal:
    /// our view was too optimistic). Repeated penalties do not stack.
    pub async fn penalise_rate(
        &self,
        member_id: &str,
        penalty_ms: f64,
        now: UnixMillis,
    ) -> Result<()> {
        const SQLITE: &str = "INSERT INTO rate_buckets (member_id, level, updated_at) VALUES ($1, $2 + $3, $4) \
            ON CONFLICT (member_id) DO UPDATE SET level = max(rate_buckets.level, $2 + $3), updated_at = $4";
        const POSTGRES: &str = "INSERT INTO rate_buckets (member_id, level, updated_at) VALUES ($1, $2 + $3, $4) \
            ON CONFLICT (member_id) DO UPDATE SET level = GREATEST(rate_buckets.level, $2 + $3), updated_at = $4";
        let sql = match self.backend() {
            Backend::Sqlite => SQLITE,
            Backend::Postgres => POSTGRES,
        };
        with_pool!(self, write, |p| sqlx::query(sql)
            .bind(member_id)
            .bind(now as f64)
            .bind(penalty_ms)
            .bind(now)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }
}
