//! What a sync would change, without changing anything: the per-resource
//! diff of a manual app, the YAML diffs the hub shows, and the dry run of a
//! sync, each compared with a server-side apply dry run of the desired state.

use std::collections::BTreeSet;
use std::sync::Arc;

use flotilla_common::bundle::{Bundle, Object};
use flotilla_common::message::{ResourceDiff, ResourceStatus};
use flotilla_common::model::{Health, SyncStatus};
use kube::api::{Patch, PatchParams};
use serde_json::Value;

use super::live::LiveCache;
use super::prune::held_back;
use super::{
    APP_LABEL, Action, Applier, Error, FIELD_MANAGER, ObjectResult, Outcome, Result, SyncReport,
    SyncRequest, Task, app_label, describe, rejected, sync_order, to_value,
};
use crate::compare::{self, contains, without_ignored, without_server_fields};
use crate::health;

impl Applier {
    /// What the object would look like after Flotilla applied it now: a
    /// server-side apply dry run, which writes nothing.
    pub async fn dry_run(&self, bundle: &Bundle, object: &Object) -> Result<Value> {
        let resource = object.resource();
        let api = self.api(&resource).await?;
        let manifest = self.desired_manifest(bundle, object)?;
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = true;
        let applied = api
            .patch(&resource.name, &params, &Patch::Apply(&manifest))
            .await
            .map_err(rejected(&resource, "dry-run apply"))?;
        Ok(to_value(&applied, &resource.gvk))
    }

    /// What a sync would change, without changing anything: for an app with a
    /// manual sync policy the agent reports this and waits for a sync command.
    /// An object is `OutOfSync` when it is missing, differs from its desired
    /// manifest, or left the bundle but is still owned (it requires pruning).
    pub async fn diff(&self, bundle: &Bundle) -> Result<Vec<ResourceStatus>> {
        let label = app_label(&bundle.app);
        let mut live = LiveCache::default();
        let mut out = Vec::new();
        let mut desired = BTreeSet::new();
        for object in bundle.objects.iter().filter(|o| o.hook.is_none()) {
            let task = Task {
                object,
                resource: object.resource(),
                label: label.clone(),
            };
            live.load(self, &task.resource).await;
            let manifest = self.manifest(bundle, &task)?;
            let (sync, health, message) = match live.get(&task.resource)? {
                None => (
                    SyncStatus::OutOfSync,
                    Health::Missing,
                    Some("missing".to_owned()),
                ),
                Some(current) => {
                    let health = health::assess(current).health;
                    if contains(&manifest, current) {
                        (SyncStatus::Synced, health, None)
                    } else {
                        (
                            SyncStatus::OutOfSync,
                            health,
                            Some("differs from the bundle".to_owned()),
                        )
                    }
                }
            };
            desired.insert(task.resource.clone());
            out.push(ResourceStatus {
                resource: task.resource,
                sync,
                health,
                message,
            });
        }
        out.extend(self.requiring_pruning(&bundle.app, |r| desired.contains(r))?);
        Ok(out)
    }

    /// Every object whose live state differs from what a sync would make of it,
    /// as YAML with server-set fields removed on both sides: the desired side is
    /// a server-side apply dry run, so defaults the server fills in never show.
    /// A missing object has no live side; an owned object that left the bundle
    /// (it would be pruned) has no desired side. Hooks are not compared.
    pub async fn resource_diffs(&self, bundle: &Bundle) -> Result<Vec<ResourceDiff>> {
        let mut out = Vec::new();
        for object in sync_order(&bundle.objects)
            .into_iter()
            .filter(|o| o.hook.is_none())
        {
            let resource = object.resource();
            let api = self.api(&resource).await?;
            let live = api
                .get_opt(&resource.name)
                .await
                .map_err(rejected(&resource, "get"))?;
            let Some(live) = live else {
                let desired = self.desired_manifest(bundle, object)?;
                out.push(ResourceDiff {
                    resource,
                    desired: Some(to_yaml(&without_server_fields(desired))),
                    live: None,
                });
                continue;
            };
            let live = to_value(&live, &resource.gvk);
            let desired = self.dry_run(bundle, object).await?;
            if !compare::differences(bundle, &resource, &desired, &live, FIELD_MANAGER).is_empty() {
                let shown = |v: Value| {
                    to_yaml(&without_server_fields(without_ignored(
                        bundle, &resource, v,
                    )))
                };
                out.push(ResourceDiff {
                    desired: Some(shown(desired)),
                    live: Some(shown(live)),
                    resource,
                });
            }
        }
        let (_, leaving) = self.leaving(bundle, &SyncRequest::default())?;
        let label = app_label(&bundle.app);
        for owned in leaving {
            let api = self.api(&owned.resource).await?;
            let live = api.get_opt(&owned.resource.name).await.ok().flatten();
            let ours = live.as_ref().is_some_and(|l| {
                l.metadata.labels.as_ref().and_then(|m| m.get(APP_LABEL)) == Some(&label)
            });
            if let (Some(live), true) = (live, ours) {
                let live = without_server_fields(to_value(&live, &owned.resource.gvk));
                out.push(ResourceDiff {
                    resource: owned.resource,
                    desired: None,
                    live: Some(to_yaml(&live)),
                });
            }
        }
        Ok(out)
    }

    /// A sync that writes nothing: each object is compared with a server-side
    /// apply dry run of its desired state, and what would be pruned is listed.
    pub(super) async fn dry_run_sync(
        &self,
        bundle: &Bundle,
        request: &SyncRequest,
        report: &mut SyncReport,
    ) {
        let label = app_label(&bundle.app);
        let mut live = LiveCache::default();
        let objects = sync_order(&bundle.objects).into_iter().filter(|o| {
            o.hook.is_none()
                && (request.resources.is_empty() || request.resources.contains(&o.resource()))
        });
        let mut failure = None;
        for object in objects {
            let resource = object.resource();
            live.load(self, &resource).await;
            let current = live.get(&resource).ok().flatten();
            let judged = match current {
                None => Ok((Action::WouldChange, health::assess_live(None))),
                Some(current) => {
                    let owner = current
                        .pointer("/metadata/labels")
                        .and_then(|l| l.get(APP_LABEL))
                        .and_then(Value::as_str);
                    match owner {
                        Some(owner) if owner != label => Err(Error::Conflict {
                            resource: describe(&resource),
                            owner: owner.to_owned(),
                        }),
                        _ => self.dry_run(bundle, object).await.map(|after| {
                            let action = if compare::compare(&after, current).is_empty() {
                                Action::Unchanged
                            } else {
                                Action::WouldChange
                            };
                            (action, health::assess(current))
                        }),
                    }
                }
            };
            let (action, health, error) = match judged {
                Ok((action, health)) => (action, health, None),
                Err(e) => {
                    failure.get_or_insert_with(|| Outcome::Failed {
                        resource: Some(resource.clone()),
                        message: e.to_string(),
                    });
                    (Action::Failed, health::assess_live(None), Some(Arc::new(e)))
                }
            };
            report.resources.push(ObjectResult {
                resource,
                wave: object.wave,
                action,
                health,
                error,
            });
        }
        let prune = request.prune || bundle.policy.automated.as_ref().is_some_and(|a| a.prune);
        match self.leaving(bundle, request) {
            Ok((_, leaving)) => {
                for o in leaving {
                    match held_back(&o, bundle, request) {
                        Some(why) => report.kept.push((o.resource, why)),
                        None if prune => report.pruned.push(o.resource),
                        None => report
                            .kept
                            .push((o.resource, "requires pruning; prune is off".into())),
                    }
                }
            }
            Err(e) => {
                failure.get_or_insert_with(|| Outcome::Failed {
                    resource: None,
                    message: e.to_string(),
                });
            }
        }
        if let Some(failure) = failure {
            report.outcome = failure;
        }
    }
}

fn to_yaml(value: &Value) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|_| value.to_string())
}
