//! The portal REST endpoint: routing to a portal, authentication, limits, faults,
//! method dispatch and the envelopes of reference §6.

mod batch;
mod crm;
mod methods;
mod offline;

use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Map, Value, json};

use crate::clock::iso8601;
use crate::codec;
use crate::ops::Shared;
use crate::state::{Confirmation, Farm};

pub(crate) use methods::method_def;

/// A REST error (reference §6.2/§6.3). Errors carry no `time` block.
#[derive(Debug, Clone)]
pub struct RestError {
    pub status: u16,
    pub code: String,
    pub description: String,
    pub argument: Option<String>,
}

impl RestError {
    pub fn new(status: u16, code: &str, description: impl Into<String>) -> Self {
        RestError {
            status,
            code: code.to_string(),
            description: description.into(),
            argument: None,
        }
    }

    /// `ERROR_ARGUMENT` "Argument 'X' is null or empty" with `argument`.
    pub fn arg_empty(name: &str) -> Self {
        RestError {
            status: 400,
            code: "ERROR_ARGUMENT".into(),
            description: format!("Argument '{name}' is null or empty"),
            argument: Some(name.to_string()),
        }
    }

    pub fn argument(name: &str, description: impl Into<String>) -> Self {
        RestError {
            status: 400,
            code: "ERROR_ARGUMENT".into(),
            description: description.into(),
            argument: Some(name.to_string()),
        }
    }

    pub fn wrong_auth_type() -> Self {
        RestError::new(
            403,
            "WRONG_AUTH_TYPE",
            "Current authorization type is denied for this method",
        )
    }

    pub fn access_denied(detail: &str) -> Self {
        let d = if detail.is_empty() {
            "Access denied!".to_string()
        } else {
            format!("Access denied! {detail}")
        };
        RestError::new(403, "ACCESS_DENIED", d)
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("error".into(), json!(self.code));
        m.insert("error_description".into(), json!(self.description));
        if let Some(a) = &self.argument {
            m.insert("argument".into(), json!(a));
        }
        Value::Object(m)
    }
}

/// A method's success: `result` plus `next`/`total` for lists.
#[derive(Debug, Clone)]
pub struct Done {
    pub result: Value,
    pub next: Option<u64>,
    pub total: Option<u64>,
}

impl From<Value> for Done {
    fn from(result: Value) -> Self {
        Done {
            result,
            next: None,
            total: None,
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Actor {
    App { client_id: String, token: String },
    Webhook { code: String },
}

/// Per-call context.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub member_id: String,
    pub actor: Actor,
    pub user_id: u64,
    pub is_admin: bool,
    pub scopes: Vec<String>,
    /// `auth_connector` of the call: the source key for offline self-suppression.
    pub connector: String,
}

impl Ctx {
    pub fn client_id(&self) -> Option<&str> {
        match &self.actor {
            Actor::App { client_id, .. } => Some(client_id),
            Actor::Webhook { .. } => None,
        }
    }

    /// The app's client id, or `WRONG_AUTH_TYPE` for webhooks (OAuth-only methods).
    pub fn app(&self) -> Result<&str, RestError> {
        self.client_id().ok_or_else(RestError::wrong_auth_type)
    }

    /// Actor key of the operating limiter.
    fn actor_key(&self) -> String {
        match &self.actor {
            Actor::App { client_id, .. } => client_id.clone(),
            Actor::Webhook { code } => format!("hook:{code}"),
        }
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| {
            s == scope
                || (scope == "user" && (s == "user_basic" || s == "user_brief"))
                || (scope == "user_brief" && s == "user")
        })
    }
}

/// How the request found its portal.
#[derive(Debug, Clone)]
pub enum Route {
    /// `/p/{name}/rest/…`
    Name(String),
    /// `/rest/…` with this `Host` header.
    Host(String),
}

/// An incoming REST request, already split from HTTP.
pub struct RestRequest {
    pub route: Route,
    /// Path after `rest/`: `{method}[.json]` or `{user_id}/{code}/{method}`.
    pub tail: String,
    /// The original path and query (for 302 on renamed portals).
    pub path_and_query: String,
    pub query: Vec<u8>,
    pub body: Vec<u8>,
    pub body_kind: BodyKind,
    pub bearer: Option<String>,
}

/// How the request body is encoded (from `Content-Type`).
#[derive(Debug, Clone)]
pub enum BodyKind {
    Form,
    Json,
    Multipart(String),
}

/// An HTTP answer.
pub struct RestResponse {
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
}

impl RestResponse {
    fn json(status: u16, v: &Value) -> Self {
        RestResponse {
            status,
            body: v.to_string(),
            location: None,
        }
    }

    fn error(e: &RestError) -> Self {
        Self::json(e.status, &e.to_json())
    }
}

pub(crate) enum Resolved {
    Portal(String),
    /// Renamed: the same path and query on the new base.
    Moved(String),
}

/// Finds the portal a request is for (`Route`), or where it moved to.
pub(crate) fn resolve(
    farm: &Farm,
    route: &Route,
    path_and_query: &str,
) -> Result<Resolved, RestError> {
    let not_found = || RestError::new(404, "NOT_FOUND", "Portal not found");
    match route {
        Route::Name(n) => {
            if let Some(m) = farm.by_name.get(n.as_str()) {
                return Ok(Resolved::Portal(m.clone()));
            }
            let m = farm.moved_names.get(n.as_str()).ok_or_else(not_found)?;
            let p = &farm.portals[m];
            let base = farm.portal_base(p);
            let old = format!("/p/{n}");
            let rest = path_and_query.strip_prefix(&old).unwrap_or(path_and_query);
            Ok(Resolved::Moved(format!("{base}{rest}")))
        }
        Route::Host(h) => {
            let h = h.to_ascii_lowercase();
            if let Some(m) = farm.by_host.get(&h) {
                return Ok(Resolved::Portal(m.clone()));
            }
            let m = farm.moved_hosts.get(&h).ok_or_else(not_found)?;
            let p = &farm.portals[m];
            let base = farm.portal_base(p);
            // A path-mode portal's base already ends with its prefix.
            Ok(Resolved::Moved(format!("{base}{}", path_and_query)))
        }
    }
}

/// Splits the tail into (webhook, method).
fn split_tail(tail: &str) -> (Option<(u64, String)>, String) {
    let t = tail.trim_matches('/');
    let parts: Vec<&str> = t.splitn(3, '/').collect();
    let (hook, m) = if parts.len() == 3 && parts[0].bytes().all(|b| b.is_ascii_digit()) {
        (
            parts[0].parse().ok().map(|u| (u, parts[1].to_string())),
            parts[2],
        )
    } else {
        (None, t)
    };
    let mut m = m.to_ascii_lowercase();
    for suffix in [".json", ".xml"] {
        if m.ends_with(suffix) {
            m.truncate(m.len() - suffix.len());
        }
    }
    (hook, m)
}

enum FaultRoll {
    None,
    Error,
    Timeout,
}

/// Handles one REST request end to end.
pub async fn handle(shared: &Shared, req: RestRequest) -> RestResponse {
    let started = Instant::now();
    let start = shared.clock.now();
    let mut params = codec::decode_form(&req.query);
    if !req.body.is_empty() {
        let body = match &req.body_kind {
            BodyKind::Json => match codec::decode_json(&req.body) {
                Ok(b) => b,
                Err(_) => {
                    let e = RestError::new(400, "INVALID_REQUEST", "Invalid JSON body");
                    return RestResponse::error(&e);
                }
            },
            BodyKind::Multipart(b) => codec::decode_multipart(&req.body, b),
            BodyKind::Form => codec::decode_form(&req.body),
        };
        for (k, v) in body {
            params.insert(k, v);
        }
    }
    let (hook, method) = split_tail(&req.tail);
    let token = match (hook.is_none(), &req.bearer) {
        (false, _) => None,
        (true, Some(b)) => Some(b.clone()),
        (true, None) => codec::param(&params, "auth")
            .or_else(|| codec::param(&params, "access_token"))
            .and_then(codec::scalar_str),
    };

    // First lock: route, faults.
    let pre = shared.with(|farm| -> Result<(String, FaultRoll, u64), RestResponse> {
        let member = match resolve(farm, &req.route, &req.path_and_query) {
            Ok(Resolved::Portal(m)) => m,
            Ok(Resolved::Moved(to)) => {
                return Err(RestResponse {
                    status: 302,
                    body: String::new(),
                    location: Some(to),
                });
            }
            Err(e) => return Err(RestResponse::error(&e)),
        };
        let f = farm
            .faults_portal
            .get(&member)
            .unwrap_or(&farm.faults_global)
            .clone();
        let mut roll = FaultRoll::None;
        if f.error_rate > 0.0 && farm.rng.random_bool(f.error_rate) {
            roll = FaultRoll::Error;
        } else if f.timeout_rate > 0.0 && farm.rng.random_bool(f.timeout_rate) {
            roll = FaultRoll::Timeout;
        }
        if !matches!(roll, FaultRoll::None) {
            farm.stats.faults_injected += 1;
        }
        Ok((member, roll, f.latency_ms))
    });
    let (member, roll, latency) = match pre {
        Ok(x) => x,
        Err(r) => return r,
    };
    match roll {
        FaultRoll::Error => {
            let e = RestError::new(500, "INTERNAL_SERVER_ERROR", "Internal server error");
            return RestResponse::error(&e);
        }
        FaultRoll::Timeout => {
            tokio::time::sleep(Duration::from_millis(shared.cfg.fault_timeout_ms)).await;
            return RestResponse::error(&RestError::new(504, "GATEWAY_TIMEOUT", "Gateway timeout"));
        }
        FaultRoll::None => {}
    }
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }

    let out = shared.with(|farm| call(farm, &member, hook, token, &method, &params, started));
    match out {
        Ok((done, operating, reset_at)) => {
            let finish = start + started.elapsed().as_secs_f64();
            let mut m = Map::new();
            m.insert("result".into(), done.result);
            if let Some(n) = done.next {
                m.insert("next".into(), json!(n));
            }
            if let Some(t) = done.total {
                m.insert("total".into(), json!(t));
            }
            m.insert(
                "time".into(),
                time_block(start, finish, operating, reset_at),
            );
            RestResponse::json(200, &Value::Object(m))
        }
        Err(e) => RestResponse::error(&e),
    }
}

/// The `time` block of §6.1.
pub(crate) fn time_block(start: f64, finish: f64, operating: f64, reset_at: i64) -> Value {
    let d = finish - start;
    json!({
        "start": start, "finish": finish, "duration": d, "processing": d,
        "date_start": iso8601(start as i64), "date_finish": iso8601(finish as i64),
        "operating": operating, "operating_reset_at": reset_at,
    })
}

fn bump(map: &mut std::collections::BTreeMap<String, u64>, key: &str) {
    if let Some(v) = map.get_mut(key) {
        *v += 1;
    } else {
        map.insert(key.to_string(), 1);
    }
}

fn call(
    farm: &mut Farm,
    member: &str,
    hook: Option<(u64, String)>,
    token: Option<String>,
    method: &str,
    params: &Map<String, Value>,
    started: Instant,
) -> Result<(Done, f64, i64), RestError> {
    farm.stats.requests += 1;
    let r = call_inner(farm, member, hook, token, method, params, started);
    match &r {
        Ok(_) => bump(&mut farm.stats.requests_per_method, method),
        Err(e) => {
            bump(&mut farm.stats.requests_per_method, method);
            bump(&mut farm.stats.errors_per_code, &e.code);
            match e.code.as_str() {
                "QUERY_LIMIT_EXCEEDED" => farm.stats.query_limit_errors += 1,
                "OPERATION_TIME_LIMIT" => farm.stats.operation_limit_errors += 1,
                _ => {}
            }
        }
    }
    r
}

fn call_inner(
    farm: &mut Farm,
    member: &str,
    hook: Option<(u64, String)>,
    token: Option<String>,
    method: &str,
    params: &Map<String, Value>,
    started: Instant,
) -> Result<(Done, f64, i64), RestError> {
    let now = farm.now_f();
    {
        let p = farm.portals.get_mut(member).expect("resolved portal");
        if p.deleted {
            return Err(RestError::new(
                farm.cfg.statuses.portal_deleted,
                "PORTAL_DELETED",
                "Portal was deleted",
            ));
        }
        if !p.limits.admit(now) {
            return Err(RestError::new(
                503,
                "QUERY_LIMIT_EXCEEDED",
                "Too many requests",
            ));
        }
    }
    let mut ctx = authenticate(farm, member, hook, token)?;
    if let Some(c) = codec::param(params, "auth_connector").and_then(codec::scalar_str) {
        ctx.connector = c;
    }
    if method == "batch" {
        let done = batch::run(farm, &ctx, params)?;
        // The batch wrapper itself is not charged (§8.2).
        return Ok((done, 0.0, now as i64 + 600));
    }
    let (done, op, reset) = call_method(farm, &ctx, method, params, started)?;
    Ok((done, op, reset))
}

/// Runs one method (top level or inside `batch`): existence, scope, operating limit,
/// confirmation, the method itself, then the operating charge.
pub(crate) fn call_method(
    farm: &mut Farm,
    ctx: &Ctx,
    method: &str,
    params: &Map<String, Value>,
    started: Instant,
) -> Result<(Done, f64, i64), RestError> {
    let def = method_def(method)
        .ok_or_else(|| RestError::new(404, "ERROR_METHOD_NOT_FOUND", "Method not found!"))?;
    if let Some(scope) = def.scope
        && !ctx.has_scope(scope)
    {
        let what = if matches!(ctx.actor, Actor::Webhook { .. }) {
            "webhook token"
        } else {
            "access token"
        };
        return Err(RestError::new(
            farm.cfg.statuses.insufficient_scope,
            "insufficient_scope",
            format!("The request requires higher privileges than provided by the {what}"),
        ));
    }
    let now = farm.now_f();
    let actor = ctx.actor_key();
    if farm
        .portals
        .get_mut(&ctx.member_id)
        .expect("portal")
        .limits
        .blocked(&actor, method, now)
    {
        return Err(RestError::new(
            429,
            "OPERATION_TIME_LIMIT",
            "Method is blocked due to operation time limit.",
        ));
    }
    if def.confirm {
        check_confirmation(farm, ctx, method)?;
    }
    let t0 = Instant::now();
    let done = methods::dispatch(farm, ctx, method, params)?;
    let real = t0
        .elapsed()
        .as_secs_f64()
        .min(started.elapsed().as_secs_f64());
    let limits = &mut farm.portals.get_mut(&ctx.member_id).expect("portal").limits;
    if !limits.operating_enabled {
        // Limits off (benchmarks): no bookkeeping on the hot path.
        return Ok((done, 0.0, now as i64 + 600));
    }
    let charged = limits.charge(&actor, method, now, real);
    let (op, reset) = limits.operating(&actor, method, now);
    farm.stats.operating_secs += charged;
    Ok((done, op, reset))
}

/// Method confirmation (§9): first call → waiting (401), decision → 200 or 403.
fn check_confirmation(farm: &mut Farm, ctx: &Ctx, method: &str) -> Result<(), RestError> {
    let Actor::App { client_id, token } = &ctx.actor else {
        return Ok(());
    };
    let inst = farm
        .portals
        .get_mut(&ctx.member_id)
        .and_then(|p| p.installs.get_mut(client_id))
        .ok_or_else(|| RestError::new(401, "APPLICATION_NOT_FOUND", "Application not found"))?;
    let st = inst
        .confirmations
        .entry((token.clone(), method.to_string()))
        .or_insert(Confirmation::Waiting);
    match st {
        Confirmation::Confirmed => Ok(()),
        Confirmation::Waiting => Err(RestError::new(
            401,
            "METHOD_CONFIRM_WAITING",
            "Waiting for confirmation",
        )),
        Confirmation::Denied => Err(RestError::new(
            403,
            "METHOD_CONFIRM_DENIED",
            "Method call denied",
        )),
    }
}

fn authenticate(
    farm: &mut Farm,
    member: &str,
    hook: Option<(u64, String)>,
    token: Option<String>,
) -> Result<Ctx, RestError> {
    let now = farm.now();
    let no_auth = || RestError::new(401, "NO_AUTH_FOUND", "Wrong authorization data");
    let p = &farm.portals[member];
    if let Some((uid, code)) = hook {
        let w = p
            .webhooks
            .get(&code)
            .filter(|w| w.user_id == uid)
            .ok_or_else(no_auth)?;
        return Ok(Ctx {
            member_id: member.to_string(),
            actor: Actor::Webhook { code: code.clone() },
            user_id: uid,
            is_admin: p.admins.contains(&uid),
            scopes: w.scopes.clone(),
            connector: String::new(),
        });
    }
    let token = token.filter(|t| !t.is_empty()).ok_or_else(no_auth)?;
    let t = farm
        .tokens
        .get(&token)
        .filter(|t| t.member_id == member)
        .ok_or_else(|| {
            RestError::new(401, "invalid_token", "The access token provided is invalid")
        })?;
    if t.expires <= now {
        return Err(RestError::new(
            401,
            "expired_token",
            "The access token provided has expired.",
        ));
    }
    let inst = p
        .installs
        .get(&t.client_id)
        .filter(|i| i.active)
        .ok_or_else(|| RestError::new(401, "APPLICATION_NOT_FOUND", "Application not found"))?;
    if inst.payment_expired && inst.days.is_some_and(|d| d < -14) {
        return Err(RestError::new(
            farm.cfg.statuses.payment_required,
            "PAYMENT_REQUIRED",
            "Payment required",
        ));
    }
    let scopes = farm
        .apps
        .get(&t.client_id)
        .map(|a| a.scopes.clone())
        .unwrap_or_default();
    let ctx = Ctx {
        member_id: member.to_string(),
        actor: Actor::App {
            client_id: t.client_id.clone(),
            token,
        },
        user_id: t.user_id,
        is_admin: p.admins.contains(&t.user_id),
        scopes,
        connector: String::new(),
    };
    // A call made with an event's token continues that event session (§2.6).
    farm.hit.session = t.session;
    Ok(ctx)
}

/// PHP arrays: an empty map is `[]`, a map with keys "0".."n-1" in order is a list.
pub(crate) fn php_array(m: Map<String, Value>) -> Value {
    if m.is_empty() {
        return Value::Array(Vec::new());
    }
    if m.keys()
        .enumerate()
        .all(|(i, k)| k.parse::<usize>() == Ok(i))
    {
        return Value::Array(m.into_iter().map(|(_, v)| v).collect());
    }
    Value::Object(m)
}
