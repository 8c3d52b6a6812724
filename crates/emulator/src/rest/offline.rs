//! `event.offline.get|clear|error|list` (reference §5.5–§5.9).

use std::cmp::Ordering;

use serde_json::{Map, Value, json};

use super::{Ctx, Done, RestError};
use crate::clock::{iso8601, parse_iso8601};
use crate::codec::{int, list_values, param, scalar_str, truthy};
use crate::state::{Farm, OfflineRow};

const GET_FIELDS: &[&str] = &["ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID"];
const LIST_FIELDS: &[&str] = &[
    "ID",
    "TIMESTAMP_X",
    "EVENT_NAME",
    "MESSAGE_ID",
    "PROCESS_ID",
    "ERROR",
];

struct Cond {
    op: String,
    field: String,
    value: String,
}

fn parse_filter(p: &Map<String, Value>, allowed: &[&str]) -> Result<Vec<Cond>, RestError> {
    let f = match param(p, "filter") {
        None => return Ok(vec![]),
        Some(Value::Object(f)) => f,
        Some(Value::Array(a)) if a.is_empty() => return Ok(vec![]),
        Some(_) => return Err(RestError::argument("FILTER", "The filter is not an array.")),
    };
    let mut out = Vec::new();
    for (k, v) in f {
        let n = k
            .bytes()
            .take_while(|b| matches!(b, b'=' | b'!' | b'<' | b'>' | b'@' | b'%'))
            .count();
        let (op, field) = (&k[..n], k[n..].to_ascii_uppercase());
        if !allowed.contains(&field.as_str()) {
            return Err(RestError::argument(
                "FILTER",
                format!("Filter field not allowed: {field}"),
            ));
        }
        if !matches!(op, "" | "=" | ">" | "<" | ">=" | "<=" | "@" | "%") {
            return Err(RestError::argument(
                "FILTER",
                format!("Filter operation not allowed: {op}"),
            ));
        }
        let value = scalar_str(v)
            .ok_or_else(|| RestError::argument("FILTER", "Filter value must be scalar"))?;
        out.push(Cond {
            op: op.to_string(),
            field,
            value,
        });
    }
    Ok(out)
}

fn parse_order(
    p: &Map<String, Value>,
    allowed: &[&str],
    default: &str,
) -> Result<Vec<(String, bool)>, RestError> {
    let o = match param(p, "order") {
        None => return Ok(vec![(default.to_string(), false)]),
        Some(Value::Object(o)) => o,
        Some(Value::Array(a)) if a.is_empty() => return Ok(vec![(default.to_string(), false)]),
        Some(_) => return Err(RestError::argument("ORDER", "The order is not an array.")),
    };
    let mut out = Vec::new();
    for (k, v) in o {
        let field = k.to_ascii_uppercase();
        if !allowed.contains(&field.as_str()) {
            return Err(RestError::argument(
                "ORDER",
                format!("Order field not allowed: {field}"),
            ));
        }
        let dir = scalar_str(v).unwrap_or_default().to_ascii_uppercase();
        let desc = match dir.as_str() {
            "ASC" => false,
            "DESC" => true,
            _ => {
                return Err(RestError::argument(
                    "ORDER",
                    "Order direction should be one of {ASC|DESC}",
                ));
            }
        };
        out.push((field, desc));
    }
    if out.is_empty() {
        out.push((default.to_string(), false));
    }
    Ok(out)
}

/// Orderable key of a row field.
enum Key {
    N(i64),
    S(String),
}

fn key(r: &OfflineRow, field: &str) -> Key {
    match field {
        "ID" => Key::N(r.id as i64),
        "TIMESTAMP_X" => Key::N(r.timestamp_us),
        "EVENT_NAME" => Key::S(r.event_name.clone()),
        "MESSAGE_ID" => Key::S(r.message_id.clone()),
        "PROCESS_ID" => Key::S(r.process_id.clone().unwrap_or_default()),
        _ => Key::N(r.error as i64),
    }
}

fn cmp_key(a: &Key, b: &Key) -> Ordering {
    match (a, b) {
        (Key::N(x), Key::N(y)) => x.cmp(y),
        (Key::S(x), Key::S(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

fn cond_holds(r: &OfflineRow, c: &Cond) -> bool {
    let have = key(r, &c.field);
    let want = match c.field.as_str() {
        "ID" => Key::N(c.value.parse().unwrap_or(i64::MIN)),
        "ERROR" => Key::N(truthy(&json!(c.value)) as i64),
        "TIMESTAMP_X" => match parse_iso8601(&c.value).or_else(|| c.value.parse().ok()) {
            Some(s) => Key::N(s * 1_000_000),
            None => return false,
        },
        _ => Key::S(c.value.clone()),
    };
    // Timestamps compare at second precision, as the database stores them.
    let (have, want) = match (have, want) {
        (Key::N(h), Key::N(w)) if c.field == "TIMESTAMP_X" => {
            (Key::N(h.div_euclid(1_000_000)), Key::N(w / 1_000_000))
        }
        x => x,
    };
    let o = cmp_key(&have, &want);
    match c.op.as_str() {
        "" | "=" | "@" => o == Ordering::Equal,
        ">" => o == Ordering::Greater,
        "<" => o == Ordering::Less,
        ">=" => o != Ordering::Less,
        "<=" => o != Ordering::Greater,
        "%" => match (&have, &want) {
            (Key::S(h), Key::S(w)) => h.contains(w.as_str()),
            _ => o == Ordering::Equal,
        },
        _ => false,
    }
}

fn row_json(r: &OfflineRow, extended: bool) -> Value {
    let mut m = Map::new();
    m.insert("ID".into(), json!(r.id.to_string()));
    m.insert(
        "TIMESTAMP_X".into(),
        json!(iso8601(r.timestamp_us.div_euclid(1_000_000))),
    );
    m.insert("EVENT_NAME".into(), json!(r.event_name));
    m.insert("EVENT_DATA".into(), r.event_data.clone());
    m.insert(
        "EVENT_ADDITIONAL".into(),
        json!({"user_id": r.user_id.to_string()}),
    );
    m.insert("MESSAGE_ID".into(), json!(r.message_id));
    if extended {
        m.insert(
            "PROCESS_ID".into(),
            json!(r.process_id.clone().unwrap_or_default()),
        );
        m.insert("ERROR".into(), json!(if r.error { "1" } else { "0" }));
    }
    Value::Object(m)
}

/// Common gate: app context, admin, connector feature.
fn gate(farm: &Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<(String, String), RestError> {
    let client = ctx.app()?.to_string();
    if !ctx.is_admin {
        return Err(RestError::access_denied(""));
    }
    let connector = param(p, "auth_connector")
        .and_then(scalar_str)
        .unwrap_or_default();
    if !connector.is_empty()
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
    Ok((client, connector))
}

/// The ids of the matching rows in `order` (ties by ID); with `first`, only
/// that many, selected before sorting (a `get` of 50 from a queue of 20,000
/// sorts 50 rows, not the queue).
fn sorted_ids(
    farm: &Farm,
    ctx: &Ctx,
    pred: impl Fn(&OfflineRow) -> bool,
    conds: &[Cond],
    order: &[(String, bool)],
    first: Option<usize>,
) -> Vec<u64> {
    let q = &farm.portals[&ctx.member_id].offline;
    let mut rows: Vec<&OfflineRow> = q
        .rows
        .values()
        .filter(|r| pred(r) && conds.iter().all(|c| cond_holds(r, c)))
        .collect();
    let cmp = |a: &&OfflineRow, b: &&OfflineRow| {
        for (f, desc) in order {
            let o = cmp_key(&key(a, f), &key(b, f));
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.id.cmp(&b.id)
    };
    if let Some(k) = first
        && k < rows.len()
    {
        rows.select_nth_unstable_by(k, cmp);
        rows.truncate(k);
    }
    rows.sort_by(cmp);
    rows.into_iter().map(|r| r.id).collect()
}

pub(super) fn get(farm: &mut Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Value, RestError> {
    let (client, connector) = gate(farm, ctx, p)?;
    let limit = match param(p, "limit") {
        None => 50,
        Some(v) => match int(v) {
            Some(n) if n > 0 => n as usize,
            _ => {
                return Err(RestError::argument(
                    "LIMIT",
                    "Value must be positive integer",
                ));
            }
        },
    };
    let clear = param(p, "clear").is_none_or(truthy);
    let error = param(p, "error").is_some_and(truthy);
    let pid = param(p, "process_id")
        .and_then(scalar_str)
        .filter(|s| !s.is_empty());
    if !clear
        && !farm.portals[&ctx.member_id]
            .features
            .contains("rest_offline_extended")
    {
        return Err(RestError::new(
            403,
            "WRONG_LICENSE",
            "This feature is not enabled for the current license: extended offline events handling",
        ));
    }
    let conds = parse_filter(p, GET_FIELDS)?;
    let order = parse_order(p, GET_FIELDS, "TIMESTAMP_X")?;
    let mine = |r: &OfflineRow| r.client_id == client && r.connector == connector;
    let (ids, process_id) = match &pid {
        Some(pid) => {
            let all = sorted_ids(
                farm,
                ctx,
                |r| mine(r) && r.process_id.as_deref() == Some(pid.as_str()),
                &[],
                &order,
                None,
            );
            (all, Some(pid.clone()))
        }
        None => {
            let ids = sorted_ids(
                farm,
                ctx,
                |r| mine(r) && r.process_id.is_none() && r.error == error,
                &conds,
                &order,
                Some(limit),
            );
            let pid = (!clear).then(|| farm.alnum(32));
            (ids, pid)
        }
    };
    let q = &mut farm
        .portals
        .get_mut(&ctx.member_id)
        .expect("portal")
        .offline;
    let mut events = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let Some(r) = q.rows.get_mut(id) else {
            continue;
        };
        if n < limit {
            events.push(row_json(r, false));
        }
        if !clear && r.process_id.is_none() {
            r.process_id = process_id.clone();
            q.unreserved.remove(&(
                r.client_id.clone(),
                r.connector.clone(),
                r.message_id.clone(),
            ));
        }
    }
    if clear {
        // With a process_id the whole batch goes, including rows beyond `limit` (§5.6).
        for id in &ids {
            if let Some(r) = q.rows.remove(id) {
                q.unreserved
                    .remove(&(r.client_id, r.connector, r.message_id));
            }
        }
    }
    Ok(json!({"process_id": process_id, "events": events}))
}

fn process_param(p: &Map<String, Value>) -> Result<String, RestError> {
    param(p, "process_id")
        .and_then(scalar_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| RestError::arg_empty("PROCESS_ID"))
}

fn message_ids(v: &Value) -> Result<Vec<String>, RestError> {
    let bad = || RestError::argument("MESSAGE_ID", "Value must be array of MESSAGE_ID values");
    let l = list_values(v).ok_or_else(bad)?;
    l.into_iter()
        .map(|x| scalar_str(x).filter(|s| s.len() == 32).ok_or_else(bad))
        .collect()
}

pub(super) fn clear(
    farm: &mut Farm,
    ctx: &Ctx,
    p: &Map<String, Value>,
) -> Result<Value, RestError> {
    let (client, connector) = gate(farm, ctx, p)?;
    let pid = process_param(p)?;
    let ids: Option<Vec<u64>> = param(p, "id").map(|v| {
        list_values(v)
            .map(|l| l.into_iter().filter_map(int).map(|i| i as u64).collect())
            .unwrap_or_else(|| int(v).map(|i| i as u64).into_iter().collect())
    });
    let mids = match (&ids, param(p, "message_id")) {
        (None, Some(v)) => Some(message_ids(v)?),
        _ => None,
    };
    let q = &mut farm
        .portals
        .get_mut(&ctx.member_id)
        .expect("portal")
        .offline;
    q.rows.retain(|id, r| {
        let in_batch = r.client_id == client
            && r.connector == connector
            && r.process_id.as_deref() == Some(pid.as_str());
        let selected = match (&ids, &mids) {
            (Some(ids), _) => ids.contains(id),
            (None, Some(m)) => m.contains(&r.message_id),
            (None, None) => true,
        };
        !(in_batch && selected)
    });
    Ok(json!(true))
}

pub(super) fn error(
    farm: &mut Farm,
    ctx: &Ctx,
    p: &Map<String, Value>,
) -> Result<Value, RestError> {
    let (client, connector) = gate(farm, ctx, p)?;
    let pid = process_param(p)?;
    let mids = match param(p, "message_id") {
        Some(v) => message_ids(v)?,
        None => return Err(RestError::arg_empty("MESSAGE_ID")),
    };
    let q = &mut farm
        .portals
        .get_mut(&ctx.member_id)
        .expect("portal")
        .offline;
    let mut marked = Vec::new();
    for r in q.rows.values_mut() {
        if r.client_id == client
            && r.connector == connector
            && r.process_id.as_deref() == Some(pid.as_str())
            && mids.contains(&r.message_id)
        {
            r.error = true;
            r.process_id = None;
            marked.push((r.id, r.message_id.clone()));
        }
    }
    // Older error rows of the same message are dropped (§5.8).
    q.rows.retain(|id, r| {
        !(r.error
            && r.client_id == client
            && r.connector == connector
            && marked
                .iter()
                .any(|(mid_id, m)| *m == r.message_id && id < mid_id))
    });
    Ok(json!(true))
}

pub(super) fn list(farm: &mut Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Done, RestError> {
    let (client, connector) = gate(farm, ctx, p)?;
    let conds = parse_filter(p, LIST_FIELDS)?;
    let order = parse_order(p, LIST_FIELDS, "ID")?;
    let ids = sorted_ids(
        farm,
        ctx,
        |r| r.client_id == client && r.connector == connector,
        &conds,
        &order,
        None,
    );
    let start = param(p, "start").and_then(int).unwrap_or(0).max(0) as usize;
    let q = &farm.portals[&ctx.member_id].offline;
    let page: Vec<Value> = ids
        .iter()
        .skip(start)
        .take(50)
        .filter_map(|id| q.rows.get(id))
        .map(|r| row_json(r, true))
        .collect();
    let total = ids.len();
    let next = (start + 50 < total).then_some((start + 50) as u64);
    Ok(Done {
        result: json!(page),
        next,
        total: Some(total as u64),
    })
}
