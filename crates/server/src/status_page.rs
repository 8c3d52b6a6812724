//! `GET /status`: the operator's page, rendered on the server (no scripts,
//! no external assets, no build step). The admin token comes as
//! `Authorization: Bearer …` or, so that a browser can open the page, as
//! `?token=…`; the page is sent with `Cache-Control: no-store` and
//! `Referrer-Policy: no-referrer` so the token in its address goes nowhere.
//!
//! Every value from the store or a request is escaped ([`esc`]): domains,
//! binding reasons and drain errors come, in the end, from portals.

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::AppState;
use crate::observe::{Snapshot, auth_failures, is_active, recent_rejections};

#[derive(serde::Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// HTML-escapes text for element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn time(ms: Option<i64>) -> String {
    // Unix seconds: unambiguous without a time zone or a date library.
    ms.map_or_else(|| "—".to_owned(), |m| format!("{}", m / 1000))
}

pub(crate) async fn page(
    State(state): State<AppState>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    // The query token is checked exactly like the header: same constant-time
    // comparison, through the one admin check.
    let mut auth = headers.clone();
    if !auth.contains_key(header::AUTHORIZATION)
        && let Some(t) = &q.token
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}"))
    {
        auth.insert(header::AUTHORIZATION, v);
    }
    if let Some(r) = crate::admin::refuse(state.admin.as_ref(), &auth) {
        return r;
    }
    let body = match Snapshot::collect(&state).await {
        Ok(snap) => match recent_rejections(&state, snap.now, 20).await {
            Ok(rejected) => render(&state, &snap, &rejected),
            Err(e) => return unavailable(&e),
        },
        Err(e) => return unavailable(&e),
    };
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        Html(body),
    )
        .into_response()
}

fn unavailable(e: &store::StoreError) -> Response {
    tracing::warn!(error = %e, "status page: store unavailable");
    (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}\
h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.healthy .health{color:#176f2c}.unhealthy{background:#fff1f0}.unhealthy .health{color:#b3261e;font-weight:600}\
.inactive{color:#777}code{background:#f6f6f6;padding:1px 4px}ul{margin:0;padding-left:18px}";

fn render(state: &AppState, snap: &Snapshot, rejected: &[store::AuditEntry]) -> String {
    let mut h = String::new();
    let active = snap.portals.iter().filter(|p| is_active(p.status)).count();
    let unhealthy = snap
        .portals
        .iter()
        .filter(|p| is_active(p.status) && !snap.problems(p).is_empty())
        .count();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>b24gate status</title><style>{STYLE}</style></head><body>\
         <h1>b24gate status</h1>\
         <p id=\"summary\">{} portals, {active} active, \
         <span id=\"unhealthy-count\">{unhealthy}</span> unhealthy · inbox depth {} · \
         workers {} · generated at {}</p>",
        snap.portals.len(),
        snap.inbox_depth,
        if state.observe.workers_running() {
            "running"
        } else {
            "not running"
        },
        time(Some(snap.now)),
    );

    h.push_str(
        "<h2>Portals</h2><table id=\"portals\"><thead><tr><th>Portal</th><th>member_id</th>\
         <th>Status</th><th>Version</th><th>Bindings</th><th>Health</th><th>Problems and fixes</th>\
         </tr></thead><tbody>",
    );
    for p in &snap.portals {
        let m = p.member_id.as_str();
        let problems = snap.problems(p);
        let (bound, expected) = snap.binding_health(m);
        let class = if !is_active(p.status) && problems.is_empty() {
            "inactive"
        } else if problems.is_empty() {
            "healthy"
        } else {
            "unhealthy"
        };
        let _ = write!(
            h,
            "<tr class=\"portal {class}\" data-member-id=\"{}\"><td>{}</td><td><code>{}</code></td>\
             <td class=\"status\">{}</td><td>{}</td><td>{bound}/{expected} bound</td>\
             <td class=\"health\">{class}</td><td>",
            esc(m),
            esc(p.domain.as_str()),
            esc(m),
            esc(p.status.as_str()),
            p.installed_version
                .map_or_else(|| "—".to_owned(), |v| v.to_string()),
        );
        if problems.is_empty() {
            h.push('—');
        } else {
            h.push_str("<ul>");
            for x in &problems {
                let _ = write!(
                    h,
                    "<li class=\"problem\">{} — fix: <code class=\"fix\">{}</code></li>",
                    esc(&x.what),
                    esc(&x.fix)
                );
            }
            h.push_str("</ul>");
        }
        h.push_str("</td></tr>");
    }
    if snap.portals.is_empty() {
        h.push_str("<tr><td colspan=\"7\">No portals yet.</td></tr>");
    }
    h.push_str("</tbody></table>");

    h.push_str(
        "<h2>Offline drains</h2><table id=\"offline\"><thead><tr><th>member_id</th>\
         <th>Connector</th><th>Lag (s)</th><th>Drained</th><th>Error-marked</th><th>Last error</th>\
         <th>Last drain</th></tr></thead><tbody>",
    );
    for d in &snap.drains {
        let s = &d.state;
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.member_id),
            esc(if s.connector.is_empty() {
                "(default)"
            } else {
                &s.connector
            }),
            d.lag_seconds,
            s.drained_total,
            s.error_total,
            esc(s.last_error.as_deref().unwrap_or("—")),
            time(s.last_drain_at),
        );
    }
    if snap.drains.is_empty() {
        h.push_str("<tr><td colspan=\"7\">No offline drains.</td></tr>");
    }
    h.push_str("</tbody></table>");

    h.push_str(
        "<h2>Forwarding targets</h2><table id=\"targets\"><thead><tr><th>Target</th>\
         <th>Health</th><th>Attempts</th><th>Failures</th><th>Last status</th><th>Dead letters</th>\
         </tr></thead><tbody>",
    );
    let dead = snap.dead_letters_by_target();
    for (name, n) in &dead {
        let t = snap.targets.get(name).cloned().unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{n}{}</td></tr>",
            esc(name),
            if t.healthy() { "healthy" } else { "failing" },
            t.attempts,
            t.failures,
            t.last_status
                .map_or_else(|| "—".to_owned(), |s| s.to_string()),
            if *n > 0 {
                " — replay: <code class=\"fix\">b24gate jobs list --state discarded</code>, \
                 then <code class=\"fix\">b24gate jobs retry &lt;id&gt;</code>"
            } else {
                ""
            },
        );
    }
    if dead.is_empty() {
        h.push_str("<tr><td colspan=\"6\">No targets configured.</td></tr>");
    }
    h.push_str("</tbody></table>");

    h.push_str("<h2>Jobs</h2><p id=\"jobs\">");
    let jobs: Vec<String> = snap
        .jobs
        .iter()
        .map(|(s, n)| format!("{} {n}", esc(s)))
        .collect();
    h.push_str(&jobs.join(" · "));
    h.push_str("</p>");

    h.push_str("<h2>Recent authentication failures</h2><p id=\"auth-failures\">Since start: ");
    let f: Vec<String> = auth_failures(&state.stats)
        .into_iter()
        .map(|(k, n)| format!("{} {n}", esc(k)))
        .collect();
    h.push_str(&f.join(" · "));
    h.push_str(
        "</p><table id=\"rejected\"><thead><tr><th>At</th><th>member_id</th><th>What</th>\
         <th>Detail</th></tr></thead><tbody>",
    );
    for a in rejected {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            time(Some(a.at)),
            esc(a.member_id.as_deref().unwrap_or("—")),
            esc(&a.action),
            esc(&a.detail),
        );
    }
    if rejected.is_empty() {
        h.push_str("<tr><td colspan=\"4\">No refused installs or forged events in the last 24 hours.</td></tr>");
    }
    h.push_str("</tbody></table></body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
