//! Scale-out on PostgreSQL: three `b24gate serve` processes share one
//! database behind a round-robin balancer (the portals know one public URL,
//! as behind a real load balancer). 10,000 events across 100 portals — half
//! online, half offline — with one instance SIGKILLed mid-run: nothing lost,
//! the offline queues drained, no rate-limit storm at the emulator.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use b24emu::{Emulator, EmulatorConfig};
use rand::Rng;

use crate::crash::{at_app, change, one_webhook_id_each};
use crate::harness::{Receiver, acknowledged, deliveries_tried, drains_settled, seeded, wait_for};
use crate::procs::{Db, Serve, create_app, free_port, install_fleet, open_store};

/// Round-robin over the instances that are up; a refused connection moves
/// on to the next one.
#[derive(Clone)]
struct Balancer {
    ports: Arc<Vec<u16>>,
    up: Arc<Vec<AtomicBool>>,
    next: Arc<AtomicUsize>,
    http: reqwest::Client,
}

async fn balance(
    State(b): State<Balancer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Bytes) {
    let n = b.ports.len();
    let start = b.next.fetch_add(1, Ordering::Relaxed);
    for k in 0..n {
        let i = (start + k) % n;
        if !b.up[i].load(Ordering::SeqCst) {
            continue;
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = b
            .http
            .request(
                method.clone(),
                format!("http://127.0.0.1:{}{path}", b.ports[i]),
            )
            .body(body.clone());
        if let Some(ct) = headers.get("content-type") {
            req = req.header("content-type", ct);
        }
        match req.send().await {
            Ok(r) => {
                let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
                let mut h = HeaderMap::new();
                if let Some(ct) = r.headers().get("content-type") {
                    h.insert("content-type", ct.as_bytes().try_into().unwrap());
                }
                let body = r.bytes().await.unwrap_or_default();
                return (status, h, body);
            }
            Err(e) if e.is_connect() => continue,
            Err(_) => return (StatusCode::BAD_GATEWAY, HeaderMap::new(), Bytes::new()),
        }
    }
    (StatusCode::BAD_GATEWAY, HeaderMap::new(), Bytes::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_postgres_share_100_portals_through_a_crash() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut rng = seeded("multi-instance");
    let t0 = std::time::Instant::now();
    let phase = |what: &str| {
        eprintln!(
            "multi-instance: {what} at {:.1}s",
            t0.elapsed().as_secs_f64()
        )
    };
    let db = Db::postgres().await;
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let (receiver, hook_url) = Receiver::start().await;

    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let balancer = Balancer {
        ports: Arc::new(ports.clone()),
        up: Arc::new((0..3).map(|_| AtomicBool::new(true)).collect()),
        next: Arc::new(AtomicUsize::new(0)),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    };
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", lb.local_addr().unwrap());
    let router = axum::Router::new()
        .fallback(balance)
        .with_state(balancer.clone());
    tokio::spawn(async move { axum::serve(lb, router).await.unwrap() });

    let app = create_app(&emu, &public);
    let probe_dir = tempfile::tempdir().unwrap();
    let db_url = db.url(probe_dir.path());
    let mut gates = Vec::new();
    for port in &ports {
        let mut g = Serve {
            port: *port,
            public_url: &public,
            db_url: &db_url,
            client_id: &app.client_id,
            oauth_url: emu.oauth_url(),
            hook_url: &hook_url,
            server_extra: "workers = 4",
            drain_every: "1s",
        }
        .gate(&app.client_secret);
        g.start().await;
        gates.push(g);
    }
    let store = open_store(&db_url).await;
    let members = install_fleet(
        &emu,
        &store,
        &app.client_id,
        "fleet",
        100,
        Duration::from_secs(180),
        String::new,
    )
    .await;

    phase("installed");
    // 5,000 online additions and 5,000 offline updates; instance 1 is
    // killed at a random point of the run.
    let victim = 1;
    let kill_at = rng.random_range(20..80);
    for (i, m) in members.iter().enumerate() {
        emu.changes(m, change("add", 50)).unwrap();
        emu.changes(m, change("update", 50)).unwrap();
        if i == kill_at {
            balancer.up[victim].store(false, Ordering::SeqCst);
            gates[victim].sigkill();
        }
    }
    wait_for(
        "the emulator to finish delivering",
        Duration::from_secs(120),
        String::new,
        || async { deliveries_tried(&emu) },
    )
    .await;
    phase("emulator delivered");
    let acked = acknowledged(&emu, &members, "ONCRMDEALADD");
    assert!(
        acked.len() >= 4_500,
        "most additions acknowledged ({})",
        acked.len()
    );
    let want = acked.clone();
    let r = receiver.clone();
    wait_for(
        "every acknowledged addition at the app",
        Duration::from_secs(600),
        String::new,
        || {
            let (want, r) = (want.clone(), r.clone());
            async move {
                let got: BTreeSet<String> = at_app(&r, "ONCRMDEALADD").into_keys().collect();
                got.is_superset(&want)
            }
        },
    )
    .await;
    phase("additions at the app");
    let r = receiver.clone();
    wait_for(
        "5,000 offline updates at the app",
        Duration::from_secs(600),
        String::new,
        || {
            let r = r.clone();
            async move { at_app(&r, "ONCRMDEALUPDATE").len() >= 5_000 }
        },
    )
    .await;
    phase("updates at the app");
    let updates = at_app(&receiver, "ONCRMDEALUPDATE");
    assert_eq!(updates.len(), 5_000, "every queued row reached the app");
    one_webhook_id_each(&updates);
    one_webhook_id_each(&at_app(&receiver, "ONCRMDEALADD"));
    wait_for(
        "every drain to settle",
        Duration::from_secs(60),
        String::new,
        || drains_settled(&store, &members),
    )
    .await;
    for m in &members {
        let q = &emu.portal_state(m).unwrap()["apps"][0]["offline_queue"];
        assert_eq!(q["size"], 0, "queue of {m} not empty: {q}");
    }
    phase("drains settled");
    // The shared per-portal limiter kept three processes inside each
    // portal's bucket: no storm of QUERY_LIMIT_EXCEEDED answers.
    let stats = emu.stats();
    let limit_errors = stats["query_limit_errors"].as_u64().unwrap_or(0);
    let calls = stats["requests"]
        .as_u64()
        .expect("the emulator counts requests");
    assert!(calls > 0);
    eprintln!("multi-instance: {calls} REST calls, {limit_errors} limit errors");
    assert!(
        limit_errors * 100 <= calls.max(1),
        "limit errors above 1% of calls: {limit_errors} of {calls}"
    );
    for g in &mut gates {
        g.stop();
    }
    store.close().await;
    db.drop_schema().await;
}
