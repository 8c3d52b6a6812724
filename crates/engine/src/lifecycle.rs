//! Install, update and reconcile: the lifecycle jobs that call the portal.
//!
//! Install (both flows, protocol §3.2–§3.5): the delivery waits in the inbox
//! until this job has checked it against the configured OAuth server's
//! `app.info` (client id, `member_id` and domain must match; the domain and
//! endpoint must be allow-listed). Only then is the portal written — identity,
//! sealed tokens, the application token's hash — and brought up: probe,
//! reconcile, migrations, version, status `installed`. A forged install
//! creates nothing and is audited; no call ever goes to a host a request
//! body named.
//!
//! Bring-up ([`Lifecycle::bring_up`]) is shared by install, update
//! (`ONAPPUPDATE`, repeat `ONAPPINSTALL`, version drift) and reconcile: one
//! `batch` for the probe and the actual bindings, one for the binds and
//! unbinds, then the manifest migrations newer than the portal's version,
//! each exactly once (resuming at the step a crash interrupted).

use std::collections::BTreeSet;
use std::sync::Arc;

use client::{Batch, CommandOutcome};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use store::{InboxEvent, Job, MigrationState, PortalStatus, Store, TokenSet, VerifiedInstall};
use wire::{AccessToken, ApplicationToken, MemberId, PortalDomain, RefreshToken};

use crate::NowFn;
use crate::config::Config;
use crate::dispatch::INSTALLER_POST;
use crate::reconcile::{self, Probe, ReconcileOptions};
use crate::runner::{JobError, JobHandler};

/// Shared by the lifecycle job handlers.
pub struct Lifecycle {
    pub store: Store,
    pub client: client::Client,
    pub config: Arc<Config>,
    pub now: NowFn,
    pub reconcile: ReconcileOptions,
}

/// The outcome of a bring-up, for the audit log and the CLI.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BringUp {
    pub bound: usize,
    pub unbound: usize,
    pub failed: usize,
    pub unsatisfiable: usize,
    pub foreign: usize,
    pub deferred: usize,
    pub migrations: Vec<String>,
    pub requests: usize,
    /// The REST calls of the plan, one line each (`event.bind {…}`): what a
    /// dry run would do; also recorded for a real run.
    pub plan: Vec<String>,
    /// Why each unsatisfiable binding cannot be had.
    pub unsatisfiable_reasons: Vec<String>,
}

/// Why an install was refused: a fact about the request, not a fault to
/// retry.
fn rejected(reason: &str) -> Result<Verdict, JobError> {
    Ok(Verdict::Rejected(reason.to_owned()))
}

enum Verdict {
    Verified {
        client_endpoint: String,
        server_endpoint: String,
    },
    Rejected(String),
}

fn retry(e: impl std::fmt::Display) -> JobError {
    JobError::retry(e.to_string())
}

/// Maps a client error to a job outcome: transient faults retry, a portal
/// that is gone or refuses us is permanent.
pub(crate) fn client_failure(e: client::Error) -> JobError {
    use client::Error as E;
    match &e {
        E::PortalInactive { .. }
        | E::UnknownPortal(_)
        | E::NoCredentials(_)
        | E::NeedsReauth(_) => JobError::permanent(e.to_string()),
        E::HostNotAllowed(_) | E::Invalid(_) | E::Config(_) => JobError::permanent(e.to_string()),
        E::CircuitOpen { until_ms, .. } => JobError::Retry {
            reason: e.to_string(),
            after: Some(std::time::Duration::from_millis(
                (*until_ms
                    - std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64))
                .clamp(1_000, 3_600_000) as u64,
            )),
        },
        E::OperatingLimit { reset_at, .. } => JobError::Retry {
            reason: e.to_string(),
            after: Some(std::time::Duration::from_secs(
                (*reset_at
                    - (std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64)))
                .clamp(1, 3600) as u64,
            )),
        },
        _ => JobError::retry(e.to_string()),
    }
}

/// The inbox row a lifecycle job is about (`{"inbox_id": …}` in its payload).
pub(crate) async fn job_inbox_row(store: &Store, job: &Job) -> Result<InboxEvent, JobError> {
    let Some(inbox_id) = job.payload_json()["inbox_id"].as_i64() else {
        return Err(JobError::permanent(format!(
            "{} job without inbox_id",
            job.kind
        )));
    };
    store
        .get_inbox(inbox_id)
        .await
        .map_err(retry)?
        .ok_or_else(|| JobError::permanent(format!("{} event no longer in the inbox", job.kind)))
}

/// The row's sealed secrets as JSON (`null` when it carries none).
pub(crate) fn row_secrets(store: &Store, row: &InboxEvent) -> Result<Value, JobError> {
    Ok(store
        .inbox_secrets(row)
        .map_err(retry)?
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null))
}

fn host_of(url: &str) -> Option<(String, String)> {
    let u = url::Url::parse(url).ok()?;
    Some((u.scheme().to_owned(), u.host_str()?.to_ascii_lowercase()))
}

impl Lifecycle {
    fn allowed_endpoint(&self, url: &str) -> bool {
        match host_of(url) {
            Some((scheme, host)) => {
                (scheme == "https" || (scheme == "http" && self.config.server.allow_insecure_http))
                    && self.config.domain_allowed(&host)
            }
            None => false,
        }
    }

    async fn audit(&self, member_id: &str, action: &str, outcome: &str, detail: Value) {
        let entry = store::NewAudit {
            member_id: Some(member_id),
            actor: "engine",
            action,
            outcome,
            detail,
        };
        if let Err(e) = self.store.append_audit(&entry, (self.now)()).await {
            tracing::warn!(error = %e, "audit append failed");
        }
    }

    /// Checks an install's access token with the OAuth server (never with a
    /// host from the request).
    async fn verify(
        &self,
        member_id: &MemberId,
        domain: &PortalDomain,
        access: &AccessToken,
        claimed_endpoint: &str,
    ) -> Result<Verdict, JobError> {
        if !self.config.domain_allowed(domain.host()) {
            return rejected("portal domain is not in app.allowed_domains");
        }
        if !self.allowed_endpoint(claimed_endpoint) {
            return rejected("client_endpoint host is not allowed");
        }
        let info = match self.client.oauth_app_info(access).await {
            Ok(v) => v,
            Err(client::Error::Api { error, .. }) => {
                let _ = error;
                return rejected("the OAuth server does not know this token");
            }
            Err(e @ client::Error::HostNotAllowed(_)) => {
                return Err(JobError::permanent(e.to_string()));
            }
            Err(e) => return Err(retry(e)),
        };
        let s = |v: &Value| v.as_str().map(str::to_ascii_lowercase);
        if s(&info["client_id"]).as_deref() != Some(&self.config.app.client_id.to_ascii_lowercase())
        {
            return rejected("token belongs to another application");
        }
        let install = &info["install"];
        if s(&install["member_id"]).as_deref() != Some(member_id.as_str()) {
            return rejected("token belongs to another portal (member_id differs)");
        }
        if s(&install["domain"]).as_deref() != Some(domain.as_str()) {
            return rejected("token belongs to another portal (domain differs)");
        }
        // The OAuth server's word on the endpoint wins over the request's.
        let client_endpoint = install["client_endpoint"]
            .as_str()
            .unwrap_or(claimed_endpoint)
            .to_owned();
        if !self.allowed_endpoint(&client_endpoint) {
            return rejected("client_endpoint host is not allowed");
        }
        let server_endpoint = format!("{}/rest/", self.config.app.oauth_url.trim_end_matches('/'));
        Ok(Verdict::Verified {
            client_endpoint,
            server_endpoint,
        })
    }

    /// The install job: verify, record, bring up.
    pub async fn install(&self, job: &Job) -> Result<(), JobError> {
        let row = job_inbox_row(&self.store, job).await?;
        let inbox_id = row.id;
        if row.state == "processed" || row.state == "rejected" {
            return Ok(());
        }
        let p = row.payload_json();
        let secrets = row_secrets(&self.store, &row)?;
        let installer = row.event == INSTALLER_POST;
        let (domain, claimed_endpoint) = if installer {
            (p["domain"].as_str(), p["client_endpoint"].as_str())
        } else {
            (
                p["auth"]["domain"].as_str(),
                p["auth"]["client_endpoint"].as_str(),
            )
        };
        let now = (self.now)();
        let member_id =
            MemberId::parse(&row.member_id).map_err(|e| JobError::permanent(e.to_string()))?;
        let domain = domain.and_then(|d| PortalDomain::parse(d).ok());
        let access = secrets["access_token"]
            .as_str()
            .and_then(|t| AccessToken::parse(t).ok());
        let refresh = secrets["refresh_token"]
            .as_str()
            .and_then(|t| RefreshToken::parse(t).ok());
        let app_token = secrets["application_token"]
            .as_str()
            .and_then(|t| ApplicationToken::parse(t).ok());
        let (Some(domain), Some(access), Some(refresh), Some(claimed)) =
            (domain, access, refresh, claimed_endpoint)
        else {
            return self
                .refuse(
                    inbox_id,
                    &row.member_id,
                    "install carries no complete token set",
                )
                .await;
        };
        if !installer && app_token.is_none() {
            return self
                .refuse(
                    inbox_id,
                    &row.member_id,
                    "install event without application token",
                )
                .await;
        }
        let expires_at = match secrets["expires"].as_i64() {
            Some(abs) => abs * 1000,
            None => now + secrets["expires_in"].as_i64().unwrap_or(3600) * 1000,
        };
        let (client_endpoint, server_endpoint) =
            match self.verify(&member_id, &domain, &access, claimed).await? {
                Verdict::Verified {
                    client_endpoint,
                    server_endpoint,
                } => (client_endpoint, server_endpoint),
                Verdict::Rejected(reason) => {
                    return self.refuse(inbox_id, &row.member_id, &reason).await;
                }
            };
        let scope = p["auth"]["scope"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let tokens = TokenSet {
            access,
            refresh,
            expires_at,
            scope,
            user_id: p["auth"]["user_id"].as_i64(),
        };
        let status = if installer {
            p["status"].as_str()
        } else {
            p["auth"]["status"].as_str()
        };
        let language = if installer {
            p["lang"].as_str().map(str::to_owned)
        } else {
            p["data"]["LANGUAGE_ID"].as_str().map(str::to_owned)
        };
        let outcome = self
            .store
            .record_verified_install(
                &VerifiedInstall {
                    member_id: &member_id,
                    domain: &domain,
                    client_endpoint: &client_endpoint,
                    server_endpoint: &server_endpoint,
                    application_token: app_token.as_ref(),
                    flow: if installer { "installer" } else { "event" },
                    app_status: status,
                    language: language.as_deref(),
                    tokens: &tokens,
                },
                now,
            )
            .await;
        match outcome {
            Ok(_) => {}
            Err(e @ store::StoreError::InvalidTransition { .. }) => {
                return Err(JobError::permanent(e.to_string()));
            }
            Err(e) => return Err(retry(e)),
        }
        let up = self.bring_up(&member_id, true).await?;
        self.store
            .set_status(
                member_id.as_str(),
                PortalStatus::Installed,
                None,
                "engine",
                (self.now)(),
            )
            .await
            .map_err(retry)?;
        self.audit(
            member_id.as_str(),
            "install.completed",
            "ok",
            serde_json::to_value(&up).unwrap_or(Value::Null),
        )
        .await;
        self.store
            .finish_inbox(inbox_id, "processed", (self.now)())
            .await
            .map_err(retry)?;
        Ok(())
    }

    async fn refuse(&self, inbox_id: i64, member_id: &str, reason: &str) -> Result<(), JobError> {
        tracing::warn!(reason, "install refused");
        self.audit(
            member_id,
            "install.rejected",
            "rejected",
            json!({"reason": reason}),
        )
        .await;
        self.store
            .finish_inbox(inbox_id, "rejected", (self.now)())
            .await
            .map_err(retry)?;
        Ok(())
    }

    /// `ONAPPUPDATE` (or a version bump without it): new tokens if the event
    /// carried them, then bring-up.
    pub async fn update(&self, job: &Job) -> Result<(), JobError> {
        let row = job_inbox_row(&self.store, job).await?;
        let inbox_id = row.id;
        if row.state == "processed" || row.state == "rejected" {
            return Ok(());
        }
        let member_id =
            MemberId::parse(&row.member_id).map_err(|e| JobError::permanent(e.to_string()))?;
        let secrets = row_secrets(&self.store, &row)?;
        let now = (self.now)();
        if let (Some(a), Some(r)) = (
            secrets["access_token"]
                .as_str()
                .and_then(|t| AccessToken::parse(t).ok()),
            secrets["refresh_token"]
                .as_str()
                .and_then(|t| RefreshToken::parse(t).ok()),
        ) {
            let p = row.payload_json();
            let tokens = TokenSet {
                access: a,
                refresh: r,
                expires_at: secrets["expires"]
                    .as_i64()
                    .map_or(now + 3_600_000, |e| e * 1000),
                scope: String::new(),
                user_id: p["auth"]["user_id"].as_i64(),
            };
            self.store
                .save_credentials(member_id.as_str(), &tokens, now)
                .await
                .map_err(retry)?;
        }
        self.bring_up_audited(&member_id, "update.completed")
            .await?;
        self.store
            .finish_inbox(inbox_id, "processed", (self.now)())
            .await
            .map_err(retry)?;
        Ok(())
    }

    /// The reconcile job (`{member_id}`): drift check, schedule, CLI.
    pub async fn reconcile_job(&self, job: &Job) -> Result<(), JobError> {
        let Some(m) = job.payload_json()["member_id"].as_str().map(str::to_owned) else {
            return Err(JobError::permanent("reconcile job without member_id"));
        };
        let member_id = MemberId::parse(&m).map_err(|e| JobError::permanent(e.to_string()))?;
        self.bring_up_audited(&member_id, "reconcile.completed")
            .await?;
        Ok(())
    }

    /// Probe, reconcile and migrate one portal; with `apply` false nothing is
    /// changed on the portal (dry run) and the plan is returned in `BringUp`.
    pub async fn bring_up(&self, member_id: &MemberId, apply: bool) -> Result<BringUp, JobError> {
        self.bring_up_with(member_id, apply, None).await
    }

    /// [`Lifecycle::bring_up`] that applies and appends the audit entry
    /// `action` (outcome `ok`, the [`BringUp`] as detail) with what it
    /// records — in the same transaction when no migration is configured.
    pub async fn bring_up_audited(
        &self,
        member_id: &MemberId,
        action: &str,
    ) -> Result<BringUp, JobError> {
        self.bring_up_with(member_id, true, Some(action)).await
    }

    async fn bring_up_with(
        &self,
        member_id: &MemberId,
        apply: bool,
        audit: Option<&str>,
    ) -> Result<BringUp, JobError> {
        let portal = self.client.portal(member_id);
        let mut probe_batch = Batch::new()
            .add("scope", "scope", json!({}))
            .add("events", "events", json!({}))
            .add(
                "feature_offline",
                "feature.get",
                json!({"CODE": "rest_offline_extended"}),
            )
            .add(
                "feature_connector",
                "feature.get",
                json!({"CODE": "rest_auth_connector"}),
            )
            .add("app", "app.info", json!({}))
            .add("event_get", "event.get", json!({}))
            .add("placement_get", "placement.get", json!({}));
        let methods: BTreeSet<String> = self
            .config
            .migrations
            .iter()
            .flat_map(|m| m.steps.iter().map(|s| s.method.to_ascii_lowercase()))
            .collect();
        for (i, m) in methods.iter().enumerate() {
            probe_batch.push(format!("method{i}"), "method.get", json!({"name": m}));
        }
        let out = portal.batch(&probe_batch).await.map_err(client_failure)?;
        let mut up = BringUp {
            requests: out.requests,
            ..BringUp::default()
        };
        let ok = |k: &str| match out.get(k) {
            Some(CommandOutcome::Ok { result, .. }) => Some(result.clone()),
            _ => None,
        };
        let strings = |v: Option<Value>| -> BTreeSet<String> {
            v.and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let feature = |k: &str| ok(k).is_some_and(|v| v["value"].as_str() == Some("Y"));
        let probe = Probe {
            scopes: strings(ok("scope"))
                .into_iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            events: ok("events").map(|v| {
                strings(Some(v))
                    .into_iter()
                    .map(|s| s.to_ascii_uppercase())
                    .collect()
            }),
            offline_extended: feature("feature_offline"),
            auth_connector: feature("feature_connector"),
        };
        let app = ok("app").unwrap_or(Value::Null);
        let mut method_map = serde_json::Map::new();
        for (i, m) in methods.iter().enumerate() {
            if let Some(v) = ok(&format!("method{i}")) {
                method_map.insert(
                    m.clone(),
                    json!(v["isAvailable"].as_bool().unwrap_or(false)),
                );
            }
        }
        let profile = json!({
            "features": {"rest_offline_extended": probe.offline_extended, "rest_auth_connector": probe.auth_connector},
            "events": probe.events,
            "methods": method_map,
            "app": app,
        });
        let license = app["LICENSE"].as_str().map(str::to_owned);
        let plan_text = match app["LICENSE_FAMILY"].as_str().or(license.as_deref()) {
            Some(l) if l.to_ascii_lowercase().starts_with("ent") => "enterprise",
            _ => "standard",
        };
        let scopes: Vec<wire::Scope> = probe
            .scopes
            .iter()
            .filter_map(|s| wire::Scope::parse(s).ok())
            .collect();
        let probed = store::ProbedProfile {
            scopes: &scopes,
            profile: &profile,
            plan: plan_text,
            license: license.as_deref(),
        };
        let mut actual = reconcile::parse_event_get(&ok("event_get").unwrap_or(Value::Null));
        actual.extend(reconcile::parse_placement_get(
            &ok("placement_get").unwrap_or(Value::Null),
        ));
        let desired = reconcile::desired(&self.config, &probe, &self.reconcile);
        let plan = reconcile::plan(
            &self.config,
            &desired,
            &actual,
            self.config.reconcile.max_unbind_per_run as usize,
        );
        up.unsatisfiable = plan.unsatisfiable.len();
        up.foreign = plan.foreign.len();
        up.deferred = plan.deferred.len();
        up.plan = plan
            .bind
            .iter()
            .map(reconcile::bind_command)
            .chain(plan.unbind.iter().map(reconcile::unbind_command))
            .map(|(m, p)| format!("{m} {p}"))
            .collect();
        up.unsatisfiable_reasons = plan
            .unsatisfiable
            .iter()
            .map(|d| {
                format!(
                    "{} {}: {}",
                    d.key.name,
                    d.key.mode,
                    d.unsatisfiable.as_deref().unwrap_or("")
                )
            })
            .collect();
        if !apply {
            up.bound = plan.bind.len();
            up.unbound = plan.unbind.len();
            return Ok(up);
        }
        let mut changes = Batch::new();
        for (i, d) in plan.bind.iter().enumerate() {
            let (m, p) = reconcile::bind_command(d);
            changes.push(format!("b{i}"), m, p);
        }
        for (i, a) in plan.unbind.iter().enumerate() {
            let (m, p) = reconcile::unbind_command(a);
            changes.push(format!("u{i}"), m, p);
        }
        let mut bound = Vec::new();
        let mut unbound = Vec::new();
        if !changes.is_empty() {
            let out = match portal.batch(&changes).await {
                Ok(out) => out,
                Err(e) => {
                    // The probe's findings stand even though the binds did
                    // not go through.
                    if let Err(e) = self
                        .store
                        .update_profile(
                            member_id.as_str(),
                            &scopes,
                            &profile,
                            plan_text,
                            license.as_deref(),
                            (self.now)(),
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "recording the probe failed");
                    }
                    return Err(client_failure(e));
                }
            };
            up.requests += out.requests;
            for (i, d) in plan.bind.iter().enumerate() {
                let r = match out.get(&format!("b{i}")) {
                    Some(CommandOutcome::Ok { .. }) => Ok(()),
                    Some(CommandOutcome::Err(e)) if reconcile::already_bound(e) => Ok(()),
                    Some(CommandOutcome::Err(e)) => {
                        Err(format!("{}: {}", e.code.as_str(), e.description))
                    }
                    _ => Err("not run".to_owned()),
                };
                if r.is_ok() {
                    up.bound += 1;
                } else {
                    up.failed += 1;
                }
                bound.push((d.key.clone(), r));
            }
            for (i, a) in plan.unbind.iter().enumerate() {
                let r = match out.get(&format!("u{i}")) {
                    Some(CommandOutcome::Ok { .. }) => Ok(()),
                    Some(CommandOutcome::Err(e)) => {
                        Err(format!("{}: {}", e.code.as_str(), e.description))
                    }
                    _ => Err("not run".to_owned()),
                };
                if r.is_ok() {
                    up.unbound += 1;
                }
                unbound.push((a.key.clone(), r));
            }
        }
        let records = reconcile::records(&plan, &bound, &unbound);
        let mut record = store::BringUpRecord {
            member_id: member_id.as_str(),
            profile: Some(probed),
            bindings: &records,
            version: None,
            audit: None,
        };
        if self.config.migrations.is_empty() {
            // Nothing to migrate: probe, bindings, version and the audit
            // entry in one transaction.
            record.version = Some(self.config.app.version);
            record.audit = audit.map(|action| store::NewAudit {
                member_id: Some(member_id.as_str()),
                actor: "engine",
                action,
                outcome: "ok",
                detail: serde_json::to_value(&up).unwrap_or(Value::Null),
            });
            self.store
                .record_bring_up(&record, (self.now)())
                .await
                .map_err(retry)?;
            return Ok(up);
        }
        self.store
            .record_bring_up(&record, (self.now)())
            .await
            .map_err(retry)?;
        up.migrations = self.migrate(member_id).await?;
        self.store
            .set_installed_version(member_id.as_str(), self.config.app.version, (self.now)())
            .await
            .map_err(retry)?;
        if let Some(action) = audit {
            self.audit(
                member_id.as_str(),
                action,
                "ok",
                serde_json::to_value(&up).unwrap_or(Value::Null),
            )
            .await;
        }
        Ok(up)
    }

    /// Runs the manifest migrations not yet applied to this portal, in
    /// version order, each exactly once; a crash resumes at its next step.
    async fn migrate(&self, member_id: &MemberId) -> Result<Vec<String>, JobError> {
        let portal = self.client.portal(member_id);
        let mut migrations: Vec<_> = self.config.migrations.iter().collect();
        migrations.sort_by_key(|m| m.version);
        let mut applied = Vec::new();
        for m in migrations {
            let start = match self
                .store
                .migration_state(member_id.as_str(), &m.id)
                .await
                .map_err(retry)?
            {
                MigrationState::Applied => continue,
                MigrationState::NotStarted => 0,
                MigrationState::Running { step } => step.max(0) as usize,
            };
            for (i, step) in m.steps.iter().enumerate().skip(start) {
                let params = serde_json::to_value(&step.params).unwrap_or(Value::Null);
                // Steps are idempotent by contract, so a step cut off by a
                // crash may run again.
                portal
                    .call_with(
                        &step.method,
                        params,
                        &client::CallOptions {
                            idempotent: Some(true),
                            deadline: None,
                        },
                    )
                    .await
                    .map_err(client_failure)?;
                self.store
                    .migration_progress(
                        member_id.as_str(),
                        &m.id,
                        m.version,
                        i as i64 + 1,
                        (self.now)(),
                    )
                    .await
                    .map_err(retry)?;
            }
            self.store
                .migration_applied(member_id.as_str(), &m.id, m.version, (self.now)())
                .await
                .map_err(retry)?;
            self.audit(
                member_id.as_str(),
                "migration.applied",
                "ok",
                json!({"id": m.id, "version": m.version}),
            )
            .await;
            applied.push(m.id.clone());
        }
        Ok(applied)
    }
}

/// A job handler bound to one lifecycle step.
pub struct Step {
    pub lifecycle: Arc<Lifecycle>,
    pub kind: &'static str,
    pub schedule: crate::retry::RetrySchedule,
}

impl JobHandler for Step {
    fn run<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            match self.kind {
                crate::dispatch::kinds::INSTALL => self.lifecycle.install(job).await,
                crate::dispatch::kinds::UPDATE => self.lifecycle.update(job).await,
                crate::dispatch::kinds::RECONCILE => self.lifecycle.reconcile_job(job).await,
                other => Err(JobError::permanent(format!("no lifecycle step `{other}`"))),
            }
        })
    }

    fn schedule(&self) -> crate::retry::RetrySchedule {
        self.schedule.clone()
    }
}
