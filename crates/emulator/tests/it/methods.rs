//! Method shapes (§5), envelopes (§6), request forms, routing, batch, crm lists.

use b24emu::PortalSpec;
use serde_json::{Value, json};

use crate::common::*;

const TIME_KEYS: &[&str] = &[
    "date_finish",
    "date_start",
    "duration",
    "finish",
    "operating",
    "operating_reset_at",
    "processing",
    "start",
];

#[tokio::test]
async fn success_envelope_and_system_method_shapes() {
    let emu = emu().await;
    let s = setup(
        &emu,
        "shapes",
        crm_app(),
        PortalSpec {
            features: vec!["rest_offline_extended".into()],
            ..Default::default()
        },
    );
    let (st, v) = call(&s.endpoint, &s.token, "server.time", json!({})).await;
    assert_eq!(st, 200);
    assert_eq!(keys(&v), sorted(&["result", "time"]));
    assert_eq!(keys(&v["time"]), sorted(TIME_KEYS));
    assert!(v["time"]["start"].is_f64() && v["time"]["operating_reset_at"].is_i64());
    let t = v["result"].as_str().unwrap();
    assert!(
        t.len() == 25 && t.ends_with("+00:00") && &t[10..11] == "T",
        "{t}"
    );

    let info = ok(&s.endpoint, &s.token, "app.info", json!({})).await;
    assert_eq!(
        keys(&info),
        sorted(&[
            "CODE",
            "DAYS",
            "ID",
            "INSTALLED",
            "LANGUAGE_ID",
            "LICENSE",
            "LICENSE_FAMILY",
            "LICENSE_TYPE",
            "PAYMENT_EXPIRED",
            "STATUS",
            "VERSION"
        ])
    );
    assert_eq!(
        (
            info["CODE"].as_str(),
            info["STATUS"].as_str(),
            info["VERSION"].as_u64()
        ),
        (Some(s.client_id.as_str()), Some("L"), Some(1))
    );
    assert!(info["ID"].is_u64() && info["INSTALLED"].is_boolean() && info["DAYS"].is_null());

    assert_eq!(
        ok(&s.endpoint, &s.token, "scope", json!({})).await,
        json!(["crm", "placement", "user"])
    );
    assert!(
        ok(&s.endpoint, &s.token, "scope", json!({"full": true}))
            .await
            .as_array()
            .unwrap()
            .len()
            > 3
    );
    assert_eq!(
        ok(
            &s.endpoint,
            &s.token,
            "method.get",
            json!({"name": "crm.deal.list"})
        )
        .await,
        json!({"isExisting": true, "isAvailable": true})
    );
    assert_eq!(
        ok(
            &s.endpoint,
            &s.token,
            "method.get",
            json!({"name": "voximplant.user.get"})
        )
        .await,
        json!({"isExisting": true, "isAvailable": false})
    );
    assert_eq!(
        ok(&s.endpoint, &s.token, "method.get", json!({})).await,
        json!({"isExisting": false, "isAvailable": false})
    );
    let methods = ok(&s.endpoint, &s.token, "methods", json!({})).await;
    assert!(methods.as_array().unwrap().contains(&json!("crm.deal.add")));
    assert_eq!(
        ok(
            &s.endpoint,
            &s.token,
            "feature.get",
            json!({"CODE": "rest_offline_extended"})
        )
        .await,
        json!({"value": "Y"})
    );
    assert_eq!(
        ok(
            &s.endpoint,
            &s.token,
            "feature.get",
            json!({"CODE": "rest_auth_connector"})
        )
        .await,
        json!({"value": "N"})
    );
    let (st, v) = call(&s.endpoint, &s.token, "feature.get", json!({})).await;
    assert_eq!(
        (st, v),
        (
            400,
            json!({"error": "CODE_EMPTY", "error_description": "CODE can't be empty"})
        )
    );
    let p = ok(&s.endpoint, &s.token, "profile", json!({})).await;
    assert_eq!(
        keys(&p),
        sorted(&[
            "ADMIN",
            "ID",
            "LAST_NAME",
            "NAME",
            "PERSONAL_GENDER",
            "TIME_ZONE",
            "TIME_ZONE_OFFSET"
        ])
    );
    assert_eq!(
        (p["ID"].as_str(), p["ADMIN"].as_bool()),
        (Some("1"), Some(true))
    );
    assert_eq!(
        ok(&s.endpoint, &s.token, "user.admin", json!({})).await,
        json!(true)
    );
    let (_, users) = call(&s.endpoint, &s.token, "user.get", json!({})).await;
    assert_eq!(users["total"], 3);
    assert_eq!(users["result"][0]["ID"], "1");
    assert_eq!(
        ok(&s.endpoint, &s.token, "user.get", json!({"ID": 2}))
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    assert_eq!(
        ok(&s.endpoint, &s.token, "app.option.get", json!({})).await,
        json!([]),
        "empty map is []"
    );
    assert_eq!(
        ok(
            &s.endpoint,
            &s.token,
            "app.option.set",
            json!({"options": {"a": "1", "b": "x"}})
        )
        .await,
        json!(true)
    );
    assert_eq!(
        ok(&s.endpoint, &s.token, "app.option.get", json!({})).await,
        json!({"a": "1", "b": "x"})
    );
    assert_eq!(
        ok(
            &s.endpoint,
            &s.token,
            "app.option.get",
            json!({"option": "b"})
        )
        .await,
        json!("x")
    );
}

#[tokio::test]
async fn placements_bind_get_list_unbind() {
    let emu = emu().await;
    let s = setup(&emu, "place", crm_app(), PortalSpec::default());
    let list = ok(&s.endpoint, &s.token, "placement.list", json!({})).await;
    assert!(
        list.as_array()
            .unwrap()
            .contains(&json!("CRM_DEAL_DETAIL_TAB"))
    );
    assert!(!list.as_array().unwrap().contains(&json!("TASK_VIEW_TAB")));
    let p = json!({"PLACEMENT": "CRM_DEAL_DETAIL_TAB", "HANDLER": "https://app.example.com/tab", "TITLE": "Tab"});
    assert_eq!(
        ok(&s.endpoint, &s.token, "placement.bind", p.clone()).await,
        json!(true)
    );
    let (st, v) = call(&s.endpoint, &s.token, "placement.bind", p).await;
    assert_eq!(
        (st, v["error_description"].as_str()),
        (
            400,
            Some("Unable to set placement handler: Handler already binded")
        )
    );
    let (_, v) = call(
        &s.endpoint,
        &s.token,
        "placement.bind",
        json!({"PLACEMENT": "NOPE", "HANDLER": "https://a.example/"}),
    )
    .await;
    assert_eq!(v["error"], "ERROR_PLACEMENT_NOT_FOUND");
    let got = ok(&s.endpoint, &s.token, "placement.get", json!({})).await;
    assert_eq!(
        keys(&got[0]),
        sorted(&[
            "description",
            "handler",
            "langAll",
            "options",
            "placement",
            "title",
            "userId"
        ])
    );
    assert_eq!(
        (got[0]["placement"].as_str(), got[0]["title"].as_str()),
        (Some("CRM_DEAL_DETAIL_TAB"), Some("Tab"))
    );
    assert_eq!(
        ok(
            &s.endpoint,
            &s.token,
            "placement.unbind",
            json!({"PLACEMENT": "CRM_DEAL_DETAIL_TAB"})
        )
        .await,
        json!({"count": 1})
    );
}

#[tokio::test]
async fn unknown_method_and_missing_scope_errors() {
    let emu = emu().await;
    let s = setup(&emu, "errs", crm_app(), PortalSpec::default());
    let (st, v) = call(&s.endpoint, &s.token, "no.such.method", json!({})).await;
    assert_eq!(
        (st, v),
        (
            404,
            json!({"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"})
        )
    );
    let (st, v) = call(&s.endpoint, &s.token, "voximplant.user.get", json!({})).await;
    assert_eq!((st, v["error"].as_str()), (403, Some("insufficient_scope")));
    let (st, v) = call(&s.endpoint, "", "profile", json!({})).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("NO_AUTH_FOUND")));
    let (st, v) = call(&s.endpoint, "deadbeef", "profile", json!({})).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_token")));
    let r = http()
        .get(format!("{}/p/nosuch/rest/profile", emu.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn params_and_token_arrive_in_every_supported_form() {
    let emu = emu().await;
    let s = setup(&emu, "forms", crm_app(), PortalSpec::default());
    let c = http();
    // GET query, method in mixed case with .json.
    let r: Value = c
        .get(format!(
            "{}CRM.Deal.Add.json?auth={}&fields[TITLE]=q+1",
            s.endpoint, s.token
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id1 = r["result"].as_u64().unwrap();
    // Form body with percent-encoded brackets, token as access_token.
    let r: Value = c
        .post(format!("{}crm.deal.add", s.endpoint))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "access_token={}&fields%5BTITLE%5D=f+2&fields%5BOPPORTUNITY%5D=10.5",
            s.token
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id2 = r["result"].as_u64().unwrap();
    // JSON body with a Bearer token.
    let r: Value = c
        .post(format!("{}crm.deal.get", s.endpoint))
        .bearer_auth(&s.token)
        .json(&json!({"id": id2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            r["result"]["TITLE"].as_str(),
            r["result"]["OPPORTUNITY"].as_str()
        ),
        (Some("f 2"), Some("10.5"))
    );
    // multipart/form-data.
    let body = format!(
        "--b1\r\nContent-Disposition: form-data; name=\"auth\"\r\n\r\n{}\r\n--b1\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n{id1}\r\n--b1--\r\n",
        s.token
    );
    let r: Value = c
        .post(format!("{}crm.deal.get", s.endpoint))
        .header("content-type", "multipart/form-data; boundary=b1")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"]["TITLE"], "q 1");
    // Host routing: the default domain {name}.localhost:{port} routes too.
    let r: Value = c
        .get(format!(
            "{}/rest/crm.deal.get?id={id1}&auth={}",
            emu.http_url(),
            s.token
        ))
        .header("host", format!("forms.localhost:{}", emu.urls().http_port))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"]["TITLE"], "q 1");
    // A host-mode portal hands out http://{domain}/rest/.
    let p = emu
        .create_portal(PortalSpec {
            name: Some("hosted".into()),
            domain: Some("hosted.example.com".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(p.client_endpoint, "http://hosted.example.com/rest/");
    let r = c
        .get(format!("{}/rest/server.time", emu.http_url()))
        .header("host", "hosted.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "routed to the portal, which wants a token");
}

#[tokio::test]
async fn deal_list_pages_filters_orders_and_selects() {
    let emu = emu().await;
    let s = setup(&emu, "list", crm_app(), PortalSpec::default());
    emu.set_limits(
        &s.member_id,
        b24emu::LimitsSpec {
            rate_limit: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    emu.changes(
        &s.member_id,
        b24emu::ChangeSpec {
            count: 120,
            user_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let (_, p1) = call(&s.endpoint, &s.token, "crm.deal.list", json!({})).await;
    assert_eq!(
        (
            p1["result"].as_array().unwrap().len(),
            p1["next"].as_u64(),
            p1["total"].as_u64()
        ),
        (50, Some(50), Some(120))
    );
    let (_, p3) = call(
        &s.endpoint,
        &s.token,
        "crm.deal.list",
        json!({"start": 100}),
    )
    .await;
    assert_eq!(p3["result"].as_array().unwrap().len(), 20);
    assert!(p3.get("next").is_none(), "last page has no next");
    let (_, fast) = call(&s.endpoint, &s.token, "crm.deal.list", json!({"start": -1, "order": {"ID": "ASC"}, "filter": {">ID": 60}, "select": ["ID", "TITLE"]})).await;
    assert!(fast.get("total").is_none() && fast.get("next").is_none());
    assert_eq!(fast["result"][0], json!({"ID": "61", "TITLE": "Deal #61"}));
    assert_eq!(fast["result"].as_array().unwrap().len(), 50);
    let (_, desc) = call(
        &s.endpoint,
        &s.token,
        "crm.deal.list",
        json!({"order": {"ID": "DESC"}, "filter": {"<=ID": 3}}),
    )
    .await;
    let ids: Vec<&str> = desc["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["ID"].as_str().unwrap())
        .collect();
    assert_eq!(
        (ids, desc["total"].as_u64()),
        (vec!["3", "2", "1"], Some(3))
    );
    let fields = ok(&s.endpoint, &s.token, "crm.deal.fields", json!({})).await;
    assert_eq!(
        keys(&fields["TITLE"]),
        sorted(&[
            "isDynamic",
            "isImmutable",
            "isMultiple",
            "isReadOnly",
            "isRequired",
            "title",
            "type"
        ])
    );
    assert_eq!(fields["ID"]["isReadOnly"], true);
    assert_eq!(
        ok(&s.endpoint, &s.token, "crm.deal.delete", json!({"id": 1})).await,
        json!(true)
    );
    let (st, v) = call(&s.endpoint, &s.token, "crm.deal.get", json!({"id": 1})).await;
    assert_eq!(
        (st, v),
        (400, json!({"error": "", "error_description": "Not found"}))
    );
}

#[tokio::test]
async fn batch_references_halt_limits_and_empty_maps() {
    let emu = emu().await;
    let s = setup(&emu, "batch", crm_app(), PortalSpec::default());
    let r = ok(
        &s.endpoint,
        &s.token,
        "batch",
        json!({"cmd": {
            "a": "crm.deal.add?fields[TITLE]=first",
            "b": "crm.deal.get?id=$result[a]",
            "c": "crm.deal.list?filter[ID]=$result[b][ID]&select[]=TITLE",
        }}),
    )
    .await;
    assert_eq!(
        keys(&r),
        sorted(&[
            "result",
            "result_error",
            "result_next",
            "result_time",
            "result_total"
        ])
    );
    assert_eq!(r["result_error"], json!([]), "empty map is []");
    assert_eq!(r["result_next"], json!([]));
    assert_eq!(r["result"]["b"]["TITLE"], "first");
    assert_eq!(r["result"]["c"][0]["TITLE"], "first");
    assert_eq!(r["result_total"], json!({"c": 1}));
    assert_eq!(keys(&r["result_time"]["a"]), sorted(TIME_KEYS));
    let r = ok(
        &s.endpoint,
        &s.token,
        "batch",
        json!({"halt": 1, "cmd": ["crm.deal.get?id=999", "server.time", "batch?cmd[0]=x"]}),
    )
    .await;
    assert_eq!(r["result"], json!([]));
    // PHP arrays with keys 0..n-1 are JSON lists.
    assert_eq!(
        r["result_error"].as_array().unwrap().len(),
        1,
        "halted after the first error"
    );
    let r = ok(
        &s.endpoint,
        &s.token,
        "batch",
        json!({"cmd": ["no.method", "batch", "voximplant.user.get", "server.time"]}),
    )
    .await;
    assert_eq!(r["result_error"][0]["error"], "ERROR_METHOD_NOT_FOUND");
    assert_eq!(
        r["result_error"][1]["error"],
        "ERROR_BATCH_METHOD_NOT_ALLOWED"
    );
    assert_eq!(r["result_error"][2]["error"], "insufficient_scope");
    assert!(r["result"]["3"].is_string());
    let cmds: Vec<Value> = (0..51).map(|_| json!("server.time")).collect();
    let r = ok(&s.endpoint, &s.token, "batch", json!({"cmd": cmds})).await;
    assert_eq!(r["result"].as_array().unwrap().len(), 50);
    assert_eq!(
        r["result_error"]["50"]["error"],
        "ERROR_BATCH_LENGTH_EXCEEDED"
    );
    // Form-encoded batch with a double-encoded inner query.
    let body = format!(
        "auth={}&cmd%5Bt%5D=crm.deal.add%3Ffields%255BTITLE%255D%3Dx%2520y",
        s.token
    );
    let v: Value = http()
        .post(format!("{}batch", s.endpoint))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["result"]["result"]["t"].as_u64().unwrap();
    assert_eq!(
        ok(&s.endpoint, &s.token, "crm.deal.get", json!({"id": id})).await["TITLE"],
        "x y"
    );
}

#[tokio::test]
async fn deal_list_walks_by_id_from_the_filters_floor_and_still_sorts_other_fields() {
    let emu = emu().await;
    let s = setup(&emu, "keyset", crm_app(), PortalSpec::default());
    let path = format!("/portals/{}/changes", s.member_id);
    control(&emu, &path, json!({"count": 120, "user_id": 1})).await;
    let list = |p: Value| {
        let (e, t) = (s.endpoint.clone(), s.token.clone());
        async move { call(&e, &t, "crm.deal.list", p).await.1 }
    };
    let ids = |v: &Value| -> Vec<u64> {
        v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["ID"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let v = list(json!({"start": -1, "order": {"ID": "DESC"}, "filter": {">=ID": "100.5"}})).await;
    assert_eq!(ids(&v), (101..=120).rev().collect::<Vec<_>>());
    let v = list(json!({"filter": {">ID": 118, "<ID": 120}, "order": {"id": "asc"}})).await;
    assert_eq!((ids(&v), v["total"].as_u64()), (vec![119], Some(1)));
    let v = list(json!({"filter": {">ID": 200}})).await;
    assert_eq!((ids(&v), v["total"].as_u64()), (vec![], Some(0)));
    let v = list(json!({"order": {"TITLE": "DESC"}, "select": ["TITLE"]})).await;
    assert_eq!(v["result"][0], json!({"ID": "99", "TITLE": "Deal #99"}));
}
