use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use engine::Config;
use store::{Keyring, NewInboxEvent, OpenOptions, Store, TokenSet, VerifiedInstall};
use wire::{AccessToken, ApplicationToken, MemberId, PortalDomain, RefreshToken};

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub fn config(receiver: &str) -> Config {
    let text = format!(
        r#"
[app]
client_id = "local.0123456789abcd.12345678"
version = 1
[[target]]
name = "deals"
url = "{receiver}/hooks"
[[binding]]
event = "ONCRMDEALADD"
owner = "deals"
[[binding]]
event = "ONAPPUNINSTALL"
owner = "deals"
[uninstall]
on_clean = "purge"
on_keep = "keep"
"#
    );
    let env = vec![("B24GATE_TARGET_DEALS_SECRET".to_owned(), SECRET.to_owned())];
    Config::load(&text, env).unwrap().0
}

pub async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}", dir.path().join("gate.db").display());
    let s = Store::open(
        &url,
        Keyring::from_hex(&"42".repeat(32)).unwrap(),
        &OpenOptions::default(),
    )
    .await
    .unwrap();
    s.migrate().await.unwrap();
    s
}

pub fn member(n: usize) -> String {
    format!("{:032x}", 0xabc0_0000_u64 + n as u64)
}

pub async fn install(store: &Store, m: &str, app_token: &str) {
    let member_id = MemberId::parse(m).unwrap();
    let domain = PortalDomain::parse(&format!("p{}.bitrix24.com", &m[26..])).unwrap();
    let t = ApplicationToken::parse(app_token).unwrap();
    let tokens = TokenSet {
        access: AccessToken::parse(&"a".repeat(70)).unwrap(),
        refresh: RefreshToken::parse(&"b".repeat(70)).unwrap(),
        expires_at: 0,
        scope: "crm".into(),
        user_id: Some(1),
    };
    store
        .record_verified_install(
            &VerifiedInstall {
                member_id: &member_id,
                domain: &domain,
                client_endpoint: "https://x.bitrix24.com/rest/",
                server_endpoint: "https://oauth.bitrix.info/rest/",
                application_token: Some(&t),
                flow: "event",
                app_status: Some("L"),
                language: None,
                tokens: &tokens,
            },
            0,
        )
        .await
        .unwrap();
    store
        .set_status(m, store::PortalStatus::Installed, None, "test", 0)
        .await
        .unwrap();
}

/// Stores a verified entity event as the ingest route would.
pub async fn ingest(store: &Store, m: &str, event: &str, key: &str, data: serde_json::Value) {
    let payload = serde_json::json!({"event": event, "auth": {"member_id": m, "domain": "x.bitrix24.com"}, "data": data});
    store
        .append_inbox(
            &[NewInboxEvent {
                member_id: m,
                dedupe_key: key,
                event,
                source: "online",
                verified: true,
                ts: Some(1_766_047_124),
                payload: &payload,
                secrets: None,
            }],
            1,
        )
        .await
        .unwrap();
}

/// A stand-in for the app: verifies each request's Standard Webhooks
/// signature, fails every n-th request (n from `fail_every`, 0 = never), and
/// records the ids it accepted.
#[derive(Clone, Default)]
pub struct Receiver {
    pub accepted: Arc<Mutex<HashMap<String, serde_json::Value>>>,
    pub deliveries: Arc<AtomicU64>,
    pub failures: Arc<AtomicU64>,
    pub bad_signatures: Arc<AtomicU64>,
    pub fail_every: u64,
}

impl Receiver {
    pub async fn start(fail_every: u64) -> (Receiver, String) {
        let r = Receiver {
            fail_every,
            ..Receiver::default()
        };
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(hook))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    pub fn unique(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    pub async fn wait_for(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.unique() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} events arrived",
                self.unique()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let n = r.deliveries.fetch_add(1, Ordering::SeqCst) + 1;
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
        engine::forward::SigningKey::parse(SECRET).sign(&id, ts.parse().unwrap_or(0), &body);
    if sig != expected {
        r.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if r.fail_every > 0 && n % r.fail_every == 0 {
        r.failures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], id, "webhook-id is the event id");
    r.accepted.lock().unwrap().insert(id, v);
    StatusCode::OK
}
