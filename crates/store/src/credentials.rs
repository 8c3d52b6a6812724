//! Sealed OAuth credentials and the cross-process refresh lock.
//!
//! Refresh tokens rotate and are single-use (protocol §7.4): two processes
//! refreshing with the same token means one of them ends up with a dead one.
//! So a refresh is single-flight across processes: take the row's lease
//! ([`Store::try_lock_refresh`]), re-read ([`Store::load_credentials`]) — a
//! sibling may already have rotated it — and store the new pair with a
//! compare-and-swap on `version` ([`Store::finish_refresh`]) before using it.

use wire::{AccessToken, RefreshToken};

use crate::{Result, Store, StoreError, UnixMillis, with_pool};

/// A token pair as the OAuth server issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    pub access: AccessToken,
    pub refresh: RefreshToken,
    /// Absolute expiry of the access token, Unix milliseconds.
    pub expires_at: UnixMillis,
    /// Granted scopes as the token response gave them (informational; the
    /// `scope` method is authoritative, protocol §7.3).
    pub scope: String,
    pub user_id: Option<i64>,
}

/// Credentials as stored, with the row version a refresh must match.
///
/// The version only ever grows, even across an uninstall (which deletes the
/// row) and a reinstall (which writes it again): a new row starts at the
/// current time in milliseconds, every later write adds one. So a client
/// holding a cached pair can always tell that the stored one is newer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub tokens: TokenSet,
    pub version: i64,
    pub refreshed_at: Option<UnixMillis>,
}

#[derive(sqlx::FromRow)]
struct CredRow {
    user_id: Option<i64>,
    access_token: Vec<u8>,
    refresh_token: Vec<u8>,
    expires_at: i64,
    scope: String,
    version: i64,
    refreshed_at: Option<i64>,
}

pub(crate) fn access_ctx(member_id: &str) -> String {
    format!("credentials.access_token:{member_id}")
}

pub(crate) fn refresh_ctx(member_id: &str) -> String {
    format!("credentials.refresh_token:{member_id}")
}

pub(crate) const UPSERT_CREDENTIALS: &str = "INSERT INTO credentials \
    (member_id, user_id, access_token, refresh_token, expires_at, scope, version, refreshed_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $7) \
    ON CONFLICT (member_id) DO UPDATE SET user_id = excluded.user_id, \
    access_token = excluded.access_token, refresh_token = excluded.refresh_token, \
    expires_at = excluded.expires_at, scope = excluded.scope, \
    version = credentials.version + 1, lock_owner = NULL, lock_until = NULL, \
    updated_at = excluded.updated_at";

impl Store {
    pub(crate) fn seal_tokens(&self, member_id: &str, t: &TokenSet) -> Result<(Vec<u8>, Vec<u8>)> {
        Ok((
            self.keys
                .seal(&access_ctx(member_id), t.access.expose_secret().as_bytes())?,
            self.keys.seal(
                &refresh_ctx(member_id),
                t.refresh.expose_secret().as_bytes(),
            )?,
        ))
    }

    /// Replaces a portal's credentials (install, reinstall, app-page open).
    pub async fn save_credentials(
        &self,
        member_id: &str,
        tokens: &TokenSet,
        now: UnixMillis,
    ) -> Result<()> {
        let (access, refresh) = self.seal_tokens(member_id, tokens)?;
        with_pool!(self, write, |p| sqlx::query(UPSERT_CREDENTIALS)
            .bind(member_id)
            .bind(tokens.user_id)
            .bind(&access)
            .bind(&refresh)
            .bind(tokens.expires_at)
            .bind(&tokens.scope)
            .bind(now)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    pub async fn load_credentials(&self, member_id: &str) -> Result<Option<Credentials>> {
        const SQL: &str = "SELECT user_id, access_token, refresh_token, expires_at, scope, version, refreshed_at \
            FROM credentials WHERE member_id = $1";
        let row = with_pool!(self, read, |p| sqlx::query_as::<_, CredRow>(SQL)
            .bind(member_id)
            .fetch_optional(p)
            .await)?;
        let Some(row) = row else { return Ok(None) };
        let corrupt = |column| StoreError::Corrupt {
            table: "credentials",
            column,
        };
        let access = self.keys.open(&access_ctx(member_id), &row.access_token)?;
        let refresh = self
            .keys
            .open(&refresh_ctx(member_id), &row.refresh_token)?;
        let access = String::from_utf8(access)
            .ok()
            .and_then(|s| AccessToken::parse(&s).ok())
            .ok_or_else(|| corrupt("access_token"))?;
        let refresh = String::from_utf8(refresh)
            .ok()
            .and_then(|s| RefreshToken::parse(&s).ok())
            .ok_or_else(|| corrupt("refresh_token"))?;
        Ok(Some(Credentials {
            tokens: TokenSet {
                access,
                refresh,
                expires_at: row.expires_at,
                scope: row.scope,
                user_id: row.user_id,
            },
            version: row.version,
            refreshed_at: row.refreshed_at,
        }))
    }

    /// Takes the refresh lease for `ttl_ms` if it is free, expired, or already
    /// `owner`'s. Returns whether `owner` holds it now.
    pub async fn try_lock_refresh(
        &self,
        member_id: &str,
        owner: &str,
        now: UnixMillis,
        ttl_ms: i64,
    ) -> Result<bool> {
        const SQL: &str = "UPDATE credentials SET lock_owner = $2, lock_until = $3 \
            WHERE member_id = $1 AND (lock_until IS NULL OR lock_until <= $4 OR lock_owner = $2)";
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(member_id)
            .bind(owner)
            .bind(now + ttl_ms)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Stores a refreshed pair if the row is still at `expected_version` and
    /// `owner` holds the lease; releases the lease. Returns false (and stores
    /// nothing) when a sibling got there first — re-read and use theirs.
    pub async fn finish_refresh(
        &self,
        member_id: &str,
        owner: &str,
        expected_version: i64,
        tokens: &TokenSet,
        now: UnixMillis,
    ) -> Result<bool> {
        const SQL: &str = "UPDATE credentials SET access_token = $4, refresh_token = $5, \
            expires_at = $6, scope = $7, user_id = COALESCE($8, user_id), version = version + 1, \
            refreshed_at = $9, updated_at = $9, lock_owner = NULL, lock_until = NULL \
            WHERE member_id = $1 AND lock_owner = $2 AND version = $3";
        let (access, refresh) = self.seal_tokens(member_id, tokens)?;
        let n = with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(member_id)
            .bind(owner)
            .bind(expected_version)
            .bind(&access)
            .bind(&refresh)
            .bind(tokens.expires_at)
            .bind(&tokens.scope)
            .bind(tokens.user_id)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Gives the lease back without storing anything (refresh failed).
    pub async fn release_refresh_lock(&self, member_id: &str, owner: &str) -> Result<()> {
        const SQL: &str = "UPDATE credentials SET lock_owner = NULL, lock_until = NULL \
            WHERE member_id = $1 AND lock_owner = $2";
        with_pool!(self, write, |p| sqlx::query(SQL)
            .bind(member_id)
            .bind(owner)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }
}
