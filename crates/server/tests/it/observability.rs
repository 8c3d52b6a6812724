//! Health, status and metrics routes over HTTP: readiness checks, the admin
//! token on every route that shows fleet data, and the status page as a real
//! browser (headless Chromium) renders it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use server::IngestConfig;
use store::{BindingKey, BindingRecord, DrainUpdate, Keyring, NewJob, OpenOptions, Store};

use crate::helpers::{APP_TOKEN, Gate, MEMBER, event_body};

const ADMIN: &str = "observability-admin-token-0123456789";
const SICK: &str = "0123456789abcdef0123456789abcdef";

fn with_admin(state: &mut server::AppState) {
    let client = client::Client::webhooks_only(
        client::ClientConfig::default(),
        Arc::new(client::MemoryRateLimiter::new()),
        client::Clock::system(),
    )
    .unwrap();
    state.admin = Some(Arc::new(server::admin::Admin {
        token: Some(ADMIN.to_owned()),
        client,
    }));
    state.observe.target_names = vec!["app".into()];
}

async fn get(url: &str, bearer: Option<&str>) -> (u16, String) {
    let mut r = reqwest::Client::new().get(url);
    if let Some(t) = bearer {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn binding(name: &str, state: &str, actual: bool, reason: Option<&str>) -> BindingRecord {
    BindingRecord {
        key: BindingKey {
            kind: "event".into(),
            name: name.into(),
            mode: "online".into(),
            handler: "http://127.0.0.1:9/b24/events".into(),
            connector: String::new(),
        },
        auth_type: 0,
        owner: Some("app".into()),
        options: json!({}),
        expected: true,
        actual,
        state: state.into(),
        reason: reason.map(str::to_owned),
        last_result: None,
    }
}

#[tokio::test]
async fn readyz_needs_a_reachable_migrated_database_and_running_workers() {
    let g = Gate::start(IngestConfig::default()).await;
    let (s, body) = get(&format!("{}/readyz", g.url), None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s, 503, "no engine told it the workers run: {v}");
    assert_eq!(v["checks"]["workers"], "not running");
    assert_eq!(v["checks"]["database"], "ok");
    assert_eq!(v["checks"]["migrations"], "ok");

    g.state.observe.set_workers_running(true);
    let (s, body) = get(&format!("{}/readyz", g.url), None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["ready"], true);
    let (s, body) = get(&format!("{}/healthz", g.url), None).await;
    assert_eq!((s, body.as_str()), (200, "ok"));

    // The database goes away under a running server.
    g.store.close().await;
    let (s, body) = get(&format!("{}/readyz", g.url), None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["checks"]["database"], "unreachable");
    g.stop().await;

    // A database that was never migrated.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let fresh = Store::open(
        &url,
        Keyring::from_hex(&"42".repeat(32)).unwrap(),
        &OpenOptions::default(),
    )
    .await
    .unwrap();
    let pending = fresh.pending_migrations().await.unwrap();
    assert!(pending > 0);
    let state = server::AppState::new(fresh, IngestConfig::default());
    state.observe.set_workers_running(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, state, async move {
        let _ = rx.await;
    }));
    let (s, body) = get(&format!("http://{addr}/readyz"), None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s, 503, "{v}");
    assert_eq!(
        v["checks"]["migrations"],
        format!("{pending} pending: run b24gate migrate")
    );
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn status_and_metrics_refuse_a_wrong_token_and_leak_nothing() {
    let g = Gate::start_with(IngestConfig::default(), with_admin).await;
    g.install_portal(MEMBER, APP_TOKEN).await;
    for path in ["/v1/status", "/status", "/metrics"] {
        let url = format!("{}{path}", g.url);
        for (what, bearer, query) in [
            ("no token", None, ""),
            ("wrong bearer", Some("wrong-token"), ""),
            ("a prefix of the token", Some(&ADMIN[..10]), ""),
            ("wrong query token", None, "?token=wrong-token"),
        ] {
            let (s, body) = get(&format!("{url}{query}"), bearer).await;
            assert_eq!(s, 401, "{path} with {what}: {body}");
            for secret in [MEMBER, "acme.bitrix24.com", ADMIN, "b24gate_"] {
                assert!(
                    !body.contains(secret),
                    "{path} with {what} leaks {secret}: {body}"
                );
            }
        }
        let (s, body) = get(&url, Some(ADMIN)).await;
        assert_eq!(s, 200, "{path}: {body}");
    }
    // The query token is only for the page a browser opens.
    let (s, _) = get(&format!("{}/v1/status?token={ADMIN}", g.url), None).await;
    assert_eq!(s, 401);
    let (s, _) = get(&format!("{}/metrics?token={ADMIN}", g.url), None).await;
    assert_eq!(s, 401);
    let (s, body) = get(&format!("{}/status?token={ADMIN}", g.url), None).await;
    assert_eq!(s, 200);
    assert!(body.contains(MEMBER), "{body}");
    g.stop().await;

    // Without a configured token the routes are off, not open.
    let g = Gate::start(IngestConfig::default()).await;
    for path in ["/v1/status", "/status", "/metrics"] {
        let (s, body) = get(&format!("{}{path}", g.url), Some("anything")).await;
        assert_eq!(s, 503, "{path}: {body}");
    }
    g.stop().await;

    // `metrics_open` serves /metrics to anyone, and only /metrics.
    let g = Gate::start_with(IngestConfig::default(), |s| {
        with_admin(s);
        s.observe.metrics_open = true;
    })
    .await;
    let (s, body) = get(&format!("{}/metrics", g.url), None).await;
    assert_eq!(s, 200);
    assert!(body.contains("# TYPE b24gate_inbox_depth gauge"), "{body}");
    let (s, _) = get(&format!("{}/v1/status", g.url), None).await;
    assert_eq!(s, 401);
    g.stop().await;
}

/// A fleet with one healthy portal and one with a missing binding, an
/// offline reservation held for ten minutes and a dead letter.
async fn sick_fleet(g: &Gate) {
    g.install_portal(MEMBER, APP_TOKEN).await;
    g.install_portal(SICK, "61856fefc120afa4b628cc82d3935cce")
        .await;
    let now = now_ms();
    g.store
        .replace_bindings(
            MEMBER,
            &[
                binding("ONCRMDEALADD", "bound", true, None),
                binding("ONAPPUNINSTALL", "bound", true, None),
            ],
            now,
        )
        .await
        .unwrap();
    g.store
        .replace_bindings(
            SICK,
            &[
                binding(
                    "ONCRMDEALADD",
                    "missing",
                    false,
                    Some("dropped by the portal <script>alert(1)</script>"),
                ),
                binding("ONAPPUNINSTALL", "bound", true, None),
            ],
            now,
        )
        .await
        .unwrap();
    g.store
        .set_drain_process(
            &DrainUpdate {
                member_id: SICK,
                connector: "",
                process_id: Some("proc-1"),
                ..DrainUpdate::default()
            },
            now - 600_000,
        )
        .await
        .unwrap();
    let id = g
        .store
        .enqueue_job(
            &NewJob {
                kind: "forward",
                member_id: Some(SICK),
                serial_key: None,
                unique_key: None,
                calls_portal: false,
                payload: &json!({"inbox_id": 1, "target": "app"}),
                max_attempts: 1,
                run_at: now,
            },
            now,
        )
        .await
        .unwrap()
        .id();
    assert!(
        g.store
            .discard_job(id, "target kept failing", now)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn status_json_names_the_unhealthy_portal_and_its_fix() {
    let g = Gate::start_with(IngestConfig::default(), with_admin).await;
    sick_fleet(&g).await;
    let (s, body) = get(&format!("{}/v1/status", g.url), Some(ADMIN)).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["portals"]["total"], 2);
    assert_eq!(v["portals"]["by_status"]["installed"], 2);
    assert_eq!(v["bindings"]["by_state"]["bound"], 3);
    assert_eq!(v["bindings"]["by_state"]["missing"], 1);
    assert_eq!(v["jobs"]["by_state"]["discarded"], 1);
    assert_eq!(v["dead_letters"]["by_target"]["app"], 1);
    assert_eq!(v["inbox_depth"], 0);
    let drain = &v["offline"][0];
    assert_eq!(drain["member_id"], SICK);
    assert!(drain["lag_seconds"].as_i64().unwrap() >= 600, "{drain}");
    let sick = v["unhealthy_portals"].as_array().unwrap();
    assert_eq!(sick.len(), 1, "{v}");
    assert_eq!(sick[0]["member_id"], SICK);
    let problems = sick[0]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 3, "missing binding, lag, dead letter: {v}");
    assert!(
        problems[0]["problem"]
            .as_str()
            .unwrap()
            .contains("ONCRMDEALADD (online) is missing")
    );
    assert_eq!(
        problems[0]["fix"],
        format!("b24gate doctor --portal {SICK} --fix")
    );
    assert_eq!(v["targets"]["app"]["healthy"], true);
    assert_eq!(v["auth_failures"]["since_start"]["bad_token"], 0);

    // A forged uninstall for a known portal: counted, and audited.
    let forged = event_body(
        "ONAPPUNINSTALL",
        MEMBER,
        "forged0000000000000000000000000",
        &g.trap_url,
        json!({"CLEAN": "1"}),
        false,
    );
    let (s, _) = g.post("/b24/events", forged).await;
    assert_eq!(s, 401);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (_, body) = get(&format!("{}/v1/status", g.url), Some(ADMIN)).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        if !v["auth_failures"]["rejected_24h"]
            .as_array()
            .unwrap()
            .is_empty()
        {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no audit entry: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(v["auth_failures"]["since_start"]["bad_token"], 1);
    let entry = &v["auth_failures"]["rejected_24h"][0];
    assert_eq!(entry["action"], "event.forged", "{v}");
    assert_eq!(entry["member_id"], MEMBER);
    assert_eq!(entry["detail"]["event"], "ONAPPUNINSTALL");
    assert!(
        !v.to_string().contains("forged0000"),
        "no token echoed: {v}"
    );
    g.stop().await;
}

/// The headless browser; `.ci/run` installs Debian's `chromium`, so a
/// missing one fails the test instead of skipping it.
fn chromium() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed: the status page test needs a headless browser \
             (`apt-get install -y chromium`; .ci/run installs it)"
        )
    })
}

/// Runs headless Chromium on `url` with `args`, in a fresh profile, and
/// returns its stdout. Fails after a minute.
async fn run_chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium did not finish within 60 s")
        .expect("chromium could not be started");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `<tr>` of the portal `member` in the dumped DOM.
fn portal_row<'a>(dom: &'a str, member: &str) -> &'a str {
    let start = dom
        .find(&format!("data-member-id=\"{member}\""))
        .unwrap_or_else(|| panic!("no row for {member} in {dom}"));
    let start = dom[..start].rfind("<tr").unwrap();
    let end = start + dom[start..].find("</tr>").unwrap();
    &dom[start..end]
}

#[tokio::test]
async fn status_page_in_headless_chromium_shows_the_missing_binding_and_its_fix() {
    let g = Gate::start_with(IngestConfig::default(), with_admin).await;
    sick_fleet(&g).await;
    let url = format!("{}/status?token={ADMIN}", g.url);

    let dom = run_chromium(&url, &["--dump-dom"]).await;
    assert!(dom.contains("<title>b24gate status</title>"), "{dom}");
    assert!(
        dom.contains("<span id=\"unhealthy-count\">1</span>"),
        "{dom}"
    );
    let sick = portal_row(&dom, SICK);
    assert!(sick.contains("class=\"portal unhealthy\""), "{sick}");
    assert!(
        sick.contains("<td class=\"health\">unhealthy</td>"),
        "{sick}"
    );
    assert!(sick.contains("1/2 bound"), "{sick}");
    assert!(
        sick.contains("event ONCRMDEALADD (online) is missing"),
        "{sick}"
    );
    assert!(
        sick.contains(&format!(
            "<code class=\"fix\">b24gate doctor --portal {SICK} --fix</code>"
        )),
        "{sick}"
    );
    assert!(sick.contains("has held a reservation for"), "{sick}");
    assert!(sick.contains("dead-lettered deliveries: 1"), "{sick}");
    // The portal's text stayed text: no script element was created.
    assert!(
        sick.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{sick}"
    );
    assert!(!dom.contains("<script"), "{dom}");
    let healthy = portal_row(&dom, MEMBER);
    assert!(healthy.contains("class=\"portal healthy\""), "{healthy}");
    assert!(healthy.contains("2/2 bound"), "{healthy}");
    assert!(!healthy.contains("doctor"), "{healthy}");
    assert!(dom.contains("b24gate jobs retry &lt;id&gt;"), "{dom}");

    let shots = tempfile::tempdir().unwrap();
    let png = shots.path().join("status.png");
    run_chromium(
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
        ],
    )
    .await;
    assert_png(&png);
    g.stop().await;
}

/// A PNG of the window's size with more than a blank page's worth of data.
fn assert_png(path: &Path) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 900));
    assert!(
        bytes.len() > 20_000,
        "the screenshot is {} bytes: a blank page?",
        bytes.len()
    );
}

#[tokio::test]
async fn portal_label_is_opt_in() {
    let g = Gate::start_with(IngestConfig::default(), with_admin).await;
    sick_fleet(&g).await;
    let (s, text) = get(&format!("{}/metrics", g.url), Some(ADMIN)).await;
    assert_eq!(s, 200);
    assert!(!text.contains("portal=\""), "{text}");
    assert!(!text.contains(SICK), "{text}");
    assert!(text.contains("\nb24gate_bindings_missing 1\n"), "{text}");
    assert!(text.contains("\nb24gate_portals_unhealthy 1\n"), "{text}");
    g.stop().await;

    let g = Gate::start_with(IngestConfig::default(), |s| {
        with_admin(s);
        s.observe.portal_label = true;
    })
    .await;
    sick_fleet(&g).await;
    let (_, text) = get(&format!("{}/metrics", g.url), Some(ADMIN)).await;
    assert!(
        text.contains(&format!(
            "\nb24gate_portal_bindings{{portal=\"{SICK}\",state=\"missing\"}} 1\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\nb24gate_portal_bindings{{portal=\"{MEMBER}\",state=\"bound\"}} 2\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "b24gate_portal_offline_lag_seconds{{portal=\"{SICK}\",connector=\"\"}} 6"
        )),
        "ten minutes of lag: {text}"
    );
    g.stop().await;
}
