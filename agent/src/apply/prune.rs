//! Deleting what an app owns: objects that left the bundle (prune), and every
//! object of a deleted app. Only objects in the app's inventory that still carry
//! its label are ever deleted.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use flotilla_common::bundle::{Bundle, Object};
use flotilla_common::message::ResourceStatus;
use flotilla_common::model::{AppRef, Health, ResourceRef, SyncStatus};
use kube::api::{DeleteParams, PropagationPolicy};
use tracing::warn;

use super::{
    APP_LABEL, Applier, Error, Outcome, Result, SyncReport, SyncRequest, app_label, describe,
    is_not_found, option_value, rejected,
};
use crate::store::Owned;

/// What a user must do before a `Prune=confirm` object is pruned.
pub const WAITING_FOR_PRUNE_CONFIRMATION: &str =
    "Prune=confirm: waiting for confirmation (flotilla app confirm, or app sync --confirm)";
/// What a user must do before a `Delete=confirm` object is deleted with its app.
pub const WAITING_FOR_DELETE_CONFIRMATION: &str =
    "Delete=confirm: kept; deleting it needs a confirmed delete (flotilla app delete --confirm)";

/// Why an owned object that left the bundle must stay, if it must: its own
/// `Prune`/`Delete` options, and whether a user confirmed.
pub(super) fn held_back(o: &Owned, bundle: &Bundle, request: &SyncRequest) -> Option<String> {
    let why = match &bundle.policy.deletion {
        Some(_) if !o.delete => "Delete=false",
        Some(deletion) if o.delete_confirm && !deletion.confirmed => {
            WAITING_FOR_DELETE_CONFIRMATION
        }
        Some(_) => return None,
        None if !o.prune => "Prune=false",
        None if o.prune_confirm && !request.confirm => WAITING_FOR_PRUNE_CONFIRMATION,
        None => return None,
    };
    Some(why.to_owned())
}

impl Applier {
    /// Deletes objects that left the bundle: only those in the app's inventory
    /// that still carry this app's label, never `Prune=false` ones nor unconfirmed
    /// `Prune=confirm` ones, and never everything at once without allowEmpty. A
    /// deletion bundle (the app is deleted with cascade) keeps `Delete=false`
    /// objects and, unless confirmed, `Delete=confirm` ones.
    ///
    /// Runs twice per sync: before PostSync for most objects, and after it
    /// (`last`) for those marked `PruneLast=true`, on the object or for the app.
    pub(super) async fn prune(
        &self,
        bundle: &Bundle,
        request: &SyncRequest,
        report: &mut SyncReport,
        last: bool,
    ) -> Result<(), Outcome> {
        let fail = |e: Error| Outcome::Failed {
            resource: None,
            message: e.to_string(),
        };
        let automated = bundle.policy.automated.clone().unwrap_or_default();
        let (mut stay, leaving) = self.leaving(bundle, request).map_err(fail)?;
        let app_last = super::has_option(bundle, None, "PruneLast=true");
        let (leaving, later): (Vec<Owned>, Vec<Owned>) = leaving
            .into_iter()
            .partition(|o| (app_last || o.prune_last) == last);
        if leaving.is_empty() {
            return Ok(());
        }
        stay.extend(later);
        let desired_empty = !bundle.objects.iter().any(|o| o.hook.is_none());
        if !automated.prune && !request.prune {
            for o in &leaving {
                report
                    .kept
                    .push((o.resource.clone(), "requires pruning; prune is off".into()));
            }
            return Ok(());
        }
        if desired_empty && !automated.allow_empty {
            for o in &leaving {
                report.kept.push((
                    o.resource.clone(),
                    "the bundle is empty and allowEmpty is off".into(),
                ));
            }
            return Err(fail(Error::PruneAllRefused {
                count: leaving.len(),
            }));
        }
        let propagation = match (
            &bundle.policy.deletion,
            option_value(bundle, "PrunePropagationPolicy"),
        ) {
            // Deleting the app: foreground, unless its finalizer says background.
            (Some(deletion), _) if deletion.background => PropagationPolicy::Background,
            (Some(_), _) => PropagationPolicy::Foreground,
            (None, Some("background")) => PropagationPolicy::Background,
            (None, Some("orphan")) => PropagationPolicy::Orphan,
            (None, _) => PropagationPolicy::Foreground,
        };
        let label = app_label(&bundle.app);
        let mut remaining = stay;
        for o in leaving {
            if let Some(why) = held_back(&o, bundle, request) {
                report.kept.push((o.resource.clone(), why));
                remaining.push(o);
                continue;
            }
            match self
                .prune_one(&o.resource, &label, propagation.clone())
                .await
            {
                Ok(true) => report.pruned.push(o.resource.clone()),
                Ok(false) => report.kept.push((
                    o.resource.clone(),
                    "not labelled as this app's; left alone".into(),
                )),
                Err(e) => {
                    warn!(object = %describe(&o.resource), error = %e, "prune failed");
                    report.kept.push((o.resource.clone(), e.to_string()));
                    remaining.push(o);
                }
            }
        }
        self.store
            .set_inventory(&bundle.app, &remaining)
            .await
            .map_err(|e| fail(e.into()))?;
        Ok(())
    }

    /// What the app owns that left the bundle, split from what stays. In a
    /// selective sync only the chosen objects can leave.
    pub(super) fn leaving(
        &self,
        bundle: &Bundle,
        request: &SyncRequest,
    ) -> Result<(Vec<Owned>, Vec<Owned>)> {
        let desired: BTreeSet<ResourceRef> = bundle
            .objects
            .iter()
            .filter(|o| o.hook.is_none())
            .map(Object::resource)
            .collect();
        Ok(self
            .store
            .inventory(&bundle.app)?
            .into_iter()
            .partition(|o| {
                desired.contains(&o.resource)
                    || (!request.resources.is_empty() && !request.resources.contains(&o.resource))
            }))
    }

    /// What `app` owns that is not `desired`, as statuses saying it requires
    /// pruning.
    pub fn requiring_pruning(
        &self,
        app: &AppRef,
        desired: impl Fn(&ResourceRef) -> bool,
    ) -> Result<Vec<ResourceStatus>> {
        Ok(self
            .store
            .inventory(app)?
            .into_iter()
            .filter(|owned| !desired(&owned.resource))
            .map(|owned| ResourceStatus {
                message: Some(if owned.prune_confirm {
                    format!("requires pruning; {WAITING_FOR_PRUNE_CONFIRMATION}")
                } else if owned.ignore_extraneous {
                    "requires pruning; IgnoreExtraneous: not counted against the app".to_owned()
                } else {
                    "requires pruning".to_owned()
                }),
                sync: if owned.ignore_extraneous && !owned.prune_confirm {
                    SyncStatus::Synced
                } else {
                    SyncStatus::OutOfSync
                },
                resource: owned.resource,
                health: Health::Healthy,
            })
            .collect())
    }

    /// Deletes an app's objects, as deleting an Argo CD Application with cascade
    /// does: everything in its inventory that still carries its label, except
    /// objects marked `Delete=false`, which are left in place. The inventory is
    /// then forgotten. Returns the deleted and the kept objects.
    pub async fn delete_app(&self, app: &AppRef) -> Result<(Vec<ResourceRef>, Vec<ResourceRef>)> {
        let label = app_label(app);
        let mut deleted = Vec::new();
        let mut kept = Vec::new();
        for owned in self.store.inventory(app)? {
            if !owned.delete {
                kept.push(owned.resource);
                continue;
            }
            if self
                .prune_one(&owned.resource, &label, PropagationPolicy::Foreground)
                .await?
            {
                deleted.push(owned.resource);
            } else {
                kept.push(owned.resource);
            }
        }
        self.store.set_inventory(app, &[]).await?;
        Ok((deleted, kept))
    }

    /// Deletes one object if it is still this app's; `Ok(false)` when it is not.
    async fn prune_one(
        &self,
        resource: &ResourceRef,
        label: &str,
        propagation: PropagationPolicy,
    ) -> Result<bool> {
        let api = self.api(resource).await?;
        let rejected = rejected(resource, "delete");
        let Some(live) = api.get_opt(&resource.name).await.map_err(rejected)? else {
            return Ok(true);
        };
        if live
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(APP_LABEL))
            .map(String::as_str)
            != Some(label)
        {
            return Ok(false);
        }
        let params = DeleteParams {
            propagation_policy: Some(propagation),
            ..DeleteParams::default()
        };
        self.writes.fetch_add(1, Ordering::Relaxed);
        match api.delete(&resource.name, &params).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(true),
            Err(e) => Err(rejected(e)),
        }
    }
}
