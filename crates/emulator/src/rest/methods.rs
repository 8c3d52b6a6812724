//! The method table and the system, event, placement, option, user and telephony
//! methods (reference §5).

use serde_json::{Map, Value, json};

use super::{Ctx, Done, RestError, php_array};
use crate::clock::iso8601;
use crate::codec::{int, list_values, param, scalar_str, truthy};
use crate::events::{EVENTS, Initiator, event_def};
use crate::state::{Farm, Placement, Plan};

/// A method the emulated portal knows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MethodDef {
    pub name: &'static str,
    /// Scope required; `None` = basic (always available).
    pub scope: Option<&'static str>,
    /// Needs per-token admin confirmation (§9).
    pub confirm: bool,
}

const fn m(name: &'static str, scope: Option<&'static str>) -> MethodDef {
    MethodDef {
        name,
        scope,
        confirm: false,
    }
}

/// Every method, lower case.
pub(crate) const METHODS: &[MethodDef] = &[
    m("app.info", None),
    m("app.option.get", None),
    m("app.option.set", None),
    m("batch", None),
    m("scope", None),
    m("methods", None),
    m("method.get", None),
    m("feature.get", None),
    m("profile", None),
    m("user.admin", None),
    m("server.time", None),
    m("user.get", Some("user")),
    m("events", None),
    m("event.bind", None),
    m("event.unbind", None),
    m("event.get", None),
    m("event.test", None),
    m("event.offline.get", None),
    m("event.offline.clear", None),
    m("event.offline.error", None),
    m("event.offline.list", None),
    m("placement.bind", Some("placement")),
    m("placement.unbind", Some("placement")),
    m("placement.get", Some("placement")),
    m("placement.list", Some("placement")),
    m("crm.deal.add", Some("crm")),
    m("crm.deal.update", Some("crm")),
    m("crm.deal.get", Some("crm")),
    m("crm.deal.delete", Some("crm")),
    m("crm.deal.list", Some("crm")),
    m("crm.deal.fields", Some("crm")),
    MethodDef {
        name: "voximplant.user.get",
        scope: Some("telephony"),
        confirm: true,
    },
];

/// All scopes a portal offers (`scope` with `full=true`).
pub(crate) const ALL_SCOPES: &[&str] = &[
    "app",
    "bizproc",
    "calendar",
    "crm",
    "department",
    "disk",
    "entity",
    "im",
    "imopenlines",
    "lists",
    "log",
    "placement",
    "pull",
    "sonet_group",
    "task",
    "telephony",
    "user",
    "user_basic",
    "user_brief",
    "userfieldconfig",
];

/// Placement codes and the scope each needs besides `placement`.
const PLACEMENTS: &[(&str, Option<&str>)] = &[
    ("CRM_DEAL_DETAIL_TAB", Some("crm")),
    ("CRM_DEAL_DETAIL_TOOLBAR", Some("crm")),
    ("CRM_DEAL_LIST_MENU", Some("crm")),
    ("CRM_LEAD_DETAIL_TAB", Some("crm")),
    ("CRM_CONTACT_DETAIL_TAB", Some("crm")),
    ("CRM_COMPANY_DETAIL_TAB", Some("crm")),
    ("TASK_VIEW_TAB", Some("task")),
    ("LEFT_MENU", None),
    ("PAGE_BACKGROUND_WORKER", None),
];

pub(crate) fn method_def(name: &str) -> Option<&'static MethodDef> {
    METHODS.iter().find(|d| d.name == name)
}

pub(super) fn dispatch(
    farm: &mut Farm,
    ctx: &Ctx,
    method: &str,
    p: &Map<String, Value>,
) -> Result<Done, RestError> {
    Ok(match method {
        "app.info" => app_info(farm, ctx)?.into(),
        "app.option.get" => option_get(farm, ctx, p)?.into(),
        "app.option.set" => option_set(farm, ctx, p)?.into(),
        "scope" => scope(ctx, p).into(),
        "methods" => methods(ctx, p).into(),
        "method.get" => method_get(ctx, p).into(),
        "feature.get" => feature_get(farm, ctx, p)?.into(),
        "profile" => profile(farm, ctx).into(),
        "user.admin" => json!(ctx.is_admin).into(),
        "server.time" => json!(iso8601(farm.now())).into(),
        "user.get" => user_get(farm, ctx, p),
        "events" => events(ctx, p)?.into(),
        "event.bind" => event_bind(farm, ctx, p)?.into(),
        "event.unbind" => event_unbind(farm, ctx, p)?.into(),
        "event.get" => event_get(farm, ctx)?.into(),
        "event.test" => event_test(farm, ctx, p)?.into(),
        "event.offline.get" => super::offline::get(farm, ctx, p)?.into(),
        "event.offline.clear" => super::offline::clear(farm, ctx, p)?.into(),
        "event.offline.error" => super::offline::error(farm, ctx, p)?.into(),
        "event.offline.list" => super::offline::list(farm, ctx, p)?,
        "placement.bind" => placement_bind(farm, ctx, p)?.into(),
        "placement.unbind" => placement_unbind(farm, ctx, p)?.into(),
        "placement.get" => placement_get(farm, ctx)?.into(),
        "placement.list" => placement_list(ctx, p).into(),
        "crm.deal.add" => super::crm::add(farm, ctx, p)?.into(),
        "crm.deal.update" => super::crm::update(farm, ctx, p)?.into(),
        "crm.deal.get" => super::crm::get(farm, ctx, p)?.into(),
        "crm.deal.delete" => super::crm::delete(farm, ctx, p)?.into(),
        "crm.deal.list" => super::crm::list(farm, ctx, p)?,
        "crm.deal.fields" => super::crm::fields().into(),
        "voximplant.user.get" => voximplant_user_get(p).into(),
        _ => {
            return Err(RestError::new(
                404,
                "ERROR_METHOD_NOT_FOUND",
                "Method not found!",
            ));
        }
    })
}

fn str_param(p: &Map<String, Value>, name: &str) -> String {
    param(p, name).and_then(scalar_str).unwrap_or_default()
}

fn license(plan: Plan, lang: &str) -> (String, &'static str, &'static str) {
    match plan {
        Plan::Standard => (format!("{lang}_std"), "std", "std"),
        Plan::Enterprise => (format!("{lang}_ent250"), "ent250", "ent"),
    }
}

fn app_info(farm: &Farm, ctx: &Ctx) -> Result<Value, RestError> {
    let p = &farm.portals[&ctx.member_id];
    let (lic, lic_type, family) = license(p.plan, &farm.cfg.language_id);
    let Some(client) = ctx.client_id() else {
        return Ok(json!({"SCOPE": ctx.scopes, "LICENSE": lic}));
    };
    let app = &farm.apps[client];
    let i = &p.installs[client];
    Ok(json!({
        "ID": app.id, "CODE": app.client_id, "VERSION": i.version, "STATUS": i.status,
        "INSTALLED": i.installed, "PAYMENT_EXPIRED": if i.payment_expired {"Y"} else {"N"},
        "DAYS": i.days, "LANGUAGE_ID": farm.cfg.language_id,
        "LICENSE": lic, "LICENSE_TYPE": lic_type, "LICENSE_FAMILY": family,
    }))
}

fn option_get(farm: &Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Value, RestError> {
    let client = ctx.app()?;
    let opts = &farm.portals[&ctx.member_id].installs[client].options;
    let name = str_param(p, "option");
    if name.is_empty() {
        return Ok(php_array(opts.clone()));
    }
    Ok(opts.get(&name).cloned().unwrap_or(Value::Null))
}

fn option_set(farm: &mut Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Value, RestError> {
    let client = ctx.app()?.to_string();
    if !ctx.is_admin {
        return Err(RestError::access_denied(""));
    }
    let Some(Value::Object(opts)) = param(p, "options") else {
        return Err(RestError::arg_empty("OPTIONS"));
    };
    let inst = farm
        .portals
        .get_mut(&ctx.member_id)
        .and_then(|p| p.installs.get_mut(&client))
        .expect("authenticated install");
    for (k, v) in opts {
        inst.options.insert(k.clone(), v.clone());
    }
    Ok(json!(true))
}

fn scope(ctx: &Ctx, p: &Map<String, Value>) -> Value {
    if param(p, "full").is_some_and(truthy) {
        json!(ALL_SCOPES)
    } else {
        json!(ctx.scopes)
    }
}

fn methods(ctx: &Ctx, p: &Map<String, Value>) -> Value {
    let full = param(p, "full").is_some_and(truthy);
    let scope = param(p, "scope").and_then(scalar_str);
    let names: Vec<&str> = METHODS
        .iter()
        .filter(|d| match (&scope, full) {
            (Some(s), _) => d.scope == Some(s.as_str()) || (s.is_empty() && d.scope.is_none()),
            (None, true) => true,
            (None, false) => d.scope.is_none_or(|s| ctx.has_scope(s)),
        })
        .map(|d| d.name)
        .collect();
    json!(names)
}

fn method_get(ctx: &Ctx, p: &Map<String, Value>) -> Value {
    let name = str_param(p, "name").to_ascii_lowercase();
    match method_def(&name) {
        Some(d) if !name.is_empty() => {
            json!({"isExisting": true, "isAvailable": d.scope.is_none_or(|s| ctx.has_scope(s))})
        }
        _ => json!({"isExisting": false, "isAvailable": false}),
    }
}

fn feature_get(farm: &Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Value, RestError> {
    let code = str_param(p, "code");
    if code.is_empty() {
        return Err(RestError::new(400, "CODE_EMPTY", "CODE can't be empty"));
    }
    let on = farm.portals[&ctx.member_id].features.contains(&code);
    Ok(json!({"value": if on {"Y"} else {"N"}}))
}

fn user_json(farm: &Farm, ctx: &Ctx, id: u64) -> Value {
    let p = &farm.portals[&ctx.member_id];
    let (name, last) = if p.admins.contains(&id) {
        ("Admin", format!("User{id}"))
    } else {
        ("Employee", format!("User{id}"))
    };
    json!({
        "ID": id.to_string(), "XML_ID": "", "ACTIVE": true, "NAME": name, "LAST_NAME": last,
        "SECOND_NAME": "", "EMAIL": format!("user{id}@{}", p.domain.split(':').next().unwrap_or("")),
        "LAST_LOGIN": iso8601(farm.now()), "DATE_REGISTER": iso8601(0), "IS_ONLINE": "N",
        "TIME_ZONE": "", "TIME_ZONE_OFFSET": "0", "PERSONAL_GENDER": "", "UF_DEPARTMENT": [1],
        "USER_TYPE": "employee",
    })
}

fn users(farm: &Farm, ctx: &Ctx) -> Vec<u64> {
    let p = &farm.portals[&ctx.member_id];
    let max = p
        .admins
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(3)
        .max(ctx.user_id);
    (1..=max).collect()
}

fn profile(farm: &Farm, ctx: &Ctx) -> Value {
    let u = user_json(farm, ctx, ctx.user_id);
    json!({
        "ID": u["ID"], "ADMIN": ctx.is_admin, "NAME": u["NAME"], "LAST_NAME": u["LAST_NAME"],
        "PERSONAL_GENDER": "", "TIME_ZONE": "", "TIME_ZONE_OFFSET": 0,
    })
}

fn user_get(farm: &Farm, ctx: &Ctx, p: &Map<String, Value>) -> Done {
    let filter = match param(p, "filter").or_else(|| param(p, "FILTER")) {
        Some(Value::Object(f)) => f.clone(),
        _ => p.clone(),
    };
    let id = param(&filter, "ID").and_then(int);
    let all: Vec<Value> = users(farm, ctx)
        .into_iter()
        .filter(|u| id.is_none_or(|i| i as u64 == *u))
        .map(|u| user_json(farm, ctx, u))
        .collect();
    let start = param(p, "start").and_then(int).unwrap_or(0).max(0) as usize;
    let total = all.len() as u64;
    let page: Vec<Value> = all.into_iter().skip(start).take(50).collect();
    let next = (start as u64 + 50 < total).then_some(start as u64 + 50);
    Done {
        result: json!(page),
        next,
        total: Some(total),
    }
}

fn events(ctx: &Ctx, p: &Map<String, Value>) -> Result<Value, RestError> {
    ctx.app()?;
    let scope = param(p, "scope").and_then(scalar_str);
    let full = param(p, "full").is_some_and(truthy);
    let names: Vec<&str> = EVENTS
        .iter()
        .filter(|e| match (&scope, full) {
            (Some(s), _) if s.is_empty() => e.scope.is_none(),
            (Some(s), _) => e.scope == Some(s.as_str()),
            (None, true) => true,
            (None, false) => e.scope.is_none_or(|s| ctx.has_scope(s)),
        })
        .map(|e| e.name)
        .collect();
    Ok(json!(names))
}

/// `HandlerHelper::checkCallback` (§5.1): scheme http(s), host with a dot not first.
pub(crate) fn check_handler(url: &str) -> Result<(), RestError> {
    let wrong = || RestError::new(400, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL");
    let (scheme, rest) = url.split_once("://").ok_or_else(wrong)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit('@').next().unwrap_or("");
    let host = if hostport.starts_with('[') {
        hostport
            .split(']')
            .next()
            .unwrap_or("")
            .trim_start_matches('[')
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    if host.is_empty() || host.find('.').is_none_or(|i| i == 0) {
        return Err(wrong());
    }
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(RestError::new(
            400,
            "ERROR_UNSUPPORTED_PROTOCOL",
            "Unsupported protocol",
        ));
    }
    Ok(())
}

fn offline_type(p: &Map<String, Value>) -> Result<bool, RestError> {
    match str_param(p, "event_type").to_ascii_lowercase().as_str() {
        "" | "online" => Ok(false),
        "offline" => Ok(true),
        _ => Err(RestError::argument("EVENT_TYPE", "Wrong event type")),
    }
}

fn connector_param(farm: &Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<String, RestError> {
    let c = str_param(p, "auth_connector");
    if !c.is_empty()
        && !farm.portals[&ctx.member_id]
            .features
            .contains("rest_auth_connector")
    {
        return Err(RestError::new(
            403,
            "WRONG_LICENSE",
            "This feature is not enabled for the current license: auth connector",
        ));
    }
    Ok(c)
}

fn event_bind(farm: &mut Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Value, RestError> {
    let client = ctx.app()?.to_string();
    let name = str_param(p, "event").to_ascii_uppercase();
    if name.is_empty() {
        return Err(RestError::arg_empty("EVENT"));
    }
    let offline = offline_type(p)?;
    let def = event_def(&name)
        .filter(|d| d.scope.is_none_or(|s| ctx.has_scope(s)))
        .ok_or_else(|| RestError::new(400, "ERROR_EVENT_NOT_FOUND", "Event not found"))?;
    let mut auth_type = param(p, "auth_type").and_then(int).unwrap_or(0).max(0) as u64;
    let connector = connector_param(farm, ctx, p)?;
    let handler = if offline {
        if !ctx.is_admin {
            return Err(RestError::access_denied(
                "Offline events binding requires administrator access rights",
            ));
        }
        if !def.offline_allowed {
            return Err(RestError::argument(
                "EVENT_TYPE",
                "Offline event cannot be registered for this event.",
            ));
        }
        auth_type = 0;
        String::new()
    } else {
        let h = str_param(p, "handler");
        if h.is_empty() {
            return Err(RestError::arg_empty("HANDLER"));
        }
        check_handler(&h)?;
        h
    };
    if auth_type > 0 && auth_type != ctx.user_id && !ctx.is_admin {
        return Err(RestError::access_denied(
            "Event binding with AUTH_TYPE requires administrator access rights",
        ));
    }
    let min_timeout = match param(p, "options") {
        Some(Value::Object(o)) if def.name == "ONOFFLINEEVENT" => param(o, "minTimeout")
            .and_then(int)
            .map(|v| v.max(0) as f64),
        _ => None,
    };
    let connector = if offline { connector } else { String::new() };
    if !farm.add_binding(
        &ctx.member_id,
        &client,
        def.name,
        &handler,
        auth_type,
        offline,
        &connector,
        min_timeout,
    ) {
        return Err(RestError::new(
            400,
            "ERROR_CORE",
            "Unable to set event handler: Handler already binded",
        ));
    }
    Ok(json!(true))
}

fn event_unbind(farm: &mut Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Value, RestError> {
    let client = ctx.app()?.to_string();
    let name = str_param(p, "event").to_ascii_uppercase();
    if name.is_empty() {
        return Err(RestError::arg_empty("EVENT"));
    }
    let offline = offline_type(p)?;
    let handler = str_param(p, "handler");
    if !offline && handler.is_empty() {
        return Err(RestError::arg_empty("HANDLER"));
    }
    if offline && !ctx.is_admin {
        return Err(RestError::access_denied(
            "Offline events unbinding requires administrator access rights",
        ));
    }
    let auth_type = param(p, "auth_type").and_then(int).unwrap_or(0).max(0) as u64;
    let connector = connector_param(farm, ctx, p)?;
    let portal = farm.portals.get_mut(&ctx.member_id).expect("portal");
    let before = portal.bindings.len();
    portal.bindings.retain(|b| {
        !(b.client_id == client
            && b.event == name
            && b.offline == offline
            && (offline || (b.handler == handler && b.auth_type == auth_type))
            && (!offline || b.connector == connector))
    });
    Ok(json!({"count": before - portal.bindings.len()}))
}

fn event_get(farm: &Farm, ctx: &Ctx) -> Result<Value, RestError> {
    let client = ctx.app()?;
    let items: Vec<Value> = farm.portals[&ctx.member_id]
        .bindings
        .iter()
        .filter(|b| b.client_id == client && (ctx.is_admin || b.auth_type == 0 || b.auth_type == ctx.user_id))
        .map(|b| {
            if b.offline {
                json!({"event": b.event, "connector_id": b.connector, "offline": 1})
            } else {
                json!({"event": b.event, "handler": b.handler, "auth_type": b.auth_type.to_string(), "offline": 0})
            }
        })
        .collect();
    Ok(json!(items))
}

fn event_test(farm: &mut Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Value, RestError> {
    let client = ctx.app()?.to_string();
    let mut query = p.clone();
    query.retain(|k, _| !k.eq_ignore_ascii_case("auth") && !k.eq_ignore_ascii_case("access_token"));
    let data = json!({"QUERY": php_array(query), "LANGUAGE_ID": farm.cfg.language_id});
    farm.fire_app(
        &ctx.member_id,
        &client,
        "ONAPPTEST",
        data,
        ctx.user_id,
        true,
    );
    Ok(json!(1))
}

/// Fires an entity event caused by this REST call (initiator = the calling app).
pub(super) fn fire_from_call(farm: &mut Farm, ctx: &Ctx, event: &str, data: Value) {
    let initiator = Initiator {
        client_id: ctx.client_id().map(str::to_string),
        connector: ctx.connector.clone(),
    };
    farm.fire_entity(&ctx.member_id, event, data, ctx.user_id, &initiator);
}

fn placement_bind(farm: &mut Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Value, RestError> {
    let client = ctx.app()?.to_string();
    if !ctx.is_admin {
        return Err(RestError::access_denied(""));
    }
    let code = str_param(p, "placement").to_ascii_uppercase();
    if code.is_empty() {
        return Err(RestError::arg_empty("PLACEMENT"));
    }
    let known = PLACEMENTS
        .iter()
        .find(|(c, _)| *c == code)
        .filter(|(_, s)| s.is_none_or(|s| ctx.has_scope(s)));
    if known.is_none() {
        return Err(RestError::new(
            400,
            "ERROR_PLACEMENT_NOT_FOUND",
            "Placement not found",
        ));
    }
    let handler = str_param(p, "handler");
    if handler.is_empty() {
        return Err(RestError::new(
            400,
            "EMPTY_ERROR_HANDLER_URL",
            "Empty handler URL",
        ));
    }
    check_handler(&handler)?;
    let user_id = param(p, "user_id").and_then(int).unwrap_or(0).max(0) as u64;
    if user_id > 0 && code != "PAGE_BACKGROUND_WORKER" {
        return Err(RestError::new(
            400,
            "ERROR_PLACEMENT_USER_MODE",
            "User mode is not available.",
        ));
    }
    let portal = farm.portals.get_mut(&ctx.member_id).expect("portal");
    if portal.placements.iter().any(|x| {
        x.client_id == client && x.placement == code && x.handler == handler && x.user_id == user_id
    }) {
        return Err(RestError::new(
            400,
            "ERROR_CORE",
            "Unable to set placement handler: Handler already binded",
        ));
    }
    portal.placements.push(Placement {
        client_id: client,
        placement: code,
        handler,
        title: str_param(p, "title"),
        description: str_param(p, "description"),
        group_name: str_param(p, "group_name"),
        lang_all: param(p, "lang_all").cloned().unwrap_or(json!([])),
        options: param(p, "options").cloned().unwrap_or(json!([])),
        user_id,
    });
    Ok(json!(true))
}

fn placement_unbind(
    farm: &mut Farm,
    ctx: &Ctx,
    p: &Map<String, Value>,
) -> Result<Value, RestError> {
    let client = ctx.app()?.to_string();
    if !ctx.is_admin {
        return Err(RestError::access_denied(""));
    }
    let code = str_param(p, "placement").to_ascii_uppercase();
    if code.is_empty() {
        return Err(RestError::arg_empty("PLACEMENT"));
    }
    let handler = str_param(p, "handler");
    let user_id = param(p, "user_id").and_then(int).map(|u| u.max(0) as u64);
    let portal = farm.portals.get_mut(&ctx.member_id).expect("portal");
    let before = portal.placements.len();
    portal.placements.retain(|x| {
        !(x.client_id == client
            && x.placement == code
            && (handler.is_empty() || x.handler == handler)
            && user_id.is_none_or(|u| u == x.user_id))
    });
    Ok(json!({"count": before - portal.placements.len()}))
}

fn placement_get(farm: &Farm, ctx: &Ctx) -> Result<Value, RestError> {
    let client = ctx.app()?;
    let items: Vec<Value> = farm.portals[&ctx.member_id]
        .placements
        .iter()
        .filter(|x| x.client_id == client)
        .map(|x| {
            json!({
                "placement": x.placement, "userId": x.user_id.to_string(), "handler": x.handler,
                "options": x.options, "title": x.title, "description": x.description, "langAll": x.lang_all,
            })
        })
        .collect();
    Ok(json!(items))
}

fn placement_list(ctx: &Ctx, p: &Map<String, Value>) -> Value {
    let scope = param(p, "scope").and_then(scalar_str);
    let full = param(p, "full").is_some_and(truthy);
    let codes: Vec<&str> = PLACEMENTS
        .iter()
        .filter(|(_, s)| match (&scope, full) {
            (Some(sc), _) => s.is_some_and(|s| s == sc) || (sc.is_empty() && s.is_none()),
            (None, true) => true,
            (None, false) => s.is_none_or(|s| ctx.has_scope(s)),
        })
        .map(|(c, _)| *c)
        .collect();
    json!(codes)
}

fn voximplant_user_get(p: &Map<String, Value>) -> Value {
    let ids: Vec<i64> = match param(p, "user_id") {
        Some(v) => list_values(v)
            .map(|l| l.into_iter().filter_map(int).collect())
            .unwrap_or_else(|| int(v).into_iter().collect()),
        None => vec![],
    };
    let rows: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"ID": id.to_string(), "DEFAULT_LINE": "", "PHONE_ENABLED": "N", "PHONE_DEVICE_ACTIVE": "N",
                   "UF_VI_BACKPHONE": "", "UF_VI_PHONE": "N", "UF_VI_PHONE_PASSWORD": "", "UF_PHONE_INNER": ""})
        })
        .collect();
    json!(rows)
}
