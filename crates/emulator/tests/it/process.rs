//! The `b24emu serve` binary prints one ready line and serves the control API.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::http;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_prints_the_ready_line_with_real_ports() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_b24emu"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--https-listen",
                "127.0.0.1:0",
                "--seed",
                "5",
                "--cert-dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            BufReader::new(stdout).read_line(&mut l).map(|_| l)
        }),
    )
    .await
    .expect("ready line in time")
    .unwrap()
    .unwrap();
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    assert_eq!(k, ["control", "http", "https", "oauth"]);
    let control = v["control"].as_str().unwrap();
    assert!(!control.ends_with(":0/_emu"));
    assert!(
        v["https"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:")
    );
    assert!(dir.path().join("ca.pem").exists());
    let r = http()
        .post(format!("{control}/portals"))
        .json(&serde_json::json!({"name": "cli"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["member_id"].as_str().unwrap().len(), 32);
    let stats: Value = http()
        .get(format!("{control}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["portals"], 1);
}
