//! The one load generator of every HTTP scenario: closed loop, N concurrent
//! senders on keep-alive connections (one reqwest pool per target), each
//! sending its next request as soon as the previous one is answered.
//!
//! Targets are measured in alternating rounds (ABBA order) so that a
//! neighbour's build on the shared cores hits the figure and its baseline
//! alike; a round is a short unmeasured warm-up then a measured window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::report::{Latency, median, num};

/// Builds request number `seq` (unique across the whole run of a target).
pub type MakeRequest = Arc<dyn Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync>;

/// Something to load: a name, a connection pool and a request factory.
pub struct Target {
    pub name: String,
    client: reqwest::Client,
    make: MakeRequest,
    seq: Arc<AtomicU64>,
}

impl Target {
    pub fn new(name: &str, concurrency: usize, make: MakeRequest) -> anyhow::Result<Target> {
        Ok(Target {
            name: name.to_string(),
            client: client(concurrency)?,
            make,
            seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Requests built so far.
    pub fn sent(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }
}

/// A keep-alive HTTP/1.1 client for loopback load.
pub fn client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(concurrency.max(1))
        .timeout(Duration::from_secs(30))
        .build()?)
}

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub concurrency: usize,
    pub rounds: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

impl Plan {
    pub fn describe(&self, into: &mut Map<String, Value>) {
        into.insert("concurrency".into(), json!(self.concurrency));
        into.insert("rounds_per_target".into(), json!(self.rounds));
        into.insert("warmup_secs".into(), num(self.warmup.as_secs_f64()));
        into.insert(
            "measure_secs_per_round".into(),
            num(self.measure.as_secs_f64()),
        );
        into.insert("round_order".into(), json!("ABBA (alternating)"));
    }
}

/// One round against one target.
#[derive(Debug, Default)]
struct Round {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

/// Everything measured against one target over all its rounds.
#[derive(Debug, Default)]
pub struct Measured {
    pub name: String,
    /// Successful (2xx) answers inside the measured windows.
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub measured_secs: f64,
    /// ok / measured_secs.
    pub per_sec: f64,
    pub per_round: Vec<f64>,
    pub latency: Latency,
}

impl Measured {
    /// Median of the per-round rates (the figure we report; robust to one
    /// round hit by a neighbour's build).
    pub fn median_per_sec(&self) -> f64 {
        median(&self.per_round)
    }

    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("per_sec_median".into(), num(self.median_per_sec()));
        m.insert("per_sec_overall".into(), num(self.per_sec));
        m.insert(
            "per_sec_rounds".into(),
            Value::Array(self.per_round.iter().map(|r| num(r.round())).collect()),
        );
        m.insert("ok".into(), json!(self.ok));
        m.insert("errors".into(), json!(self.errors));
        if let Some(e) = &self.first_error {
            m.insert("first_error".into(), json!(e));
        }
        self.latency.put(&mut m, "latency_");
        m
    }
}

/// Runs every target `plan.rounds` times, alternating, and returns one
/// [`Measured`] per target in the order given.
pub async fn run_alternating(targets: &[&Target], plan: Plan) -> Vec<Measured> {
    let mut out: Vec<Measured> = targets
        .iter()
        .map(|t| Measured {
            name: t.name.clone(),
            ..Default::default()
        })
        .collect();
    let mut lat: Vec<Vec<u32>> = vec![Vec::new(); targets.len()];
    for r in 0..plan.rounds {
        let order: Vec<usize> = if r % 2 == 0 {
            (0..targets.len()).collect()
        } else {
            (0..targets.len()).rev().collect()
        };
        for i in order {
            let round = run_round(targets[i], plan).await;
            let m = &mut out[i];
            let secs = plan.measure.as_secs_f64();
            m.per_round.push(round.ok as f64 / secs);
            m.ok += round.ok;
            m.errors += round.errors;
            m.measured_secs += secs;
            if m.first_error.is_none() {
                m.first_error = round.first_error;
            }
            lat[i].extend(round.latencies_us);
        }
    }
    for (m, mut l) in out.iter_mut().zip(lat) {
        m.per_sec = if m.measured_secs > 0.0 {
            m.ok as f64 / m.measured_secs
        } else {
            0.0
        };
        m.latency = Latency::from_micros(&mut l);
    }
    out
}

async fn run_round(target: &Target, plan: Plan) -> Round {
    let start = Instant::now();
    let t0 = start + plan.warmup;
    let t1 = t0 + plan.measure;
    let mut tasks = Vec::with_capacity(plan.concurrency);
    for _ in 0..plan.concurrency {
        let client = target.client.clone();
        let make = target.make.clone();
        let seq = target.seq.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = Round::default();
            loop {
                let sent = Instant::now();
                if sent >= t1 {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let res = make(&client, n).send().await;
                let outcome = match res {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.bytes().await {
                            Ok(_) if status.is_success() => Ok(()),
                            Ok(b) => Err(format!(
                                "HTTP {}: {}",
                                status.as_u16(),
                                String::from_utf8_lossy(&b[..b.len().min(200)])
                            )),
                            Err(e) => Err(format!("body: {e}")),
                        }
                    }
                    Err(e) => Err(format!("transport: {e}")),
                };
                let done = Instant::now();
                if done < t0 || done > t1 {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        r.ok += 1;
                        let us = done.duration_since(sent).as_micros();
                        r.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                    Err(e) => {
                        r.errors += 1;
                        if r.first_error.is_none() {
                            r.first_error = Some(e);
                        }
                    }
                }
            }
            r
        }));
    }
    let mut total = Round::default();
    for t in tasks {
        match t.await {
            Ok(r) => {
                total.ok += r.ok;
                total.errors += r.errors;
                if total.first_error.is_none() {
                    total.first_error = r.first_error;
                }
                total.latencies_us.extend(r.latencies_us);
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("sender panicked: {e}"));
            }
        }
    }
    total
}
