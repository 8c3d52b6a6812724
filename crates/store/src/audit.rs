//! The audit log: append-only (a trigger refuses UPDATE and DELETE in both
//! dialects) and without a foreign key, so a portal's history survives its
//! purge (BRIEF §2 "Uninstall": keep uninstall logs).

use crate::{Result, Store, UnixMillis, with_pool};

/// An entry to append. `detail` is JSON and must never contain a secret:
/// callers put fingerprints, not tokens.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub member_id: Option<&'a str>,
    /// Who acted: `bitrix24`, `engine`, `cli`, `admin-api`, `system`.
    pub actor: &'a str,
    /// What happened, dotted: `install.verified`, `portal.status`, `uninstall.ignored`.
    pub action: &'a str,
    /// `ok`, `rejected`, `failed`, `noop`.
    pub outcome: &'a str,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: UnixMillis,
    pub member_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub outcome: String,
    pub detail: String,
}

impl AuditEntry {
    pub fn detail_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.detail).unwrap_or(serde_json::Value::Null)
    }
}

/// Which entries to list, newest last.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter<'a> {
    pub member_id: Option<&'a str>,
    pub since: Option<UnixMillis>,
    pub action_prefix: Option<&'a str>,
    pub limit: Option<i64>,
}

pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit_log (at, member_id, actor, action, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6)";

impl Store {
    pub async fn append_audit(&self, entry: &NewAudit<'_>, now: UnixMillis) -> Result<()> {
        let detail = entry.detail.to_string();
        with_pool!(self, write, |p| sqlx::query(INSERT_AUDIT)
            .bind(now)
            .bind(entry.member_id)
            .bind(entry.actor)
            .bind(entry.action)
            .bind(entry.outcome)
            .bind(&detail)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    pub async fn list_audit(&self, f: &AuditFilter<'_>) -> Result<Vec<AuditEntry>> {
        const SQL: &str = "SELECT id, at, member_id, actor, action, outcome, detail FROM audit_log \
            WHERE ($1 IS NULL OR member_id = $1) AND ($2 IS NULL OR at >= $2) \
            AND ($3 IS NULL OR action LIKE $3) ORDER BY id LIMIT $4";
        let like = f.action_prefix.map(|p| format!("{p}%"));
        let limit = f.limit.unwrap_or(i64::MAX);
        let rows = with_pool!(self, read, |p| sqlx::query_as::<_, AuditEntry>(SQL)
            .bind(f.member_id)
            .bind(f.since)
            .bind(like.as_deref())
            .bind(limit)
            .fetch_all(p)
            .await)?;
        Ok(rows)
    }
}
