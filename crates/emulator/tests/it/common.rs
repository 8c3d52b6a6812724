//! Shared helpers: an emulator on port 0, a recording receiver, REST call helpers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, Uri};
use b24emu::{AppSpec, Emulator, EmulatorConfig, InstallSpec, PortalSpec};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

pub const DEADLINE: Duration = Duration::from_secs(10);

pub async fn emu() -> Emulator {
    emu_with(EmulatorConfig {
        seed: Some(7),
        ..Default::default()
    })
    .await
}

pub async fn emu_with(cfg: EmulatorConfig) -> Emulator {
    Emulator::start(cfg).await.expect("emulator starts")
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: String,
}

impl Hit {
    /// The body as flat `key → value` pairs (`auth[member_id]` kept as one key),
    /// decoded independently of the emulator's codec.
    pub fn form(&self) -> BTreeMap<String, String> {
        flat(&self.body)
    }

    pub fn query_map(&self) -> BTreeMap<String, String> {
        flat(&self.query)
    }
}

/// Independent `application/x-www-form-urlencoded` decoder for assertions.
pub fn flat(s: &str) -> BTreeMap<String, String> {
    let dec = |x: &str| {
        percent_decode_str(&x.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// Keys of a flat form under `prefix[` (e.g. `auth`), without the prefix.
pub fn sub_keys(f: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    let p = format!("{prefix}[");
    let mut k: Vec<String> = f
        .keys()
        .filter_map(|k| k.strip_prefix(&p))
        .map(|k| k.split(']').next().unwrap_or("").to_string())
        .collect();
    k.sort();
    k.dedup();
    k
}

/// A tiny axum receiver on 127.0.0.1:0 recording raw bodies. Paths containing
/// `fail` answer 500.
pub struct Receiver {
    pub base: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let h = hits.clone();
        let app = Router::new().fallback(
            move |uri: Uri, headers: axum::http::HeaderMap, body: Bytes| {
                let h = h.clone();
                async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    h.lock().unwrap().push(Hit {
                        path: uri.path().to_string(),
                        query: uri.query().unwrap_or("").to_string(),
                        content_type: ct,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    if uri.path().contains("fail") {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            },
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(l, app).await.unwrap();
        });
        Receiver { base, hits, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Hits on `path`, waiting (bounded) until there are at least `n`.
    pub async fn wait(&self, path: &str, n: usize) -> Vec<Hit> {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let got: Vec<Hit> = self.hits().into_iter().filter(|h| h.path == path).collect();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "timed out waiting for {n} hits on {path}, got {}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the farm has finished every queued delivery (so "nothing arrived" can
/// be asserted without sleeping).
pub async fn settle(emu: &Emulator) {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let s = emu.stats();
        let done = s["deliveries_ok"].as_u64().unwrap() + s["deliveries_failed"].as_u64().unwrap();
        if done >= s["deliveries_queued"].as_u64().unwrap() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "deliveries did not settle"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn queued(emu: &Emulator) -> u64 {
    emu.stats()["deliveries_queued"].as_u64().unwrap()
}

/// An installed app on a fresh portal.
pub struct Setup {
    pub client_id: String,
    pub client_secret: String,
    pub member_id: String,
    pub endpoint: String,
    pub token: String,
    pub refresh: String,
    pub application_token: String,
}

pub fn setup(emu: &Emulator, name: &str, app: AppSpec, portal: PortalSpec) -> Setup {
    let a = emu.create_app(app).unwrap();
    let p = emu
        .create_portal(PortalSpec {
            name: Some(name.to_string()),
            ..portal
        })
        .unwrap();
    let i = emu
        .install(
            &p.member_id,
            InstallSpec {
                client_id: a.client_id.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    Setup {
        client_id: a.client_id,
        client_secret: a.client_secret,
        member_id: p.member_id,
        endpoint: p.client_endpoint,
        token: i.tokens.access_token,
        refresh: i.tokens.refresh_token,
        application_token: i.tokens.application_token,
    }
}

pub fn crm_app() -> AppSpec {
    AppSpec {
        scopes: vec!["crm".into(), "placement".into(), "user".into()],
        ..Default::default()
    }
}

/// POSTs JSON params with `auth` to `{endpoint}{method}`; returns (status, body).
pub async fn call(endpoint: &str, token: &str, method: &str, params: Value) -> (u16, Value) {
    let mut p = params.as_object().cloned().unwrap_or_default();
    p.insert("auth".into(), json!(token));
    let r = http()
        .post(format!("{endpoint}{method}"))
        .json(&p)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Like [`call`] but asserts 200 and returns `result`.
pub async fn ok(endpoint: &str, token: &str, method: &str, params: Value) -> Value {
    let (s, v) = call(endpoint, token, method, params).await;
    assert_eq!(s, 200, "{method}: {v}");
    v["result"].clone()
}

/// Binds an online handler with the setup's token (asserts success).
pub async fn bind(s: &Setup, event: &str, handler: &str) {
    let p = json!({"event": event, "handler": handler});
    assert_eq!(
        ok(&s.endpoint, &s.token, "event.bind", p).await,
        json!(true)
    );
}

/// POSTs to the control API.
pub async fn control(emu: &Emulator, path: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{}{path}", emu.control_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap())
}

pub async fn control_get(emu: &Emulator, path: &str) -> Value {
    let r = http()
        .get(format!("{}{path}", emu.control_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

pub fn sorted(v: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    k.sort();
    k
}

pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}
