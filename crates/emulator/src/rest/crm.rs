//! `crm.deal.*`: a small in-memory deal store with the list semantics of §6.1
//! (pages of 50, `next`/`total`, `start=-1` without counting).

use std::cmp::Ordering;

use serde_json::{Map, Value, json};

use super::methods::fire_from_call;
use super::{Ctx, Done, RestError};
use crate::clock::iso8601;
use crate::codec::{int, list_values, param, scalar_str};
use crate::state::Farm;

/// (field, type, read-only, title)
const FIELDS: &[(&str, &str, bool, &str)] = &[
    ("ID", "integer", true, "ID"),
    ("TITLE", "string", false, "Name"),
    ("TYPE_ID", "crm_status", false, "Type"),
    ("CATEGORY_ID", "crm_category", false, "Pipeline"),
    ("STAGE_ID", "crm_status", false, "Deal stage"),
    ("PROBABILITY", "integer", false, "Probability"),
    ("CURRENCY_ID", "crm_currency", false, "Currency"),
    ("OPPORTUNITY", "double", false, "Amount"),
    ("COMPANY_ID", "crm_company", false, "Company"),
    ("CONTACT_ID", "crm_contact", false, "Contact"),
    ("BEGINDATE", "date", false, "Start date"),
    ("CLOSEDATE", "date", false, "End date"),
    ("OPENED", "char", false, "Available to everyone"),
    ("CLOSED", "char", false, "Closed"),
    ("COMMENTS", "string", false, "Comment"),
    ("ASSIGNED_BY_ID", "user", false, "Responsible person"),
    ("CREATED_BY_ID", "user", true, "Created by"),
    ("MODIFY_BY_ID", "user", true, "Modified by"),
    ("DATE_CREATE", "datetime", true, "Created on"),
    ("DATE_MODIFY", "datetime", true, "Modified on"),
    ("SOURCE_ID", "crm_status", false, "Source"),
    ("SOURCE_DESCRIPTION", "string", false, "Source information"),
    ("ADDITIONAL_INFO", "string", false, "Additional information"),
    ("ORIGINATOR_ID", "string", false, "External source"),
    ("ORIGIN_ID", "string", false, "Item ID in data source"),
];

const PAGE: usize = 50;

pub(super) fn fields() -> Value {
    let mut m = Map::new();
    for (name, ty, ro, title) in FIELDS {
        m.insert(
            (*name).to_string(),
            json!({"type": ty, "isRequired": false, "isReadOnly": ro, "isImmutable": false,
                   "isMultiple": false, "isDynamic": false, "title": title}),
        );
    }
    Value::Object(m)
}

/// A new deal before its id, title, users and dates are filled in: every field in
/// `FIELDS` order, null unless it has a default.
fn deal_template() -> &'static Map<String, Value> {
    static T: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let mut d = Map::new();
        for (name, _, _, _) in FIELDS {
            d.insert((*name).to_string(), Value::Null);
        }
        for (k, v) in [
            ("TYPE_ID", "SALE"),
            ("CATEGORY_ID", "0"),
            ("STAGE_ID", "NEW"),
            ("CURRENCY_ID", "USD"),
            ("OPPORTUNITY", "0.00"),
            ("OPENED", "Y"),
            ("CLOSED", "N"),
        ] {
            d.insert(k.to_string(), json!(v));
        }
        d
    })
}

fn writable(k: &str) -> bool {
    k.starts_with("UF_CRM_") || FIELDS.iter().any(|(n, _, ro, _)| *n == k && !ro)
}

fn to_field(v: &Value) -> Value {
    match v {
        Value::Null => Value::Null,
        Value::Array(_) | Value::Object(_) => v.clone(),
        other => json!(scalar_str(other).unwrap_or_default()),
    }
}

impl Farm {
    /// Adds a deal; returns its id. Fires nothing (callers fire the event).
    pub(crate) fn deal_add(
        &mut self,
        member_id: &str,
        fields: Map<String, Value>,
        user: u64,
    ) -> u64 {
        let now = iso8601(self.now());
        let p = self.portals.get_mut(member_id).expect("portal");
        p.next_deal_id += 1;
        let id = p.next_deal_id;
        // Cloning a ready map costs far less than building it key by key (bulk
        // changes add deals at delivery-benchmark rates).
        let mut d = deal_template().clone();
        let user = user.to_string();
        for (k, v) in [
            ("ID", id.to_string()),
            ("TITLE", format!("Deal #{id}")),
            ("ASSIGNED_BY_ID", user.clone()),
            ("CREATED_BY_ID", user.clone()),
            ("MODIFY_BY_ID", user),
            ("DATE_CREATE", now.clone()),
            ("DATE_MODIFY", now),
        ] {
            if let Some(slot) = d.get_mut(k) {
                *slot = Value::String(v);
            }
        }
        for (k, v) in fields {
            let k = k.to_ascii_uppercase();
            if writable(&k) {
                d.insert(k, to_field(&v));
            }
        }
        p.deals.insert(id, d);
        id
    }

    /// Updates a deal; false when it does not exist.
    pub(crate) fn deal_update(
        &mut self,
        member_id: &str,
        id: u64,
        fields: &Map<String, Value>,
        user: u64,
    ) -> bool {
        let now = iso8601(self.now());
        let Some(d) = self
            .portals
            .get_mut(member_id)
            .and_then(|p| p.deals.get_mut(&id))
        else {
            return false;
        };
        for (k, v) in fields {
            let k = k.to_ascii_uppercase();
            if writable(&k) {
                d.insert(k, to_field(v));
            }
        }
        d.insert("MODIFY_BY_ID".into(), json!(user.to_string()));
        d.insert("DATE_MODIFY".into(), json!(now));
        true
    }
}

fn id_param(p: &Map<String, Value>) -> Result<u64, RestError> {
    param(p, "id")
        .and_then(int)
        .filter(|i| *i > 0)
        .map(|i| i as u64)
        .ok_or_else(|| RestError::new(400, "", "ID is not defined or invalid."))
}

fn not_found() -> RestError {
    RestError::new(400, "", "Not found")
}

fn fields_param(p: &Map<String, Value>) -> Map<String, Value> {
    match param(p, "fields") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    }
}

pub(super) fn add(farm: &mut Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Value, RestError> {
    let f = fields_param(p);
    let id = farm.deal_add(&ctx.member_id, f, ctx.user_id);
    fire_from_call(farm, ctx, "ONCRMDEALADD", json!({"FIELDS": {"ID": id}}));
    Ok(json!(id))
}

pub(super) fn update(
    farm: &mut Farm,
    ctx: &Ctx,
    p: &Map<String, Value>,
) -> Result<Value, RestError> {
    let id = id_param(p)?;
    let f = fields_param(p);
    if !farm.deal_update(&ctx.member_id, id, &f, ctx.user_id) {
        return Err(not_found());
    }
    fire_from_call(farm, ctx, "ONCRMDEALUPDATE", json!({"FIELDS": {"ID": id}}));
    Ok(json!(true))
}

pub(super) fn get(farm: &Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Value, RestError> {
    let id = id_param(p)?;
    farm.portals[&ctx.member_id]
        .deals
        .get(&id)
        .map(|d| Value::Object(d.clone()))
        .ok_or_else(not_found)
}

pub(super) fn delete(
    farm: &mut Farm,
    ctx: &Ctx,
    p: &Map<String, Value>,
) -> Result<Value, RestError> {
    let id = id_param(p)?;
    let removed = farm
        .portals
        .get_mut(&ctx.member_id)
        .and_then(|x| x.deals.remove(&id));
    if removed.is_none() {
        return Err(not_found());
    }
    fire_from_call(farm, ctx, "ONCRMDEALDELETE", json!({"FIELDS": {"ID": id}}));
    Ok(json!(true))
}

fn cmp_values(a: &Value, b: &str) -> Option<Ordering> {
    let a = match a {
        Value::Null => return None,
        v => scalar_str(v)?,
    };
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y),
        _ => Some(a.as_str().cmp(b)),
    }
}

/// One `filter` condition, parsed once per call rather than once per deal.
struct Cond {
    op: String,
    field: String,
    wants: Vec<String>,
}

impl Cond {
    fn parse(key: &str, want: &Value) -> Cond {
        let (op, field) = split_op(key);
        Cond {
            op: op.to_string(),
            field: field.to_ascii_uppercase(),
            wants: match list_values(want) {
                Some(l) => l.into_iter().filter_map(scalar_str).collect(),
                None => scalar_str(want).into_iter().collect(),
            },
        }
    }

    fn matches(&self, deal: &Map<String, Value>) -> bool {
        let have = deal.get(&self.field).unwrap_or(&Value::Null);
        let wants = &self.wants;
        let eq = |w: &String| {
            cmp_values(have, w) == Some(Ordering::Equal) || (have.is_null() && w.is_empty())
        };
        let first = |f: fn(Ordering) -> bool| {
            wants
                .first()
                .is_some_and(|w| cmp_values(have, w).is_some_and(f))
        };
        match self.op.as_str() {
            "" | "=" | "@" => wants.iter().any(eq),
            "!" | "!=" | "!@" => !wants.iter().any(eq),
            ">" => first(Ordering::is_gt),
            "<" => first(Ordering::is_lt),
            ">=" => first(Ordering::is_ge),
            "<=" => first(Ordering::is_le),
            "%" => {
                let h = scalar_str(have).unwrap_or_default().to_lowercase();
                wants.first().is_some_and(|w| h.contains(&w.to_lowercase()))
            }
            _ => false,
        }
    }
}

/// The smallest deal id the filter's `>ID` / `>=ID` conditions let through (0 when
/// there are none); the conditions themselves are still checked row by row.
fn id_floor(filter: &Map<String, Value>) -> u64 {
    let mut floor = 0u64;
    for (k, v) in filter {
        let (op, field) = split_op(k);
        if !field.eq_ignore_ascii_case("ID") {
            continue;
        }
        let Some(x) = scalar_str(v)
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|x| x.is_finite())
        else {
            continue;
        };
        let f = match op {
            ">" => x.floor() + 1.0,
            ">=" => x.ceil(),
            _ => continue,
        };
        if f > 0.0 {
            floor = floor.max(f as u64);
        }
    }
    floor
}

fn split_op(key: &str) -> (&str, &str) {
    let n = key
        .bytes()
        .take_while(|b| matches!(b, b'=' | b'!' | b'<' | b'>' | b'@' | b'%'))
        .count();
    (&key[..n], &key[n..])
}

pub(super) fn list(farm: &Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Done, RestError> {
    let portal = &farm.portals[&ctx.member_id];
    let filter = match param(p, "filter") {
        Some(Value::Object(f)) => f.clone(),
        _ => Map::new(),
    };
    let order: Vec<(String, bool)> = match param(p, "order") {
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_uppercase(),
                    scalar_str(v).is_some_and(|d| d.eq_ignore_ascii_case("desc")),
                )
            })
            .collect(),
        _ => vec![],
    };
    let select: Vec<String> = param(p, "select")
        .and_then(list_values)
        .map(|l| {
            l.into_iter()
                .filter_map(scalar_str)
                .map(|s| s.to_ascii_uppercase())
                .collect()
        })
        .unwrap_or_default();
    let start = param(p, "start").and_then(int).unwrap_or(0);
    let project = |d: &Map<String, Value>| -> Value {
        if select.is_empty() || select.iter().any(|s| s == "*") {
            return Value::Object(d.clone());
        }
        let mut m = Map::new();
        m.insert("ID".into(), d["ID"].clone());
        for s in &select {
            if let Some(v) = d.get(s) {
                m.insert(s.clone(), v.clone());
            }
        }
        Value::Object(m)
    };
    let conds: Vec<Cond> = filter.iter().map(|(k, v)| Cond::parse(k, v)).collect();
    let keep = |d: &&Map<String, Value>| conds.iter().all(|c| c.matches(d));
    // IDs are unique, so an order that starts with ID is the deals' key order: walk
    // the map from the filter's `>ID` floor instead of filtering and sorting every
    // deal (a keyset walk of 50,000 deals held the farm lock for a sort per page).
    let by_id = order.first().is_none_or(|(f, _)| f == "ID");
    let desc = order.first().is_some_and(|(_, d)| *d);
    let in_order = || -> Box<dyn Iterator<Item = &Map<String, Value>> + '_> {
        let range = portal.deals.range(id_floor(&filter)..);
        if desc {
            Box::new(range.rev().map(|(_, d)| d))
        } else {
            Box::new(range.map(|(_, d)| d))
        }
    };
    if by_id && start < 0 {
        // start=-1: no counting, no next/total (huge-data.md).
        let page: Vec<Value> = in_order().filter(keep).take(PAGE).map(&project).collect();
        return Ok(Done {
            result: json!(page),
            next: None,
            total: None,
        });
    }
    let mut rows: Vec<&Map<String, Value>> = if by_id {
        in_order().filter(keep).collect()
    } else {
        portal.deals.values().filter(keep).collect()
    };
    if !by_id {
        rows.sort_by(|a, b| {
            for (f, desc) in &order {
                let av = a.get(f).and_then(scalar_str).unwrap_or_default();
                let o = cmp_values(b.get(f).unwrap_or(&Value::Null), &av)
                    .map(Ordering::reverse)
                    .unwrap_or(Ordering::Equal);
                let o = if *desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }
    if start < 0 {
        // start=-1: no counting, no next/total (huge-data.md).
        let page: Vec<Value> = rows.iter().take(PAGE).map(|d| project(d)).collect();
        return Ok(Done {
            result: json!(page),
            next: None,
            total: None,
        });
    }
    let start = start as usize;
    let total = rows.len();
    let page: Vec<Value> = rows
        .iter()
        .skip(start)
        .take(PAGE)
        .map(|d| project(d))
        .collect();
    let next = (start + PAGE < total).then_some((start + PAGE) as u64);
    Ok(Done {
        result: json!(page),
        next,
        total: Some(total as u64),
    })
}
