//! Rough throughput check: simple calls/s and event deliveries/s with limits off.
//! `cargo run --release -p b24emu --example load` (the client shares the cores, so
//! the figures are a lower bound).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use b24emu::config::{DeliveryConfig, LimitDefaults};
use b24emu::{AppSpec, ChangeSpec, Emulator, EmulatorConfig, InstallSpec, PortalSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(40_000);
    let events: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let cfg = EmulatorConfig {
        seed: Some(1),
        limits: LimitDefaults {
            rate_limit: false,
            operating_limit: false,
            ..Default::default()
        },
        delivery: DeliveryConfig {
            keep_bodies: false,
            log_capacity: 100,
            ..Default::default()
        },
        ..Default::default()
    };
    let emu = Emulator::start(cfg).await?;
    let app = emu.create_app(AppSpec {
        scopes: vec!["crm".into()],
        ..Default::default()
    })?;
    let p = emu.create_portal(PortalSpec {
        name: Some("load".into()),
        ..Default::default()
    })?;
    let i = emu.install(
        &p.member_id,
        InstallSpec {
            client_id: app.client_id.clone(),
            ..Default::default()
        },
    )?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(128)
        .build()?;
    let url = Arc::new(format!(
        "{}server.time?auth={}",
        p.client_endpoint, i.tokens.access_token
    ));

    let conc = 64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..calls / conc {
                let r = client.get(url.as_str()).send().await.expect("call");
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"calls\": {}, \"calls_per_sec\": {:.0}}}",
        calls / conc * conc,
        (calls / conc * conc) as f64 / secs
    );

    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let recv = axum::Router::new().fallback(move || {
        g.fetch_add(1, Ordering::Relaxed);
        async { "" }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", l.local_addr()?);
    tokio::spawn(async move { axum::serve(l, recv).await });
    let bind = format!(
        "{}event.bind?auth={}&event=ONCRMDEALADD&handler={hook}",
        p.client_endpoint, i.tokens.access_token
    );
    assert_eq!(client.get(bind).send().await?.status(), 200);
    let started = Instant::now();
    emu.changes(
        &p.member_id,
        ChangeSpec {
            count: events,
            user_id: 1,
            ..Default::default()
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.load(Ordering::Relaxed) < events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = got.load(Ordering::Relaxed);
    println!(
        "{{\"deliveries\": {n}, \"deliveries_per_sec\": {:.0}}}",
        n as f64 / secs
    );
    emu.shutdown().await;
    Ok(())
}
