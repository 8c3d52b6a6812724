//! `rest-bulk`: items/s and requests to list 50,000 deals from the emulator
//! with the client's `list_all` (keyset, 50 chained pages per `batch`),
//! against fast_bitrix24's `get_all` on the same emulator, portal and deals,
//! both through one incoming webhook. fast_bitrix24 is installed from PyPI
//! into a virtual environment of the scenario's own; if that fails the report
//! says so and gives our figures alone.
//!
//! Requests are counted by the emulator (its `requests` counter), the same
//! way for both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use b24emu::{Emulator, EmulatorConfig, LimitsSpec, PortalSpec, WebhookSpec};
use client::{AllowList, Client, ClientConfig, ListOptions, ListStrategy, RateConfig, RetryPolicy};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::report::{Check, Report, num};
use crate::{Ctx, sut};

const SCRIPT: &str = include_str!("fast_bitrix24_get_all.py");
/// The emulator's bucket for the run (and both clients' pacing): raised from
/// 2/s burst 50 so the run stays short; both sides get the same.
const DRAIN: f64 = 100.0;
const BURST: u32 = 1000;

struct Run {
    items: u64,
    requests: u64,
    secs: f64,
    limit_errors: u64,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.items as f64 / self.secs
    }

    fn to_json(&self) -> Value {
        json!({
            "items": self.items,
            "requests": self.requests,
            "secs": num(self.secs),
            "items_per_sec": num(self.per_sec()),
            "limit_errors": self.limit_errors,
        })
    }
}

fn counter(emu: &Emulator, k: &str) -> u64 {
    emu.stats()[k].as_u64().unwrap_or(0)
}

async fn ours(emu: &Emulator, hook: &str, strategy: ListStrategy) -> anyhow::Result<Run> {
    let cfg = ClientConfig {
        allow: AllowList::new(["127.0.0.1"], true),
        rate: RateConfig::uniform(DRAIN, BURST),
        retry: RetryPolicy::default(),
        ..Default::default()
    };
    let p = Client::for_webhook(hook, cfg).map_err(|e| anyhow::anyhow!("client: {e}"))?;
    let (r0, l0) = (counter(emu, "requests"), counter(emu, "query_limit_errors"));
    let started = Instant::now();
    let opts = ListOptions {
        strategy,
        ..Default::default()
    };
    let mut s = p.list_all_with("crm.deal.list", json!({"select": ["ID", "TITLE"]}), opts);
    let mut items = 0u64;
    let mut last = 0u64;
    while let Some(d) = s.next().await {
        let d = d.map_err(|e| anyhow::anyhow!("list_all: {e}"))?;
        let id = d["ID"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| d["ID"].as_u64())
            .unwrap_or(0);
        anyhow::ensure!(id > last, "list_all: IDs not ascending ({last} then {id})");
        last = id;
        items += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Run {
        items,
        requests: counter(emu, "requests") - r0,
        secs,
        limit_errors: counter(emu, "query_limit_errors") - l0,
    })
}

fn venv_dir() -> PathBuf {
    std::env::var_os("BENCH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("b24gate-bench-venv"))
}

async fn run_cmd(cmd: &mut tokio::process::Command, secs: u64) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(secs),
        cmd.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out after {secs} s"))??;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        anyhow::bail!("exit {}: {tail}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The venv's python with fast_bitrix24 importable, created on first use.
async fn fast_bitrix24(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let py = dir.join("bin").join("python");
    let probe = "import importlib.metadata as m; print(m.version('fast_bitrix24'))";
    if let Ok(v) = run_cmd(tokio::process::Command::new(&py).args(["-c", probe]), 30).await {
        return Ok((py, v.trim().to_string()));
    }
    run_cmd(
        tokio::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(dir),
        120,
    )
    .await
    .map_err(|e| anyhow::anyhow!("python3 -m venv: {e}"))?;
    run_cmd(
        tokio::process::Command::new(dir.join("bin").join("pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "fast_bitrix24",
        ]),
        300,
    )
    .await
    .map_err(|e| anyhow::anyhow!("pip install fast_bitrix24: {e}"))?;
    let v = run_cmd(tokio::process::Command::new(&py).args(["-c", probe]), 30).await?;
    Ok((py, v.trim().to_string()))
}

async fn theirs(emu: &Emulator, py: &Path, script: &Path, hook: &str) -> anyhow::Result<Run> {
    let (r0, l0) = (counter(emu, "requests"), counter(emu, "query_limit_errors"));
    let out = run_cmd(
        tokio::process::Command::new(py)
            .arg(script)
            .arg(hook)
            .arg(BURST.to_string())
            .arg(DRAIN.to_string()),
        110,
    )
    .await?;
    let v: Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .map_err(|e| anyhow::anyhow!("fast_bitrix24 output {out:?}: {e}"))?;
    Ok(Run {
        items: v["items"].as_u64().unwrap_or(0),
        requests: counter(emu, "requests") - r0,
        secs: v["secs"].as_f64().unwrap_or(f64::NAN),
        limit_errors: counter(emu, "query_limit_errors") - l0,
    })
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) -> anyhow::Result<()> {
    let args = ctx.args;
    let deals = args.deals.max(1);
    let rounds = args.bulk_rounds.clamp(1, 3);
    let emu = sut::on(&ctx.sut, Emulator::start(EmulatorConfig::default())).await??;
    let portal = emu.create_portal(PortalSpec {
        name: Some("bulk".into()),
        ..Default::default()
    })?;
    emu.set_limits(
        &portal.member_id,
        LimitsSpec {
            rate_limit: Some(true),
            drain: Some(DRAIN),
            burst: Some(f64::from(BURST)),
            reset: true,
            ..Default::default()
        },
    )?;
    report.load("deals", deals);
    report.load("rounds_per_client", rounds);
    report.load(
        "emulator_rate_limit",
        json!({"drain_per_sec": DRAIN, "burst": BURST, "default": "2/s burst 50 (standard)",
               "operating_limit": "on, default budget"}),
    );
    report.load(
        "client_pacing",
        json!({"ours": format!("RateConfig::uniform({DRAIN}, {BURST})"),
               "fast_bitrix24": format!("request_pool_size={BURST}, requests_per_second={DRAIN}")}),
    );
    let setup = Instant::now();
    emu.changes(
        &portal.member_id,
        b24emu::ChangeSpec {
            count: deals,
            ..Default::default()
        },
    )?;
    report.load("deal_setup_secs", num(setup.elapsed().as_secs_f64()));
    let hook = emu.create_webhook(
        &portal.member_id,
        WebhookSpec {
            user_id: Some(1),
            scopes: vec!["crm".into()],
        },
    )?;
    let hook = hook["url"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("webhook without url"))?
        .to_string();

    let venv = venv_dir();
    let baseline = match fast_bitrix24(&venv).await {
        Ok((py, version)) => {
            report.load(
                "fast_bitrix24",
                json!({"version": version, "venv": venv.display().to_string()}),
            );
            let dir = tempfile::tempdir()?;
            let script = dir.path().join("get_all.py");
            std::fs::write(&script, SCRIPT)?;
            Some((py, script, dir))
        }
        Err(e) => {
            report.note(format!(
                "fast_bitrix24 could not be installed ({e:#}); our figures alone, no baseline"
            ));
            None
        }
    };

    let mut mine: Vec<Run> = Vec::new();
    let mut base: Vec<Run> = Vec::new();
    let bound = Duration::from_secs(110);
    for r in 0..rounds {
        let ours_first = r % 2 == 0;
        for side in [ours_first, !ours_first] {
            if side {
                let run = tokio::time::timeout(bound, ours(&emu, &hook, ListStrategy::Auto))
                    .await
                    .map_err(|_| anyhow::anyhow!("list_all took over {bound:?}"))??;
                mine.push(run);
            } else if let Some((py, script, _)) = &baseline {
                match theirs(&emu, py, script, &hook).await {
                    Ok(run) => base.push(run),
                    Err(e) => report.note(format!("fast_bitrix24 run failed: {e:#}")),
                }
            }
        }
    }
    // The same client with the offset strategy (fast_bitrix24's walk): shows
    // how much of the difference is the emulator's cost of each walk.
    match tokio::time::timeout(bound, ours(&emu, &hook, ListStrategy::Offset)).await {
        Ok(Ok(o)) => report.figure("ours_with_offset_strategy", o.to_json()),
        Ok(Err(e)) => report.note(format!("offset-strategy run failed: {e:#}")),
        Err(_) => report.note("offset-strategy run took over 110 s"),
    }
    let best = |runs: &[Run]| -> Option<usize> {
        (0..runs.len()).max_by(|a, b| runs[*a].per_sec().total_cmp(&runs[*b].per_sec()))
    };
    let m = &mine[best(&mine).expect("at least one round")];
    report.figure("items_per_sec", num(m.per_sec()));
    report.figure("requests", m.requests);
    report.figure("items", m.items);
    report.figure(
        "rounds",
        Value::Array(mine.iter().map(Run::to_json).collect()),
    );
    report.check(Check::at_least("items", m.items as f64, deals as f64));
    report.check(Check::at_most("limit_errors", m.limit_errors as f64, 0.0));
    if let Some(i) = best(&base) {
        let b = &base[i];
        report.baseline.insert(
            "what".into(),
            json!("fast_bitrix24 get_all (Python, aiohttp) through the same webhook"),
        );
        report
            .baseline
            .insert("items_per_sec".into(), num(b.per_sec()));
        report.baseline.insert("requests".into(), json!(b.requests));
        report.baseline.insert("items".into(), json!(b.items));
        report.baseline.insert(
            "rounds".into(),
            Value::Array(base.iter().map(Run::to_json).collect()),
        );
        let r = report.ratio("items_per_sec_vs_baseline", m.per_sec(), b.per_sec());
        let q = report.ratio("requests_vs_baseline", m.requests as f64, b.requests as f64);
        report.check(Check::above("items_per_sec_vs_baseline", r, 1.0));
        report.check(Check::below("requests_vs_baseline", q, 1.0));
        if b.items != deals {
            report.note(format!(
                "fast_bitrix24 returned {} items of {deals}",
                b.items
            ));
        }
    }
    report.note(
        "Both clients list every deal (select ID, TITLE) through one incoming webhook of one \
         portal; ours runs on the load runtime of this process, fast_bitrix24 in its own \
         Python process; the emulator on the SUT runtime. Best of the rounds for each; \
         requests are counted by the emulator. Targets: fewer requests and more items/s \
         than the baseline, every item, no limit error.",
    );
    sut::on(&ctx.sut, emu.shutdown()).await?;
    Ok(())
}
