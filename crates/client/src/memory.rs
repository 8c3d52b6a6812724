//! In-process implementations of the environment traits, for a single
//! process or library use (and the CLI's webhook mode). A deployment with
//! several processes uses the store's implementations instead: these hold
//! nothing across processes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use wire::{Endpoint, MemberId, PortalDomain};

use crate::env::{
    Bucket, CredentialStore, EnvError, PortalTarget, RateLimiter, StoredCredentials, TokenSet,
};

/// A generic cell rate algorithm bucket per key, the same algorithm as the
/// store's shared one: each key keeps its *theoretical arrival time* (TAT);
/// a reservation moves it one interval forward and may go once
/// `TAT - burst × interval` has passed.
#[derive(Debug, Default)]
pub struct MemoryRateLimiter {
    tats: Mutex<HashMap<String, f64>>,
}

impl MemoryRateLimiter {
    pub fn new() -> MemoryRateLimiter {
        MemoryRateLimiter::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, f64>> {
        self.tats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops keys whose bucket has drained completely, so the map does not
    /// grow with every portal ever seen.
    fn prune(map: &mut HashMap<String, f64>, now: f64) {
        if map.len() > 4096 {
            map.retain(|_, tat| *tat > now);
        }
    }
}

impl RateLimiter for MemoryRateLimiter {
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        bucket: Bucket,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Duration, EnvError>> {
        let now = now_ms as f64;
        let interval = bucket.interval_ms();
        let mut map = self.lock();
        Self::prune(&mut map, now);
        let tat = map.entry(key.to_owned()).or_insert(now);
        *tat = tat.max(now) + interval;
        let allowed_at = *tat - f64::from(bucket.burst) * interval;
        let wait = (allowed_at - now).ceil().max(0.0);
        drop(map);
        futures::future::ready(Ok(Duration::from_millis(wait as u64))).boxed()
    }

    fn penalise<'a>(
        &'a self,
        key: &'a str,
        bucket: Bucket,
        pause: Duration,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        // Full now, and no slot for `pause`: repeated penalties do not stack.
        let full = now_ms as f64 + f64::from(bucket.burst) * bucket.interval_ms();
        let mut map = self.lock();
        let tat = map.entry(key.to_owned()).or_insert(full);
        *tat = tat.max(full + pause.as_millis() as f64);
        drop(map);
        futures::future::ready(Ok(())).boxed()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    target: PortalTarget,
    creds: Option<StoredCredentials>,
    lock: Option<(String, i64)>,
    /// Audit lines (`portal.renamed …`, `portal.needs_reauth …`).
    audit: Vec<String>,
}

/// Portals and credentials in memory: the lease and the compare-and-swap
/// behave as the store's do, within one process.
#[derive(Debug, Default)]
pub struct MemoryCredentialStore {
    portals: Mutex<HashMap<MemberId, Entry>>,
}

impl MemoryCredentialStore {
    pub fn new() -> MemoryCredentialStore {
        MemoryCredentialStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MemberId, Entry>> {
        self.portals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces a portal and its tokens (an install).
    pub fn insert(&self, member_id: MemberId, target: PortalTarget, tokens: TokenSet) {
        let mut map = self.lock();
        let version = map
            .get(&member_id)
            .and_then(|e| e.creds.as_ref())
            .map_or(1, |c| c.version + 1);
        map.insert(
            member_id,
            Entry {
                target,
                creds: Some(StoredCredentials { tokens, version }),
                lock: None,
                audit: Vec::new(),
            },
        );
    }

    /// The audit lines recorded for a portal.
    pub fn audit(&self, member_id: &MemberId) -> Vec<String> {
        self.lock()
            .get(member_id)
            .map(|e| e.audit.clone())
            .unwrap_or_default()
    }

    /// Sets whether REST is allowed, as a status change would.
    pub fn set_status(&self, member_id: &MemberId, status: &str, rest_allowed: bool) {
        if let Some(e) = self.lock().get_mut(member_id) {
            e.target.status = status.to_owned();
            e.target.rest_allowed = rest_allowed;
        }
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    futures::future::ready(v).boxed()
}

impl CredentialStore for MemoryCredentialStore {
    fn portal<'a>(
        &'a self,
        member_id: &'a MemberId,
    ) -> BoxFuture<'a, Result<Option<PortalTarget>, EnvError>> {
        ready(Ok(self.lock().get(member_id).map(|e| e.target.clone())))
    }

    fn load<'a>(
        &'a self,
        member_id: &'a MemberId,
    ) -> BoxFuture<'a, Result<Option<StoredCredentials>, EnvError>> {
        ready(Ok(self.lock().get(member_id).and_then(|e| e.creds.clone())))
    }

    fn try_lock_refresh<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<bool, EnvError>> {
        let mut map = self.lock();
        let Some(e) = map.get_mut(member_id).filter(|e| e.creds.is_some()) else {
            return ready(Ok(false));
        };
        let free = match &e.lock {
            None => true,
            Some((o, until)) => *until <= now_ms || o == owner,
        };
        if free {
            e.lock = Some((owner.to_owned(), now_ms + ttl_ms));
        }
        ready(Ok(free))
    }

    fn finish_refresh<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
        expected_version: i64,
        tokens: &'a TokenSet,
        _now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, EnvError>> {
        let mut map = self.lock();
        let Some(e) = map.get_mut(member_id) else {
            return ready(Ok(false));
        };
        let holds = e.lock.as_ref().is_some_and(|(o, _)| o == owner);
        let at = e.creds.as_ref().map(|c| c.version);
        if !holds || at != Some(expected_version) {
            return ready(Ok(false));
        }
        e.creds = Some(StoredCredentials {
            tokens: tokens.clone(),
            version: expected_version + 1,
        });
        e.lock = None;
        ready(Ok(true))
    }

    fn release_refresh_lock<'a>(
        &'a self,
        member_id: &'a MemberId,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        if let Some(e) = self.lock().get_mut(member_id)
            && e.lock.as_ref().is_some_and(|(o, _)| o == owner)
        {
            e.lock = None;
        }
        ready(Ok(()))
    }

    fn mark_needs_reauth<'a>(
        &'a self,
        member_id: &'a MemberId,
        reason: &'a str,
        _now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        if let Some(e) = self.lock().get_mut(member_id) {
            e.target.status = "needs_reauth".to_owned();
            e.target.rest_allowed = false;
            e.audit.push(format!("portal.needs_reauth {reason}"));
        }
        ready(Ok(()))
    }

    fn record_rename<'a>(
        &'a self,
        member_id: &'a MemberId,
        domain: &'a PortalDomain,
        client_endpoint: &'a Endpoint,
        _now_ms: i64,
    ) -> BoxFuture<'a, Result<(), EnvError>> {
        if let Some(e) = self.lock().get_mut(member_id) {
            e.audit.push(format!(
                "portal.renamed {} -> {domain}",
                e.target.domain.as_str()
            ));
            e.target.domain = domain.clone();
            e.target.client_endpoint = client_endpoint.clone();
        }
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_burst_then_spaces_requests() {
        let l = MemoryRateLimiter::new();
        let b = Bucket {
            per_second: 2.0,
            burst: 50,
        };
        let wait = |now| {
            l.reserve("m", b, now)
                .now_or_never()
                .unwrap()
                .unwrap()
                .as_millis()
        };
        for k in 0..50 {
            assert_eq!(wait(1_000_000), 0, "request {k}");
        }
        assert_eq!(wait(1_000_000), 500);
        assert_eq!(wait(1_000_000), 1000);
        // Drained after a long pause.
        assert_eq!(wait(2_000_000), 0);
        l.penalise("m", b, Duration::from_secs(60), 2_000_000)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert!(wait(2_000_000) > 0);
    }
}
