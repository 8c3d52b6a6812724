//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4),
//! written by hand — a few dozen families do not need a metrics framework.
//! Every family is documented in `docs/metrics.md`; a test scrapes them all.
//!
//! Labels are bounded: event names (capped by [`crate::IngestStats`]),
//! outcomes, job and portal states, configured targets. No portal label
//! unless [`crate::observe::Observe::portal_label`] is set (BRIEF §3
//! invariant 4 also holds: no secret is ever a label).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use store::PortalStatus;

use crate::AppState;
use crate::observe::{Snapshot, is_active};
use crate::stats::{ACK_BUCKETS, HistogramSnapshot};

pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binding states the reconciler records (`store::BindingRecord::state`).
const BINDING_STATES: [&str; 6] = [
    "bound",
    "missing",
    "stale",
    "unsatisfiable",
    "failed",
    "foreign",
];

/// The text being written.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (i, n) in h.cumulative.iter().enumerate() {
            let le = ACK_BUCKETS
                .get(i)
                .map_or("+Inf".to_owned(), |b| b.to_string());
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, n);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// Label values escape `\`, `"` and newlines (the format's only rules).
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

pub(crate) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.observe.metrics_open
        && let Some(r) = crate::admin::refuse(state.admin.as_ref(), &headers)
    {
        return r;
    }
    match Snapshot::collect(&state).await {
        Ok(snap) => (
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            render(&state, &snap),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
        }
    }
}

fn render(state: &AppState, snap: &Snapshot) -> String {
    let mut x = Exposition { out: String::new() };
    let per_portal = state.observe.portal_label;

    // Ingest.
    x.family(
        "b24gate_events_received_total",
        "counter",
        "Deliveries to the Bitrix24-facing routes, by event name and outcome.",
    );
    let mut counts: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for (event, outcome, n) in state.stats.snapshot() {
        *counts.entry((event, outcome.as_str())).or_default() += n;
    }
    for ((event, outcome), n) in &counts {
        x.sample(
            "b24gate_events_received_total",
            &[("event", event), ("outcome", outcome)],
            n,
        );
    }
    x.family(
        "b24gate_ingest_ack_duration_seconds",
        "histogram",
        "Time from receiving a delivery to answering it, by route.",
    );
    for route in ["events", "install"] {
        if let Some(h) = state.stats.ack_latency(route) {
            x.histogram(
                "b24gate_ingest_ack_duration_seconds",
                &[("route", route)],
                &h,
            );
        }
    }

    // Inbox and jobs.
    x.family(
        "b24gate_inbox_depth",
        "gauge",
        "Stored deliveries waiting to be dispatched to jobs.",
    );
    x.sample("b24gate_inbox_depth", &[], snap.inbox_depth);
    x.family("b24gate_jobs", "gauge", "Jobs in the queue, by state.");
    for (s, n) in &snap.jobs {
        x.sample("b24gate_jobs", &[("state", s)], n);
    }

    // Forwarding.
    x.family(
        "b24gate_forward_attempts_total",
        "counter",
        "Delivery attempts to the app's targets since the process started.",
    );
    for (t, h) in &snap.targets {
        x.sample(
            "b24gate_forward_attempts_total",
            &[("target", t)],
            h.attempts,
        );
    }
    x.family(
        "b24gate_forward_failures_total",
        "counter",
        "Failed delivery attempts (transport error or non-2xx) since the process started.",
    );
    for (t, h) in &snap.targets {
        x.sample(
            "b24gate_forward_failures_total",
            &[("target", t)],
            h.failures,
        );
    }
    x.family(
        "b24gate_forward_target_up",
        "gauge",
        "1 while a target has had fewer than 5 failures in a row, else 0.",
    );
    for (t, h) in &snap.targets {
        x.sample(
            "b24gate_forward_target_up",
            &[("target", t)],
            u8::from(h.healthy()),
        );
    }
    x.family(
        "b24gate_forward_dead_letters",
        "gauge",
        "Deliveries that exhausted their attempts (discarded jobs), by target.",
    );
    for (t, n) in snap.dead_letters_by_target() {
        x.sample("b24gate_forward_dead_letters", &[("target", &t)], n);
    }

    // Offline drains.
    x.family(
        "b24gate_offline_lag_seconds",
        "gauge",
        "Age of the oldest open offline-event reservation (reserved, not yet cleared); 0 when none.",
    );
    let lag = snap.drains.iter().map(|d| d.lag_seconds).max().unwrap_or(0);
    x.sample("b24gate_offline_lag_seconds", &[], lag);
    x.family(
        "b24gate_offline_reservations_open",
        "gauge",
        "Offline drains holding a reservation that was not cleared yet.",
    );
    let open = snap
        .drains
        .iter()
        .filter(|d| d.state.process_id.is_some())
        .count();
    x.sample("b24gate_offline_reservations_open", &[], open);
    x.family(
        "b24gate_offline_drained_total",
        "counter",
        "Offline events stored in the inbox by drains (as recorded in the store).",
    );
    let drained: i64 = snap.drains.iter().map(|d| d.state.drained_total).sum();
    x.sample("b24gate_offline_drained_total", &[], drained);
    x.family(
        "b24gate_offline_error_marked_total",
        "counter",
        "Offline events marked with event.offline.error (as recorded in the store).",
    );
    let errors: i64 = snap.drains.iter().map(|d| d.state.error_total).sum();
    x.sample("b24gate_offline_error_marked_total", &[], errors);
    if per_portal {
        x.family(
            "b24gate_portal_offline_lag_seconds",
            "gauge",
            "Per portal and connector: age of the open offline reservation (opt-in portal label).",
        );
        for d in &snap.drains {
            x.sample(
                "b24gate_portal_offline_lag_seconds",
                &[
                    ("portal", &d.state.member_id),
                    ("connector", &d.state.connector),
                ],
                d.lag_seconds,
            );
        }
        x.family(
            "b24gate_portal_offline_error_marked_total",
            "counter",
            "Per portal and connector: offline events marked as errors (opt-in portal label).",
        );
        for d in &snap.drains {
            x.sample(
                "b24gate_portal_offline_error_marked_total",
                &[
                    ("portal", &d.state.member_id),
                    ("connector", &d.state.connector),
                ],
                d.state.error_total,
            );
        }
    }

    // The REST client.
    let c = snap.client.unwrap_or_default();
    x.family(
        "b24gate_rest_requests_total",
        "counter",
        "HTTP requests sent to portals' REST API (token requests excluded), retries included.",
    );
    x.sample("b24gate_rest_requests_total", &[], c.requests);
    x.family(
        "b24gate_rest_limit_errors_total",
        "counter",
        "REST answers refusing a call for a limit, by error code.",
    );
    x.sample(
        "b24gate_rest_limit_errors_total",
        &[("code", "QUERY_LIMIT_EXCEEDED")],
        c.rate_limited,
    );
    x.sample(
        "b24gate_rest_limit_errors_total",
        &[("code", "OPERATION_TIME_LIMIT")],
        c.operating_limited,
    );
    x.family(
        "b24gate_rest_calls_total",
        "counter",
        "Logical REST calls (a batch chunk counts once) by how they ended: ok, api_error (Bitrix24 error answer), transport_error (connection, timeout, deadline, malformed answer).",
    );
    x.sample("b24gate_rest_calls_total", &[("outcome", "ok")], c.ok);
    x.sample(
        "b24gate_rest_calls_total",
        &[("outcome", "api_error")],
        c.api_errors,
    );
    x.sample(
        "b24gate_rest_calls_total",
        &[("outcome", "transport_error")],
        c.transport_errors,
    );
    x.family(
        "b24gate_rest_breaker_trips_total",
        "counter",
        "Times a portal's retry-storm breaker opened and paused its outbound calls.",
    );
    x.sample("b24gate_rest_breaker_trips_total", &[], c.breaker_trips);
    x.family(
        "b24gate_rest_breaker_refusals_total",
        "counter",
        "Calls refused without the network while a portal's breaker was open.",
    );
    x.sample(
        "b24gate_rest_breaker_refusals_total",
        &[],
        c.breaker_refusals,
    );
    x.family(
        "b24gate_rest_retries_total",
        "counter",
        "REST attempts repeated after a retryable failure.",
    );
    x.sample("b24gate_rest_retries_total", &[], c.retries);
    x.family(
        "b24gate_rest_renames_total",
        "counter",
        "Portal renames (302 to a new address) followed and recorded.",
    );
    x.sample("b24gate_rest_renames_total", &[], c.renames);
    x.family(
        "b24gate_oauth_refreshes_total",
        "counter",
        "Token refresh requests sent to the OAuth server.",
    );
    x.sample("b24gate_oauth_refreshes_total", &[], c.refreshes);
    x.family(
        "b24gate_oauth_refresh_failures_total",
        "counter",
        "Token refreshes that failed, invalid_grant included.",
    );
    x.sample(
        "b24gate_oauth_refresh_failures_total",
        &[],
        c.refresh_failures,
    );
    x.family(
        "b24gate_oauth_reauth_marked_total",
        "counter",
        "Portals marked needs_reauth after a refused refresh token.",
    );
    x.sample("b24gate_oauth_reauth_marked_total", &[], c.reauth_marked);

    // Bindings and portals.
    let active: Vec<_> = snap.active_bindings().collect();
    let mut by_state: BTreeMap<&str, u64> = BINDING_STATES.iter().map(|s| (*s, 0)).collect();
    for r in &active {
        *by_state.entry(r.record.state.as_str()).or_default() += 1;
    }
    let expected = active.iter().filter(|r| r.record.expected).count();
    let actual = active.iter().filter(|r| r.record.actual).count();
    for (name, help, value) in [
        (
            "b24gate_bindings_expected",
            "Bindings the manifest asks for, over active portals.",
            expected,
        ),
        (
            "b24gate_bindings_actual",
            "Bindings the portals listed at the last check, over active portals.",
            actual,
        ),
        (
            "b24gate_bindings_missing",
            "Expected bindings the portal does not have (state missing), over active portals.",
            by_state["missing"] as usize,
        ),
        (
            "b24gate_bindings_unsatisfiable",
            "Expected bindings the portal cannot have (plan, scope, feature), over active portals.",
            by_state["unsatisfiable"] as usize,
        ),
    ] {
        x.family(name, "gauge", help);
        x.sample(name, &[], value);
    }
    x.family(
        "b24gate_bindings",
        "gauge",
        "Binding matrix rows of active portals, by reconciler state.",
    );
    for (s, n) in &by_state {
        x.sample("b24gate_bindings", &[("state", s)], n);
    }
    if per_portal {
        x.family(
            "b24gate_portal_bindings",
            "gauge",
            "Per portal: binding matrix rows by state (opt-in portal label).",
        );
        let mut per: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for r in &active {
            *per.entry((r.member_id.as_str(), r.record.state.as_str()))
                .or_default() += 1;
        }
        for ((p, s), n) in per {
            x.sample("b24gate_portal_bindings", &[("portal", p), ("state", s)], n);
        }
    }
    x.family(
        "b24gate_portals",
        "gauge",
        "Known portals, by lifecycle status.",
    );
    for status in PortalStatus::ALL {
        let n = snap.portals.iter().filter(|p| p.status == status).count();
        x.sample("b24gate_portals", &[("status", status.as_str())], n);
    }
    x.family(
        "b24gate_portals_unhealthy",
        "gauge",
        "Active portals with at least one problem shown on /status.",
    );
    let unhealthy = snap
        .portals
        .iter()
        .filter(|p| is_active(p.status) && !snap.problems(p).is_empty())
        .count();
    x.sample("b24gate_portals_unhealthy", &[], unhealthy);
    x.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histogram_lines_are_cumulative_and_end_with_inf() {
        let mut x = Exposition { out: String::new() };
        let h = crate::stats::AckHistogram::default();
        h.observe(std::time::Duration::from_micros(700));
        h.observe(std::time::Duration::from_millis(30));
        h.observe(std::time::Duration::from_secs(9));
        x.histogram("h", &[("route", "events")], &h.snapshot());
        assert!(
            x.out
                .contains("h_bucket{route=\"events\",le=\"0.001\"} 1\n")
        );
        assert!(x.out.contains("h_bucket{route=\"events\",le=\"0.05\"} 2\n"));
        assert!(x.out.contains("h_bucket{route=\"events\",le=\"5\"} 2\n"));
        assert!(x.out.contains("h_bucket{route=\"events\",le=\"+Inf\"} 3\n"));
        assert!(x.out.contains("h_count{route=\"events\"} 3\n"));
    }
}
