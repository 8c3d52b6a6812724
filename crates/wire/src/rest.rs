//! REST response envelopes (protocol §6), `batch` results (§5.15) and the
//! OAuth token endpoint's answers (§7.3, §7.5).
//!
//! REST and OAuth answers are JSON, unlike events. The entry points take the
//! HTTP status and the body bytes, because the same body shape means
//! different things under different statuses (an OAuth `wrong_client` error
//! arrives with 200, §7.5; a 503 may be an HTML page from a proxy).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::errors::{ErrorClass, ErrorCode};
use crate::types::{AccessToken, AppStatus, Endpoint, MemberId, RefreshToken, Scope};

/// A successful call (§6.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Success {
    /// The method's result, any JSON.
    pub result: Value,
    /// Offset of the next page for list methods; absent on the last page.
    pub next: Option<u64>,
    /// Total count for list methods; absent when `start=-1` disabled it.
    pub total: Option<u64>,
    /// Timing, if the portal sent a well-formed `time` object. A malformed
    /// one is dropped rather than failing a call that succeeded: the only
    /// part the client acts on is `operating`, which is optional anyway.
    pub time: Option<Time>,
}

/// The `time` object of a response (§6.1, §8.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Time {
    /// Float Unix seconds.
    pub start: f64,
    pub finish: f64,
    /// `finish - start`.
    pub duration: f64,
    /// Time spent in the method itself.
    pub processing: f64,
    /// ISO 8601 with offset, as sent.
    pub date_start: String,
    pub date_finish: String,
    /// Seconds of this method's 10-minute execution budget used; present
    /// only where the load limiter is active (cloud always).
    pub operating: Option<f64>,
    /// Unix time at which the oldest budget bucket expires.
    pub operating_reset_at: Option<i64>,
}

/// An error envelope (§6.2): `{"error": …, "error_description": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The code; [`ErrorCode::Other`] with an empty string when the portal
    /// sent only a description (§6.2).
    pub code: ErrorCode,
    /// Human text from the server; may be empty.
    pub description: String,
    /// The offending parameter (`ERROR_ARGUMENT`).
    pub argument: Option<String>,
    /// The HTTP status it came with; `None` inside a batch, where every
    /// sub-call shares the outer 200 (§5.15).
    pub status: Option<u16>,
}

impl ApiError {
    /// [`ErrorCode::class`], except that an unknown code is classed by its
    /// HTTP status: 429 and 5xx are transient, anything else is fatal.
    pub fn class(&self) -> ErrorClass {
        match (&self.code, self.status) {
            (ErrorCode::Other(_), Some(s)) if s == 429 || (500..600).contains(&s) => {
                ErrorClass::RetryLater
            }
            (code, _) => code.class(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = if self.code.as_str().is_empty() {
            "(no code)"
        } else {
            self.code.as_str()
        };
        write!(f, "{code}")?;
        if !self.description.is_empty() {
            write!(f, ": {}", self.description)?;
        }
        if let Some(a) = &self.argument {
            write!(f, " (argument {a})")?;
        }
        Ok(())
    }
}

/// Why a response is not a success. No variant carries a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// The server answered with an error envelope.
    #[error("Bitrix24 error {0}")]
    Api(ApiError),
    /// A non-2xx status without an error envelope (proxy page, empty body,
    /// the 302 a renamed portal answers with, §6.2).
    #[error("HTTP {status} without a Bitrix24 error envelope")]
    Http { status: u16 },
    /// A 2xx answer that is not the documented shape.
    #[error("malformed response (HTTP {status}): `{field}` {reason}")]
    Malformed {
        status: u16,
        field: &'static str,
        reason: &'static str,
    },
}

fn malformed(status: u16, field: &'static str, reason: &'static str) -> RestError {
    RestError::Malformed {
        status,
        field,
        reason,
    }
}

fn is_2xx(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Parses the body as a JSON object, or says why not.
fn object(status: u16, body: &[u8]) -> Result<Map<String, Value>, RestError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        _ if !is_2xx(status) => Err(RestError::Http { status }),
        Ok(_) => Err(malformed(status, "body", "is not a JSON object")),
        Err(_) => Err(malformed(status, "body", "is not JSON")),
    }
}

/// An error envelope in `obj`, if it is one: it has `error`, or it has an
/// `error_description` and no `result` (§6.2: `error` may be empty).
fn api_error(obj: &Map<String, Value>, status: Option<u16>) -> Option<ApiError> {
    let error = obj.get("error");
    let description = obj.get("error_description");
    if error.is_none() && (description.is_none() || obj.contains_key("result")) {
        return None;
    }
    let code = match error {
        Some(Value::String(s)) => ErrorCode::parse(s),
        None | Some(Value::Null) => ErrorCode::Other(String::new()),
        Some(other) => ErrorCode::Other(other.to_string()),
    };
    Some(ApiError {
        code,
        description: description.map(text_of).unwrap_or_default(),
        argument: obj.get("argument").map(text_of).filter(|a| !a.is_empty()),
        status,
    })
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A non-negative integer sent as a JSON number or a digit string.
fn uint(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s)
            if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl Time {
    /// Reads a `time` object; `None` unless start, finish, duration,
    /// processing and both dates are there.
    pub fn from_json(v: &Value) -> Option<Time> {
        let o = v.as_object()?;
        let date = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Time {
            start: float(o.get("start")?)?,
            finish: float(o.get("finish")?)?,
            duration: float(o.get("duration")?)?,
            processing: float(o.get("processing")?)?,
            date_start: date("date_start")?,
            date_finish: date("date_finish")?,
            operating: o.get("operating").and_then(float),
            operating_reset_at: o.get("operating_reset_at").and_then(int),
        })
    }
}

/// Parses a REST response: a success envelope, or the typed reason it is
/// not one. An error envelope wins over the status (it is an error even
/// under 200).
pub fn parse_response(status: u16, body: &[u8]) -> Result<Success, RestError> {
    let obj = object(status, body)?;
    if let Some(e) = api_error(&obj, Some(status)) {
        return Err(RestError::Api(e));
    }
    if !is_2xx(status) {
        return Err(RestError::Http { status });
    }
    let result = obj
        .get("result")
        .cloned()
        .ok_or_else(|| malformed(status, "result", "is missing"))?;
    let opt_uint = |k: &'static str| -> Result<Option<u64>, RestError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => uint(v)
                .map(Some)
                .ok_or_else(|| malformed(status, k, "is not a non-negative integer")),
        }
    };
    Ok(Success {
        next: opt_uint("next")?,
        total: opt_uint("total")?,
        time: obj.get("time").and_then(Time::from_json),
        result,
    })
}

/// The `result` of a `batch` call (§5.15), one entry per command key.
/// Where the portal sends `[]` for an empty map, the map is empty; where a
/// list of commands gives lists back, keys are `"0"`, `"1"`, ….
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchResult {
    pub result: BTreeMap<String, Value>,
    pub result_error: BTreeMap<String, ApiError>,
    pub result_total: BTreeMap<String, u64>,
    pub result_next: BTreeMap<String, u64>,
    /// Entries whose `time` is malformed are left out (see [`Success::time`]).
    pub result_time: BTreeMap<String, Time>,
}

/// The entries of a JSON map that PHP may have written as a list: `[]` when
/// empty, `[a, b]` when its keys were 0..n. `None` for any other JSON.
fn php_map(v: Option<&Value>) -> Option<Vec<(String, &Value)>> {
    match v {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Object(o)) => Some(o.iter().map(|(k, v)| (k.clone(), v)).collect()),
        Some(Value::Array(a)) => Some(
            a.iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
        ),
        Some(_) => None,
    }
}

impl BatchResult {
    /// Reads the `result` of a successful `batch` call.
    pub fn from_result(result: &Value) -> Result<BatchResult, RestError> {
        let bad = |field| malformed(200, field, "is not a map");
        let obj = result.as_object().ok_or_else(|| bad("result"))?;
        let entries = |k: &'static str| php_map(obj.get(k)).ok_or_else(|| bad(k));
        let mut out = BatchResult::default();
        for (k, v) in entries("result")? {
            out.result.insert(k, v.clone());
        }
        for (k, v) in entries("result_error")? {
            let e = v
                .as_object()
                .and_then(|o| api_error(o, None))
                .ok_or_else(|| malformed(200, "result_error", "entry is not an error envelope"))?;
            out.result_error.insert(k, e);
        }
        for (field, target) in [
            ("result_total", &mut out.result_total),
            ("result_next", &mut out.result_next),
        ] {
            for (k, v) in entries(field)? {
                let n = uint(v).ok_or_else(|| malformed(200, field, "entry is not an integer"))?;
                target.insert(k, n);
            }
        }
        for (k, v) in entries("result_time")? {
            if let Some(t) = Time::from_json(v) {
                out.result_time.insert(k, t);
            }
        }
        Ok(out)
    }
}

/// A token endpoint answer (§7.3), for both `authorization_code` and
/// `refresh_token` grants. Refresh tokens rotate: the caller must store the
/// new one atomically (§7.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: AccessToken,
    pub refresh_token: RefreshToken,
    /// Lifetime in seconds (3600).
    pub expires_in: u64,
    /// Absolute expiry, Unix time, when sent (SDKs see it in real answers).
    pub expires: Option<u64>,
    /// Granted scopes. Not authoritative (older servers said `app`); the
    /// `scope` method is (§7.3).
    pub scope: Vec<Scope>,
    /// The **OAuth server's** domain, not the portal's (§7.3, §12.11).
    pub domain: Option<String>,
    pub server_endpoint: Option<Endpoint>,
    /// The portal's REST base; the portal host comes from here.
    pub client_endpoint: Option<Endpoint>,
    pub member_id: Option<MemberId>,
    pub status: Option<AppStatus>,
    pub user_id: Option<u64>,
}

/// Parses a token endpoint answer. An OAuth error body (§7.5) is
/// [`RestError::Api`] whatever the status (`wrong_client` comes with 200);
/// an answer without both tokens and `expires_in` is
/// [`RestError::Malformed`] — a client must never store half a credential.
pub fn parse_token_response(status: u16, body: &[u8]) -> Result<TokenResponse, RestError> {
    let obj = object(status, body)?;
    if let Some(e) = api_error(&obj, Some(status)) {
        return Err(RestError::Api(e));
    }
    if !is_2xx(status) {
        return Err(RestError::Http { status });
    }
    let bad = |field, reason| malformed(status, field, reason);
    let text = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let access_token =
        AccessToken::parse(text("access_token").ok_or(bad("access_token", "is missing"))?)
            .map_err(|e| bad("access_token", e.reason))?;
    let refresh_token =
        RefreshToken::parse(text("refresh_token").ok_or(bad("refresh_token", "is missing"))?)
            .map_err(|e| bad("refresh_token", e.reason))?;
    let expires_in = obj
        .get("expires_in")
        .ok_or(bad("expires_in", "is missing"))
        .and_then(|v| uint(v).ok_or(bad("expires_in", "is not a non-negative integer")))?;
    let opt_uint = |k: &'static str| match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => uint(v)
            .map(Some)
            .ok_or(bad(k, "is not a non-negative integer")),
    };
    let scope = match text("scope") {
        None => Vec::new(),
        Some(s) => Scope::parse_list(s).map_err(|e| bad("scope", e.reason))?,
    };
    let endpoint = |k: &'static str| {
        text(k)
            .map(|s| Endpoint::parse(s).map_err(|e| bad(k, e.reason)))
            .transpose()
    };
    Ok(TokenResponse {
        access_token,
        refresh_token,
        expires_in,
        expires: opt_uint("expires")?,
        scope,
        domain: text("domain").map(str::to_owned),
        server_endpoint: endpoint("server_endpoint")?,
        client_endpoint: endpoint("client_endpoint")?,
        member_id: text("member_id")
            .map(|s| MemberId::parse(s).map_err(|e| bad("member_id", e.reason)))
            .transpose()?,
        status: text("status")
            .map(|s| AppStatus::parse(s).map_err(|e| bad("status", e.reason)))
            .transpose()?,
        user_id: opt_uint("user_id")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope_wins_even_under_200() {
        let e = parse_response(200, br#"{"error":"wrong_client","error_description":"x"}"#);
        assert!(matches!(
            e,
            Err(RestError::Api(ApiError {
                code: ErrorCode::WrongClient,
                ..
            }))
        ));
    }

    #[test]
    fn empty_error_code_with_description_is_an_error() {
        let Err(RestError::Api(e)) =
            parse_response(400, br#"{"error":"","error_description":"Bad thing"}"#)
        else {
            panic!("not an api error")
        };
        assert_eq!(e.code, ErrorCode::Other(String::new()));
        assert_eq!(e.description, "Bad thing");
        assert_eq!(e.class(), ErrorClass::Fatal);
        let Err(RestError::Api(e)) = parse_response(503, br#"{"error_description":"busy"}"#) else {
            panic!("not an api error")
        };
        assert_eq!(e.class(), ErrorClass::RetryLater);
    }

    #[test]
    fn non_json_bodies() {
        assert_eq!(
            parse_response(503, b"<html>"),
            Err(RestError::Http { status: 503 })
        );
        assert_eq!(
            parse_response(302, b""),
            Err(RestError::Http { status: 302 })
        );
        assert_eq!(
            parse_response(200, b"<html>"),
            Err(malformed(200, "body", "is not JSON"))
        );
        assert_eq!(
            parse_response(200, b"[1]"),
            Err(malformed(200, "body", "is not a JSON object"))
        );
        assert_eq!(
            parse_response(200, br#"{"time":{}}"#),
            Err(malformed(200, "result", "is missing"))
        );
        assert_eq!(
            parse_response(500, br#"{"result":1}"#),
            Err(RestError::Http { status: 500 })
        );
    }

    #[test]
    fn malformed_time_is_dropped_but_bad_next_is_not() {
        let s = parse_response(200, br#"{"result":true,"time":{"start":"x"}}"#).unwrap();
        assert_eq!(s.time, None);
        assert_eq!(s.result, Value::Bool(true));
        assert!(parse_response(200, br#"{"result":[],"next":-1}"#).is_err());
        assert_eq!(
            parse_response(200, br#"{"result":[],"next":"50"}"#)
                .unwrap()
                .next,
            Some(50)
        );
    }

    #[test]
    fn token_response_needs_both_tokens_and_expiry() {
        let full = r#"{"access_token":"a1","refresh_token":"r1","expires_in":3600}"#;
        let t = parse_token_response(200, full.as_bytes()).unwrap();
        assert_eq!(t.expires_in, 3600);
        assert!(t.scope.is_empty());
        for (body, field) in [
            (
                r#"{"refresh_token":"r1","expires_in":3600}"#,
                "access_token",
            ),
            (
                r#"{"access_token":"a1","expires_in":3600}"#,
                "refresh_token",
            ),
            (
                r#"{"access_token":"a1","refresh_token":"","expires_in":3600}"#,
                "refresh_token",
            ),
            (
                r#"{"access_token":"a1","refresh_token":"r1"}"#,
                "expires_in",
            ),
        ] {
            match parse_token_response(200, body.as_bytes()) {
                Err(RestError::Malformed { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn batch_accepts_lists_for_maps() {
        let v: Value = serde_json::from_str(
            r#"{"result":[{"ID":"1"},true],"result_error":[],"result_total":[],"result_next":[],"result_time":[]}"#,
        )
        .unwrap();
        let b = BatchResult::from_result(&v).unwrap();
        assert_eq!(b.result.len(), 2);
        assert_eq!(b.result["1"], Value::Bool(true));
        assert!(b.result_error.is_empty() && b.result_time.is_empty());
        let v: Value = serde_json::from_str(r#"{"result":{},"result_error":"x"}"#).unwrap();
        assert!(BatchResult::from_result(&v).is_err());
    }
}
