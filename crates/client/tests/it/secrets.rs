//! No token, refresh token, client secret or webhook code in any log line
//! (captured at TRACE) or in any error's `Display`/`Debug`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use b24emu::FaultsSpec;
use client::Error;
use serde_json::json;
use tracing_subscriber::fmt::MakeWriter;

use crate::common::{Setup, bounded, fixture_with};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_trace_logs_or_error_strings() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "client=trace,reqwest=trace,hyper=trace,hyper_util=trace,rustls=trace",
        ))
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    // Global, not thread-local: tracing caches callsite interest per process,
    // and a scoped subscriber can miss callsites other test threads
    // registered first. Other tests' lines land here too, which only widens
    // the check. No other test installs a subscriber.
    // `try_init` also bridges the `log` records of the HTTP stack.
    tracing_subscriber::util::SubscriberInitExt::try_init(subscriber)
        .expect("one global subscriber");
    bounded(async {
        let f = fixture_with(Setup {
            scopes: vec!["crm".into(), "telephony".into()],
            ..Default::default()
        })
        .await;
        let mut errors: Vec<Error> = Vec::new();
        let p = f.portal_client();
        p.call("profile", json!({})).await.unwrap();
        // Expired token → refresh; errors of several kinds.
        f.emu
            .set_faults(FaultsSpec {
                member_id: Some(f.member.to_string()),
                expire_tokens: true,
                ..Default::default()
            })
            .unwrap();
        p.call("crm.deal.fields", json!({})).await.unwrap();
        errors.push(p.call("crm.deal.get", json!({"id": 0})).await.unwrap_err());
        errors.push(p.call("no.such.method", json!({})).await.unwrap_err());
        errors.push(p.call("voximplant.user.get", json!({})).await.unwrap_err());
        // A webhook: its code is a secret too.
        let hook = f
            .emu
            .create_webhook(&f.member.to_string(), Default::default())
            .unwrap();
        let code = hook["code"].as_str().unwrap().to_owned();
        let url = hook["url"].as_str().unwrap().to_owned();
        let w = client::Client::for_webhook(&url, f.config()).unwrap();
        w.call("profile", json!({})).await.unwrap();
        errors.push(w.call("event.get", json!({})).await.unwrap_err());
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let dead = format!("http://127.0.0.1:{port}/rest/1/{code}/");
        let w2 = client::Client::for_webhook(&dead, f.config()).unwrap();
        errors.push(w2.call("profile", json!({})).await.unwrap_err());
        errors.push(client::Client::for_webhook(&format!("{dead}x/y"), f.config()).unwrap_err());
        // invalid_grant at the end: spend the stored refresh token elsewhere.
        let stored =
            f.db.store
                .load_credentials(f.member.as_str())
                .await
                .unwrap()
                .unwrap();
        assert_eq!(
            f.spend_refresh_token(stored.tokens.refresh.expose_secret())
                .await,
            200
        );
        f.emu
            .set_faults(FaultsSpec {
                member_id: Some(f.member.to_string()),
                expire_tokens: true,
                ..Default::default()
            })
            .unwrap();
        errors.push(p.call("profile", json!({})).await.unwrap_err());

        let secrets = [
            f.access.clone(),
            f.refresh.clone(),
            stored.tokens.access.expose_secret().to_owned(),
            stored.tokens.refresh.expose_secret().to_owned(),
            f.client_secret.clone(),
            code.clone(),
        ];
        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(
            logs.contains("REST request"),
            "the capture saw the client's trace lines"
        );
        assert!(logs.contains("token refreshed"));
        assert!(logs.contains("TRACE"), "captured at trace level");
        for s in &secrets {
            assert!(!logs.contains(s.as_str()), "a secret reached the logs");
        }
        assert!(errors.len() >= 7);
        for e in &errors {
            let shown = format!("{e} | {e:?}");
            for s in &secrets {
                assert!(!shown.contains(s.as_str()), "secret in error: {shown}");
            }
        }
        assert!(matches!(errors.last(), Some(Error::NeedsReauth(_))));
    })
    .await;
}
