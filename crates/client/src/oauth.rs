//! The token request (protocol §7.2): `grant_type=refresh_token` to the
//! configured OAuth server — never to a host named by a response or an event.

use std::time::Duration;

use wire::form::{self, FormMap};
use wire::rest::parse_token_response;
use wire::{ErrorClass, RefreshToken, RestError};

use crate::config::OAuthApp;
use crate::env::TokenSet;
use crate::error::Error;

pub(crate) enum RefreshError {
    /// The OAuth server refused the refresh token for good
    /// (`invalid_grant`, `NOT_INSTALLED`, …): the portal needs re-authorisation.
    Refused(String),
    Other(Error),
}

/// One token request. Not retried here: a request that reached the server
/// may have consumed the (single-use) refresh token, and a repeat would only
/// get `invalid_grant`.
pub(crate) async fn refresh(
    http: &reqwest::Client,
    app: Option<&OAuthApp>,
    refresh: &RefreshToken,
    timeout: Duration,
    now_ms: i64,
) -> Result<TokenSet, RefreshError> {
    let app =
        app.ok_or_else(|| RefreshError::Other(Error::Config("no OAuth app configured".into())))?;
    let body = form::encode(
        &FormMap::new()
            .with("grant_type", "refresh_token")
            .with("client_id", app.client_id.as_str())
            .with("client_secret", app.client_secret.expose_secret())
            .with("refresh_token", refresh.expose_secret()),
    );
    let resp = http
        .post(&app.token_url)
        .timeout(timeout)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await
        .map_err(|e| RefreshError::Other(Error::Refresh(describe(&e))))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| RefreshError::Other(Error::Refresh(describe(&e))))?;
    token_set(status, &bytes, now_ms)
}

/// The token answer as a [`TokenSet`]; an answer without both tokens and an
/// expiry is rejected by `wire` and never reaches the store.
pub(crate) fn token_set(status: u16, body: &[u8], now_ms: i64) -> Result<TokenSet, RefreshError> {
    match parse_token_response(status, body) {
        Ok(t) => Ok(TokenSet {
            access: t.access_token,
            refresh: t.refresh_token,
            // Relative to our clock: immune to skew with the OAuth server.
            expires_at_ms: now_ms + (t.expires_in as i64).saturating_mul(1000),
            scope: t
                .scope
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
            user_id: t.user_id.map(|u| u as i64),
        }),
        Err(RestError::Api(e)) if e.class() == ErrorClass::PortalGone => {
            Err(RefreshError::Refused(e.code.as_str().to_owned()))
        }
        Err(RestError::Api(e)) => Err(RefreshError::Other(Error::Refresh(format!(
            "OAuth server: {}",
            e.code.as_str()
        )))),
        Err(e) => Err(RefreshError::Other(Error::Refresh(e.to_string()))),
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect to the OAuth server"
    } else if e.is_timeout() {
        "OAuth server timed out"
    } else {
        "OAuth request failed"
    };
    kind.to_owned()
}

/// The OAuth server's own `app.info` (protocol §5.12, second variant): what
/// the server says about an access token — `client_id`, and under `install`
/// the portal's `member_id`, `domain` and `client_endpoint`. The gateway
/// verifies an install with it before trusting anything the request said.
/// The URL is the configured OAuth server's, derived from its token URL.
pub(crate) async fn app_info(
    http: &reqwest::Client,
    app: Option<&OAuthApp>,
    token: &wire::AccessToken,
    timeout: Duration,
) -> Result<serde_json::Value, Error> {
    let app = app.ok_or_else(|| Error::Config("no OAuth app configured".into()))?;
    let base = app
        .token_url
        .strip_suffix("/oauth/token/")
        .ok_or_else(|| Error::Config("oauth token URL does not end in /oauth/token/".into()))?;
    let query = form::encode(&FormMap::new().with("auth", token.expose_secret()));
    let url = format!("{base}/rest/app.info?{query}");
    let resp = http
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| Error::Transport {
            method: "app.info".into(),
            kind: if e.is_connect() {
                crate::error::TransportKind::Connect
            } else {
                crate::error::TransportKind::Timeout
            },
            message: describe(&e),
        })?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| Error::Transport {
        method: "app.info".into(),
        kind: crate::error::TransportKind::Timeout,
        message: describe(&e),
    })?;
    match wire::rest::parse_response(status, &bytes) {
        Ok(s) => Ok(s.result),
        Err(RestError::Api(error)) => Err(Error::Api {
            method: "app.info".into(),
            error,
        }),
        Err(error) => Err(Error::Response {
            method: "app.info".into(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_token_answers_are_rejected_not_stored() {
        for body in [
            r#"{"refresh_token":"r1","expires_in":3600}"#,
            r#"{"access_token":"a1","expires_in":3600}"#,
            r#"{"access_token":"a1","refresh_token":"r1"}"#,
            r#"<html>"#,
        ] {
            match token_set(200, body.as_bytes(), 0) {
                Err(RefreshError::Other(Error::Refresh(msg))) => {
                    assert!(!msg.contains("a1") && !msg.contains("r1"), "{msg}")
                }
                _ => panic!("{body} accepted"),
            }
        }
        let t = token_set(
            200,
            br#"{"access_token":"a1","refresh_token":"r1","expires_in":3600,"scope":"crm,user"}"#,
            1_000,
        )
        .ok()
        .unwrap();
        assert_eq!(t.expires_at_ms, 3_601_000);
        assert_eq!(t.scope, "crm,user");
    }

    #[test]
    fn invalid_grant_means_reauth() {
        let r = token_set(
            400,
            br#"{"error":"invalid_grant","error_description":"x"}"#,
            0,
        );
        assert!(matches!(r, Err(RefreshError::Refused(c)) if c == "invalid_grant"));
        let r = token_set(
            401,
            br#"{"error":"invalid_client","error_description":"x"}"#,
            0,
        );
        assert!(matches!(r, Err(RefreshError::Other(_))));
    }
}
