//! Ingest counters by event and outcome, for `/metrics` and tests. Event
//! labels are bounded: names outside the known set count as `other`, so a
//! flood of invented event names cannot grow the map.

use std::collections::BTreeMap;
use std::sync::Mutex;

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

    /// Total for one outcome across events.
    pub fn total(&self, outcome: IngestOutcome) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .filter(|((_, o), _)| *o == outcome)
            .map(|(_, n)| n)
            .sum()
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
