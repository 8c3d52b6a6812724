//! `ONAPPUNINSTALL`: the application token was the only proof (no tokens
//! arrive, protocol §4.2) and the server checked it before storing the
//! delivery. From here on no REST call is made for the portal: the store
//! cancels its queued jobs and drops its credentials in the same transaction
//! that marks it uninstalled. `CLEAN` picks the retention policy; purges are
//! deterministic and idempotent, and the audit log survives them.

use futures::future::BoxFuture;
use store::{Job, Store};

use crate::NowFn;
use crate::config::{RetentionPolicy, UninstallConfig};
use crate::runner::{JobError, JobHandler};

pub struct Uninstaller {
    pub(crate) store: Store,
    pub(crate) policy: UninstallConfig,
    pub(crate) now: NowFn,
}

impl Uninstaller {
    async fn uninstall(&self, job: &Job) -> Result<(), JobError> {
        let retry = |e: store::StoreError| JobError::retry(e.to_string());
        let row = crate::lifecycle::job_inbox_row(&self.store, job).await?;
        let inbox_id = row.id;
        let clean = matches!(
            row.payload_json()["data"]["CLEAN"].as_str(),
            Some("1" | "Y" | "y" | "true")
        );
        let now = (self.now)();
        let policy = if clean {
            self.policy.on_clean
        } else {
            self.policy.on_keep
        };
        let purge_after = match policy {
            RetentionPolicy::Purge => Some(now),
            RetentionPolicy::Retain(d) => Some(now + d.as_millis() as i64),
            RetentionPolicy::Keep => None,
        };
        match self
            .store
            .mark_uninstalled(&row.member_id, clean, purge_after, now)
            .await
        {
            Ok(_) | Err(store::StoreError::PortalNotFound(_)) => {}
            Err(e @ store::StoreError::InvalidTransition { .. }) => {
                return Err(JobError::permanent(e.to_string()));
            }
            Err(e) => return Err(retry(e)),
        }
        if policy == RetentionPolicy::Purge {
            purge_due(&self.store, now).await.map_err(retry)?;
        }
        self.store
            .finish_inbox(inbox_id, "processed", now)
            .await
            .map_err(retry)?;
        Ok(())
    }
}

impl JobHandler for Uninstaller {
    fn run<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(self.uninstall(job))
    }
}

/// Purges every uninstalled portal whose retention ran out; returns how many.
pub async fn purge_due(store: &Store, now: i64) -> store::Result<usize> {
    let mut n = 0;
    for m in store.due_purges(now).await? {
        if store.purge_portal(&m, now).await? {
            n += 1;
        }
    }
    Ok(n)
}
