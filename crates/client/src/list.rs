//! `list_all`: a whole list as an async stream, one `batch` request of up to
//! 50 pages (2,500 items) at a time, fetched only when the consumer has taken
//! the previous one — memory stays at one batch whatever the list's size.
//!
//! Two strategies (protocol §6.1 and the docs' "huge data" advice):
//!
//! - **Keyset**: `order[ID]=ASC`, `filter[>ID]=<last id>`, `start=-1` (no
//!   counting). The 50 commands of a batch chain through
//!   `$result[prev][49][ID]`, so one request walks 2,500 items. The first
//!   page shorter than 50 ends the list; commands after it (whose reference
//!   pointed past the end) are ignored. Picked for `crm.<entity>.list` when
//!   the caller's order is empty or `ID` ascending and no `start` is given.
//!   By default ([`ListOptions::keyset_count`]) the very first page is sent
//!   with `start=0` instead, so the portal counts the matching items once:
//!   the walk then ends as soon as that many have arrived, without a last
//!   request only to find an empty page (50,000 items: 20 requests, not 21).
//!   Items created during the walk with higher IDs may then be left out — as
//!   with any offset walk; turn the count off to walk until an empty page
//!   (and to spare a portal the count on very large lists).
//! - **Offset**: one plain call (for `next`/`total`), then the remaining
//!   `start` offsets 50 to a batch; sequential calls when there is no `total`.

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use serde_json::{Map, Value, json};

use crate::batch::{Batch, CommandOutcome, MAX_COMMANDS};
use crate::client::{CallOptions, PortalClient, check_method, params_map};
use crate::error::Error;

/// Items per page: fixed by the platform (protocol §6.1).
pub const PAGE: usize = 50;

/// How [`PortalClient::list_all_with`] walks a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListStrategy {
    /// Keyset where the method supports it, offset otherwise.
    #[default]
    Auto,
    Offset,
    Keyset,
}

#[derive(Debug, Clone)]
pub struct ListOptions {
    pub strategy: ListStrategy,
    /// Options of each request (the deadline is per request, not per list).
    pub call: CallOptions,
    /// Keyset walks: count the matching items on the first page (`start=0`)
    /// and stop when that many have arrived. On by default.
    pub keyset_count: bool,
}

impl Default for ListOptions {
    fn default() -> ListOptions {
        ListOptions {
            strategy: ListStrategy::default(),
            call: CallOptions::default(),
            keyset_count: true,
        }
    }
}

/// Whether keyset pagination applies: `crm.<entity>.list` (IDs are integers
/// and filterable with `>ID`), except `crm.item.list` (lower-case `id`, other shape).
pub fn supports_keyset(method: &str) -> bool {
    let m = method.to_ascii_lowercase();
    let parts: Vec<&str> = m.split('.').collect();
    parts.len() == 3 && parts[0] == "crm" && parts[2] == "list" && parts[1] != "item"
}

fn order_allows_keyset(params: &Map<String, Value>) -> bool {
    match params.get("order") {
        None | Some(Value::Null) => true,
        Some(Value::Object(o)) => {
            o.is_empty()
                || (o.len() == 1
                    && o.iter().all(|(k, v)| {
                        k.eq_ignore_ascii_case("ID")
                            && v.as_str().is_some_and(|d| d.eq_ignore_ascii_case("asc"))
                    }))
        }
        Some(_) => false,
    }
}

/// The items of a list result: the array itself, or the one array inside an
/// object (`{"tasks": [...]}`).
fn items_of(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Object(o) => {
            let mut arrays = o.into_iter().filter_map(|(_, v)| match v {
                Value::Array(a) => Some(a),
                _ => None,
            });
            match (arrays.next(), arrays.next()) {
                (Some(a), None) => a,
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

fn item_id(item: &Value) -> Option<u64> {
    let id = item.get("ID").or_else(|| item.get("id"))?;
    match id {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

enum State {
    Keyset {
        cursor: u64,
        /// Whether the next batch's first page counts (`start=0`).
        count: bool,
        /// Items still expected, when the portal counted them.
        left: Option<u64>,
    },
    OffsetFirst,
    /// Remaining offsets, batched.
    OffsetBatches {
        next: u64,
        total: u64,
    },
    /// No total: follow `next` one call at a time.
    OffsetSequential {
        next: u64,
    },
    Done,
}

struct Lister {
    client: PortalClient,
    method: String,
    params: Map<String, Value>,
    opts: CallOptions,
}

impl PortalClient {
    /// Every item of a list method, as a stream (see the module documentation).
    pub fn list_all(
        &self,
        method: &str,
        params: Value,
    ) -> BoxStream<'static, Result<Value, Error>> {
        self.list_all_with(method, params, ListOptions::default())
    }

    pub fn list_all_with(
        &self,
        method: &str,
        params: Value,
        opts: ListOptions,
    ) -> BoxStream<'static, Result<Value, Error>> {
        let setup = (|| {
            check_method(method)?;
            let mut params = params_map(params)?;
            let keyset = match opts.strategy {
                ListStrategy::Keyset => true,
                ListStrategy::Offset => false,
                ListStrategy::Auto => {
                    supports_keyset(method)
                        && order_allows_keyset(&params)
                        && !params.contains_key("start")
                }
            };
            let state = if keyset {
                let mut filter = match params.remove("filter") {
                    Some(Value::Object(f)) => f,
                    None | Some(Value::Null) => Map::new(),
                    Some(_) => return Err(Error::Invalid("filter must be an object".into())),
                };
                let cursor = filter
                    .remove(">ID")
                    .and_then(|v| match v {
                        Value::Number(n) => n.as_u64(),
                        Value::String(s) => s.parse().ok(),
                        _ => None,
                    })
                    .unwrap_or(0);
                params.insert("filter".into(), Value::Object(filter));
                params.insert("order".into(), json!({"ID": "ASC"}));
                params.insert("start".into(), json!(-1));
                if let Some(Value::Array(sel)) = params.get_mut("select") {
                    let has = sel.iter().any(|s| {
                        s.as_str()
                            .is_some_and(|s| s == "*" || s.eq_ignore_ascii_case("ID"))
                    });
                    if !sel.is_empty() && !has {
                        sel.push(json!("ID"));
                    }
                }
                State::Keyset {
                    cursor,
                    count: opts.keyset_count,
                    left: None,
                }
            } else {
                State::OffsetFirst
            };
            Ok((params, state))
        })();
        let (params, state) = match setup {
            Ok(x) => x,
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let lister = std::sync::Arc::new(Lister {
            client: self.clone(),
            method: method.to_owned(),
            params,
            opts: opts.call,
        });
        stream::try_unfold(state, move |state| {
            let lister = lister.clone();
            async move { lister.step(state).await }
        })
        .map_ok(|items: Vec<Value>| stream::iter(items.into_iter().map(Ok::<Value, Error>)))
        .try_flatten()
        .boxed()
    }
}

impl Lister {
    /// One request's worth of items and the state after it.
    async fn step(&self, state: State) -> Result<Option<(Vec<Value>, State)>, Error> {
        match state {
            State::Done => Ok(None),
            State::Keyset {
                cursor,
                count,
                left,
            } => self.keyset(cursor, count, left).await.map(Some),
            State::OffsetFirst => {
                let mut p = self.params.clone();
                p.entry("start").or_insert(json!(0));
                let s = self
                    .client
                    .call_with(&self.method, Value::Object(p), &self.opts)
                    .await?;
                let items = items_of(s.result);
                let next = match (s.next, s.total) {
                    (Some(next), Some(total)) => State::OffsetBatches { next, total },
                    (Some(next), None) => State::OffsetSequential { next },
                    _ => State::Done,
                };
                Ok(Some((items, next)))
            }
            State::OffsetSequential { next } => {
                let mut p = self.params.clone();
                p.insert("start".into(), json!(next));
                let s = self
                    .client
                    .call_with(&self.method, Value::Object(p), &self.opts)
                    .await?;
                let state = match s.next {
                    Some(n) if n > next => State::OffsetSequential { next: n },
                    _ => State::Done,
                };
                Ok(Some((items_of(s.result), state)))
            }
            State::OffsetBatches { next, total } => {
                let mut batch = Batch::new();
                let mut start = next;
                while start < total && batch.len() < MAX_COMMANDS {
                    let mut p = self.params.clone();
                    p.insert("start".into(), json!(start));
                    batch.push(format!("p{start}"), self.method.clone(), Value::Object(p));
                    start += PAGE as u64;
                }
                let out = self.client.batch_with(&batch, &self.opts).await?;
                let mut items = Vec::new();
                for (key, o) in out.commands {
                    match o {
                        CommandOutcome::Ok { result, .. } => items.extend(items_of(result)),
                        CommandOutcome::Err(error) => {
                            return Err(Error::Api {
                                method: format!("{} ({key})", self.method),
                                error,
                            });
                        }
                        CommandOutcome::NotRun => {}
                    }
                }
                let state = if start < total {
                    State::OffsetBatches { next: start, total }
                } else {
                    State::Done
                };
                Ok(Some((items, state)))
            }
        }
    }

    async fn keyset(
        &self,
        cursor: u64,
        count: bool,
        mut left: Option<u64>,
    ) -> Result<(Vec<Value>, State), Error> {
        if left == Some(0) {
            return Ok((Vec::new(), State::Done));
        }
        let mut batch = Batch::new();
        // Pages this batch can still need: no more than the count left.
        let pages = left.map_or(MAX_COMMANDS, |l| {
            (l.div_ceil(PAGE as u64) as usize).clamp(1, MAX_COMMANDS)
        });
        for i in 0..pages {
            let mut p = self.params.clone();
            if i == 0 && count {
                p.insert("start".into(), json!(0));
            }
            let after = if i == 0 {
                json!(cursor)
            } else {
                json!(format!("$result[c{}][{}][ID]", i - 1, PAGE - 1))
            };
            if let Some(Value::Object(f)) = p.get_mut("filter") {
                f.insert(">ID".into(), after);
            }
            batch.push(format!("c{i}"), self.method.clone(), Value::Object(p));
        }
        let out = self.client.batch_with(&batch, &self.opts).await?;
        let mut items = Vec::new();
        let mut cursor = cursor;
        for (i, (key, o)) in out.commands.into_iter().enumerate() {
            match o {
                CommandOutcome::Ok { result, total, .. } => {
                    if i == 0 && count {
                        left = total;
                    }
                    let page = items_of(result);
                    let n = page.len();
                    if let Some(last) = page.last() {
                        cursor = item_id(last).ok_or_else(|| {
                            Error::Invalid("keyset list item without a numeric ID".into())
                        })?;
                    }
                    items.extend(page);
                    if n < PAGE || left.is_some_and(|l| items.len() as u64 >= l) {
                        return Ok((items, State::Done));
                    }
                }
                CommandOutcome::Err(error) => {
                    return Err(Error::Api {
                        method: format!("{} ({key})", self.method),
                        error,
                    });
                }
                CommandOutcome::NotRun => return Ok((items, State::Done)),
            }
        }
        let left = left.map(|l| l.saturating_sub(items.len() as u64));
        Ok((
            items,
            State::Keyset {
                cursor,
                count: false,
                left,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_applies_to_crm_entity_lists() {
        assert!(supports_keyset("crm.deal.list"));
        assert!(supports_keyset("CRM.Contact.List"));
        assert!(!supports_keyset("crm.item.list"));
        assert!(!supports_keyset("crm.deal.userfield.list"));
        assert!(!supports_keyset("user.get"));
        let p = |v: Value| v.as_object().unwrap().clone();
        assert!(order_allows_keyset(&p(json!({}))));
        assert!(order_allows_keyset(&p(json!({"order": {"id": "asc"}}))));
        assert!(!order_allows_keyset(&p(json!({"order": {"TITLE": "ASC"}}))));
        assert!(!order_allows_keyset(&p(json!({"order": {"ID": "DESC"}}))));
    }

    #[test]
    fn items_from_arrays_and_wrapped_arrays() {
        assert_eq!(items_of(json!([1, 2])).len(), 2);
        assert_eq!(items_of(json!({"tasks": [1, 2, 3]})).len(), 3);
        assert!(items_of(json!({"a": [1], "b": [2]})).is_empty());
        assert_eq!(item_id(&json!({"ID": "17"})), Some(17));
    }
}
