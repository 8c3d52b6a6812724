//! Install flows A and B, update, uninstall/reinstall, rename, confirmation,
//! webhooks, payment gating.

use b24emu::{
    AppKind, AppSpec, ChangeSpec, ConfirmSpec, InstallSpec, PaymentSpec, PortalSpec, RenameSpec,
    UninstallSpec, UpdateEvent, UpdateSpec, WebhookSpec,
};
use serde_json::json;

use crate::common::*;

const TOKEN_AUTH: &[&str] = &[
    "access_token",
    "application_token",
    "client_endpoint",
    "domain",
    "expires",
    "expires_in",
    "member_id",
    "refresh_token",
    "scope",
    "server_endpoint",
    "status",
    "user_id",
];
const NO_TOKEN_AUTH: &[&str] = &[
    "application_token",
    "client_endpoint",
    "domain",
    "member_id",
    "server_endpoint",
];

#[tokio::test]
async fn flow_a_install_posts_onappinstall_with_full_token_set() {
    let emu = emu().await;
    let rx = Receiver::start().await;
    let s = setup(
        &emu,
        "acme",
        AppSpec {
            install_url: rx.url("/install"),
            ..crm_app()
        },
        PortalSpec::default(),
    );
    let hit = rx.wait("/install", 1).await.remove(0);
    assert_eq!(hit.content_type, "application/x-www-form-urlencoded");
    assert!(
        hit.body.contains("auth%5Baccess_token%5D="),
        "PHP-style encoded brackets: {}",
        hit.body
    );
    let f = hit.form();
    assert_eq!(f["event"], "ONAPPINSTALL");
    assert_eq!(sub_keys(&f, "auth"), sorted(TOKEN_AUTH));
    assert_eq!(
        sub_keys(&f, "data"),
        sorted(&["ACTIVE", "INSTALLED", "LANGUAGE_ID", "VERSION"])
    );
    assert_eq!(
        (
            f["data[VERSION]"].as_str(),
            f["data[ACTIVE]"].as_str(),
            f["data[INSTALLED]"].as_str()
        ),
        ("1", "Y", "Y")
    );
    assert!(is_hex(&f["auth[access_token]"], 70));
    assert!(is_hex(&f["auth[refresh_token]"], 70));
    assert!(is_hex(&f["auth[member_id]"], 32));
    assert_eq!(f["auth[member_id]"], s.member_id);
    assert_eq!(f["auth[application_token]"], s.application_token);
    assert!(is_hex(&f["auth[application_token]"], 32));
    assert_eq!(
        f["auth[domain]"],
        format!("acme.localhost:{}", emu.urls().http_port)
    );
    assert_eq!(
        f["auth[client_endpoint]"],
        format!("{}/p/acme/rest/", emu.http_url())
    );
    assert_eq!(
        f["auth[server_endpoint]"],
        format!("{}/rest/", emu.oauth_url())
    );
    assert_eq!(f["auth[scope]"], "crm,placement,user");
    assert_eq!(f["auth[status]"], "L");
    assert_eq!(f["auth[user_id]"], "1");
    assert_eq!(f["auth[expires_in]"], "3600");
    let exp: i64 = f["auth[expires]"].parse().unwrap();
    let ts: i64 = f["ts"].parse().unwrap();
    assert_eq!(exp - ts, 3600);
    assert!(f["event_handler_id"].parse::<u64>().is_ok());
    // The token delivered works against the portal.
    let info = ok(&s.endpoint, &f["auth[access_token]"], "app.info", json!({})).await;
    assert_eq!(info["INSTALLED"], json!(true));
}

#[tokio::test]
async fn flow_b_installer_post_and_events_gated_until_install_finish() {
    let emu = emu().await;
    let rx = Receiver::start().await;
    let s = setup(
        &emu,
        "wizard",
        AppSpec {
            install_url: rx.url("/installer"),
            installer: true,
            ..crm_app()
        },
        PortalSpec::default(),
    );
    let hit = rx.wait("/installer", 1).await.remove(0);
    let q = hit.query_map();
    assert_eq!(
        q["DOMAIN"],
        format!("wizard.localhost:{}", emu.urls().http_port)
    );
    assert_eq!(q["PROTOCOL"], "0");
    assert_eq!(q["LANG"], "en");
    assert!(is_hex(&q["APP_SID"], 32));
    let f = hit.form();
    let mut k: Vec<&str> = f.keys().map(String::as_str).collect();
    k.sort();
    assert_eq!(
        k,
        [
            "APPLICATION_SCOPE",
            "APPLICATION_TOKEN",
            "AUTH_EXPIRES",
            "AUTH_ID",
            "PLACEMENT",
            "REFRESH_ID",
            "SERVER_ENDPOINT",
            "member_id",
            "status"
        ]
    );
    assert_eq!(f["AUTH_EXPIRES"], "3600");
    assert_eq!(f["PLACEMENT"], "DEFAULT");
    assert_eq!(f["APPLICATION_SCOPE"], "crm,placement,user");
    assert_eq!(f["member_id"], s.member_id);
    let token = f["AUTH_ID"].clone();
    assert_eq!(
        ok(&s.endpoint, &token, "app.info", json!({})).await["INSTALLED"],
        json!(false)
    );
    for ev in ["ONAPPINSTALL", "ONCRMDEALADD"] {
        ok(
            &s.endpoint,
            &token,
            "event.bind",
            json!({"event": ev, "handler": rx.url("/events")}),
        )
        .await;
    }
    let before = queued(&emu);
    emu.changes(
        &s.member_id,
        ChangeSpec {
            user_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(queued(&emu), before, "no events while INSTALLED=N");
    let (st, _) = control(
        &emu,
        &format!("/portals/{}/install-finish", s.member_id),
        json!({"client_id": s.client_id}),
    )
    .await;
    assert_eq!(st, 200);
    let install = rx.wait("/events", 1).await.remove(0).form();
    assert_eq!(install["event"], "ONAPPINSTALL");
    assert_eq!(install["auth[application_token]"], f["APPLICATION_TOKEN"]);
    assert_eq!(
        ok(&s.endpoint, &token, "app.info", json!({})).await["INSTALLED"],
        json!(true)
    );
    emu.changes(
        &s.member_id,
        ChangeSpec {
            user_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let hits = rx.wait("/events", 2).await;
    assert_eq!(hits[1].form()["event"], "ONCRMDEALADD");
    let (st, _) = control(
        &emu,
        &format!("/portals/{}/install-finish", s.member_id),
        json!({"client_id": s.client_id}),
    )
    .await;
    assert_eq!(st, 409, "finishing twice is refused");
}

#[tokio::test]
async fn uninstall_sends_no_tokens_then_reinstall_starts_with_no_bindings() {
    let emu = emu().await;
    let rx = Receiver::start().await;
    let s = setup(
        &emu,
        "gone",
        AppSpec {
            install_url: rx.url("/install"),
            installer: true,
            ..crm_app()
        },
        PortalSpec::default(),
    );
    for ev in ["ONAPPUNINSTALL", "ONCRMDEALADD"] {
        ok(
            &s.endpoint,
            &s.token,
            "event.bind",
            json!({"event": ev, "handler": rx.url("/events")}),
        )
        .await;
    }
    ok(
        &s.endpoint,
        &s.token,
        "placement.bind",
        json!({"PLACEMENT": "CRM_DEAL_DETAIL_TAB", "HANDLER": rx.url("/tab")}),
    )
    .await;
    let (st, _) = control(
        &emu,
        &format!("/portals/{}/uninstall", s.member_id),
        json!({"client_id": s.client_id, "clean": true}),
    )
    .await;
    assert_eq!(st, 200);
    let f = rx.wait("/events", 1).await.remove(0).form();
    assert_eq!(f["event"], "ONAPPUNINSTALL");
    assert_eq!(sub_keys(&f, "auth"), sorted(NO_TOKEN_AUTH));
    assert_eq!(f["data[CLEAN]"], "1");
    assert_eq!(f["data[LANGUAGE_ID]"], "en");
    assert_eq!(f["auth[application_token]"], s.application_token);
    let (st, v) = call(&s.endpoint, &s.token, "app.info", json!({})).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_token")));
    let state = emu.portal_state(&s.member_id).unwrap();
    let app = &state["apps"][0];
    assert_eq!(
        (app["active"].clone(), app["installed"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(
        app["tokens"],
        json!({"valid": 0, "expired": 0, "refresh": 0})
    );
    let re = emu
        .reinstall(
            &s.member_id,
            InstallSpec {
                client_id: s.client_id.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        re.tokens.application_token, s.application_token,
        "application_token kept by default"
    );
    assert_eq!(
        ok(&s.endpoint, &re.tokens.access_token, "event.get", json!({})).await,
        json!([])
    );
    assert_eq!(
        ok(
            &s.endpoint,
            &re.tokens.access_token,
            "placement.get",
            json!({})
        )
        .await,
        json!([])
    );
}

#[tokio::test]
async fn update_fires_onappupdate_and_onappinstall_per_update_event() {
    let emu = emu().await;
    let rx = Receiver::start().await;
    let s = setup(
        &emu,
        "upd",
        AppSpec {
            install_url: rx.url("/install"),
            update_event: Some(UpdateEvent::Both),
            ..crm_app()
        },
        PortalSpec::default(),
    );
    rx.wait("/install", 1).await;
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONAPPUPDATE", "handler": rx.url("/update")}),
    )
    .await;
    let v = emu
        .update(
            &s.member_id,
            UpdateSpec {
                client_id: s.client_id.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(v, 2);
    let u = rx.wait("/update", 1).await.remove(0).form();
    assert_eq!(u["event"], "ONAPPUPDATE");
    assert_eq!(
        (
            u["data[VERSION]"].as_str(),
            u["data[PREVIOUS_VERSION]"].as_str()
        ),
        ("2", "1")
    );
    assert_eq!(sub_keys(&u, "auth"), sorted(TOKEN_AUTH));
    let i = rx.wait("/install", 2).await.remove(1).form();
    assert_eq!(
        (i["event"].as_str(), i["data[VERSION]"].as_str()),
        ("ONAPPINSTALL", "2")
    );
    assert_eq!(
        ok(&s.endpoint, &s.token, "app.info", json!({})).await["VERSION"],
        json!(2)
    );
}

#[tokio::test]
async fn renamed_portal_answers_302_from_old_prefix_and_host() {
    let emu = emu().await;
    let s = setup(&emu, "old", crm_app(), PortalSpec::default());
    let port = emu.urls().http_port;
    let info = emu
        .rename(
            &s.member_id,
            RenameSpec {
                domain: Some(format!("new.localhost:{port}")),
                name: None,
            },
        )
        .unwrap();
    assert_eq!(
        info.client_endpoint,
        format!("{}/p/new/rest/", emu.http_url())
    );
    let r = http()
        .get(format!(
            "{}/p/old/rest/profile?auth={}",
            emu.http_url(),
            s.token
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(
        loc,
        format!("{}/p/new/rest/profile?auth={}", emu.http_url(), s.token)
    );
    let r = http().get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The old Host answers 302 as well.
    let r = http()
        .get(format!("{}/rest/profile", emu.http_url()))
        .header("host", format!("old.localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{}/p/new/rest/profile", emu.http_url())
    );
    let st = emu.portal_state(&s.member_id).unwrap();
    assert_eq!(st["domain"], format!("new.localhost:{port}"));
}

#[tokio::test]
async fn method_confirmation_waits_then_confirms_or_denies_per_token() {
    let emu = emu().await;
    let rx = Receiver::start().await;
    let s = setup(
        &emu,
        "vox",
        AppSpec {
            scopes: vec!["telephony".into()],
            ..Default::default()
        },
        PortalSpec::default(),
    );
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONAPPMETHODCONFIRM", "handler": rx.url("/confirm")}),
    )
    .await;
    for _ in 0..2 {
        let (st, v) = call(
            &s.endpoint,
            &s.token,
            "voximplant.user.get",
            json!({"USER_ID": [1]}),
        )
        .await;
        assert_eq!(
            (st, v["error"].as_str(), v["error_description"].as_str()),
            (
                401,
                Some("METHOD_CONFIRM_WAITING"),
                Some("Waiting for confirmation")
            )
        );
    }
    let (st, v) = control(
        &emu,
        &format!("/portals/{}/confirm", s.member_id),
        json!({"client_id": s.client_id, "method": "voximplant.user.get", "confirmed": true}),
    )
    .await;
    assert_eq!((st, v["decided"].as_u64()), (200, Some(1)));
    let f = rx.wait("/confirm", 1).await.remove(0).form();
    assert_eq!(f["event"], "ONAPPMETHODCONFIRM");
    assert_eq!(
        (
            f["data[TOKEN]"].as_str(),
            f["data[METHOD]"].as_str(),
            f["data[CONFIRMED]"].as_str()
        ),
        (s.token.as_str(), "voximplant.user.get", "1")
    );
    assert_eq!(sub_keys(&f, "auth"), sorted(NO_TOKEN_AUTH));
    let r = ok(
        &s.endpoint,
        &s.token,
        "voximplant.user.get",
        json!({"USER_ID": [1]}),
    )
    .await;
    assert_eq!(r[0]["ID"], "1");
    // A new token needs its own approval; a denial gives 403.
    let t2 = emu
        .tokens(
            &s.member_id,
            InstallSpec {
                client_id: s.client_id.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    let (st, _) = call(
        &s.endpoint,
        &t2.access_token,
        "voximplant.user.get",
        json!({}),
    )
    .await;
    assert_eq!(st, 401);
    emu.confirm(
        &s.member_id,
        ConfirmSpec {
            client_id: s.client_id.clone(),
            method: "voximplant.user.get".into(),
            confirmed: false,
        },
    )
    .unwrap();
    let (st, v) = call(
        &s.endpoint,
        &t2.access_token,
        "voximplant.user.get",
        json!({}),
    )
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (403, Some("METHOD_CONFIRM_DENIED"))
    );
}

#[tokio::test]
async fn incoming_webhook_calls_methods_but_not_oauth_only_ones() {
    let emu = emu().await;
    let s = setup(&emu, "hooks", crm_app(), PortalSpec::default());
    let (st, w) = control(
        &emu,
        &format!("/portals/{}/webhooks", s.member_id),
        json!({"user_id": 1, "scopes": ["crm"]}),
    )
    .await;
    assert_eq!(st, 200);
    let url = w["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{}1/", s.endpoint)), "{url}");
    let r = http()
        .post(format!("{url}crm.deal.add.json"))
        .json(&json!({"fields": {"TITLE": "via hook"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<serde_json::Value>().await.unwrap()["result"]
        .as_u64()
        .unwrap();
    let r: serde_json::Value = http()
        .get(format!("{url}crm.deal.get?id={id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"]["TITLE"], "via hook");
    let r = http()
        .post(format!("{url}event.bind"))
        .json(&json!({"event": "ONCRMDEALADD", "handler": "https://a.example/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "WRONG_AUTH_TYPE"
    );
    let r: serde_json::Value = http()
        .get(format!("{url}app.info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&r["result"]), sorted(&["LICENSE", "SCOPE"]));
    let r = http().get(format!("{url}user.get")).send().await.unwrap();
    assert_eq!(r.status(), 403, "webhook without the user scope");
    let bad = url.replace(&w["code"].as_str().unwrap().to_string(), "wrongcode");
    let r = http().get(format!("{bad}profile")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let _ = WebhookSpec::default();
}

#[tokio::test]
async fn expired_payment_gates_events_and_then_rest() {
    let emu = emu().await;
    let rx = Receiver::start().await;
    let s = setup(
        &emu,
        "paid",
        AppSpec {
            kind: AppKind::Market,
            ..crm_app()
        },
        PortalSpec::default(),
    );
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONCRMDEALADD", "handler": rx.url("/e")}),
    )
    .await;
    ok(
        &s.endpoint,
        &s.token,
        "event.bind",
        json!({"event": "ONAPPPAYMENT", "handler": rx.url("/pay")}),
    )
    .await;
    assert_eq!(
        ok(&s.endpoint, &s.token, "app.info", json!({})).await["STATUS"],
        "F"
    );
    emu.payment(
        &s.member_id,
        PaymentSpec {
            client_id: s.client_id.clone(),
            status: Some("P".into()),
            payment_expired: Some(true),
            days: Some(-3),
        },
    )
    .unwrap();
    let f = rx.wait("/pay", 1).await.remove(0).form();
    assert_eq!(f["event"], "ONAPPPAYMENT");
    assert_eq!(
        sub_keys(&f, "data"),
        sorted(&[
            "CODE",
            "DAYS",
            "LANGUAGE_ID",
            "PAYMENT_EXPIRED",
            "STATUS",
            "VERSION"
        ])
    );
    assert_eq!(
        (
            f["data[STATUS]"].as_str(),
            f["data[PAYMENT_EXPIRED]"].as_str(),
            f["data[DAYS]"].as_str()
        ),
        ("P", "Y", "-3")
    );
    assert_eq!(sub_keys(&f, "auth"), sorted(NO_TOKEN_AUTH));
    let before = queued(&emu);
    emu.changes(
        &s.member_id,
        ChangeSpec {
            user_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(queued(&emu), before, "no events once PAYMENT_EXPIRED=Y");
    let info = ok(&s.endpoint, &s.token, "app.info", json!({})).await;
    assert_eq!(
        (info["PAYMENT_EXPIRED"].as_str(), info["DAYS"].as_i64()),
        (Some("Y"), Some(-3))
    );
    emu.payment(
        &s.member_id,
        PaymentSpec {
            client_id: s.client_id.clone(),
            days: Some(-20),
            ..Default::default()
        },
    )
    .unwrap();
    let (st, v) = call(&s.endpoint, &s.token, "app.info", json!({})).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("PAYMENT_REQUIRED")));
    let _ = UninstallSpec::default();
}
