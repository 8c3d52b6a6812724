//! Expected and actual bindings per portal — the binding matrix.
//!
//! One row per binding identity (kind, name, mode, handler, connector):
//! `expected` says the manifest wants it, `actual` that the portal's
//! `event.get`/`placement.get` listed it at the last check, `state` what the
//! reconciler concluded, `last_result` the outcome of the last bind/unbind.

use wire::Scope;

use crate::audit::{INSERT_AUDIT, NewAudit};
use crate::{Result, Store, StoreError, UnixMillis, with_pool, with_tx};

/// A binding's identity and settings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BindingKey {
    /// `event` or `placement`.
    pub kind: String,
    /// Event code (upper case) or placement code.
    pub name: String,
    /// `online` or `offline` (`online` for placements).
    pub mode: String,
    /// Handler URL; empty for offline events.
    pub handler: String,
    /// Offline auth connector; empty by default.
    pub connector: String,
}

/// What the reconciler records about one binding.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingRecord {
    pub key: BindingKey,
    pub auth_type: i64,
    pub owner: Option<String>,
    pub options: serde_json::Value,
    pub expected: bool,
    pub actual: bool,
    /// `bound`, `missing`, `stale`, `unsatisfiable`, `failed`, `foreign`.
    pub state: String,
    pub reason: Option<String>,
    pub last_result: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    member_id: String,
    kind: String,
    name: String,
    mode: String,
    handler: String,
    connector: String,
    auth_type: i64,
    owner: Option<String>,
    options: String,
    expected: bool,
    actual: bool,
    state: String,
    reason: Option<String>,
    last_result: Option<String>,
    last_checked_at: Option<i64>,
}

/// A row of the binding matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixRow {
    pub member_id: String,
    pub record: BindingRecord,
    pub last_checked_at: Option<UnixMillis>,
}

impl TryFrom<Row> for MatrixRow {
    type Error = StoreError;

    fn try_from(r: Row) -> Result<MatrixRow> {
        Ok(MatrixRow {
            member_id: r.member_id,
            record: BindingRecord {
                key: BindingKey {
                    kind: r.kind,
                    name: r.name,
                    mode: r.mode,
                    handler: r.handler,
                    connector: r.connector,
                },
                auth_type: r.auth_type,
                owner: r.owner,
                options: serde_json::from_str(&r.options).map_err(|_| StoreError::Corrupt {
                    table: "bindings",
                    column: "options",
                })?,
                expected: r.expected,
                actual: r.actual,
                state: r.state,
                reason: r.reason,
                last_result: r.last_result,
            },
            last_checked_at: r.last_checked_at,
        })
    }
}

/// The capability probe's result as a portal records it.
#[derive(Debug, Clone)]
pub struct ProbedProfile<'a> {
    pub scopes: &'a [Scope],
    pub profile: &'a serde_json::Value,
    pub plan: &'a str,
    /// Kept when `None`.
    pub license: Option<&'a str>,
}

/// Everything one reconcile of a portal records, written by
/// [`Store::record_bring_up`] in one transaction.
#[derive(Debug, Clone)]
pub struct BringUpRecord<'a> {
    pub member_id: &'a str,
    /// The probe's result ([`Store::update_profile`]).
    pub profile: Option<ProbedProfile<'a>>,
    /// The whole binding picture ([`Store::replace_bindings`]).
    pub bindings: &'a [BindingRecord],
    /// The manifest version reached ([`Store::set_installed_version`]);
    /// `None` while migrations are still to run.
    pub version: Option<i64>,
    /// Appended with the rest ([`Store::append_audit`]).
    pub audit: Option<NewAudit<'a>>,
}

const INSERT_BINDING: &str = "INSERT INTO bindings (member_id, kind, name, mode, handler, connector, \
    auth_type, owner, options, expected, actual, state, reason, last_result, last_checked_at, \
    updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)";

/// Replaces `$member_id`'s binding rows inside the transaction `$tx`.
macro_rules! write_bindings {
    ($tx:ident, $member_id:expr, $records:expr, $now:expr) => {{
        let member_id: &str = $member_id;
        sqlx::query("DELETE FROM bindings WHERE member_id = $1")
            .bind(member_id)
            .execute(&mut *$tx)
            .await?;
        for r in $records {
            sqlx::query(INSERT_BINDING)
                .bind(member_id)
                .bind(&r.key.kind)
                .bind(&r.key.name)
                .bind(&r.key.mode)
                .bind(&r.key.handler)
                .bind(&r.key.connector)
                .bind(r.auth_type)
                .bind(r.owner.as_deref())
                .bind(r.options.to_string())
                .bind(r.expected)
                .bind(r.actual)
                .bind(&r.state)
                .bind(r.reason.as_deref())
                .bind(r.last_result.as_deref())
                .bind($now)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

impl Store {
    /// Records a reconcile's outcome — probe profile, binding picture,
    /// version reached, audit entry — in one transaction, so a portal is
    /// never seen at the new version without its bindings (and it costs one
    /// commit, not four). Fails with [`StoreError::PortalNotFound`] (and
    /// writes nothing) if the portal is gone.
    pub async fn record_bring_up(&self, r: &BringUpRecord<'_>, now: UnixMillis) -> Result<()> {
        const PORTAL: &str = "UPDATE portals SET \
            scopes = CASE WHEN $2 THEN $3 ELSE scopes END, \
            profile = CASE WHEN $2 THEN $4 ELSE profile END, \
            plan = CASE WHEN $2 THEN $5 ELSE plan END, \
            license = COALESCE($6, license), \
            installed_version = COALESCE($7, installed_version), updated_at = $8 \
            WHERE member_id = $1";
        let probed = r.profile.as_ref();
        let scopes = probed.map(|p| {
            p.scopes
                .iter()
                .map(Scope::as_str)
                .collect::<Vec<_>>()
                .join(",")
        });
        let profile = probed.map(|p| p.profile.to_string());
        let audit = r.audit.as_ref().map(|a| (a, a.detail.to_string()));
        with_tx!(self, |tx| {
            let n = sqlx::query(PORTAL)
                .bind(r.member_id)
                .bind(probed.is_some())
                .bind(scopes.as_deref())
                .bind(profile.as_deref())
                .bind(probed.map(|p| p.plan))
                .bind(probed.and_then(|p| p.license))
                .bind(r.version)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::PortalNotFound(r.member_id.to_owned()));
            }
            write_bindings!(tx, r.member_id, r.bindings, now);
            if let Some((a, detail)) = &audit {
                sqlx::query(INSERT_AUDIT)
                    .bind(now)
                    .bind(a.member_id)
                    .bind(a.actor)
                    .bind(a.action)
                    .bind(a.outcome)
                    .bind(detail.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            Ok::<_, StoreError>(())
        })
    }

    /// Replaces a portal's whole binding picture with the reconciler's view
    /// (rows not in `records` are deleted), in one transaction.
    pub async fn replace_bindings(
        &self,
        member_id: &str,
        records: &[BindingRecord],
        now: UnixMillis,
    ) -> Result<()> {
        with_tx!(self, |tx| {
            write_bindings!(tx, member_id, records, now);
            Ok::<_, StoreError>(())
        })
    }

    /// The binding matrix: every portal's rows (or one portal's), ordered.
    pub async fn binding_matrix(&self, member_id: Option<&str>) -> Result<Vec<MatrixRow>> {
        const SQL: &str = "SELECT member_id, kind, name, mode, handler, connector, auth_type, owner, \
            options, expected, actual, state, reason, last_result, last_checked_at FROM bindings \
            WHERE ($1 IS NULL OR member_id = $1) \
            ORDER BY member_id, kind, name, mode, handler, connector";
        let rows = with_pool!(self, read, |p| sqlx::query_as::<_, Row>(SQL)
            .bind(member_id)
            .fetch_all(p)
            .await)?;
        rows.into_iter().map(MatrixRow::try_from).collect()
    }

    /// Counts of binding states across portals (metrics, status).
    pub async fn binding_counts(&self) -> Result<Vec<(String, i64)>> {
        const SQL: &str = "SELECT state, COUNT(*) FROM bindings GROUP BY state ORDER BY state";
        let rows = with_pool!(self, read, |p| sqlx::query_as(SQL).fetch_all(p).await)?;
        Ok(rows)
    }
}
