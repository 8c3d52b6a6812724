//! The crate's one clock. Token expiry, the leaky bucket, operating-time
//! resets and every wait read it, so tests can move time forward instead of
//! sleeping (STYLE.md: "one clock abstraction").

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Wall-clock Unix milliseconds plus an adjustable offset. Cheap to clone;
/// clones share the offset. [`Clock::advance`] wakes every sleeper so that a
/// wait whose deadline has been jumped over ends at once.
#[derive(Clone, Default)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    offset_ms: AtomicI64,
    changed: Notify,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("offset_ms", &self.inner.offset_ms.load(Ordering::Relaxed))
            .finish()
    }
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Clock {
    /// The system clock (offset 0).
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Unix time in milliseconds.
    pub fn now_ms(&self) -> i64 {
        system_ms() + self.inner.offset_ms.load(Ordering::Relaxed)
    }

    /// Unix time in whole seconds.
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves this clock (and its clones) forward and wakes every sleeper.
    pub fn advance(&self, by: Duration) {
        self.inner
            .offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
        self.inner.changed.notify_waiters();
    }

    /// Sleeps until the clock reads at least `at_ms`.
    pub async fn sleep_until(&self, at_ms: i64) {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            // Register before reading the time, so an `advance` between the
            // read and the sleep is not missed.
            notified.as_mut().enable();
            let left = at_ms - self.now_ms();
            if left <= 0 {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(left as u64)) => {}
                _ = notified => {}
            }
        }
    }

    /// Sleeps for `d` of this clock's time.
    pub async fn sleep(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        let at = self.now_ms() + d.as_millis() as i64;
        self.sleep_until(at).await;
    }
}
