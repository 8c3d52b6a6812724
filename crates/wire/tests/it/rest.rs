use wire::rest::{parse_response, parse_token_response};
use wire::{AppStatus, BatchResult, ErrorClass, ErrorCode, RestError};

use crate::{ACCESS, MEMBER_ID, REFRESH, fixture};

#[test]
fn success_with_time_and_operating() {
    let s = parse_response(200, &fixture("rest/success_time_operating.json")).unwrap();
    assert_eq!(s.result["ID"], "1");
    assert_eq!(s.result["ADMIN"], true);
    assert_eq!(s.next, None);
    assert_eq!(s.total, None);
    let t = s.time.expect("time");
    assert_eq!(t.start, 1721296536.908506);
    assert_eq!(t.finish, 1721296537.007365);
    assert!((t.duration - 0.0988).abs() < 1e-3);
    assert!((t.processing - 0.0325).abs() < 1e-3);
    assert_eq!(t.date_start, "2024-07-18T11:55:36+02:00");
    assert_eq!(t.date_finish, "2024-07-18T11:55:37+02:00");
    assert!((t.operating.unwrap() - 0.0325).abs() < 1e-3);
    assert_eq!(t.operating_reset_at, Some(1721297137));
}

#[test]
fn list_page_with_next_and_total() {
    let s = parse_response(200, &fixture("rest/list_page.json")).unwrap();
    let items = s.result.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["ID"], "7405");
    assert_eq!(s.next, Some(50));
    assert_eq!(s.total, Some(120));
    assert_eq!(s.time.unwrap().operating, Some(0.5));
}

#[test]
fn error_with_argument() {
    let Err(RestError::Api(e)) = parse_response(400, &fixture("rest/error_argument.json")) else {
        panic!("not an api error")
    };
    assert_eq!(e.code, ErrorCode::ErrorArgument);
    assert_eq!(e.description, "Argument 'EVENT' is null or empty");
    assert_eq!(e.argument.as_deref(), Some("EVENT"));
    assert_eq!(e.status, Some(400));
    assert_eq!(e.class(), ErrorClass::Fatal);
}

#[test]
fn lower_case_expired_token_means_refresh() {
    let Err(RestError::Api(e)) = parse_response(401, &fixture("rest/error_expired_token.json"))
    else {
        panic!("not an api error")
    };
    assert_eq!(e.code, ErrorCode::ExpiredToken);
    assert_eq!(e.argument, None);
    assert_eq!(e.class(), ErrorClass::Refresh);
    assert_eq!(e.code.http_status(), Some(401));
}

#[test]
fn batch_with_php_empty_arrays() {
    let s = parse_response(200, &fixture("rest/batch_empties.json")).unwrap();
    let b = BatchResult::from_result(&s.result).unwrap();
    assert_eq!(b.result.len(), 2);
    assert_eq!(b.result["user"]["NAME"], "Demo");
    assert_eq!(b.result["deals"][1]["ID"], "7406");
    assert!(b.result_error.is_empty());
    assert_eq!(b.result_total.get("deals"), Some(&2));
    assert!(b.result_next.is_empty());
    assert_eq!(b.result_time.len(), 2);
    assert_eq!(b.result_time["deals"].operating, Some(0.07));
}

#[test]
fn batch_with_a_failed_sub_call() {
    let s = parse_response(200, &fixture("rest/batch_partial_error.json")).unwrap();
    assert_eq!(s.time.as_ref().unwrap().operating, None);
    let b = BatchResult::from_result(&s.result).unwrap();
    assert_eq!(b.result["first"]["ID"], "1");
    let e = &b.result_error["second"];
    assert_eq!(e.code, ErrorCode::MethodNotFound);
    assert_eq!(e.description, "Method not found!");
    assert_eq!(e.status, None);
    assert!(b.result_total.is_empty());
    assert_eq!(b.result_next.get("first"), Some(&50));
    assert_eq!(b.result_time["first"].operating_reset_at, None);
}

#[test]
fn oauth_token_response() {
    let t = parse_token_response(200, &fixture("rest/oauth_token.json")).unwrap();
    assert_eq!(t.access_token.expose_secret(), ACCESS);
    assert_eq!(t.refresh_token.expose_secret(), REFRESH);
    assert_eq!(t.expires, Some(1780319382));
    assert_eq!(t.expires_in, 3600);
    let scopes: Vec<_> = t.scope.iter().map(|s| s.as_str()).collect();
    assert_eq!(scopes, ["crm", "entity", "im", "task"]);
    // `domain` is the OAuth server's, not the portal's (§7.3).
    assert_eq!(t.domain.as_deref(), Some("oauth.bitrix.info"));
    assert_eq!(
        t.server_endpoint.as_ref().unwrap().as_str(),
        "https://oauth.bitrix.info/rest/"
    );
    assert_eq!(
        t.client_endpoint.as_ref().unwrap().host(),
        "example.bitrix24.com"
    );
    assert_eq!(t.member_id.as_ref().unwrap().as_str(), MEMBER_ID);
    assert_eq!(t.status, Some(AppStatus::Free));
    assert_eq!(t.user_id, Some(67));
    let shown = format!("{t:?}");
    assert!(
        !shown.contains(ACCESS) && !shown.contains(REFRESH),
        "{shown}"
    );
}

#[test]
fn oauth_error_body() {
    let Err(RestError::Api(e)) =
        parse_token_response(400, &fixture("rest/oauth_error_invalid_grant.json"))
    else {
        panic!("not an api error")
    };
    assert_eq!(e.code, ErrorCode::InvalidGrant);
    assert_eq!(e.description, "Invalid grant");
    assert_eq!(e.class(), ErrorClass::PortalGone);
}
