//! Reconciling what a portal should have (the manifest, adapted to what the
//! portal offers) with what it has (`event.get`, `placement.get`).
//!
//! Pure functions: [`desired`] builds the wanted bindings from the manifest
//! and the probe, [`plan`] diffs them against the actual ones, and
//! [`bind_command`]/[`unbind_command`] turn plan items into REST calls. The
//! rules (BRIEF §2 "Update", issue "Lifecycle engine"):
//! - bind what is missing; "Handler already binded" counts as bound;
//! - unbind what is stale **and ours** (handler under our public URL, or one
//!   of the manifest's placement handlers), at most N per run;
//! - leave other handlers' bindings alone (reported as `foreign`);
//! - a binding the portal cannot have (event outside the granted scopes,
//!   offline without `rest_offline_extended`, a connector without
//!   `rest_auth_connector`) is recorded as `unsatisfiable` with the reason,
//!   never silently dropped.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use store::{BindingKey, BindingRecord};
use wire::ApiError;

use crate::config::{BindingMode, Config};

/// What the capability probe found (the parts reconciling needs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    /// Granted scopes (`scope`).
    pub scopes: BTreeSet<String>,
    /// Events bindable under those scopes (`events`); `None` if unknown.
    pub events: Option<BTreeSet<String>>,
    pub offline_extended: bool,
    pub auth_connector: bool,
}

/// Reconciler settings beyond the manifest.
#[derive(Debug, Clone, Default)]
pub struct ReconcileOptions {
    /// Accept offline bindings on portals without `rest_offline_extended`,
    /// drained with the lossy `clear=1` mode. Off by default.
    pub allow_lossy_offline: bool,
}

/// A binding the manifest wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub key: BindingKey,
    pub auth_type: i64,
    pub owner: Option<String>,
    /// `event.bind` options, or placement settings (title, …).
    pub options: Value,
    /// Added by the gateway itself (lifecycle events), not listed in the
    /// manifest.
    pub implicit: bool,
    /// Why the portal cannot have it; `None` when it can.
    pub unsatisfiable: Option<String>,
}

/// A binding the portal has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual {
    pub key: BindingKey,
    pub auth_type: i64,
}

fn key(kind: &str, name: &str, mode: &str, handler: &str, connector: &str) -> BindingKey {
    BindingKey {
        kind: kind.into(),
        name: name.to_ascii_uppercase(),
        mode: mode.into(),
        handler: handler.into(),
        connector: connector.into(),
    }
}

/// Lifecycle events the gateway binds for itself: without ONAPPUNINSTALL
/// bound the uninstall never arrives (protocol §4.2); ONAPPINSTALL on the
/// install URL brings reinstalls and market updates (§4.1).
const IMPLICIT: [(&str, bool); 4] = [
    ("ONAPPINSTALL", true),
    ("ONAPPUPDATE", false),
    ("ONAPPUNINSTALL", false),
    ("ONAPPMETHODCONFIRM", false),
];

/// The bindings the manifest wants on a portal with this probe.
pub fn desired(config: &Config, probe: &Probe, opts: &ReconcileOptions) -> Vec<Desired> {
    let events_url = config.events_url();
    let mut out: Vec<Desired> = Vec::new();
    fn push(out: &mut Vec<Desired>, d: Desired) {
        if !out.iter().any(|o| o.key == d.key) {
            out.push(d);
        }
    }
    for b in &config.bindings {
        let name = b.event.to_ascii_uppercase();
        let (mode, handler) = match b.mode {
            BindingMode::Online => (
                "online",
                b.handler.clone().unwrap_or_else(|| events_url.clone()),
            ),
            BindingMode::Offline => ("offline", String::new()),
        };
        let mut why = None;
        if let Some(events) = &probe.events
            && !events.contains(&name)
        {
            why = Some("event not available under the granted scopes".to_owned());
        }
        if why.is_none()
            && b.mode == BindingMode::Offline
            && !probe.offline_extended
            && !opts.allow_lossy_offline
        {
            why = Some(
                "offline binding needs feature rest_offline_extended (safe reservation with clear=0); \
                 the lossy clear=1 drain is off"
                    .to_owned(),
            );
        }
        if why.is_none() && !b.auth_connector.is_empty() && !probe.auth_connector {
            why = Some("auth_connector needs feature rest_auth_connector".to_owned());
        }
        let options = serde_json::to_value(&b.options).unwrap_or(Value::Null);
        push(
            &mut out,
            Desired {
                key: key("event", &name, mode, &handler, &b.auth_connector),
                auth_type: if b.mode == BindingMode::Offline {
                    0
                } else {
                    b.auth_type
                },
                owner: b.owner.clone(),
                options,
                implicit: false,
                unsatisfiable: why,
            },
        );
    }
    let any_offline = out
        .iter()
        .any(|d| d.key.mode == "offline" && d.unsatisfiable.is_none());
    if any_offline && !out.iter().any(|d| d.key.name == "ONOFFLINEEVENT") {
        push(
            &mut out,
            Desired {
                key: key("event", "ONOFFLINEEVENT", "online", &events_url, ""),
                auth_type: 0,
                owner: None,
                options: json!({"minTimeout": 1}),
                implicit: true,
                unsatisfiable: None,
            },
        );
    }
    for (name, on_install_url) in IMPLICIT {
        let handler = if on_install_url {
            config.install_url()
        } else {
            events_url.clone()
        };
        push(
            &mut out,
            Desired {
                key: key("event", name, "online", &handler, ""),
                auth_type: 0,
                owner: None,
                options: json!({}),
                implicit: true,
                unsatisfiable: None,
            },
        );
    }
    for p in &config.placements {
        let why = (!probe.scopes.contains("placement"))
            .then(|| "placements need the `placement` scope".to_owned());
        let lang: serde_json::Map<String, Value> = p
            .lang_all
            .iter()
            .map(|(lang, t)| {
                (
                    lang.clone(),
                    json!({"TITLE": t.title, "DESCRIPTION": t.description, "GROUP_NAME": t.group_name}),
                )
            })
            .collect();
        push(
            &mut out,
            Desired {
                key: key("placement", &p.code, "online", &p.handler, ""),
                auth_type: 0,
                owner: None,
                options: json!({
                    "TITLE": p.title,
                    "DESCRIPTION": p.description,
                    "GROUP_NAME": p.group_name,
                    "OPTIONS": serde_json::to_value(&p.options).unwrap_or(Value::Null),
                    "LANG_ALL": lang,
                }),
                implicit: false,
                unsatisfiable: why,
            },
        );
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Parses `event.get`'s result (protocol §5.3): online items carry
/// `handler` and `auth_type` (a string), offline items `connector_id`.
pub fn parse_event_get(result: &Value) -> Vec<Actual> {
    let items: Vec<&Value> = match result {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|it| {
            let name = it.get("event").map(text)?;
            let offline = matches!(it.get("offline").map(text).as_deref(), Some("1" | "true"));
            let k = if offline {
                key(
                    "event",
                    &name,
                    "offline",
                    "",
                    &it.get("connector_id").map(text).unwrap_or_default(),
                )
            } else {
                key(
                    "event",
                    &name,
                    "online",
                    &it.get("handler").map(text).unwrap_or_default(),
                    "",
                )
            };
            Some(Actual {
                key: k,
                auth_type: it
                    .get("auth_type")
                    .map(text)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            })
        })
        .collect()
}

/// Parses `placement.get`'s result (protocol §5.13).
pub fn parse_placement_get(result: &Value) -> Vec<Actual> {
    let items: Vec<&Value> = match result {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|it| {
            let code = it.get("placement").map(text)?;
            let handler = it.get("handler").map(text).unwrap_or_default();
            Some(Actual {
                key: key("placement", &code, "online", &handler, ""),
                auth_type: 0,
            })
        })
        .collect()
}

/// What to do on one portal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub bind: Vec<Desired>,
    pub unbind: Vec<Actual>,
    /// Desired and present.
    pub keep: Vec<Desired>,
    pub unsatisfiable: Vec<Desired>,
    /// Present, not desired, not ours: left alone.
    pub foreign: Vec<Actual>,
    /// Stale and ours, beyond this run's unbind bound: next run.
    pub deferred: Vec<Actual>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.bind.is_empty() && self.unbind.is_empty()
    }
}

/// Whether a present binding is one this gateway manages.
pub fn is_ours(config: &Config, a: &Actual) -> bool {
    let public = config.server.public_url.trim_end_matches('/');
    let under_public = a.key.handler.starts_with(&format!("{public}/"));
    match (a.key.kind.as_str(), a.key.mode.as_str()) {
        ("event", "offline") => {
            // Offline bindings have no handler: ours when their connector is
            // one the manifest uses (the empty default included).
            a.key.connector.is_empty()
                || config
                    .bindings
                    .iter()
                    .any(|b| b.auth_connector == a.key.connector)
        }
        ("placement", _) => {
            under_public || config.placements.iter().any(|p| p.handler == a.key.handler)
        }
        _ => under_public,
    }
}

/// Diffs desired against actual. At most `max_unbind` stale bindings are
/// scheduled for removal; the rest wait for the next run.
pub fn plan(config: &Config, desired: &[Desired], actual: &[Actual], max_unbind: usize) -> Plan {
    let mut p = Plan::default();
    for d in desired {
        let present = actual.iter().any(|a| a.key == d.key);
        match (&d.unsatisfiable, present) {
            (Some(_), _) => p.unsatisfiable.push(d.clone()),
            (None, true) => p.keep.push(d.clone()),
            (None, false) => p.bind.push(d.clone()),
        }
    }
    for a in actual {
        // A desired-but-unsatisfiable binding that is somehow present is
        // left in place: removing it would lose events.
        if desired.iter().any(|d| d.key == a.key) {
            continue;
        }
        if !is_ours(config, a) {
            p.foreign.push(a.clone());
        } else if p.unbind.len() < max_unbind {
            p.unbind.push(a.clone());
        } else {
            p.deferred.push(a.clone());
        }
    }
    p
}

/// The REST call that creates `d`.
pub fn bind_command(d: &Desired) -> (&'static str, Value) {
    if d.key.kind == "placement" {
        let mut params = json!({"PLACEMENT": d.key.name, "HANDLER": d.key.handler});
        if let Value::Object(o) = &d.options {
            for (k, v) in o {
                let empty = v.is_null() || v.as_object().is_some_and(|m| m.is_empty());
                if !empty {
                    params[k] = v.clone();
                }
            }
        }
        return ("placement.bind", params);
    }
    let mut params = json!({"event": d.key.name, "event_type": d.key.mode});
    if d.key.mode == "online" {
        params["handler"] = json!(d.key.handler);
        params["auth_type"] = json!(d.auth_type);
    }
    if !d.key.connector.is_empty() {
        params["auth_connector"] = json!(d.key.connector);
    }
    if d.options.as_object().is_some_and(|o| !o.is_empty()) {
        params["options"] = d.options.clone();
    }
    ("event.bind", params)
}

/// The REST call that removes `a`.
pub fn unbind_command(a: &Actual) -> (&'static str, Value) {
    if a.key.kind == "placement" {
        return (
            "placement.unbind",
            json!({"PLACEMENT": a.key.name, "HANDLER": a.key.handler}),
        );
    }
    let mut params = json!({"event": a.key.name, "event_type": a.key.mode});
    if a.key.mode == "online" {
        params["handler"] = json!(a.key.handler);
        params["auth_type"] = json!(a.auth_type);
    }
    if !a.key.connector.is_empty() {
        params["auth_connector"] = json!(a.key.connector);
    }
    ("event.unbind", params)
}

/// Whether a bind error means "it is there already" (protocol §5.1, §5.13):
/// that counts as success.
pub fn already_bound(e: &ApiError) -> bool {
    e.description
        .to_ascii_lowercase()
        .contains("already binded")
}

/// The binding-matrix rows after a run: `results` gives the outcome text of
/// each bind/unbind attempted, by binding key (`ok`, or the error).
pub fn records(
    plan: &Plan,
    bound: &[(BindingKey, Result<(), String>)],
    unbound: &[(BindingKey, Result<(), String>)],
) -> Vec<BindingRecord> {
    let outcome = |list: &[(BindingKey, Result<(), String>)], k: &BindingKey| {
        list.iter().find(|(kk, _)| kk == k).map(|(_, r)| r.clone())
    };
    let mut out = Vec::new();
    let row =
        |d: &Desired, actual: bool, state: &str, reason: Option<String>, last: Option<String>| {
            BindingRecord {
                key: d.key.clone(),
                auth_type: d.auth_type,
                owner: d.owner.clone(),
                options: d.options.clone(),
                expected: true,
                actual,
                state: state.into(),
                reason,
                last_result: last,
            }
        };
    for d in &plan.keep {
        out.push(row(d, true, "bound", None, Some("present".into())));
    }
    for d in &plan.bind {
        match outcome(bound, &d.key) {
            Some(Ok(())) => out.push(row(d, true, "bound", None, Some("bound".into()))),
            Some(Err(e)) => out.push(row(d, false, "failed", Some(e.clone()), Some(e))),
            None => out.push(row(d, false, "missing", None, None)),
        }
    }
    for d in &plan.unsatisfiable {
        out.push(row(
            d,
            false,
            "unsatisfiable",
            d.unsatisfiable.clone(),
            None,
        ));
    }
    let actual_row =
        |a: &Actual, state: &str, reason: Option<String>, last: Option<String>, actual: bool| {
            BindingRecord {
                key: a.key.clone(),
                auth_type: a.auth_type,
                owner: None,
                options: json!({}),
                expected: false,
                actual,
                state: state.into(),
                reason,
                last_result: last,
            }
        };
    for a in &plan.unbind {
        match outcome(unbound, &a.key) {
            Some(Ok(())) => {} // gone: no row
            Some(Err(e)) => out.push(actual_row(
                a,
                "stale",
                Some("unbind failed".into()),
                Some(e),
                true,
            )),
            None => out.push(actual_row(a, "stale", None, None, true)),
        }
    }
    for a in &plan.deferred {
        out.push(actual_row(
            a,
            "stale",
            Some("over this run's unbind bound".into()),
            None,
            true,
        ));
    }
    for a in &plan.foreign {
        out.push(actual_row(
            a,
            "foreign",
            Some("another handler's binding: left alone".into()),
            None,
            true,
        ));
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
[server]
public_url = "https://gate.example.com"
[app]
client_id = "local.0123456789abcd.12345678"
version = 2
scopes = ["crm", "placement"]
[[target]]
name = "deals"
url = "https://app.example.com/hooks"
[[binding]]
event = "onCrmDealAdd"
owner = "deals"
[[binding]]
event = "ONCRMDEALUPDATE"
mode = "offline"
owner = "deals"
[[binding]]
event = "ONTASKADD"
owner = "deals"
[[placement]]
code = "CRM_DEAL_DETAIL_TAB"
handler = "https://app.example.com/deal-tab"
title = "Deal tab"
"#;
        Config::load(text, Vec::new()).unwrap().0
    }

    fn probe() -> Probe {
        Probe {
            scopes: ["crm", "placement"].map(String::from).into(),
            events: Some(
                [
                    "ONCRMDEALADD",
                    "ONCRMDEALUPDATE",
                    "ONAPPINSTALL",
                    "ONAPPUNINSTALL",
                    "ONAPPUPDATE",
                    "ONAPPMETHODCONFIRM",
                    "ONOFFLINEEVENT",
                ]
                .map(String::from)
                .into(),
            ),
            offline_extended: true,
            auth_connector: false,
        }
    }

    #[test]
    fn desired_adapts_to_the_probe_and_adds_lifecycle_bindings() {
        let c = config();
        let d = desired(&c, &probe(), &ReconcileOptions::default());
        let names: Vec<_> = d
            .iter()
            .map(|d| (d.key.name.as_str(), d.key.mode.as_str(), d.implicit))
            .collect();
        assert!(names.contains(&("ONCRMDEALADD", "online", false)));
        assert!(names.contains(&("ONCRMDEALUPDATE", "offline", false)));
        assert!(
            names.contains(&("ONOFFLINEEVENT", "online", true)),
            "offline needs its trigger"
        );
        assert!(names.contains(&("ONAPPUNINSTALL", "online", true)));
        let install = d.iter().find(|d| d.key.name == "ONAPPINSTALL").unwrap();
        assert_eq!(install.key.handler, "https://gate.example.com/b24/install");
        let task = d.iter().find(|d| d.key.name == "ONTASKADD").unwrap();
        assert_eq!(
            task.unsatisfiable.as_deref(),
            Some("event not available under the granted scopes")
        );
        // Without the feature, the offline binding is unsatisfiable, with why.
        let mut p = probe();
        p.offline_extended = false;
        let d = desired(&c, &p, &ReconcileOptions::default());
        let off = d.iter().find(|d| d.key.mode == "offline").unwrap();
        assert!(
            off.unsatisfiable
                .as_deref()
                .unwrap()
                .contains("rest_offline_extended")
        );
        assert!(!d.iter().any(|d| d.key.name == "ONOFFLINEEVENT"));
        let lossy = desired(
            &c,
            &p,
            &ReconcileOptions {
                allow_lossy_offline: true,
            },
        );
        assert!(
            lossy
                .iter()
                .find(|d| d.key.mode == "offline")
                .unwrap()
                .unsatisfiable
                .is_none()
        );
        // No placement scope: the placement is unsatisfiable.
        let mut p = probe();
        p.scopes.remove("placement");
        let d = desired(&c, &p, &ReconcileOptions::default());
        assert!(
            d.iter()
                .find(|d| d.key.kind == "placement")
                .unwrap()
                .unsatisfiable
                .is_some()
        );
    }

    #[test]
    fn plan_binds_missing_unbinds_only_our_stale_within_bound() {
        let c = config();
        let d = desired(&c, &probe(), &ReconcileOptions::default());
        let got = json!([
            {"event": "ONCRMDEALADD", "handler": "https://gate.example.com/b24/events", "auth_type": "0", "offline": 0},
            {"event": "ONCRMLEADADD", "handler": "https://gate.example.com/b24/events", "auth_type": "0", "offline": 0},
            {"event": "ONCRMLEADUPDATE", "handler": "https://gate.example.com/b24/events", "auth_type": "0", "offline": 0},
            {"event": "ONCRMDEALADD", "handler": "https://other.example.com/x", "auth_type": "0", "offline": 0},
            {"event": "ONCRMLEADDELETE", "connector_id": "", "offline": 1}
        ]);
        let actual = parse_event_get(&got);
        assert_eq!(actual.len(), 5);
        assert_eq!(actual[4].key.mode, "offline");
        let p = plan(&c, &d, &actual, 2);
        assert!(p.keep.iter().any(|k| k.key.name == "ONCRMDEALADD"));
        assert!(
            p.bind
                .iter()
                .any(|k| k.key.name == "ONCRMDEALUPDATE" && k.key.mode == "offline")
        );
        assert!(p.bind.iter().any(|k| k.key.name == "ONAPPUNINSTALL"));
        assert!(
            !p.bind.iter().any(|k| k.key.name == "ONTASKADD"),
            "unsatisfiable is not bound"
        );
        assert_eq!(p.unsatisfiable.len(), 1);
        assert_eq!(
            p.foreign.len(),
            1,
            "another handler's binding is left alone"
        );
        assert_eq!(p.foreign[0].key.handler, "https://other.example.com/x");
        assert_eq!(p.unbind.len(), 2, "bounded");
        assert_eq!(p.deferred.len(), 1);
        // The plan's records cover everything, with states.
        let bound: Vec<_> = p.bind.iter().map(|d| (d.key.clone(), Ok(()))).collect();
        let unbound: Vec<_> = p.unbind.iter().map(|a| (a.key.clone(), Ok(()))).collect();
        let recs = records(&p, &bound, &unbound);
        let count = |s: &str| recs.iter().filter(|r| r.state == s).count();
        assert_eq!(count("unsatisfiable"), 1);
        assert_eq!(count("foreign"), 1);
        assert_eq!(count("stale"), 1);
        assert_eq!(count("bound"), p.keep.len() + p.bind.len());
        // A second run over the new state is a no-op except the deferred unbind.
        let mut now: Vec<Actual> = actual
            .iter()
            .filter(|a| !p.unbind.iter().any(|u| u.key == a.key))
            .cloned()
            .collect();
        now.extend(p.bind.iter().map(|d| Actual {
            key: d.key.clone(),
            auth_type: d.auth_type,
        }));
        let p2 = plan(&c, &d, &now, 2);
        assert!(p2.bind.is_empty());
        assert_eq!(p2.unbind.len(), 1);
    }

    #[test]
    fn commands_carry_the_documented_parameters() {
        let c = config();
        let d = desired(&c, &probe(), &ReconcileOptions::default());
        let online = d.iter().find(|d| d.key.name == "ONCRMDEALADD").unwrap();
        let (m, p) = bind_command(online);
        assert_eq!(m, "event.bind");
        assert_eq!(p["handler"], "https://gate.example.com/b24/events");
        assert_eq!(p["event_type"], "online");
        let off = d.iter().find(|d| d.key.mode == "offline").unwrap();
        let (_, p) = bind_command(off);
        assert_eq!(p["event_type"], "offline");
        assert!(p.get("handler").is_none());
        let trig = d.iter().find(|d| d.key.name == "ONOFFLINEEVENT").unwrap();
        assert_eq!(bind_command(trig).1["options"]["minTimeout"], 1);
        let pl = d.iter().find(|d| d.key.kind == "placement").unwrap();
        let (m, p) = bind_command(pl);
        assert_eq!(m, "placement.bind");
        assert_eq!(p["PLACEMENT"], "CRM_DEAL_DETAIL_TAB");
        assert_eq!(p["TITLE"], "Deal tab");
        let placements = parse_placement_get(
            &json!([{"placement": "CRM_DEAL_DETAIL_TAB", "handler": "https://app.example.com/deal-tab", "title": "x"}]),
        );
        assert_eq!(placements[0].key, pl.key);
        let (m, p) = unbind_command(&placements[0]);
        assert_eq!(
            (m, p["HANDLER"].as_str()),
            ("placement.unbind", Some("https://app.example.com/deal-tab"))
        );
        let e = ApiError {
            code: wire::ErrorCode::parse("ERROR_CORE"),
            description: "Unable to set event handler: Handler already binded".into(),
            argument: None,
            status: Some(400),
        };
        assert!(already_bound(&e));
    }
}
