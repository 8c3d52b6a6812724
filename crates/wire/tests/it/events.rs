use wire::event::{self, Event};
use wire::form::{self, Limits};
use wire::{AppStatus, EventData, EventError, FormValue};

use crate::{ACCESS, APP_TOKEN, MEMBER_ID, REFRESH, fixture};

fn parse(rel: &str) -> Event {
    let body = fixture(&format!("events/{rel}"));
    Event::parse(&body, &Limits::default()).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn scopes(e: &Event) -> Vec<String> {
    let user = e.auth.user.as_ref().expect("user token set");
    user.scope.iter().map(|s| s.as_str().to_owned()).collect()
}

/// Checks the four fields every delivery carries (§2.3 "always").
fn assert_portal(e: &Event) {
    assert_eq!(e.auth.member_id.as_str(), MEMBER_ID);
    assert_eq!(e.auth.domain.as_str(), "example.bitrix24.com");
    assert_eq!(
        e.auth.client_endpoint.as_str(),
        "https://example.bitrix24.com/rest/"
    );
    assert_eq!(
        e.auth.server_endpoint.as_str(),
        "https://oauth.bitrix.info/rest/"
    );
    assert_eq!(e.ts, 1766047124);
}

fn assert_user(e: &Event, status: AppStatus, refresh: bool) {
    let u = e.auth.user.as_ref().expect("user token set");
    assert_eq!(u.access_token.expose_secret(), ACCESS);
    assert_eq!(u.expires, 1766050724);
    assert_eq!(u.expires_in, 3600);
    assert_eq!(u.user_id, 1);
    assert_eq!(u.status, status);
    assert_eq!(
        u.refresh_token.as_ref().map(|r| r.expose_secret()),
        refresh.then_some(REFRESH)
    );
}

fn app_token(e: &Event) -> Option<&str> {
    e.auth.application_token.as_ref().map(|t| t.expose_secret())
}

#[test]
fn every_event_fixture_is_what_http_build_query_writes() {
    for rel in [
        "onappinstall.txt",
        "onappupdate.txt",
        "onappuninstall_clean1.txt",
        "onappuninstall_clean0.txt",
        "onappmethodconfirm.txt",
        "onapppayment.txt",
        "onapptest.txt",
        "onofflineevent.txt",
        "oncrmdealupdate_user.txt",
        "oncrmdealupdate_robot.txt",
    ] {
        let body = fixture(&format!("events/{rel}"));
        let tree = form::decode(&body, &Limits::default()).unwrap();
        assert_eq!(form::encode(&tree).as_bytes(), &body[..], "{rel}");
    }
}

#[test]
fn onappinstall_flow_a() {
    let e = parse("onappinstall.txt");
    assert_eq!(e.name.as_str(), event::ONAPPINSTALL);
    assert_eq!(e.handler_id, Some(1));
    assert_portal(&e);
    assert_user(&e, AppStatus::Local, true);
    assert_eq!(scopes(&e), ["crm", "placement", "user_brief"]);
    assert_eq!(app_token(&e), Some(APP_TOKEN));
    let EventData::AppInstall(d) = &e.data else {
        panic!("{:?}", e.data)
    };
    assert_eq!(d.version, "1");
    assert!(d.active);
    assert!(d.installed);
    assert_eq!(d.language_id.as_deref(), Some("en"));
}

#[test]
fn onappupdate() {
    let e = parse("onappupdate.txt");
    assert_eq!(e.handler_id, Some(2));
    assert_portal(&e);
    assert_user(&e, AppStatus::Paid, true);
    assert_eq!(
        scopes(&e),
        ["crm", "placement", "user_brief", "pull", "userfieldconfig"]
    );
    assert_eq!(app_token(&e), Some(APP_TOKEN));
    let EventData::AppUpdate(d) = &e.data else {
        panic!("{:?}", e.data)
    };
    assert_eq!(d.version, "2");
    assert_eq!(d.previous_version, "1");
    assert_eq!(d.language_id.as_deref(), Some("de"));
}

#[test]
fn onappuninstall_clean_and_keep() {
    for (rel, clean) in [
        ("onappuninstall_clean1.txt", true),
        ("onappuninstall_clean0.txt", false),
    ] {
        let e = parse(rel);
        assert_eq!(e.name.as_str(), event::ONAPPUNINSTALL);
        assert_portal(&e);
        assert!(e.auth.user.is_none(), "{rel}");
        assert_eq!(app_token(&e), Some(APP_TOKEN));
        let EventData::AppUninstall(d) = &e.data else {
            panic!("{:?}", e.data)
        };
        assert_eq!(d.clean, clean, "{rel}");
        assert_eq!(d.language_id.as_deref(), Some("en"));
    }
}

#[test]
fn onappuninstall_ignores_tokens_it_cannot_carry() {
    // §4.2 sendAuth=false: tokens here are dropped, not stored, not an error.
    let body = String::from_utf8(fixture("events/onappuninstall_clean1.txt")).unwrap();
    let body = format!(
        "{body}&auth%5Baccess_token%5D={ACCESS}&auth%5Brefresh_token%5D={REFRESH}&auth%5Bexpires_in%5D=x"
    );
    let e = Event::parse(body.as_bytes(), &Limits::default()).unwrap();
    assert!(e.auth.user.is_none());
    assert!(!format!("{e:?}").contains(ACCESS));
    // Even a malformed (nested) token is ignored rather than fatal.
    let nested = format!("{body}&auth%5Baccess_token%5D%5Bx%5D=1");
    let e = Event::parse(nested.as_bytes(), &Limits::default()).unwrap();
    assert!(e.auth.user.is_none());
}

#[test]
fn onappuninstall_without_clean_keeps_data() {
    let body = String::from_utf8(fixture("events/onappuninstall_clean1.txt")).unwrap();
    let body = body.replace("&data%5BCLEAN%5D=1", "");
    assert!(!body.contains("CLEAN"));
    let e = Event::parse(body.as_bytes(), &Limits::default()).unwrap();
    let EventData::AppUninstall(d) = &e.data else {
        panic!("{:?}", e.data)
    };
    assert!(!d.clean);
}

#[test]
fn onappmethodconfirm() {
    let e = parse("onappmethodconfirm.txt");
    assert_portal(&e);
    assert!(e.auth.user.is_none());
    assert_eq!(app_token(&e), Some(APP_TOKEN));
    let EventData::AppMethodConfirm(d) = &e.data else {
        panic!("{:?}", e.data)
    };
    assert_eq!(d.token.expose_secret(), ACCESS);
    assert_eq!(d.method, "voximplant.user.get");
    assert!(d.confirmed);
    assert_eq!(d.language_id.as_deref(), Some("en"));
    // The token is a secret type: Debug never shows it.
    assert!(!format!("{e:?}").contains(ACCESS));
}

#[test]
fn onapppayment_without_application_token() {
    let e = parse("onapppayment.txt");
    assert_portal(&e);
    assert!(e.auth.user.is_none());
    assert_eq!(app_token(&e), None);
    let EventData::AppPayment(d) = &e.data else {
        panic!("{:?}", e.data)
    };
    assert_eq!(d.code, "vendor.demoapp");
    assert_eq!(d.version, "3");
    assert_eq!(d.status, AppStatus::Paid);
    assert!(!d.payment_expired);
    assert_eq!(d.days, 25);
    assert_eq!(d.language_id.as_deref(), Some("en"));
}

#[test]
fn onapppayment_with_token_and_negative_days() {
    let body = String::from_utf8(fixture("events/onapppayment.txt")).unwrap();
    let body = body
        .replace("DAYS%5D=25", "DAYS%5D=-3")
        .replace("EXPIRED%5D=N", "EXPIRED%5D=Y")
        + "&auth%5Bapplication_token%5D="
        + APP_TOKEN;
    let e = Event::parse(body.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(app_token(&e), Some(APP_TOKEN));
    let EventData::AppPayment(d) = &e.data else {
        panic!("{:?}", e.data)
    };
    assert_eq!(d.days, -3);
    assert!(d.payment_expired);
}

#[test]
fn onapptest_keeps_query_tree() {
    let e = parse("onapptest.txt");
    assert_portal(&e);
    assert_user(&e, AppStatus::Local, true);
    let EventData::AppTest(d) = &e.data else {
        panic!("{:?}", e.data)
    };
    let q = d.query.as_ref().expect("QUERY");
    assert_eq!(
        q.get("greeting").and_then(FormValue::as_text),
        Some("hello world")
    );
    let ids: Vec<_> = q
        .get("ids")
        .and_then(FormValue::as_list)
        .unwrap()
        .iter()
        .filter_map(FormValue::as_text)
        .collect();
    assert_eq!(ids, ["7", "9"]);
    assert_eq!(d.language_id.as_deref(), Some("en"));
}

#[test]
fn onofflineevent_without_data() {
    let e = parse("onofflineevent.txt");
    assert_eq!(e.handler_id, Some(7));
    assert_portal(&e);
    assert_user(&e, AppStatus::Local, true);
    assert_eq!(e.data, EventData::OfflineEvent);
    assert!(e.raw_data().is_none());
    assert_eq!(e.canonical_data(), "null");
}

#[test]
fn entity_event_by_user_is_section_2_5() {
    let e = parse("oncrmdealupdate_user.txt");
    assert_eq!(e.name.as_str(), "ONCRMDEALUPDATE");
    assert_eq!(e.handler_id, Some(185));
    assert_portal(&e);
    // Entity events carry no refresh token (§2.4).
    assert_user(&e, AppStatus::Local, false);
    assert_eq!(scopes(&e), ["crm", "user_brief"]);
    assert_eq!(app_token(&e), Some(APP_TOKEN));
    let EventData::Other(Some(data)) = &e.data else {
        panic!("{:?}", e.data)
    };
    assert_eq!(
        data.get("FIELDS")
            .and_then(|f| f.get("ID"))
            .and_then(FormValue::as_text),
        Some("7405")
    );
    assert_eq!(e.canonical_data(), r#"{"FIELDS":{"ID":"7405"}}"#);
}

#[test]
fn entity_event_by_robot_has_no_tokens() {
    let e = parse("oncrmdealupdate_robot.txt");
    assert_portal(&e);
    assert!(e.auth.user.is_none());
    assert_eq!(app_token(&e), Some(APP_TOKEN));
    assert_eq!(e.canonical_data(), r#"{"FIELDS":{"ID":"7406"}}"#);
}

#[test]
fn debug_of_an_event_shows_no_secret() {
    for rel in [
        "onappinstall.txt",
        "onapptest.txt",
        "oncrmdealupdate_user.txt",
    ] {
        let shown = format!("{:?}", parse(rel));
        for secret in [ACCESS, REFRESH, APP_TOKEN] {
            assert!(!shown.contains(secret), "{rel}: {shown}");
        }
    }
}

#[test]
fn canonical_data_ignores_field_order() {
    let a = "event=ONX&ts=1&data[B]=2&data[A][y]=1&data[A][x]=0";
    let b = "event=ONX&ts=1&data[A][x]=0&data[B]=2&data[A][y]=1";
    let auth = format!(
        "&auth[member_id]={MEMBER_ID}&auth[domain]=a.b&auth[client_endpoint]=https://a.b/rest/\
         &auth[server_endpoint]=https://o.b/rest/&auth[application_token]={APP_TOKEN}"
    );
    let ea = Event::parse((a.to_owned() + &auth).as_bytes(), &Limits::default()).unwrap();
    let eb = Event::parse((b.to_owned() + &auth).as_bytes(), &Limits::default()).unwrap();
    assert_eq!(ea.canonical_data(), eb.canonical_data());
    assert_eq!(ea.canonical_data(), r#"{"A":{"x":"0","y":"1"},"B":"2"}"#);
}

/// Removes the pair whose (decoded) key is `key` from a fixture body.
fn without(rel: &str, key: &str) -> Vec<u8> {
    let body = String::from_utf8(fixture(&format!("events/{rel}"))).unwrap();
    let enc = key.replace('[', "%5B").replace(']', "%5D");
    let kept: Vec<&str> = body
        .split('&')
        .filter(|p| p.split('=').next() != Some(enc.as_str()))
        .collect();
    assert_ne!(kept.len(), body.split('&').count(), "{key} not in {rel}");
    kept.join("&").into_bytes()
}

#[test]
fn missing_required_fields_are_named() {
    let cases = [
        ("oncrmdealupdate_user.txt", "event"),
        ("oncrmdealupdate_user.txt", "ts"),
        ("oncrmdealupdate_user.txt", "auth[member_id]"),
        ("oncrmdealupdate_user.txt", "auth[domain]"),
        ("oncrmdealupdate_user.txt", "auth[client_endpoint]"),
        ("oncrmdealupdate_user.txt", "auth[server_endpoint]"),
        ("oncrmdealupdate_user.txt", "auth[application_token]"),
        ("oncrmdealupdate_user.txt", "auth[expires]"),
        ("oncrmdealupdate_user.txt", "auth[user_id]"),
        ("onappinstall.txt", "auth[refresh_token]"),
        ("onofflineevent.txt", "auth[refresh_token]"),
        ("onappinstall.txt", "data[VERSION]"),
        ("onappupdate.txt", "data[PREVIOUS_VERSION]"),
        ("onappmethodconfirm.txt", "data[TOKEN]"),
        ("onappmethodconfirm.txt", "data[CONFIRMED]"),
        ("onapppayment.txt", "data[DAYS]"),
    ];
    for (rel, field) in cases {
        let err = Event::parse(&without(rel, field), &Limits::default()).unwrap_err();
        assert_eq!(err, EventError::Missing { field }, "{rel} without {field}");
    }
}

#[test]
fn invalid_fields_are_named_without_their_value() {
    let cases = [
        ("ts", "ts=1766047124", "ts=17x"),
        ("auth[member_id]", MEMBER_ID, "nothex"),
        ("auth[expires_in]", "expires_in%5D=3600", "expires_in%5D=-1"),
        ("auth[access_token]", ACCESS, "has+space"),
    ];
    for (field, from, to) in cases {
        let body = String::from_utf8(fixture("events/oncrmdealupdate_user.txt"))
            .unwrap()
            .replacen(from, to, 1);
        let err = Event::parse(body.as_bytes(), &Limits::default()).unwrap_err();
        assert!(
            matches!(err, EventError::Invalid { field: f, .. } if f == field),
            "{field}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(field) && !msg.contains(to), "{msg}");
    }
    let body = String::from_utf8(fixture("events/onappinstall.txt"))
        .unwrap()
        .replace("ACTIVE%5D=Y", "ACTIVE%5D=maybe");
    assert!(matches!(
        Event::parse(body.as_bytes(), &Limits::default()),
        Err(EventError::Invalid {
            field: "data[ACTIVE]",
            ..
        })
    ));
}

#[test]
fn auth_must_be_a_map_and_lifecycle_data_too() {
    let err = Event::parse(b"event=ONX&ts=1&auth=x", &Limits::default()).unwrap_err();
    assert!(matches!(err, EventError::Invalid { field: "auth", .. }));
    // A later scalar replaces the whole `data` map (PHP semantics).
    let body = String::from_utf8(fixture("events/onappinstall.txt")).unwrap() + "&data=1";
    let err = Event::parse(body.as_bytes(), &Limits::default()).unwrap_err();
    assert!(
        matches!(err, EventError::Invalid { field: "data", .. }),
        "{err:?}"
    );
}

#[test]
fn form_errors_pass_through() {
    let err = Event::parse(b"event=ONX&ts=%zz", &Limits::default()).unwrap_err();
    assert!(matches!(err, EventError::Form(_)));
}
