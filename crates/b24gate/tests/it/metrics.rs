//! `/metrics` of a whole gateway after a mixed run against b24emu: accepted,
//! duplicate, forged, unknown-portal and malformed deliveries, forwards to
//! the app, an offline drain, REST calls and a dead letter. Every family of
//! `docs/metrics.md` is present and equals its source.

use std::collections::HashMap;
use std::time::Duration;

use b24emu::ChangeSpec;
use store::PortalStatus;

use crate::harness::{ADMIN_TOKEN, World};

const MANIFEST: &str = r#"
[[binding]]
event = "ONCRMDEALADD"
owner = "app"
[[binding]]
event = "ONCRMDEALUPDATE"
mode = "offline"
owner = "app"
"#;

/// Every family `docs/metrics.md` documents.
const FAMILIES: [(&str, &str); 32] = [
    ("b24gate_events_received_total", "counter"),
    ("b24gate_ingest_ack_duration_seconds", "histogram"),
    ("b24gate_inbox_depth", "gauge"),
    ("b24gate_jobs", "gauge"),
    ("b24gate_forward_attempts_total", "counter"),
    ("b24gate_forward_failures_total", "counter"),
    ("b24gate_forward_target_up", "gauge"),
    ("b24gate_forward_dead_letters", "gauge"),
    ("b24gate_offline_lag_seconds", "gauge"),
    ("b24gate_offline_reservations_open", "gauge"),
    ("b24gate_offline_drained_total", "counter"),
    ("b24gate_offline_error_marked_total", "counter"),
    ("b24gate_rest_requests_total", "counter"),
    ("b24gate_rest_limit_errors_total", "counter"),
    ("b24gate_rest_retries_total", "counter"),
    ("b24gate_rest_calls_total", "counter"),
    ("b24gate_rest_breaker_trips_total", "counter"),
    ("b24gate_rest_breaker_refusals_total", "counter"),
    ("b24gate_rest_renames_total", "counter"),
    ("b24gate_oauth_refreshes_total", "counter"),
    ("b24gate_oauth_refresh_failures_total", "counter"),
    ("b24gate_oauth_reauth_marked_total", "counter"),
    ("b24gate_bindings_expected", "gauge"),
    ("b24gate_bindings_actual", "gauge"),
    ("b24gate_bindings_missing", "gauge"),
    ("b24gate_bindings_unsatisfiable", "gauge"),
    ("b24gate_bindings", "gauge"),
    ("b24gate_portals", "gauge"),
    ("b24gate_portals_unhealthy", "gauge"),
    // Opt-in families stay off by default: checked absent below.
    ("b24gate_portal_offline_lag_seconds", "-"),
    ("b24gate_portal_offline_error_marked_total", "-"),
    ("b24gate_portal_bindings", "-"),
];

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

/// `series → value` of an exposition (`name{labels}` as written).
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse::<f64>().unwrap())
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {m:#?}"))
}

/// Everything `/metrics` derives from, read in one go.
#[derive(Debug, PartialEq)]
struct Sources {
    jobs: Vec<(String, i64)>,
    inbox: i64,
    drains: Vec<store::DrainState>,
    client: client::ClientStats,
    targets: Vec<(String, engine::forward::TargetHealth)>,
    events: Vec<(String, server::IngestOutcome, u64)>,
}

async fn sources(w: &World) -> Sources {
    let g = w.gate.as_ref().unwrap();
    let mut targets: Vec<_> = g.target_health().into_iter().collect();
    targets.sort_by(|a, b| a.0.cmp(&b.0));
    Sources {
        jobs: w.store.job_counts().await.unwrap(),
        inbox: w.store.inbox_depth().await.unwrap(),
        drains: w.store.drain_states().await.unwrap(),
        client: g.client.stats(),
        targets,
        events: g.stats.snapshot(),
    }
}

async fn scrape(url: &str, token: Option<&str>) -> (u16, String) {
    let mut r = reqwest::Client::new().get(format!("{url}/metrics"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post(url: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(format!("{url}/b24/events"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The value of `field` in a form body.
fn form_field<'a>(body: &'a str, field: &str) -> &'a str {
    body.split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        .unwrap_or_else(|| panic!("no {field} in {body}"))
}

#[tokio::test]
async fn metrics_after_a_mixed_run_show_every_family_with_its_value() {
    let w = World::start(MANIFEST, false).await;
    let p = w.portal("acme", &["rest_offline_extended"]);
    w.install(&p.member_id);
    w.wait_status(&p.member_id, PortalStatus::Installed).await;
    let url = w.gate.as_ref().unwrap().url.clone();

    // Online deliveries forwarded to the app, offline ones drained.
    w.emu.changes(&p.member_id, change("add", 3)).unwrap();
    w.emu.changes(&p.member_id, change("update", 2)).unwrap();
    let r = w.receiver.clone();
    w.until("3 deals forwarded", Duration::from_secs(30), || {
        let r = r.clone();
        async move { r.of("ONCRMDEALADD").len() == 3 }
    })
    .await;
    let store = w.store.clone();
    w.until("2 offline events drained", Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            let d = store.drain_states().await.unwrap();
            d.iter().map(|d| d.drained_total).sum::<i64>() == 2
        }
    })
    .await;

    // A redelivery, a forged token, an unknown portal, a broken body.
    let delivered = w
        .emu
        .deliveries(&p.member_id)
        .unwrap()
        .into_iter()
        .find(|d| d.event == "ONCRMDEALADD" && d.ok)
        .and_then(|d| d.body)
        .unwrap();
    assert_eq!(post(&url, delivered.clone()).await, 200);
    let token = form_field(&delivered, "auth%5Bapplication_token%5D");
    let forged = delivered.replace(token, &"0".repeat(token.len()));
    assert_eq!(post(&url, forged).await, 401);
    let stranger = delivered.replace(p.member_id.as_str(), &"f".repeat(32));
    assert_eq!(post(&url, stranger).await, 401);
    assert_eq!(post(&url, "garbage=%%%".into()).await, 400);

    // A dead letter for the app's target.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let id = w
        .store
        .enqueue_job(
            &store::NewJob {
                kind: engine::forward::FORWARD,
                member_id: Some(&p.member_id),
                serial_key: None,
                unique_key: None,
                calls_portal: false,
                payload: &serde_json::json!({"inbox_id": 0, "target": "app"}),
                max_attempts: 1,
                run_at: now + 3_600_000,
            },
            now,
        )
        .await
        .unwrap()
        .id();
    assert!(w.store.discard_job(id, "test", now).await.unwrap());

    let (s, _) = scrape(&url, None).await;
    assert_eq!(s, 401, "/metrics needs the admin token");
    let (s, body) = scrape(&url, Some("wrong")).await;
    assert_eq!(s, 401, "{body}");

    // The drain timer keeps the engine busy: take a scrape during which no
    // source moved and no reservation was open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (text, src) = loop {
        let before = sources(&w).await;
        let (s, text) = scrape(&url, Some(ADMIN_TOKEN)).await;
        assert_eq!(s, 200, "{text}");
        let after = sources(&w).await;
        if before == after && before.drains.iter().all(|d| d.process_id.is_none()) {
            break (text, after);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sources never held still for a scrape"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (family, kind) in FAMILIES {
        let declared = text.contains(&format!("# TYPE {family} {kind}\n"));
        assert_eq!(declared, kind != "-", "family {family} ({kind}):\n{text}");
    }
    let m = parse(&text);

    // Ingest: every outcome of the run, as counted.
    let count = |event: &str, outcome: &str| {
        value(
            &m,
            &format!("b24gate_events_received_total{{event=\"{event}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("ONCRMDEALADD", "accepted"), 3.0);
    assert_eq!(count("ONCRMDEALADD", "duplicate"), 1.0);
    assert_eq!(count("ONCRMDEALADD", "bad_token"), 1.0);
    assert_eq!(count("ONCRMDEALADD", "unknown_portal"), 1.0);
    assert_eq!(count("unknown", "malformed"), 1.0);
    assert_eq!(count("ONAPPINSTALL", "accepted_unverified"), 1.0);
    let mut total = 0;
    for (event, outcome, n) in &src.events {
        assert_eq!(count(event, outcome.as_str()), *n as f64);
        total += n;
    }
    let ack = |s: &str| value(&m, &format!("b24gate_ingest_ack_duration_seconds_{s}"));
    assert_eq!(
        ack("count{route=\"events\"}") + ack("count{route=\"install\"}"),
        total as f64,
        "one latency sample per delivery"
    );
    assert!(ack("count{route=\"install\"}") >= 1.0);
    assert_eq!(
        ack("bucket{route=\"events\",le=\"+Inf\"}"),
        ack("count{route=\"events\"}")
    );
    assert!(ack("sum{route=\"events\"}") > 0.0);

    // Store gauges.
    assert_eq!(value(&m, "b24gate_inbox_depth"), src.inbox as f64);
    for (state, n) in &src.jobs {
        assert_eq!(
            value(&m, &format!("b24gate_jobs{{state=\"{state}\"}}")),
            *n as f64
        );
    }
    assert!(value(&m, "b24gate_jobs{state=\"completed\"}") >= 5.0);
    assert_eq!(value(&m, "b24gate_jobs{state=\"discarded\"}"), 1.0);

    // Forwarding.
    let app = &src.targets.iter().find(|(t, _)| t == "app").unwrap().1;
    assert!(app.attempts >= 5, "3 online + 2 offline deals: {app:?}");
    assert_eq!(
        value(&m, "b24gate_forward_attempts_total{target=\"app\"}"),
        app.attempts as f64
    );
    assert_eq!(
        value(&m, "b24gate_forward_failures_total{target=\"app\"}"),
        app.failures as f64
    );
    assert_eq!(value(&m, "b24gate_forward_target_up{target=\"app\"}"), 1.0);
    assert_eq!(
        value(&m, "b24gate_forward_dead_letters{target=\"app\"}"),
        1.0
    );

    // Offline.
    assert_eq!(value(&m, "b24gate_offline_lag_seconds"), 0.0);
    assert_eq!(value(&m, "b24gate_offline_reservations_open"), 0.0);
    assert_eq!(value(&m, "b24gate_offline_drained_total"), 2.0);
    let marked: i64 = src.drains.iter().map(|d| d.error_total).sum();
    assert_eq!(
        value(&m, "b24gate_offline_error_marked_total"),
        marked as f64
    );

    // The REST client.
    let c = src.client;
    assert!(c.requests > 0);
    assert_eq!(value(&m, "b24gate_rest_requests_total"), c.requests as f64);
    assert_eq!(
        value(
            &m,
            "b24gate_rest_limit_errors_total{code=\"QUERY_LIMIT_EXCEEDED\"}"
        ),
        c.rate_limited as f64
    );
    assert_eq!(
        value(
            &m,
            "b24gate_rest_limit_errors_total{code=\"OPERATION_TIME_LIMIT\"}"
        ),
        c.operating_limited as f64
    );
    assert_eq!(value(&m, "b24gate_rest_retries_total"), c.retries as f64);
    assert_eq!(
        value(&m, "b24gate_rest_calls_total{outcome=\"ok\"}"),
        c.ok as f64
    );
    assert!(c.ok > 0, "the install and drains made successful calls");
    assert_eq!(
        value(&m, "b24gate_rest_breaker_trips_total"),
        c.breaker_trips as f64
    );
    assert_eq!(value(&m, "b24gate_rest_renames_total"), c.renames as f64);
    assert_eq!(
        value(&m, "b24gate_oauth_refreshes_total"),
        c.refreshes as f64
    );
    assert_eq!(
        value(&m, "b24gate_oauth_refresh_failures_total"),
        c.refresh_failures as f64
    );
    assert_eq!(
        value(&m, "b24gate_oauth_reauth_marked_total"),
        c.reauth_marked as f64
    );

    // Bindings and portals, against the binding matrix.
    let matrix = w.store.binding_matrix(None).await.unwrap();
    let n = |f: &dyn Fn(&store::MatrixRow) -> bool| matrix.iter().filter(|r| f(r)).count() as f64;
    assert!(n(&|r| r.record.expected) >= 3.0, "{matrix:#?}");
    assert_eq!(
        value(&m, "b24gate_bindings_expected"),
        n(&|r| r.record.expected)
    );
    assert_eq!(
        value(&m, "b24gate_bindings_actual"),
        n(&|r| r.record.actual)
    );
    assert_eq!(value(&m, "b24gate_bindings_missing"), 0.0);
    assert_eq!(
        value(&m, "b24gate_bindings_unsatisfiable"),
        n(&|r| r.record.state == "unsatisfiable")
    );
    assert_eq!(
        value(&m, "b24gate_bindings{state=\"bound\"}"),
        n(&|r| r.record.state == "bound")
    );
    assert_eq!(value(&m, "b24gate_portals{status=\"installed\"}"), 1.0);
    assert_eq!(value(&m, "b24gate_portals{status=\"uninstalled\"}"), 0.0);
    // The dead letter belongs to the portal: it shows as unhealthy.
    assert_eq!(value(&m, "b24gate_portals_unhealthy"), 1.0);

    // No portal label, no member_id, no token anywhere.
    assert!(!text.contains(p.member_id.as_str()), "{text}");
    assert!(!text.contains(token), "{text}");
    assert!(!text.contains("portal=\""), "{text}");

    // The gateway says its workers run.
    let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    w.shutdown().await;
}
