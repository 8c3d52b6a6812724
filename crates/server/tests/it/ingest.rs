use std::time::Duration;

use serde_json::json;
use server::{IngestConfig, IngestOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{APP_TOKEN, Gate, MEMBER, event_body, record_install};

fn deal(id: &str) -> serde_json::Value {
    json!({"FIELDS": {"ID": id}})
}

#[tokio::test]
async fn verified_event_is_stored_once_without_its_tokens() {
    let g = Gate::start(IngestConfig::default()).await;
    g.install_portal(MEMBER, APP_TOKEN).await;
    let body = event_body(
        "ONCRMDEALUPDATE",
        MEMBER,
        APP_TOKEN,
        &g.trap_url,
        deal("7405"),
        true,
    );
    let (status, v) = g.post("/b24/events", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true);
    let (status, v) = g.post("/b24/events", body).await;
    assert_eq!(status, 200);
    assert_eq!(v["duplicate"], true);
    let rows = g.store.pending_inbox(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert!(r.verified);
    assert_eq!(r.event, "ONCRMDEALUPDATE");
    assert_eq!(r.source, "online");
    assert!(!r.has_secrets(), "entity events keep no token");
    let p = r.payload_json();
    assert_eq!(p["data"]["FIELDS"]["ID"], "7405");
    assert_eq!(p["auth"]["member_id"], MEMBER);
    assert_eq!(p["auth"]["user_id"], 1);
    assert!(
        !r.payload.contains("0a1b2c3d4e5f"),
        "no access token in the payload"
    );
    assert!(
        !r.payload.contains(APP_TOKEN),
        "no application token in the payload"
    );
    assert_eq!(g.state.stats.total(IngestOutcome::Accepted), 1);
    assert_eq!(g.state.stats.total(IngestOutcome::Duplicate), 1);
    g.stop().await;
}

#[tokio::test]
async fn bad_inputs_get_exact_statuses_store_nothing_and_are_counted() {
    let cfg = IngestConfig {
        body_limit: 4096,
        body_deadline: Duration::from_millis(300),
        ..IngestConfig::default()
    };
    let g = Gate::start(cfg).await;
    g.install_portal(MEMBER, APP_TOKEN).await;
    let other = "00000000000000000000000000000001";

    let wrong = event_body(
        "ONCRMDEALADD",
        MEMBER,
        "forged0000000000000000000000000",
        &g.trap_url,
        deal("1"),
        true,
    );
    let (s, v) = g.post("/b24/events", wrong).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("bad_token")));

    let unknown = event_body(
        "ONCRMDEALADD",
        other,
        APP_TOKEN,
        &g.trap_url,
        deal("1"),
        true,
    );
    let (s, v) = g.post("/b24/events", unknown).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("unknown_portal")));

    let (s, v) = g
        .post(
            "/b24/events",
            "event=ONCRMDEALADD&auth%5Bmember_id%5D=x&%zz".into(),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("malformed")));
    let (s, _) = g.post("/b24/events", "event=ONCRMDEALADD".into()).await;
    assert_eq!(s, 400, "missing auth");

    let big = event_body(
        "ONCRMDEALADD",
        MEMBER,
        APP_TOKEN,
        &g.trap_url,
        json!({"X": "y".repeat(5000)}),
        true,
    );
    let (s, v) = g.post("/b24/events", big).await;
    assert_eq!((s, v["error"].as_str()), (413, Some("too_large")));

    // A client that sends part of its body and then trickles nothing more.
    let addr = g.url.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sock.write_all(
        b"POST /b24/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 500\r\n\r\nevent=ONCRM",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
        .await
        .expect("the gateway must cut a trickling client off")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");

    assert_eq!(g.inbox_count().await, 0, "nothing stored");
    let st = &g.state.stats;
    assert_eq!(st.total(IngestOutcome::BadToken), 1);
    assert_eq!(st.total(IngestOutcome::UnknownPortal), 1);
    assert_eq!(st.total(IngestOutcome::Malformed), 2);
    assert_eq!(st.total(IngestOutcome::TooLarge), 1);
    assert_eq!(st.total(IngestOutcome::Timeout), 1);
    assert_eq!(st.total(IngestOutcome::Accepted), 0);
    g.stop().await;
}

#[tokio::test]
async fn install_from_unknown_portal_is_stored_unverified_with_sealed_tokens() {
    let g = Gate::start(IngestConfig::default()).await;
    let data = json!({"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"});
    let body = event_body("ONAPPINSTALL", MEMBER, APP_TOKEN, &g.trap_url, data, true);
    let (s, v) = g.post("/b24/install", body).await;
    assert_eq!(s, 200, "{v}");
    let rows = g.store.pending_inbox(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].verified);
    assert!(
        g.store.get_portal(MEMBER).await.unwrap().is_none(),
        "no portal before verification"
    );
    let secrets: serde_json::Value =
        serde_json::from_str(&g.store.inbox_secrets(&rows[0]).unwrap().unwrap()).unwrap();
    assert_eq!(secrets["application_token"], APP_TOKEN);
    assert!(
        secrets["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("f0e1")
    );
    assert!(!rows[0].payload.contains(APP_TOKEN));
    assert_eq!(g.state.stats.total(IngestOutcome::AcceptedUnverified), 1);
    g.stop().await;
}

#[tokio::test]
async fn forged_uninstall_and_method_confirm_change_nothing() {
    let g = Gate::start(IngestConfig::default()).await;
    g.install_portal(MEMBER, APP_TOKEN).await;
    let forged = "ffffffffffffffffffffffffffffffff";
    let un = event_body(
        "ONAPPUNINSTALL",
        MEMBER,
        forged,
        &g.trap_url,
        json!({"CLEAN": "1", "LANGUAGE_ID": "en"}),
        false,
    );
    assert_eq!(g.post("/b24/events", un).await.0, 401);
    let mc = event_body(
        "ONAPPMETHODCONFIRM",
        MEMBER,
        forged,
        &g.trap_url,
        json!({"TOKEN": "c".repeat(70), "METHOD": "voximplant.user.get", "CONFIRMED": "1"}),
        false,
    );
    assert_eq!(g.post("/b24/events", mc.clone()).await.0, 401);
    assert_eq!(g.post("/b24/events", mc).await.0, 401);
    assert_eq!(g.inbox_count().await, 0);
    // Each forged lifecycle event left one audit entry (throttled: the repeat
    // within a minute adds none).
    let store = g.store.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = store
            .list_audit(&store::AuditFilter {
                action_prefix: Some("event.forged"),
                ..Default::default()
            })
            .await
            .unwrap()
            .len();
        if n == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} forged-event audit entries"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The genuine confirmation is stored with its token sealed, not in clear.
    let real = event_body(
        "ONAPPMETHODCONFIRM",
        MEMBER,
        APP_TOKEN,
        &g.trap_url,
        json!({"TOKEN": "c".repeat(70), "METHOD": "voximplant.user.get", "CONFIRMED": "1", "LANGUAGE_ID": "en"}),
        false,
    );
    assert_eq!(g.post("/b24/events", real).await.0, 200);
    let rows = g.store.pending_inbox(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].payload.contains(&"c".repeat(70)));
    assert!(
        rows[0].payload_json()["data"]["TOKEN"]
            .as_str()
            .unwrap()
            .starts_with("fingerprint:")
    );
    let secrets = g.store.inbox_secrets(&rows[0]).unwrap().unwrap();
    assert!(secrets.contains(&"c".repeat(70)));
    g.stop().await;
}

#[tokio::test]
async fn installer_post_is_stored_and_answered_with_a_finishing_page() {
    let g = Gate::start(IngestConfig::default()).await;
    let query = format!(
        "DOMAIN=acme.bitrix24.com&PROTOCOL=1&LANG=en&APP_SID={}",
        "d".repeat(32)
    );
    let body = format!(
        "AUTH_ID={}&AUTH_EXPIRES=3600&REFRESH_ID={}&SERVER_ENDPOINT=https%3A%2F%2Foauth.bitrix.info%2Frest%2F&member_id={MEMBER}&status=L&PLACEMENT=DEFAULT&APPLICATION_TOKEN={APP_TOKEN}",
        "a".repeat(70),
        "b".repeat(70)
    );
    let r = reqwest::Client::new()
        .post(format!("{}/b24/install?{query}", g.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("x-frame-options").is_none(),
        "the page must be frameable"
    );
    let page = r.text().await.unwrap();
    assert!(page.contains("BX24.installFinish()"));
    let rows = g.store.pending_inbox(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event, server::INSTALLER_POST);
    assert!(!rows[0].verified);
    assert!(!rows[0].payload.contains(&"a".repeat(70)));
    // The page polls its status with the key it was given.
    let start = page.find("install/status/").unwrap() + "install/status/".len();
    let end = page[start..].find('"').unwrap() + start;
    let status_path = &page[start..end];
    let v: serde_json::Value = reqwest::get(format!("{}/b24/install/status/{status_path}", g.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "pending");
    let wrong = reqwest::get(format!(
        "{}/b24/install/status/{}?key=nope",
        g.url, rows[0].id
    ))
    .await
    .unwrap();
    assert_eq!(wrong.status(), 404);
    g.stop().await;
}

#[tokio::test]
async fn concurrent_deliveries_are_all_stored() {
    let g = Gate::start(IngestConfig::default()).await;
    g.install_portal(MEMBER, APP_TOKEN).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let body = event_body(
            "ONCRMDEALADD",
            MEMBER,
            APP_TOKEN,
            &g.trap_url,
            deal(&i.to_string()),
            true,
        );
        let url = format!("{}/b24/events", g.url);
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(g.inbox_count().await, 200);
    g.stop().await;
}

/// The ingest path makes no outbound call: every endpoint a body names, and
/// the stored portal's endpoints, point at a listener that counts connections.
#[tokio::test]
async fn ingest_never_calls_out() {
    let g = Gate::start(IngestConfig::default()).await;
    g.install_portal(MEMBER, APP_TOKEN).await;
    let other = "00000000000000000000000000000002";
    let bodies = [
        event_body(
            "ONCRMDEALADD",
            MEMBER,
            APP_TOKEN,
            &g.trap_url,
            deal("1"),
            true,
        ),
        event_body(
            "ONAPPINSTALL",
            other,
            APP_TOKEN,
            &g.trap_url,
            json!({"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y"}),
            true,
        ),
        event_body(
            "ONAPPINSTALL",
            MEMBER,
            APP_TOKEN,
            &g.trap_url,
            json!({"VERSION": "2", "ACTIVE": "Y", "INSTALLED": "Y"}),
            true,
        ),
        event_body(
            "ONOFFLINEEVENT",
            MEMBER,
            APP_TOKEN,
            &g.trap_url,
            json!({}),
            true,
        ),
        event_body(
            "ONAPPUNINSTALL",
            MEMBER,
            APP_TOKEN,
            &g.trap_url,
            json!({"CLEAN": "0"}),
            false,
        ),
        event_body(
            "ONCRMDEALADD",
            other,
            APP_TOKEN,
            &g.trap_url,
            deal("1"),
            true,
        ),
    ];
    for b in bodies {
        let (s, _) = g.post("/b24/events", b.clone()).await;
        assert!(s == 200 || s == 401, "{s}");
        g.post("/b24/install", b).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        g.trap_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "ingest called out"
    );
    g.stop().await;
}

/// The portal cache never lets a rejected event through: after the token was
/// accepted (and cached), a forged token, an uninstall and a reinstall with a
/// new token are answered with the exact status and store nothing; a new
/// token recorded by another process is accepted at once.
#[tokio::test]
async fn cached_portal_rejections_are_exact_and_store_nothing() {
    let g = Gate::start(IngestConfig::default()).await;
    g.install_portal(MEMBER, APP_TOKEN).await;
    let post = |token: &str, id: &str| {
        let body = event_body("ONCRMDEALADD", MEMBER, token, &g.trap_url, deal(id), true);
        g.post("/b24/events", body)
    };
    let (s, v) = post(APP_TOKEN, "1").await;
    assert_eq!(s, 200, "{v}");
    let forged = "ffffffffffffffffffffffffffffffff";
    let (s, v) = post(forged, "2").await;
    assert_eq!((s, v["error"].as_str()), (401, Some("bad_token")));
    assert_eq!(g.inbox_count().await, 1);

    g.store
        .mark_uninstalled(MEMBER, false, None, (g.state.now)())
        .await
        .unwrap();
    let (s, v) = post(APP_TOKEN, "3").await;
    assert_eq!((s, v["error"].as_str()), (401, Some("not_installed")));
    assert_eq!(
        g.inbox_count().await,
        1,
        "nothing stored after the uninstall"
    );

    let second = "22222222222222222222222222222222";
    g.install_portal(MEMBER, second).await;
    let (s, v) = post(APP_TOKEN, "4").await;
    assert_eq!((s, v["error"].as_str()), (401, Some("bad_token")));
    assert_eq!(
        g.inbox_count().await,
        1,
        "the replaced token stores nothing"
    );
    let (s, v) = post(second, "5").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(g.inbox_count().await, 2);

    // Another process reinstalls with a third token: the gateway's cache
    // still holds the second, yet the third is re-checked and accepted.
    let other = g.store.reopen().await.unwrap();
    let third = "33333333333333333333333333333333";
    record_install(&other, MEMBER, third, &g.trap_url, (g.state.now)()).await;
    let (s, v) = post(third, "6").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(second, "7").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("bad_token")),
        "the re-check replaced the cached token"
    );
    assert_eq!(g.inbox_count().await, 3);
    let st = &g.state.stats;
    assert_eq!(st.total(IngestOutcome::BadToken), 3);
    assert_eq!(st.total(IngestOutcome::NotInstalled), 1);
    assert_eq!(st.total(IngestOutcome::Accepted), 3);
    other.close().await;
    g.stop().await;
}
