//! `b24gate demo`: the whole lifecycle on the embedded default, with no
//! portal and no network. An in-process b24emu farm stands in for Bitrix24
//! and its OAuth server; a small receiver stands in for the app; two
//! gateways (one per install flow: an app is either an install-callback app
//! or an installer-page app) run on fresh SQLite files. Every stage checks
//! what it did and the report says so; the exit status is 0 only if every
//! stage checked out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use b24emu::{
    AppKind, AppSpec, ChangeSpec, ConfirmSpec, Emulator, EmulatorConfig, InstallSpec, PortalSpec,
    UninstallSpec,
};
use engine::{Config, EngineOptions};
use serde_json::{Value, json};
use store::{Keyring, OpenOptions, PortalStatus, Store};

use crate::gateway::{Gateway, GatewayOptions};

/// One stage's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stage {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub millis: u128,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub ok: bool,
    pub stages: Vec<Stage>,
    pub bindings: Vec<Value>,
    pub events: BTreeMap<String, u64>,
    pub audit: Vec<String>,
    pub metrics: BTreeMap<String, u64>,
    /// Jobs waiting to retry or dead-lettered when the demo ended.
    pub problems: Vec<String>,
}

const ADMIN: &str = "demo-admin-token";
const SIGNING: &str = "whsec_ZGVtby1zaWduaW5nLWtleS0wMTIzNDU2Nzg5";

const MANIFEST: &str = r#"
[[binding]]
event = "ONCRMDEALADD"
owner = "app"
[[binding]]
event = "ONCRMDEALUPDATE"
mode = "offline"
owner = "app"
[[placement]]
code = "CRM_DEAL_DETAIL_TAB"
handler = "https://app.example.com/deal-tab"
title = "Deal tab"
[uninstall]
on_clean = "purge"
on_keep = "retain 30d"
"#;

const V2_EXTRA: &str = r#"
[[binding]]
event = "ONCRMDEALDELETE"
owner = "app"
[[migration]]
version = 2
id = "deal-tab-on"
steps = [{ method = "app.option.set", params = { options = { deal_tab = "on" } } }]
"#;

/// Events the app received, by webhook id (deduplicated as an app would).
#[derive(Clone, Default)]
struct Receiver {
    events: Arc<Mutex<BTreeMap<String, Value>>>,
    bad_signatures: Arc<AtomicU64>,
}

impl Receiver {
    async fn start() -> anyhow::Result<(Receiver, String)> {
        let r = Receiver::default();
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(r.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hooks", l.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Ok((r, url))
    }

    fn count(&self, event: &str, source: Option<&str>) -> usize {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events
            .values()
            .filter(|v| v["event"] == event && source.is_none_or(|s| v["source"] == s))
            .count()
    }
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Receiver>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::http::StatusCode {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let expected =
        engine::forward::SigningKey::parse(SIGNING).sign(&id, ts.parse().unwrap_or(0), &body);
    if sig != expected {
        r.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return axum::http::StatusCode::UNAUTHORIZED;
    }
    if let Ok(v) = serde_json::from_str::<Value>(&body) {
        r.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, v);
    }
    axum::http::StatusCode::OK
}

/// One gateway of the demo with what it takes to restart it.
struct Gate {
    gateway: Option<Gateway>,
    store: Store,
    url: String,
    client_id: String,
    client_secret: String,
    installer: bool,
}

struct Farm {
    emu: Emulator,
    receiver: Receiver,
    hook_url: String,
    _dir: tempfile::TempDir,
}

fn engine_options() -> EngineOptions {
    let mut o = EngineOptions::default();
    o.runner.poll = Duration::from_millis(20);
    o.dispatch_every = Duration::from_millis(20);
    o.housekeeping_every = Duration::from_millis(200);
    o.forward_schedule =
        engine::retry::RetrySchedule::new(vec![Duration::from_millis(200); 10], 0.2);
    o
}

impl Farm {
    fn config(
        &self,
        gate: &Gate,
        manifest: &str,
        version: i64,
    ) -> anyhow::Result<(Config, engine::Secrets)> {
        let text = format!(
            r#"
[server]
public_url = "{url}"
allow_insecure_http = true
[app]
client_id = "{client_id}"
version = {version}
scopes = ["crm", "placement", "user_brief", "telephony"]
oauth_url = "{oauth}"
allowed_domains = ["127.0.0.1", "*.localhost"]
installer = {installer}
[offline]
drain_every = "2s"
[[target]]
name = "app"
url = "{hook}"
{manifest}
"#,
            url = gate.url,
            client_id = gate.client_id,
            oauth = self.emu.oauth_url(),
            installer = gate.installer,
            hook = self.hook_url,
        );
        let env = vec![
            (
                "B24GATE_APP_CLIENT_SECRET".to_owned(),
                gate.client_secret.clone(),
            ),
            ("B24GATE_TARGET_APP_SECRET".to_owned(), SIGNING.to_owned()),
            ("B24GATE_ADMIN_TOKEN".to_owned(), ADMIN.to_owned()),
        ];
        Ok(Config::load(&text, env)?)
    }

    async fn gate(&self, name: &str, installer: bool) -> anyhow::Result<Gate> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = self.emu.create_app(AppSpec {
            client_id: None,
            client_secret: None,
            scopes: ["crm", "placement", "user_brief", "telephony"]
                .map(String::from)
                .into(),
            version: Some(1),
            install_url: format!("{url}/b24/install"),
            installer,
            kind: AppKind::Local,
            update_event: None,
        })?;
        let db = format!(
            "sqlite://{}",
            self._dir.path().join(format!("{name}.db")).display()
        );
        let (keys, _) = Keyring::generate()?;
        let store = Store::open(&db, keys, &OpenOptions::default()).await?;
        store.migrate().await?;
        let mut gate = Gate {
            gateway: None,
            store,
            url,
            client_id: app.client_id,
            client_secret: app.client_secret,
            installer,
        };
        self.start(&mut gate, MANIFEST, 1, Some(listener)).await?;
        Ok(gate)
    }

    async fn start(
        &self,
        gate: &mut Gate,
        manifest: &str,
        version: i64,
        listener: Option<tokio::net::TcpListener>,
    ) -> anyhow::Result<()> {
        if let Some(g) = gate.gateway.take() {
            g.shutdown().await;
        }
        let listener = match listener {
            Some(l) => l,
            None => tokio::net::TcpListener::bind(gate.url.trim_start_matches("http://")).await?,
        };
        let (config, secrets) = self.config(gate, manifest, version)?;
        gate.gateway = Some(
            Gateway::start(
                Arc::new(config),
                &secrets,
                gate.store.clone(),
                listener,
                GatewayOptions {
                    engine: engine_options(),
                    ..GatewayOptions::default()
                },
            )
            .await?,
        );
        Ok(())
    }
}

async fn wait<F, Fut>(what: &str, within: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        if Instant::now() > deadline {
            return Err(anyhow!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

async fn status_is(store: &Store, m: &str, want: PortalStatus) -> anyhow::Result<()> {
    wait(
        &format!("portal {m} to be {want}"),
        Duration::from_secs(20),
        || async { matches!(store.get_portal(m).await, Ok(Some(p)) if p.status == want) },
    )
    .await
}

fn change(action: &str, count: u64) -> ChangeSpec {
    ChangeSpec {
        entity: "deal".into(),
        action: action.into(),
        count,
        user_id: 1,
        id: None,
        client_id: None,
        auth_connector: String::new(),
        fields: Default::default(),
    }
}

async fn bound(store: &Store, m: &str, name: &str) -> anyhow::Result<bool> {
    Ok(store
        .binding_matrix(Some(m))
        .await?
        .iter()
        .any(|r| r.record.key.name == name && r.record.state == "bound"))
}

async fn proxy(gate: &Gate, m: &str, method: &str, params: Value) -> anyhow::Result<(u16, Value)> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/portals/{m}/rest/{method}", gate.url))
        .bearer_auth(ADMIN)
        .json(&params)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

async fn pending_state(gate: &Gate, id: i64) -> anyhow::Result<String> {
    let r = reqwest::Client::new()
        .get(format!("{}/v1/pending/{id}", gate.url))
        .bearer_auth(ADMIN)
        .send()
        .await?;
    let v: Value = r.json().await?;
    Ok(v["state"].as_str().unwrap_or_default().to_owned())
}

/// Runs every stage; the report says what happened.
pub async fn run() -> anyhow::Result<Report> {
    engine::install_tls_provider();
    let dir = tempfile::tempdir().context("temporary directory")?;
    let emu = Emulator::start(EmulatorConfig::default()).await?;
    let (receiver, hook_url) = Receiver::start().await?;
    let farm = Farm {
        emu,
        receiver,
        hook_url,
        _dir: dir,
    };
    let mut stages = Vec::new();
    let mut a = farm.gate("callback-app", false).await?;
    let b = farm.gate("wizard-app", true).await?;
    let emu = &farm.emu;
    let alpha = emu.create_portal(PortalSpec {
        name: Some("alpha".into()),
        features: vec!["rest_offline_extended".into()],
        ..PortalSpec::default()
    })?;
    let beta = emu.create_portal(PortalSpec {
        name: Some("beta".into()),
        features: vec!["rest_offline_extended".into()],
        ..PortalSpec::default()
    })?;
    let gamma = emu.create_portal(PortalSpec {
        name: Some("gamma".into()),
        features: vec!["rest_offline_extended".into()],
        ..PortalSpec::default()
    })?;
    let spec = |g: &Gate| InstallSpec {
        client_id: g.client_id.clone(),
        ..InstallSpec::default()
    };

    macro_rules! stage {
        ($name:expr, $body:expr) => {{
            let started = Instant::now();
            let result: anyhow::Result<String> = async { $body }.await;
            let (ok, detail) = match result {
                Ok(d) => (true, d),
                Err(e) => (false, format!("{e:#}")),
            };
            stages.push(Stage {
                name: $name.to_owned(),
                ok,
                detail,
                millis: started.elapsed().as_millis(),
            });
        }};
    }

    stage!("install (flow A: ONAPPINSTALL)", {
        for p in [&alpha, &beta] {
            emu.install(&p.member_id, spec(&a))?;
        }
        for p in [&alpha, &beta] {
            status_is(&a.store, &p.member_id, PortalStatus::Installed).await?;
        }
        let p = a
            .store
            .get_portal(&alpha.member_id)
            .await?
            .context("portal")?;
        Ok(format!(
            "alpha and beta verified with the OAuth server and installed; flow {}, version {:?}",
            p.install_flow.unwrap_or_default(),
            p.installed_version
        ))
    });
    stage!("install (flow B: installer page)", {
        emu.install(&gamma.member_id, spec(&b))?;
        status_is(&b.store, &gamma.member_id, PortalStatus::Installed).await?;
        let before = b
            .store
            .get_portal(&gamma.member_id)
            .await?
            .context("portal")?
            .generation;
        emu.install_finish(&gamma.member_id, spec(&b))?;
        let store = b.store.clone();
        let m = gamma.member_id.clone();
        wait(
            "the ONAPPINSTALL that installFinish fires",
            Duration::from_secs(20),
            || async { matches!(store.get_portal(&m).await, Ok(Some(p)) if p.generation > before) },
        )
        .await?;
        Ok("gamma: installer POST verified, set up, then installFinish; its ONAPPINSTALL taken idempotently".into())
    });
    stage!("probe and bind", {
        let p = a
            .store
            .get_portal(&alpha.member_id)
            .await?
            .context("portal")?;
        if p.profile["features"]["rest_offline_extended"] != json!(true) {
            return Err(anyhow!("probe missed rest_offline_extended"));
        }
        for name in [
            "ONCRMDEALADD",
            "ONCRMDEALUPDATE",
            "ONAPPUNINSTALL",
            "CRM_DEAL_DETAIL_TAB",
        ] {
            if !bound(&a.store, &alpha.member_id, name).await? {
                return Err(anyhow!("{name} not bound"));
            }
        }
        let emu_state = emu.portal_state(&alpha.member_id)?.to_string();
        if !emu_state.contains("ONCRMDEALADD") || !emu_state.contains("CRM_DEAL_DETAIL_TAB") {
            return Err(anyhow!("the portal does not have the bindings"));
        }
        Ok(format!(
            "scopes {:?}; events and placement bound on the portal",
            p.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>()
        ))
    });
    stage!("online events", {
        emu.changes(&alpha.member_id, change("add", 5))?;
        let r = farm.receiver.clone();
        wait(
            "5 online deal events at the app",
            Duration::from_secs(20),
            || async { r.count("ONCRMDEALADD", Some("online")) >= 5 },
        )
        .await?;
        Ok(
            "5 ONCRMDEALADD verified, stored, forwarded with a valid Standard Webhooks signature"
                .into(),
        )
    });
    stage!("offline events", {
        emu.changes(&alpha.member_id, change("update", 5))?;
        let r = farm.receiver.clone();
        wait(
            "5 offline updates at the app",
            Duration::from_secs(20),
            || async { r.count("ONCRMDEALUPDATE", Some("offline")) >= 5 },
        )
        .await?;
        let q = emu.portal_state(&alpha.member_id)?["apps"][0]["offline_queue"]["size"].clone();
        if q != json!(0) {
            return Err(anyhow!("the portal's offline queue still holds {q}"));
        }
        let d = a
            .store
            .drain_state(&alpha.member_id, "")
            .await?
            .context("drain state")?;
        Ok(format!(
            "drained with clear=0 and process_id; {} stored then cleared; queue empty",
            d.drained_total
        ))
    });
    stage!("update with version drift and a migration", {
        farm.start(&mut a, &format!("{MANIFEST}{V2_EXTRA}"), 2, None)
            .await?;
        for p in [&alpha, &beta] {
            let store = a.store.clone();
            let m = p.member_id.clone();
            wait("version 2", Duration::from_secs(20), || async {
                matches!(store.get_portal(&m).await, Ok(Some(p)) if p.installed_version == Some(2))
            })
            .await?;
        }
        if !bound(&a.store, &alpha.member_id, "ONCRMDEALDELETE").await? {
            return Err(anyhow!("the new binding is missing"));
        }
        let opt = emu.portal_state(&alpha.member_id)?["apps"][0]["options"]["deal_tab"].clone();
        if opt != json!("on") {
            return Err(anyhow!("migration not applied: {opt}"));
        }
        Ok("no ONAPPUPDATE needed: drift found, re-probed, new binding bound, migration deal-tab-on applied once".into())
    });
    stage!("method confirmation (allowed)", {
        let (s, v) = proxy(
            &a,
            &alpha.member_id,
            "voximplant.user.get",
            json!({"USER_ID": 1}),
        )
        .await?;
        if s != 202 {
            return Err(anyhow!("expected 202, got {s}: {v}"));
        }
        let id = v["pending_call_id"].as_i64().context("pending id")?;
        emu.confirm(
            &alpha.member_id,
            ConfirmSpec {
                client_id: a.client_id.clone(),
                method: "voximplant.user.get".into(),
                confirmed: true,
            },
        )?;
        wait(
            "the parked call to run",
            Duration::from_secs(20),
            || async { pending_state(&a, id).await.is_ok_and(|s| s == "done") },
        )
        .await?;
        Ok(format!(
            "parked as call {id} (202), ran with the same token after ONAPPMETHODCONFIRM"
        ))
    });
    stage!("method confirmation (denied)", {
        let (s, v) = proxy(&a, &beta.member_id, "voximplant.user.get", json!({})).await?;
        if s != 202 {
            return Err(anyhow!("expected 202, got {s}: {v}"));
        }
        let id = v["pending_call_id"].as_i64().context("pending id")?;
        emu.confirm(
            &beta.member_id,
            ConfirmSpec {
                client_id: a.client_id.clone(),
                method: "voximplant.user.get".into(),
                confirmed: false,
            },
        )?;
        wait(
            "the parked call to be denied",
            Duration::from_secs(20),
            || async { pending_state(&a, id).await.is_ok_and(|s| s == "denied") },
        )
        .await?;
        Ok(format!("call {id} marked denied; the app was told"))
    });
    stage!("uninstall CLEAN=0", {
        emu.uninstall(
            &alpha.member_id,
            UninstallSpec {
                client_id: a.client_id.clone(),
                clean: false,
            },
        )?;
        status_is(&a.store, &alpha.member_id, PortalStatus::Uninstalled).await?;
        let before = emu.stats()["requests"].as_u64().unwrap_or(0);
        let (s, _) = proxy(&a, &alpha.member_id, "scope", json!({})).await?;
        let after = emu.stats()["requests"].as_u64().unwrap_or(0);
        if s != 409 || after != before {
            return Err(anyhow!("a REST call was attempted after uninstall"));
        }
        Ok(
            "alpha uninstalled, tokens dropped, data retained 30 days; REST refused without a call"
                .into(),
        )
    });
    stage!("uninstall CLEAN=1", {
        emu.uninstall(
            &beta.member_id,
            UninstallSpec {
                client_id: a.client_id.clone(),
                clean: true,
            },
        )?;
        status_is(&a.store, &beta.member_id, PortalStatus::Purged).await?;
        let audit = a
            .store
            .list_audit(&store::AuditFilter {
                member_id: Some(&beta.member_id),
                ..Default::default()
            })
            .await?;
        Ok(format!(
            "beta purged; its audit log kept ({} entries)",
            audit.len()
        ))
    });
    stage!("reinstall", {
        emu.reinstall(&alpha.member_id, spec(&a))?;
        status_is(&a.store, &alpha.member_id, PortalStatus::Installed).await?;
        if !bound(&a.store, &alpha.member_id, "ONCRMDEALADD").await? {
            return Err(anyhow!("bindings not recreated"));
        }
        let before = farm.receiver.count("ONCRMDEALADD", None);
        emu.changes(&alpha.member_id, change("add", 1))?;
        let r = farm.receiver.clone();
        wait(
            "an event after reinstall",
            Duration::from_secs(20),
            || async { r.count("ONCRMDEALADD", None) > before },
        )
        .await?;
        let p = a
            .store
            .get_portal(&alpha.member_id)
            .await?
            .context("portal")?;
        Ok(format!(
            "alpha reinstalled (generation {}): new token, bindings recreated, events flow",
            p.generation
        ))
    });

    let mut bindings = Vec::new();
    for (gate, name) in [(&a, "callback-app"), (&b, "wizard-app")] {
        for r in gate.store.binding_matrix(None).await? {
            let portal = gate
                .store
                .get_portal(&r.member_id)
                .await?
                .map(|p| p.domain.as_str().to_owned());
            bindings.push(json!({
                "app": name,
                "portal": portal.unwrap_or(r.member_id),
                "kind": r.record.key.kind,
                "name": r.record.key.name,
                "mode": r.record.key.mode,
                "handler": r.record.key.handler,
                "owner": r.record.owner,
                "state": r.record.state,
            }));
        }
    }
    let mut events = BTreeMap::new();
    for v in farm
        .receiver
        .events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
    {
        let key = format!(
            "{} ({})",
            v["event"].as_str().unwrap_or("?"),
            v["source"].as_str().unwrap_or("?")
        );
        *events.entry(key).or_insert(0u64) += 1;
    }
    let mut audit = Vec::new();
    for e in a.store.list_audit(&store::AuditFilter::default()).await? {
        audit.push(format!(
            "{} {} {} {}",
            e.member_id.as_deref().map_or("-", |m| &m[..8]),
            e.action,
            e.outcome,
            e.detail
        ));
    }
    let mut metrics = BTreeMap::new();
    for gate in [&a, &b] {
        if let Some(g) = &gate.gateway {
            for (event, outcome, n) in g.stats.snapshot() {
                let _ = event;
                *metrics
                    .entry(format!("ingest_{}", outcome.as_str()))
                    .or_insert(0) += n;
            }
            let s = g.client.stats();
            *metrics.entry("rest_requests".into()).or_insert(0) += s.requests;
        }
        for (state, n) in gate.store.job_counts().await? {
            *metrics.entry(format!("jobs_{state}")).or_insert(0) += n as u64;
        }
    }
    metrics.insert(
        "bad_signatures".into(),
        farm.receiver.bad_signatures.load(Ordering::SeqCst),
    );
    let mut problems = Vec::new();
    for gate in [&a, &b] {
        for state in ["retryable", "discarded"] {
            for j in gate
                .store
                .list_jobs(&store::JobFilter {
                    state: Some(state),
                    ..Default::default()
                })
                .await?
            {
                problems.push(format!(
                    "job {} {} ({state}, attempt {}): {}",
                    j.id,
                    j.kind,
                    j.attempt,
                    j.last_error.unwrap_or_default()
                ));
            }
        }
    }
    let ok =
        stages.iter().all(|s| s.ok) && farm.receiver.bad_signatures.load(Ordering::SeqCst) == 0;
    for mut g in [a, b] {
        if let Some(gw) = g.gateway.take() {
            gw.shutdown().await;
        }
        g.store.close().await;
    }
    farm.emu.shutdown().await;
    Ok(Report {
        ok,
        stages,
        bindings,
        events,
        audit,
        metrics,
        problems,
    })
}

/// The report as text for a terminal.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    out.push_str("b24gate demo — every lifecycle stage against an emulated Bitrix24 farm\n\n");
    out.push_str("Stages\n");
    for s in &r.stages {
        out.push_str(&format!(
            "  [{}] {:<44} {:>5} ms  {}\n",
            if s.ok { "ok" } else { "FAIL" },
            s.name,
            s.millis,
            s.detail
        ));
    }
    out.push_str("\nBinding matrix\n");
    out.push_str(&format!(
        "  {:<13} {:<22} {:<10} {:<22} {:<8} {:<6} {}\n",
        "app", "portal", "kind", "name", "mode", "owner", "state"
    ));
    for b in &r.bindings {
        out.push_str(&format!(
            "  {:<13} {:<22} {:<10} {:<22} {:<8} {:<6} {}\n",
            b["app"].as_str().unwrap_or(""),
            b["portal"].as_str().unwrap_or(""),
            b["kind"].as_str().unwrap_or(""),
            b["name"].as_str().unwrap_or(""),
            b["mode"].as_str().unwrap_or(""),
            b["owner"].as_str().unwrap_or("-"),
            b["state"].as_str().unwrap_or(""),
        ));
    }
    out.push_str("\nEvents delivered to the app\n");
    for (k, n) in &r.events {
        out.push_str(&format!("  {k:<40} {n}\n"));
    }
    out.push_str("\nAudit log (callback app, last 15)\n");
    for a in r
        .audit
        .iter()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let line: String = a.chars().take(150).collect();
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str("\nMetrics\n");
    for (k, v) in &r.metrics {
        out.push_str(&format!("  {k:<28} {v}\n"));
    }
    if !r.problems.is_empty() {
        out.push_str("\nJobs not done\n");
        for p in &r.problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out.push_str(&format!(
        "\n{}\n",
        if r.ok {
            "All stages checked out."
        } else {
            "Some stages FAILED."
        }
    ));
    out
}
