//! The OAuth server (stands in for oauth.bitrix.info, reference §7): `/oauth/token/`
//! and its own `/rest/app.info` (§5.12, OAuth-server variant).

use serde_json::{Map, Value, json};

use crate::clock::iso8601;
use crate::codec::{param, scalar_str};
use crate::state::Farm;

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
