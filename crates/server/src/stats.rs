//! Ingest counters by event and outcome, and the ack latency histogram, for
//! `/metrics` and tests. Event labels are bounded: names outside the known
//! set count as `other`, so a flood of invented event names cannot grow the
//! map.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IngestOutcome {
    Accepted,
    /// Accepted into the inbox unverified: an `ONAPPINSTALL` or installer
    /// POST to be verified by a job.
    AcceptedUnverified,
    Duplicate,
    UnknownPortal,
    BadToken,
    NotInstalled,
    Malformed,
    TooLarge,
    Timeout,
    StoreError,
}

impl IngestOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            IngestOutcome::Accepted => "accepted",
            IngestOutcome::AcceptedUnverified => "accepted_unverified",
            IngestOutcome::Duplicate => "duplicate",
            IngestOutcome::UnknownPortal => "unknown_portal",
            IngestOutcome::BadToken => "bad_token",
            IngestOutcome::NotInstalled => "not_installed",
            IngestOutcome::Malformed => "malformed",
            IngestOutcome::TooLarge => "too_large",
            IngestOutcome::Timeout => "timeout",
            IngestOutcome::StoreError => "store_error",
        }
    }
}

/// Most distinct event labels kept; the rest count as `other`.
const MAX_EVENT_LABELS: usize = 256;

#[derive(Debug, Default)]
pub struct IngestStats {
    counts: Mutex<BTreeMap<(String, IngestOutcome), u64>>,
    /// `POST /b24/events`, from the first byte handled to the answer.
    pub(crate) ack_events: AckHistogram,
    /// `POST /b24/install`, both flows.
    pub(crate) ack_install: AckHistogram,
    /// When a forged lifecycle event was last audited, per portal and event.
    audited: Mutex<BTreeMap<(String, String), i64>>,
}

/// Upper bounds (seconds) of the ack latency buckets. Bitrix24 gives an
/// event handler a few seconds; the interesting range is 1 ms to 1 s.
pub const ACK_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A fixed-bucket histogram on atomics: recording is a few relaxed adds on
/// the hot path, no lock.
#[derive(Debug, Default)]
pub(crate) struct AckHistogram {
    /// Per bucket, not cumulative; the last slot is `+Inf`.
    buckets: [AtomicU64; ACK_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A histogram as read at one instant: cumulative bucket counts (the last is
/// `+Inf`, equal to `count`), the sum in seconds and the count.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl AckHistogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = ACK_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(ACK_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect::<Vec<_>>();
        HistogramSnapshot {
            // The `+Inf` bucket is the count by definition; reading it from
            // the buckets keeps the two consistent under concurrent writes.
            count: acc,
            cumulative,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

impl IngestStats {
    pub(crate) fn record(&self, event: Option<&str>, outcome: IngestOutcome) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let label = match event {
            None => "unknown".to_owned(),
            Some(e) if counts.keys().any(|(k, _)| k == e) => e.to_owned(),
            Some(e) if counts.len() < MAX_EVENT_LABELS => e.to_owned(),
            Some(_) => "other".to_owned(),
        };
        *counts.entry((label, outcome)).or_default() += 1;
    }

    /// Whether to audit a forged lifecycle event now: once a minute per
    /// portal and event (the map is bounded; a full map audits nothing new).
    pub(crate) fn should_audit(&self, member_id: &str, event: &str, now: i64) -> bool {
        let mut m = self.audited.lock().unwrap_or_else(|e| e.into_inner());
        let key = (member_id.to_owned(), event.to_owned());
        match m.get(&key) {
            Some(at) if now - at < 60_000 => false,
            _ if m.len() >= 10_000 && !m.contains_key(&key) => false,
            _ => {
                m.insert(key, now);
                true
            }
        }
    }

    /// Total for one outcome across events.
    pub fn total(&self, outcome: IngestOutcome) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .filter(|((_, o), _)| *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }

    /// The ack latency of `route` (`events` or `install`).
    pub fn ack_latency(&self, route: &str) -> Option<HistogramSnapshot> {
        match route {
            "events" => Some(self.ack_events.snapshot()),
            "install" => Some(self.ack_install.snapshot()),
            _ => None,
        }
    }

    /// Every `(event, outcome, count)`.
    pub fn snapshot(&self) -> Vec<(String, IngestOutcome, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|((e, o), n)| (e.clone(), *o, *n))
            .collect()
    }
}
