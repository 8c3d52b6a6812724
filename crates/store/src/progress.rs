//! Durable progress of per-portal work that must survive a crash: manifest
//! migrations (each applied exactly once, resuming at the step it reached),
//! offline drains (the reserved `process_id`, so a crash between reserve and
//! clear re-reads the same reservation instead of orphaning it), and calls
//! parked on method confirmation.

use crate::{Result, Store, StoreError, UnixMillis, with_pool};

/// Where a portal's migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    NotStarted,
    /// Started; `step` steps are done.
    Running {
        step: i64,
    },
    Applied,
}

/// A portal's offline drain state for one auth connector.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DrainState {
    pub member_id: String,
    pub connector: String,
    /// The reservation in flight: set before its rows are stored, cleared
    /// only after `event.offline.clear` succeeded.
    pub process_id: Option<String>,
    /// A reserve was in flight when the drain last stopped: a reservation
    /// may exist whose id was never recorded.
    pub reserving: bool,
    pub reserved_at: Option<i64>,
    pub last_drain_at: Option<i64>,
    pub drained_total: i64,
    pub error_total: i64,
    pub last_error: Option<String>,
}

/// One step of a drain, for [`Store::set_drain_process`].
#[derive(Debug, Clone, Default)]
pub struct DrainUpdate<'a> {
    pub member_id: &'a str,
    pub connector: &'a str,
    pub process_id: Option<&'a str>,
    /// A reserve is about to be sent (or none is in flight: false).
    pub reserving: bool,
    /// Rows stored by this step (added to the total).
    pub drained: i64,
    /// Rows marked with `event.offline.error` by this step.
    pub errors: i64,
    pub last_error: Option<&'a str>,
}

/// A call parked on `METHOD_CONFIRM_WAITING`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PendingCall {
    pub id: i64,
    pub member_id: String,
    pub method: String,
    pub params: String,
    pub token_fingerprint: String,
    /// `waiting`, `confirmed`, `denied`, `done`, `failed`, `expired`.
    pub state: String,
    pub result: Option<String>,
    pub requested_at: i64,
    pub expires_at: i64,
    pub updated_at: i64,
}

fn pending_ctx(member_id: &str, fingerprint: &str) -> String {
    format!("pending_calls.access_token:{member_id}:{fingerprint}")
}

impl Store {
    /// How many portals are `installed`, and how many of those are recorded
    /// at manifest `version` or later: how far a version bump has got.
    pub async fn version_census(&self, version: i64) -> Result<(i64, i64)> {
        const SQL: &str = "SELECT COUNT(*), \
            COALESCE(SUM(CASE WHEN installed_version >= $1 THEN 1 ELSE 0 END), 0) \
            FROM portals WHERE status = 'installed'";
        let (all, at): (i64, i64) = with_pool!(self, read, |p| sqlx::query_as(SQL)
            .bind(version)
            .fetch_one(p)
            .await)?;
        Ok((all, at))
    }

    /// `installed` portals recorded below manifest `version` (or at none):
    /// what the version-drift check reconciles.
    pub async fn portals_below_version(&self, version: i64) -> Result<Vec<String>> {
        const SQL: &str = "SELECT member_id FROM portals WHERE status = 'installed' \
            AND (installed_version IS NULL OR installed_version < $1) ORDER BY member_id";
        let rows: Vec<String> = with_pool!(self, read, |p| sqlx::query_scalar(SQL)
            .bind(version)
            .fetch_all(p)
            .await)?;
        Ok(rows)
    }

    pub async fn migration_state(
        &self,
        member_id: &str,
        migration_id: &str,
    ) -> Result<MigrationState> {
        const SQL: &str =
            "SELECT state, step FROM portal_migrations WHERE member_id = $1 AND migration_id = $2";
        let row: Option<(String, i64)> = with_pool!(self, read, |p| sqlx::query_as(SQL)
            .bind(member_id)
            .bind(migration_id)
            .fetch_optional(p)
            .await)?;
        Ok(match row {
            None => MigrationState::NotStarted,
            Some((s, _)) if s == "applied" => MigrationState::Applied,
            Some((_, step)) => MigrationState::Running { step },
        })
    }

    /// Records that `step` steps of a migration are done (creating the row
    /// on the first call).
    pub async fn migration_progress(
        &self,
        member_id: &str,
        migration_id: &str,
        version: i64,
        step: i64,
        now: UnixMillis,
    ) -> Result<()> {
        const SQL: &str = "INSERT INTO portal_migrations (member_id, migration_id, version, step, state, updated_at) \
            VALUES ($1, $2, $3, $4, 'running', $5) ON CONFLICT (member_id, migration_id) \
            DO UPDATE SET step = excluded.step, updated_at = excluded.updated_at \
            WHERE portal_migrations.state = 'running'";
        with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(member_id)
            .bind(migration_id)
            .bind(version)
            .bind(step)
            .bind(now)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    pub async fn migration_applied(
        &self,
        member_id: &str,
        migration_id: &str,
        version: i64,
        now: UnixMillis,
    ) -> Result<()> {
        const SQL: &str = "INSERT INTO portal_migrations (member_id, migration_id, version, step, state, applied_at, updated_at) \
            VALUES ($1, $2, $3, 0, 'applied', $4, $4) ON CONFLICT (member_id, migration_id) \
            DO UPDATE SET state = 'applied', applied_at = excluded.applied_at, updated_at = excluded.updated_at";
        with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(member_id)
            .bind(migration_id)
            .bind(version)
            .bind(now)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    pub async fn drain_state(
        &self,
        member_id: &str,
        connector: &str,
    ) -> Result<Option<DrainState>> {
        const SQL: &str = "SELECT member_id, connector, process_id, reserving, reserved_at, last_drain_at, \
            drained_total, error_total, last_error FROM offline_drains WHERE member_id = $1 AND connector = $2";
        let row = with_pool!(self, read, |p| sqlx::query_as::<_, DrainState>(SQL)
            .bind(member_id)
            .bind(connector)
            .fetch_optional(p)
            .await)?;
        Ok(row)
    }

    /// Every drain state (status, metrics).
    pub async fn drain_states(&self) -> Result<Vec<DrainState>> {
        const SQL: &str = "SELECT member_id, connector, process_id, reserving, reserved_at, last_drain_at, \
            drained_total, error_total, last_error FROM offline_drains ORDER BY member_id, connector";
        let rows = with_pool!(self, read, |p| sqlx::query_as::<_, DrainState>(SQL)
            .fetch_all(p)
            .await)?;
        Ok(rows)
    }

    /// Records a reservation (`process_id: Some`) before its rows are
    /// stored, or its end (`None`) after the clear succeeded, with the
    /// batch's counts.
    pub async fn set_drain_process(&self, u: &DrainUpdate<'_>, now: UnixMillis) -> Result<()> {
        const SQL: &str = "INSERT INTO offline_drains (member_id, connector, process_id, reserved_at, \
            last_drain_at, drained_total, error_total, last_error, updated_at, reserving) \
            VALUES ($1, $2, $3, CASE WHEN $3 IS NULL THEN NULL ELSE $7 END, $7, $4, $5, $6, $7, $8) \
            ON CONFLICT (member_id, connector) DO UPDATE SET process_id = excluded.process_id, \
            reserving = excluded.reserving, \
            reserved_at = CASE WHEN excluded.process_id IS NULL THEN NULL \
                WHEN offline_drains.process_id = excluded.process_id THEN offline_drains.reserved_at \
                ELSE excluded.reserved_at END, \
            last_drain_at = excluded.last_drain_at, \
            drained_total = offline_drains.drained_total + excluded.drained_total, \
            error_total = offline_drains.error_total + excluded.error_total, \
            last_error = COALESCE(excluded.last_error, offline_drains.last_error), \
            updated_at = excluded.updated_at";
        with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(u.member_id)
            .bind(u.connector)
            .bind(u.process_id)
            .bind(u.drained)
            .bind(u.errors)
            .bind(u.last_error)
            .bind(now)
            .bind(u.reserving)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Parks a call; the access token it must be re-run with (approval is
    /// bound to it, protocol §9) is sealed. Returns the pending call's id.
    pub async fn park_call(
        &self,
        member_id: &str,
        method: &str,
        params: &serde_json::Value,
        access_token: &str,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<i64> {
        const SQL: &str = "INSERT INTO pending_calls (member_id, method, params, token_fingerprint, \
            access_token, state, requested_at, expires_at, updated_at) \
            VALUES ($1, $2, $3, $4, $5, 'waiting', $6, $7, $6) RETURNING id";
        let fp = self.keys.fingerprint(access_token);
        let sealed = self
            .keys
            .seal(&pending_ctx(member_id, &fp), access_token.as_bytes())?;
        let id = with_pool!(self, write, |p| sqlx::query_scalar(SQL)
            .bind(member_id)
            .bind(method)
            .bind(params.to_string())
            .bind(&fp)
            .bind(&sealed)
            .bind(now)
            .bind(expires_at)
            .fetch_one(p)
            .await)?;
        Ok(id)
    }

    pub async fn get_pending_call(&self, id: i64) -> Result<Option<PendingCall>> {
        const SQL: &str = "SELECT id, member_id, method, params, token_fingerprint, state, result, \
            requested_at, expires_at, updated_at FROM pending_calls WHERE id = $1";
        let row = with_pool!(self, read, |p| sqlx::query_as::<_, PendingCall>(SQL)
            .bind(id)
            .fetch_optional(p)
            .await)?;
        Ok(row)
    }

    /// Waiting calls of a portal for `method` bound to the token with this
    /// fingerprint (what an `ONAPPMETHODCONFIRM` decides).
    pub async fn waiting_calls(
        &self,
        member_id: &str,
        method: &str,
        token_fingerprint: &str,
    ) -> Result<Vec<PendingCall>> {
        const SQL: &str = "SELECT id, member_id, method, params, token_fingerprint, state, result, \
            requested_at, expires_at, updated_at FROM pending_calls \
            WHERE member_id = $1 AND lower(method) = lower($2) AND token_fingerprint = $3 \
            AND state = 'waiting' ORDER BY id";
        let rows = with_pool!(self, read, |p| sqlx::query_as::<_, PendingCall>(SQL)
            .bind(member_id)
            .bind(method)
            .bind(token_fingerprint)
            .fetch_all(p)
            .await)?;
        Ok(rows)
    }

    /// The sealed access token of a pending call.
    pub async fn pending_call_token(&self, call: &PendingCall) -> Result<String> {
        let sealed: Vec<u8> = with_pool!(self, read, |p| sqlx::query_scalar(
            "SELECT access_token FROM pending_calls WHERE id = $1"
        )
        .bind(call.id)
        .fetch_one(p)
        .await)?;
        let plain = self.keys.open(
            &pending_ctx(&call.member_id, &call.token_fingerprint),
            &sealed,
        )?;
        String::from_utf8(plain).map_err(|_| StoreError::Corrupt {
            table: "pending_calls",
            column: "access_token",
        })
    }

    /// Moves a pending call from `from` to `to`, recording `result` (JSON
    /// text, no secrets). False if it was not in `from`.
    pub async fn settle_call(
        &self,
        id: i64,
        from: &str,
        to: &str,
        result: Option<&str>,
        now: UnixMillis,
    ) -> Result<bool> {
        const SQL: &str = "UPDATE pending_calls SET state = $3, result = COALESCE($4, result), updated_at = $5 \
            WHERE id = $1 AND state = $2";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(id)
            .bind(from)
            .bind(to)
            .bind(result)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }
}
