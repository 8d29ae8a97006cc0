//! Sync orchestration: PreSync hooks, then the Sync phase wave by wave (each
//! applied in parallel, then awaited healthy through watches), then prune and
//! PostSync hooks, with SyncFail hooks when a step fails; and the writes
//! themselves (server-side apply, replace, namespaces, self-heal re-apply).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_common::bundle::{Bundle, HookPhase};
use flotilla_common::model::{Gvk, Health, ResourceRef, Timestamp};
use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams, ValidationDirective};
use kube::runtime::watcher;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::live::LiveCache;
use super::{
    APP_LABEL, Action, Applier, Error, FIELD_MANAGER, HASH_ANNOTATION, HookOutcome, HookResult,
    ObjectResult, Outcome, Result, SyncReport, SyncRequest, Task, WaveTiming, app_label, describe,
    desired_hash, has_option, object_option, order, rejected, sync_order, to_value,
};
use crate::compare::{self, contains};
use crate::health::{self, Assessment};
use crate::store::Owned;

impl Applier {
    /// Syncs `bundle`: hooks, waves, prune, in Argo CD's order. Never panics and
    /// never returns early without a report: failures are in [`SyncReport::outcome`].
    pub async fn sync(&self, bundle: &Bundle) -> SyncReport {
        self.sync_with(bundle, &SyncRequest::default()).await
    }

    /// Syncs `bundle` as `request` asks: forced prune, a dry run that writes
    /// nothing, or only some of its objects.
    pub async fn sync_with(&self, bundle: &Bundle, request: &SyncRequest) -> SyncReport {
        let span = info_span!(
            "sync",
            cluster = %self.cluster,
            app = %format!("{}/{}", bundle.app.project, bundle.app.name),
            generation = bundle.generation,
            dry_run = request.dry_run,
        );
        let started = Instant::now();
        let mut report = self.sync_inner(bundle, request).instrument(span).await;
        report.duration = started.elapsed();
        report
    }

    async fn sync_inner(&self, bundle: &Bundle, request: &SyncRequest) -> SyncReport {
        let mut report = SyncReport {
            app: bundle.app.clone(),
            generation: bundle.generation,
            outcome: Outcome::Succeeded,
            resources: Vec::new(),
            hooks: Vec::new(),
            pruned: Vec::new(),
            kept: Vec::new(),
            writes: 0,
            waves: Vec::new(),
            warnings: Vec::new(),
            kind_waits: Vec::new(),
            started_at: Timestamp::from_system_time(std::time::SystemTime::now()),
            duration: Duration::ZERO,
            dry_run: request.dry_run,
        };
        if request.dry_run {
            self.dry_run_sync(bundle, request, &mut report).await;
            return report;
        }
        self.promise_kinds(
            bundle
                .objects
                .iter()
                .filter(|o| !matches!(o.hook.as_ref().map(|h| h.phase), Some(HookPhase::Skip))),
        );
        let mut report = self.sync_phases(bundle, request, report).await;
        report.kind_waits = self.take_kind_waits(bundle);
        report
    }

    async fn sync_phases(
        &self,
        bundle: &Bundle,
        request: &SyncRequest,
        mut report: SyncReport,
    ) -> SyncReport {
        let writes_before = self.writes();
        let label = app_label(&bundle.app);
        let client_side = bundle
            .objects
            .iter()
            .any(|o| has_option(bundle, Some(o), "ServerSideApply=false"));
        if client_side {
            let warning =
                "ServerSideApply=false: Flotilla always uses server-side apply".to_owned();
            warn!("{warning}");
            report.warnings.push(warning);
        }
        // A deletion bundle runs its PreDelete and PostDelete hooks around the
        // prune; any other bundle never runs them.
        let deleting = bundle.policy.deletion.is_some();
        let tasks: Vec<Task<'_>> = sync_order(&bundle.objects)
            .into_iter()
            .filter(|o| match o.hook.as_ref().map(|h| h.phase) {
                Some(HookPhase::Skip) => false,
                Some(phase) if phase.on_delete() => deleting,
                _ => !deleting,
            })
            // A selective sync applies only the chosen objects and runs no hooks.
            .filter(|o| {
                request.resources.is_empty()
                    || (o.hook.is_none() && request.resources.contains(&o.resource()))
            })
            .map(|object| Task {
                object,
                resource: object.resource(),
                label: label.clone(),
            })
            .collect();
        let phase_of = |t: &Task<'_>| t.object.hook.as_ref().map(|h| h.phase);
        let (before, after) = if deleting {
            (HookPhase::PreDelete, HookPhase::PostDelete)
        } else {
            (HookPhase::PreSync, HookPhase::PostSync)
        };
        let (pre, rest): (Vec<_>, Vec<_>) =
            tasks.into_iter().partition(|t| phase_of(t) == Some(before));
        let (post, rest): (Vec<_>, Vec<_>) =
            rest.into_iter().partition(|t| phase_of(t) == Some(after));
        let (fail, sync): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|t| phase_of(t) == Some(HookPhase::SyncFail));

        // Argo CD creates the namespace before the PreSync phase, so a PreSync hook
        // (a migration Job) can run in a namespace that does not exist yet.
        let every_task = pre.iter().chain(&sync).chain(&post).chain(&fail);
        let prepared = match self.create_namespaces(bundle, every_task).await {
            Ok(()) => self.run_phase(bundle, &pre, &mut report).await,
            Err(failure) => Err(failure),
        };
        if let Err(failure) = prepared {
            report.outcome = failure;
            self.mark_skipped(&sync, &mut report);
            self.run_sync_fail(bundle, &fail, &mut report).await;
            report.writes = self.writes() - writes_before;
            return report;
        }

        let result = self.run_sync_phase(bundle, &sync, &mut report).await;
        let result = match result {
            Ok(()) => {
                let mut result = self.prune(bundle, request, &mut report, false).await;
                if result.is_ok() {
                    result = self.run_phase(bundle, &post, &mut report).await;
                }
                if result.is_ok() {
                    result = self.prune(bundle, request, &mut report, true).await;
                }
                result
            }
            Err(failure) => Err(failure),
        };
        if let Err(failure) = result {
            report.outcome = failure;
            self.run_sync_fail(bundle, &fail, &mut report).await;
        }
        report.writes = self.writes() - writes_before;
        match &report.outcome {
            Outcome::Succeeded => info!(writes = report.writes, "sync succeeded"),
            Outcome::Failed { message, .. } => {
                warn!(writes = report.writes, %message, "sync failed")
            }
        }
        report
    }

    fn mark_skipped(&self, tasks: &[Task<'_>], report: &mut SyncReport) {
        for t in tasks.iter().filter(|t| t.object.hook.is_none()) {
            report.resources.push(ObjectResult {
                resource: t.resource.clone(),
                wave: t.object.wave,
                action: Action::Skipped,
                health: health::assess_live(None),
                error: None,
            });
        }
    }

    /// `CreateNamespace=true`: creates every namespace the tasks use that does not
    /// exist yet.
    async fn create_namespaces<'t>(
        &self,
        bundle: &Bundle,
        tasks: impl Iterator<Item = &'t Task<'t>>,
    ) -> Result<(), Outcome> {
        if !has_option(bundle, None, "CreateNamespace=true") {
            return Ok(());
        }
        let namespaces: BTreeSet<&str> = tasks
            .filter_map(|t| t.resource.namespace.as_deref())
            .collect();
        // managedNamespaceMetadata is for the app's destination namespace, as
        // in Argo CD.
        let destination = bundle.project.destination.namespace.as_deref();
        for ns in namespaces {
            let metadata = bundle
                .policy
                .managed_namespace_metadata
                .as_ref()
                .filter(|_| Some(ns) == destination);
            if let Err(e) = self.ensure_namespace(ns, metadata).await {
                return Err(Outcome::Failed {
                    resource: None,
                    message: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The Sync phase: inventory, then wave after wave.
    async fn run_sync_phase(
        &self,
        bundle: &Bundle,
        tasks: &[Task<'_>],
        report: &mut SyncReport,
    ) -> Result<(), Outcome> {
        // Remember new objects before creating them, so a crash mid-sync cannot
        // leave an object Flotilla created but no longer knows it owns.
        let owned = |t: &Task<'_>| {
            let prune = object_option(bundle, t.object, "Prune");
            let delete = object_option(bundle, t.object, "Delete");
            Owned {
                resource: t.resource.clone(),
                prune_last: object_option(bundle, t.object, "PruneLast") == Some("true"),
                ignore_extraneous: ignores_extraneous(t.object),
                prune: prune != Some("false"),
                delete: delete != Some("false"),
                prune_confirm: prune == Some("confirm"),
                delete_confirm: delete == Some("confirm"),
            }
        };
        let result = async {
            let mut inventory = self.store.inventory(&bundle.app)?;
            let before = inventory.clone();
            // An object's Prune and Delete options are those of the bundle now,
            // not of the bundle that first created it: a `Delete=false` added
            // later must protect it all the same.
            let mut desired: BTreeMap<ResourceRef, Owned> = tasks
                .iter()
                .filter(|t| t.object.hook.is_none())
                .map(|t| (t.resource.clone(), owned(t)))
                .collect();
            for known in &mut inventory {
                if let Some(now) = desired.remove(&known.resource) {
                    *known = now;
                }
            }
            inventory.extend(tasks.iter().filter_map(|t| desired.remove(&t.resource)));
            if inventory != before {
                self.store.set_inventory(&bundle.app, &inventory).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            return Err(Outcome::Failed {
                resource: None,
                message: e.to_string(),
            });
        }
        let waves = group_by_wave(tasks);
        let mut live = LiveCache::default();
        for (index, wave) in waves.iter().enumerate() {
            let span = info_span!("wave", wave = wave.first().map_or(0, |t| t.object.wave));
            let failure = self
                .apply_wave(bundle, wave, &mut live, report)
                .instrument(span)
                .await;
            if let Some(failure) = failure {
                for later in &waves[index + 1..] {
                    self.mark_skipped(later, report);
                }
                return Err(failure);
            }
        }
        Ok(())
    }

    /// Applies one wave in parallel and waits until it is healthy. Returns the
    /// first failure, after every object of the wave has been tried.
    async fn apply_wave(
        &self,
        bundle: &Bundle,
        wave: &[Task<'_>],
        live: &mut LiveCache,
        report: &mut SyncReport,
    ) -> Option<Outcome> {
        let started = Instant::now();
        let (hooks, objects): (Vec<&Task<'_>>, Vec<&Task<'_>>) =
            wave.iter().partition(|t| t.object.hook.is_some());
        for task in &objects {
            live.load(self, &task.resource).await;
        }
        let live = &*live;
        let mut results: Vec<ObjectResult> =
            stream::iter(objects.iter().map(|t| self.apply_object(bundle, t, live)))
                .buffered(self.options.parallelism.max(1))
                .collect()
                .await;
        let mut hook_results: Vec<HookResult> =
            stream::iter(hooks.iter().map(|t| self.run_hook(bundle, t)))
                .buffer_unordered(self.options.parallelism.max(1))
                .collect()
                .await;

        let applied = Instant::now();
        // Wait for health, one watch per kind and namespace of this wave.
        let deadline = Instant::now() + self.options.wave_timeout;
        let mut waiting: BTreeMap<(Gvk, Option<String>), BTreeSet<String>> = BTreeMap::new();
        for r in results.iter().filter(|r| r.error.is_none()) {
            if !is_settled(r.health.health) {
                waiting
                    .entry((r.resource.gvk.clone(), r.resource.namespace.clone()))
                    .or_default()
                    .insert(r.resource.name.clone());
            }
        }
        let label = app_label(&bundle.app);
        let watches = waiting.into_iter().map(|((gvk, namespace), names)| {
            let label = label.clone();
            async move {
                let probe = ResourceRef {
                    gvk,
                    namespace,
                    name: String::new(),
                };
                let api = self.api(&probe).await?;
                let seen = self
                    .await_settled(&api, &probe.gvk, &label, names, deadline)
                    .await?;
                Ok::<_, Error>((probe, seen))
            }
        });
        let settled: Vec<Result<_>> = stream::iter(watches)
            .buffer_unordered(self.options.parallelism.max(1))
            .collect()
            .await;
        for outcome in settled {
            match outcome {
                Ok((probe, seen)) => {
                    for r in results.iter_mut() {
                        if r.resource.gvk == probe.gvk
                            && r.resource.namespace == probe.namespace
                            && let Some(h) = seen.get(&r.resource.name)
                        {
                            r.health = h.clone();
                        }
                    }
                }
                Err(e) => warn!(error = %e, "waiting for health failed"),
            }
        }
        report.waves.push(WaveTiming {
            wave: wave.first().map_or(0, |t| t.object.wave),
            objects: wave.len(),
            applied: applied - started,
            healthy: applied.elapsed(),
        });
        let seconds = self.options.wave_timeout.as_secs();
        for r in results.iter_mut().filter(|r| r.error.is_none()) {
            match r.health.health {
                Health::Healthy | Health::Suspended => {}
                Health::Degraded => {
                    r.error = Some(Arc::new(Error::Degraded {
                        resource: describe(&r.resource),
                        message: r.health.message.clone(),
                    }))
                }
                other => {
                    r.error = Some(Arc::new(Error::Timeout {
                        resource: describe(&r.resource),
                        health: other,
                        message: r.health.message.clone(),
                        seconds,
                    }))
                }
            }
        }
        let failure = results
            .iter()
            .find_map(|r| {
                r.error
                    .as_ref()
                    .map(|e| (r.resource.clone(), e.to_string()))
            })
            .or_else(|| {
                hook_results.iter().find_map(|h| match &h.outcome {
                    HookOutcome::Failed(m) => Some((h.resource.clone(), m.clone())),
                    _ => None,
                })
            });
        report.resources.append(&mut results);
        report.hooks.append(&mut hook_results);
        failure.map(|(resource, message)| Outcome::Failed {
            resource: Some(resource),
            message,
        })
    }

    /// Applies one object unless its live state already matches.
    async fn apply_object(
        &self,
        bundle: &Bundle,
        task: &Task<'_>,
        live: &LiveCache,
    ) -> ObjectResult {
        let mut result = ObjectResult {
            resource: task.resource.clone(),
            wave: task.object.wave,
            action: Action::Failed,
            health: health::assess_live(None),
            error: None,
        };
        match self.apply_object_inner(bundle, task, live).await {
            Ok((action, health)) => {
                result.action = action;
                result.health = health;
            }
            Err(e) => {
                warn!(object = %describe(&task.resource), error = %e, "apply failed");
                result.error = Some(Arc::new(e));
            }
        }
        result
    }

    async fn apply_object_inner(
        &self,
        bundle: &Bundle,
        task: &Task<'_>,
        live: &LiveCache,
    ) -> Result<(Action, Assessment)> {
        let current = live.get(&task.resource)?;
        if let Some(current) = current {
            let owner = current
                .pointer("/metadata/labels")
                .and_then(|l| l.get(APP_LABEL))
                .and_then(Value::as_str);
            if let Some(owner) = owner
                && owner != task.label
            {
                return Err(Error::Conflict {
                    resource: describe(&task.resource),
                    owner: owner.to_owned(),
                });
            }
        }
        let manifest = self.manifest(bundle, task)?;
        let manifest = match current {
            Some(current) if respects_ignored(bundle, task) => {
                compare::respecting_ignored(bundle, &task.resource, manifest, current)
            }
            _ => manifest,
        };
        if let Some(current) = current {
            let same_hash = current
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(HASH_ANNOTATION))
                .and_then(Value::as_str)
                == Some(desired_hash(task.object).as_str());
            if same_hash && contains(&manifest, current) {
                return Ok((Action::Unchanged, health::assess(current)));
            }
        }
        let api = self.api(&task.resource).await?;
        let replace = has_option(bundle, Some(task.object), "Replace=true");
        // Server-side apply needs every field in the schema, so Validate=false
        // writes the object whole, as a client-side `kubectl apply
        // --validate=false` would.
        let unvalidated = has_option(bundle, Some(task.object), "Validate=false");
        if replace || unvalidated {
            let applied = self.replace(&api, task, manifest, current).await?;
            let action = match (replace, current) {
                (true, _) => Action::Replaced,
                (false, Some(_)) => Action::Configured,
                (false, None) => Action::Created,
            };
            return Ok((
                action,
                health::assess(&to_value(&applied, &task.resource.gvk)),
            ));
        }
        let applied = self
            .server_side_apply(&api, bundle, task, &manifest)
            .await?;
        // Refreshes the promise: a later bundle's objects of this kind may wait.
        self.promise_kinds([task.object]);
        // An object that exists without Flotilla's label (one Argo CD or a
        // person made) is not in the live cache: it was taken over in place,
        // which its other field managers show.
        let adopted = applied
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.manager.as_deref() != Some(FIELD_MANAGER));
        let action = if current.is_some() || adopted {
            Action::Configured
        } else {
            Action::Created
        };
        debug!(object = %describe(&task.resource), ?action, "applied");
        Ok((
            action,
            health::assess(&to_value(&applied, &task.resource.gvk)),
        ))
    }

    pub(super) async fn server_side_apply(
        &self,
        api: &Api<DynamicObject>,
        bundle: &Bundle,
        task: &Task<'_>,
        manifest: &Value,
    ) -> Result<DynamicObject> {
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        if has_option(bundle, Some(task.object), "Validate=false") {
            params.field_validation = Some(ValidationDirective::Ignore);
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        api.patch(&task.resource.name, &params, &Patch::Apply(manifest))
            .await
            .map_err(rejected(&task.resource, "apply"))
    }

    /// Re-applies single objects of `bundle` (self-heal), skipping hooks.
    pub async fn reapply(&self, bundle: &Bundle, resources: &[ResourceRef]) -> Vec<ObjectResult> {
        let label = app_label(&bundle.app);
        let tasks: Vec<Task<'_>> = bundle
            .objects
            .iter()
            .filter(|o| o.hook.is_none())
            .map(|object| Task {
                object,
                resource: object.resource(),
                label: label.clone(),
            })
            .filter(|t| resources.contains(&t.resource))
            .collect();
        let mut results = Vec::new();
        for task in &tasks {
            let mut result = ObjectResult {
                resource: task.resource.clone(),
                wave: task.object.wave,
                action: Action::Configured,
                health: health::assess_live(None),
                error: None,
            };
            let applied = async {
                let api = self.api(&task.resource).await?;
                let mut manifest = self.manifest(bundle, task)?;
                if respects_ignored(bundle, task) {
                    let live = api
                        .get_opt(&task.resource.name)
                        .await
                        .map_err(rejected(&task.resource, "read"))?;
                    if let Some(live) = live {
                        let live = to_value(&live, &task.resource.gvk);
                        manifest =
                            compare::respecting_ignored(bundle, &task.resource, manifest, &live);
                    }
                }
                self.server_side_apply(&api, bundle, task, &manifest).await
            }
            .await;
            match applied {
                Ok(o) => result.health = health::assess(&to_value(&o, &task.resource.gvk)),
                Err(e) => {
                    result.action = Action::Failed;
                    result.error = Some(Arc::new(e));
                }
            }
            results.push(result);
        }
        results
    }

    async fn replace(
        &self,
        api: &Api<DynamicObject>,
        task: &Task<'_>,
        manifest: Value,
        current: Option<&Value>,
    ) -> Result<DynamicObject> {
        let rejected = rejected(&task.resource, "replace");
        let mut object: DynamicObject =
            serde_json::from_value(manifest).map_err(|_| Error::Manifest {
                resource: describe(&task.resource),
            })?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        match current {
            Some(current) => {
                object.metadata.resource_version = current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                api.replace(&task.resource.name, &PostParams::default(), &object)
                    .await
                    .map_err(rejected)
            }
            None => api
                .create(&PostParams::default(), &object)
                .await
                .map_err(rejected),
        }
    }

    /// Creates namespace `name` if it is missing, and keeps `metadata`'s labels
    /// and annotations on it (server-side apply, so a label dropped from the
    /// metadata is dropped from the namespace, and others' labels stay).
    async fn ensure_namespace(
        &self,
        name: &str,
        metadata: Option<&flotilla_common::bundle::NamespaceMetadata>,
    ) -> Result<()> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let resource = ResourceRef {
            gvk: Gvk::new("", "v1", "Namespace"),
            namespace: None,
            name: name.to_owned(),
        };
        let mut namespace = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        });
        if let Some(metadata) = metadata {
            namespace["metadata"]["labels"] = serde_json::json!(metadata.labels);
            namespace["metadata"]["annotations"] = serde_json::json!(metadata.annotations);
        }
        if let Some(live) = api
            .get_opt(name)
            .await
            .map_err(rejected(&resource, "get"))?
        {
            let live = serde_json::to_value(&live).unwrap_or(Value::Null);
            if metadata.is_none() || contains(&namespace["metadata"], &live["metadata"]) {
                return Ok(());
            }
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&namespace),
        )
        .await
        .map_err(rejected(&resource, "apply"))?;
        Ok(())
    }

    /// Watches `names` (objects of one kind and namespace labelled for the app)
    /// until each is healthy, suspended or degraded, or the deadline passes, and
    /// returns the last assessment seen for each.
    pub(super) async fn await_settled(
        &self,
        api: &Api<DynamicObject>,
        gvk: &Gvk,
        label: &str,
        names: BTreeSet<String>,
        deadline: Instant,
    ) -> Result<BTreeMap<String, Assessment>> {
        let config = watcher::Config::default().labels(&format!("{APP_LABEL}={label}"));
        let mut events = watcher::watcher(api.clone(), config).boxed();
        let mut seen: BTreeMap<String, Assessment> = BTreeMap::new();
        let settled = |seen: &BTreeMap<String, Assessment>| {
            names
                .iter()
                .all(|n| seen.get(n).is_some_and(|a| is_settled(a.health)))
        };
        loop {
            let next = tokio::time::timeout_at(deadline, events.try_next()).await;
            let event = match next {
                Err(_) | Ok(Ok(None)) => return Ok(seen),
                Ok(Err(source)) => {
                    return Err(Error::Watch {
                        what: format!("{label} objects"),
                        source: Box::new(source),
                    });
                }
                Ok(Ok(Some(event))) => event,
            };
            match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    let name = o.metadata.name.clone().unwrap_or_default();
                    if names.contains(&name) {
                        seen.insert(name, health::assess(&to_value(&o, gvk)));
                    }
                }
                watcher::Event::Delete(o) => {
                    let name = o.metadata.name.clone().unwrap_or_default();
                    if names.contains(&name) {
                        seen.insert(name, health::assess_live(None));
                    }
                }
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
            if settled(&seen) {
                return Ok(seen);
            }
        }
    }
}

pub(super) fn is_settled(health: Health) -> bool {
    matches!(
        health,
        Health::Healthy | Health::Suspended | Health::Degraded
    )
}

/// Splits tasks already in sync order into runs of equal wave.
pub(super) fn group_by_wave<'t, 'a>(tasks: &'t [Task<'a>]) -> Vec<&'t [Task<'a>]> {
    tasks
        .chunk_by(|a, b| order::effective_wave(a.object) == order::effective_wave(b.object))
        .collect()
}

/// `RespectIgnoreDifferences=true`: a sync leaves the fields the app's
/// `ignoreDifferences` covers as they are live.
fn respects_ignored(bundle: &Bundle, task: &Task<'_>) -> bool {
    has_option(bundle, Some(task.object), "RespectIgnoreDifferences=true")
}

/// Whether the object carries `argocd.argoproj.io/compare-options:
/// IgnoreExtraneous`.
fn ignores_extraneous(object: &flotilla_common::bundle::Object) -> bool {
    object.manifest_json().ok().is_some_and(|m| {
        m.pointer("/metadata/annotations/argocd.argoproj.io~1compare-options")
            .and_then(Value::as_str)
            .is_some_and(|o| o.split(',').any(|o| o.trim() == "IgnoreExtraneous"))
    })
}
