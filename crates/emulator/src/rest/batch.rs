//! `batch` (reference §5.15): up to 50 sub-calls, `halt`, `$result[key][…]`
//! references, PHP empty maps as `[]`.

use std::time::Instant;

use serde_json::{Map, Value, json};

use super::{Ctx, Done, RestError, call_method, php_array, time_block};
use crate::codec::{self, param, scalar_str, truthy};
use crate::state::Farm;

const MAX: usize = 50;

pub(super) fn run(farm: &mut Farm, ctx: &Ctx, p: &Map<String, Value>) -> Result<Done, RestError> {
    let entries: Vec<(String, String)> = match param(p, "cmd") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), scalar_str(v).unwrap_or_default()))
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), scalar_str(v).unwrap_or_default()))
            .collect(),
        _ => return Err(RestError::arg_empty("CMD")),
    };
    let halt = param(p, "halt").is_some_and(truthy);
    let (mut results, mut errors, mut totals, mut nexts, mut times) =
        (Map::new(), Map::new(), Map::new(), Map::new(), Map::new());
    for (n, (key, cmd)) in entries.into_iter().enumerate() {
        if n >= MAX {
            let e = RestError::new(
                400,
                "ERROR_BATCH_LENGTH_EXCEEDED",
                "Max batch length exceeded",
            );
            errors.insert(key, e.to_json());
            continue;
        }
        let (m, q) = cmd.split_once('?').unwrap_or((cmd.as_str(), ""));
        let mut method = m.trim().trim_start_matches('/').to_ascii_lowercase();
        if method.ends_with(".json") {
            method.truncate(method.len() - 5);
        }
        if matches!(method.as_str(), "batch" | "upload" | "download") {
            let e = RestError::new(
                405,
                "ERROR_BATCH_METHOD_NOT_ALLOWED",
                "Method is not allowed for batch usage",
            );
            errors.insert(key, e.to_json());
            if halt {
                break;
            }
            continue;
        }
        let mut params = codec::decode_form(q.as_bytes());
        for v in params.values_mut() {
            substitute(v, &results);
        }
        let start = farm.now_f();
        let t0 = Instant::now();
        match call_method(farm, ctx, &method, &params, t0) {
            Ok((done, op, reset)) => {
                if let Some(t) = done.total {
                    totals.insert(key.clone(), json!(t));
                }
                if let Some(nx) = done.next {
                    nexts.insert(key.clone(), json!(nx));
                }
                times.insert(
                    key.clone(),
                    time_block(start, start + t0.elapsed().as_secs_f64(), op, reset),
                );
                results.insert(key, done.result);
            }
            Err(e) => {
                errors.insert(key, e.to_json());
                if halt {
                    break;
                }
            }
        }
    }
    Ok(json!({
        "result": php_array(results),
        "result_error": php_array(errors),
        "result_total": php_array(totals),
        "result_next": php_array(nexts),
        "result_time": php_array(times),
    })
    .into())
}

/// Replaces `$result[key][FIELD]…` in string values with earlier results. A value that
/// is exactly one reference takes the referenced value as is (maps and lists too).
fn substitute(v: &mut Value, results: &Map<String, Value>) {
    match v {
        Value::Object(m) => m.values_mut().for_each(|x| substitute(x, results)),
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, results)),
        Value::String(s) if s.contains("$result[") => {
            if let Some((val, end)) = reference(s, 0, results)
                && end == s.len()
                && s.starts_with("$result[")
            {
                *v = val;
                return;
            }
            let mut out = String::with_capacity(s.len());
            let mut i = 0;
            while let Some(off) = s[i..].find("$result[") {
                let at = i + off;
                out.push_str(&s[i..at]);
                match reference(s, at, results) {
                    Some((val, end)) => {
                        out.push_str(&scalar_str(&val).unwrap_or_default());
                        i = end;
                    }
                    None => {
                        out.push_str("$result[");
                        i = at + "$result[".len();
                    }
                }
            }
            out.push_str(&s[i..]);
            *s = out;
        }
        _ => {}
    }
}

/// Parses the reference starting at `at`; returns its value and where it ends.
fn reference(s: &str, at: usize, results: &Map<String, Value>) -> Option<(Value, usize)> {
    let mut i = at + "$result".len();
    let mut cur: Option<&Value> = None;
    let mut first = true;
    while s[i..].starts_with('[') {
        let close = s[i..].find(']')? + i;
        let seg = &s[i + 1..close];
        cur = if first {
            results.get(seg)
        } else {
            match cur? {
                Value::Object(m) => m.get(seg),
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|n| a.get(n)),
                _ => None,
            }
        };
        cur?;
        first = false;
        i = close + 1;
    }
    cur.map(|v| (v.clone(), i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_references() {
        let results = json!({"a": {"ID": "7", "L": [{"ID": 3}]}, "b": 5})
            .as_object()
            .unwrap()
            .clone();
        let mut v = json!({"id": "$result[b]", "x": "id=$result[a][ID]&y=$result[a][L][0][ID]", "m": "$result[a]", "z": "$result[nope]"});
        substitute(&mut v, &results);
        assert_eq!(
            v,
            json!({"id": 5, "x": "id=7&y=3", "m": {"ID": "7", "L": [{"ID": 3}]}, "z": "$result[nope]"})
        );
    }
}
