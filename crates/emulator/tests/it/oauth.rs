//! The OAuth server: token grants (§7), rotation, app.info (§5.12 OAuth variant).

use b24emu::{InstallSpec, PortalSpec};
use serde_json::{Value, json};

use crate::common::*;

const TOKEN_FIELDS: &[&str] = &[
    "access_token",
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

async fn token_get(emu: &b24emu::Emulator, q: &str) -> (u16, Value) {
    let r = http()
        .get(format!("{}/oauth/token/?{q}", emu.oauth_url()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_is_invalid_grant() {
    let emu = emu().await;
    let s = setup(&emu, "rot", crm_app(), PortalSpec::default());
    let q = format!(
        "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
        s.client_id, s.client_secret, s.refresh
    );
    let (st, v) = token_get(&emu, &q).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(keys(&v), sorted(TOKEN_FIELDS));
    assert_eq!(
        v["domain"],
        emu.urls().oauth_host,
        "domain is the OAuth server's"
    );
    assert_eq!(v["server_endpoint"], format!("{}/rest/", emu.oauth_url()));
    assert_eq!(v["client_endpoint"], s.endpoint);
    assert_eq!(
        (
            v["expires_in"].as_u64(),
            v["user_id"].as_u64(),
            v["member_id"].as_str()
        ),
        (Some(3600), Some(1), Some(s.member_id.as_str()))
    );
    assert!(v["expires"].is_i64());
    assert_ne!(v["refresh_token"], s.refresh);
    let (st, again) = token_get(&emu, &q).await;
    assert_eq!((st, again["error"].as_str()), (400, Some("invalid_grant")));
    // The new refresh token works once, by form POST.
    let r = http()
        .post(format!("{}/oauth/token/", emu.oauth_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
            s.client_id,
            s.client_secret,
            v["refresh_token"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fresh: Value = r.json().await.unwrap();
    assert_eq!(
        ok(
            &s.endpoint,
            fresh["access_token"].as_str().unwrap(),
            "profile",
            json!({})
        )
        .await["ID"],
        "1"
    );
}

#[tokio::test]
async fn authorization_code_grant_and_client_errors() {
    let emu = emu().await;
    let s = setup(&emu, "code", crm_app(), PortalSpec::default());
    let (_, c) = control(
        &emu,
        &format!("/portals/{}/codes", s.member_id),
        json!({"client_id": s.client_id, "user_id": 2}),
    )
    .await;
    let code = c["code"].as_str().unwrap();
    let q = format!(
        "grant_type=authorization_code&client_id={}&client_secret={}&code={code}",
        s.client_id, s.client_secret
    );
    let (st, v) = token_get(&emu, &q).await;
    assert_eq!((st, v["user_id"].as_u64()), (200, Some(2)));
    assert_eq!(
        token_get(&emu, &q).await.1["error"],
        "invalid_grant",
        "codes are single use"
    );
    let bad = format!(
        "grant_type=refresh_token&client_id={}&client_secret=wrong&refresh_token={}",
        s.client_id, s.refresh
    );
    let (st, v) = token_get(&emu, &bad).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_client")));
    let (st, v) = token_get(&emu, "client_id=x").await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test]
async fn oauth_app_info_describes_the_installation() {
    let emu = emu().await;
    let s = setup(&emu, "verify", crm_app(), PortalSpec::default());
    let r: Value = http()
        .get(format!(
            "{}/rest/app.info?auth={}",
            emu.oauth_url(),
            s.token
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = &r["result"];
    assert_eq!(
        keys(res),
        sorted(&["client_id", "expires", "install", "scope", "user_id"])
    );
    assert_eq!(
        (
            res["client_id"].as_str(),
            res["scope"].as_str(),
            res["user_id"].as_str()
        ),
        (
            Some(s.client_id.as_str()),
            Some("crm,placement,user"),
            Some("1")
        )
    );
    let i = &res["install"];
    assert_eq!(
        keys(i),
        sorted(&[
            "client_endpoint",
            "domain",
            "installed",
            "member_id",
            "member_type",
            "scope",
            "status",
            "uri",
            "version"
        ])
    );
    assert_eq!(
        (
            i["member_id"].as_str(),
            i["client_endpoint"].as_str(),
            i["installed"].as_bool()
        ),
        (
            Some(s.member_id.as_str()),
            Some(s.endpoint.as_str()),
            Some(true)
        )
    );
    assert_eq!(
        i["domain"],
        format!("verify.localhost:{}", emu.urls().http_port)
    );
    assert!(r["time"].is_object());
    let (st, _) = (
        http()
            .get(format!("{}/rest/app.info?auth=nope", emu.oauth_url()))
            .send()
            .await
            .unwrap()
            .status(),
        (),
    );
    assert_eq!(st, 401);
}

#[tokio::test]
async fn access_tokens_expire_on_the_farm_clock() {
    let emu = emu().await;
    let s = setup(&emu, "exp", crm_app(), PortalSpec::default());
    emu.clock().advance(3601.0);
    let (st, v) = call(&s.endpoint, &s.token, "profile", json!({})).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("expired_token")));
    let t = emu
        .tokens(
            &s.member_id,
            InstallSpec {
                client_id: s.client_id.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        ok(&s.endpoint, &t.access_token, "profile", json!({})).await["ID"],
        "1"
    );
}

/// `GET url` without following redirects: (status, Location, body).
async fn get_raw(url: &str, host: Option<&str>) -> (u16, String, String) {
    let mut req = http().get(url);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let r = req.send().await.unwrap();
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), loc, r.text().await.unwrap())
}

#[tokio::test]
async fn authorize_redirects_to_the_redirect_uri_with_a_code_for_the_token_endpoint() {
    let emu = emu().await;
    let s = setup(&emu, "authz", crm_app(), PortalSpec::default());
    let (st, app) = control(
        &emu,
        "/apps",
        json!({"client_id": "local.other.1", "redirect_uri": "https://app.example.com/cb?x=1"}),
    )
    .await;
    assert_eq!(
        (st, app["redirect_uri"].as_str()),
        (200, Some("https://app.example.com/cb?x=1"))
    );
    emu.set_redirect_uri(&s.client_id, "https://app.example.com/oauth/done")
        .unwrap();
    let portal = control_get(&emu, &format!("/portals/{}", s.member_id)).await;
    let base = portal["base_url"].as_str().unwrap();
    let url = format!(
        "{base}/oauth/authorize/?client_id={}&state=s+1%26x",
        s.client_id
    );
    let (st, loc, _) = get_raw(&url, None).await;
    assert_eq!(st, 302);
    let (target, query) = loc.split_once('?').unwrap();
    assert_eq!(target, "https://app.example.com/oauth/done");
    assert!(query.contains("&scope=crm%2Cplacement%2Cuser&"), "{query}");
    let q = flat(query);
    assert_eq!(
        keys(&json!(q)),
        sorted(&[
            "code",
            "domain",
            "member_id",
            "scope",
            "server_domain",
            "state"
        ])
    );
    assert_eq!(q["state"], "s 1&x");
    assert_eq!(q["domain"], portal["domain"].as_str().unwrap());
    assert_eq!(q["member_id"], s.member_id);
    assert_eq!(q["scope"], "crm,placement,user");
    assert_eq!(
        q["server_domain"],
        emu.oauth_url().trim_start_matches("http://")
    );
    assert!(is_hex(&q["code"], 70));

    let grant = |code: &str| {
        format!(
            "grant_type=authorization_code&client_id={}&client_secret={}&code={code}",
            s.client_id, s.client_secret
        )
    };
    let (st, t) = token_get(&emu, &grant(&q["code"])).await;
    assert_eq!(
        (st, t["member_id"].as_str()),
        (200, Some(s.member_id.as_str()))
    );
    assert_eq!(t["user_id"], 1, "the installing admin by default");
    let me = ok(
        &s.endpoint,
        t["access_token"].as_str().unwrap(),
        "profile",
        json!({}),
    )
    .await;
    assert_eq!(me["ID"], "1");
    assert_eq!(
        token_get(&emu, &grant(&q["code"])).await.1["error"],
        "invalid_grant"
    );

    // Host routing, another user, and a redirect URI that already has a query.
    let http_base = emu.http_url();
    let url = format!(
        "{http_base}/oauth/authorize/?client_id={}&user_id=2",
        s.client_id
    );
    let domain = portal["domain"].as_str().unwrap();
    let (st, loc, _) = get_raw(&url, Some(domain)).await;
    assert_eq!(st, 302);
    let q = flat(loc.split_once('?').unwrap().1);
    assert!(!q.contains_key("state"), "no state asked, none given back");
    assert_eq!(token_get(&emu, &grant(&q["code"])).await.1["user_id"], 2);
    emu.set_redirect_uri(&s.client_id, "https://app.example.com/cb?x=1")
        .unwrap();
    let (_, loc, _) = get_raw(
        &format!("{base}/oauth/authorize?client_id={}", s.client_id),
        None,
    )
    .await;
    assert!(
        loc.starts_with("https://app.example.com/cb?x=1&code="),
        "{loc}"
    );
}

#[tokio::test]
async fn authorize_without_a_redirect_uri_shows_the_code_and_refuses_apps_not_installed() {
    let emu = emu().await;
    let s = setup(&emu, "authz2", crm_app(), PortalSpec::default());
    let portal = control_get(&emu, &format!("/portals/{}", s.member_id)).await;
    let base = portal["base_url"].as_str().unwrap();
    let (st, _, page) = get_raw(
        &format!("{base}/oauth/authorize/?client_id={}", s.client_id),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let code = page
        .split("<code id=\"code\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap();
    let q = format!(
        "grant_type=authorization_code&client_id={}&client_secret={}&code={code}",
        s.client_id, s.client_secret
    );
    assert_eq!(token_get(&emu, &q).await.0, 200, "the shown code works");

    control(&emu, "/apps", json!({"client_id": "local.elsewhere.1"})).await;
    for (query, status, error) in [
        ("client_id=local.elsewhere.1", 404, "NOT_INSTALLED"),
        ("client_id=local.nobody.1", 404, "NOT_INSTALLED"),
        ("state=x", 400, "invalid_request"),
    ] {
        let (st, _, body) = get_raw(&format!("{base}/oauth/authorize/?{query}"), None).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((st, v["error"].as_str()), (status, Some(error)), "{query}");
    }
    let (st, _, _) = get_raw(
        &format!(
            "{}/p/nosuch/oauth/authorize/?client_id={}",
            emu.http_url(),
            s.client_id
        ),
        None,
    )
    .await;
    assert_eq!(st, 404);
}
