use std::path::Path;
use std::process::{Command, Output};

const GOOD: &str = r#"
[app]
client_id = "local.0123456789abcd.12345678"
version = 1
"#;

fn b24gate(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_b24gate"));
    cmd.current_dir(dir).args(args);
    // Start from an environment without any B24GATE_* variable of the caller.
    for (k, _) in std::env::vars() {
        if k.starts_with("B24GATE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let o = b24gate(dir.path(), &["--help"], &[]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("migrate"), "{text}");
    assert!(text.contains("config"), "{text}");
}

#[test]
fn bad_config_exits_2_names_the_key_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gate.db");
    let cases = [
        (
            "[app]\nclient_id = \"local.x.y\"\nversion = 0\n",
            vec![],
            "app.version",
        ),
        (
            GOOD,
            vec![("B24GATE_SERVER_LISTEN", "not-an-address")],
            "server.listen",
        ),
        ("[app\n", vec![], "(line 1)"),
        (
            "[app]\nclient_id = \"local.x.y\"\nversion = 1\nclient_secret = \"oops\"\n",
            vec![],
            "app.client_secret",
        ),
    ];
    for (text, env, key) in cases {
        std::fs::write(dir.path().join("b24gate.toml"), text).unwrap();
        let url = format!("sqlite://{}", db.display());
        let mut env = env;
        env.push(("B24GATE_SERVER_DATABASE_URL", &url));
        let o = b24gate(dir.path(), &["--config", "b24gate.toml", "migrate"], &env);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("`{key}`")),
            "{key}: {}",
            stderr(&o)
        );
        assert!(!db.exists(), "nothing may be written on a bad config");
        // The secret value itself never appears in the message.
        assert!(!stderr(&o).contains("oops"));
    }
}

#[test]
fn migrate_applies_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b24gate.toml"), GOOD).unwrap();
    let db = dir.path().join("gate.db");
    let url = format!("sqlite://{}", db.display());
    let env = [("B24GATE_SERVER_DATABASE_URL", url.as_str())];
    let status = b24gate(
        dir.path(),
        &["-c", "b24gate.toml", "migrate", "--status", "--json"],
        &env,
    );
    assert!(status.status.success(), "{}", stderr(&status));
    let v: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert!(v["pending"].as_u64().unwrap() >= 1);
    let first = b24gate(
        dir.path(),
        &["-c", "b24gate.toml", "migrate", "--json"],
        &env,
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let v1: serde_json::Value = serde_json::from_str(&stdout(&first)).unwrap();
    assert_eq!(v1["backend"], "sqlite");
    assert_eq!(v1["applied"], v["pending"]);
    assert_eq!(v1["pending"], 0);
    assert!(db.exists());
    let second = b24gate(
        dir.path(),
        &["-c", "b24gate.toml", "migrate", "--json"],
        &env,
    );
    let v2: serde_json::Value = serde_json::from_str(&stdout(&second)).unwrap();
    assert_eq!(v2["applied"], 0);
}

#[test]
fn config_shows_secrets_only_as_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b24gate.toml"), GOOD).unwrap();
    let o = b24gate(
        dir.path(),
        &["-c", "b24gate.toml", "config", "--json"],
        &[("B24GATE_APP_CLIENT_SECRET", "very-secret-value")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains("very-secret-value"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["install_url"], "http://127.0.0.1:8080/b24/install");
    assert!(
        v["secrets"]
            .as_str()
            .unwrap()
            .contains("client_secret: \"[set]\"")
    );
}

#[test]
fn serve_needs_a_master_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b24gate.toml"), GOOD).unwrap();
    let db = dir.path().join("gate.db");
    let url = format!("sqlite://{}", db.display());
    let o = b24gate(
        dir.path(),
        &["-c", "b24gate.toml", "serve"],
        &[("B24GATE_SERVER_DATABASE_URL", &url)],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`B24GATE_MASTER_KEY`"),
        "{}",
        stderr(&o)
    );
    assert!(!db.exists());
}

#[test]
fn serve_answers_health_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b24gate.toml"), GOOD).unwrap();
    let url = format!("sqlite://{}", dir.path().join("gate.db").display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_b24gate"));
    cmd.current_dir(dir.path())
        .args(["-c", "b24gate.toml", "serve"])
        .env("B24GATE_SERVER_DATABASE_URL", &url)
        .env("B24GATE_SERVER_LISTEN", "127.0.0.1:0")
        .env("B24GATE_MASTER_KEY", "42".repeat(32))
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(line.contains("serving on"), "{line}");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The main job: every stage checks out, and the JSON report says so.
#[test]
fn demo_runs_every_stage_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let o = b24gate(dir.path(), &["demo", "--json"], &[]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], true);
    let stages = v["stages"].as_array().unwrap();
    let names: Vec<_> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    for want in [
        "install (flow A: ONAPPINSTALL)",
        "install (flow B: installer page)",
        "online events",
        "offline events",
        "update with version drift and a migration",
        "method confirmation (allowed)",
        "method confirmation (denied)",
        "uninstall CLEAN=0",
        "uninstall CLEAN=1",
        "reinstall",
    ] {
        assert!(names.contains(&want), "missing stage {want}: {names:?}");
    }
    assert!(
        stages
            .iter()
            .all(|s| s["ok"] == true && s["detail"].is_string())
    );
    assert!(
        v["problems"].as_array().unwrap().is_empty(),
        "{}",
        v["problems"]
    );
    assert!(!v["bindings"].as_array().unwrap().is_empty());
}

/// `b24gate call` through an incoming webhook of an emulated portal, a plain
/// call and a whole list streamed as JSON lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_through_a_webhook_prints_results_and_streams_lists() {
    let emu = b24emu::Emulator::start(b24emu::EmulatorConfig::default())
        .await
        .unwrap();
    let p = emu
        .create_portal(b24emu::PortalSpec {
            name: Some("hooked".into()),
            ..Default::default()
        })
        .unwrap();
    let hook = emu
        .create_webhook(
            &p.member_id,
            b24emu::WebhookSpec {
                user_id: Some(1),
                scopes: vec!["crm".into()],
            },
        )
        .unwrap();
    let url = hook["url"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        b24gate(
            &d,
            &[
                "call",
                "--webhook",
                &u,
                "--allow-http",
                "crm.deal.add",
                r#"{"fields":{"TITLE":"via cli"}}"#,
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        v["result"].as_u64().is_some() || v["result"].is_string(),
        "{v}"
    );
    emu.changes(
        &p.member_id,
        b24emu::ChangeSpec {
            entity: "deal".into(),
            action: "add".into(),
            count: 120,
            user_id: 1,
            id: None,
            client_id: None,
            auth_connector: String::new(),
            fields: Default::default(),
        },
    )
    .unwrap();
    let d = dir.path().to_owned();
    let u = url.clone();
    let listed = tokio::task::spawn_blocking(move || {
        b24gate(
            &d,
            &[
                "call",
                "--webhook",
                &u,
                "--allow-http",
                "--all",
                "crm.deal.list",
                "{}",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert!(listed.status.success(), "{}", stderr(&listed));
    let lines: Vec<_> = stdout(&listed).lines().map(str::to_owned).collect();
    // 120 changes plus the one deal added through the CLI above.
    assert_eq!(lines.len(), 121, "every deal, one JSON line each");
    for l in &lines {
        let item: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(item["ID"].is_string() || item["ID"].is_number());
    }
    // The webhook code is a secret: it appears in no error message.
    let code = url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let d = dir.path().to_owned();
    let u = url.clone();
    let bad = tokio::task::spawn_blocking(move || {
        b24gate(
            &d,
            &["call", "--webhook", &u, "--allow-http", "no.such.method"],
            &[],
        )
    })
    .await
    .unwrap();
    assert!(!bad.status.success());
    assert!(!stderr(&bad).contains(&code), "{}", stderr(&bad));
    emu.shutdown().await;
}
