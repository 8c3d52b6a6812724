use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use server::{AppState, IngestConfig};
use store::{Keyring, OpenOptions, Store, TokenSet, VerifiedInstall};
use wire::{AccessToken, ApplicationToken, FormMap, MemberId, PortalDomain, RefreshToken};

pub const MEMBER: &str = "d897063e1ce7c5eb9f04b9751eef5915";
pub const APP_TOKEN: &str = "51856fefc120afa4b628cc82d3935cce";

/// Records a verified install of `member` with `app_token` through `store`,
/// its endpoints at `trap_url`.
pub async fn record_install(
    store: &Store,
    member: &str,
    app_token: &str,
    trap_url: &str,
    now: i64,
) {
    let m = MemberId::parse(member).unwrap();
    let d = PortalDomain::parse("acme.bitrix24.com").unwrap();
    let t = ApplicationToken::parse(app_token).unwrap();
    let tokens = TokenSet {
        access: AccessToken::parse(&"a".repeat(70)).unwrap(),
        refresh: RefreshToken::parse(&"b".repeat(70)).unwrap(),
        expires_at: 0,
        scope: "crm".into(),
        user_id: Some(1),
    };
    let ep = format!("{trap_url}/rest/");
    store
        .record_verified_install(
            &VerifiedInstall {
                member_id: &m,
                domain: &d,
                client_endpoint: &ep,
                server_endpoint: &ep,
                application_token: Some(&t),
                flow: "event",
                app_status: Some("L"),
                language: Some("en"),
                tokens: &tokens,
            },
            now,
        )
        .await
        .unwrap();
}

/// A gateway on 127.0.0.1:0 over a fresh SQLite file, plus a "trap"
/// listener standing in for every outbound address: any connection to it
/// means the ingest path called out.
pub struct Gate {
    pub url: String,
    pub store: Store,
    pub state: AppState,
    pub trap_url: String,
    pub trap_hits: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Gate {
    pub async fn start(ingest: IngestConfig) -> Gate {
        Gate::start_with(ingest, |_| {}).await
    }

    /// As [`Gate::start`], with `setup` adjusting the state before the
    /// server takes it (admin API, observability sources).
    pub async fn start_with(ingest: IngestConfig, setup: impl FnOnce(&mut AppState)) -> Gate {
        // reqwest is built without a bundled TLS provider: name ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("gate.db").display());
        let store = Store::open(
            &url,
            Keyring::from_hex(&"42".repeat(32)).unwrap(),
            &OpenOptions::default(),
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let trap_url = format!("http://{}", trap.local_addr().unwrap());
        let trap_hits = Arc::new(AtomicUsize::new(0));
        let hits = trap_hits.clone();
        tokio::spawn(async move {
            while let Ok((_s, _)) = trap.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut state = AppState::new(store.clone(), ingest);
        setup(&mut state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Gate {
            url: format!("http://{addr}"),
            store,
            state,
            trap_url,
            trap_hits,
            _dir: dir,
            stop: Some(tx),
        }
    }

    /// A verified, installed portal whose endpoints point at the trap.
    pub async fn install_portal(&self, member: &str, app_token: &str) {
        record_install(&self.store, member, app_token, &self.trap_url, 0).await;
        self.store
            .set_status(member, store::PortalStatus::Installed, None, "test", 0)
            .await
            .unwrap();
    }

    pub async fn post(&self, path: &str, body: String) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn inbox_count(&self) -> usize {
        self.store.pending_inbox(1_000_000).await.unwrap().len()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A form-encoded event body as Bitrix24 sends it.
pub fn event_body(
    event: &str,
    member: &str,
    app_token: &str,
    trap: &str,
    data: Value,
    user: bool,
) -> String {
    let mut auth = json!({
        "domain": "acme.bitrix24.com",
        "client_endpoint": format!("{trap}/rest/"),
        "server_endpoint": format!("{trap}/rest/"),
        "member_id": member,
        "application_token": app_token,
    });
    if user {
        let a = auth.as_object_mut().unwrap();
        a.insert(
            "access_token".into(),
            json!("0a1b2c3d4e5f".repeat(5) + "0a1b2c3d4e"),
        );
        a.insert("expires".into(), json!("1766050724"));
        a.insert("expires_in".into(), json!("3600"));
        a.insert("scope".into(), json!("crm,user_brief"));
        a.insert("user_id".into(), json!("1"));
        a.insert("status".into(), json!("L"));
        if ["ONAPPINSTALL", "ONAPPUPDATE", "ONAPPTEST", "ONOFFLINEEVENT"].contains(&event) {
            a.insert(
                "refresh_token".into(),
                json!("f0e1d2c3b4a5".repeat(5) + "f0e1d2c3b4"),
            );
        }
    }
    let body = json!({
        "event": event,
        "event_handler_id": "185",
        "data": data,
        "ts": "1766047124",
        "auth": auth,
    });
    wire::form::encode(&FormMap::from_json_object(body.as_object().unwrap()))
}
