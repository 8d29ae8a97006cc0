//! Applying a bundle to a cluster the way Argo CD syncs an Application.
//!
//! [`Applier::sync`] runs PreSync hooks, then the Sync phase wave by wave (CRDs
//! first, then by wave, Argo CD's kind order and name), then prunes, then runs
//! PostSync hooks; SyncFail hooks run when a step fails. Each wave is applied in
//! parallel (bounded by [`Options::parallelism`]) with server-side apply as field
//! manager [`FIELD_MANAGER`], and the next wave starts only when every object of
//! this one is healthy, which is learnt from watch events, never by polling.
//!
//! Every managed object carries the label [`APP_LABEL`] (a valid label value made
//! from the app's project and name, see [`app_label`]), the annotation
//! [`APP_ANNOTATION`] with the full app reference, and [`HASH_ANNOTATION`] with the
//! digest of its desired manifest. Objects whose live state already carries that
//! digest and contains every desired field are not written at all, so a re-sync of
//! an unchanged bundle makes no write calls.
//!
//! Prune deletes only objects that are both in the app's inventory (the agent's
//! sled, see [`crate::store`]) and still labelled as this app's in the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_common::bundle::{Bundle, HookDeletePolicy, HookPhase, Object};
use flotilla_common::message::{
    DriftEntry, Event as StatusEvent, EventKind, Operation, OperationPhase, ResourceAction,
    ResourceDiff, ResourceResult, ResourceStatus, Status,
};
use flotilla_common::model::{AppRef, Gvk, Health, ResourceRef, SyncStatus, Timestamp};
use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    PropagationPolicy, ValidationDirective,
};
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::runtime::watcher;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::health::{self, Assessment};
use crate::store::{self, Owned, Store};

mod compare;
mod order;
#[cfg(test)]
mod tests;

pub use compare::contains;
pub use order::{kind_rank, sync_order};

/// The field manager of every server-side apply Flotilla makes.
pub const FIELD_MANAGER: &str = "flotilla";
/// The label naming the app that manages an object; see [`app_label`].
pub const APP_LABEL: &str = "flotilla.dev/app";
/// The annotation holding the managing app as `project/name`.
pub const APP_ANNOTATION: &str = "flotilla.dev/app-ref";
/// The annotation holding the digest of the object's desired manifest.
pub const HASH_ANNOTATION: &str = "flotilla.dev/desired-hash";

/// Why one object, or the sync as a whole, failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Discovery does not know the object's kind.
    #[error("{resource}: the cluster does not serve kind {kind}{waited}: {message}")]
    UnknownKind {
        /// The object.
        resource: String,
        /// `group/version/kind`.
        kind: String,
        /// How long Flotilla waited for a CRD or APIService it applied to serve the
        /// kind, said as ` (waited 10 s …)`; empty when the kind had no provider.
        waited: String,
        /// The apiserver's message.
        message: String,
        /// The discovery error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The bundle places an object of a cluster-scoped kind in a namespace: the
    /// hub's idea of the kind's scope (stale cluster facts, or a CRD in the render
    /// that claims a scope) is not the cluster's, and the project check it passed
    /// does not hold.
    #[error(
        "{resource}: this cluster serves {kind} cluster-scoped, but the bundle places it in namespace {namespace}; refused"
    )]
    ScopeMismatch {
        /// The object.
        resource: String,
        /// `group/version/kind`.
        kind: String,
        /// The namespace the bundle gave it.
        namespace: String,
    },
    /// The apiserver refused a request about the object.
    #[error("{resource}: {verb} refused by the apiserver: {message}")]
    Rejected {
        /// The object.
        resource: String,
        /// What Flotilla asked for: apply, replace, delete, list, watch.
        verb: &'static str,
        /// The apiserver's message.
        message: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Another app already manages the object.
    #[error("{resource}: already managed by app {owner}; not applied")]
    Conflict {
        /// The object.
        resource: String,
        /// The other app's label value.
        owner: String,
    },
    /// The agent is limited to some namespaces, and the object is not in one.
    #[error("{resource}: {what}, but this agent may act only in namespaces {allowed}; refused")]
    OutOfReach {
        /// The object.
        resource: String,
        /// Where the object is: cluster-scoped, or in another namespace.
        what: String,
        /// The namespaces the agent may act in, comma-separated.
        allowed: String,
    },
    /// The manifest in the bundle is not a JSON object.
    #[error("{resource}: manifest is not a json object")]
    Manifest {
        /// The object.
        resource: String,
    },
    /// The object did not become healthy in time.
    #[error("{resource}: not healthy after {seconds} s: {health:?} {message}")]
    Timeout {
        /// The object.
        resource: String,
        /// Its last health.
        health: Health,
        /// Its last health message.
        message: String,
        /// How long Flotilla waited.
        seconds: u64,
    },
    /// The object became degraded.
    #[error("{resource}: degraded: {message}")]
    Degraded {
        /// The object.
        resource: String,
        /// Why.
        message: String,
    },
    /// The bundle would prune every object the app owns and allowEmpty is off.
    #[error(
        "refusing to prune all {count} objects of the app: the bundle is empty and allowEmpty is not set"
    )]
    PruneAllRefused {
        /// How many objects would have been pruned.
        count: usize,
    },
    /// The watch that reports health failed.
    #[error("watching {what} failed")]
    Watch {
        /// Which kind and namespace.
        what: String,
        /// The watcher's error.
        #[source]
        source: Box<watcher::Error>,
    },
    /// The agent's store failed.
    #[error("agent store failed")]
    Store(#[from] store::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether an error is one the caller may branch on: another app owns the object.
pub fn is_conflict(error: &Error) -> bool {
    matches!(error, Error::Conflict { .. })
}

/// Knobs of the applier.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long a wave may take to become healthy.
    pub wave_timeout: Duration,
    /// How long a hook may take to finish.
    pub hook_timeout: Duration,
    /// How many objects of one wave are applied at once.
    pub parallelism: usize,
    /// How long a kind that a CustomResourceDefinition or APIService of the bundle
    /// (or one this agent applied in the last minute) provides may take to be
    /// served: the apiserver marks a CRD Established a moment before discovery
    /// serves its group.
    pub kind_wait: Duration,
    /// Where the agent may act.
    pub reach: Reach,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            wave_timeout: Duration::from_secs(300),
            hook_timeout: Duration::from_secs(300),
            parallelism: 32,
            kind_wait: Duration::from_secs(10),
            reach: Reach::Cluster,
        }
    }
}

/// Where an agent may act: the whole cluster, or only some namespaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Reach {
    /// The whole cluster, as the default install manifest grants.
    #[default]
    Cluster,
    /// Only these namespaces (`flotilla-agent --namespaces`, from `flotilla cluster
    /// add --namespaces`): the install manifest grants rights in them and read-only
    /// discovery elsewhere, and a bundle with any object outside them (a
    /// cluster-scoped one included) is refused whole, before anything is applied.
    Namespaces(BTreeSet<String>),
}

impl Reach {
    /// The namespaces in `list` (comma-separated DNS labels); an empty list is the
    /// whole cluster.
    pub fn parse(list: &str) -> std::result::Result<Reach, String> {
        let mut namespaces = BTreeSet::new();
        for namespace in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !flotilla_common::model::is_dns_label(namespace) {
                return Err(format!(
                    "{namespace:?} is not a namespace name (a DNS label: a-z, 0-9 and '-', at most 63)"
                ));
            }
            namespaces.insert(namespace.to_owned());
        }
        Ok(if namespaces.is_empty() {
            Reach::Cluster
        } else {
            Reach::Namespaces(namespaces)
        })
    }
}

/// What happened to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// It did not exist and was applied.
    Created,
    /// It existed, differed, and was applied.
    Configured,
    /// It matched; no write was made.
    Unchanged,
    /// `Replace=true`: replaced (or created) with PUT/POST instead of applied.
    Replaced,
    /// Applying it failed; see the error.
    Failed,
    /// It was not reached because an earlier step failed.
    Skipped,
    /// A dry run found that a sync would change it; nothing was written.
    WouldChange,
}

/// How a sync runs beyond the app's policy, as `argocd app sync` flags it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncRequest {
    /// Delete what left the bundle even when the policy does not prune.
    pub prune: bool,
    /// Write nothing: report what a sync would change (server-side dry run).
    pub dry_run: bool,
    /// Only these objects (and no hooks, as in Argo CD's selective sync); empty
    /// for all of them.
    pub resources: Vec<ResourceRef>,
}

/// The result of applying one object.
#[derive(Clone, Debug)]
pub struct ObjectResult {
    /// Which object.
    pub resource: ResourceRef,
    /// Its wave.
    pub wave: i32,
    /// What was done.
    pub action: Action,
    /// Its health after the wave.
    pub health: Assessment,
    /// Why it failed, if it did.
    pub error: Option<Arc<Error>>,
}

/// How a hook ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookOutcome {
    /// It finished healthy.
    Succeeded,
    /// It failed, with the reason.
    Failed(String),
    /// It had already run for this generation (agent restart), so it was not rerun.
    AlreadyRan,
}

/// The result of one hook.
#[derive(Clone, Debug)]
pub struct HookResult {
    /// Which hook object.
    pub resource: ResourceRef,
    /// Its phase.
    pub phase: HookPhase,
    /// How it ended.
    pub outcome: HookOutcome,
    /// Whether its delete policy removed it afterwards.
    pub deleted: bool,
}

/// How the sync ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step succeeded.
    Succeeded,
    /// A step failed; `resource` is the first failing object when there is one.
    Failed {
        /// The failing object.
        resource: Option<ResourceRef>,
        /// What went wrong, with the apiserver's message.
        message: String,
    },
}

/// Everything one sync did, in a form tests and the status reporter read.
#[derive(Clone, Debug)]
pub struct SyncReport {
    /// The app.
    pub app: AppRef,
    /// The bundle generation synced.
    pub generation: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Every Sync-phase object, in apply order.
    pub resources: Vec<ObjectResult>,
    /// Every hook that ran, in the order they ran.
    pub hooks: Vec<HookResult>,
    /// Objects deleted because they left the bundle.
    pub pruned: Vec<ResourceRef>,
    /// Objects that left the bundle but were kept, and why.
    pub kept: Vec<(ResourceRef, String)>,
    /// Write calls (apply, replace, create, delete) this sync made.
    pub writes: u64,
    /// How long each Sync-phase wave took, in order.
    pub waves: Vec<WaveTiming>,
    /// Options Flotilla read but treats differently from Argo CD, said out loud.
    pub warnings: Vec<String>,
    /// Kinds the cluster served only after a wait for the CRD or APIService that
    /// provides them, and how long that took.
    pub kind_waits: Vec<(Gvk, Duration)>,
    /// When the sync started.
    pub started_at: Timestamp,
    /// How long it took.
    pub duration: Duration,
    /// Whether it was a dry run: `pruned` then lists what would be pruned.
    pub dry_run: bool,
}

/// How long one wave took to apply and then to become healthy.
#[derive(Clone, Debug)]
pub struct WaveTiming {
    /// The wave number.
    pub wave: i32,
    /// How many objects it holds.
    pub objects: usize,
    /// From the first request to the last apply response.
    pub applied: Duration,
    /// From the last apply response until every object was healthy.
    pub healthy: Duration,
}

impl SyncReport {
    /// Whether every step succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Succeeded
    }

    /// The app's health: the worst of its resources'.
    pub fn health(&self) -> Health {
        Health::worst(self.resources.iter().map(|r| r.health.health))
    }

    /// The result for the object called `name`, if it is in the report.
    pub fn resource(&self, name: &str) -> Option<&ObjectResult> {
        self.resources.iter().find(|r| r.resource.name == name)
    }

    /// The result for the hook called `name`, if it ran.
    pub fn hook(&self, name: &str) -> Option<&HookResult> {
        self.hooks.iter().find(|h| h.resource.name == name)
    }

    /// The report as the [`Status`] the link sends to the hub: per-resource sync
    /// and health, `drift` as given, and one event for the sync result (with the
    /// failing object and the apiserver's message) and one per hook. `sequence`
    /// is left 0 for the agent session to set.
    pub fn to_status(&self, now: Timestamp, drift: Vec<DriftEntry>) -> Status {
        let resources = self.statuses();
        let sync = if self.succeeded()
            && drift.is_empty()
            && resources.iter().all(|r| r.sync == SyncStatus::Synced)
        {
            SyncStatus::Synced
        } else {
            SyncStatus::OutOfSync
        };
        let mut events: Vec<StatusEvent> = self
            .hooks
            .iter()
            .map(|h| {
                let (kind, reason, message) = match &h.outcome {
                    HookOutcome::Succeeded => (EventKind::Normal, "HookSucceeded", String::new()),
                    HookOutcome::AlreadyRan => (
                        EventKind::Normal,
                        "HookAlreadyRan",
                        "already ran for this generation".to_owned(),
                    ),
                    HookOutcome::Failed(m) => (EventKind::Warning, "HookFailed", m.clone()),
                };
                StatusEvent {
                    at: now,
                    kind,
                    reason: reason.to_owned(),
                    message: format!("{:?} hook: {message}", h.phase),
                    resource: Some(h.resource.clone()),
                }
            })
            .collect();
        events.extend(self.kind_waits.iter().map(|(gvk, waited)| StatusEvent {
            at: now,
            kind: EventKind::Normal,
            reason: "KindServed".to_owned(),
            message: format!(
                "waited {:.1} s for the cluster to serve {}/{}/{} after its provider was applied",
                waited.as_secs_f64(),
                gvk.group,
                gvk.version,
                gvk.kind
            ),
            resource: None,
        }));
        events.extend(self.warnings.iter().map(|w| StatusEvent {
            at: now,
            kind: EventKind::Warning,
            reason: "SyncOptionDiffers".to_owned(),
            message: w.clone(),
            resource: None,
        }));
        events.push(match &self.outcome {
            Outcome::Succeeded => StatusEvent {
                at: now,
                kind: EventKind::Normal,
                reason: "SyncSucceeded".to_owned(),
                message: format!("{} writes", self.writes),
                resource: None,
            },
            Outcome::Failed { resource, message } => StatusEvent {
                at: now,
                kind: EventKind::Warning,
                reason: "SyncFailed".to_owned(),
                message: message.clone(),
                resource: resource.clone(),
            },
        });
        Status {
            sequence: 0,
            app: self.app.clone(),
            generation: self.generation,
            sync,
            health: self.health(),
            resources,
            drift,
            events,
            operation: Some(Box::new(self.operation(None))),
        }
    }

    /// The one-line summary of the sync, as `argocd app sync` ends with.
    pub fn summary(&self) -> String {
        let count = |action: Action| self.resources.iter().filter(|r| r.action == action).count();
        let verb = if self.dry_run { "dry run" } else { "sync" };
        match &self.outcome {
            Outcome::Succeeded if self.dry_run => format!(
                "{verb} of generation {}: {} would change, {} unchanged, {} would be pruned",
                self.generation,
                count(Action::WouldChange),
                count(Action::Unchanged),
                self.pruned.len()
            ),
            Outcome::Succeeded => format!(
                "{verb} of generation {} succeeded: {} created, {} configured, {} unchanged, {} pruned, {} hooks",
                self.generation,
                count(Action::Created),
                count(Action::Configured) + count(Action::Replaced),
                count(Action::Unchanged),
                self.pruned.len(),
                self.hooks.len()
            ),
            Outcome::Failed { message, .. } => {
                format!("{verb} of generation {} failed: {message}", self.generation)
            }
        }
    }

    /// The sync as the operation the hub records in the app's history: every hook,
    /// object, pruned and kept object, in the order they were handled.
    pub fn operation(&self, request_id: Option<u64>) -> Operation {
        let hook = |h: &HookResult| {
            let (action, message) = match &h.outcome {
                HookOutcome::Succeeded => (ResourceAction::HookSucceeded, None),
                HookOutcome::AlreadyRan => (
                    ResourceAction::HookSucceeded,
                    Some("already ran for this generation".to_owned()),
                ),
                HookOutcome::Failed(m) => (ResourceAction::HookFailed, Some(m.clone())),
            };
            ResourceResult {
                resource: h.resource.clone(),
                action,
                message: Some(format!("{:?} hook", h.phase))
                    .into_iter()
                    .chain(message)
                    .reduce(|a, b| format!("{a}: {b}")),
            }
        };
        let before = |h: &&HookResult| matches!(h.phase, HookPhase::PreSync);
        let mut resources: Vec<ResourceResult> =
            self.hooks.iter().filter(before).map(hook).collect();
        resources.extend(self.resources.iter().map(|r| ResourceResult {
            resource: r.resource.clone(),
            action: match r.action {
                Action::Created => ResourceAction::Created,
                Action::Configured => ResourceAction::Configured,
                Action::Unchanged => ResourceAction::Unchanged,
                Action::Replaced => ResourceAction::Replaced,
                Action::Failed => ResourceAction::Failed,
                Action::Skipped => ResourceAction::Skipped,
                Action::WouldChange => ResourceAction::WouldChange,
            },
            message: r.error.as_ref().map(|e| e.to_string()),
        }));
        resources.extend(self.pruned.iter().map(|p| ResourceResult {
            resource: p.clone(),
            action: if self.dry_run {
                ResourceAction::WouldChange
            } else {
                ResourceAction::Pruned
            },
            message: self.dry_run.then(|| "would be pruned".to_owned()),
        }));
        resources.extend(self.kept.iter().map(|(k, why)| ResourceResult {
            resource: k.clone(),
            action: ResourceAction::PruneSkipped,
            message: Some(why.clone()),
        }));
        resources.extend(self.hooks.iter().filter(|h| !before(h)).map(hook));
        Operation {
            request_id,
            started_at: self.started_at,
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            phase: match self.outcome {
                Outcome::Succeeded => OperationPhase::Succeeded,
                Outcome::Failed { .. } => OperationPhase::Failed,
            },
            message: self.summary(),
            dry_run: self.dry_run,
            resources,
        }
    }

    /// Per-resource status as the link sends it to the hub.
    pub fn statuses(&self) -> Vec<ResourceStatus> {
        self.resources
            .iter()
            .map(|r| ResourceStatus {
                resource: r.resource.clone(),
                sync: match r.action {
                    Action::Failed | Action::Skipped | Action::WouldChange => SyncStatus::OutOfSync,
                    _ => SyncStatus::Synced,
                },
                health: r.health.health,
                message: r
                    .error
                    .as_ref()
                    .map(|e| e.to_string())
                    .or_else(|| Some(r.health.message.clone()).filter(|m| !m.is_empty())),
            })
            .collect()
    }
}

/// `group/version/kind namespace/name`, for messages.
pub fn describe(resource: &ResourceRef) -> String {
    let gv = if resource.gvk.group.is_empty() {
        resource.gvk.version.clone()
    } else {
        format!("{}/{}", resource.gvk.group, resource.gvk.version)
    };
    match &resource.namespace {
        Some(ns) => format!("{gv} {} {ns}/{}", resource.gvk.kind, resource.name),
        None => format!("{gv} {} {}", resource.gvk.kind, resource.name),
    }
}

/// The value of [`APP_LABEL`] for an app: `project.name` when that is a valid label
/// value, otherwise a readable prefix and a digest of the full reference, so two
/// apps never share a value.
pub fn app_label(app: &AppRef) -> String {
    let plain = format!("{}.{}", app.project, app.name);
    let valid = plain.len() <= 63
        && plain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && plain
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && plain
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        return plain;
    }
    let digest = Sha256::digest(format!("{}/{}", app.project, app.name).as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let prefix: String = plain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(46)
        .collect();
    let prefix = prefix.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if prefix.is_empty() {
        format!("h{hex}")
    } else {
        format!("{prefix}-{hex}")
    }
}

fn desired_hash(object: &Object) -> String {
    let digest = Sha256::digest(&object.manifest);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `option` (such as `Prune=false`) is set on the object or the app.
fn has_option(bundle: &Bundle, object: Option<&Object>, option: &str) -> bool {
    let on_object = object.is_some_and(|o| o.sync_options.iter().any(|s| s.trim() == option));
    on_object
        || bundle
            .policy
            .sync_options
            .iter()
            .any(|s| s.trim() == option)
}

fn option_value<'a>(bundle: &'a Bundle, key: &str) -> Option<&'a str> {
    bundle
        .policy
        .sync_options
        .iter()
        .find_map(|s| s.trim().strip_prefix(key)?.strip_prefix('='))
}

fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

fn scope_mismatch(resource: &ResourceRef, namespace: &str) -> Error {
    Error::ScopeMismatch {
        resource: describe(resource),
        kind: format!(
            "{}/{}/{}",
            resource.gvk.group, resource.gvk.version, resource.gvk.kind
        ),
        namespace: namespace.to_owned(),
    }
}

/// Whether discovery failed because the group, version or kind is not served (yet),
/// as opposed to a dead apiserver or a refused request.
fn is_not_served(error: &kube::Error) -> bool {
    is_not_found(error) || matches!(error, kube::Error::Discovery(_))
}

/// How long an applied CRD or APIService counts as a promise that its kinds will
/// be served, for bundles synced after the one that applied it.
const PROVIDER_WINDOW: Duration = Duration::from_secs(60);

/// What a CustomResourceDefinition or an APIService makes the apiserver serve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Provided {
    /// A CRD: one kind of one group.
    Kind {
        /// `spec.group`.
        group: String,
        /// `spec.names.kind`.
        kind: String,
    },
    /// An APIService: every kind of one group version.
    GroupVersion {
        /// `spec.group`.
        group: String,
        /// `spec.version`.
        version: String,
    },
}

impl Provided {
    /// What `object` provides, if it is a CRD or an APIService.
    fn by(object: &Object) -> Option<Self> {
        let crd = object.gvk.group == "apiextensions.k8s.io"
            && object.gvk.kind == "CustomResourceDefinition";
        let api_service =
            object.gvk.group == "apiregistration.k8s.io" && object.gvk.kind == "APIService";
        if !crd && !api_service {
            return None;
        }
        let manifest = object.manifest_json().ok()?;
        let field = |pointer: &str| manifest.pointer(pointer)?.as_str().map(str::to_owned);
        if crd {
            Some(Self::Kind {
                group: field("/spec/group")?,
                kind: field("/spec/names/kind")?,
            })
        } else {
            Some(Self::GroupVersion {
                group: field("/spec/group")?,
                version: field("/spec/version")?,
            })
        }
    }

    fn provides(&self, gvk: &Gvk) -> bool {
        match self {
            Self::Kind { group, kind } => *group == gvk.group && *kind == gvk.kind,
            Self::GroupVersion { group, version } => *group == gvk.group && *version == gvk.version,
        }
    }
}

/// Kinds that a CRD or APIService will serve soon, and how long lookups waited
/// for them.
#[derive(Default)]
struct Providers {
    /// When each provider was last in a bundle being synced or applied.
    promised: HashMap<Provided, std::time::Instant>,
    /// Kinds whose wait ran out, when, and after how long: a second lookup in
    /// the same sync (the live listing, then the apply) does not wait again.
    gave_up: HashMap<Gvk, (std::time::Instant, Duration)>,
    /// Kinds that were served only after a wait, and how long it took, for the
    /// sync report.
    waited: Vec<(Gvk, Duration)>,
}

impl Providers {
    fn promise(&mut self, provided: Provided) {
        let now = std::time::Instant::now();
        self.promised
            .retain(|_, at| now.duration_since(*at) < PROVIDER_WINDOW);
        self.gave_up
            .retain(|_, (at, _)| now.duration_since(*at) < PROVIDER_WINDOW);
        self.promised.insert(provided, now);
    }

    /// Whether a lookup of `gvk` that the cluster does not serve should wait.
    fn promise_for(&self, gvk: &Gvk, wait: Duration) -> Promise {
        let now = std::time::Instant::now();
        if let Some((at, waited)) = self.gave_up.get(gvk)
            && now.duration_since(*at) < wait
        {
            return Promise::GaveUp(*waited);
        }
        let promised = self
            .promised
            .iter()
            .any(|(p, at)| p.provides(gvk) && now.duration_since(*at) < PROVIDER_WINDOW);
        if promised {
            Promise::Wait
        } else {
            Promise::None
        }
    }
}

/// What [`Providers::promise_for`] says of a kind the cluster does not serve.
enum Promise {
    /// Nothing provides it: fail at once.
    None,
    /// A CRD or APIService provides it: ask again.
    Wait,
    /// A wait for it ran out a moment ago, after this long: fail at once.
    GaveUp(Duration),
}

/// Applies bundles to one cluster.
pub struct Applier {
    client: kube::Client,
    cluster: String,
    store: Store,
    options: Options,
    kinds: Mutex<HashMap<Gvk, (ApiResource, ApiCapabilities)>>,
    providers: std::sync::Mutex<Providers>,
    writes: AtomicU64,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// One step of work: an object with its identity and the manifest to send.
struct Task<'a> {
    object: &'a Object,
    resource: ResourceRef,
    label: String,
}

impl Applier {
    /// An applier for the cluster `client` talks to; `cluster` names it in logs.
    pub fn new(
        client: kube::Client,
        cluster: impl Into<String>,
        store: Store,
        options: Options,
    ) -> Self {
        Self {
            client,
            cluster: cluster.into(),
            store,
            options,
            kinds: Mutex::new(HashMap::new()),
            providers: std::sync::Mutex::new(Providers::default()),
            writes: AtomicU64::new(0),
        }
    }

    /// Write calls made since this applier was built.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// The kube client, for watchers that share the applier's connection.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The cluster's name, for logs.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The agent store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Remembers that `objects` provide kinds (CRDs, APIServices) about to be
    /// applied, so lookups of those kinds wait for them to be served.
    fn promise_kinds<'o>(&self, objects: impl IntoIterator<Item = &'o Object>) {
        let provided: Vec<Provided> = objects.into_iter().filter_map(Provided::by).collect();
        if provided.is_empty() {
            return;
        }
        let mut providers = self
            .providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in provided {
            providers.promise(p);
        }
    }

    /// Kinds of `bundle` that were served only after a wait, and how long it took.
    fn take_kind_waits(&self, bundle: &Bundle) -> Vec<(Gvk, Duration)> {
        let mut providers = self
            .providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (ours, others): (Vec<_>, Vec<_>) = std::mem::take(&mut providers.waited)
            .into_iter()
            .partition(|(gvk, _)| bundle.objects.iter().any(|o| o.gvk == *gvk));
        providers.waited = others;
        ours
    }

    /// Discovery for one kind, cached; a miss asks the apiserver again, so kinds of
    /// CRDs applied a moment ago are found.
    ///
    /// The apiserver marks a CRD Established a moment before discovery serves its
    /// group (and an APIService is Available only once its backend answers), so a
    /// kind that a CRD or APIService of the bundle provides, or one this agent
    /// applied in the last minute, is asked for again with a jittered backoff for
    /// up to [`Options::kind_wait`]. Any other unknown kind fails at once.
    async fn kind(&self, resource: &ResourceRef) -> Result<(ApiResource, ApiCapabilities)> {
        if let Some(found) = self.kinds.lock().await.get(&resource.gvk) {
            return Ok(found.clone());
        }
        let gvk = kube::api::GroupVersionKind::gvk(
            &resource.gvk.group,
            &resource.gvk.version,
            &resource.gvk.kind,
        );
        let kind = format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind);
        let started = Instant::now();
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut said = false;
        let found = loop {
            let source = match kube::discovery::pinned_kind(&self.client, &gvk).await {
                Ok(found) => break found,
                Err(source) => source,
            };
            let waited = started.elapsed();
            let promise = if is_not_served(&source) {
                self.providers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .promise_for(&resource.gvk, self.options.kind_wait)
            } else {
                Promise::None
            };
            let gave_up = match promise {
                Promise::Wait if waited < self.options.kind_wait => None,
                Promise::Wait => {
                    self.providers
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .gave_up
                        .insert(resource.gvk.clone(), (std::time::Instant::now(), waited));
                    Some(Some(waited))
                }
                Promise::GaveUp(earlier) => Some(Some(earlier)),
                Promise::None => Some(None),
            };
            if let Some(waited) = gave_up {
                return Err(Error::UnknownKind {
                    resource: describe(resource),
                    kind,
                    waited: waited.map_or_else(String::new, |w| {
                        format!(
                            " (waited {:.1} s for the CustomResourceDefinition or APIService that provides it)",
                            w.as_secs_f64()
                        )
                    }),
                    message: api_message(&source),
                    source: Box::new(source),
                });
            }
            if !said {
                info!(
                    object = %describe(resource),
                    %kind,
                    "waiting for the cluster to serve the kind that a CRD or APIService just applied provides"
                );
                said = true;
            }
            let remaining = self.options.kind_wait.saturating_sub(waited);
            let delay = backoff.next_delay(crate::backoff::random_unit());
            tokio::time::sleep(delay.min(remaining)).await;
        };
        if said {
            let waited = started.elapsed();
            info!(%kind, waited_ms = waited.as_millis() as u64, "the kind is served");
            self.providers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .waited
                .push((resource.gvk.clone(), waited));
        }
        self.kinds
            .lock()
            .await
            .insert(resource.gvk.clone(), found.clone());
        Ok(found)
    }

    /// Refuses what the cluster's own discovery says the hub got wrong: an object
    /// of a cluster-scoped kind placed in a namespace. Kinds the cluster does not
    /// serve yet (their CRD is in the bundle) are checked when they are applied.
    pub async fn check_scopes(&self, bundle: &Bundle) -> Result<()> {
        for object in &bundle.objects {
            if matches!(object.hook.as_ref().map(|h| h.phase), Some(HookPhase::Skip)) {
                continue;
            }
            let Some(namespace) = &object.namespace else {
                continue;
            };
            let resource = object.resource();
            let cached = self.kinds.lock().await.get(&resource.gvk).cloned();
            let caps = match cached {
                Some((_, caps)) => caps,
                None => {
                    let gvk = kube::api::GroupVersionKind::gvk(
                        &resource.gvk.group,
                        &resource.gvk.version,
                        &resource.gvk.kind,
                    );
                    match kube::discovery::pinned_kind(&self.client, &gvk).await {
                        Ok(found) => {
                            let caps = found.1.clone();
                            self.kinds.lock().await.insert(resource.gvk.clone(), found);
                            caps
                        }
                        Err(_) => continue,
                    }
                }
            };
            if caps.scope == Scope::Cluster {
                return Err(scope_mismatch(&resource, namespace));
            }
        }
        Ok(())
    }

    /// Refuses `bundle` when an object it applies lies outside the namespaces this
    /// agent is limited to: one in another namespace, or a cluster-scoped one.
    pub fn check_reach(&self, bundle: &Bundle) -> Result<()> {
        let Reach::Namespaces(allowed) = &self.options.reach else {
            return Ok(());
        };
        for object in &bundle.objects {
            if matches!(object.hook.as_ref().map(|h| h.phase), Some(HookPhase::Skip)) {
                continue;
            }
            let what = match &object.namespace {
                Some(namespace) if allowed.contains(namespace) => continue,
                Some(namespace) => format!("it is in namespace {namespace}"),
                None => "it is cluster-scoped".to_owned(),
            };
            return Err(Error::OutOfReach {
                resource: describe(&object.resource()),
                what,
                allowed: allowed.iter().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        Ok(())
    }

    /// A dynamic API handle for the object's kind and namespace.
    pub async fn api(&self, resource: &ResourceRef) -> Result<Api<DynamicObject>> {
        let (ar, caps) = self.kind(resource).await?;
        if let (Scope::Cluster, Some(namespace)) = (&caps.scope, &resource.namespace)
            && !resource.name.is_empty()
        {
            return Err(scope_mismatch(resource, namespace));
        }
        Ok(match (&caps.scope, &resource.namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(self.client.clone(), &ar),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &ar),
        })
    }

    /// The manifest to send: the bundle's, plus Flotilla's label and annotations.
    fn manifest(&self, bundle: &Bundle, task: &Task<'_>) -> Result<Value> {
        let mut manifest = task.object.manifest_json().map_err(|_| Error::Manifest {
            resource: describe(&task.resource),
        })?;
        let metadata = manifest
            .as_object_mut()
            .map(|m| {
                m.entry("metadata")
                    .or_insert_with(|| Value::Object(Default::default()))
            })
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Error::Manifest {
                resource: describe(&task.resource),
            })?;
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(APP_LABEL.into(), Value::String(task.label.clone()));
        }
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(
                APP_ANNOTATION.into(),
                Value::String(format!("{}/{}", bundle.app.project, bundle.app.name)),
            );
            annotations.insert(
                HASH_ANNOTATION.into(),
                Value::String(desired_hash(task.object)),
            );
        }
        Ok(manifest)
    }

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
        let tasks: Vec<Task<'_>> = sync_order(&bundle.objects)
            .into_iter()
            .filter(|o| !matches!(o.hook.as_ref().map(|h| h.phase), Some(HookPhase::Skip)))
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
        let (pre, rest): (Vec<_>, Vec<_>) = tasks
            .into_iter()
            .partition(|t| phase_of(t) == Some(HookPhase::PreSync));
        let (post, rest): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|t| phase_of(t) == Some(HookPhase::PostSync));
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
                let prune_last = has_option(bundle, None, "PruneLast=true");
                let mut result = Ok(());
                if !prune_last {
                    result = self.prune(bundle, request, &mut report).await;
                }
                if result.is_ok() {
                    result = self.run_phase(bundle, &post, &mut report).await;
                }
                if result.is_ok() && prune_last {
                    result = self.prune(bundle, request, &mut report).await;
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

    async fn run_sync_fail(&self, bundle: &Bundle, hooks: &[Task<'_>], report: &mut SyncReport) {
        if let Err(Outcome::Failed { message, .. }) = self.run_phase(bundle, hooks, report).await {
            warn!(%message, "a SyncFail hook failed too");
        }
    }

    /// Runs the hooks of one phase wave by wave; the first failing hook ends it.
    async fn run_phase(
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
    async fn run_hook(&self, bundle: &Bundle, task: &Task<'_>) -> HookResult {
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
            let live =
                api.get_opt(&task.resource.name)
                    .await
                    .map_err(|source| Error::Rejected {
                        resource: describe(&task.resource),
                        verb: "get",
                        message: api_message(&source),
                        source: Box::new(source),
                    })?;
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
            if policies.contains(&HookDeletePolicy::BeforeHookCreation) {
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
        for ns in namespaces {
            if let Err(e) = self.ensure_namespace(ns).await {
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
        let owned = |t: &Task<'_>| Owned {
            resource: t.resource.clone(),
            prune: !has_option(bundle, Some(t.object), "Prune=false"),
            delete: !has_option(bundle, Some(t.object), "Delete=false"),
        };
        let result = async {
            let mut inventory = self.store.inventory(&bundle.app)?;
            let known: BTreeSet<ResourceRef> =
                inventory.iter().map(|o| o.resource.clone()).collect();
            let before = inventory.len();
            inventory.extend(
                tasks
                    .iter()
                    .filter(|t| t.object.hook.is_none() && !known.contains(&t.resource))
                    .map(owned),
            );
            if inventory.len() != before {
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
        let action = if current.is_some() {
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

    async fn server_side_apply(
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
            .map_err(|source| Error::Rejected {
                resource: describe(&task.resource),
                verb: "apply",
                message: api_message(&source),
                source: Box::new(source),
            })
    }

    /// Dynamic API handles that together cover the object's kind wherever this
    /// agent may act: every namespace at once, or one handle per namespace it is
    /// limited to (it may not list the others), each with the namespace it covers
    /// (`None`: all of them).
    pub async fn apis_in_reach(
        &self,
        resource: &ResourceRef,
    ) -> Result<Vec<(Option<String>, Api<DynamicObject>)>> {
        let (ar, caps) = self.kind(resource).await?;
        Ok(match (&self.options.reach, caps.scope) {
            (Reach::Namespaces(allowed), Scope::Namespaced) => allowed
                .iter()
                .map(|namespace| {
                    let api = Api::namespaced_with(self.client.clone(), namespace, &ar);
                    (Some(namespace.clone()), api)
                })
                .collect(),
            _ => vec![(None, Api::all_with(self.client.clone(), &ar))],
        })
    }

    /// The manifest Flotilla applies for `object`: the bundle's, plus its label
    /// and annotations.
    pub fn desired_manifest(&self, bundle: &Bundle, object: &Object) -> Result<Value> {
        let task = Task {
            object,
            resource: object.resource(),
            label: app_label(&bundle.app),
        };
        self.manifest(bundle, &task)
    }

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
            .map_err(|source| Error::Rejected {
                resource: describe(&resource),
                verb: "dry-run apply",
                message: api_message(&source),
                source: Box::new(source),
            })?;
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
        for owned in self.store.inventory(&bundle.app)? {
            if !desired.contains(&owned.resource) {
                out.push(ResourceStatus {
                    resource: owned.resource,
                    sync: SyncStatus::OutOfSync,
                    health: Health::Healthy,
                    message: Some("requires pruning".to_owned()),
                });
            }
        }
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
                .map_err(|source| Error::Rejected {
                    resource: describe(&resource),
                    verb: "get",
                    message: api_message(&source),
                    source: Box::new(source),
                })?;
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
            if !crate::drift::differences(bundle, &resource, &desired, &live).is_empty() {
                let shown = |v: Value| {
                    to_yaml(&without_server_fields(crate::drift::without_ignored(
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
                let manifest = self.manifest(bundle, task)?;
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
        let rejected = |source: kube::Error| Error::Rejected {
            resource: describe(&task.resource),
            verb: "replace",
            message: api_message(&source),
            source: Box::new(source),
        };
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

    async fn ensure_namespace(&self, name: &str) -> Result<()> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let resource = ResourceRef {
            gvk: Gvk::new("", "v1", "Namespace"),
            namespace: None,
            name: name.to_owned(),
        };
        let rejected = |verb, source: kube::Error| Error::Rejected {
            resource: describe(&resource),
            verb,
            message: api_message(&source),
            source: Box::new(source),
        };
        if api
            .get_opt(name)
            .await
            .map_err(|e| rejected("get", e))?
            .is_some()
        {
            return Ok(());
        }
        let namespace = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        });
        self.writes.fetch_add(1, Ordering::Relaxed);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&namespace),
        )
        .await
        .map_err(|e| rejected("apply", e))?;
        Ok(())
    }

    /// Deletes an object if it exists and waits, through a watch, until it is gone.
    async fn delete_and_wait(
        &self,
        api: &Api<DynamicObject>,
        resource: &ResourceRef,
        propagation: PropagationPolicy,
    ) -> Result<()> {
        let rejected = |source: kube::Error| Error::Rejected {
            resource: describe(resource),
            verb: "delete",
            message: api_message(&source),
            source: Box::new(source),
        };
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

    /// Watches `names` (objects of one kind and namespace labelled for the app)
    /// until each is healthy, suspended or degraded, or the deadline passes, and
    /// returns the last assessment seen for each.
    async fn await_settled(
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

    /// Deletes objects that left the bundle: only those in the app's inventory
    /// that still carry this app's label, never `Prune=false` ones, and never
    /// everything at once without allowEmpty.
    async fn prune(
        &self,
        bundle: &Bundle,
        request: &SyncRequest,
        report: &mut SyncReport,
    ) -> Result<(), Outcome> {
        let fail = |e: Error| Outcome::Failed {
            resource: None,
            message: e.to_string(),
        };
        let automated = bundle.policy.automated.clone().unwrap_or_default();
        let (stay, leaving) = self.leaving(bundle, request).map_err(fail)?;
        if leaving.is_empty() {
            return Ok(());
        }
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
        let propagation = match option_value(bundle, "PrunePropagationPolicy") {
            Some("background") => PropagationPolicy::Background,
            Some("orphan") => PropagationPolicy::Orphan,
            _ => PropagationPolicy::Foreground,
        };
        let label = app_label(&bundle.app);
        let mut remaining = stay;
        for o in leaving {
            if !o.prune {
                report.kept.push((o.resource.clone(), "Prune=false".into()));
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
    fn leaving(&self, bundle: &Bundle, request: &SyncRequest) -> Result<(Vec<Owned>, Vec<Owned>)> {
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

    /// A sync that writes nothing: each object is compared with a server-side
    /// apply dry run of its desired state, and what would be pruned is listed.
    async fn dry_run_sync(&self, bundle: &Bundle, request: &SyncRequest, report: &mut SyncReport) {
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
                            let action = if crate::drift::compare(&after, current).is_empty() {
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
                    if prune && o.prune {
                        report.pruned.push(o.resource);
                    } else {
                        let why = if o.prune {
                            "requires pruning; prune is off"
                        } else {
                            "Prune=false"
                        };
                        report.kept.push((o.resource, why.into()));
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
        let rejected = |source: kube::Error| Error::Rejected {
            resource: describe(resource),
            verb: "delete",
            message: api_message(&source),
            source: Box::new(source),
        };
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

/// The object as JSON, with `apiVersion` and `kind` filled in: list items and
/// watch events leave them out, and health rules dispatch on them.
pub fn to_value(object: &DynamicObject, gvk: &Gvk) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        let api_version = if gvk.group.is_empty() {
            gvk.version.clone()
        } else {
            format!("{}/{}", gvk.group, gvk.version)
        };
        map.insert("apiVersion".into(), Value::String(api_version));
        map.insert("kind".into(), Value::String(gvk.kind.clone()));
    }
    value
}

/// Metadata the apiserver sets; a diff never shows it.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// The object without `status` and server-set metadata, for a diff.
pub fn without_server_fields(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in SERVER_METADATA {
                meta.remove(*key);
            }
        }
    }
    object
}

fn to_yaml(value: &Value) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|_| value.to_string())
}

fn is_settled(health: Health) -> bool {
    matches!(
        health,
        Health::Healthy | Health::Suspended | Health::Degraded
    )
}

/// Splits tasks already in sync order into runs of equal wave.
fn group_by_wave<'t, 'a>(tasks: &'t [Task<'a>]) -> Vec<&'t [Task<'a>]> {
    tasks
        .chunk_by(|a, b| order::effective_wave(a.object) == order::effective_wave(b.object))
        .collect()
}

/// Live objects Flotilla manages, listed once per kind per sync (one LIST call,
/// filtered by [`APP_LABEL`]), so deciding "unchanged" costs no call per object.
#[derive(Default)]
struct LiveCache {
    listed: HashMap<Gvk, Result<LiveObjects, String>>,
}

/// Live objects of one kind by (namespace, name).
type LiveObjects = HashMap<(Option<String>, String), Value>;

impl LiveCache {
    async fn load(&mut self, applier: &Applier, resource: &ResourceRef) {
        if self.listed.contains_key(&resource.gvk) {
            return;
        }
        let listed = async {
            let apis = applier
                .apis_in_reach(resource)
                .await
                .map_err(|e| e.to_string())?;
            let mut objects = LiveObjects::new();
            for (_, api) in apis {
                let list = api
                    .list(&ListParams::default().labels(APP_LABEL))
                    .await
                    .map_err(|e| api_message(&e))?;
                objects.extend(list.items.into_iter().map(|o| {
                    let key = (
                        o.metadata.namespace.clone(),
                        o.metadata.name.clone().unwrap_or_default(),
                    );
                    (key, to_value(&o, &resource.gvk))
                }));
            }
            Ok(objects)
        }
        .await;
        // An unknown kind is reported per object when it is applied.
        self.listed.insert(resource.gvk.clone(), listed);
    }

    fn get(&self, resource: &ResourceRef) -> Result<Option<&Value>> {
        match self.listed.get(&resource.gvk) {
            Some(Ok(objects)) => {
                Ok(objects.get(&(resource.namespace.clone(), resource.name.clone())))
            }
            _ => Ok(None),
        }
    }
}
