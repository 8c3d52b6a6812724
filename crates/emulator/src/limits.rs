//! Request-rate leaky bucket and per-method operating-time budget (reference §8).

use crate::state::PortalLimits;

/// The operating window: ten one-minute buckets (§8.2).
const BUCKETS: i64 = 10;

impl PortalLimits {
    /// Counts one HTTP request; false when the bucket is full (→ 503
    /// `QUERY_LIMIT_EXCEEDED`). A rejected request is not counted.
    pub fn admit(&mut self, now: f64) -> bool {
        if !self.rate_enabled {
            return true;
        }
        let elapsed = (now - self.last).max(0.0);
        self.level = (self.level - elapsed * self.drain).max(0.0);
        self.last = now;
        if self.level + 1.0 > self.burst {
            return false;
        }
        self.level += 1.0;
        true
    }

    /// `(operating, operating_reset_at)` of (actor, method) now.
    pub fn operating(&mut self, actor: &str, method: &str, now: f64) -> (f64, i64) {
        let minute = (now / 60.0).floor() as i64;
        let Some(q) = self.usage.get_mut(&(actor.to_string(), method.to_string())) else {
            return (0.0, now as i64 + BUCKETS * 60);
        };
        while q.front().is_some_and(|(m, _)| *m <= minute - BUCKETS) {
            q.pop_front();
        }
        let sum = q.iter().map(|(_, s)| s).sum();
        let reset = q
            .front()
            .map(|(m, _)| (m + BUCKETS) * 60)
            .unwrap_or(now as i64 + BUCKETS * 60);
        (sum, reset)
    }

    /// Whether (actor, method) is blocked (→ 429 `OPERATION_TIME_LIMIT`).
    pub fn blocked(&mut self, actor: &str, method: &str, now: f64) -> bool {
        if !self.operating_enabled {
            return false;
        }
        let budget = self.operating_budget_secs;
        self.operating(actor, method, now).0 >= budget
    }

    /// Charges a call's execution time (real + simulated cost) to (actor, method);
    /// returns the seconds charged.
    pub fn charge(&mut self, actor: &str, method: &str, now: f64, real_secs: f64) -> f64 {
        let cost = self
            .cost_ms
            .get(method)
            .copied()
            .unwrap_or(self.default_cost_ms)
            / 1000.0
            + real_secs;
        let minute = (now / 60.0).floor() as i64;
        let q = self
            .usage
            .entry((actor.to_string(), method.to_string()))
            .or_default();
        match q.back_mut() {
            Some((m, s)) if *m == minute => *s += cost,
            _ => q.push_back((minute, cost)),
        }
        cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn limits() -> PortalLimits {
        PortalLimits {
            rate_enabled: true,
            drain: 2.0,
            burst: 50.0,
            operating_enabled: true,
            operating_budget_secs: 1.0,
            default_cost_ms: 0.0,
            cost_ms: HashMap::from([("crm.deal.list".to_string(), 600.0)]),
            level: 0.0,
            last: 1000.0,
            usage: HashMap::new(),
        }
    }

    #[test]
    fn bucket_admits_burst_then_drains() {
        let mut l = limits();
        for _ in 0..50 {
            assert!(l.admit(1000.0));
        }
        assert!(!l.admit(1000.0));
        assert!(l.admit(1000.5));
        assert!(!l.admit(1000.5));
    }

    #[test]
    fn operating_blocks_after_budget_and_resets() {
        let mut l = limits();
        assert!(!l.blocked("a", "crm.deal.list", 1000.0));
        l.charge("a", "crm.deal.list", 1000.0, 0.0);
        assert!(!l.blocked("a", "crm.deal.list", 1000.0));
        l.charge("a", "crm.deal.list", 1000.0, 0.0);
        assert!(l.blocked("a", "crm.deal.list", 1000.0));
        assert!(!l.blocked("a", "crm.deal.get", 1000.0));
        assert!(!l.blocked("b", "crm.deal.list", 1000.0));
        let (_, reset) = l.operating("a", "crm.deal.list", 1000.0);
        assert_eq!(reset, (1000 / 60 + 10) * 60);
        assert!(!l.blocked("a", "crm.deal.list", reset as f64 + 1.0));
    }
}
