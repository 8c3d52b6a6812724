//! Everything configurable about the client, with the platform's numbers as
//! defaults (protocol §8). The engine builds one [`ClientConfig`] from its
//! own configuration; tests shrink the limits to keep runs short.

use std::net::SocketAddr;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use wire::ClientSecret;

use crate::env::{Bucket, Plan};

/// The OAuth application the client refreshes tokens for. The token URL is
/// configured, never taken from a response or an event (protocol §7.1, §12.11;
/// BRIEF invariant 3).
#[derive(Clone)]
pub struct OAuthApp {
    /// `https://oauth.bitrix.info/oauth/token/` (or the emulator's).
    pub token_url: String,
    pub client_id: String,
    pub client_secret: ClientSecret,
}

impl std::fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthApp")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .finish()
    }
}

impl OAuthApp {
    /// `{oauth_base}/oauth/token/` for a base such as `https://oauth.bitrix.info`.
    pub fn new(oauth_base: &str, client_id: &str, client_secret: ClientSecret) -> OAuthApp {
        OAuthApp {
            token_url: format!("{}/oauth/token/", oauth_base.trim_end_matches('/')),
            client_id: client_id.to_owned(),
            client_secret,
        }
    }
}

/// Outbound hosts the client may call (BRIEF invariant 3): exact host names
/// and `*.suffix` patterns, compared without the port, plus the configured
/// OAuth host. Plain `http` only when `allow_http` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    pub patterns: Vec<String>,
    pub allow_http: bool,
}

impl Default for AllowList {
    /// The engine's defaults for `app.allowed_domains`, https only.
    fn default() -> Self {
        AllowList {
            patterns: [
                "*.bitrix24.com",
                "*.bitrix24.de",
                "*.bitrix24.ru",
                "*.bitrix24.eu",
            ]
            .map(String::from)
            .into(),
            allow_http: false,
        }
    }
}

impl AllowList {
    pub fn new<I, S>(patterns: I, allow_http: bool) -> AllowList
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AllowList {
            patterns: patterns
                .into_iter()
                .map(|p| p.into().to_ascii_lowercase())
                .collect(),
            allow_http,
        }
    }

    /// Whether `host` (no port) matches a pattern. `*.bitrix24.com` matches
    /// `a.bitrix24.com` but neither `bitrix24.com` nor `evilbitrix24.com`.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.patterns
            .iter()
            .any(|pat| match pat.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => host == *pat,
            })
    }

    /// Whether a scheme is acceptable.
    pub fn allows_scheme(&self, scheme: &str) -> bool {
        scheme == "https" || (self.allow_http && scheme == "http")
    }
}

/// Request buckets per plan (protocol §8.1), configurable because tests size
/// them for speed and because the cloud may change them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    pub standard: Bucket,
    pub enterprise: Bucket,
    /// After a `QUERY_LIMIT_EXCEEDED` the bucket is treated as full and
    /// gives no slot for this long on top.
    pub penalty: Duration,
    /// Each `QUERY_LIMIT_EXCEEDED` episode also halves this process's rate
    /// for the portal (down to 1/16); every `recovery` without one doubles
    /// it back, up to the configured rate.
    pub recovery: Duration,
    /// Part of the burst the client keeps in reserve, as a fraction (at
    /// least one request). The portal starts draining its bucket when the
    /// first request *arrives*, the client when it is *sent*: a burst on
    /// cold connections arrives late, and a bucket matched to the request
    /// would then be one or two requests over. 5% of 50 is 2 requests,
    /// 1 s at 2/s; the drain rate is unchanged.
    pub headroom: f64,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            standard: Bucket {
                per_second: 2.0,
                burst: 50,
            },
            enterprise: Bucket {
                per_second: 5.0,
                burst: 250,
            },
            penalty: Duration::from_secs(1),
            recovery: Duration::from_secs(30),
            headroom: 0.05,
        }
    }
}

impl RateConfig {
    /// The bucket the client uses for a plan: the configured size less
    /// the headroom.
    pub fn bucket(&self, plan: Plan) -> Bucket {
        let b = match plan {
            Plan::Standard => self.standard,
            Plan::Enterprise => self.enterprise,
        };
        let keep = (f64::from(b.burst) * self.headroom.clamp(0.0, 0.5))
            .ceil()
            .max(1.0) as u32;
        Bucket {
            per_second: b.per_second,
            burst: b.burst.saturating_sub(keep).max(1),
        }
    }

    /// The same bucket for every plan (tests, and single-plan deployments).
    pub fn uniform(per_second: f64, burst: u32) -> RateConfig {
        let b = Bucket { per_second, burst };
        RateConfig {
            standard: b,
            enterprise: b,
            ..RateConfig::default()
        }
    }
}

/// The per-method operating-time budget (protocol §8.2): `time.operating`
/// seconds of execution per method in a sliding 10 minutes. Near the budget
/// that method waits until `operating_reset_at`; others go on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OperatingConfig {
    /// 480 s per the docs (the module source says 420; §8.2, §13).
    pub budget: Duration,
    /// Start waiting at this fraction of the budget (the JS SDK uses 0.8).
    pub threshold: f64,
    /// Extra wait after `operating_reset_at` (§8.4: "+1 s").
    pub reset_slack: Duration,
}

impl Default for OperatingConfig {
    fn default() -> Self {
        OperatingConfig {
            budget: Duration::from_secs(480),
            threshold: 0.8,
            reset_slack: Duration::from_secs(1),
        }
    }
}

/// The one retry policy: jittered exponential backoff (backon). What may be
/// retried is decided by the client (reads, and writes proven not processed);
/// this only says how often and how long to wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retries: 5,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// A fresh backoff sequence (an iterator of delays; `None` = give up).
    pub fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let mut b = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay.max(self.min_delay))
            .with_max_times(self.max_retries);
        if self.jitter {
            b = b.with_jitter();
        }
        b.build()
    }
}

/// Timeouts. The per-request one never exceeds the cloud's 60 s cut
/// (protocol §8.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    /// One HTTP request, clamped to 60 s.
    pub request: Duration,
    /// One logical call: every attempt, wait and refresh together.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
            call: Duration::from_secs(180),
        }
    }
}

/// The cloud cuts requests at 60 s (protocol §8.3).
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The client's configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Needed for OAuth portals (refresh); webhook clients have none.
    pub oauth: Option<OAuthApp>,
    pub allow: AllowList,
    pub rate: RateConfig,
    pub operating: OperatingConfig,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    /// Refresh this long before the access token expires (protocol §7.4
    /// warns against refreshing on every call; one hour tokens, 60 s margin).
    pub refresh_margin: Duration,
    /// How long the cross-process refresh lease is held at most. Longer than
    /// one token request can take.
    pub refresh_lease: Duration,
    /// Fixed name → address resolutions (like curl's `--resolve`), for
    /// emulated portals on loopback under their own host names.
    pub resolve: Vec<(String, SocketAddr)>,
    /// The plan assumed for webhook clients (they have no portal record).
    pub webhook_plan: Plan,
    pub user_agent: String,
    /// The per-portal retry-storm breaker.
    pub breaker: BreakerConfig,
}

/// When retries for one portal pass `max_retries` within `window`, its
/// outbound work pauses for `cooldown` (0 retries disables the breaker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    pub max_retries: usize,
    pub window: Duration,
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            max_retries: 30,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            oauth: None,
            allow: AllowList::default(),
            rate: RateConfig::default(),
            operating: OperatingConfig::default(),
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            refresh_margin: Duration::from_secs(60),
            refresh_lease: Duration::from_secs(30),
            resolve: Vec::new(),
            webhook_plan: Plan::Standard,
            user_agent: concat!("b24gate/", env!("CARGO_PKG_VERSION")).to_owned(),
            breaker: BreakerConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_suffix_and_exact_without_port() {
        let a = AllowList::new(["*.bitrix24.com", "127.0.0.1", "*.localhost"], true);
        assert!(a.allows_host("acme.bitrix24.com"));
        assert!(a.allows_host("ACME.bitrix24.com"));
        assert!(!a.allows_host("bitrix24.com"));
        assert!(!a.allows_host("evilbitrix24.com"));
        assert!(!a.allows_host("acme.bitrix24.com.evil.io"));
        assert!(a.allows_host("127.0.0.1"));
        assert!(a.allows_host("a.localhost"));
        assert!(a.allows_scheme("http"));
        assert!(!AllowList::default().allows_scheme("http"));
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_retries: 4,
            jitter: false,
        };
        let d: Vec<_> = p.backoff().collect();
        assert_eq!(d.len(), 4);
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert!(d.iter().all(|x| *x <= Duration::from_millis(40)));
    }
}
