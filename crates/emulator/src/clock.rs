//! The emulator's one clock. Everything time-dependent (token expiry, the leaky bucket,
//! operating-time windows, `minTimeout`, offline timestamps) reads it, so tests can
//! freeze and advance time instead of sleeping (`POST /_emu/clock`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall clock plus an adjustable offset, optionally frozen. Microsecond resolution.
#[derive(Debug, Default)]
pub struct Clock {
    offset_us: AtomicI64,
    /// Frozen instant in µs since the epoch; 0 means "running".
    frozen_us: AtomicI64,
}

impl Clock {
    fn system_us() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
    }

    /// Current emulated time in µs since the Unix epoch.
    pub fn now_us(&self) -> i64 {
        let f = self.frozen_us.load(Ordering::Relaxed);
        if f != 0 {
            f
        } else {
            Self::system_us() + self.offset_us.load(Ordering::Relaxed)
        }
    }

    /// Current emulated time in (fractional) seconds.
    pub fn now(&self) -> f64 {
        self.now_us() as f64 / 1e6
    }

    /// Current emulated time in whole seconds.
    pub fn now_secs(&self) -> i64 {
        self.now_us().div_euclid(1_000_000)
    }

    /// Moves time forward (or back, with a negative value).
    pub fn advance(&self, secs: f64) {
        let d = (secs * 1e6) as i64;
        if self.frozen_us.load(Ordering::Relaxed) != 0 {
            self.frozen_us.fetch_add(d, Ordering::Relaxed);
        } else {
            self.offset_us.fetch_add(d, Ordering::Relaxed);
        }
    }

    /// Stops time at the current instant (`true`) or lets it run again from there.
    pub fn set_frozen(&self, frozen: bool) {
        if frozen {
            if self.frozen_us.load(Ordering::Relaxed) == 0 {
                self.frozen_us
                    .store(self.now_us().max(1), Ordering::Relaxed);
            }
        } else {
            let f = self.frozen_us.swap(0, Ordering::Relaxed);
            if f != 0 {
                self.offset_us
                    .store(f - Self::system_us(), Ordering::Relaxed);
            }
        }
    }

    /// Whether the clock is frozen.
    pub fn is_frozen(&self) -> bool {
        self.frozen_us.load(Ordering::Relaxed) != 0
    }
}

/// ISO 8601 with offset, PHP `date('c')` style, in UTC: `2024-08-05T09:02:13+00:00`.
pub fn iso8601(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses the subset of ISO 8601 that [`iso8601`] writes (offset `+hh:mm`, `Z` or none).
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut off = 0;
    if let Some(tz) = s.get(19..)
        && (tz.starts_with('+') || tz.starts_with('-'))
        && tz.len() >= 6
    {
        let sign = if tz.starts_with('-') { -1 } else { 1 };
        off = sign
            * (tz.get(1..3)?.parse::<i64>().ok()? * 3600 + tz.get(4..6)?.parse::<i64>().ok()? * 60);
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - off)
}

// Howard Hinnant's public-domain calendar algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(iso8601(1_722_848_533), "2024-08-05T09:02:13+00:00");
        assert_eq!(
            parse_iso8601("2024-08-05T09:02:13+00:00"),
            Some(1_722_848_533)
        );
        assert_eq!(
            parse_iso8601("2024-08-05T11:02:13+02:00"),
            Some(1_722_848_533)
        );
        assert_eq!(parse_iso8601("nope"), None);
    }

    #[test]
    fn freeze_and_advance() {
        let c = Clock::default();
        c.set_frozen(true);
        let t = c.now_us();
        c.advance(2.5);
        assert_eq!(c.now_us(), t + 2_500_000);
        c.set_frozen(false);
        assert!(c.now_us() >= t + 2_500_000);
    }
}
