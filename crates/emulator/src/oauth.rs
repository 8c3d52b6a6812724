//! The OAuth server (stands in for oauth.bitrix.info, reference §7): `/oauth/token/`
//! and its own `/rest/app.info` (§5.12, OAuth-server variant); and the portal's side
//! of the full flow, `/oauth/authorize/` (§7.1).

use serde_json::{Map, Value, json};

use crate::EmuError;
use crate::clock::iso8601;
use crate::codec::{self, param, scalar_str};
use crate::ops::InstallSpec;
use crate::state::Farm;

/// What the portal's `/oauth/authorize/` answers.
pub enum Authorize {
    /// 302 to this URL: the app's redirect URI with the code.
    Redirect(String),
    /// 200 with the code on the page: the app has no redirect URI ([D-EN]
    /// settings/oauth: "the code will be displayed to the user directly on the page").
    Code(String),
    /// Status and JSON error body.
    Error(u16, Value),
}

/// `GET {portal}/oauth/authorize/?client_id=…&state=…` (§7.1). The user (query
/// `user_id`, an emulator extra; default the installing admin) counts as signed in
/// and consenting. The code is the one of the `authorization_code` grant (30 s).
pub fn authorize(farm: &mut Farm, member_id: &str, p: &Map<String, Value>) -> Authorize {
    let get = |k: &str| param(p, k).and_then(scalar_str);
    let client_id = get("client_id").unwrap_or_default();
    if client_id.is_empty() {
        let (s, v) = err(400, "invalid_request", "client_id is required");
        return Authorize::Error(s, v);
    }
    if farm.portals.get(member_id).is_some_and(|p| p.deleted) {
        let (s, v) = err(
            farm.cfg.statuses.portal_deleted,
            "PORTAL_DELETED",
            "Portal was deleted",
        );
        return Authorize::Error(s, v);
    }
    let spec = InstallSpec {
        client_id: client_id.clone(),
        user_id: get("user_id").and_then(|u| u.parse().ok()),
        status: None,
    };
    let code = match farm.auth_code(member_id, spec) {
        Ok(c) => c,
        Err(EmuError::Invalid(e)) => {
            let (s, v) = err(400, "invalid_request", &e);
            return Authorize::Error(s, v);
        }
        // The real portal shows an error page when the app is not installed there.
        Err(_) => {
            let (s, v) = err(404, "NOT_INSTALLED", "Application not installed");
            return Authorize::Error(s, v);
        }
    };
    let app = &farm.apps[&client_id];
    if app.redirect_uri.is_empty() {
        return Authorize::Code(code);
    }
    let portal = &farm.portals[member_id];
    let mut q = format!("code={code}");
    if let Some(state) = get("state") {
        q.push_str("&state=");
        q.push_str(&codec::urlencode(&state));
    }
    for (k, v) in [
        ("domain", portal.domain.as_str()),
        ("member_id", member_id),
        // Comma-separated, so `%2C` on the wire (§7.1).
        ("scope", &app.scopes.join(",")),
        ("server_domain", &farm.urls.oauth_host),
    ] {
        q.push('&');
        q.push_str(k);
        q.push('=');
        q.push_str(&codec::urlencode(v));
    }
    let sep = if app.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    Authorize::Redirect(format!("{}{sep}{q}", app.redirect_uri))
}

fn err(status: u16, code: &str, description: &str) -> (u16, Value) {
    (
        status,
        json!({"error": code, "error_description": description}),
    )
}

/// `/oauth/token/` for both grants. Refresh tokens and codes are single use.
pub fn token(farm: &mut Farm, p: &Map<String, Value>) -> (u16, Value) {
    farm.stats.oauth_requests += 1;
    let get = |k: &str| param(p, k).and_then(scalar_str).unwrap_or_default();
    let grant = get("grant_type");
    let client_id = get("client_id");
    let secret = get("client_secret");
    if grant.is_empty() {
        return err(400, "invalid_request", "grant_type is required");
    }
    let invalid_client = farm.cfg.statuses.oauth_invalid_client;
    match farm.apps.get(&client_id) {
        Some(a) if a.client_secret == secret => {}
        _ => {
            return err(
                invalid_client,
                "invalid_client",
                "Invalid client credentials",
            );
        }
    }
    let now = farm.now();
    let grant_row = match grant.as_str() {
        "refresh_token" => {
            let t = get("refresh_token");
            match farm.refresh_tokens.get(&t) {
                Some(r) if r.client_id == client_id && r.expires > now => {
                    farm.refresh_tokens.remove(&t)
                }
                _ => return err(400, "invalid_grant", "Invalid refresh token"),
            }
        }
        "authorization_code" => {
            let c = get("code");
            match farm.codes.get(&c) {
                Some(r) if r.client_id == client_id && r.expires > now => farm.codes.remove(&c),
                _ => return err(400, "invalid_grant", "Invalid authorization code"),
            }
        }
        _ => return err(400, "unsupported_grant_type", "Unsupported grant type"),
    };
    let Some(g) = grant_row else {
        return err(400, "invalid_grant", "Invalid grant");
    };
    let Some(inst) = farm
        .portals
        .get(&g.member_id)
        .and_then(|p| p.installs.get(&client_id))
        .filter(|i| i.active)
    else {
        return err(401, "NOT_INSTALLED", "Application not installed");
    };
    if inst.payment_expired && inst.days.is_some_and(|d| d < -14) {
        return err(
            farm.cfg.statuses.payment_required,
            "PAYMENT_REQUIRED",
            "Payment required",
        );
    }
    let status = inst.status.clone();
    let (access, refresh, expires) = farm.issue_pair(&g.member_id, &client_id, g.user_id);
    let p = &farm.portals[&g.member_id];
    let scope = farm.apps[&client_id].scopes.join(",");
    (
        200,
        json!({
            "access_token": access, "refresh_token": refresh, "expires": expires,
            "expires_in": farm.cfg.access_token_lifetime_secs, "scope": scope,
            "domain": farm.urls.oauth_host, "server_endpoint": farm.server_endpoint(),
            "client_endpoint": farm.client_endpoint(p), "member_id": g.member_id,
            "status": status, "user_id": g.user_id,
        }),
    )
}

/// `{oauth}/rest/app.info?auth=…`: the trusted view of an installation.
pub fn app_info(farm: &mut Farm, token: Option<String>) -> (u16, Value) {
    farm.stats.oauth_requests += 1;
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return err(401, "NO_AUTH_FOUND", "Wrong authorization data");
    };
    let Some(t) = farm.tokens.get(&token).cloned() else {
        return err(401, "invalid_token", "The access token provided is invalid");
    };
    if t.expires <= farm.now() {
        return err(
            401,
            "expired_token",
            "The access token provided has expired.",
        );
    }
    let Some(p) = farm.portals.get(&t.member_id) else {
        return err(401, "invalid_token", "Portal not found");
    };
    let Some(i) = p.installs.get(&t.client_id).filter(|i| i.active) else {
        return err(401, "NOT_INSTALLED", "Application not installed");
    };
    let scope = farm
        .apps
        .get(&t.client_id)
        .map(|a| a.scopes.join(","))
        .unwrap_or_default();
    let base = farm.portal_base(p);
    let ce = farm.client_endpoint(p);
    let result = json!({
        "client_id": t.client_id, "scope": scope, "expires": iso8601(t.expires), "user_id": t.user_id.to_string(),
        "install": {
            "installed": i.installed, "version": i.version.to_string(), "status": i.status, "scope": scope,
            "domain": p.domain, "uri": base, "client_endpoint": ce, "member_id": p.member_id,
            "member_type": "company",
        },
    });
    let now = farm.now_f();
    (
        200,
        json!({"result": result, "time": crate::rest::time_block(now, now, 0.0, now as i64 + 600)}),
    )
}
