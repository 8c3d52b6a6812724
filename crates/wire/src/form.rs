//! PHP-style form bodies: what PHP's `http_build_query` writes and
//! `parse_str` reads. Every Bitrix24 event delivery and every app-page POST is
//! one of these, never JSON (protocol §2.1, §3.5).
//!
//! [`decode`] turns `auth%5Bmember_id%5D=…&data%5BFIELDS%5D%5BID%5D=7405` into
//! a [`FormMap`] tree; [`encode`] writes a tree back the way
//! `http_build_query` does (the emulator and the tests need that).
//!
//! # Decoding rules
//!
//! - Pairs are split on `&`; a pair without `=` has the empty value (as PHP).
//!   Empty pairs (`&&`) and pairs whose name before the first bracket is
//!   empty (`=x`, `[a]=x`) are skipped, as PHP skips them.
//! - Keys and values are percent-decoded, `+` is a space. The key is decoded
//!   *before* its brackets are read, so `a[b]`, `a%5Bb%5D` and `a%5bb%5d` are
//!   the same key — which is also why a literal `[` can never be part of a
//!   key name. Bitrix's bracket encoding is unconfirmed (protocol §2.1, §13),
//!   so every spelling must work.
//! - A lone `%` (not followed by two hex digits) is a [`FormError::BadEscape`]
//!   and bytes that are not UTF-8 after decoding are a
//!   [`FormError::InvalidUtf8`]. PHP would pass both through; we refuse,
//!   because no genuine Bitrix24 body contains either and a typed error is
//!   easier to reason about than a half-decoded string.
//! - `a[b][c]=v` nests; `a[]=v` appends with PHP's next index (one more than
//!   the largest integer key so far, or 0), so `a[5]=x&a[]=y` gives keys
//!   `5` and `6`.
//! - A later duplicate replaces the earlier value *in its original position*
//!   (PHP hash-update semantics): `a=1&a=2` is `a = "2"`; `a=1&a[b]=2` turns
//!   `a` into a map; `a[b]=2&a=1` turns it back into the text `"1"`.
//! - After decoding, a nested map whose keys are exactly `0, 1, …, n-1` in that
//!   order becomes a [`FormValue::List`]; any other map stays a
//!   [`FormValue::Map`]. So `a[1]=x` alone is the map `{"1": "x"}` (PHP too
//!   would keep key 1 and not renumber it), and `a[1]=x&a[0]=y` is a map
//!   as well. The top level is always a map: it is a set of named fields.
//! - Malformed brackets follow PHP where that is harmless: text after a `]`
//!   that does not open another `[` is ignored (`a[b]x[c]=v` is `a[b]`), and
//!   an unclosed bracket after the first segment ends the key. An unclosed
//!   *first* bracket (`a[b=v`) keeps the whole key literally as `a[b`; PHP
//!   would rename it `a_b`. PHP also turns `.` and spaces in top-level names
//!   into `_`; we keep names as sent, since Bitrix's names contain neither.
//!
//! # Limits
//!
//! Hostile input costs bounded memory and time: [`Limits`] caps the nesting
//! depth, the number of fields, and the length of each key and value, and a
//! huge index such as `a[99999999]=x` is just a map key (no sparse list is
//! ever materialised). The total body size is the caller's to cap (the HTTP
//! layer rejects large bodies before they reach us). Errors name the key,
//! truncated, and never contain a value: values carry tokens.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

/// Bounds on what [`decode`] accepts. Every limit is checked before the
/// memory it protects is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum number of bracket segments in one key (`a[b][c]` is 2).
    /// Real payloads use at most 4 (`data[FIELDS][UF_X][0]`).
    pub max_depth: usize,
    /// Maximum number of `key=value` pairs in one body.
    pub max_keys: usize,
    /// Maximum decoded length of one value, in bytes.
    pub max_value_len: usize,
    /// Maximum raw (still encoded) length of one key, in bytes.
    pub max_key_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 16,
            max_keys: 10_000,
            max_value_len: 1 << 20,
            max_key_len: 1024,
        }
    }
}

/// Why a form body was refused. `key` is the offending field name as sent
/// (decoded where possible), cut to [`KEY_SHOWN`] bytes; values never appear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("form field `{key}` nests deeper than {limit} levels")]
    TooDeep { key: String, limit: usize },
    #[error("form body has more than {limit} fields (refused at `{key}`)")]
    TooManyKeys { key: String, limit: usize },
    #[error("form field name `{key}` is longer than {limit} bytes")]
    KeyTooLong { key: String, limit: usize },
    #[error("value of form field `{key}` is longer than {limit} bytes")]
    ValueTooLong { key: String, limit: usize },
    /// A `%` not followed by two hex digits, in the key or (`in_value`) in
    /// its value.
    #[error("form field `{key}` has a malformed percent escape{}", in_value_suffix(*in_value))]
    BadEscape { key: String, in_value: bool },
    /// Percent-decoded bytes that are not UTF-8.
    #[error("form field `{key}` is not valid UTF-8{}", in_value_suffix(*in_value))]
    InvalidUtf8 { key: String, in_value: bool },
    /// `a[]` after an index at PHP's integer maximum: PHP refuses the append
    /// too ("next element is already occupied").
    #[error("form field `{key}` appends past the largest list index")]
    IndexOverflow { key: String },
}

fn in_value_suffix(in_value: bool) -> &'static str {
    if in_value { " in its value" } else { "" }
}

/// How many bytes of a key an error message shows.
pub const KEY_SHOWN: usize = 64;

fn shown(key: &str) -> String {
    if key.len() <= KEY_SHOWN {
        return key.to_owned();
    }
    let mut end = KEY_SHOWN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

fn shown_raw(key: &[u8]) -> String {
    let cut = &key[..key.len().min(KEY_SHOWN * 4)];
    shown(&String::from_utf8_lossy(cut))
}

/// One node of a decoded form tree. Every leaf is text: form encoding has no
/// numbers or booleans (protocol §2.1: "all scalar values arrive as strings").
#[derive(Clone, PartialEq, Eq)]
pub enum FormValue {
    Text(String),
    /// A map whose keys ran `0..n` in order.
    List(Vec<FormValue>),
    Map(FormMap),
}

/// An insertion-ordered map of form fields. `Debug` prints values, which may
/// be tokens: log the field names, not the map.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct FormMap {
    entries: Vec<(String, FormValue)>,
}

impl FormValue {
    /// The text of a leaf; `None` for a list or map.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&FormMap> {
        match self {
            Self::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[FormValue]> {
        match self {
            Self::List(l) => Some(l),
            _ => None,
        }
    }

    /// A child by key: a map entry, or a list element by its decimal index.
    pub fn get(&self, key: &str) -> Option<&FormValue> {
        match self {
            Self::Text(_) => None,
            Self::Map(m) => m.get(key),
            Self::List(l) => key.parse::<usize>().ok().and_then(|i| l.get(i)),
        }
    }

    /// True for the empty text, an empty list and an empty map.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Text(s) => s.is_empty(),
            Self::List(l) => l.is_empty(),
            Self::Map(m) => m.is_empty(),
        }
    }

    /// The tree as JSON, keys in tree order, every leaf a JSON string.
    pub fn to_json(&self) -> serde_json::Value {
        self.json(false)
    }

    /// Compact JSON with map keys sorted bytewise at every level: the same
    /// tree always gives the same string, whatever order the fields arrived
    /// in. Suitable as input to a dedupe hash.
    pub fn canonical_json(&self) -> String {
        self.json(true).to_string()
    }

    fn json(&self, sorted: bool) -> serde_json::Value {
        match self {
            Self::Text(s) => serde_json::Value::String(s.clone()),
            Self::List(l) => l.iter().map(|v| v.json(sorted)).collect(),
            Self::Map(m) => serde_json::Value::Object(m.json(sorted)),
        }
    }

    /// Converts JSON the way `http_build_query` treats PHP values: strings
    /// and numbers as their text, `true`/`false` as `1`/`0`, `null` (and an
    /// object or array left empty) dropped, hence `None`.
    pub fn from_json(value: &serde_json::Value) -> Option<FormValue> {
        use serde_json::Value as J;
        let v = match value {
            J::Null => return None,
            J::Bool(b) => Self::Text(if *b { "1" } else { "0" }.to_owned()),
            J::Number(n) => Self::Text(n.to_string()),
            J::String(s) => Self::Text(s.clone()),
            J::Array(items) => {
                let kept: Vec<_> = items.iter().map(Self::from_json).collect();
                if kept.iter().all(Option::is_some) {
                    Self::List(kept.into_iter().flatten().collect())
                } else {
                    // Dropping a null renumbers nothing in PHP: keep indices.
                    let mut m = FormMap::new();
                    for (i, v) in kept.into_iter().enumerate() {
                        if let Some(v) = v {
                            m.insert(i.to_string(), v);
                        }
                    }
                    Self::Map(m)
                }
            }
            J::Object(obj) => Self::Map(FormMap::from_json_object(obj)),
        };
        (!matches!(&v, Self::List(_) | Self::Map(_)) || !v.is_empty()).then_some(v)
    }
}

impl From<&str> for FormValue {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<String> for FormValue {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<FormMap> for FormValue {
    fn from(m: FormMap) -> Self {
        Self::Map(m)
    }
}

impl fmt::Debug for FormValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(s) => fmt::Debug::fmt(s, f),
            Self::List(l) => f.debug_list().entries(l).finish(),
            Self::Map(m) => fmt::Debug::fmt(m, f),
        }
    }
}

impl FormMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&FormValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The text of a leaf field; `None` if absent or not a leaf.
    pub fn get_text(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(FormValue::as_text)
    }

    /// Sets `key`, replacing an existing value in its position (as PHP does).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<FormValue>) {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Builder form of [`FormMap::insert`].
    pub fn with(mut self, key: impl Into<String>, value: impl Into<FormValue>) -> Self {
        self.insert(key, value);
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &FormValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// The map as a JSON object, keys in tree order.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.json(false))
    }

    /// See [`FormValue::canonical_json`].
    pub fn canonical_json(&self) -> String {
        serde_json::Value::Object(self.json(true)).to_string()
    }

    /// See [`FormValue::from_json`]; `null` members are dropped.
    pub fn from_json_object(obj: &serde_json::Map<String, serde_json::Value>) -> FormMap {
        let mut m = FormMap::new();
        for (k, v) in obj {
            if let Some(v) = FormValue::from_json(v) {
                m.insert(k.clone(), v);
            }
        }
        m
    }

    fn json(&self, sorted: bool) -> serde_json::Map<String, serde_json::Value> {
        let mut refs: Vec<&(String, FormValue)> = self.entries.iter().collect();
        if sorted {
            refs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        }
        refs.into_iter()
            .map(|(k, v)| (k.clone(), v.json(sorted)))
            .collect()
    }
}

impl FromIterator<(String, FormValue)> for FormMap {
    fn from_iter<I: IntoIterator<Item = (String, FormValue)>>(iter: I) -> Self {
        let mut m = FormMap::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl IntoIterator for FormMap {
    type Item = (String, FormValue);
    type IntoIter = std::vec::IntoIter<(String, FormValue)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl fmt::Debug for FormMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Decoding

/// Decodes a PHP-style form body (or a query string) into a tree, within
/// `limits`. See the module documentation for the rules.
pub fn decode(body: &[u8], limits: &Limits) -> Result<FormMap, FormError> {
    let mut root = Branch::default();
    let mut fields = 0usize;
    for pair in body.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (raw_key, raw_value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        fields += 1;
        if fields > limits.max_keys {
            return Err(FormError::TooManyKeys {
                key: shown_raw(raw_key),
                limit: limits.max_keys,
            });
        }
        if raw_key.len() > limits.max_key_len {
            return Err(FormError::KeyTooLong {
                key: shown_raw(raw_key),
                limit: limits.max_key_len,
            });
        }
        let key = percent_decode(raw_key).map_err(|e| e.into_error(shown_raw(raw_key), false))?;
        // An escape shrinks three bytes to one, so a raw value over three
        // times the limit cannot fit: refuse it before allocating.
        if raw_value.len() / 3 > limits.max_value_len {
            return Err(FormError::ValueTooLong {
                key: shown(&key),
                limit: limits.max_value_len,
            });
        }
        let value = percent_decode(raw_value).map_err(|e| e.into_error(shown(&key), true))?;
        if value.len() > limits.max_value_len {
            return Err(FormError::ValueTooLong {
                key: shown(&key),
                limit: limits.max_value_len,
            });
        }
        let Some((base, segments)) = split_key(&key, limits.max_depth)? else {
            continue;
        };
        root.insert(base, &segments, value, &key)?;
    }
    Ok(root.into_map())
}

enum DecodeFailure {
    BadEscape,
    InvalidUtf8,
}

impl DecodeFailure {
    fn into_error(self, key: String, in_value: bool) -> FormError {
        match self {
            Self::BadEscape => FormError::BadEscape { key, in_value },
            Self::InvalidUtf8 => FormError::InvalidUtf8 { key, in_value },
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` decoding of one component: `+` is a
/// space, `%XX` (either case) a byte; the result must be UTF-8.
fn percent_decode(raw: &[u8]) -> Result<String, DecodeFailure> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = raw.get(i + 1).copied().and_then(hex_digit);
                let lo = raw.get(i + 2).copied().and_then(hex_digit);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push((h << 4) | l),
                    _ => return Err(DecodeFailure::BadEscape),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| DecodeFailure::InvalidUtf8)
}

/// One bracket segment of a key: `[]` or `[name]`.
enum Segment<'a> {
    Append,
    Key(&'a str),
}

/// Splits `a[b][]` into `a` and its segments. `None` for a key PHP drops
/// (empty top-level name). Stops with [`FormError::TooDeep`] as soon as
/// there is one segment too many, so `a[][][]…` never allocates more than
/// `max_depth + 1` segments.
fn split_key(key: &str, max_depth: usize) -> Result<Option<(&str, Vec<Segment<'_>>)>, FormError> {
    let Some(open) = key.find('[') else {
        return Ok((!key.is_empty()).then_some((key, Vec::new())));
    };
    let base = &key[..open];
    if base.is_empty() {
        return Ok(None);
    }
    let mut rest = &key[open..];
    if !rest.contains(']') {
        // Unclosed first bracket: keep the key literally (see module docs).
        return Ok(Some((key, Vec::new())));
    }
    let mut segments = Vec::new();
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find(']') else { break };
        let name = &inner[..close];
        segments.push(if name.is_empty() {
            Segment::Append
        } else {
            Segment::Key(name)
        });
        if segments.len() > max_depth {
            return Err(FormError::TooDeep {
                key: shown(key),
                limit: max_depth,
            });
        }
        rest = &inner[close + 1..];
        // PHP ignores text between `]` and the next `[`.
        match rest.find('[') {
            Some(i) => rest = &rest[i..],
            None => break,
        }
    }
    Ok(Some((base, segments)))
}

/// The largest integer key PHP accepts (`PHP_INT_MAX` on 64-bit builds).
const PHP_INT_MAX: u64 = i64::MAX as u64;

/// `Some(n)` if `key` is how PHP writes the integer `n` (`"0"`, `"17"`, not
/// `"017"` or `"+1"`), which is when PHP stores it as an integer key.
fn integer_key(key: &str) -> Option<u64> {
    let b = key.as_bytes();
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    key.parse::<u64>().ok().filter(|&n| n <= PHP_INT_MAX)
}

/// A map under construction. `index` makes lookups O(1) so that 10,000
/// siblings cost 10,000 hash probes, not 50 million comparisons.
#[derive(Default)]
struct Branch {
    entries: Vec<(String, Node)>,
    index: HashMap<String, usize>,
    /// PHP's `nNextFreeElement`: where `[]` appends.
    next_index: u64,
}

enum Node {
    Leaf(String),
    Branch(Branch),
}

impl Branch {
    fn insert(
        &mut self,
        base: &str,
        segments: &[Segment<'_>],
        value: String,
        full_key: &str,
    ) -> Result<(), FormError> {
        let mut branch = self;
        let mut name = base.to_owned();
        for segment in segments {
            branch = branch.child_branch(name);
            name = match segment {
                Segment::Key(k) => (*k).to_owned(),
                Segment::Append => branch.append_key(full_key)?,
            };
        }
        branch.set(name, Node::Leaf(value));
        Ok(())
    }

    fn append_key(&self, full_key: &str) -> Result<String, FormError> {
        if self.next_index > PHP_INT_MAX {
            return Err(FormError::IndexOverflow {
                key: shown(full_key),
            });
        }
        Ok(self.next_index.to_string())
    }

    /// Sets `name` to `node`, in place if it exists (PHP's update keeps the
    /// position), else at the end.
    fn set(&mut self, name: String, node: Node) -> &mut Node {
        let i = match self.index.get(&name) {
            Some(&i) => {
                self.entries[i].1 = node;
                i
            }
            None => self.push(name, node),
        };
        &mut self.entries[i].1
    }

    fn push(&mut self, name: String, node: Node) -> usize {
        if let Some(n) = integer_key(&name) {
            self.next_index = self.next_index.max(n + 1);
        }
        let i = self.entries.len();
        self.index.insert(name.clone(), i);
        self.entries.push((name, node));
        i
    }

    /// The map at `name`, created — or replacing a text leaf, as PHP does —
    /// if needed.
    fn child_branch(&mut self, name: String) -> &mut Branch {
        let i = match self.index.get(&name) {
            Some(&i) => {
                if let Node::Leaf(_) = self.entries[i].1 {
                    self.entries[i].1 = Node::Branch(Branch::default());
                }
                i
            }
            None => self.push(name, Node::Branch(Branch::default())),
        };
        match &mut self.entries[i].1 {
            Node::Branch(b) => b,
            Node::Leaf(_) => unreachable!("replaced by a branch above"),
        }
    }

    fn into_map(self) -> FormMap {
        FormMap {
            entries: self
                .entries
                .into_iter()
                .map(|(k, node)| (k, node.into_value()))
                .collect(),
        }
    }

    fn is_list(&self) -> bool {
        self.entries
            .iter()
            .enumerate()
            .all(|(i, (k, _))| integer_key(k) == Some(i as u64))
    }
}

impl Node {
    fn into_value(self) -> FormValue {
        match self {
            Node::Leaf(s) => FormValue::Text(s),
            Node::Branch(b) if b.is_list() => {
                FormValue::List(b.entries.into_iter().map(|(_, n)| n.into_value()).collect())
            }
            Node::Branch(b) => FormValue::Map(b.into_map()),
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding

/// Encodes a tree as `http_build_query` does with its defaults: keys in tree
/// order, nested keys as `a%5Bb%5D`, lists as `%5B0%5D`, `%5B1%5D`, spaces as
/// `+`, everything except ASCII letters, digits and `-_.` percent-encoded
/// with upper-case hex.
///
/// Empty lists and maps produce no pairs at all (as in PHP), so they vanish
/// on a round trip; so does a map whose keys are exactly `0..n` (it comes
/// back as a list), an empty nested key (`[]` means "append") and a key
/// containing `[` or `]`.
pub fn encode(fields: &FormMap) -> String {
    let mut out = String::new();
    let mut prefix = String::new();
    for (k, v) in fields.iter() {
        prefix.clear();
        urlencode_into(&mut prefix, k);
        encode_value(&mut out, &mut prefix, v);
    }
    out
}

fn encode_value(out: &mut String, prefix: &mut String, value: &FormValue) {
    match value {
        FormValue::Text(s) => {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(prefix);
            out.push('=');
            urlencode_into(out, s);
        }
        FormValue::List(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = prefix.len();
                let _ = write!(prefix, "%5B{i}%5D");
                encode_value(out, prefix, item);
                prefix.truncate(len);
            }
        }
        FormValue::Map(map) => {
            for (k, item) in map.iter() {
                let len = prefix.len();
                prefix.push_str("%5B");
                urlencode_into(prefix, k);
                prefix.push_str("%5D");
                encode_value(out, prefix, item);
                prefix.truncate(len);
            }
        }
    }
}

/// PHP's `urlencode`.
fn urlencode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> FormMap {
        decode(s.as_bytes(), &Limits::default()).unwrap()
    }

    fn json(s: &str) -> String {
        dec(s).to_json().to_string()
    }

    #[test]
    fn brackets_in_every_spelling_nest_the_same() {
        let want = r#"{"auth":{"domain":"x.bitrix24.com"},"data":{"FIELDS":{"ID":"7"}}}"#;
        for body in [
            "auth[domain]=x.bitrix24.com&data[FIELDS][ID]=7",
            "auth%5Bdomain%5D=x.bitrix24.com&data%5BFIELDS%5D%5BID%5D=7",
            "auth%5bdomain%5d=x.bitrix24.com&data%5bFIELDS%5d%5bID%5d=7",
            "auth%5Bdomain]=x.bitrix24.com&data[FIELDS%5d%5BID]=7",
        ] {
            assert_eq!(json(body), want, "{body}");
        }
    }

    #[test]
    fn plus_is_space_and_escapes_decode() {
        assert_eq!(
            json("a=b+c%20d%2B&b%20c=%C3%A9"),
            r#"{"a":"b c d+","b c":"é"}"#
        );
    }

    #[test]
    fn pair_without_equals_is_empty_and_empty_names_are_skipped() {
        assert_eq!(json("a&&=x&[b]=y&c="), r#"{"a":"","c":""}"#);
    }

    #[test]
    fn append_uses_next_integer_index() {
        assert_eq!(json("a[]=x&a[]=y"), r#"{"a":["x","y"]}"#);
        assert_eq!(json("a[5]=x&a[]=y"), r#"{"a":{"5":"x","6":"y"}}"#);
        assert_eq!(json("a[k]=x&a[]=y"), r#"{"a":{"k":"x","0":"y"}}"#);
        assert_eq!(json("a[][b]=1&a[][b]=2"), r#"{"a":[{"b":"1"},{"b":"2"}]}"#);
    }

    #[test]
    fn only_keys_running_from_zero_in_order_make_a_list() {
        assert_eq!(json("a[0]=x&a[1]=y"), r#"{"a":["x","y"]}"#);
        assert_eq!(json("a[1]=x"), r#"{"a":{"1":"x"}}"#);
        assert_eq!(json("a[1]=x&a[0]=y"), r#"{"a":{"1":"x","0":"y"}}"#);
        assert_eq!(json("a[00]=x"), r#"{"a":{"00":"x"}}"#);
        assert_eq!(json("0=x&1=y"), r#"{"0":"x","1":"y"}"#);
    }

    #[test]
    fn duplicates_overwrite_in_place() {
        assert_eq!(json("a=1&b=2&a=3"), r#"{"a":"3","b":"2"}"#);
        assert_eq!(json("a=1&a[b]=2"), r#"{"a":{"b":"2"}}"#);
        assert_eq!(json("a[b]=2&a=1"), r#"{"a":"1"}"#);
        assert_eq!(
            json("a[x][y]=1&a[x]=2&a[x][z]=3"),
            r#"{"a":{"x":{"z":"3"}}}"#
        );
    }

    #[test]
    fn malformed_brackets_follow_php_where_harmless() {
        assert_eq!(json("a[b=1"), r#"{"a[b":"1"}"#);
        assert_eq!(json("a[b][c=1"), r#"{"a":{"b":"1"}}"#);
        assert_eq!(json("a[b]x[c]=1"), r#"{"a":{"b":{"c":"1"}}}"#);
        assert_eq!(json("a[b]x=1"), r#"{"a":{"b":"1"}}"#);
        assert_eq!(json("a[b[c]]=1"), r#"{"a":{"b[c":"1"}}"#);
    }

    #[test]
    fn lone_percent_and_bad_utf8_are_typed_errors() {
        let l = Limits::default();
        assert_eq!(
            decode(b"ok=1&a%=1", &l),
            Err(FormError::BadEscape {
                key: "a%".into(),
                in_value: false
            })
        );
        assert_eq!(
            decode(b"a=%4", &l),
            Err(FormError::BadEscape {
                key: "a".into(),
                in_value: true
            })
        );
        assert_eq!(
            decode(b"a=%zz", &l),
            Err(FormError::BadEscape {
                key: "a".into(),
                in_value: true
            })
        );
        assert_eq!(
            decode(b"a=%FF%FE", &l),
            Err(FormError::InvalidUtf8 {
                key: "a".into(),
                in_value: true
            })
        );
        assert!(matches!(
            decode(b"a\xff=1", &l),
            Err(FormError::InvalidUtf8 {
                in_value: false,
                ..
            })
        ));
    }

    #[test]
    fn each_limit_is_a_typed_error_naming_the_key() {
        let l = Limits {
            max_depth: 2,
            max_keys: 2,
            max_value_len: 4,
            max_key_len: 10,
        };
        assert_eq!(
            decode(b"a[b][c][d]=1", &l),
            Err(FormError::TooDeep {
                key: "a[b][c][d]".into(),
                limit: 2
            })
        );
        assert!(decode(b"a[b][c]=1", &l).is_ok());
        assert_eq!(
            decode(b"a=1&b=2&c=3", &l),
            Err(FormError::TooManyKeys {
                key: "c".into(),
                limit: 2
            })
        );
        assert_eq!(
            decode(b"abcdefghijk=1", &l),
            Err(FormError::KeyTooLong {
                key: "abcdefghijk".into(),
                limit: 10
            })
        );
        assert_eq!(
            decode(b"v=12345", &l),
            Err(FormError::ValueTooLong {
                key: "v".into(),
                limit: 4
            })
        );
        // Four decoded bytes from twelve raw ones are within the limit.
        assert!(decode(b"v=%41%42%43%44", &l).is_ok());
    }

    #[test]
    fn error_messages_truncate_keys_and_never_show_values() {
        let long = format!("{}[x]", "k".repeat(500));
        let l = Limits {
            max_depth: 0,
            ..Limits::default()
        };
        let e = decode(format!("{long}=secretvalue").as_bytes(), &l).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&"k".repeat(KEY_SHOWN)), "{msg}");
        assert!(!msg.contains(&"k".repeat(KEY_SHOWN + 1)), "{msg}");
        let e = decode(b"auth[access_token]=secret%zz", &Limits::default()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("auth[access_token]") && !msg.contains("secret%"),
            "{msg}"
        );
    }

    #[test]
    fn append_after_php_int_max_overflows() {
        let body = format!("a[{}]=x&a[]=y", i64::MAX);
        assert_eq!(
            decode(body.as_bytes(), &Limits::default()),
            Err(FormError::IndexOverflow { key: "a[]".into() })
        );
        // One past PHP_INT_MAX is a string key and does not move the index.
        let body = format!("a[{}]=x&a[]=y", i64::MAX as u64 + 1);
        assert_eq!(
            dec(&body).to_json().to_string(),
            format!(r#"{{"a":{{"{}":"x","0":"y"}}}}"#, i64::MAX as u64 + 1)
        );
    }

    #[test]
    fn encode_writes_http_build_query_format() {
        let m = FormMap::new()
            .with("event", "ONCRMDEALUPDATE")
            .with(
                "data",
                FormMap::new().with("FIELDS", FormMap::new().with("ID", "7405")),
            )
            .with("list", FormValue::List(vec!["a b".into(), "x~/é&=".into()]));
        assert_eq!(
            encode(&m),
            "event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BID%5D=7405\
             &list%5B0%5D=a+b&list%5B1%5D=x%7E%2F%C3%A9%26%3D"
        );
        assert_eq!(dec(&encode(&m)), m);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = dec("x[b]=1&x[a]=2&y=3");
        let b = dec("y=3&x[a]=2&x[b]=1");
        assert_ne!(a, b);
        assert_eq!(a.canonical_json(), b.canonical_json());
        assert_eq!(a.canonical_json(), r#"{"x":{"a":"2","b":"1"},"y":"3"}"#);
    }

    #[test]
    fn from_json_follows_http_build_query() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"a":1,"b":true,"c":null,"d":[],"e":{"f":false},"g":["x",null,"y"]}"#,
        )
        .unwrap();
        let m = FormMap::from_json_object(v.as_object().unwrap());
        assert_eq!(encode(&m), "a=1&b=1&e%5Bf%5D=0&g%5B0%5D=x&g%5B2%5D=y");
    }
}
