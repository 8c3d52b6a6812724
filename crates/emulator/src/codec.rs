//! The emulator's own wire codec: PHP-style form encoding (`http_build_query`) for
//! outgoing deliveries, and decoding of incoming parameters (query string, form body
//! with raw or percent-encoded brackets, JSON body).
//!
//! Deliberately independent of the gateway's `wire` crate (issue 3: a bug in the
//! gateway's codec must not hide behind the same bug here). Reference §2.1: nested
//! structures are sent as `data[FIELDS][ID]=7405`, scalars as strings, empty arrays
//! vanish.

use serde_json::{Map, Value};

/// Encodes a JSON object the way PHP's `http_build_query` does: brackets as `%5B`/`%5D`,
/// spaces as `+`, nested maps and lists as `a[b][0]=v`, `true`/`false` as `1`/`0`,
/// `null` and empty containers omitted.
pub fn encode_form(value: &Map<String, Value>) -> String {
    let mut w = FormWriter::with_capacity(512);
    for (k, v) in value {
        w.value(k, v);
    }
    w.finish()
}

/// Writes a form body field by field, with the same rules as [`encode_form`]; lets
/// the delivery worker encode an event without first building it as a JSON map.
pub struct FormWriter {
    out: String,
    key: String,
}

impl FormWriter {
    pub fn with_capacity(n: usize) -> Self {
        FormWriter {
            out: String::with_capacity(n),
            key: String::with_capacity(64),
        }
    }

    /// One scalar field under a key path: `["auth", "domain"]` → `auth%5Bdomain%5D=…`.
    pub fn field(&mut self, path: &[&str], value: &str) {
        if !self.out.is_empty() {
            self.out.push('&');
        }
        for (i, seg) in path.iter().enumerate() {
            if i > 0 {
                self.out.push_str("%5B");
            }
            push_encoded(&mut self.out, seg);
            if i > 0 {
                self.out.push_str("%5D");
            }
        }
        self.out.push('=');
        push_encoded(&mut self.out, value);
    }

    /// A JSON value under a top-level key (nested maps and lists in brackets; `null`
    /// and empty containers write nothing).
    pub fn value(&mut self, key: &str, v: &Value) {
        self.key.clear();
        push_encoded(&mut self.key, key);
        encode_value(&mut self.out, &mut self.key, v);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn encode_value(out: &mut String, key: &mut String, v: &Value) {
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                let len = key.len();
                key.push_str("%5B");
                push_encoded(key, k);
                key.push_str("%5D");
                encode_value(out, key, v);
                key.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let len = key.len();
                key.push_str("%5B");
                key.push_str(&i.to_string());
                key.push_str("%5D");
                encode_value(out, key, v);
                key.truncate(len);
            }
        }
        scalar => {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(key);
            out.push('=');
            match scalar {
                Value::Bool(true) => out.push('1'),
                Value::Bool(false) => out.push('0'),
                Value::Number(n) => out.push_str(&n.to_string()),
                Value::String(s) => push_encoded(out, s),
                _ => {}
            }
        }
    }
}

/// PHP `urlencode`: alphanumerics and `-_.` stay, space becomes `+`, all else `%XX`.
fn push_encoded(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
}

/// Percent-encodes a string for use as one query-string value (same rules as PHP).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_encoded(&mut out, s);
    out
}

/// Decodes `application/x-www-form-urlencoded` or a query string into nested maps,
/// PHP `parse_str` style: `a[b][]=1&a[b][]=2` → `{"a":{"b":{"0":"1","1":"2"}}}`.
/// Lists come back as maps with numeric keys; [`list_values`] reads both shapes.
/// Brackets may be raw or percent-encoded. Invalid escapes are kept literally.
pub fn decode_form(input: &[u8]) -> Map<String, Value> {
    let mut root = Map::new();
    for pair in input.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let key = percent_decode(k);
        if key.is_empty() {
            continue;
        }
        let value = percent_decode(v);
        insert_path(&mut root, &key, value);
    }
    root
}

fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex_val(s[i + 1]), hex_val(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits `a[b][]` into `["a", "b", ""]`. A name without a well-formed bracket tail is
/// taken literally, as PHP does.
fn split_key(key: &str) -> Vec<&str> {
    let Some(open) = key.find('[') else {
        return vec![key];
    };
    if open == 0 {
        return vec![key];
    }
    let mut parts = vec![&key[..open]];
    let mut rest = &key[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        match stripped.find(']') {
            Some(close) => {
                parts.push(&stripped[..close]);
                rest = &stripped[close + 1..];
            }
            None => break,
        }
    }
    if parts.len() == 1 {
        return vec![key];
    }
    parts
}

fn insert_path(root: &mut Map<String, Value>, key: &str, value: String) {
    let parts = split_key(key);
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let name = if part.is_empty() && i > 0 {
            next_index(cur)
        } else {
            (*part).to_string()
        };
        if i + 1 == parts.len() {
            cur.insert(name, Value::String(value));
            return;
        }
        let slot = cur.entry(name).or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        cur = slot.as_object_mut().expect("just made an object");
    }
}

fn next_index(m: &Map<String, Value>) -> String {
    let max = m.keys().filter_map(|k| k.parse::<u64>().ok()).max();
    match max {
        Some(n) => (n + 1).to_string(),
        None => "0".to_string(),
    }
}

/// Decodes a `multipart/form-data` body (field names may carry PHP brackets). File
/// parts are kept as their (lossy UTF-8) contents.
pub fn decode_multipart(input: &[u8], boundary: &str) -> Map<String, Value> {
    let mut root = Map::new();
    let delim = format!("--{boundary}");
    let text = String::from_utf8_lossy(input);
    for part in text.split(delim.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let Some((head, body)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let name = head.lines().find_map(|l| {
            let l = l.trim();
            if !l.to_ascii_lowercase().starts_with("content-disposition:") {
                return None;
            }
            let i = l.find("name=\"")? + 6;
            let rest = &l[i..];
            Some(rest[..rest.find('"')?].to_string())
        });
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            continue;
        };
        let value = body.strip_suffix("\r\n").unwrap_or(body);
        insert_path(&mut root, &name, value.to_string());
    }
    root
}

/// Decodes a JSON body; a non-object top level yields an empty map.
pub fn decode_json(input: &[u8]) -> Result<Map<String, Value>, serde_json::Error> {
    match serde_json::from_slice::<Value>(input)? {
        Value::Object(m) => Ok(m),
        _ => Ok(Map::new()),
    }
}

/// The items of a list parameter, whether it arrived as a JSON array or as a PHP-style
/// map with numeric keys (`id[0]=1&id[1]=2`).
pub fn list_values(v: &Value) -> Option<Vec<&Value>> {
    match v {
        Value::Array(a) => Some(a.iter().collect()),
        Value::Object(m) => Some(m.values().collect()),
        _ => None,
    }
}

/// Case-insensitive parameter lookup (Bitrix24 system methods upper- or lower-case
/// parameter names, reference §5).
pub fn param<'a>(params: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = params.get(name) {
        return Some(v);
    }
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A scalar parameter as a string (numbers and booleans converted PHP-style).
pub fn scalar_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "" }.to_string()),
        _ => None,
    }
}

/// PHP truthiness of a parameter: `"0"`, `""`, `"false"`/`"N"` (Bitrix style), `0`,
/// `false`, `null` are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => {
            !(s.is_empty() || s == "0" || s.eq_ignore_ascii_case("false") || s == "N" || s == "n")
        }
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// An integer parameter (string or number).
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(*b as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn encodes_like_http_build_query() {
        let v = obj(json!({
            "event": "ONCRMDEALADD",
            "data": {"FIELDS": {"ID": 7}, "LIST": ["a b", "c&d"]},
            "flag": true, "off": false, "none": null, "empty": [],
            "auth": {"domain": "x.bitrix24.com", "client_endpoint": "https://x/rest/"}
        }));
        assert_eq!(
            encode_form(&v),
            "event=ONCRMDEALADD&data%5BFIELDS%5D%5BID%5D=7&data%5BLIST%5D%5B0%5D=a+b\
             &data%5BLIST%5D%5B1%5D=c%26d&flag=1&off=0\
             &auth%5Bdomain%5D=x.bitrix24.com&auth%5Bclient_endpoint%5D=https%3A%2F%2Fx%2Frest%2F"
        );
    }

    #[test]
    fn form_writer_matches_encode_form() {
        let v = obj(json!({
            "event": "ONCRMDEALADD", "data": {"FIELDS": {"ID": "7"}}, "none": null,
            "auth": {"domain": "a b.localhost:80", "member_id": "x&y"}
        }));
        let mut w = FormWriter::with_capacity(0);
        w.field(&["event"], "ONCRMDEALADD");
        w.value("data", &v["data"]);
        w.value("none", &Value::Null);
        w.field(&["auth", "domain"], "a b.localhost:80");
        w.field(&["auth", "member_id"], "x&y");
        assert_eq!(w.finish(), encode_form(&v));
    }

    #[test]
    fn decodes_raw_and_encoded_brackets() {
        let a = decode_form(b"data[FIELDS][ID]=7&auth%5Bmember_id%5D=abc&x=a+b%21");
        assert_eq!(
            Value::Object(a),
            json!({"data": {"FIELDS": {"ID": "7"}}, "auth": {"member_id": "abc"}, "x": "a b!"})
        );
    }

    #[test]
    fn decodes_append_brackets_and_odd_input() {
        let a = decode_form(b"id[]=1&id[]=2&&novalue&bad=%zz%&[x]=1&k[open=1");
        assert_eq!(
            Value::Object(a),
            json!({"id": {"0": "1", "1": "2"}, "novalue": "", "bad": "%zz%", "[x]": "1", "k[open": "1"})
        );
    }

    #[test]
    fn round_trip_nested() {
        let v = obj(json!({"cmd": {"a": "crm.deal.get?id=1", "b": "x y"}, "halt": "1"}));
        let back = decode_form(encode_form(&v).as_bytes());
        assert_eq!(Value::Object(back), Value::Object(v));
    }

    #[test]
    fn decodes_multipart() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"fields[TITLE]\"\r\n\r\nA b\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"auth\"\r\n\r\ntok\r\n--XyZ--\r\n";
        assert_eq!(
            Value::Object(decode_multipart(body.as_bytes(), "XyZ")),
            json!({"fields": {"TITLE": "A b"}, "auth": "tok"})
        );
    }

    #[test]
    fn helpers() {
        let p = obj(json!({"EVENT": "x", "n": "12", "t": "0"}));
        assert_eq!(param(&p, "event"), Some(&json!("x")));
        assert_eq!(param(&p, "N").and_then(int), Some(12));
        assert!(!truthy(param(&p, "t").unwrap()));
        assert_eq!(list_values(&json!({"0": 1, "1": 2})).unwrap().len(), 2);
        assert_eq!(urlencode("a[b]"), "a%5Bb%5D");
    }
}
