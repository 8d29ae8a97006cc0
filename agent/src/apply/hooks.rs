//! Hooks: each is created afresh, awaited until it finishes, and deleted as its
//! delete policy says; one that already ran for this generation (the agent
//! restarted) is not run again.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use flotilla_common::bundle::{Bundle, HookDeletePolicy, HookPhase};
use flotilla_common::model::{Health, ResourceRef};
use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, DeleteParams, DynamicObject, PropagationPolicy};
use kube::runtime::watcher;
use tokio::time::Instant;
use tracing::{info, warn};

use super::sync::{group_by_wave, is_settled};
use super::{
    APP_LABEL, Applier, Error, HookOutcome, HookResult, Outcome, Result, SyncReport, Task,
    describe, is_not_found, rejected, to_value,
};
use crate::health;

impl Applier {
    pub(super) async fn run_sync_fail(
        &self,
        bundle: &Bundle,
        hooks: &[Task<'_>],
        report: &mut SyncReport,
    ) {
        if let Err(Outcome::Failed { message, .. }) = self.run_phase(bundle, hooks, report).await {
            warn!(%message, "a SyncFail hook failed too");
        }
    }

    /// Runs the hooks of one phase wave by wave; the first failing hook ends it.
    pub(super) async fn run_phase(
        &self,
        bundle: &Bundle,
        hooks: &[Task<'_>],
        report: &mut SyncReport,
    ) -> Result<(), Outcome> {
        for wave in group_by_wave(hooks) {
            let results: Vec<HookResult> =
                stream::iter(wave.iter().map(|t| self.run_hook(bundle, t)))
                    .buffer_unordered(self.options.parallelism.max(1))
                    .collect()
                    .await;
            let failed = results.iter().find_map(|r| match &r.outcome {
                HookOutcome::Failed(message) => Some((r.resource.clone(), message.clone())),
                _ => None,
            });
            report.hooks.extend(results);
            if let Some((resource, message)) = failed {
                return Err(Outcome::Failed {
                    message: format!("hook {} failed: {message}", describe(&resource)),
                    resource: Some(resource),
                });
            }
        }
        Ok(())
    }

    /// Creates a hook afresh, waits for it to finish, and deletes it as its
    /// delete policy says.
    pub(super) async fn run_hook(&self, bundle: &Bundle, task: &Task<'_>) -> HookResult {
        let phase = task
            .object
            .hook
            .as_ref()
            .map_or(HookPhase::Sync, |h| h.phase);
        let mut result = HookResult {
            resource: task.resource.clone(),
            phase,
            outcome: HookOutcome::Succeeded,
            deleted: false,
        };
        match self
            .store
            .hook_done(&bundle.app, bundle.generation, &task.resource)
        {
            Ok(true) => {
                result.outcome = HookOutcome::AlreadyRan;
                return result;
            }
            Ok(false) => {}
            Err(e) => {
                result.outcome = HookOutcome::Failed(e.to_string());
                return result;
            }
        }
        let policies = task
            .object
            .hook
            .as_ref()
            .map(|h| h.delete_policy.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| vec![HookDeletePolicy::BeforeHookCreation]);
        // Set once the hook object is this app's: only then may a delete policy
        // remove it. A same-named object of another app, or one Flotilla did not
        // create, is neither replaced nor deleted.
        let mut ours = false;
        let run = async {
            let api = self.api(&task.resource).await?;
            let live = api
                .get_opt(&task.resource.name)
                .await
                .map_err(rejected(&task.resource, "get"))?;
            if let Some(live) = &live {
                let owner = live.metadata.labels.as_ref().and_then(|l| l.get(APP_LABEL));
                if owner != Some(&task.label) {
                    return Err(Error::Conflict {
                        resource: describe(&task.resource),
                        owner: owner.map_or_else(
                            || "none (an object Flotilla did not create)".to_owned(),
                            Clone::clone,
                        ),
                    });
                }
            }
            ours = true;
            // A hook named from its generateName stands for a new object on
            // every run, as the apiserver would name one: never reused.
            let generated = task
                .object
                .manifest_json()
                .ok()
                .is_some_and(|m| m.pointer("/metadata/generateName").is_some());
            if generated || policies.contains(&HookDeletePolicy::BeforeHookCreation) {
                self.delete_and_wait(&api, &task.resource, PropagationPolicy::Foreground)
                    .await?;
            }
            let manifest = self.manifest(bundle, task)?;
            let applied = self
                .server_side_apply(&api, bundle, task, &manifest)
                .await?;
            let mut health = health::assess(&to_value(&applied, &task.resource.gvk));
            if !is_settled(health.health) {
                let names = BTreeSet::from([task.resource.name.clone()]);
                let deadline = Instant::now() + self.options.hook_timeout;
                let seen = self
                    .await_settled(&api, &task.resource.gvk, &task.label, names, deadline)
                    .await?;
                if let Some(h) = seen.into_values().next() {
                    health = h;
                }
            }
            Ok::<_, Error>(health)
        };
        let outcome = match run.await {
            Ok(h) if matches!(h.health, Health::Healthy | Health::Suspended) => {
                HookOutcome::Succeeded
            }
            Ok(h) => HookOutcome::Failed(format!("{:?}: {}", h.health, h.message)),
            Err(e) => HookOutcome::Failed(e.to_string()),
        };
        let delete_now = ours
            && match &outcome {
                HookOutcome::Succeeded => policies.contains(&HookDeletePolicy::HookSucceeded),
                HookOutcome::Failed(_) => policies.contains(&HookDeletePolicy::HookFailed),
                HookOutcome::AlreadyRan => false,
            };
        if delete_now && let Ok(api) = self.api(&task.resource).await {
            match self
                .delete_and_wait(&api, &task.resource, PropagationPolicy::Background)
                .await
            {
                Ok(()) => result.deleted = true,
                Err(e) => warn!(error = %e, "deleting a finished hook failed"),
            }
        }
        if let Err(e) = self
            .store
            .set_hook_done(&bundle.app, bundle.generation, &task.resource)
            .await
        {
            warn!(error = %e, "recording a finished hook failed");
        }
        info!(hook = %describe(&task.resource), ?outcome, "hook finished");
        result.outcome = outcome;
        result
    }

    /// Deletes an object if it exists and waits, through a watch, until it is gone.
    async fn delete_and_wait(
        &self,
        api: &Api<DynamicObject>,
        resource: &ResourceRef,
        propagation: PropagationPolicy,
    ) -> Result<()> {
        let rejected = rejected(resource, "delete");
        if api
            .get_opt(&resource.name)
            .await
            .map_err(rejected)?
            .is_none()
        {
            return Ok(());
        }
        let params = DeleteParams {
            propagation_policy: Some(propagation),
            ..DeleteParams::default()
        };
        self.writes.fetch_add(1, Ordering::Relaxed);
        match api.delete(&resource.name, &params).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(rejected(e)),
        }
        let config = watcher::Config::default().fields(&format!("metadata.name={}", resource.name));
        let mut events = watcher::watcher(api.clone(), config).boxed();
        let deadline = Instant::now() + self.options.hook_timeout;
        let mut present = false;
        loop {
            let next = tokio::time::timeout_at(deadline, events.try_next()).await;
            match next {
                Err(_) => {
                    return Err(Error::Timeout {
                        resource: describe(resource),
                        health: Health::Progressing,
                        message: "still being deleted".into(),
                        seconds: self.options.hook_timeout.as_secs(),
                    });
                }
                Ok(Err(source)) => {
                    return Err(Error::Watch {
                        what: describe(resource),
                        source: Box::new(source),
                    });
                }
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(event))) => match event {
                    watcher::Event::Init => present = false,
                    watcher::Event::InitApply(_) => present = true,
                    watcher::Event::InitDone if !present => return Ok(()),
                    watcher::Event::Delete(_) => return Ok(()),
                    _ => {}
                },
            }
        }
    }
}
