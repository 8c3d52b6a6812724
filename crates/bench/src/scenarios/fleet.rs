//! `fleet`: 10,000 portals after a version bump — portals reconciled per
//! second, REST requests per portal and the gateway's peak RSS, against the
//! emulator's own request capacity measured in the same run.
//!
//! The gateway is the real `b24gate serve` binary, a child process (so its
//! memory is its own: `VmHWM` from /proc), on a fresh SQLite file (or a
//! PostgreSQL schema). The emulator runs in this process on the SUT runtime
//! with its rate limits off.
//!
//! 1. Install: every portal installs the app at manifest version 1 (one
//!    online binding) through the real path — the emulator posts
//!    `ONAPPINSTALL`, the gateway verifies it with the OAuth server and
//!    brings the portal up.
//! 2. Bump: the gateway is stopped and started again with version 2 and one
//!    more binding. Its drift check enqueues a reconcile job per portal; the
//!    timer runs from the start of the new process until the store records
//!    every portal at version 2. Afterwards every portal is checked, in the
//!    store and on the emulator, for the new binding: the figure is refused
//!    otherwise.
//! 3. Baseline: the load generator sends the same probe `batch` the gateway
//!    sends, closed loop, to the emulator; capacity ÷ requests per portal is
//!    the ceiling of portals/s on this machine.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use b24emu::{AppKind, AppSpec, Emulator, InstallSpec, PortalSpec};
use serde_json::{Value, json};
use store::{Keyring, OpenOptions, Store};

use crate::loadgen::{MakeRequest, Target, run_alternating};
use crate::report::{Check, Report, num};
use crate::scenarios::ingest::Pg;
use crate::{Ctx, sut};

const MASTER_KEY: &str = "4242424242424242424242424242424242424242424242424242424242424242";
const DEFAULT_PORTALS: usize = 10_000;
const DEFAULT_WORKERS: u32 = 64;
const TARGET_REQUESTS_PER_PORTAL: f64 = 3.0;
const TARGET_PORTALS_PER_SEC: f64 = 1_000.0;
const TARGET_RSS_MB: f64 = 300.0;
const OLD_EVENT: &str = "ONCRMDEALADD";
const NEW_EVENT: &str = "ONCRMDEALUPDATE";

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The workspace root (two levels above this crate).
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| std::path::PathBuf::from("."))
}

/// The `b24gate` binary next to this one, built (or brought up to date) with
/// `cargo build --release -p b24gate` first when cargo is at hand.
fn gateway_binary(report: &mut Report) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("the bench binary has no directory"))?;
    let bin = dir.join("b24gate");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo);
    // Into the target directory this binary came from, whatever the caller's
    // environment says.
    if let Some(target) = dir.parent() {
        build.env("CARGO_TARGET_DIR", target);
    }
    let built = build
        .current_dir(workspace_root())
        .args(["build", "--release", "--quiet", "-p", "b24gate"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status();
    match built {
        Ok(s) if s.success() => {}
        Ok(s) => report.note(format!(
            "`cargo build --release -p b24gate` failed ({s}); using the existing binary"
        )),
        Err(e) => report.note(format!(
            "cargo not runnable ({e}); using the existing b24gate binary"
        )),
    }
    if !bin.exists() {
        anyhow::bail!(
            "{} is missing: run `cargo build --release -p b24gate` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// Where the gateway keeps its data.
enum Db {
    Sqlite(std::path::PathBuf),
    Postgres(Pg),
}

impl Db {
    fn url(&self) -> String {
        match self {
            Db::Sqlite(p) => format!("sqlite://{}", p.display()),
            Db::Postgres(pg) => pg.url(),
        }
    }

    async fn postgres(base: &str) -> anyhow::Result<(Db, Value)> {
        let (pg, settings) = Pg::create(base, "fleet").await?;
        Ok((Db::Postgres(pg), settings))
    }

    async fn drop_schema(&self) -> anyhow::Result<()> {
        if let Db::Postgres(pg) = self {
            pg.drop_schema().await?;
        }
        Ok(())
    }
}

/// The manifest at `version`: `ONCRMDEALADD` from version 1, and
/// `ONCRMDEALUPDATE` from version 2 on.
fn manifest(
    port: u16,
    db_url: &str,
    client_id: &str,
    oauth: &str,
    version: i64,
    workers: u32,
) -> String {
    let mut s = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
database_url = "{db_url}"
allow_insecure_http = true
workers = {workers}
[app]
client_id = "{client_id}"
version = {version}
scopes = ["crm", "user_brief"]
oauth_url = "{oauth}"
allowed_domains = ["127.0.0.1", "*.localhost"]
[[binding]]
event = "{OLD_EVENT}"
"#
    );
    if version >= 2 {
        s.push_str(&format!("[[binding]]\nevent = \"{NEW_EVENT}\"\n"));
    }
    s
}

/// One `b24gate serve` child process.
struct Gate {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    client_secret: String,
    child: Option<Child>,
}

impl Gate {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gate.log"))?;
        let mut cmd = Command::new(&self.bin);
        // Only the variables meant for it: the loader refuses unknown
        // B24GATE_* names.
        for (k, _) in std::env::vars() {
            if k.starts_with("B24GATE_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .current_dir(&self.dir)
            .args(["-c", "b24gate.toml", "serve"])
            .env("B24GATE_MASTER_KEY", MASTER_KEY)
            .env("B24GATE_APP_CLIENT_SECRET", &self.client_secret)
            .env("B24GATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let http = crate::loadgen::client(1)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                anyhow::bail!("the gateway exited ({status}): {}", self.log_tail());
            }
            let url = format!("http://127.0.0.1:{}/healthz", self.port);
            if let Ok(r) = http.get(&url).send().await
                && r.status() == 200
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("the gateway did not start: {}", self.log_tail())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM (drain) and wait.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("gate.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `VmHWM` and `VmRSS` of a process, in MB.
fn memory_mb(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<f64> {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    Some((kb("VmHWM:")? / 1024.0, kb("VmRSS:")? / 1024.0))
}

/// User+system CPU seconds of a process.
fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Farm counters that count REST traffic.
#[derive(Debug, Clone, Default)]
struct Traffic {
    requests: u64,
    oauth: u64,
    per_method: BTreeMap<String, u64>,
}

impl Traffic {
    fn read(emu: &Emulator) -> Traffic {
        let s = emu.stats();
        Traffic {
            requests: s["requests"].as_u64().unwrap_or(0),
            oauth: s["oauth_requests"].as_u64().unwrap_or(0),
            per_method: s["requests_per_method"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn since(&self, before: &Traffic) -> Traffic {
        Traffic {
            requests: self.requests - before.requests,
            oauth: self.oauth - before.oauth,
            per_method: self
                .per_method
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v - before.per_method.get(k).copied().unwrap_or(0),
                    )
                })
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }

    fn to_json(&self) -> Value {
        json!({"rest_requests": self.requests, "oauth_requests": self.oauth, "per_method": self.per_method})
    }
}

/// Polls the store until `want` installed portals are recorded at `version`
/// (or the gateway dies / `within` passes); samples the gateway's memory.
async fn wait_version(
    store: &Store,
    gate: &mut Gate,
    version: i64,
    want: i64,
    within: Duration,
    every: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let (_, at) = store.version_census(version).await?;
        if at >= want {
            return Ok(started.elapsed());
        }
        if let Some(c) = gate.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            anyhow::bail!("the gateway exited ({status}): {}", gate.log_tail());
        }
        if started.elapsed() > within {
            anyhow::bail!(
                "{at} of {want} portals at version {version} after {:.0} s: {}",
                within.as_secs_f64(),
                gate.log_tail()
            );
        }
        tokio::time::sleep(every).await;
    }
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) -> anyhow::Result<()> {
    let args = ctx.args;
    let pg = matches!(
        std::env::var("BENCH_FLEET_DB").as_deref(),
        Ok("postgres" | "pg" | "postgresql")
    );
    let dir = match &args.db_dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let db = if pg {
        let (db, settings) = Db::postgres(&args.pg_url).await?;
        report.load("database", "postgresql (fresh schema, dropped after)");
        report.load("postgres_settings", settings);
        db
    } else {
        let path = dir.path().join("gate.db");
        report.load(
            "database",
            json!({
                "kind": "sqlite (WAL, synchronous=FULL, as Store::open sets it)",
                "path": path.display().to_string(),
            }),
        );
        Db::Sqlite(path)
    };
    let outcome = measure(ctx, report, &db, dir.path()).await;
    if let Err(e) = db.drop_schema().await {
        report.note(format!("could not drop the bench schema: {e}"));
    }
    outcome
}

async fn measure(
    ctx: &Ctx<'_>,
    report: &mut Report,
    db: &Db,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let args = ctx.args;
    let portals: usize = env_parse("BENCH_FLEET_PORTALS").unwrap_or(DEFAULT_PORTALS);
    let workers: u32 = env_parse("BENCH_FLEET_WORKERS").unwrap_or(DEFAULT_WORKERS);
    report.load("portals", portals);
    report.load("gateway_workers", workers);
    let bin = gateway_binary(report)?;

    let cfg = sut::fast_emulator(10);
    report.load(
        "emulator",
        json!({"in_process": "SUT runtime", "rate_limit": false, "operating_limit": false}),
    );
    let emu = sut::on(&ctx.sut, Emulator::start(cfg)).await??;
    let port = free_port()?;
    let app = emu.create_app(AppSpec {
        client_id: None,
        client_secret: None,
        scopes: ["crm", "user_brief"].map(String::from).into(),
        version: Some(1),
        install_url: format!("http://127.0.0.1:{port}/b24/install"),
        installer: false,
        kind: AppKind::Local,
        update_event: None,
    })?;
    let db_url = db.url();
    let write_manifest = |version: i64| {
        std::fs::write(
            dir.join("b24gate.toml"),
            manifest(
                port,
                &db_url,
                &app.client_id,
                emu.oauth_url(),
                version,
                workers,
            ),
        )
    };
    write_manifest(1)?;
    let mut gate = Gate {
        bin,
        dir: dir.to_path_buf(),
        port,
        client_secret: app.client_secret.clone(),
        child: None,
    };
    gate.spawn()?;
    gate.wait_healthy().await?;
    let store = Store::open(
        &db_url,
        Keyring::from_hex(MASTER_KEY)?,
        &OpenOptions {
            sqlite_readers: 1,
            pg_max_connections: 2,
            ..OpenOptions::default()
        },
    )
    .await?;

    // --- 1. install at version 1 through the real path ----------------------
    let install_started = Instant::now();
    let before_install = Traffic::read(&emu);
    let mut members = Vec::with_capacity(portals);
    for i in 0..portals {
        let p = emu.create_portal(PortalSpec {
            name: Some(format!("fleet{i}")),
            ..PortalSpec::default()
        })?;
        emu.install(
            &p.member_id,
            InstallSpec {
                client_id: app.client_id.clone(),
                ..InstallSpec::default()
            },
        )?;
        members.push(p.member_id);
    }
    let installed_in = wait_version(
        &store,
        &mut gate,
        1,
        portals as i64,
        Duration::from_secs(900),
        Duration::from_millis(500),
    )
    .await?;
    let install_secs = install_started.elapsed().as_secs_f64();
    let install_traffic = Traffic::read(&emu).since(&before_install);
    let install_mem = gate.pid().and_then(memory_mb);
    report.figure(
        "install",
        json!({
            "portals": portals,
            "secs": num(install_secs),
            "portals_per_sec": num(portals as f64 / install_secs),
            "wait_after_last_install_secs": num(installed_in.as_secs_f64()),
            "requests_per_portal": num(install_traffic.requests as f64 / portals as f64),
            "traffic": install_traffic.to_json(),
            "gateway_vm_hwm_mb": install_mem.map(|m| num(m.0)),
        }),
    );
    gate.stop();

    // --- 2. the bump: version 2 with one more binding ----------------------
    write_manifest(2)?;
    let before = Traffic::read(&emu);
    let load_at_bump = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
    let t0 = Instant::now();
    gate.spawn()?;
    let pid = gate.pid().unwrap_or(0);
    let reconcile = wait_version(
        &store,
        &mut gate,
        2,
        portals as i64,
        Duration::from_secs(900),
        Duration::from_millis(20),
    )
    .await;
    let elapsed = t0.elapsed();
    let mem = memory_mb(pid);
    let cpu = cpu_secs(pid);
    let traffic = Traffic::read(&emu).since(&before);
    let job_counts = store.job_counts().await.unwrap_or_default();
    gate.stop();
    reconcile?;

    // Every portal at version 2 with the new binding bound, in the store and
    // on the emulator.
    let mut at_v2 = 0usize;
    let mut installed = 0usize;
    for p in store.list_portals().await? {
        if p.status == store::PortalStatus::Installed {
            installed += 1;
        }
        if p.installed_version == Some(2) {
            at_v2 += 1;
        }
    }
    let matrix = store.binding_matrix(None).await?;
    let bound_in_store = matrix
        .iter()
        .filter(|r| r.record.key.name == NEW_EVENT && r.record.state == "bound")
        .count();
    let mut bound_on_portal = 0usize;
    for m in &members {
        let s = emu.portal_state(m)?;
        let has = s["apps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["client_id"] == app.client_id.as_str())
            .flat_map(|a| {
                a["bindings"]["online"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .any(|b| {
                b["event"]
                    .as_str()
                    .is_some_and(|e| e.eq_ignore_ascii_case(NEW_EVENT))
            });
        if has {
            bound_on_portal += 1;
        }
    }
    let valid = at_v2 == portals
        && installed == portals
        && bound_in_store == portals
        && bound_on_portal == portals;
    let secs = elapsed.as_secs_f64();
    let per_sec = if valid {
        portals as f64 / secs
    } else {
        f64::NAN
    };
    let per_portal = traffic.requests as f64 / portals as f64;
    report.figure("portals_per_sec", num(per_sec));
    report.figure("requests_per_portal", num(per_portal));
    report.figure("peak_rss_mb", mem.map_or(Value::Null, |m| num(m.0)));
    report.figure(
        "reconcile",
        json!({
            "portals": portals,
            "secs_from_process_start": num(secs),
            "traffic": traffic.to_json(),
            "gateway_vm_rss_mb_at_end": mem.map(|m| num(m.1)),
            "gateway_cpu_secs": cpu.map(num),
            "gateway_cpu_share_of_two_cores": cpu.map(|c| num(c / secs / 2.0)),
            "loadavg_1m_at_bump": load_at_bump,
            "jobs_by_state_after": job_counts
                .iter()
                .map(|(s, n)| (s.clone(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "checked": {
                "installed": installed,
                "at_version_2": at_v2,
                "new_binding_bound_in_store": bound_in_store,
                "new_binding_on_emulator": bound_on_portal,
                "valid": valid,
            },
        }),
    );
    if !valid {
        report.note(format!(
            "INVALID: of {portals} portals {installed} installed, {at_v2} at version 2, \
             {bound_in_store} with {NEW_EVENT} bound in the store, {bound_on_portal} on the emulator"
        ));
    }

    // --- 3. baseline: the emulator's capacity for the probe batch ----------
    let plan = args.plan();
    plan.describe(&mut report.load);
    let tokens: Vec<(String, String)> = members
        .iter()
        .take(1000)
        .map(|m| {
            let t = emu.tokens(
                m,
                InstallSpec {
                    client_id: app.client_id.clone(),
                    ..InstallSpec::default()
                },
            )?;
            let ep = emu.portal_state(m)?["client_endpoint"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Ok((format!("{ep}batch"), t.access_token))
        })
        .collect::<anyhow::Result<_>>()?;
    let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        tokens
            .into_iter()
            .map(|(url, token)| {
                let mut body = probe_batch_body();
                body["auth"] = json!(token);
                (url, serde_json::to_vec(&body).expect("json"))
            })
            .collect(),
    );
    let make: MakeRequest = {
        let bodies = bodies.clone();
        Arc::new(move |c: &reqwest::Client, n: u64| {
            let (url, body) = &bodies[(n % bodies.len() as u64) as usize];
            c.post(url.as_str())
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .body(body.clone())
        })
    };
    let probe = Target::new("probe_batch", plan.concurrency, make)?;
    let m = run_alternating(&[&probe], plan).await;
    let b = &m[0];
    let capacity = b.median_per_sec();
    report.baseline = b.to_json();
    report.baseline.insert(
        "what".into(),
        json!("the emulator answering the gateway's probe batch (scope, events, two feature.get, app.info, event.get, placement.get) from the same load generator, closed loop, one of 1,000 portals' tokens per request"),
    );
    let ceiling = capacity / per_portal.max(1.0);
    report
        .baseline
        .insert("ceiling_portals_per_sec".into(), num(ceiling));
    report.ratio("portals_per_sec_vs_ceiling", per_sec, ceiling);
    report.check(Check::at_most(
        "requests_per_portal",
        per_portal,
        TARGET_REQUESTS_PER_PORTAL,
    ));
    report.check(Check::at_least(
        "portals_per_sec",
        per_sec,
        TARGET_PORTALS_PER_SEC,
    ));
    report.check(Check::at_most(
        "peak_rss_mb",
        mem.map_or(f64::NAN, |m| m.0),
        TARGET_RSS_MB,
    ));
    if b.errors > 0 {
        report.note(format!(
            "baseline: {} errors, first: {}",
            b.errors,
            b.first_error.as_deref().unwrap_or("?")
        ));
    }
    report.note(format!(
        "Gateway: the real `b24gate serve` binary ({}) as a child process, {workers} job \
         workers (`server.workers`); the emulator runs in the bench process on the SUT \
         runtime, so the gateway's memory is its own: peak_rss_mb is VmHWM from \
         /proc/<pid>/status of the process started for the bump (install ran in an earlier \
         process).",
        gate.bin.display()
    ));
    report.note(
        "Install at version 1 went through the real path (emulator ONAPPINSTALL → ingest → \
         install job: OAuth app.info, record, bring-up); the bump restarts the gateway at \
         version 2 with one more binding, and its drift check enqueues the reconcile jobs. \
         portals_per_sec counts from the new process's spawn to the store recording all \
         portals at version 2 (polled every 20 ms); after it every portal is checked in the \
         store (version, status, new binding `bound`) and on the emulator (binding present). \
         Requests per portal: the emulator's REST request counter over the bump ÷ portals \
         (OAuth requests separately in reconcile.traffic).",
    );
    report.note(
        "Baseline: capacity of the emulator for the probe batch in the same run; the \
         ceiling of portals/s is that capacity ÷ requests per portal (the probe batch is the \
         heavier of the two batches a portal costs).",
    );
    drop(probe);
    store.close().await;
    sut::on(&ctx.sut, async move { emu.shutdown().await }).await?;
    Ok(())
}

/// The probe `batch` of `engine::lifecycle::Lifecycle::bring_up` (no
/// migrations configured), as the client puts it on the wire.
fn probe_batch_body() -> Value {
    json!({
        "cmd": {
            "scope": "scope",
            "events": "events",
            "feature_offline": "feature.get?CODE=rest_offline_extended",
            "feature_connector": "feature.get?CODE=rest_auth_connector",
            "app": "app.info",
            "event_get": "event.get",
            "placement_get": "placement.get",
        },
        "halt": 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_adds_the_binding_at_version_2() {
        let v1 = manifest(1, "sqlite://x.db", "local.1", "http://o", 1, 8);
        let v2 = manifest(1, "sqlite://x.db", "local.1", "http://o", 2, 8);
        assert!(v1.contains(OLD_EVENT) && !v1.contains(NEW_EVENT));
        assert!(v2.contains(OLD_EVENT) && v2.contains(NEW_EVENT));
        assert!(v2.contains("version = 2") && v2.contains("workers = 8"));
    }

    #[test]
    fn reads_own_memory_and_cpu() {
        let me = std::process::id();
        let (hwm, rss) = memory_mb(me).expect("linux /proc");
        assert!(hwm >= rss && rss > 0.0);
        assert!(cpu_secs(me).is_some());
    }
}
