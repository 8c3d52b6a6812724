use wire::form::{self, Limits};
use wire::{AppPagePost, AppStatus, InstallError};

use crate::{ACCESS, APP_TOKEN, MEMBER_ID, REFRESH, fixture};

fn parse(name: &str) -> AppPagePost {
    let q = fixture(&format!("install/{name}.query"));
    let b = fixture(&format!("install/{name}.body"));
    AppPagePost::parse(&q, &b, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn scopes(p: &AppPagePost) -> Option<Vec<&str>> {
    p.scope
        .as_ref()
        .map(|s| s.iter().map(|s| s.as_str()).collect())
}

#[test]
fn fixtures_are_what_http_build_query_writes() {
    for name in [
        "flow_b_installer",
        "widget_deal_tab",
        "older_portal_telephony",
    ] {
        for ext in ["query", "body"] {
            let raw = fixture(&format!("install/{name}.{ext}"));
            let tree = form::decode(&raw, &Limits::default()).unwrap();
            assert_eq!(form::encode(&tree).as_bytes(), &raw[..], "{name}.{ext}");
        }
    }
}

#[test]
fn flow_b_installer_post() {
    let p = parse("flow_b_installer");
    assert_eq!(p.domain.as_str(), "example.bitrix24.com");
    assert!(p.https);
    assert_eq!(p.lang.as_deref(), Some("en"));
    // APP_SID is kept as a plain string: it is not the application token.
    assert_eq!(
        p.app_sid.as_deref(),
        Some("5eb4a7c1d2e3f40516273849abcdef01")
    );
    assert_eq!(p.access_token.expose_secret(), ACCESS);
    // AUTH_EXPIRES is a lifetime in seconds, not a timestamp (§3.5).
    assert_eq!(p.expires_in, 3600);
    assert_eq!(p.refresh_token.expose_secret(), REFRESH);
    assert_eq!(
        p.server_endpoint.as_ref().map(|e| e.as_str()),
        Some("https://oauth.bitrix.info/rest/")
    );
    assert_eq!(
        p.application_token.as_ref().map(|t| t.expose_secret()),
        Some(APP_TOKEN)
    );
    assert_eq!(scopes(&p), Some(vec!["crm", "placement"]));
    assert_eq!(p.member_id.as_str(), MEMBER_ID);
    assert_eq!(p.status, AppStatus::Free);
    assert_eq!(p.placement, "DEFAULT");
    assert!(p.is_default_placement());
    assert_eq!(p.placement_options, None);
    assert_eq!(
        p.client_endpoint().as_str(),
        "https://example.bitrix24.com/rest/"
    );
    let shown = format!("{p:?}");
    assert!(!shown.contains(ACCESS) && !shown.contains(REFRESH) && !shown.contains(APP_TOKEN));
}

#[test]
fn widget_post_decodes_placement_options_json_string() {
    let p = parse("widget_deal_tab");
    assert_eq!(p.placement, "CRM_DEAL_DETAIL_TAB");
    assert!(!p.is_default_placement());
    assert_eq!(p.lang.as_deref(), Some("de"));
    let opts = p.placement_options.expect("options");
    assert_eq!(opts["ID"], "7405");
    assert_eq!(opts["URI"], "/crm/deal/details/7405/");
}

#[test]
fn older_portal_without_newer_fields_and_undefined_options() {
    let p = parse("older_portal_telephony");
    assert_eq!(p.domain.as_str(), "crm.example.local:8443");
    assert!(!p.https);
    assert_eq!(
        p.client_endpoint().as_str(),
        "http://crm.example.local:8443/rest/"
    );
    assert_eq!(p.lang.as_deref(), Some("ru"));
    assert_eq!(p.server_endpoint, None);
    assert_eq!(p.application_token, None);
    assert_eq!(p.scope, None);
    assert_eq!(p.status, AppStatus::Local);
    assert_eq!(p.placement, "TELEPHONY_ANALYTICS_MENU");
    assert_eq!(p.placement_options, None);
}

#[test]
fn required_fields_are_named() {
    let q = String::from_utf8(fixture("install/flow_b_installer.query")).unwrap();
    let b = String::from_utf8(fixture("install/flow_b_installer.body")).unwrap();
    let drop = |s: &str, key: &str| -> String {
        s.split('&')
            .filter(|p| p.split('=').next() != Some(key))
            .collect::<Vec<_>>()
            .join("&")
    };
    for key in ["DOMAIN", "PROTOCOL"] {
        let err = AppPagePost::parse(drop(&q, key).as_bytes(), b.as_bytes(), &Limits::default());
        assert_eq!(err, Err(InstallError::Missing { field: key }));
    }
    for key in [
        "AUTH_ID",
        "AUTH_EXPIRES",
        "REFRESH_ID",
        "member_id",
        "status",
        "PLACEMENT",
    ] {
        let err = AppPagePost::parse(q.as_bytes(), drop(&b, key).as_bytes(), &Limits::default());
        assert_eq!(err, Err(InstallError::Missing { field: key }));
    }
}

#[test]
fn invalid_values_are_named() {
    let q = String::from_utf8(fixture("install/flow_b_installer.query")).unwrap();
    let b = String::from_utf8(fixture("install/flow_b_installer.body")).unwrap();
    let cases: [(&str, &str, &str, bool); 4] = [
        ("PROTOCOL", "PROTOCOL=1", "PROTOCOL=https", true),
        (
            "AUTH_EXPIRES",
            "AUTH_EXPIRES=3600",
            "AUTH_EXPIRES=1h",
            false,
        ),
        (
            "PLACEMENT_OPTIONS",
            "PLACEMENT=DEFAULT",
            "PLACEMENT=DEFAULT&PLACEMENT_OPTIONS=%7Bnope",
            false,
        ),
        (
            "DOMAIN",
            "DOMAIN=example.bitrix24.com",
            "DOMAIN=https%3A%2F%2Fx",
            true,
        ),
    ];
    for (field, from, to, in_query) in cases {
        let (q2, b2) = if in_query {
            (q.replace(from, to), b.clone())
        } else {
            (q.clone(), b.replace(from, to))
        };
        let err = AppPagePost::parse(q2.as_bytes(), b2.as_bytes(), &Limits::default()).unwrap_err();
        assert!(
            matches!(err, InstallError::Invalid { field: f, .. } if f == field),
            "{field}: {err:?}"
        );
    }
}
