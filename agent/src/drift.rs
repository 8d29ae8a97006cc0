//! Drift: live objects that no longer match what Flotilla applied, with the field
//! path, the desired and live values and the field manager that changed them.
//!
//! A [`Monitor`] keeps one watch per managed kind (not per object), filtered by
//! the app's [`APP_LABEL`](crate::apply::APP_LABEL). Each event is first checked
//! cheaply (does the live object still hold every desired field?); only when it
//! does not does the monitor ask the apiserver for a server-side-apply dry run and
//! [`compare`](crate::compare::compare) the two, so values the server defaulted never count as drift. With
//! selfHeal the object is re-applied after a backoff that doubles on repeated
//! drift; without it the drift is only reported. Health is judged on the same
//! events, so app health also comes from watches, not polling.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_common::bundle::{Bundle, Object};
use flotilla_common::message::DriftEntry;
use flotilla_common::model::{Gvk, Health, ResourceRef};
use futures::{StreamExt, TryStreamExt};
use kube::runtime::watcher;
use serde_json::Value;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use crate::apply::{self, APP_LABEL, Applier, FIELD_MANAGER, ObjectResult};
use crate::compare::{contains, differences};
use crate::health::{self, Assessment};

#[cfg(test)]
mod tests;

/// Errors from drift detection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The dry run or discovery behind a comparison failed.
    #[error("comparing {resource} failed")]
    Compare {
        /// The object.
        resource: String,
        /// Why.
        #[source]
        source: Box<apply::Error>,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the monitor noticed about one object.
#[derive(Clone, Debug)]
pub enum Change {
    /// Fields differ from the desired state.
    Drifted(Vec<DriftEntry>),
    /// The object was deleted.
    Deleted,
    /// It matches again (after a heal or a manual revert).
    InSync,
    /// selfHeal re-applied it.
    Healed(ObjectResult),
    /// Its health changed (a Deployment became Available, or Degraded).
    Health,
}

/// One report from the monitor.
#[derive(Clone, Debug)]
pub struct Report {
    /// Which object.
    pub resource: ResourceRef,
    /// What changed.
    pub change: Change,
    /// Its health as of this event.
    pub health: Assessment,
}

/// Knobs of the monitor.
#[derive(Clone, Debug)]
pub struct Options {
    /// Whether drift is re-applied (Argo CD's selfHeal).
    pub self_heal: bool,
    /// The first self-heal delay; it doubles for each repeated drift of an object.
    pub backoff: Duration,
    /// The longest self-heal delay.
    pub max_backoff: Duration,
}

impl Options {
    /// Options taken from the bundle's sync policy.
    pub fn for_bundle(bundle: &Bundle) -> Self {
        Self {
            self_heal: bundle
                .policy
                .automated
                .as_ref()
                .is_some_and(|a| a.self_heal),
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(60),
        }
    }
}

#[derive(Default)]
struct State {
    health: HashMap<ResourceRef, Assessment>,
    drift: HashMap<ResourceRef, Vec<DriftEntry>>,
    heals: HashMap<ResourceRef, u32>,
}

/// Self-heals waiting out their backoff; aborted with the monitor, so a heal
/// never lands in the middle of a sync that replaced it.
type PendingHeals = Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>;

/// Watches one app's objects; stops when dropped, with any self-heal it has
/// scheduled.
pub struct Monitor {
    tasks: Vec<JoinHandle<()>>,
    state: Arc<Mutex<State>>,
    heals: PendingHeals,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let mut heals = match self.heals.lock() {
            Ok(heals) => heals,
            Err(poisoned) => poisoned.into_inner(),
        };
        for heal in heals.drain(..) {
            heal.abort();
        }
    }
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

struct Watched {
    applier: Arc<Applier>,
    bundle: Arc<Bundle>,
    options: Options,
    desired: HashMap<ResourceRef, (Object, Value)>,
    state: Arc<Mutex<State>>,
    reports: mpsc::UnboundedSender<Report>,
    heals: PendingHeals,
}

impl Monitor {
    /// Starts watching the objects of `bundle` that are not hooks; reports go to
    /// `reports`.
    pub async fn start(
        applier: Arc<Applier>,
        bundle: Arc<Bundle>,
        options: Options,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Result<Self, apply::Error> {
        let mut desired = HashMap::new();
        for object in bundle.objects.iter().filter(|o| o.hook.is_none()) {
            let manifest = applier.desired_manifest(&bundle, object)?;
            desired.insert(object.resource(), (object.clone(), manifest));
        }
        let mut kinds: Vec<(Gvk, ResourceRef)> = Vec::new();
        for resource in desired.keys() {
            if !kinds.iter().any(|(g, _)| *g == resource.gvk) {
                kinds.push((resource.gvk.clone(), resource.clone()));
            }
        }
        let state = Arc::new(Mutex::new(State::default()));
        let heals = PendingHeals::default();
        let watched = Arc::new(Watched {
            heals: heals.clone(),
            applier: applier.clone(),
            bundle: bundle.clone(),
            options,
            desired,
            state: state.clone(),
            reports,
        });
        let label = apply::app_label(&bundle.app);
        let mut tasks = Vec::new();
        for (gvk, probe) in kinds {
            for (namespace, api) in applier.apis_in_reach(&probe).await? {
                let gvk = gvk.clone();
                let config = watcher::Config::default().labels(&format!("{APP_LABEL}={label}"));
                let watched = watched.clone();
                let span = info_span!("drift", app = %label, kind = %gvk.kind, generation = bundle.generation);
                tasks.push(tokio::spawn(
                    async move {
                        let mut events = watcher::watcher(api, config).boxed();
                        let mut seen = Vec::new();
                        loop {
                            match events.try_next().await {
                                Ok(Some(event)) => {
                                    watched
                                        .handle(&gvk, namespace.as_deref(), event, &mut seen)
                                        .await
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    warn!(error = %e, "drift watch failed; it restarts");
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                            }
                        }
                    }
                    .instrument(span),
                ));
            }
        }
        Ok(Self {
            tasks,
            state,
            heals,
        })
    }

    /// The app's health: the worst of its watched objects' health.
    pub async fn health(&self) -> Health {
        Health::worst(self.state.lock().await.health.values().map(|a| a.health))
    }

    /// Every watched object's last health, and the drift of those that drifted
    /// (an empty list for one that was deleted).
    pub async fn snapshot(
        &self,
    ) -> (
        HashMap<ResourceRef, Assessment>,
        HashMap<ResourceRef, Vec<DriftEntry>>,
    ) {
        let state = self.state.lock().await;
        (state.health.clone(), state.drift.clone())
    }

    /// Every drifted field now known.
    pub async fn drift(&self) -> Vec<DriftEntry> {
        self.state
            .lock()
            .await
            .drift
            .values()
            .flatten()
            .cloned()
            .collect()
    }
}

impl Watched {
    async fn handle(
        self: &Arc<Self>,
        gvk: &Gvk,
        namespace: Option<&str>,
        event: watcher::Event<kube::api::DynamicObject>,
        seen: &mut Vec<ResourceRef>,
    ) {
        match event {
            watcher::Event::Init => seen.clear(),
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                let resource = ResourceRef {
                    gvk: gvk.clone(),
                    namespace: o.metadata.namespace.clone(),
                    name: o.metadata.name.clone().unwrap_or_default(),
                };
                seen.push(resource.clone());
                if o.metadata.deletion_timestamp.is_some() {
                    return;
                }
                let live = apply::to_value(&o, gvk);
                self.observe(resource, live).await;
            }
            watcher::Event::InitDone => {
                let missing: Vec<ResourceRef> = self
                    .desired
                    .keys()
                    .filter(|r| {
                        // A watch of one namespace sees only that namespace's objects.
                        r.gvk == *gvk
                            && namespace.is_none_or(|ns| r.namespace.as_deref() == Some(ns))
                            && !seen.contains(r)
                    })
                    .cloned()
                    .collect();
                for resource in missing {
                    self.deleted(resource).await;
                }
            }
            watcher::Event::Delete(o) => {
                let resource = ResourceRef {
                    gvk: gvk.clone(),
                    namespace: o.metadata.namespace.clone(),
                    name: o.metadata.name.clone().unwrap_or_default(),
                };
                seen.retain(|r| *r != resource);
                self.deleted(resource).await;
            }
        }
    }

    async fn observe(self: &Arc<Self>, resource: ResourceRef, live: Value) {
        let Some((object, manifest)) = self.desired.get(&resource) else {
            return;
        };
        let health = health::assess(&live);
        let (was_drifted, health_changed) = {
            let mut state = self.state.lock().await;
            let before = state.health.insert(resource.clone(), health.clone());
            let changed = before.is_none_or(|b| b.health != health.health);
            (state.drift.contains_key(&resource), changed)
        };
        if health_changed {
            self.send(resource.clone(), Change::Health, health.clone());
        }
        if contains(manifest, &live) {
            if was_drifted {
                let mut state = self.state.lock().await;
                state.drift.remove(&resource);
                drop(state);
                self.send(resource, Change::InSync, health);
            }
            return;
        }
        let dry_run = match self.applier.dry_run(&self.bundle, object).await {
            Ok(v) => v,
            Err(e) => {
                warn!(object = %apply::describe(&resource), error = %e, "drift dry run failed");
                return;
            }
        };
        let entries = differences(&self.bundle, &resource, &dry_run, &live, FIELD_MANAGER);
        if entries.is_empty() {
            return;
        }
        for e in &entries {
            info!(
                object = %apply::describe(&resource),
                "drift: {}",
                describe_entry(e)
            );
        }
        self.state
            .lock()
            .await
            .drift
            .insert(resource.clone(), entries.clone());
        self.send(resource.clone(), Change::Drifted(entries), health);
        self.heal(resource).await;
    }

    async fn deleted(self: &Arc<Self>, resource: ResourceRef) {
        if !self.desired.contains_key(&resource) {
            return;
        }
        let health = health::assess_live(None);
        {
            let mut state = self.state.lock().await;
            state.health.insert(resource.clone(), health.clone());
            state.drift.insert(resource.clone(), Vec::new());
        }
        info!(object = %apply::describe(&resource), "drift: object deleted");
        self.send(resource.clone(), Change::Deleted, health);
        self.heal(resource).await;
    }

    /// Re-applies after a backoff that doubles with each heal of this object.
    async fn heal(self: &Arc<Self>, resource: ResourceRef) {
        if !self.options.self_heal {
            return;
        }
        let count = {
            let mut state = self.state.lock().await;
            let count = state.heals.entry(resource.clone()).or_insert(0);
            *count += 1;
            *count
        };
        let delay = self
            .options
            .backoff
            .saturating_mul(1 << (count - 1).min(16))
            .min(self.options.max_backoff);
        let this = self.clone();
        let heal = tokio::spawn(
            async move {
                tokio::time::sleep(delay).await;
                let mut results = this
                    .applier
                    .reapply(&this.bundle, std::slice::from_ref(&resource))
                    .await;
                if let Some(result) = results.pop() {
                    info!(object = %apply::describe(&resource), ?delay, action = ?result.action, "self-heal re-applied");
                    let health = result.health.clone();
                    this.send(resource, Change::Healed(result), health);
                }
            }
            .in_current_span(),
        );
        if let Ok(mut heals) = self.heals.lock() {
            heals.retain(|h| !h.is_finished());
            heals.push(heal);
        }
    }

    fn send(&self, resource: ResourceRef, change: Change, health: Assessment) {
        let _ = self.reports.send(Report {
            resource,
            change,
            health,
        });
    }
}

/// `spec.replicas: 3 → 5, changed by kubectl-edit`.
/// A Secret's values are masked (`++++++++` before, a longer run after), as
/// Argo CD masks them: this text reaches logs, events and the hub's API.
pub fn describe_entry(entry: &DriftEntry) -> String {
    let value = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
    let gvk = &entry.resource.gvk;
    let (old, new) = if gvk.group.is_empty() && gvk.kind == "Secret" {
        let masked = |v: &Option<String>, mask: &str| {
            v.as_ref()
                .map_or_else(|| "(absent)".to_owned(), |_| mask.to_owned())
        };
        (
            masked(&entry.old, "++++++++"),
            masked(&entry.new, "++++++++++++"),
        )
    } else {
        (value(&entry.old), value(&entry.new))
    };
    let mut text = format!("{}: {old} → {new}", entry.path);
    if let Some(manager) = &entry.field_manager {
        text.push_str(&format!(", changed by {manager}"));
    }
    text
}
