//! The retry schedule of jobs: fixed steps with ±jitter, so that a failing
//! target or portal is not hit by every retry at the same instant.

use std::time::Duration;

/// Delays between attempts: after the n-th failure, wait `delays[n-1]`
/// (± `jitter`); after the last one, give up (dead letter).
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
    jitter: f64,
}

impl RetrySchedule {
    /// `jitter` is a fraction (0.2 = ±20 %), clamped to 0..=0.9.
    pub fn new(delays: Vec<Duration>, jitter: f64) -> RetrySchedule {
        RetrySchedule {
            delays,
            jitter: jitter.clamp(0.0, 0.9),
        }
    }

    /// Forwarding to the app: about a day in all (5 s, 5 m, 30 m, 2 h, 5 h,
    /// 8 h, 8 h ≈ 23.6 h), ±20 % — after that the event is dead-lettered and
    /// stays replayable; nothing is dropped.
    pub fn forwarding() -> RetrySchedule {
        let s = Duration::from_secs;
        RetrySchedule::new(
            vec![
                s(5),
                s(300),
                s(1800),
                s(7200),
                s(18_000),
                s(28_800),
                s(28_800),
            ],
            0.2,
        )
    }

    /// Lifecycle steps against a portal: quick first retries (transient
    /// faults), then spaced out over a few hours.
    pub fn lifecycle() -> RetrySchedule {
        let s = Duration::from_secs;
        RetrySchedule::new(
            vec![
                s(2),
                s(10),
                s(30),
                s(120),
                s(600),
                s(1800),
                s(3600),
                s(7200),
            ],
            0.2,
        )
    }

    /// Attempts in all: the first plus one per delay.
    pub fn max_attempts(&self) -> i64 {
        self.delays.len() as i64 + 1
    }

    /// Sum of the nominal delays.
    pub fn total(&self) -> Duration {
        self.delays.iter().sum()
    }

    /// The wait after failed attempt `attempt` (1-based), jittered by
    /// `unit` ∈ [0, 1); `None` when no attempt is left.
    pub fn delay(&self, attempt: i64, unit: f64) -> Option<Duration> {
        let idx = usize::try_from(attempt.checked_sub(1)?).ok()?;
        let base = self.delays.get(idx)?.as_secs_f64();
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Some(Duration::from_secs_f64((base * factor).max(0.0)))
    }
}

/// A uniform number in [0, 1) from the system's random source.
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_lasts_about_a_day() {
        let s = RetrySchedule::forwarding();
        let h = s.total().as_secs_f64() / 3600.0;
        assert!((20.0..=28.0).contains(&h), "{h} h");
        assert_eq!(s.max_attempts(), 8);
    }

    #[test]
    fn jitter_stays_within_bounds_and_schedule_ends() {
        let s = RetrySchedule::new(vec![Duration::from_secs(100)], 0.2);
        assert_eq!(s.delay(1, 0.0), Some(Duration::from_secs(80)));
        assert_eq!(s.delay(1, 0.5), Some(Duration::from_secs(100)));
        let hi = s.delay(1, 0.999_999).unwrap().as_secs_f64();
        assert!((119.0..=120.0).contains(&hi));
        assert_eq!(s.delay(2, 0.5), None);
        assert_eq!(s.delay(0, 0.5), None);
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
