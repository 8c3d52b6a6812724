//! Portal identity, endpoints, capability profile and lifecycle status.
//!
//! A row is written only after the install was verified against the OAuth
//! server (BRIEF §3 invariant 2): before that, a body's `domain` and
//! `client_endpoint` are attacker-controlled.

use wire::{ApplicationToken, MemberId, PortalDomain, Scope};

use crate::audit::INSERT_AUDIT;
use crate::credentials::{TokenSet, UPSERT_CREDENTIALS};
use crate::{PortalStatus, Result, Store, StoreError, UnixMillis, with_pool, with_tx};

/// A portal as stored. Secrets are not part of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Portal {
    pub member_id: MemberId,
    pub domain: PortalDomain,
    pub client_endpoint: String,
    pub server_endpoint: String,
    pub status: PortalStatus,
    pub status_reason: Option<String>,
    pub status_changed_at: UnixMillis,
    /// Increments on every (re)install; work queued for an older generation
    /// is stale.
    pub generation: i64,
    pub installed_version: Option<i64>,
    /// `event` (flow A, `ONAPPINSTALL`) or `installer` (flow B, installer POST).
    pub install_flow: Option<String>,
    /// `L`, `F`, `D`, `T`, `P`, `S` as the OAuth server reports it.
    pub app_status: Option<String>,
    pub scopes: Vec<Scope>,
    /// The capability probe's result (JSON): methods, features.
    pub profile: serde_json::Value,
    pub plan: String,
    pub license: Option<String>,
    pub language: Option<String>,
    pub install_started_at: Option<UnixMillis>,
    pub installed_at: Option<UnixMillis>,
    pub uninstalled_at: Option<UnixMillis>,
    pub purge_after: Option<UnixMillis>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

#[derive(sqlx::FromRow)]
struct PortalRow {
    member_id: String,
    domain: String,
    client_endpoint: String,
    server_endpoint: String,
    status: String,
    status_reason: Option<String>,
    status_changed_at: i64,
    generation: i64,
    installed_version: Option<i64>,
    install_flow: Option<String>,
    app_status: Option<String>,
    scopes: String,
    profile: String,
    plan: String,
    license: Option<String>,
    language: Option<String>,
    install_started_at: Option<i64>,
    installed_at: Option<i64>,
    uninstalled_at: Option<i64>,
    purge_after: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

macro_rules! portal_select {
    ($tail:literal) => {
        concat!(
            "SELECT member_id, domain, client_endpoint, server_endpoint, status, status_reason, \
            status_changed_at, generation, installed_version, install_flow, app_status, scopes, \
            profile, plan, license, language, install_started_at, installed_at, uninstalled_at, \
            purge_after, created_at, updated_at FROM portals ",
            $tail
        )
    };
}

impl TryFrom<PortalRow> for Portal {
    type Error = StoreError;

    fn try_from(r: PortalRow) -> Result<Self> {
        let corrupt = |column| StoreError::Corrupt {
            table: "portals",
            column,
        };
        Ok(Portal {
            member_id: MemberId::parse(&r.member_id).map_err(|_| corrupt("member_id"))?,
            domain: PortalDomain::parse(&r.domain).map_err(|_| corrupt("domain"))?,
            client_endpoint: r.client_endpoint,
            server_endpoint: r.server_endpoint,
            status: r.status.parse().map_err(|_| corrupt("status"))?,
            status_reason: r.status_reason,
            status_changed_at: r.status_changed_at,
            generation: r.generation,
            installed_version: r.installed_version,
            install_flow: r.install_flow,
            app_status: r.app_status,
            scopes: Scope::parse_list(&r.scopes).map_err(|_| corrupt("scopes"))?,
            profile: serde_json::from_str(&r.profile).map_err(|_| corrupt("profile"))?,
            plan: r.plan,
            license: r.license,
            language: r.language,
            install_started_at: r.install_started_at,
            installed_at: r.installed_at,
            uninstalled_at: r.uninstalled_at,
            purge_after: r.purge_after,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// What a verified install (either flow) writes.
#[derive(Debug, Clone)]
pub struct VerifiedInstall<'a> {
    pub member_id: &'a MemberId,
    pub domain: &'a PortalDomain,
    pub client_endpoint: &'a str,
    pub server_endpoint: &'a str,
    /// `None` keeps the stored hash (an installer POST of an older portal
    /// carries no application token; the next ONAPPINSTALL brings it).
    pub application_token: Option<&'a ApplicationToken>,
    pub flow: &'a str,
    pub app_status: Option<&'a str>,
    pub language: Option<&'a str>,
    pub tokens: &'a TokenSet,
}

/// What [`Store::record_verified_install`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOutcome {
    /// The status before, `None` for a portal never seen.
    pub previous: Option<PortalStatus>,
    pub generation: i64,
}

impl InstallOutcome {
    pub fn is_reinstall(&self) -> bool {
        self.previous.is_some()
    }
}

/// The result of checking a delivery's `application_token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    UnknownPortal,
    /// Known portal, but no token stored (purged) or a different one.
    Mismatch,
    Match {
        status: PortalStatus,
        generation: i64,
    },
}

/// Default of [`crate::OpenOptions::portal_cache_ttl`]: two seconds. A
/// change recorded by another instance on the same PostgreSQL (a reinstall
/// with a new token, an uninstall, a purge) is seen by this one at most this
/// late; changes made through this process are seen at once. Two seconds
/// keeps that window shorter than a person can act on an uninstall, while a
/// busy portal costs one lookup per two seconds instead of one per event (at
/// 1,000 active portals, at most 500 SELECTs/s whatever the event rate).
pub const DEFAULT_PORTAL_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// Most portals the cache holds; past it, it starts over empty (a bound on
/// memory, not an eviction policy: only portals that exist get an entry).
const PORTAL_CACHE_MAX: usize = 100_000;

/// What [`Store::check_app_token`] needs of a portal, as read at `fetched_at`.
/// Holds the token's keyed hash, never the token.
#[derive(Clone)]
pub(crate) struct CachedPortal {
    status: PortalStatus,
    generation: i64,
    hash: Vec<u8>,
    fetched_at: UnixMillis,
}

/// The portal cache in front of [`Store::check_app_token`]: member id →
/// status, generation and token hash, as last read from the database.
///
/// - An entry is answered only while younger than the TTL (by the caller's
///   `now`; a clock that went backwards expires it). That bounds how long a
///   change made by another process goes unseen.
/// - Every change this store makes to a portal's status, generation or token
///   drops its entry once committed ([`PortalCache::invalidate`]).
/// - A lookup that read the database before such a change may finish after
///   it: `invalidate` bumps an epoch and [`PortalCache::put`] stores only if
///   the epoch is still the one seen before the read, so an old row is never
///   put back.
/// - Only a match is answered from memory. A token that differs from the
///   cached hash, an unknown portal and a portal without a stored token
///   always go to the database.
pub(crate) struct PortalCache {
    ttl_ms: i64,
    epoch: std::sync::atomic::AtomicU64,
    map: std::sync::RwLock<std::collections::HashMap<String, CachedPortal>>,
}

impl PortalCache {
    pub(crate) fn new(ttl: std::time::Duration) -> PortalCache {
        PortalCache {
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            epoch: std::sync::atomic::AtomicU64::new(0),
            map: std::sync::RwLock::new(std::collections::HashMap::new()),
        }
    }

    fn get(&self, member_id: &str, now: UnixMillis) -> Option<CachedPortal> {
        if self.ttl_ms == 0 {
            return None;
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let c = map.get(member_id)?;
        let age = now.checked_sub(c.fetched_at)?;
        (0..self.ttl_ms).contains(&age).then(|| c.clone())
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stores what a lookup read (`None`: nothing to answer from memory),
    /// unless a portal changed since `seen_epoch`.
    fn put(&self, member_id: &str, entry: Option<CachedPortal>, seen_epoch: u64) {
        if self.ttl_ms == 0 {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if self.epoch() != seen_epoch {
            return;
        }
        match entry {
            None => {
                map.remove(member_id);
            }
            Some(e) => {
                if map.len() >= PORTAL_CACHE_MAX && !map.contains_key(member_id) {
                    map.clear();
                }
                map.insert(member_id.to_owned(), e);
            }
        }
    }

    /// Drops a portal's entry after a change to it was committed.
    pub(crate) fn invalidate(&self, member_id: &str) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        map.remove(member_id);
    }
}

fn scopes_text(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(Scope::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a portal's status and generation inside a write transaction; on
/// PostgreSQL the row is locked until commit.
macro_rules! current_status {
    ($store:expr, $tx:ident, $member_id:expr) => {{
        // SQLite: the IMMEDIATE transaction already excludes other writers.
        let sql = match $store.backend() {
            $crate::Backend::Sqlite => {
                "SELECT status, generation FROM portals WHERE member_id = $1"
            }
            $crate::Backend::Postgres => {
                "SELECT status, generation FROM portals WHERE member_id = $1 FOR UPDATE"
            }
        };
        let row: Option<(String, i64)> = sqlx::query_as(sql)
            .bind($member_id)
            .fetch_optional(&mut *$tx)
            .await?;
        match row {
            None => None,
            Some((s, g)) => Some((
                s.parse::<PortalStatus>().map_err(|_| StoreError::Corrupt {
                    table: "portals",
                    column: "status",
                })?,
                g,
            )),
        }
    }};
}

impl Store {
    pub async fn get_portal(&self, member_id: &str) -> Result<Option<Portal>> {
        const SQL: &str = portal_select!("WHERE member_id = $1");
        let row = with_pool!(self, read, |p| sqlx::query_as::<_, PortalRow>(SQL)
            .bind(member_id)
            .fetch_optional(p)
            .await)?;
        row.map(Portal::try_from).transpose()
    }

    /// Every portal, ordered by `member_id`.
    pub async fn list_portals(&self) -> Result<Vec<Portal>> {
        const SQL: &str = portal_select!("ORDER BY member_id");
        let rows = with_pool!(self, read, |p| sqlx::query_as::<_, PortalRow>(SQL)
            .fetch_all(p)
            .await)?;
        rows.into_iter().map(Portal::try_from).collect()
    }

    /// Writes a verified install: identity, endpoints, the application
    /// token's keyed hash and sealed credentials, status `installing`, and the
    /// audit entries — in one transaction. A known `member_id` takes the
    /// reinstall path (same key, new generation), from any state that allows it.
    pub async fn record_verified_install(
        &self,
        v: &VerifiedInstall<'_>,
        now: UnixMillis,
    ) -> Result<InstallOutcome> {
        const INSERT: &str = "INSERT INTO portals (member_id, domain, client_endpoint, server_endpoint, \
            status, status_changed_at, generation, install_flow, app_status, language, app_token_hash, \
            install_started_at, created_at, updated_at) \
            VALUES ($1, $2, $3, $4, 'installing', $5, 1, $6, $7, $8, $9, $5, $5, $5)";
        const UPDATE: &str = "UPDATE portals SET domain = $2, client_endpoint = $3, server_endpoint = $4, \
            status = 'installing', status_reason = NULL, status_changed_at = $5, generation = generation + 1, \
            install_flow = $6, app_status = $7, language = COALESCE($8, language), app_token_hash = COALESCE($9, app_token_hash), \
            install_started_at = $5, uninstalled_at = NULL, purge_after = NULL, updated_at = $5 \
            WHERE member_id = $1";
        let member_id = v.member_id.as_str();
        let hash = v
            .application_token
            .map(|t| self.keys.token_hash(t.expose_secret()));
        let (access, refresh) = self.seal_tokens(member_id, v.tokens)?;
        let out = with_tx!(self, |tx| {
            let current = current_status!(self, tx, member_id);
            if let Some((from, _)) = current
                && from != PortalStatus::Installing
                && !from.can_become(PortalStatus::Installing)
            {
                return Err(StoreError::InvalidTransition {
                    member_id: member_id.to_owned(),
                    from,
                    to: PortalStatus::Installing,
                });
            }
            sqlx::query(if current.is_some() { UPDATE } else { INSERT })
                .bind(member_id)
                .bind(v.domain.as_str())
                .bind(v.client_endpoint)
                .bind(v.server_endpoint)
                .bind(now)
                .bind(v.flow)
                .bind(v.app_status)
                .bind(v.language)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            sqlx::query(UPSERT_CREDENTIALS)
                .bind(member_id)
                .bind(v.tokens.user_id)
                .bind(&access)
                .bind(&refresh)
                .bind(v.tokens.expires_at)
                .bind(&v.tokens.scope)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let previous = current.map(|(s, _)| s);
            let generation = current.map_or(1, |(_, g)| g + 1);
            // Residue of an earlier install that ended: calls parked with
            // its (revoked) tokens can never run, and its offline
            // reservations were deleted with the app's queue (§4.2).
            if matches!(
                previous,
                Some(PortalStatus::Uninstalled | PortalStatus::Purged | PortalStatus::Failed)
            ) {
                sqlx::query(
                    "UPDATE pending_calls SET state = 'expired', updated_at = $2 \
                     WHERE member_id = $1 AND state IN ('waiting', 'confirmed')",
                )
                .bind(member_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM offline_drains WHERE member_id = $1")
                    .bind(member_id)
                    .execute(&mut *tx)
                    .await?;
            }
            let detail = serde_json::json!({
                "flow": v.flow,
                "domain": v.domain.as_str(),
                "previous_status": previous.map(PortalStatus::as_str),
                "generation": generation,
            });
            sqlx::query(INSERT_AUDIT)
                .bind(now)
                .bind(member_id)
                .bind("engine")
                .bind(if previous.is_some() {
                    "install.reinstall"
                } else {
                    "install.verified"
                })
                .bind("ok")
                .bind(detail.to_string())
                .execute(&mut *tx)
                .await?;
            Ok::<_, StoreError>(InstallOutcome {
                previous,
                generation,
            })
        });
        // After the commit: a lookup that read the row before it cannot put
        // the old row back (see `PortalCache::put`).
        self.portal_cache.invalidate(member_id);
        out
    }

    /// Moves a portal to `to` if the status machine allows it, with an audit
    /// entry. Returns the previous status, or `None` when it already was `to`
    /// (a no-op, not an error).
    pub async fn set_status(
        &self,
        member_id: &str,
        to: PortalStatus,
        reason: Option<&str>,
        actor: &str,
        now: UnixMillis,
    ) -> Result<Option<PortalStatus>> {
        const SQL: &str = "UPDATE portals SET status = $2, status_reason = $3, status_changed_at = $4, \
            updated_at = $4, \
            installed_at = CASE WHEN $2 = 'installed' THEN $4 ELSE installed_at END, \
            uninstalled_at = CASE WHEN $2 = 'uninstalled' THEN $4 ELSE uninstalled_at END \
            WHERE member_id = $1";
        let out = with_tx!(self, |tx| {
            let Some((from, _)) = current_status!(self, tx, member_id) else {
                return Err(StoreError::PortalNotFound(member_id.to_owned()));
            };
            if from == to {
                return Ok(None);
            }
            if !from.can_become(to) {
                return Err(StoreError::InvalidTransition {
                    member_id: member_id.to_owned(),
                    from,
                    to,
                });
            }
            sqlx::query(SQL)
                .bind(member_id)
                .bind(to.as_str())
                .bind(reason)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let detail =
                serde_json::json!({"from": from.as_str(), "to": to.as_str(), "reason": reason});
            sqlx::query(INSERT_AUDIT)
                .bind(now)
                .bind(member_id)
                .bind(actor)
                .bind("portal.status")
                .bind("ok")
                .bind(detail.to_string())
                .execute(&mut *tx)
                .await?;
            Ok::<_, StoreError>(Some(from))
        });
        // After the commit: a lookup that read the row before it cannot put
        // the old row back (see `PortalCache::put`).
        self.portal_cache.invalidate(member_id);
        out
    }

    /// Checks a delivery's `application_token` against the stored keyed hash,
    /// in constant time.
    ///
    /// The portal's status, generation and token hash come from the portal
    /// cache when it holds them younger than its TTL at `now` (see
    /// [`PortalCache`]); a token that does not match the cached hash is
    /// checked again against the database before it is refused, so a genuine
    /// new token (a reinstall another instance recorded) is never turned away.
    pub async fn check_app_token(
        &self,
        member_id: &str,
        token: &ApplicationToken,
        now: UnixMillis,
    ) -> Result<TokenCheck> {
        const SQL: &str =
            "SELECT status, generation, app_token_hash FROM portals WHERE member_id = $1";
        let cache = &self.portal_cache;
        if let Some(c) = cache.get(member_id, now)
            && self.keys.token_matches(token.expose_secret(), &c.hash)
        {
            return Ok(TokenCheck::Match {
                status: c.status,
                generation: c.generation,
            });
        }
        let epoch = cache.epoch();
        let row: Option<(String, i64, Option<Vec<u8>>)> =
            with_pool!(self, read, |p| sqlx::query_as(SQL)
                .bind(member_id)
                .fetch_optional(p)
                .await)?;
        let Some((status, generation, hash)) = row else {
            cache.put(member_id, None, epoch);
            return Ok(TokenCheck::UnknownPortal);
        };
        let status: PortalStatus = status.parse().map_err(|_| StoreError::Corrupt {
            table: "portals",
            column: "status",
        })?;
        let Some(hash) = hash else {
            cache.put(member_id, None, epoch);
            return Ok(TokenCheck::Mismatch);
        };
        let matches = self.keys.token_matches(token.expose_secret(), &hash);
        cache.put(
            member_id,
            Some(CachedPortal {
                status,
                generation,
                hash,
                fetched_at: now,
            }),
            epoch,
        );
        if matches {
            Ok(TokenCheck::Match { status, generation })
        } else {
            Ok(TokenCheck::Mismatch)
        }
    }

    /// Records the capability probe (BRIEF §2 "capability probe").
    pub async fn update_profile(
        &self,
        member_id: &str,
        scopes: &[Scope],
        profile: &serde_json::Value,
        plan: &str,
        license: Option<&str>,
        now: UnixMillis,
    ) -> Result<()> {
        const SQL: &str = "UPDATE portals SET scopes = $2, profile = $3, plan = $4, \
            license = COALESCE($5, license), updated_at = $6 WHERE member_id = $1";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(member_id)
            .bind(scopes_text(scopes))
            .bind(profile.to_string())
            .bind(plan)
            .bind(license)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        if n == 0 {
            return Err(StoreError::PortalNotFound(member_id.to_owned()));
        }
        Ok(())
    }

    /// Records the manifest version a portal was brought up to.
    pub async fn set_installed_version(
        &self,
        member_id: &str,
        version: i64,
        now: UnixMillis,
    ) -> Result<()> {
        const SQL: &str =
            "UPDATE portals SET installed_version = $2, updated_at = $3 WHERE member_id = $1";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(member_id)
            .bind(version)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        if n == 0 {
            return Err(StoreError::PortalNotFound(member_id.to_owned()));
        }
        Ok(())
    }

    /// A portal renamed its domain (a 302 from the old host, protocol §6.2):
    /// store the new domain and endpoint, with an audit entry.
    pub async fn update_endpoint(
        &self,
        member_id: &str,
        domain: &PortalDomain,
        client_endpoint: &str,
        now: UnixMillis,
    ) -> Result<()> {
        const SQL: &str = "UPDATE portals SET domain = $2, client_endpoint = $3, updated_at = $4 \
            WHERE member_id = $1";
        with_tx!(self, |tx| {
            let old: Option<(String,)> =
                sqlx::query_as("SELECT domain FROM portals WHERE member_id = $1")
                    .bind(member_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((old,)) = old else {
                return Err(StoreError::PortalNotFound(member_id.to_owned()));
            };
            sqlx::query(SQL)
                .bind(member_id)
                .bind(domain.as_str())
                .bind(client_endpoint)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let detail = serde_json::json!({"from": old, "to": domain.as_str(), "client_endpoint": client_endpoint});
            sqlx::query(INSERT_AUDIT)
                .bind(now)
                .bind(member_id)
                .bind("client")
                .bind("portal.renamed")
                .bind("ok")
                .bind(detail.to_string())
                .execute(&mut *tx)
                .await?;
            Ok::<_, StoreError>(())
        })
    }

    /// `ONAPPUNINSTALL` was verified: status `uninstalled`, credentials
    /// dropped (they are revoked anyway, protocol §4.2), the portal's live
    /// jobs cancelled, and the purge time set by the policy. A repeat is a
    /// logged no-op; returns whether anything changed.
    pub async fn mark_uninstalled(
        &self,
        member_id: &str,
        clean: bool,
        purge_after: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Result<bool> {
        const PORTAL: &str = "UPDATE portals SET status = 'uninstalled', status_reason = $2, \
            status_changed_at = $3, uninstalled_at = $3, purge_after = $4, updated_at = $3 \
            WHERE member_id = $1";
        let out = with_tx!(self, |tx| {
            let Some((from, _)) = current_status!(self, tx, member_id) else {
                return Err(StoreError::PortalNotFound(member_id.to_owned()));
            };
            let audit = |action: &'static str, outcome: &'static str, detail: serde_json::Value| {
                sqlx::query(INSERT_AUDIT)
                    .bind(now)
                    .bind(member_id.to_owned())
                    .bind("bitrix24")
                    .bind(action)
                    .bind(outcome)
                    .bind(detail.to_string())
            };
            if matches!(from, PortalStatus::Uninstalled | PortalStatus::Purged) {
                audit(
                    "uninstall.repeat",
                    "noop",
                    serde_json::json!({"status": from.as_str(), "clean": clean}),
                )
                .execute(&mut *tx)
                .await?;
                return Ok(false);
            }
            if !from.can_become(PortalStatus::Uninstalled) {
                return Err(StoreError::InvalidTransition {
                    member_id: member_id.to_owned(),
                    from,
                    to: PortalStatus::Uninstalled,
                });
            }
            let reason = if clean { "clean=1" } else { "clean=0" };
            sqlx::query(PORTAL)
                .bind(member_id)
                .bind(reason)
                .bind(now)
                .bind(purge_after)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM credentials WHERE member_id = $1")
                .bind(member_id)
                .execute(&mut *tx)
                .await?;
            let cancelled = sqlx::query(crate::jobs::CANCEL_PORTAL_JOBS)
                .bind(member_id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            audit(
                "uninstall",
                "ok",
                serde_json::json!({"from": from.as_str(), "clean": clean,
                    "purge_after": purge_after, "jobs_cancelled": cancelled}),
            )
            .execute(&mut *tx)
            .await?;
            Ok::<_, StoreError>(true)
        });
        // After the commit: a lookup that read the row before it cannot put
        // the old row back (see `PortalCache::put`).
        self.portal_cache.invalidate(member_id);
        out
    }

    /// Deletes everything a portal left behind except its row (kept as a
    /// tombstone with its identity) and its audit log. Deterministic and
    /// idempotent: purging a purged portal is a no-op returning false.
    pub async fn purge_portal(&self, member_id: &str, now: UnixMillis) -> Result<bool> {
        const TABLES: [&str; 7] = [
            "DELETE FROM credentials WHERE member_id = $1",
            "DELETE FROM bindings WHERE member_id = $1",
            "DELETE FROM offline_drains WHERE member_id = $1",
            "DELETE FROM pending_calls WHERE member_id = $1",
            "DELETE FROM portal_migrations WHERE member_id = $1",
            "DELETE FROM rate_buckets WHERE member_id = $1",
            "DELETE FROM jobs WHERE member_id = $1 AND calls_portal AND state <> 'running'",
        ];
        const PORTAL: &str = "UPDATE portals SET status = 'purged', status_changed_at = $2, \
            scopes = '', profile = '{}', app_token_hash = NULL, installed_version = NULL, \
            purge_after = NULL, updated_at = $2 WHERE member_id = $1";
        let out = with_tx!(self, |tx| {
            let Some((from, _)) = current_status!(self, tx, member_id) else {
                return Err(StoreError::PortalNotFound(member_id.to_owned()));
            };
            if from == PortalStatus::Purged {
                return Ok(false);
            }
            if !from.can_become(PortalStatus::Purged) {
                return Err(StoreError::NotAllowed {
                    member_id: member_id.to_owned(),
                    status: from,
                    action: "purge",
                });
            }
            let mut deleted = 0u64;
            for sql in TABLES {
                deleted += sqlx::query(sql)
                    .bind(member_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            sqlx::query(PORTAL)
                .bind(member_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let detail = serde_json::json!({"from": from.as_str(), "rows_deleted": deleted});
            sqlx::query(INSERT_AUDIT)
                .bind(now)
                .bind(member_id)
                .bind("engine")
                .bind("portal.purged")
                .bind("ok")
                .bind(detail.to_string())
                .execute(&mut *tx)
                .await?;
            Ok::<_, StoreError>(true)
        });
        // After the commit: a lookup that read the row before it cannot put
        // the old row back (see `PortalCache::put`).
        self.portal_cache.invalidate(member_id);
        out
    }

    /// Uninstalled portals whose retention ran out (`purge_after <= now`).
    pub async fn due_purges(&self, now: UnixMillis) -> Result<Vec<String>> {
        const SQL: &str = "SELECT member_id FROM portals WHERE status = 'uninstalled' \
            AND purge_after IS NOT NULL AND purge_after <= $1 ORDER BY member_id";
        let rows: Vec<(String,)> = with_pool!(self, read, |p| sqlx::query_as(SQL)
            .bind(now)
            .fetch_all(p)
            .await)?;
        Ok(rows.into_iter().map(|(m,)| m).collect())
    }

    /// Installs that stayed `installing` since before `started_before` (flow B
    /// never finished, setup never completed) become `failed`, with an audit
    /// entry each. Returns the portals expired.
    pub async fn expire_stale_installs(
        &self,
        started_before: UnixMillis,
        now: UnixMillis,
    ) -> Result<Vec<String>> {
        const SQL: &str = "SELECT member_id FROM portals WHERE status = 'installing' \
            AND install_started_at < $1 ORDER BY member_id";
        let stale: Vec<(String,)> = with_pool!(self, read, |p| sqlx::query_as(SQL)
            .bind(started_before)
            .fetch_all(p)
            .await)?;
        let mut out = Vec::new();
        for (m,) in stale {
            match self
                .set_status(
                    &m,
                    PortalStatus::Failed,
                    Some("install expired"),
                    "engine",
                    now,
                )
                .await
            {
                Ok(Some(_)) => out.push(m),
                Ok(None) | Err(StoreError::InvalidTransition { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
