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
//!
//! The work is split by concern: `sync` runs the phases and waves, with
//! `hooks` for hook objects and `prune` for what left the bundle;
//! `discovery` knows which kinds the cluster serves and where this agent may
//! act; `diff` and the dry run say what a sync would change; `report` is
//! what a sync did. Live and desired states are compared in [`crate::compare`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_common::bundle::{Bundle, Object};
use flotilla_common::model::{AppRef, Gvk, Health, ResourceRef};
use kube::api::DynamicObject;
use kube::discovery::{ApiCapabilities, ApiResource};
use kube::runtime::watcher;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;

use crate::health::Assessment;
use crate::store::{self, Store};
use discovery::Providers;

mod diff;
mod discovery;
mod hooks;
mod live;
mod order;
mod prune;
mod report;
mod sync;
#[cfg(test)]
mod tests;

pub use discovery::Reach;
pub use order::{kind_rank, sync_order};
pub use report::{HookOutcome, HookResult, Outcome, SyncReport, WaveTiming};

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
    /// Asking the cluster about the object's kind failed for another reason than
    /// the kind not being served: the apiserver was unreachable or answered with
    /// an error.
    #[error("{resource}: could not ask the cluster about kind {kind}: {message}")]
    Discovery {
        /// The object.
        resource: String,
        /// `group/version/kind`.
        kind: String,
        /// The apiserver's message, or the connection's error.
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
    /// A user confirmed pruning: objects marked `Prune=confirm` are pruned too.
    pub confirm: bool,
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

/// The value of sync option `key` for `object`: the object's own option wins over
/// the app's, as in Argo CD.
fn object_option<'a>(bundle: &'a Bundle, object: &'a Object, key: &str) -> Option<&'a str> {
    object
        .sync_options
        .iter()
        .find_map(|s| s.trim().strip_prefix(key)?.strip_prefix('='))
        .or_else(|| option_value(bundle, key))
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
        // "client error (Connect)" says little; its causes say what happened
        // ("Connection refused").
        other => flotilla_common::error::describe(other),
    }
}

/// The error for a request about `resource` that the apiserver refused.
fn rejected<'r>(
    resource: &'r ResourceRef,
    verb: &'static str,
) -> impl Fn(kube::Error) -> Error + Copy + 'r {
    move |source| Error::Rejected {
        resource: describe(resource),
        verb,
        message: api_message(&source),
        source: Box::new(source),
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
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
