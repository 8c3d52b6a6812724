//! `offline-drain`: events/s the gateway drains from 20,000 queued offline
//! events under the portal's request bucket (burst 50), against two
//! baselines of the same run: the theoretical maximum under that bucket, and
//! the documented get-then-clear flow (`event.offline.get` with `clear=0`,
//! then `event.offline.clear` with the `process_id`: two requests per batch)
//! driven with the `client` crate on the same portal.
//!
//! The figure is the real gateway: the engine (job runner, housekeeping,
//! dispatcher) and the server over a durable SQLite file, a portal of the
//! in-process emulator installed through the real install flow (install
//! event, verification, bindings). The queue is filled while the engine is
//! stopped, as after an outage; the clock starts when the engine starts
//! (its first housekeeping pass schedules the drain job, which the worker
//! pool picks up) and stops when the portal's queue is empty and every event
//! is in the inbox. Both are checked: the emulator's queue, and the inbox
//! rows (each event exactly once).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use b24emu::{AppKind, AppSpec, ChangeSpec, Emulator, EmulatorConfig, InstallSpec, LimitsSpec};
use engine::{Config, EngineOptions, RunningEngine, Secrets};
use serde_json::{Value, json};
use store::{Keyring, OpenOptions, PortalStatus, Store};
use wire::MemberId;

use crate::report::{Check, Report, num};
use crate::{Ctx, sut};

/// Events queued on the portal for each side.
const EVENTS: u64 = 20_000;
/// The bucket's burst (the platform's, unchanged).
const BURST: u32 = 50;
/// The bucket's drain rate for the run, raised from the platform's 2/s so
/// that 20,000 events take 17.5 s at the theoretical maximum; the engine's
/// client is told the same bucket.
const RATE: f64 = 20.0;
/// Rows per `event.offline.get` (`[offline] batch`, the default).
const BATCH: u32 = 50;
/// Batches timed at the start of each side, well inside the burst, where
/// nothing waits for a slot: their time per batch is the work alone.
const UNPACED: u64 = 30;
/// A side that has not finished by then failed.
const BOUND: Duration = Duration::from_secs(110);

const CLIENT_SECRET: &str = "bench-offline-drain-client-secret-0123";

fn counter(emu: &Emulator, k: &str) -> u64 {
    emu.stats()[k].as_u64().unwrap_or(0)
}

/// (size, reserved) of the app's offline queue on the portal.
fn queue(emu: &Emulator, member_id: &str) -> anyhow::Result<(u64, u64)> {
    let s = emu.portal_state(member_id)?;
    let q = &s["apps"][0]["offline_queue"];
    Ok((
        q["size"].as_u64().unwrap_or(u64::MAX),
        q["reserved"].as_u64().unwrap_or(0),
    ))
}

/// The bucket at both ends (the portal's and the client's shared one) is
/// empty after `burst / rate` seconds without requests.
async fn let_buckets_drain() {
    tokio::time::sleep(Duration::from_secs_f64(f64::from(BURST) / RATE + 0.5)).await;
}

/// Queues `EVENTS` offline rows (one `ONCRMDEALADD` per new deal); returns
/// the deal ids.
fn fill(emu: &Emulator, member_id: &str) -> anyhow::Result<HashSet<u64>> {
    let info = emu.changes(
        member_id,
        ChangeSpec {
            entity: "deal".into(),
            action: "add".into(),
            count: EVENTS,
            ..Default::default()
        },
    )?;
    let ids: HashSet<u64> = info.ids.into_iter().collect();
    anyhow::ensure!(
        ids.len() as u64 == EVENTS,
        "the fill made {} deals",
        ids.len()
    );
    let (size, _) = queue(emu, member_id)?;
    anyhow::ensure!(
        size == EVENTS,
        "the offline queue holds {size} rows after the fill, not {EVENTS}"
    );
    Ok(ids)
}

fn config_text(gate_url: &str, client_id: &str, oauth: &str) -> String {
    format!(
        r#"
[server]
public_url = "{gate_url}"
allow_insecure_http = true
[app]
client_id = "{client_id}"
version = 1
scopes = ["crm", "user_brief"]
oauth_url = "{oauth}"
allowed_domains = ["127.0.0.1", "*.localhost"]
[offline]
batch = {BATCH}
drain_every = "1h"
[[binding]]
event = "ONCRMDEALADD"
mode = "offline"
"#
    )
}

/// The engine's REST client configuration: the manifest's, paced to the
/// emulated bucket.
fn client_config(config: &Config, secrets: &Secrets) -> client::ClientConfig {
    client::ClientConfig {
        rate: client::RateConfig::uniform(RATE, BURST),
        ..engine::client_config(config, secrets)
    }
}

struct Gate {
    config: Arc<Config>,
    secrets: Secrets,
    store: Store,
}

impl Gate {
    /// Starts an engine (dispatcher, worker pool, housekeeping) on the
    /// SUT runtime, as a gateway process start would.
    async fn start(&self, ctx: &Ctx<'_>) -> anyhow::Result<RunningEngine> {
        let opts = EngineOptions {
            client: Some(client_config(&self.config, &self.secrets)),
            ..EngineOptions::default()
        };
        let e = engine::Engine::new(
            self.config.clone(),
            &self.secrets,
            self.store.clone(),
            engine::system_now(),
            opts,
        )?;
        sut::on(&ctx.sut, async move { e.start() }).await
    }
}

async fn stop(ctx: &Ctx<'_>, e: RunningEngine) -> anyhow::Result<()> {
    sut::on(&ctx.sut, e.shutdown()).await
}

/// What one side did.
struct Side {
    secs: f64,
    events: u64,
    requests: u64,
    limit_errors: u64,
    /// From the start until the portal saw the first reservation.
    first_reserve_secs: Option<f64>,
    /// Seconds per batch over the first [`UNPACED`] batches (inside the
    /// burst: no slot waits), i.e. requests, store and scheduling alone.
    unpaced_secs_per_batch: Option<f64>,
}

impl Side {
    fn per_sec(&self) -> f64 {
        self.events as f64 / self.secs
    }

    fn to_json(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("events".into(), json!(self.events));
        m.insert("secs".into(), num(self.secs));
        m.insert("events_per_sec".into(), num(self.per_sec()));
        m.insert("requests".into(), json!(self.requests));
        m.insert(
            "events_per_request".into(),
            num(self.events as f64 / self.requests.max(1) as f64),
        );
        m.insert("limit_errors".into(), json!(self.limit_errors));
        if let Some(s) = self.first_reserve_secs {
            m.insert("first_reserve_secs".into(), num(s));
        }
        if let Some(s) = self.unpaced_secs_per_batch {
            m.insert("unpaced_ms_per_batch".into(), num(s * 1000.0));
        }
        m
    }
}

/// The figure: the gateway's engine drains the queue.
async fn gateway_drain(
    ctx: &Ctx<'_>,
    gate: &Gate,
    emu: &Emulator,
    member_id: &str,
    deals: &HashSet<u64>,
    report: &mut Report,
) -> anyhow::Result<Side> {
    let since = now_ms();
    let (r0, l0) = (counter(emu, "requests"), counter(emu, "query_limit_errors"));
    let started = Instant::now();
    let engine = gate.start(ctx).await?;
    let mut first = None;
    let mut unpaced = None;
    let mut done_at = None;
    // The queue empties at the clear of the last batch, which is sent only
    // after that batch is committed; the inbox is counted once it is.
    while started.elapsed() < BOUND {
        let (size, reserved) = queue(emu, member_id)?;
        if first.is_none() && (reserved > 0 || size < EVENTS) {
            first = Some(started.elapsed().as_secs_f64());
        }
        // Batch 1 is reserved at `first`; the queue is down by UNPACED
        // batches once the request after the UNPACED-th has cleared it.
        if let Some(f) = first
            && unpaced.is_none()
            && size <= EVENTS - UNPACED * u64::from(BATCH)
        {
            unpaced = Some((started.elapsed().as_secs_f64() - f) / UNPACED as f64);
        }
        if size == 0 {
            let n = count_offline(&gate.store, member_id, since).await?;
            if n >= EVENTS {
                done_at = Some(started.elapsed().as_secs_f64());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let requests = counter(emu, "requests") - r0;
    let limit_errors = counter(emu, "query_limit_errors") - l0;
    stop(ctx, engine).await?;
    let secs = done_at.ok_or_else(|| anyhow::anyhow!("the drain did not finish in {BOUND:?}"))?;

    // Every event exactly once, and only these.
    let rows = gate.store.inbox_since(member_id, since, 1_000_000).await?;
    let mut message_ids = HashSet::new();
    let mut offline_ids = HashSet::new();
    let mut seen_deals = HashSet::new();
    let mut offline_rows = 0u64;
    for r in rows.iter().filter(|r| r.source == "offline") {
        offline_rows += 1;
        let p = r.payload_json();
        message_ids.insert(p["message_id"].as_str().unwrap_or_default().to_owned());
        offline_ids.insert(p["offline_id"].as_str().unwrap_or_default().to_owned());
        let id = &p["data"]["FIELDS"]["ID"];
        if let Some(id) = id
            .as_u64()
            .or_else(|| id.as_str().and_then(|s| s.parse().ok()))
        {
            seen_deals.insert(id);
        }
    }
    let (left, _) = queue(emu, member_id)?;
    let once = message_ids.len().min(offline_ids.len()) as u64;
    let missing = deals.difference(&seen_deals).count() as u64;
    report.figure(
        "check",
        json!({
            "inbox_offline_rows": offline_rows,
            "distinct_message_ids": message_ids.len(),
            "distinct_offline_row_ids": offline_ids.len(),
            "deals_missing": missing,
            "emulator_queue_left": left,
        }),
    );
    report.check(Check::at_least(
        "events_stored_once",
        once as f64,
        EVENTS as f64,
    ));
    report.check(Check::at_most(
        "events_stored_twice",
        offline_rows.saturating_sub(once) as f64,
        0.0,
    ));
    report.check(Check::at_most("deals_missing", missing as f64, 0.0));
    report.check(Check::at_most("emulator_queue_left", left as f64, 0.0));
    Ok(Side {
        secs,
        events: offline_rows,
        requests,
        limit_errors,
        first_reserve_secs: first,
        unpaced_secs_per_batch: unpaced,
    })
}

async fn count_offline(store: &Store, member_id: &str, since: i64) -> anyhow::Result<u64> {
    // Cheap enough at 20,000 rows, and only asked once the queue is empty.
    Ok(store
        .inbox_since(member_id, since, 1_000_000)
        .await?
        .iter()
        .filter(|r| r.source == "offline")
        .count() as u64)
}

/// The baseline: get(clear=0) then clear(process_id), with the same client
/// configuration (pacing, credentials from the store) and batch size,
/// storing nothing. Its request slots come from an in-memory limiter, which
/// costs nothing per request.
async fn two_request_flow(
    gate: &Gate,
    emu: &Emulator,
    member_id: &str,
    deals: &HashSet<u64>,
) -> anyhow::Result<Side> {
    let env = Arc::new(engine::env::StoreEnv {
        store: gate.store.clone(),
    });
    let c = client::Client::new(
        client_config(&gate.config, &gate.secrets),
        env,
        Arc::new(client::MemoryRateLimiter::new()),
        client::Clock::system(),
    )?;
    let m = MemberId::parse(member_id)?;
    let portal = c.portal(&m);
    let (r0, l0) = (counter(emu, "requests"), counter(emu, "query_limit_errors"));
    let started = Instant::now();
    let mut last_clear = 0.0;
    let mut message_ids = HashSet::new();
    let mut seen_deals = HashSet::new();
    let mut events = 0u64;
    let mut requests_to_empty = 0u64;
    let mut batches = 0u64;
    let mut unpaced = None;
    loop {
        anyhow::ensure!(
            started.elapsed() < BOUND,
            "the flow did not finish in {BOUND:?}"
        );
        let got = portal
            .call("event.offline.get", json!({"clear": 0, "limit": BATCH}))
            .await?;
        let rows = got.result["events"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            break;
        }
        let pid = got.result["process_id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("a reservation without process_id"))?
            .to_owned();
        for r in &rows {
            message_ids.insert(r["MESSAGE_ID"].as_str().unwrap_or_default().to_owned());
            let id = &r["EVENT_DATA"]["FIELDS"]["ID"];
            if let Some(id) = id
                .as_u64()
                .or_else(|| id.as_str().and_then(|s| s.parse().ok()))
            {
                seen_deals.insert(id);
            }
        }
        events += rows.len() as u64;
        portal
            .call("event.offline.clear", json!({"process_id": pid}))
            .await?;
        last_clear = started.elapsed().as_secs_f64();
        batches += 1;
        if batches == UNPACED {
            unpaced = Some(last_clear / UNPACED as f64);
        }
        requests_to_empty = counter(emu, "requests") - r0;
    }
    let (left, _) = queue(emu, member_id)?;
    anyhow::ensure!(left == 0, "{left} rows left after the two-request flow");
    anyhow::ensure!(
        message_ids.len() as u64 == EVENTS && events == EVENTS,
        "the two-request flow got {events} events, {} distinct",
        message_ids.len()
    );
    anyhow::ensure!(
        deals.is_subset(&seen_deals),
        "the two-request flow missed deals"
    );
    Ok(Side {
        // Until the last clear: the final, empty get is not counted.
        secs: last_clear,
        events,
        requests: requests_to_empty,
        limit_errors: counter(emu, "query_limit_errors") - l0,
        first_reserve_secs: None,
        unpaced_secs_per_batch: unpaced,
    })
}

/// The most a drain can do under a bucket of burst `b` and rate `r` with
/// `e` rows per request: in `t` seconds the bucket admits `b + r·t`
/// requests; `n = ⌈events/e⌉` requests take at least `max(0, n − b)/r`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Maximum {
    admitted: f64,
    per_sec: f64,
    needed: f64,
    min_secs: f64,
}

impl Maximum {
    fn new(b: f64, r: f64, e: f64, events: u64, t: f64) -> Maximum {
        let admitted = b + r * t;
        let needed = (events as f64 / e).ceil();
        Maximum {
            admitted,
            per_sec: admitted * e / t,
            needed,
            min_secs: (needed - b).max(0.0) / r,
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) -> anyhow::Result<()> {
    let args = ctx.args;
    let dir = match &args.db_dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let path = dir.path().join("drain.db");
    report.load(
        "database",
        json!({
            "kind": "sqlite (WAL, synchronous=FULL, as Store::open sets it)",
            "path": path.display().to_string(),
            "filesystem": crate::scenarios::ingest::fs_type(dir.path()),
        }),
    );
    let url = format!("sqlite://{}", path.display());
    let store = sut::on(&ctx.sut, async move {
        let s = Store::open(
            &url,
            Keyring::from_hex(&"42".repeat(32))?,
            &OpenOptions::default(),
        )
        .await?;
        s.migrate().await?;
        Ok::<_, anyhow::Error>(s)
    })
    .await??;
    let emu = sut::on(&ctx.sut, Emulator::start(EmulatorConfig::default())).await??;
    let outcome = measure(ctx, report, &emu, store.clone()).await;
    sut::on(&ctx.sut, async move { store.close().await }).await?;
    sut::on(&ctx.sut, emu.shutdown()).await?;
    outcome
}

async fn measure(
    ctx: &Ctx<'_>,
    report: &mut Report,
    emu: &Emulator,
    store: Store,
) -> anyhow::Result<()> {
    // The gateway's server stays up throughout (installs and ONOFFLINEEVENT
    // land in its inbox); engines come and go.
    let s = store.clone();
    let state = sut::on(&ctx.sut, async move {
        server::AppState::new(s, server::IngestConfig::default())
    })
    .await?;
    let server = sut::serve(&ctx.sut, server::app(state)).await?;
    let app = emu.create_app(AppSpec {
        client_id: None,
        client_secret: Some(CLIENT_SECRET.into()),
        scopes: vec!["crm".into(), "user_brief".into()],
        version: Some(1),
        install_url: format!("{}/b24/install", server.url),
        installer: false,
        kind: AppKind::Local,
        update_event: None,
    })?;
    let text = config_text(&server.url, &app.client_id, emu.oauth_url());
    let (config, secrets) = Config::load(
        &text,
        [(
            "B24GATE_APP_CLIENT_SECRET".to_owned(),
            app.client_secret.clone(),
        )],
    )?;
    let gate = Gate {
        config: Arc::new(config),
        secrets,
        store: store.clone(),
    };
    let portal = emu.create_portal(b24emu::PortalSpec {
        name: Some("drain".into()),
        features: vec!["rest_offline_extended".into()],
        ..Default::default()
    })?;
    let m = portal.member_id.clone();
    emu.set_limits(
        &m,
        LimitsSpec {
            rate_limit: Some(true),
            drain: Some(RATE),
            burst: Some(f64::from(BURST)),
            reset: true,
            ..Default::default()
        },
    )?;
    report.load("events", EVENTS);
    report.load("offline_batch", BATCH);
    report.load(
        "emulator_rate_limit",
        json!({"drain_per_sec": RATE, "burst": BURST,
               "default": "2/s burst 50 (standard)", "operating_limit": "on, default budget"}),
    );
    report.load(
        "client_pacing",
        format!(
            "RateConfig::uniform({RATE}, {BURST}) (headroom {} of the burst)",
            client::RateConfig::default().headroom
        ),
    );
    report.load(
        "engine",
        "EngineOptions::default() (4 workers, 250 ms poll); [offline] batch = 50, drain_every = 1h",
    );

    // Install through the real flow, then stop the engine.
    let setup = Instant::now();
    let engine = gate.start(ctx).await?;
    emu.install(
        &m,
        InstallSpec {
            client_id: app.client_id.clone(),
            ..Default::default()
        },
    )?;
    let installed = async {
        loop {
            let p = store.get_portal(&m).await?;
            let bound = store
                .binding_matrix(Some(&m))
                .await?
                .iter()
                .any(|r| r.record.key.name == "ONCRMDEALADD" && r.record.state == "bound");
            if p.is_some_and(|p| p.status == PortalStatus::Installed) && bound {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), installed)
        .await
        .is_err()
    {
        let status = store.get_portal(&m).await?.map(|p| p.status.to_string());
        let matrix: Vec<String> = store
            .binding_matrix(Some(&m))
            .await?
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.record.key.name, r.record.key.mode, r.record.state
                )
            })
            .collect();
        let deliveries: Vec<String> = emu
            .deliveries(&m)?
            .iter()
            .map(|d| format!("{} {:?}", d.event, d.status))
            .collect();
        anyhow::bail!(
            "the portal was not installed and bound within 60 s: status {status:?}, \
             bindings {matrix:?}, deliveries {deliveries:?}"
        );
    }
    // Let a drain the install may have scheduled finish on the empty queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(ctx, engine).await?;
    report.load("install_secs", num(setup.elapsed().as_secs_f64()));
    let l_setup = counter(emu, "query_limit_errors");

    // Baseline: the two-request flow.
    let deals = fill(emu, &m)?;
    let_buckets_drain().await;
    let base = tokio::time::timeout(
        BOUND + Duration::from_secs(5),
        two_request_flow(&gate, emu, &m, &deals),
    )
    .await
    .map_err(|_| anyhow::anyhow!("two-request flow took over {BOUND:?}"))??;

    // The figure: the gateway drains a fresh 20,000.
    let deals = fill(emu, &m)?;
    let_buckets_drain().await;
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
    let fig = gateway_drain(ctx, &gate, emu, &m, &deals, report).await?;
    drop(server);

    let max = Maximum::new(f64::from(BURST), RATE, f64::from(BATCH), EVENTS, fig.secs);
    let (admitted, max_per_sec, needed, min_secs) =
        (max.admitted, max.per_sec, max.needed, max.min_secs);

    let per_sec = fig.per_sec();
    report.figure("events_per_sec", num(per_sec));
    report.figure("drain", Value::Object(fig.to_json()));
    report.figure("loadavg_1m_before_drain", json!(load_at_start));
    report.baseline.insert(
        "maximum".into(),
        json!({
            "what": "requests the bucket admits in the drain's time × rows per request",
            "admitted_requests": num(admitted),
            "events_per_sec": num(max_per_sec),
            "min_secs_for_all": num(min_secs),
            "events_per_sec_at_min_secs": num(EVENTS as f64 / min_secs),
        }),
    );
    let mut b = base.to_json();
    b.insert(
        "what".into(),
        json!("event.offline.get(clear=0) then event.offline.clear(process_id) with the client crate, storing nothing"),
    );
    report
        .baseline
        .insert("two_request_flow".into(), Value::Object(b));
    let r_max = report.ratio("vs_maximum", per_sec, max_per_sec);
    let r_two = report.ratio("vs_two_request_flow", per_sec, base.per_sec());
    report.check(Check::at_least("vs_maximum", r_max, 0.95));
    report.check(Check::at_least("vs_two_request_flow", r_two, 1.8));
    let limit_errors = counter(emu, "query_limit_errors") - l_setup;
    report.figure("limit_errors_whole_run", limit_errors);
    report.check(Check::at_most("limit_errors", limit_errors as f64, 0.0));
    report.note(format!(
        "maximum = (B + R·T) × E / T with burst B = {BURST}, rate R = {RATE}/s, T the drain's \
         measured time and E = {BATCH} rows per request; the least time for all {EVENTS} \
         events is max(0, N − B)/R with N = ⌈{EVENTS}/E⌉ = {needed} requests, {min_secs:.1} s."
    ));
    report.note(
        "The gateway drain: the queue is filled while the engine is stopped; T runs from the \
         engine's start (its first housekeeping pass schedules the drain job, the worker pool \
         picks it up) until the emulator's queue is empty and the inbox holds every event \
         (polled every 10 ms). One request per batch: a `batch` clears the stored rows and \
         reserves the next ones. Durable SQLite, one portal installed through the real flow.",
    );
    report.note(
        "The two-request flow uses the same client configuration (bucket, headroom, \
         credentials from the store) with an in-memory limiter, stores nothing, and its time \
         ends at its last clear (the empty get that follows is not counted). Limit errors \
         are the emulator's QUERY_LIMIT_EXCEEDED count over both sides.",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maximum_under_the_bucket() {
        // 20,000 rows, 50 per request: 400 requests, 50 free, 350 at 20/s.
        let m = Maximum::new(50.0, 20.0, 50.0, 20_000, 17.5);
        assert_eq!(m.needed, 400.0);
        assert_eq!(m.min_secs, 17.5);
        assert_eq!(m.admitted, 400.0);
        // A drain that takes exactly the least time is at the maximum.
        assert!((20_000.0 / 17.5 / m.per_sec - 1.0).abs() < 1e-12);
        // Twice as slow: the bucket admitted 750 requests meanwhile.
        let slow = Maximum::new(50.0, 20.0, 50.0, 20_000, 35.0);
        assert_eq!(slow.admitted, 750.0);
        assert!((20_000.0 / 35.0 / slow.per_sec - 400.0 / 750.0).abs() < 1e-12);
        // Within the burst nothing waits.
        assert_eq!(Maximum::new(50.0, 2.0, 50.0, 2_000, 1.0).min_secs, 0.0);
    }

    #[test]
    fn config_text_loads() {
        let text = config_text(
            "http://127.0.0.1:1",
            "local.0123456789abcd.12345678",
            "http://127.0.0.1:2",
        );
        let (c, _) = Config::load(&text, []).expect("the scenario's manifest loads");
        assert_eq!(c.offline.batch, BATCH);
        assert_eq!(engine::offline::connectors(&c).len(), 1);
    }
}
