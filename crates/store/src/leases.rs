//! Named leases: whoever holds `name` until `until` does that work alone
//! (a portal's offline drainer, its reconciler, the job rescuer). A holder
//! that dies stops renewing, and the lease is taken over once it runs out.

use crate::{Result, Store, UnixMillis, with_pool};

impl Store {
    /// Takes or renews `name` for `owner` for `ttl_ms`. Returns whether
    /// `owner` holds it now.
    pub async fn try_lease(
        &self,
        name: &str,
        owner: &str,
        ttl_ms: i64,
        now: UnixMillis,
    ) -> Result<bool> {
        const SQL: &str = "INSERT INTO leases (name, owner, until) VALUES ($1, $2, $3) \
            ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until \
            WHERE leases.owner = excluded.owner OR leases.until <= $4";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(name)
            .bind(owner)
            .bind(now + ttl_ms)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Gives a lease back early.
    pub async fn release_lease(&self, name: &str, owner: &str) -> Result<()> {
        with_pool!(self, write, |p| sqlx::query(
            "DELETE FROM leases WHERE name = $1 AND owner = $2"
        )
        .bind(name)
        .bind(owner)
        .execute(p)
        .await
        .map(|_| ()))?;
        Ok(())
    }
}
