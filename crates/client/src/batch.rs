//! `batch` (protocol §5.15): up to 50 commands per request, chunked
//! automatically; `$result[key][…]` references; `halt`; one outcome per
//! command, so a failed command hides none of the others.
//!
//! Each command travels as `method?query`, the query written the way PHP's
//! `http_build_query` writes it (`wire::form::encode`); the portal decodes it
//! and then substitutes references. A reference to a command in an earlier
//! chunk cannot be resolved by the portal (it sees one request at a time),
//! so the client substitutes those itself, with the portal's rules: a value
//! that is exactly one reference takes the referenced JSON as is, a
//! reference inside a longer string takes its text.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};
use wire::form::{self, FormMap};
use wire::{ApiError, BatchResult, ErrorClass};

use crate::client::{CallOptions, PortalClient, Req, check_method, is_read_method, params_map};
use crate::error::Error;

/// The portal's cap on commands per `batch` request.
pub const MAX_COMMANDS: usize = 50;

/// Commands to run, in order.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    commands: Vec<(String, String, Value)>,
    halt: bool,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Stop at the first failed command (the rest are [`CommandOutcome::NotRun`]).
    pub fn halt(mut self, halt: bool) -> Batch {
        self.halt = halt;
        self
    }

    /// Adds a command under `key` (letters, digits, `_`, `-`), which later
    /// commands can reference as `$result[key]…`.
    pub fn add(
        mut self,
        key: impl Into<String>,
        method: impl Into<String>,
        params: Value,
    ) -> Batch {
        self.push(key, method, params);
        self
    }

    pub fn push(&mut self, key: impl Into<String>, method: impl Into<String>, params: Value) {
        self.commands.push((key.into(), method.into(), params));
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// What happened to one command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    Ok {
        result: Value,
        total: Option<u64>,
        next: Option<u64>,
    },
    Err(ApiError),
    /// Not executed: `halt` stopped the batch before it.
    NotRun,
}

/// Every command's outcome, in the order they were added.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchOutcome {
    pub commands: Vec<(String, CommandOutcome)>,
    /// `batch` requests it took.
    pub requests: usize,
}

impl BatchOutcome {
    pub fn get(&self, key: &str) -> Option<&CommandOutcome> {
        self.commands.iter().find(|(k, _)| k == key).map(|(_, o)| o)
    }

    /// The result of a command that succeeded.
    pub fn result(&self, key: &str) -> Option<&Value> {
        match self.get(key) {
            Some(CommandOutcome::Ok { result, .. }) => Some(result),
            _ => None,
        }
    }

    /// The error of a command that failed.
    pub fn error(&self, key: &str) -> Option<&ApiError> {
        match self.get(key) {
            Some(CommandOutcome::Err(e)) => Some(e),
            _ => None,
        }
    }

    /// The failed commands.
    pub fn errors(&self) -> impl Iterator<Item = (&str, &ApiError)> {
        self.commands.iter().filter_map(|(k, o)| match o {
            CommandOutcome::Err(e) => Some((k.as_str(), e)),
            _ => None,
        })
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "batch keys are 1 to 64 letters, digits, '_' or '-'".into(),
        ))
    }
}

impl PortalClient {
    /// Runs a batch in chunks of [`MAX_COMMANDS`].
    pub async fn batch(&self, batch: &Batch) -> Result<BatchOutcome, Error> {
        self.batch_with(batch, &CallOptions::default()).await
    }

    /// A batch is safe to repeat after a 5xx only if every command is a read
    /// (or `opts.idempotent` says so).
    pub async fn batch_with(
        &self,
        batch: &Batch,
        opts: &CallOptions,
    ) -> Result<BatchOutcome, Error> {
        let mut seen = HashSet::new();
        let mut cmds = Vec::with_capacity(batch.commands.len());
        for (key, method, params) in &batch.commands {
            check_key(key)?;
            check_method(method)?;
            if matches!(
                method.to_ascii_lowercase().as_str(),
                "batch" | "upload" | "download"
            ) {
                return Err(Error::Invalid(
                    "batch, upload and download cannot run inside batch".into(),
                ));
            }
            if !seen.insert(key.as_str()) {
                return Err(Error::Invalid("duplicate batch key".into()));
            }
            cmds.push((key.as_str(), method.as_str(), params_map(params.clone())?));
        }
        let deadline_ms = self.deadline_ms(opts);
        let mut out = BatchOutcome::default();
        let mut done: HashMap<String, Value> = HashMap::new();
        let mut halted = false;
        for chunk in cmds.chunks(MAX_COMMANDS) {
            if halted {
                for (key, _, _) in chunk {
                    out.commands
                        .push(((*key).to_owned(), CommandOutcome::NotRun));
                }
                continue;
            }
            let mut cmd = Map::new();
            for (key, method, params) in chunk {
                let mut params = Value::Object(params.clone());
                if !done.is_empty() {
                    substitute(&mut params, &done);
                }
                let query = match &params {
                    Value::Object(m) => form::encode(&FormMap::from_json_object(m)),
                    _ => String::new(),
                };
                let line = if query.is_empty() {
                    (*method).to_owned()
                } else {
                    format!("{method}?{query}")
                };
                cmd.insert((*key).to_owned(), Value::String(line));
            }
            let idempotent = opts
                .idempotent
                .unwrap_or_else(|| chunk.iter().all(|(_, m, _)| is_read_method(m)));
            let mut params = Map::new();
            params.insert("cmd".into(), Value::Object(cmd));
            params.insert("halt".into(), json!(u8::from(batch.halt)));
            let req = Req {
                method: "batch".into(),
                params,
                idempotent,
                budget_methods: chunk
                    .iter()
                    .map(|(_, m, _)| m.to_ascii_lowercase())
                    .collect(),
                deadline_ms,
                pinned: None,
            };
            let r = self.execute(&req).await;
            self.note_outcome(&r);
            let success = r?;
            out.requests += 1;
            let mut br =
                BatchResult::from_result(&success.result).map_err(|e| Error::Response {
                    method: "batch".into(),
                    error: e,
                })?;
            for (key, method, _) in chunk {
                if let Some(t) = br.result_time.get(*key) {
                    self.note_time(method, t);
                }
                let outcome = if let Some(result) = br.result.remove(*key) {
                    done.insert((*key).to_owned(), result.clone());
                    CommandOutcome::Ok {
                        result,
                        total: br.result_total.get(*key).copied(),
                        next: br.result_next.get(*key).copied(),
                    }
                } else if let Some(e) = br.result_error.remove(*key) {
                    if batch.halt {
                        halted = true;
                    }
                    // The budget is per method, also inside a batch (§5.15).
                    if e.class() == ErrorClass::OperatingLimit {
                        self.block_methods(&[method.to_ascii_lowercase()]);
                    }
                    CommandOutcome::Err(e)
                } else {
                    CommandOutcome::NotRun
                };
                out.commands.push(((*key).to_owned(), outcome));
            }
        }
        Ok(out)
    }
}

/// Replaces `$result[key]…` references to commands in `done` (see the
/// module documentation); references to anything else stay as they are.
pub(crate) fn substitute(v: &mut Value, done: &HashMap<String, Value>) {
    match v {
        Value::Object(m) => m.values_mut().for_each(|x| substitute(x, done)),
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, done)),
        Value::String(s) if s.contains("$result[") => {
            if s.starts_with("$result[")
                && let Some((val, end)) = reference(s, 0, done)
                && end == s.len()
            {
                *v = val;
                return;
            }
            let mut out = String::with_capacity(s.len());
            let mut i = 0;
            while let Some(off) = s[i..].find("$result[") {
                let at = i + off;
                out.push_str(&s[i..at]);
                match reference(s, at, done) {
                    Some((val, end)) => {
                        out.push_str(&scalar_text(&val));
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

/// The value of the reference starting at `at`, and where it ends.
fn reference(s: &str, at: usize, done: &HashMap<String, Value>) -> Option<(Value, usize)> {
    let mut i = at + "$result".len();
    let mut cur: Option<&Value> = None;
    let mut first = true;
    while s[i..].starts_with('[') {
        let close = s[i..].find(']')? + i;
        let seg = &s[i + 1..close];
        cur = if first {
            done.get(seg)
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

/// PHP's string conversion of a scalar (`true` → `1`, `false`/`null` → ``).
fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(true) => "1".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_earlier_results_only() {
        let done: HashMap<String, Value> = [
            ("a".to_string(), json!({"ID": "7", "L": [{"ID": 3}]})),
            ("b".to_string(), json!(5)),
        ]
        .into();
        let mut v = json!({
            "id": "$result[b]",
            "x": "id=$result[a][ID]&y=$result[a][L][0][ID]",
            "m": "$result[a]",
            "later": "$result[c][ID]",
            "deep": {"f": ["$result[a][ID]"]}
        });
        substitute(&mut v, &done);
        assert_eq!(
            v,
            json!({
                "id": 5,
                "x": "id=7&y=3",
                "m": {"ID": "7", "L": [{"ID": 3}]},
                "later": "$result[c][ID]",
                "deep": {"f": ["7"]}
            })
        );
    }
}
