//! Method confirmation (protocol §9): some methods need an admin's approval
//! per access token. A call that gets `METHOD_CONFIRM_WAITING` is parked —
//! method, params, and the sealed token it was made with — and answered
//! `202` with the pending call's id. When `ONAPPMETHODCONFIRM` arrives (its
//! application token verified at ingest), `CONFIRMED=1` re-runs the parked
//! calls for that method and token **with that same token** (approval binds
//! to it, so it is not refreshed; an expired one fails with that reason),
//! `CONFIRMED=0` marks them denied. Either outcome reaches the app as a
//! `b24gate.method_confirm` event on every target.

use futures::future::BoxFuture;
use serde_json::{Value, json};
use store::{Job, NewInboxEvent, Store};
use wire::{AccessToken, MemberId};

use crate::NowFn;
use crate::runner::{JobError, JobHandler};

/// The inbox event that tells the app how a parked call ended.
pub const OUTCOME_EVENT: &str = "b24gate.method_confirm";

/// How a proxied REST call ended.
#[derive(Debug)]
pub enum ProxyOutcome {
    Done(client::Success),
    /// Parked on `METHOD_CONFIRM_WAITING`: the pending call's id.
    Parked(i64),
    Failed(client::Error),
}

/// Runs one REST call for the admin API's proxy, parking it when the portal
/// asks for an admin's confirmation.
pub async fn proxy_call(
    store: &Store,
    client: &client::Client,
    now: &NowFn,
    member_id: &MemberId,
    method: &str,
    params: Value,
) -> ProxyOutcome {
    match client.portal(member_id).call(method, params.clone()).await {
        Ok(s) => ProxyOutcome::Done(s),
        Err(client::Error::ConfirmationWaiting(c)) => {
            // The token the call went out with is the stored one (the
            // fingerprint tells if a refresh slipped in between).
            let creds = match store.load_credentials(member_id.as_str()).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    return ProxyOutcome::Failed(client::Error::NoCredentials(member_id.clone()));
                }
                Err(e) => {
                    return ProxyOutcome::Failed(client::Error::Env(client::EnvError::new(e)));
                }
            };
            if store
                .keys()
                .fingerprint(creds.tokens.access.expose_secret())
                != c.token_fingerprint
            {
                return ProxyOutcome::Failed(client::Error::Invalid(
                    "the access token changed while the call waited for confirmation; call again"
                        .into(),
                ));
            }
            match store
                .park_call(
                    member_id.as_str(),
                    &c.method,
                    &params,
                    creds.tokens.access.expose_secret(),
                    creds.tokens.expires_at,
                    now(),
                )
                .await
            {
                Ok(id) => ProxyOutcome::Parked(id),
                Err(e) => ProxyOutcome::Failed(client::Error::Env(client::EnvError::new(e))),
            }
        }
        Err(e) => ProxyOutcome::Failed(e),
    }
}

/// The `method_confirm` job handler.
pub struct Confirmer {
    pub store: Store,
    pub client: client::Client,
    pub now: NowFn,
}

fn retry(e: impl std::fmt::Display) -> JobError {
    JobError::retry(e.to_string())
}

impl Confirmer {
    async fn decide(&self, job: &Job) -> Result<(), JobError> {
        let row = crate::lifecycle::job_inbox_row(&self.store, job).await?;
        let inbox_id = row.id;
        if row.state != "dispatched" {
            return Ok(());
        }
        let p = row.payload_json();
        let secrets = crate::lifecycle::row_secrets(&self.store, &row)?;
        let token = secrets["method_token"]
            .as_str()
            .and_then(|t| AccessToken::parse(t).ok());
        let method = p["data"]["METHOD"].as_str().unwrap_or_default().to_owned();
        let confirmed = matches!(
            p["data"]["CONFIRMED"].as_str(),
            Some("1" | "Y" | "y" | "true")
        );
        let Some(token) = token else {
            self.store
                .finish_inbox(inbox_id, "rejected", (self.now)())
                .await
                .map_err(retry)?;
            return Ok(());
        };
        let member_id =
            MemberId::parse(&row.member_id).map_err(|e| JobError::permanent(e.to_string()))?;
        let fp = self.store.keys().fingerprint(token.expose_secret());
        let calls = self
            .store
            .waiting_calls(member_id.as_str(), &method, &fp)
            .await
            .map_err(retry)?;
        let mut outcomes = Vec::new();
        for call in calls {
            let now = (self.now)();
            if !confirmed {
                if self
                    .store
                    .settle_call(call.id, "waiting", "denied", None, now)
                    .await
                    .map_err(retry)?
                {
                    outcomes.push(json!({"id": call.id, "method": call.method, "state": "denied"}));
                }
                continue;
            }
            // Claim it first, so a repeat of this job never runs it twice.
            if !self
                .store
                .settle_call(call.id, "waiting", "confirmed", None, now)
                .await
                .map_err(retry)?
            {
                continue;
            }
            let pinned = self.store.pending_call_token(&call).await.map_err(retry)?;
            let pinned =
                AccessToken::parse(&pinned).map_err(|e| JobError::permanent(e.to_string()))?;
            let params: Value = serde_json::from_str(&call.params).unwrap_or(Value::Null);
            let (state, result) = match self
                .client
                .portal(&member_id)
                .call_pinned(&call.method, params, &pinned)
                .await
            {
                Ok(s) => ("done", json!({"result": s.result})),
                Err(e) => ("failed", json!({"error": e.to_string()})),
            };
            self.store
                .settle_call(
                    call.id,
                    "confirmed",
                    state,
                    Some(&result.to_string()),
                    (self.now)(),
                )
                .await
                .map_err(retry)?;
            outcomes.push(
                json!({"id": call.id, "method": call.method, "state": state, "outcome": result}),
            );
        }
        // Tell the app, through the inbox like any event.
        for o in &outcomes {
            let key = format!("confirm:{}:{}", row.id, o["id"]);
            let payload = json!({"event": OUTCOME_EVENT, "data": o});
            self.store
                .append_inbox(
                    &[NewInboxEvent {
                        member_id: member_id.as_str(),
                        dedupe_key: &key,
                        event: OUTCOME_EVENT,
                        source: "gateway",
                        verified: true,
                        ts: None,
                        payload: &payload,
                        secrets: None,
                    }],
                    (self.now)(),
                )
                .await
                .map_err(retry)?;
        }
        self.store
            .finish_inbox(inbox_id, "processed", (self.now)())
            .await
            .map_err(retry)?;
        Ok(())
    }
}

impl JobHandler for Confirmer {
    fn run<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(self.decide(job))
    }
}
