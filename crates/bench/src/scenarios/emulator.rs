//! `emulator`: the emulator's capacity with limits off (issue 3 "Done when":
//! ≥ 20,000 simple calls/s and ≥ 20,000 event deliveries/s on this machine).
//!
//! Calls: `server.time` and `app.info` with an OAuth token, from the shared
//! load generator, alternating with the no-op axum baseline. Deliveries:
//! deal changes through the emulator's Rust API, each firing one online
//! `ONCRMDEALADD` to a minimal receiver; timed from the first change to the
//! last delivery received.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use b24emu::{AppSpec, ChangeSpec, Emulator, InstallSpec, PortalSpec};
use serde_json::{Value, json};

use crate::loadgen::{Target, run_alternating};
use crate::report::{Check, Report, num};
use crate::{Ctx, sut};

const TARGET_PER_SEC: f64 = 20_000.0;
const CHUNK: u64 = 2_000;

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) -> anyhow::Result<()> {
    let args = ctx.args;
    let plan = args.plan();
    plan.describe(&mut report.load);
    let cfg = sut::fast_emulator(100);
    report.load("emulator_limits", "rate_limit=false, operating_limit=false");
    report.load(
        "emulator_delivery",
        json!({"concurrency": cfg.delivery.concurrency, "keep_bodies": false, "log_capacity": cfg.delivery.log_capacity}),
    );
    let emu = sut::on(&ctx.sut, Emulator::start(cfg)).await??;
    let app = emu.create_app(AppSpec {
        scopes: vec!["crm".into()],
        ..Default::default()
    })?;
    let portal = emu.create_portal(PortalSpec {
        name: Some("bench".into()),
        ..Default::default()
    })?;
    let install = emu.install(
        &portal.member_id,
        InstallSpec {
            client_id: app.client_id.clone(),
            ..Default::default()
        },
    )?;
    let token = install.tokens.access_token.clone();
    let noop = sut::serve(&ctx.sut, sut::noop_router()).await?;

    // --- simple calls -------------------------------------------------------
    let mk = |url: String| -> crate::loadgen::MakeRequest {
        let url = Arc::new(url);
        Arc::new(move |c: &reqwest::Client, _| c.get(url.as_str()))
    };
    let base = Target::new(
        "noop",
        plan.concurrency,
        mk(format!("{}/rest/server.time?auth={token}", noop.url)),
    )?;
    let time = Target::new(
        "server.time",
        plan.concurrency,
        mk(format!(
            "{}server.time?auth={token}",
            portal.client_endpoint
        )),
    )?;
    let info = Target::new(
        "app.info",
        plan.concurrency,
        mk(format!("{}app.info?auth={token}", portal.client_endpoint)),
    )?;
    let m = run_alternating(&[&base, &time, &info], plan).await;
    let (b, t, i) = (&m[0], &m[1], &m[2]);
    report.baseline = b.to_json();
    report.baseline.insert(
        "what".into(),
        json!("no-op axum handler (reads the body, answers 200) on the SUT runtime"),
    );
    report.figure("calls_per_sec", num(t.median_per_sec()));
    report.figure("server_time", Value::Object(t.to_json()));
    report.figure("app_info", Value::Object(i.to_json()));
    report.ratio(
        "server_time_vs_noop",
        t.median_per_sec(),
        b.median_per_sec(),
    );
    report.ratio("app_info_vs_noop", i.median_per_sec(), b.median_per_sec());
    report.check(Check::at_least(
        "calls_per_sec",
        t.median_per_sec(),
        TARGET_PER_SEC,
    ));
    report.check(Check::at_least(
        "app_info.per_sec_median",
        i.median_per_sec(),
        TARGET_PER_SEC,
    ));
    for x in [b, t, i] {
        if x.errors > 0 {
            report.note(format!(
                "{}: {} errors, first: {}",
                x.name,
                x.errors,
                x.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
    drop((base, time, info));

    // --- deliveries ---------------------------------------------------------
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let receiver = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        g.fetch_add(1, Ordering::Relaxed);
        std::hint::black_box(body.len());
        async { "" }
    });
    // The receiver runs on the load side: here the emulator is the sender.
    let recv = sut::serve(&tokio::runtime::Handle::current(), receiver).await?;
    let bind = format!(
        "{}event.bind?auth={token}&event=ONCRMDEALADD&handler={}/hook",
        portal.client_endpoint, recv.url
    );
    let client = crate::loadgen::client(4)?;
    let r = client.get(bind).send().await?;
    anyhow::ensure!(r.status().is_success(), "event.bind: HTTP {}", r.status());
    let total = args.deliveries.max(CHUNK);
    let before = emu.stats();
    let started = Instant::now();
    let mut fired = 0u64;
    while fired < total {
        let n = CHUNK.min(total - fired);
        emu.changes(
            &portal.member_id,
            ChangeSpec {
                count: n,
                user_id: 1,
                ..Default::default()
            },
        )?;
        fired += n;
        // Let the worker (on the other runtime) and the receiver run; keep
        // at most a few chunks queued so the figure is a sustained rate.
        while fired - got.load(Ordering::Relaxed) > 4 * CHUNK {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let fire_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = got.load(Ordering::Relaxed);
    // Let the last records land in the stats.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = emu.stats();
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    let per_sec = n as f64 / secs;
    report.figure("deliveries_per_sec", num(per_sec));
    report.figure(
        "deliveries",
        json!({
            "fired": total,
            "received": n,
            "secs": num(secs),
            "changes_api_secs": num(fire_secs),
            "emulator_deliveries_ok": delta("deliveries_ok"),
            "emulator_deliveries_failed": delta("deliveries_failed"),
        }),
    );
    report.ratio("deliveries_vs_noop", per_sec, b.median_per_sec());
    report.check(Check::at_least(
        "deliveries_per_sec",
        per_sec,
        TARGET_PER_SEC,
    ));
    if n < total {
        report.note(format!(
            "only {n} of {total} deliveries arrived within 60 s"
        ));
    }
    report.note(
        "Load generator and system under test share one process and the machine's cores, \
         on separate tokio runtimes (SUT and load, threads in `load`); the no-op baseline \
         runs on the SUT runtime and is driven by the same generator, so both see the same \
         contention. Calls are closed-loop GETs with the token in `auth`, keep-alive, \
         one connection per sender; rates are the median of the rounds.",
    );
    report.note(
        "Deliveries: one portal, one ONCRMDEALADD binding, deal changes through \
         Emulator::changes in chunks of 2,000 (at most 8,000 queued); the emulator's own \
         delivery worker (reqwest, 256 in flight) posts to a minimal axum receiver on the \
         load runtime. The ratio to the no-op baseline is informative only: a different \
         client drives it.",
    );
    drop(noop);
    drop(recv);
    sut::on(&ctx.sut, emu.shutdown()).await?;
    Ok(())
}
