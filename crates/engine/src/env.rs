//! The client's environment over the store: credentials and portal records
//! ([`client::env::CredentialStore`]) and the shared per-portal request
//! bucket ([`client::env::RateLimiter`]). Because both live in the database,
//! the refresh lease and the rate limit hold across every process sharing it.

use std::time::Duration;

use client::env::{
    Bucket, CredentialStore, EnvError, Plan, PortalTarget, RateLimiter, StoredCredentials, TokenSet,
};
use futures::future::BoxFuture;
use store::{PortalStatus, Store};
use wire::{AccessToken, Endpoint, MemberId, PortalDomain};

/// The store as the client's environment. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StoreEnv {
    pub store: Store,
}

fn env_err(e: store::StoreError) -> EnvError {
    EnvError::new(e)
}

fn to_store(t: &TokenSet) -> store::TokenSet {
    store::TokenSet {
        access: t.access.clone(),
        refresh: t.refresh.clone(),
        expires_at: t.expires_at_ms,
        scope: t.scope.clone(),
        user_id: t.user_id,
    }
}

impl CredentialStore for StoreEnv {
    fn portal<'a>(
        &'a self,
        member_id: &'a MemberId,
    ) -> BoxFuture<'a, Result<Option<PortalTarget>, EnvError>> {
        Box::pin(async move {
            let Some(p) = self
                .store
                .get_portal(member_id.as_str())
                .await
                .map_err(env_err)?
            else {
                return Ok(None);
            };
            let client_endpoint = Endpoint::parse(&p.client_endpoint)
                .map_err(|_| EnvError::new("stored client endpoint does not parse"))?;
            Ok(Some(PortalTarget {
                domain: p.domain,
                client_endpoint,
                rest_allowed: p.status.allows_rest(),
                status: p.status.as_str().to_owned(),
                plan: Plan::from_text(&p.plan),
            }))
        })
    }

    fn load<'a>(
        &'a self,
        member_id: &'a MemberId,
    ) -> BoxFuture<'a, Result<Option<StoredCredentials>, EnvError>> {
        Box::pin(async move {
            let c = self
                .store
                .load_credentials(member_id.as_str())
                .await
                .map_err(env_err)?;
            Ok(c.map(|c| StoredCredentials {
                tokens: TokenSet {
                    access: c.tokens.access,
                    refresh: c.tokens.refresh,
                    expires_at_ms: c.tokens.expires_at,
                    scope: c.tokens.scope,
                    user_id: c.tokens.user_id,
                },
                version: c.version,
            }))
        })
    }

    fn try_lock_refresh<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<bool, EnvError>> {
        Box::pin(async move {
            self.store
                .try_lock_refresh(member_id.as_str(), owner, now_ms, ttl_ms)
                .await
                .map_err(env_err)
        })
    }

    fn finish_refresh<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
        expected_version: i64,
        tokens: &'a TokenSet,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, EnvError>> {
        Box::pin(async move {
            self.store
                .finish_refresh(
                    member_id.as_str(),
                    owner,
                    expected_version,
                    &to_store(tokens),
                    now_ms,
                )
                .await
                .map_err(env_err)
        })
    }

    fn release_refresh_lock<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        Box::pin(async move {
            self.store
                .release_refresh_lock(member_id.as_str(), owner)
                .await
                .map_err(env_err)
        })
    }

    fn mark_needs_reauth<'a>(
        &'a self,
        member_id: &'a MemberId,
        reason: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        Box::pin(async move {
            match self
                .store
                .set_status(
                    member_id.as_str(),
                    PortalStatus::NeedsReauth,
                    Some(reason),
                    "client",
                    now_ms,
                )
                .await
            {
                Ok(_) | Err(store::StoreError::InvalidTransition { .. }) => Ok(()),
                Err(e) => Err(env_err(e)),
            }
        })
    }

    fn record_rename<'a>(
        &'a self,
        member_id: &'a MemberId,
        domain: &'a PortalDomain,
        client_endpoint: &'a Endpoint,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        Box::pin(async move {
            self.store
                .update_endpoint(member_id.as_str(), domain, client_endpoint.as_str(), now_ms)
                .await
                .map_err(env_err)
        })
    }

    fn fingerprint(&self, token: &AccessToken) -> String {
        // The keyed fingerprint, so it matches parked calls' lookups.
        self.store.keys().fingerprint(token.expose_secret())
    }
}

impl RateLimiter for StoreEnv {
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        bucket: Bucket,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Duration, EnvError>> {
        Box::pin(async move {
            let wait = self
                .store
                .reserve_rate_slot(key, bucket.interval_ms(), bucket.burst, now_ms)
                .await
                .map_err(env_err)?;
            Ok(Duration::from_millis(wait.max(0) as u64))
        })
    }

    fn penalise<'a>(
        &'a self,
        key: &'a str,
        bucket: Bucket,
        pause: Duration,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        Box::pin(async move {
            let full = f64::from(bucket.burst) * bucket.interval_ms();
            self.store
                .penalise_rate(key, full + pause.as_millis() as f64, now_ms)
                .await
                .map_err(env_err)
        })
    }
}

/// A reservation waiting for the next group commit, and who waits for it.
type Reservation = (
    String,
    Bucket,
    i64,
    tokio::sync::oneshot::Sender<Result<i64, String>>,
);

/// Most reservations committed in one transaction.
const MAX_RESERVATIONS: usize = 256;

/// The store's shared rate limit ([`StoreEnv`]'s) with group commit: the
/// reservations asked for while one transaction is in flight share the next
/// one, in the order they were asked, so a fleet of portals making their
/// calls at once costs a commit per group instead of one per request. The
/// buckets, their arithmetic and what other processes see are the same.
pub struct GroupedLimiter {
    /// One reservation at a time, when the committing task is gone; and
    /// penalties, which are rare.
    direct: StoreEnv,
    tx: tokio::sync::mpsc::UnboundedSender<Reservation>,
}

impl GroupedLimiter {
    /// Starts the committing task on the current runtime; `None` outside
    /// one. The task ends when the limiter is dropped.
    pub fn start(store: Store) -> Option<GroupedLimiter> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        rt.spawn(commit_reservations(store.clone(), rx));
        Some(GroupedLimiter {
            direct: StoreEnv { store },
            tx,
        })
    }
}

async fn commit_reservations(
    store: Store,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Reservation>,
) {
    let mut batch: Vec<Reservation> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_RESERVATIONS {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let reqs: Vec<store::RateRequest<'_>> = batch
            .iter()
            .map(|(key, bucket, now, _)| store::RateRequest {
                member_id: key,
                interval_ms: bucket.interval_ms(),
                burst: bucket.burst,
                now: *now,
            })
            .collect();
        let outcome = store.reserve_rate_slots(&reqs).await;
        drop(reqs);
        for (i, (_, _, _, reply)) in batch.drain(..).enumerate() {
            let r = match &outcome {
                Ok(waits) => Ok(waits[i]),
                Err(e) => Err(e.to_string()),
            };
            let _ = reply.send(r);
        }
    }
}

impl RateLimiter for GroupedLimiter {
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        bucket: Bucket,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Duration, EnvError>> {
        Box::pin(async move {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let wait = match self.tx.send((key.to_owned(), bucket, now_ms, reply)) {
                Ok(()) => match answer.await {
                    Ok(r) => r.map_err(EnvError::new)?,
                    Err(_) => return self.direct.reserve(key, bucket, now_ms).await,
                },
                // The task is gone (its runtime stopped): one by one.
                Err(_) => return self.direct.reserve(key, bucket, now_ms).await,
            };
            Ok(Duration::from_millis(wait.max(0) as u64))
        })
    }

    fn penalise<'a>(
        &'a self,
        key: &'a str,
        bucket: Bucket,
        pause: Duration,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        self.direct.penalise(key, bucket, pause, now_ms)
    }
}
