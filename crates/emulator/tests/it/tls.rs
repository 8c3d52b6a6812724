//! HTTPS with the local CA: SNI names and the bare IP both validate.

use b24emu::{EmulatorConfig, PortalSpec};
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn https_portals_validate_against_the_written_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EmulatorConfig {
        seed: Some(3),
        https_listen: Some("127.0.0.1:0".parse().unwrap()),
        cert_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let emu = emu_with(cfg).await;
    let https = emu.https_url().unwrap().to_string();
    let port = emu.urls().https_port.unwrap();
    let pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let ca = reqwest::Certificate::from_pem(&pem).unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .resolve(
            "secure.localhost",
            format!("127.0.0.1:{port}").parse().unwrap(),
        )
        .build()
        .unwrap();
    let domain = format!("secure.localhost:{port}");
    let s = setup(
        &emu,
        "secure",
        crm_app(),
        PortalSpec {
            domain: Some(domain.clone()),
            https: true,
            ..Default::default()
        },
    );
    assert_eq!(s.endpoint, format!("https://{domain}/rest/"));
    let r: Value = client
        .get(format!("{}profile?auth={}", s.endpoint, s.token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"]["ID"], "1");
    // Path routing over https://127.0.0.1 (no SNI): the IP certificate.
    let p = emu
        .create_portal(PortalSpec {
            name: Some("bare".into()),
            https: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(p.client_endpoint, format!("{https}/p/bare/rest/"));
    let r = client
        .post(format!("{}server.time", p.client_endpoint))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "TLS handshake fine; no token");
    // A client that does not trust the CA fails.
    let strict = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(
        strict
            .get(format!("{https}/_emu/stats"))
            .send()
            .await
            .is_err()
    );
}
