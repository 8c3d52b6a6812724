//! The operations commands: `call`, `portals`, `bindings`, `reconcile`,
//! `doctor`, `audit`, `jobs`, `events replay`. Every listing has `--json`;
//! long runs show progress on a terminal (stderr) and plain lines otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use engine::Config;
use engine::lifecycle::Lifecycle;
use engine::reconcile::{self, Probe, ReconcileOptions};
use futures::StreamExt;
use serde_json::{Value, json};
use store::{PortalStatus, Store};
use wire::MemberId;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `--since`: Unix seconds, or a duration back from now (`2h`, `7d`).
pub fn parse_since(s: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs * 1000);
    }
    let d = engine::config::parse_duration(s).map_err(|e| anyhow!("--since: {e}"))?;
    Ok(now_ms() - d.as_millis() as i64)
}

fn member(s: &str) -> anyhow::Result<MemberId> {
    MemberId::parse(s).map_err(|e| anyhow!("--portal: {e}"))
}

/// A progress line on stderr when it is a terminal.
struct Progress {
    tty: bool,
    label: &'static str,
}

impl Progress {
    fn new(label: &'static str) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            label,
        }
    }

    fn tick(&self, n: usize, of: Option<usize>) {
        if self.tty {
            let mut e = std::io::stderr();
            let _ = match of {
                Some(t) => write!(e, "\r{} {n}/{t}", self.label),
                None => write!(e, "\r{} {n}", self.label),
            };
            let _ = e.flush();
        }
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// What the operations commands share.
pub struct Ops {
    pub config: Arc<Config>,
    pub store: Store,
    pub client: client::Client,
}

impl Ops {
    pub fn new(
        config: Arc<Config>,
        secrets: &engine::Secrets,
        store: Store,
    ) -> anyhow::Result<Ops> {
        engine::install_tls_provider();
        let env = Arc::new(engine::env::StoreEnv {
            store: store.clone(),
        });
        let client = client::Client::new(
            engine::client_config(&config, secrets),
            env.clone(),
            env,
            client::Clock::system(),
        )?;
        Ok(Ops {
            config,
            store,
            client,
        })
    }

    /// The lifecycle the commands run (`reconcile`, `doctor`).
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            store: self.store.clone(),
            client: self.client.clone(),
            config: self.config.clone(),
            now: engine::system_now(),
            reconcile: ReconcileOptions::default(),
        }
    }
}

fn params(text: Option<&str>) -> anyhow::Result<Value> {
    match text {
        None => Ok(json!({})),
        Some(t) => {
            let v: Value = serde_json::from_str(t).context("params must be a JSON object")?;
            if !v.is_object() {
                return Err(anyhow!("params must be a JSON object"));
            }
            Ok(v)
        }
    }
}

/// `b24gate call --webhook URL | --portal ID METHOD [JSON] [--all]`.
pub async fn call(
    ops: Option<&Ops>,
    webhook: Option<&str>,
    portal: Option<&str>,
    all: bool,
    allow_http: bool,
    method: &str,
    params_text: Option<&str>,
) -> anyhow::Result<()> {
    let params = params(params_text)?;
    let pc = match (webhook, portal) {
        (Some(url), None) => {
            engine::install_tls_provider();
            // The operator names the webhook: its host is the allow-list.
            let host = url::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .context("--webhook must be a URL")?;
            let cfg = client::ClientConfig {
                allow: client::AllowList::new([host], allow_http),
                ..client::ClientConfig::default()
            };
            client::Client::for_webhook(url, cfg)?
        }
        (None, Some(m)) => ops
            .context("--portal needs the configuration and database")?
            .client
            .portal(&member(m)?),
        _ => {
            return Err(anyhow!(
                "give exactly one of --webhook URL or --portal MEMBER_ID"
            ));
        }
    };
    if all {
        let mut stream = pc.list_all(method, params);
        let progress = Progress::new("items");
        let mut n = 0;
        let mut out = std::io::stdout().lock();
        while let Some(item) = stream.next().await {
            writeln!(out, "{}", item?)?;
            n += 1;
            if n % 50 == 0 {
                progress.tick(n, None);
            }
        }
        progress.tick(n, None);
        progress.done();
        return Ok(());
    }
    let s = pc.call(method, params).await?;
    let mut out = json!({"result": s.result});
    if let Some(n) = s.next {
        out["next"] = json!(n);
    }
    if let Some(t) = s.total {
        out["total"] = json!(t);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

pub async fn portals(store: &Store, as_json: bool) -> anyhow::Result<()> {
    let portals = store.list_portals().await?;
    let rows: Vec<Value> = portals
        .iter()
        .map(|p| {
            json!({
                "member_id": p.member_id.as_str(),
                "domain": p.domain.as_str(),
                "status": p.status.as_str(),
                "version": p.installed_version,
                "plan": p.plan,
                "flow": p.install_flow,
                "generation": p.generation,
                "scopes": p.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            })
        })
        .collect();
    if as_json {
        println!("{}", Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<32}  {:<30}  {:<12}  {:<7}  {:<10}",
        "member_id", "domain", "status", "version", "plan"
    );
    for p in &portals {
        println!(
            "{:<32}  {:<30}  {:<12}  {:<7}  {:<10}",
            p.member_id.as_str(),
            p.domain.as_str(),
            p.status.as_str(),
            p.installed_version.map_or("-".into(), |v| v.to_string()),
            p.plan
        );
    }
    Ok(())
}

/// One row of the binding matrix as printed.
fn matrix_row(portal: &str, r: &store::BindingRecord) -> Value {
    json!({
        "portal": portal,
        "kind": r.key.kind,
        "event": r.key.name,
        "mode": r.key.mode,
        "handler": r.key.handler,
        "connector": r.key.connector,
        "owner": r.owner,
        "expected": r.expected,
        "actual": r.actual,
        "status": r.state,
        "last_result": r.last_result,
        "reason": r.reason,
    })
}

/// The matrix the manifest asks for on a portal that offers everything.
pub fn manifest_matrix(config: &Config) -> Vec<Value> {
    let probe = Probe {
        scopes: config
            .app
            .scopes
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .chain(["placement".to_owned()])
            .collect(),
        events: None,
        offline_extended: true,
        auth_connector: true,
    };
    reconcile::desired(config, &probe, &ReconcileOptions::default())
        .iter()
        .map(|d| {
            json!({
                "kind": d.key.kind,
                "event": d.key.name,
                "mode": d.key.mode,
                "handler": d.key.handler,
                "connector": d.key.connector,
                "owner": d.owner,
                "implicit": d.implicit,
                "needs": needs(d),
            })
        })
        .collect()
}

fn needs(d: &reconcile::Desired) -> String {
    let mut n = Vec::new();
    if d.key.mode == "offline" {
        n.push("rest_offline_extended");
    }
    if !d.key.connector.is_empty() {
        n.push("rest_auth_connector");
    }
    if d.key.kind == "placement" {
        n.push("scope placement");
    }
    n.join(", ")
}

fn markdown(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!(
        "| {} |\n|{}|\n",
        headers.join(" | "),
        headers.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
        s.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    s
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The markdown of `bindings --manifest --markdown` (also `docs/binding-matrix.md`).
pub fn manifest_markdown(config: &Config) -> String {
    let rows: Vec<Vec<String>> = manifest_matrix(config)
        .iter()
        .map(|r| {
            [
                "kind",
                "event",
                "mode",
                "handler",
                "connector",
                "owner",
                "implicit",
                "needs",
            ]
            .iter()
            .map(|k| cell(&r[*k]))
            .collect()
        })
        .collect();
    markdown(
        &[
            "kind",
            "event / code",
            "mode",
            "handler",
            "connector",
            "owner",
            "implicit",
            "needs",
        ],
        &rows,
    )
}

pub async fn bindings(
    config: &Config,
    store: Option<&Store>,
    portal: Option<&str>,
    manifest: bool,
    as_json: bool,
    as_markdown: bool,
) -> anyhow::Result<()> {
    if manifest {
        if as_markdown {
            print!("{}", manifest_markdown(config));
        } else if as_json {
            println!("{}", Value::Array(manifest_matrix(config)));
        } else {
            for r in manifest_matrix(config) {
                println!(
                    "{:<10} {:<24} {:<8} {:<45} {:<6} {}",
                    cell(&r["kind"]),
                    cell(&r["event"]),
                    cell(&r["mode"]),
                    cell(&r["handler"]),
                    cell(&r["owner"]),
                    cell(&r["needs"])
                );
            }
        }
        return Ok(());
    }
    let store = store.context("the binding matrix needs the database")?;
    let m = portal.map(member).transpose()?;
    let rows = store
        .binding_matrix(m.as_ref().map(MemberId::as_str))
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        let domain = store
            .get_portal(&r.member_id)
            .await?
            .map_or(r.member_id.clone(), |p| p.domain.as_str().to_owned());
        out.push(matrix_row(&domain, &r.record));
    }
    if as_json {
        println!("{}", Value::Array(out));
    } else if as_markdown {
        let cols = [
            "portal",
            "event",
            "mode",
            "handler",
            "owner",
            "expected",
            "actual",
            "status",
            "last_result",
        ];
        let rows: Vec<Vec<String>> = out
            .iter()
            .map(|r| cols.iter().map(|k| cell(&r[*k])).collect())
            .collect();
        print!("{}", markdown(&cols, &rows));
    } else {
        println!(
            "{:<28} {:<22} {:<8} {:<6} {:<5} {:<5} {:<14} last result",
            "portal", "event", "mode", "owner", "exp", "act", "status"
        );
        for r in &out {
            println!(
                "{:<28} {:<22} {:<8} {:<6} {:<5} {:<5} {:<14} {}",
                cell(&r["portal"]),
                cell(&r["event"]),
                cell(&r["mode"]),
                cell(&r["owner"]),
                cell(&r["expected"]),
                cell(&r["actual"]),
                cell(&r["status"]),
                cell(&r["last_result"])
            );
        }
    }
    Ok(())
}

async fn targets(store: &Store, portal: Option<&str>, all: bool) -> anyhow::Result<Vec<MemberId>> {
    match (portal, all) {
        (Some(p), _) => Ok(vec![member(p)?]),
        (None, true) => Ok(store
            .list_portals()
            .await?
            .into_iter()
            .filter(|p| p.status == PortalStatus::Installed)
            .map(|p| p.member_id)
            .collect()),
        (None, false) => Err(anyhow!("give --portal MEMBER_ID or --all")),
    }
}

pub async fn reconcile_cmd(
    ops: &Ops,
    portal: Option<&str>,
    all: bool,
    dry_run: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let portals = targets(&ops.store, portal, all).await?;
    let lc = ops.lifecycle();
    let progress = Progress::new("reconciled");
    let mut results = Vec::new();
    let mut failed = false;
    for (i, m) in portals.iter().enumerate() {
        let r = lc.bring_up(m, !dry_run).await;
        let entry = match r {
            Ok(up) => json!({"portal": m.as_str(), "ok": true, "dry_run": dry_run, "plan": up}),
            Err(e) => {
                failed = true;
                json!({"portal": m.as_str(), "ok": false, "error": format!("{e:?}")})
            }
        };
        if !as_json && !progress.tty {
            println!("{entry}");
        }
        results.push(entry);
        progress.tick(i + 1, Some(portals.len()));
    }
    progress.done();
    if as_json {
        println!("{}", Value::Array(results));
    } else if progress.tty {
        for r in &results {
            println!("{r}");
        }
    }
    if failed {
        return Err(anyhow!("some portals could not be reconciled"));
    }
    Ok(())
}

/// One doctor step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub step: u8,
    pub name: &'static str,
    /// `pass`, `fail` or `skip`.
    pub outcome: &'static str,
    pub evidence: String,
    pub next: String,
}

fn step(
    step: u8,
    name: &'static str,
    outcome: &'static str,
    evidence: impl Into<String>,
    next: impl Into<String>,
) -> Step {
    Step {
        step,
        name,
        outcome,
        evidence: evidence.into(),
        next: next.into(),
    }
}

/// The recovery playbook for one portal (`docs/recovery.md`).
pub async fn doctor_portal(ops: &Ops, m: &MemberId, fix: bool) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();
    let Some(portal) = ops.store.get_portal(m.as_str()).await? else {
        return Ok(vec![step(
            0,
            "portal known",
            "fail",
            "no such portal in the store",
            "install the app on the portal",
        )]);
    };
    let fix_cmd = format!("b24gate doctor --portal {} --fix", m.as_str());
    if !portal.status.allows_rest() {
        steps.push(step(
            1,
            "installation finished",
            "fail",
            format!("the portal is {}", portal.status),
            match portal.status {
                PortalStatus::NeedsReauth => {
                    "refresh token refused: reinstall the app or open it as an admin".to_owned()
                }
                _ => "reinstall the app on the portal".to_owned(),
            },
        ));
        for (n, name) in [
            (2, "handler reachable"),
            (3, "bindings present"),
            (4, "rebind missing"),
            (5, "token and profile consistent"),
        ] {
            steps.push(step(
                n,
                name,
                "skip",
                "no REST call for a portal that is not installed",
                "-",
            ));
        }
        return Ok(steps);
    }
    let pc = ops.client.portal(m);
    // (1) app.info INSTALLED
    match pc.call("app.info", json!({})).await {
        Ok(s) if s.result["INSTALLED"] == json!(true) => steps.push(step(
            1,
            "installation finished",
            "pass",
            "app.info INSTALLED = true",
            "-",
        )),
        Ok(s) => steps.push(step(
            1,
            "installation finished",
            "fail",
            format!("app.info INSTALLED = {}", s.result["INSTALLED"]),
            "an admin must open the app to finish the installer (installFinish)",
        )),
        Err(e) => steps.push(step(
            1,
            "installation finished",
            "fail",
            e.to_string(),
            "check the portal's status and tokens (step 5)",
        )),
    }
    // (2) handler reachable through the public URL
    let nonce = format!("{:016x}", now_ms() as u64 ^ 0x5bd1_e995);
    let url = format!(
        "{}/b24/ping?nonce={nonce}",
        ops.config.server.public_url.trim_end_matches('/')
    );
    let reach = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?
        .get(&url)
        .send()
        .await;
    match reach {
        Ok(r) => match r.json::<Value>().await {
            Ok(v) if v["nonce"] == json!(nonce) => steps.push(step(
                2,
                "handler reachable",
                "pass",
                format!("{url} answered with the nonce"),
                "-",
            )),
            Ok(v) => steps.push(step(
                2,
                "handler reachable",
                "fail",
                format!("{url} answered {v}"),
                "point server.public_url at this gateway",
            )),
            Err(e) => steps.push(step(
                2,
                "handler reachable",
                "fail",
                format!("{url}: {e}"),
                "point server.public_url at this gateway",
            )),
        },
        Err(e) => steps.push(step(
            2,
            "handler reachable",
            "fail",
            format!(
                "{}: {}",
                url.split('?').next().unwrap_or(""),
                e.without_url()
            ),
            "start `b24gate serve` and make server.public_url reach it",
        )),
    }
    // (3) bindings present
    let lc = ops.lifecycle();
    let plan = lc.bring_up(m, false).await;
    let missing = match &plan {
        Ok(up) => up.bound,
        Err(_) => usize::MAX,
    };
    match &plan {
        Ok(up) if up.bound == 0 => steps.push(step(
            3,
            "bindings present",
            "pass",
            format!(
                "event.get and placement.get match the manifest ({} unsatisfiable)",
                up.unsatisfiable
            ),
            "-",
        )),
        Ok(up) => steps.push(step(
            3,
            "bindings present",
            "fail",
            format!("{} missing binding(s)", up.bound),
            fix_cmd.clone(),
        )),
        Err(e) => steps.push(step(
            3,
            "bindings present",
            "fail",
            format!("{e:?}"),
            "see step 5",
        )),
    }
    // (4) rebind missing
    if missing == 0 {
        steps.push(step(4, "rebind missing", "skip", "nothing missing", "-"));
    } else if !fix {
        steps.push(step(
            4,
            "rebind missing",
            "skip",
            "not asked to fix",
            fix_cmd.clone(),
        ));
    } else {
        match lc.bring_up(m, true).await {
            Ok(up) if up.failed == 0 => steps.push(step(
                4,
                "rebind missing",
                "pass",
                format!("bound {}", up.bound),
                "-",
            )),
            Ok(up) => steps.push(step(
                4,
                "rebind missing",
                "fail",
                format!("{} bind(s) failed", up.failed),
                "see the binding matrix: b24gate bindings --portal",
            )),
            Err(e) => steps.push(step(
                4,
                "rebind missing",
                "fail",
                format!("{e:?}"),
                "see step 5",
            )),
        }
    }
    // (5) token and profile consistent
    let creds = ops.store.load_credentials(m.as_str()).await?;
    let check = match creds {
        None => Err("no stored credentials".to_owned()),
        Some(c) => match ops.client.oauth_app_info(&c.tokens.access).await {
            Ok(info) => {
                let same_member = info["install"]["member_id"].as_str() == Some(m.as_str());
                let same_domain = info["install"]["domain"]
                    .as_str()
                    .is_some_and(|d| d.eq_ignore_ascii_case(portal.domain.as_str()));
                let granted: std::collections::BTreeSet<String> = portal
                    .scopes
                    .iter()
                    .map(|s| s.as_str().to_owned())
                    .collect();
                let lacking: Vec<&String> = ops
                    .config
                    .app
                    .scopes
                    .iter()
                    .filter(|s| !granted.contains(&s.to_ascii_lowercase()))
                    .collect();
                if !same_member || !same_domain {
                    Err("the OAuth server's member_id/domain differ from the store".to_owned())
                } else if !lacking.is_empty() {
                    Err(format!("granted scopes lack {lacking:?}"))
                } else {
                    Ok(
                        "token valid at the OAuth server; member_id, domain and scopes match"
                            .to_owned(),
                    )
                }
            }
            Err(e) => Err(e.to_string()),
        },
    };
    match check {
        Ok(ev) => steps.push(step(5, "token and profile consistent", "pass", ev, "-")),
        Err(ev) => steps.push(step(
            5,
            "token and profile consistent",
            "fail",
            ev,
            "reinstall the app, or grant the scopes and reinstall",
        )),
    }
    Ok(steps)
}

pub async fn doctor(
    ops: &Ops,
    portal: Option<&str>,
    fix: bool,
    as_json: bool,
) -> anyhow::Result<bool> {
    let portals = match portal {
        Some(p) => vec![member(p)?],
        None => ops
            .store
            .list_portals()
            .await?
            .into_iter()
            .map(|p| p.member_id)
            .collect(),
    };
    let progress = Progress::new("checked");
    let mut all_ok = true;
    let mut report = Vec::new();
    for (i, m) in portals.iter().enumerate() {
        let steps = doctor_portal(ops, m, fix).await?;
        // A purged or uninstalled portal is not a failure of the gateway.
        let gone = matches!(
            ops.store.get_portal(m.as_str()).await?.map(|p| p.status),
            Some(PortalStatus::Uninstalled | PortalStatus::Purged)
        );
        let ok = gone || steps.iter().all(|s| s.outcome != "fail");
        all_ok &= ok;
        report.push(json!({"portal": m.as_str(), "ok": ok, "steps": steps}));
        progress.tick(i + 1, Some(portals.len()));
    }
    progress.done();
    if as_json {
        println!("{}", Value::Array(report));
    } else {
        for r in &report {
            println!(
                "portal {}: {}",
                cell(&r["portal"]),
                if r["ok"] == json!(true) {
                    "healthy"
                } else {
                    "PROBLEMS"
                }
            );
            for s in r["steps"].as_array().into_iter().flatten() {
                println!(
                    "  ({}) {:<30} {:<4}  {}{}",
                    s["step"],
                    cell(&s["name"]),
                    cell(&s["outcome"]),
                    cell(&s["evidence"]),
                    if s["next"] == json!("-") {
                        String::new()
                    } else {
                        format!("  → {}", cell(&s["next"]))
                    }
                );
            }
        }
    }
    Ok(all_ok)
}

pub async fn audit(
    store: &Store,
    portal: Option<&str>,
    since: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let m = portal.map(member).transpose()?;
    let since = since.map(parse_since).transpose()?;
    let rows = store
        .list_audit(&store::AuditFilter {
            member_id: m.as_ref().map(MemberId::as_str),
            since,
            ..Default::default()
        })
        .await?;
    if as_json {
        let v: Vec<Value> = rows
            .iter()
            .map(|e| json!({"id": e.id, "at": e.at, "member_id": e.member_id, "actor": e.actor, "action": e.action, "outcome": e.outcome, "detail": e.detail_json()}))
            .collect();
        println!("{}", Value::Array(v));
    } else {
        for e in rows {
            println!(
                "{} {} {:<10} {:<22} {:<8} {}",
                e.at,
                e.member_id.as_deref().unwrap_or("-"),
                e.actor,
                e.action,
                e.outcome,
                e.detail
            );
        }
    }
    Ok(())
}

pub async fn jobs_list(
    store: &Store,
    state: Option<&str>,
    portal: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let m = portal.map(member).transpose()?;
    let jobs = store
        .list_jobs(&store::JobFilter {
            state,
            member_id: m.as_ref().map(MemberId::as_str),
            ..Default::default()
        })
        .await?;
    if as_json {
        let v: Vec<Value> = jobs
            .iter()
            .map(|j| json!({"id": j.id, "kind": j.kind, "member_id": j.member_id, "state": j.state, "attempt": j.attempt, "max_attempts": j.max_attempts, "run_at": j.run_at, "last_error": j.last_error}))
            .collect();
        println!("{}", Value::Array(v));
    } else {
        for j in jobs {
            println!(
                "{:>6} {:<16} {:<10} {}/{} {}",
                j.id,
                j.kind,
                j.state,
                j.attempt,
                j.max_attempts,
                j.last_error.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Forwards a portal's stored events again, to the targets that own them.
pub async fn replay(
    config: &Config,
    store: &Store,
    portal: &str,
    since: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    let m = member(portal)?;
    let since = parse_since(since)?;
    let rows = store.inbox_since(m.as_str(), since, 1_000_000).await?;
    let now = now_ms();
    let schedule = engine::retry::RetrySchedule::forwarding();
    let mut n = 0;
    for row in &rows {
        let owners: Vec<String> = config
            .bindings
            .iter()
            .filter(|b| b.event.eq_ignore_ascii_case(&row.event))
            .filter_map(|b| b.owner.as_ref().map(|o| o.to_ascii_lowercase()))
            .collect();
        for target in owners {
            let payload = json!({"inbox_id": row.id, "target": target});
            let key = format!("replay:{}:{target}:{now}", row.id);
            store
                .enqueue_job(
                    &store::NewJob {
                        kind: engine::forward::FORWARD,
                        member_id: Some(m.as_str()),
                        serial_key: None,
                        unique_key: Some(&key),
                        calls_portal: false,
                        payload: &payload,
                        max_attempts: schedule.max_attempts(),
                        run_at: now,
                    },
                    now,
                )
                .await?;
            n += 1;
        }
    }
    if as_json {
        println!("{}", json!({"events": rows.len(), "forwards_queued": n}));
    } else {
        println!(
            "{} event(s), {n} forward(s) queued; a running `b24gate serve` delivers them",
            rows.len()
        );
    }
    Ok(())
}
