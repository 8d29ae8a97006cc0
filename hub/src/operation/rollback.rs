//! Rolling an app back to a history entry: the entry's kept bundle is checked
//! against the app's AppProject as it is now, automated sync is switched off (as
//! Argo CD does), and the bundle is signed again under a new generation, which
//! the caller then syncs with [`Operations::sync_cluster`].

use std::sync::Arc;
use std::time::SystemTime;

use flotilla_common::bundle::{Bundle, Envelope};
use flotilla_common::model::{AppRef, Timestamp};
use tracing::info;

use super::{Error, Operations, Result};
use crate::bundles::Issuer;
use crate::refresh;

/// A rollback issued as a new generation, not yet synced.
#[derive(Debug)]
pub struct Rollback {
    /// The cluster the history entry was synced to.
    pub cluster: String,
    /// The generation the entry's bundle was issued as.
    pub generation: u64,
    /// Whether automated sync was on, and is now off.
    pub automated_switched_off: bool,
    /// What was done, for the user and the audit log.
    pub message: String,
}

impl Operations {
    /// Re-issues the bundle of history entry `id` of `app` as a new generation
    /// for the entry's cluster, after switching automated sync off. A refused
    /// rollback leaves the app as it was.
    pub async fn roll_back(&self, app: &AppRef, id: u64) -> Result<Rollback> {
        let mut record = self.app(app)?;
        self.link()?;
        let entry = self
            .store
            .history_entry(&app.project, &app.name, id)?
            .ok_or_else(|| Error::HistoryEntryNotFound {
                app: app.clone(),
                id,
            })?;
        let kept = self
            .store
            .history_bundle(&app.project, &app.name, id)?
            .ok_or_else(|| Error::HistoryBundleGone {
                app: app.clone(),
                id,
            })?;
        let kept = Envelope::decode(&kept)
            .ok()
            .and_then(|e| Bundle::decode(&e.payload).ok())
            .ok_or_else(|| Error::HistoryBundleUndecodable {
                app: app.clone(),
                id,
            })?;
        let cluster = entry.cluster.clone();
        self.refuse_if_busy(app, &cluster)?;
        let issuer = match &self.refresher {
            Some(refresher) => refresher.issuer().clone(),
            None => Arc::new(Issuer::new(self.store.clone()).await?),
        };
        let refused = |e: refresh::Error| match e {
            source @ refresh::Error::Refused { .. } => Error::RollbackRefused {
                app: app.clone(),
                id,
                cluster: cluster.clone(),
                source: Box::new(source),
            },
            e => Error::Issue(Box::new(e)),
        };
        // The kept bundle passed the project as it was then; it is signed again
        // only if it passes the project as it is now. Checked before anything
        // changes, so a refused rollback leaves the app as it was.
        refresh::recheck_bundle(&self.store, &record.application, &mut kept.clone())
            .map_err(refused)?;
        let was_automated = record.application.automated().is_some();
        if was_automated {
            if let Some(policy) = record.application.spec.sync_policy.as_mut() {
                policy.automated = None;
            }
            self.store.put_app(&record).await?;
        }
        // A new generation, or the agent refuses it as stale; no automation, or
        // the agent would not wait for the sync command (nor stay rolled back).
        // The issuer allocates it, so a refresh storing a bundle at the same
        // moment takes another generation, never this one.
        let now = SystemTime::now();
        let issued = issuer
            .issue(app, &cluster, |generation, _| {
                let mut bundle = Bundle {
                    generation,
                    created_at: Timestamp::from_system_time(now),
                    not_after: Timestamp::from_system_time(now)
                        .saturating_add(refresh::DEFAULT_BUNDLE_TTL),
                    ..kept.clone()
                };
                bundle.policy.automated = None;
                // Again, in case the project changed meanwhile: the bundle
                // carries the rules in force when it is signed.
                refresh::recheck_bundle(&self.store, &record.application, &mut bundle)?;
                Ok::<_, refresh::Error>(Some(bundle))
            })
            .await
            .map_err(|e| refused(refresh::issue_error(e)))?;
        let generation = issued.expect("invariant: a rollback always drafts a bundle");
        let mut message = format!(
            "rolling {app} back to history entry {id} (revision {}) on cluster {cluster} as generation {generation}",
            entry.revision
        );
        if was_automated {
            message
                .push_str("; automated sync is now off for this app, as Argo CD does on rollback");
        }
        info!(app = %app, %cluster, generation, id, "rollback");
        Ok(Rollback {
            cluster,
            generation,
            automated_switched_off: was_automated,
            message,
        })
    }
}
