//! `cargo run --release -p bench -- <scenario> [--json]`: the BRIEF §6
//! benchmark harness. Each scenario prints one JSON object with its figures,
//! the baseline measured in the same run with the same load generator, the
//! ratios, the targets and whether they are met, and the machine.
//!
//! Map: [`loadgen`] (the one closed-loop load generator), [`sut`] (the
//! system-under-test runtime and the no-op baseline server), [`report`] (the
//! JSON object, percentiles), [`machine`], and one module per scenario.

mod loadgen;
mod machine;
mod report;
mod scenarios;
mod sut;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use crate::loadgen::Plan;
use crate::machine::Machine;
use crate::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// The emulator's capacity with limits off: calls/s and deliveries/s.
    Emulator,
    /// Acked events/s and ack latency on durable SQLite.
    Ingest,
    /// The same on PostgreSQL (`B24GATE_TEST_PG_URL`).
    IngestPg,
    /// Listing 50,000 deals with the client, against fast_bitrix24.
    RestBulk,
    /// Events/s the gateway drains from 20,000 queued offline events under the bucket.
    OfflineDrain,
    /// 10,000 portals reconciled after a version bump (a `b24gate serve` child).
    Fleet,
    /// Every scenario above, in order.
    All,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Emulator => "emulator",
            Scenario::Ingest => "ingest",
            Scenario::IngestPg => "ingest-pg",
            Scenario::RestBulk => "rest-bulk",
            Scenario::OfflineDrain => "offline-drain",
            Scenario::Fleet => "fleet",
            Scenario::All => "all",
        }
    }
}

#[derive(Debug, Parser)]
#[command(name = "bench", about = "b24gate benchmark harness (BRIEF §6)")]
pub struct Args {
    pub scenario: Scenario,
    /// One line of JSON per scenario (pretty otherwise).
    #[arg(long)]
    pub json: bool,
    /// Concurrent senders (default: 64).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measured rounds per target, alternating with the baseline.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Measured seconds per round.
    #[arg(long, default_value_t = 2.0)]
    pub secs: f64,
    /// Worker threads of the system under test's runtime.
    #[arg(long, default_value_t = 2)]
    pub sut_threads: usize,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub load_threads: usize,
    /// Portals of the ingest scenarios.
    #[arg(long, default_value_t = 1000)]
    pub portals: usize,
    /// Event deliveries of the emulator scenario.
    #[arg(long, default_value_t = 60_000)]
    pub deliveries: u64,
    /// Rounds per client of rest-bulk (one list of every deal each).
    #[arg(long, default_value_t = 1)]
    pub bulk_rounds: usize,
    /// Deals listed by rest-bulk.
    #[arg(long, default_value_t = 50_000)]
    pub deals: u64,
    /// Directory for the SQLite file (default: the system temp dir, which must
    /// be a real disk for "durable" to mean anything).
    #[arg(long)]
    pub db_dir: Option<std::path::PathBuf>,
    /// PostgreSQL URL of ingest-pg.
    #[arg(
        long,
        env = "B24GATE_TEST_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub pg_url: String,
}

impl Args {
    pub fn plan(&self) -> Plan {
        Plan {
            concurrency: self.concurrency.max(1),
            rounds: self.rounds.max(1),
            warmup: Duration::from_millis(300),
            measure: Duration::from_secs_f64(self.secs.clamp(0.2, 20.0)),
        }
    }
}

/// What every scenario gets: the arguments, the SUT runtime and a fresh report.
pub struct Ctx<'a> {
    pub args: &'a Args,
    pub sut: tokio::runtime::Handle,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scenarios = match args.scenario {
        Scenario::All => vec![
            Scenario::Emulator,
            Scenario::Ingest,
            Scenario::IngestPg,
            Scenario::OfflineDrain,
            Scenario::RestBulk,
            Scenario::Fleet,
        ],
        s => vec![s],
    };
    let mut failed = false;
    for s in scenarios {
        let report = match run_one(&args, s) {
            Ok(r) => r,
            Err(e) => {
                let mut r = Report::new(s.name(), Machine::detect());
                r.note(format!("scenario failed: {e:#}"));
                r.finish(0.0);
                failed = true;
                r
            }
        };
        println!("{}", report.to_json(args.json));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run_one(args: &Args, s: Scenario) -> anyhow::Result<Report> {
    let sut_rt = sut::runtime("sut", args.sut_threads)?;
    let load_rt = sut::runtime("load", args.load_threads)?;
    let started = Instant::now();
    let mut report = Report::new(s.name(), Machine::detect());
    report.load("sut_runtime_threads", args.sut_threads);
    report.load("load_runtime_threads", args.load_threads);
    let ctx = Ctx {
        args,
        sut: sut_rt.handle().clone(),
    };
    let result = load_rt.block_on(async {
        match s {
            Scenario::Emulator => scenarios::emulator::run(&ctx, &mut report).await,
            Scenario::Ingest => scenarios::ingest::run(&ctx, &mut report, false).await,
            Scenario::IngestPg => scenarios::ingest::run(&ctx, &mut report, true).await,
            Scenario::RestBulk => scenarios::rest_bulk::run(&ctx, &mut report).await,
            Scenario::OfflineDrain => scenarios::offline_drain::run(&ctx, &mut report).await,
            Scenario::Fleet => scenarios::fleet::run(&ctx, &mut report).await,
            Scenario::All => unreachable!("expanded above"),
        }
    });
    sut::shutdown(sut_rt);
    sut::shutdown(load_rt);
    result?;
    report.finish(started.elapsed().as_secs_f64());
    Ok(report)
}
