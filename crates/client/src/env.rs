//! What the client needs from its environment, as traits: where credentials
//! and portal records live ([`CredentialStore`]) and how request slots are
//! shared ([`RateLimiter`]). The engine implements both over `store::Store`
//! (the shared bucket lives in the database, so the limit holds across
//! processes); [`crate::memory`] has in-process implementations for
//! single-process and library use.
//!
//! The traits return boxed futures so that a client can hold them as
//! `Arc<dyn …>` without being generic over its environment.

use std::time::Duration;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use wire::{AccessToken, Endpoint, MemberId, PortalDomain, RefreshToken};

/// A failure of the environment (database down, row corrupt, …). The text
/// must never contain a secret: implementations pass error kinds and SQL,
/// never bound values.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

impl EnvError {
    pub fn new(msg: impl std::fmt::Display) -> EnvError {
        EnvError(msg.to_string())
    }
}

/// A portal's plan, which sizes its request bucket (protocol §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Plan {
    /// Every plan except Enterprise: 2 requests/s, burst 50.
    #[default]
    Standard,
    /// 5 requests/s, burst 250.
    Enterprise,
}

impl Plan {
    /// Reads the store's plan text; anything but `enterprise` (any case,
    /// also `ent…` licence codes) is standard, the stricter limit.
    pub fn from_text(s: &str) -> Plan {
        let s = s.to_ascii_lowercase();
        if s.starts_with("ent") {
            Plan::Enterprise
        } else {
            Plan::Standard
        }
    }
}

/// Where and whether to call a portal, as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PortalTarget {
    pub domain: PortalDomain,
    /// The REST base (`https://<portal>/rest/`), written only after the
    /// install was verified (BRIEF invariant 2).
    pub client_endpoint: Endpoint,
    /// Whether REST calls are allowed in the portal's current status
    /// (`installing`/`installed`; BRIEF invariant 6).
    pub rest_allowed: bool,
    /// The status as text, for the refusal message.
    pub status: String,
    pub plan: Plan,
}

/// A token pair as the OAuth server issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    pub access: AccessToken,
    pub refresh: RefreshToken,
    /// Absolute expiry of the access token, Unix milliseconds.
    pub expires_at_ms: i64,
    /// Scopes as the token answer listed them (informational, protocol §7.3).
    pub scope: String,
    pub user_id: Option<i64>,
}

/// Stored credentials with the row version a refresh must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredentials {
    pub tokens: TokenSet,
    /// Grows on every write; a refresh is a compare-and-swap on it.
    pub version: i64,
}

/// Credentials and portal records. A refresh goes through it so that the new
/// pair is persisted before it is used (refresh tokens rotate, protocol §7.4).
pub trait CredentialStore: Send + Sync {
    /// The portal's endpoint, status and plan; `None` for an unknown portal.
    fn portal<'a>(
        &'a self,
        member_id: &'a MemberId,
    ) -> BoxFuture<'a, Result<Option<PortalTarget>, EnvError>>;

    /// The current credentials; `None` when there are none.
    fn load<'a>(
        &'a self,
        member_id: &'a MemberId,
    ) -> BoxFuture<'a, Result<Option<StoredCredentials>, EnvError>>;

    /// Takes the cross-process refresh lease for `ttl_ms` if it is free,
    /// expired or already `owner`'s; returns whether `owner` holds it.
    fn try_lock_refresh<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<bool, EnvError>>;

    /// Stores a refreshed pair if the row is still at `expected_version` and
    /// `owner` holds the lease, and releases the lease. False: a sibling got
    /// there first, nothing was stored.
    fn finish_refresh<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
        expected_version: i64,
        tokens: &'a TokenSet,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, EnvError>>;

    /// Gives the lease back without storing anything.
    fn release_refresh_lock<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), EnvError>>;

    /// The refresh token was refused (`invalid_grant`): the portal needs a
    /// new install or app-page open. Implementations record the status and
    /// an audit entry; the client refuses further calls.
    fn mark_needs_reauth<'a>(
        &'a self,
        member_id: &'a MemberId,
        reason: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>>;

    /// The portal answered 302 to a new, allow-listed host (protocol §6.2):
    /// store the new domain and endpoint, with an audit entry.
    fn record_rename<'a>(
        &'a self,
        member_id: &'a MemberId,
        domain: &'a PortalDomain,
        client_endpoint: &'a Endpoint,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>>;

    /// A short, non-reversible fingerprint of an access token, carried by
    /// method-confirmation results (§9: the approval binds to the token).
    /// The default is 16 hex characters of SHA-256; the store's adapter may
    /// use its keyed hash instead so that it matches its own lookups.
    fn fingerprint(&self, token: &AccessToken) -> String {
        sha256_fingerprint(token.expose_secret())
    }
}

/// 16 hex characters of SHA-256 of `secret`.
pub fn sha256_fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    hex::encode(&digest[..8])
}

/// The size of a request bucket: one request per `interval`, `burst`
/// requests of allowance (a leaky bucket draining `1/interval` per second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

impl Bucket {
    /// The drain interval in milliseconds.
    pub fn interval_ms(&self) -> f64 {
        1000.0 / self.per_second.max(1e-6)
    }
}

/// Request slots per portal. Implementations shared through a database make
/// the limit hold across processes (protocol §8.1: the portal counts
/// requests, not processes).
pub trait RateLimiter: Send + Sync {
    /// Reserves the next slot of `key`'s bucket and returns how long the
    /// caller must wait before sending (zero = now). The slot is taken even
    /// if the caller then gives up.
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        bucket: Bucket,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Duration, EnvError>>;

    /// After a `QUERY_LIMIT_EXCEEDED` (our view of the portal's bucket was
    /// too optimistic): treat `key`'s bucket as full now and give no slot for
    /// `pause` on top. The client calls it at most once per portal per
    /// `pause` in a process; a store-backed implementation may push its
    /// bucket back by `burst × interval + pause`.
    fn penalise<'a>(
        &'a self,
        key: &'a str,
        bucket: Bucket,
        pause: Duration,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>>;
}
