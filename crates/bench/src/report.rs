//! What a scenario prints: one JSON object with its figures, the baseline
//! measured in the same run, the ratios, the targets and whether each is met.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::machine::Machine;

/// One target: `value op target`, e.g. `calls_per_sec >= 20000`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    /// What is compared (a key of `figures` or `ratios`).
    pub what: String,
    /// `">="` or `"<="`.
    pub op: &'static str,
    pub target: f64,
    pub value: f64,
    pub met: bool,
}

impl Check {
    pub fn at_least(what: &str, value: f64, target: f64) -> Check {
        Check {
            what: what.to_string(),
            op: ">=",
            target,
            value: round3(value),
            met: value.is_finite() && value >= target,
        }
    }

    pub fn above(what: &str, value: f64, target: f64) -> Check {
        Check {
            what: what.to_string(),
            op: ">",
            target,
            value: round3(value),
            met: value.is_finite() && value > target,
        }
    }

    pub fn below(what: &str, value: f64, target: f64) -> Check {
        Check {
            what: what.to_string(),
            op: "<",
            target,
            value: round3(value),
            met: value.is_finite() && value < target,
        }
    }

    pub fn at_most(what: &str, value: f64, target: f64) -> Check {
        Check {
            what: what.to_string(),
            op: "<=",
            target,
            value: round3(value),
            met: value.is_finite() && value <= target,
        }
    }
}

/// The JSON object of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// The measured figures of the system under test.
    pub figures: Map<String, Value>,
    /// The baseline's figures, measured in the same run with the same load generator.
    pub baseline: Map<String, Value>,
    /// figure / baseline for each compared pair.
    pub ratios: Map<String, Value>,
    pub targets: Vec<Check>,
    /// Every target met.
    pub met: bool,
    /// Load parameters (concurrency, durations, rounds, limits raised…).
    pub load: Map<String, Value>,
    pub machine: Machine,
    pub notes: Vec<String>,
    /// Wall time of the whole scenario, seconds.
    pub elapsed_secs: f64,
}

impl Report {
    pub fn new(scenario: &str, machine: Machine) -> Report {
        Report {
            scenario: scenario.to_string(),
            figures: Map::new(),
            baseline: Map::new(),
            ratios: Map::new(),
            targets: Vec::new(),
            met: false,
            load: Map::new(),
            machine,
            notes: Vec::new(),
            elapsed_secs: 0.0,
        }
    }

    pub fn figure(&mut self, k: &str, v: impl Into<Value>) {
        self.figures.insert(k.to_string(), v.into());
    }

    pub fn load(&mut self, k: &str, v: impl Into<Value>) {
        self.load.insert(k.to_string(), v.into());
    }

    /// Records `figure / baseline` under `k` and returns it.
    pub fn ratio(&mut self, k: &str, figure: f64, baseline: f64) -> f64 {
        let r = ratio(figure, baseline);
        self.ratios.insert(k.to_string(), num(r));
        r
    }

    pub fn check(&mut self, c: Check) {
        self.targets.push(c);
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    /// Sets `met` from the targets (no target = not met: nothing was shown).
    pub fn finish(&mut self, elapsed_secs: f64) {
        self.met = !self.targets.is_empty() && self.targets.iter().all(|c| c.met);
        self.elapsed_secs = round3(elapsed_secs);
    }

    pub fn to_json(&self, one_line: bool) -> String {
        if one_line {
            serde_json::to_string(self).expect("report serialises")
        } else {
            serde_json::to_string_pretty(self).expect("report serialises")
        }
    }
}

pub fn ratio(figure: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        figure / baseline
    } else {
        f64::NAN
    }
}

pub fn round3(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1000.0).round() / 1000.0
    } else {
        x
    }
}

/// A finite number as JSON, `null` otherwise (JSON has no NaN).
pub fn num(x: f64) -> Value {
    serde_json::Number::from_f64(round3(x))
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Latency summary over samples in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Sorts `samples_us` in place.
    pub fn from_micros(samples_us: &mut [u32]) -> Latency {
        samples_us.sort_unstable();
        let ms = |p: f64| percentile_sorted(samples_us, p).map_or(f64::NAN, |v| v as f64 / 1000.0);
        Latency {
            count: samples_us.len(),
            p50_ms: ms(50.0),
            p90_ms: ms(90.0),
            p99_ms: ms(99.0),
            max_ms: samples_us.last().map_or(f64::NAN, |v| *v as f64 / 1000.0),
        }
    }

    pub fn put(&self, into: &mut Map<String, Value>, prefix: &str) {
        into.insert(format!("{prefix}p50_ms"), num(self.p50_ms));
        into.insert(format!("{prefix}p90_ms"), num(self.p90_ms));
        into.insert(format!("{prefix}p99_ms"), num(self.p99_ms));
        into.insert(format!("{prefix}max_ms"), num(self.max_ms));
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted samples: the smallest
/// value such that at least p% of the samples are ≤ it.
pub fn percentile_sorted(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Median of a few values (per-round rates).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 50.0), Some(50));
        assert_eq!(percentile_sorted(&v, 99.0), Some(99));
        assert_eq!(percentile_sorted(&v, 100.0), Some(100));
        assert_eq!(percentile_sorted(&v, 0.0), Some(1));
        assert_eq!(percentile_sorted(&[7], 99.0), Some(7));
        assert_eq!(percentile_sorted(&[], 50.0), None);
        // 10 samples: p99 is the largest, p90 the ninth.
        let w: Vec<u32> = (1..=10).collect();
        assert_eq!(percentile_sorted(&w, 99.0), Some(10));
        assert_eq!(percentile_sorted(&w, 90.0), Some(9));
    }

    #[test]
    fn latency_sorts_and_converts_to_ms() {
        let mut s = vec![3000, 1000, 2000, 10_000];
        let l = Latency::from_micros(&mut s);
        assert_eq!(l.count, 4);
        assert_eq!(l.p50_ms, 2.0);
        assert_eq!(l.p99_ms, 10.0);
        assert_eq!(l.max_ms, 10.0);
        assert!(Latency::from_micros(&mut []).p50_ms.is_nan());
    }

    #[test]
    fn median_of_odd_even_and_nan() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn checks_and_met() {
        assert!(Check::at_least("x", 2.0, 1.0).met);
        assert!(!Check::at_least("x", f64::NAN, 1.0).met);
        assert!(Check::at_most("p99", 9.9, 10.0).met);
        assert!(!Check::at_most("p99", 10.1, 10.0).met);
        assert!(!Check::above("r", 1.0, 1.0).met);
        assert!(Check::above("r", 1.01, 1.0).met);
        assert!(!Check::below("q", 1.0, 1.0).met);
        assert!(Check::below("q", 0.95, 1.0).met);
        let mut r = Report::new("t", Machine::default());
        r.finish(0.0);
        assert!(!r.met, "no target is not a met target");
        r.check(Check::at_least("a", 1.0, 1.0));
        r.finish(0.0);
        assert!(r.met);
        r.check(Check::at_most("b", 2.0, 1.0));
        r.finish(0.0);
        assert!(!r.met);
    }

    #[test]
    fn json_shape() {
        let mut r = Report::new("ingest", Machine::default());
        r.figure("events_per_sec", 1234.5);
        r.baseline.insert("requests_per_sec".into(), 2000.0.into());
        let x = r.ratio("throughput_vs_baseline", 1234.5, 2000.0);
        r.check(Check::at_least("throughput_vs_baseline", x, 0.5));
        r.ratio("undefined", 1.0, 0.0);
        r.finish(1.0);
        let line = r.to_json(true);
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        for k in [
            "scenario",
            "figures",
            "baseline",
            "ratios",
            "targets",
            "met",
            "load",
            "machine",
            "notes",
            "elapsed_secs",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["ratios"]["throughput_vs_baseline"], 0.617);
        assert_eq!(v["ratios"]["undefined"], Value::Null);
        assert_eq!(v["targets"][0]["op"], ">=");
        assert_eq!(v["targets"][0]["met"], true);
        assert_eq!(v["met"], true);
        assert!(v["machine"].get("nproc").is_some());
        assert!(v["machine"].get("cpu_model").is_some());
        assert!(r.to_json(false).contains('\n'));
    }
}
