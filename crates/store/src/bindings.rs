//! Expected and actual bindings per portal — the binding matrix.
//!
//! One row per binding identity (kind, name, mode, handler, connector):
//! `expected` says the manifest wants it, `actual` that the portal's
//! `event.get`/`placement.get` listed it at the last check, `state` what the
//! reconciler concluded, `last_result` the outcome of the last bind/unbind.

use wire::Scope;

use crate::audit::{INSERT_AUDIT, NewAudit};
use crate::{Backend, Result, Store, StoreError, UnixMillis, with_pool, with_tx};

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

/// Rows per multi-row binding `INSERT`: 13 parameters each plus the two
/// shared ones stays far below SQLite's (32,766) and PostgreSQL's (65,535)
/// parameter limits.
const BINDING_ROWS_PER_INSERT: usize = 200;

/// Appends `INSERT INTO bindings … VALUES (…), (…)` for `rows` rows to
/// `sql`: `$1` is the member id and `$2` the time (`last_checked_at` and
/// `updated_at`) of every row; row `i` takes `$(first + 13i)` to
/// `$(first + 13i + 12)`.
fn push_insert_bindings(sql: &mut String, first: usize, rows: usize) {
    use std::fmt::Write as _;
    sql.push_str(
        "INSERT INTO bindings (member_id, kind, name, mode, handler, connector, auth_type, \
         owner, options, expected, actual, state, reason, last_result, last_checked_at, \
         updated_at) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("($1");
        for k in 0..13 {
            let _ = write!(sql, ", ${}", first + 13 * i + k);
        }
        sql.push_str(", $2, $2)");
    }
}

/// Binds one binding row's 13 values, in [`push_insert_bindings`]' order.
macro_rules! bind_binding {
    ($q:expr, $r:expr) => {{
        let r: &BindingRecord = $r;
        $q.bind(&r.key.kind)
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
    }};
}

/// Replaces `$member_id`'s binding rows inside the transaction `$tx` and
/// appends `$audit` (an `Option<(&NewAudit, detail text)>`) with them.
///
/// On SQLite the whole sequence — `DELETE`, the multi-row `INSERT`s, the
/// audit `INSERT` — is one call: the driver runs a statement sequence on the
/// connection's thread in one hand-off, and `$N` names the N-th argument of
/// the whole sequence. PostgreSQL's extended protocol takes one statement
/// per call, so there it is one call per statement (still one `INSERT` per
/// [`BINDING_ROWS_PER_INSERT`] rows, not one per binding).
macro_rules! write_bindings {
    ($store:expr, $tx:ident, $member_id:expr, $records:expr, $now:expr, $audit:expr) => {{
        let member_id: &str = $member_id;
        let records: &[BindingRecord] = $records;
        let now: UnixMillis = $now;
        let audit: Option<(&NewAudit<'_>, &str)> = $audit;
        if $store.backend() == Backend::Sqlite {
            let mut sql = String::from("DELETE FROM bindings WHERE member_id = $1;\n");
            let mut next = 3;
            for chunk in records.chunks(BINDING_ROWS_PER_INSERT) {
                push_insert_bindings(&mut sql, next, chunk.len());
                sql.push_str(";\n");
                next += 13 * chunk.len();
            }
            if audit.is_some() {
                sql.push_str(&format!(
                    "INSERT INTO audit_log (at, member_id, actor, action, outcome, detail) \
                     VALUES ($2, ${}, ${}, ${}, ${}, ${});",
                    next,
                    next + 1,
                    next + 2,
                    next + 3,
                    next + 4
                ));
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(member_id)
                .bind(now);
            for r in records {
                q = bind_binding!(q, r);
            }
            if let Some((a, detail)) = audit {
                q = q
                    .bind(a.member_id)
                    .bind(a.actor)
                    .bind(a.action)
                    .bind(a.outcome)
                    .bind(detail);
            }
            q.execute(&mut *$tx).await?;
        } else {
            sqlx::query("DELETE FROM bindings WHERE member_id = $1")
                .bind(member_id)
                .execute(&mut *$tx)
                .await?;
            for chunk in records.chunks(BINDING_ROWS_PER_INSERT) {
                let mut sql = String::new();
                push_insert_bindings(&mut sql, 3, chunk.len());
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(member_id)
                    .bind(now);
                for r in chunk {
                    q = bind_binding!(q, r);
                }
                q.execute(&mut *$tx).await?;
            }
            if let Some((a, detail)) = audit {
                sqlx::query(INSERT_AUDIT)
                    .bind(now)
                    .bind(a.member_id)
                    .bind(a.actor)
                    .bind(a.action)
                    .bind(a.outcome)
                    .bind(detail)
                    .execute(&mut *$tx)
                    .await?;
            }
        }
    }};
}

impl Store {
    /// Records a reconcile's outcome — probe profile, binding picture,
    /// version reached, audit entry — in one transaction, so a portal is
    /// never seen at the new version without its bindings (and it costs one
    /// commit, not four). Fails with [`StoreError::PortalNotFound`] (and
    /// writes nothing) if the portal is gone. On SQLite that is four calls
    /// on the writer connection whatever the number of bindings: `BEGIN`,
    /// the portal `UPDATE`, one statement sequence with the bindings and the
    /// audit entry, `COMMIT`.
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
        let audit = audit.as_ref().map(|(a, d)| (*a, d.as_str()));
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
            write_bindings!(self, tx, r.member_id, r.bindings, now, audit);
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
            write_bindings!(self, tx, member_id, records, now, None);
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
