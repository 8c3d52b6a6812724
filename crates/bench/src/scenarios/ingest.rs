//! `ingest` / `ingest-pg`: acked events/s and ack latency of `POST
//! /b24/events`, 64 concurrent senders spread over 1,000 verified portals,
//! against the no-op axum baseline on the same bodies and load generator.
//!
//! After the timed rounds, a breakdown times the two store calls of the hot
//! path directly (the portal lookup and one group-commit transaction) so the
//! report says where an ack's time goes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use server::{AppState, IngestConfig, IngestOutcome};
use store::{Keyring, NewInboxEvent, OpenOptions, Store, TokenSet, VerifiedInstall};
use wire::{AccessToken, ApplicationToken, FormMap, MemberId, PortalDomain, RefreshToken};

use crate::loadgen::{MakeRequest, Target, run_alternating};
use crate::report::{Check, Report, num};
use crate::{Ctx, sut};

const ID_MARK: &str = "BENCHIDMARK";
const PG_THROUGHPUT_TARGET: f64 = 0.3;
const SQLITE_THROUGHPUT_TARGET: f64 = 0.5;
const P99_TARGET_MS: f64 = 10.0;

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("os randomness");
    hex::encode(b)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct PortalKeys {
    member_id: String,
    app_token: String,
    domain: String,
}

/// An `ONCRMDEALADD` body as Bitrix24 posts it, split around the deal id so
/// each request gets a unique one (the online dedupe key covers `data`).
fn body_template(p: &PortalKeys) -> (String, String) {
    let ep = format!("https://{}/rest/", p.domain);
    let body = json!({
        "event": "ONCRMDEALADD",
        "event_handler_id": "185",
        "data": {"FIELDS": {"ID": ID_MARK}},
        "ts": "1766047124",
        "auth": {
            "domain": p.domain,
            "client_endpoint": ep,
            "server_endpoint": "https://oauth.bitrix.info/rest/",
            "member_id": p.member_id,
            "application_token": p.app_token,
            "access_token": "0a1b2c3d4e5f".repeat(5) + "0a1b2c3d4e",
            "expires": "1766050724",
            "expires_in": "3600",
            "scope": "crm,user_brief",
            "user_id": "1",
            "status": "L",
        },
    });
    let text = wire::form::encode(&FormMap::from_json_object(
        body.as_object().expect("object"),
    ));
    let (a, b) = text.split_once(ID_MARK).expect("mark survives encoding");
    (a.to_string(), b.to_string())
}

async fn add_portals(store: Store, portals: Arc<Vec<PortalKeys>>) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    let workers = 8;
    for w in 0..workers {
        let (store, portals) = (store.clone(), portals.clone());
        tasks.push(tokio::spawn(async move {
            for p in portals.iter().skip(w).step_by(workers) {
                let m = MemberId::parse(&p.member_id)?;
                let d = PortalDomain::parse(&p.domain)?;
                let t = ApplicationToken::parse(&p.app_token)?;
                let tokens = TokenSet {
                    access: AccessToken::parse(&"a".repeat(70))?,
                    refresh: RefreshToken::parse(&"b".repeat(70))?,
                    expires_at: 0,
                    scope: "crm".into(),
                    user_id: Some(1),
                };
                let ep = format!("https://{}/rest/", p.domain);
                store
                    .record_verified_install(
                        &VerifiedInstall {
                            member_id: &m,
                            domain: &d,
                            client_endpoint: &ep,
                            server_endpoint: "https://oauth.bitrix.info/rest/",
                            application_token: Some(&t),
                            flow: "event",
                            app_status: Some("L"),
                            language: Some("en"),
                            tokens: &tokens,
                        },
                        now_ms(),
                    )
                    .await?;
                store
                    .set_status(
                        &p.member_id,
                        store::PortalStatus::Installed,
                        None,
                        "bench",
                        now_ms(),
                    )
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// A PostgreSQL schema of a run's own at `base` (dropped at the end), and
/// the server's durability settings for the report.
pub(crate) struct Pg {
    base: String,
    schema: String,
}

impl Pg {
    /// Creates `{prefix}_<random>`; returns it with the server's
    /// `server_version`, `synchronous_commit`, `fsync` and `wal_sync_method`.
    pub(crate) async fn create(base: &str, prefix: &str) -> anyhow::Result<(Pg, Value)> {
        let schema = format!("{prefix}_{}", random_hex(6));
        let admin = sqlx::PgPool::connect(base).await.map_err(|e| {
            anyhow::anyhow!("PostgreSQL at {base} (B24GATE_TEST_PG_URL) is not reachable: {e}")
        })?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await?;
        let mut settings = serde_json::Map::new();
        for s in [
            "server_version",
            "synchronous_commit",
            "fsync",
            "wal_sync_method",
        ] {
            let v: Result<String, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {s}")))
                .fetch_one(&admin)
                .await;
            settings.insert(s.into(), v.map_or(Value::Null, Value::String));
        }
        admin.close().await;
        Ok((
            Pg {
                base: base.to_string(),
                schema,
            },
            Value::Object(settings),
        ))
    }

    /// The database URL with the schema as its search path.
    pub(crate) fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}options=-c%20search_path%3D{}",
            self.base, self.schema
        )
    }

    pub(crate) async fn drop_schema(&self) -> anyhow::Result<()> {
        let admin = sqlx::PgPool::connect(&self.base).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&admin)
        .await?;
        admin.close().await;
        Ok(())
    }
}

/// The filesystem type holding `path` (from /proc/mounts), to show that
/// "durable" meant a real disk and not tmpfs.
pub(crate) fn fs_type(path: &std::path::Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let path = path.canonicalize().ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt).then(|| (mnt.len(), ty.to_string()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, t)| t)
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report, pg: bool) -> anyhow::Result<()> {
    let args = ctx.args;
    let plan = args.plan();
    plan.describe(&mut report.load);
    report.load("portals", args.portals);
    let keys = Keyring::from_hex(&"42".repeat(32))?;

    let mut _dir = None;
    let mut pg_schema = None;
    let url = if pg {
        let (p, settings) = Pg::create(&args.pg_url, "bench").await?;
        let url = p.url();
        report.load("database", "postgresql (fresh schema, dropped after)");
        report.load("postgres_settings", settings);
        pg_schema = Some(p);
        url
    } else {
        let dir = match &args.db_dir {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        let path = dir.path().join("bench.db");
        report.load(
            "database",
            json!({
                "kind": "sqlite (WAL, synchronous=FULL, as Store::open sets it)",
                "path": path.display().to_string(),
                "filesystem": fs_type(dir.path()),
            }),
        );
        let url = format!("sqlite://{}", path.display());
        _dir = Some(dir);
        url
    };
    let outcome = measure(ctx, report, &url, keys, pg).await;
    if let Some(p) = pg_schema
        && let Err(e) = p.drop_schema().await
    {
        report.note(format!("could not drop the bench schema: {e}"));
    }
    outcome
}

async fn measure(
    ctx: &Ctx<'_>,
    report: &mut Report,
    url: &str,
    keys: Keyring,
    pg: bool,
) -> anyhow::Result<()> {
    let args = ctx.args;
    let plan = args.plan();
    let opts = OpenOptions::default();
    report.load(
        "store_options",
        json!({"pg_max_connections": opts.pg_max_connections, "sqlite_readers": opts.sqlite_readers}),
    );
    let u = url.to_string();
    let store = sut::on(&ctx.sut, async move {
        let s = Store::open(&u, keys, &opts).await?;
        s.migrate().await?;
        Ok::<_, anyhow::Error>(s)
    })
    .await??;

    let portals: Arc<Vec<PortalKeys>> = Arc::new(
        (0..args.portals.max(1))
            .map(|i| PortalKeys {
                member_id: random_hex(16),
                app_token: random_hex(16),
                domain: format!("p{i}.bitrix24.com"),
            })
            .collect(),
    );
    let setup = Instant::now();
    sut::on(&ctx.sut, add_portals(store.clone(), portals.clone())).await??;
    report.load("portal_setup_secs", num(setup.elapsed().as_secs_f64()));

    let s = store.clone();
    let state = sut::on(&ctx.sut, async move {
        AppState::new(s, IngestConfig::default())
    })
    .await?;
    let gate = sut::serve(&ctx.sut, server::app(state.clone())).await?;
    let noop = sut::serve(&ctx.sut, sut::noop_router()).await?;

    let templates: Arc<Vec<(String, String)>> =
        Arc::new(portals.iter().map(body_template).collect());
    report.load(
        "body_bytes",
        templates[0].0.len() + templates[0].1.len() + 6,
    );
    let mk = |url: String| -> MakeRequest {
        let url = Arc::new(url);
        let templates = templates.clone();
        Arc::new(move |c: &reqwest::Client, n: u64| {
            let (a, b) = &templates[(n % templates.len() as u64) as usize];
            let mut body = String::with_capacity(a.len() + b.len() + 20);
            body.push_str(a);
            body.push_str(&(n + 1).to_string());
            body.push_str(b);
            c.post(url.as_str())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
        })
    };
    let base = Target::new(
        "noop",
        plan.concurrency,
        mk(format!("{}/b24/events", noop.url)),
    )?;
    let ingest = Target::new(
        "ingest",
        plan.concurrency,
        mk(format!("{}/b24/events", gate.url)),
    )?;
    let m = run_alternating(&[&base, &ingest], plan).await;
    let (b, g) = (&m[0], &m[1]);
    report.baseline = b.to_json();
    report.baseline.insert(
        "what".into(),
        json!("no-op axum handler that reads the body and answers 200, same bodies, on the SUT runtime"),
    );
    let acked = g.median_per_sec();
    report.figure("acked_events_per_sec", num(acked));
    report.figure("p50_ms", num(g.latency.p50_ms));
    report.figure("p99_ms", num(g.latency.p99_ms));
    report.figure("ingest", Value::Object(g.to_json()));
    let stats = &state.stats;
    report.figure(
        "server_counters",
        json!({
            "accepted": stats.total(IngestOutcome::Accepted),
            "duplicate": stats.total(IngestOutcome::Duplicate),
            "store_error": stats.total(IngestOutcome::StoreError),
            "unknown_portal": stats.total(IngestOutcome::UnknownPortal),
            "bad_token": stats.total(IngestOutcome::BadToken),
            "requests_sent": ingest.sent(),
        }),
    );
    let r = report.ratio("throughput_vs_baseline", acked, b.median_per_sec());
    let need = if pg {
        PG_THROUGHPUT_TARGET
    } else {
        SQLITE_THROUGHPUT_TARGET
    };
    report.check(Check::at_least("throughput_vs_baseline", r, need));
    report.check(Check::at_most("p99_ms", g.latency.p99_ms, P99_TARGET_MS));
    for x in [b, g] {
        if x.errors > 0 {
            report.note(format!(
                "{}: {} errors, first: {}",
                x.name,
                x.errors,
                x.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
    drop((ingest, gate));

    let idle = sut::on(&ctx.sut, breakdown(store.clone(), portals.clone())).await??;
    // The same calls while the load generator keeps the SUT runtime busy with
    // no-op requests: how much of an ack is waiting to be scheduled.
    let busy_plan = crate::loadgen::Plan {
        rounds: 1,
        measure: plan.measure.max(Duration::from_secs(3)),
        ..plan
    };
    let only_base = [&base];
    let (_, busy) = tokio::join!(
        run_alternating(&only_base, busy_plan),
        sut::on(&ctx.sut, breakdown(store.clone(), portals.clone()))
    );
    report.figure(
        "breakdown",
        json!({"idle": idle, "sut_runtime_busy_with_noop_load": busy??}),
    );
    drop((base, noop));
    report.note(
        "Load generator and gateway share one process and the machine's cores, on separate \
         tokio runtimes; the no-op baseline runs on the gateway's runtime and is driven by \
         the same generator with the same bodies, so both see the same contention. Each \
         request is a distinct ONCRMDEALADD (unique deal id) for one of the portals in \
         turn, closed loop, keep-alive; rates are the median of the rounds.",
    );
    report.note(
        "breakdown: the hot path's two store calls timed alone on an idle server, after the \
         rounds — portal lookup (check_app_token, answered by the portal cache while its \
         entry is younger than the TTL, 2 s; the first lookup of each portal after that \
         reads the database) and one group commit (append_inbox, one multi-row statement) \
         of 1 and of 64 events — once on an idle runtime, once while the load generator \
         keeps the SUT runtime busy with no-op requests (the rounds' concurrency).",
    );
    if pg {
        report.note(
            "PostgreSQL: a batch is one INSERT … SELECT FROM UNNEST of arrays (autocommit, one \
             round trip), two batches in flight on separate connections.",
        );
    }
    sut::on(&ctx.sut, async move { store.close().await }).await?;
    Ok(())
}

/// Times the hot path's store calls alone.
async fn breakdown(store: Store, portals: Arc<Vec<PortalKeys>>) -> anyhow::Result<Value> {
    let n = 2000usize;
    let started = Instant::now();
    for i in 0..n {
        let p = &portals[i % portals.len()];
        let t = ApplicationToken::parse(&p.app_token)?;
        store.check_app_token(&p.member_id, &t, now_ms()).await?;
    }
    let lookup_us = started.elapsed().as_secs_f64() * 1e6 / n as f64;

    let payload = json!({"event": "ONCRMDEALADD", "data": {"FIELDS": {"ID": 1}}, "auth": {"member_id": portals[0].member_id}});
    let mut out = serde_json::Map::new();
    out.insert("check_app_token_us_sequential".into(), num(lookup_us));
    for batch in [1usize, 64] {
        let rounds = if batch == 1 { 50 } else { 20 };
        let mut total = Duration::ZERO;
        for r in 0..rounds {
            let keys: Vec<String> = (0..batch)
                .map(|i| format!("bench:{batch}:{r}:{i}:{}", random_hex(4)))
                .collect();
            let events: Vec<NewInboxEvent<'_>> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| NewInboxEvent {
                    member_id: &portals[i % portals.len()].member_id,
                    dedupe_key: k,
                    event: "ONCRMDEALADD",
                    source: "online",
                    verified: true,
                    ts: Some(1_766_047_124),
                    payload: &payload,
                    secrets: None,
                })
                .collect();
            let t = Instant::now();
            store.append_inbox(&events, now_ms()).await?;
            total += t.elapsed();
        }
        let ms = total.as_secs_f64() * 1000.0 / rounds as f64;
        out.insert(format!("append_inbox_batch_{batch}_ms"), num(ms));
        out.insert(
            format!("append_inbox_batch_{batch}_ceiling_events_per_sec"),
            num(batch as f64 * 1000.0 / ms),
        );
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_template_makes_distinct_parseable_events() {
        let p = PortalKeys {
            member_id: random_hex(16),
            app_token: random_hex(16),
            domain: "p1.bitrix24.com".into(),
        };
        let (a, b) = body_template(&p);
        let body = |id: u64| format!("{a}{id}{b}");
        let limits = wire::Limits::default();
        let e1 = wire::Event::parse(body(7).as_bytes(), &limits).expect("parses");
        let e2 = wire::Event::parse(body(8).as_bytes(), &limits).expect("parses");
        assert_eq!(e1.name.as_str(), "ONCRMDEALADD");
        assert_eq!(e1.auth.member_id.as_str(), p.member_id);
        assert!(e1.auth.application_token.is_some());
        assert_ne!(
            server::dedupe_key_online(&e1),
            server::dedupe_key_online(&e2),
            "each request must be a new inbox row"
        );
    }

    #[test]
    fn fs_type_finds_the_root_mount() {
        if std::path::Path::new("/proc/mounts").exists() {
            assert!(fs_type(std::path::Path::new("/")).is_some());
        }
    }
}
