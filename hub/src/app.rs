//! Argo CD `Application` and `AppProject` manifests, read exactly as Argo CD users
//! write them (`argoproj.io/v1alpha1`).
//!
//! Every field is either understood or refused: an unknown field (a typo) and a field
//! Argo CD has but Flotilla does not support are both errors that name the field's
//! path, never silently dropped. Fields the API server owns (`status`, `uid`,
//! `resourceVersion`, ...) are accepted and ignored, so a manifest exported from a
//! live Argo CD still loads.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use appset::ApplicationSet;
pub use project::{AppProject, Violation};

pub mod adoption;
pub mod appset;

pub mod project;
#[cfg(test)]
mod tests;

/// The API version of every Argo CD kind Flotilla reads.
pub const API_VERSION: &str = "argoproj.io/v1alpha1";
/// The finalizer that makes deleting an Application delete what it deployed.
pub const RESOURCES_FINALIZER: &str = "resources-finalizer.argocd.argoproj.io";
/// The finalizer Argo CD's controller adds while PostDelete hooks run; accepted
/// in exported manifests, since Flotilla runs those hooks on every cascade.
pub const POST_DELETE_FINALIZER: &str = "post-delete-finalizer.argocd.argoproj.io";
/// The Application annotation that pauses reconciliation.
pub const SKIP_RECONCILE: &str = "argocd.argoproj.io/skip-reconcile";

/// The `argocd.argoproj.io/*` annotations an Application may carry: what Flotilla
/// does with each, or why it refuses it. Any other annotation under that prefix
/// is refused, so none is silently ignored.
pub const APPLICATION_ANNOTATIONS: &[(&str, Result<&str, &str>)] = &[
    (
        SKIP_RECONCILE,
        Ok("\"true\" pauses the app: nothing is rendered or issued for it"),
    ),
    (
        "argocd.argoproj.io/sync-wave",
        Ok(
            "not applicable: a parent's child Applications are adopted by the hub, not \
            applied in the parent's sync, so there are no waves to order them by",
        ),
    ),
    (
        "argocd.argoproj.io/manifest-generate-paths",
        Ok("not needed: Flotilla works out which apps a commit affects from their sources"),
    ),
    (
        "argocd.argoproj.io/refresh",
        Err(
            "Flotilla refreshes on every poll and push webhook; run `flotilla app sync` or \
             `flotilla app diff` instead of annotating",
        ),
    ),
    (
        "argocd.argoproj.io/deletion-approved",
        Err("confirm with `flotilla app confirm` or `flotilla app delete --confirm`"),
    ),
];

/// `destination.server` of the cluster Argo CD itself runs in.
pub const IN_CLUSTER_SERVER: &str = "https://kubernetes.default.svc";
/// The most retries `syncPolicy.retry.limit` may ask for (see the agent's engine:
/// retries run in line with the cluster's other apps).
pub const MAX_RETRY_LIMIT: i64 = 100;
/// The cluster name that [`IN_CLUSTER_SERVER`] stands for.
pub const IN_CLUSTER_NAME: &str = "in-cluster";

/// Why a manifest was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not valid YAML.
    #[error("{origin}: invalid YAML: {source}")]
    Yaml {
        origin: String,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A document is not an Argo CD kind Flotilla reads.
    #[error(
        "{origin}: document {index}: {found} is not an Argo CD Application or AppProject ({API_VERSION})"
    )]
    NotArgo {
        origin: String,
        index: usize,
        found: String,
    },
    /// A field has the wrong type, or is unknown (a typo or a newer Argo CD field).
    #[error("{origin}: {kind} {name:?}: field {path}: {message}")]
    Field {
        origin: String,
        kind: &'static str,
        name: String,
        path: String,
        message: String,
    },
    /// Argo CD has this field, but Flotilla does not support it.
    #[error("{origin}: {kind} {name:?}: field {path} is not supported by Flotilla: {why}")]
    Unsupported {
        origin: String,
        kind: &'static str,
        name: String,
        path: String,
        why: &'static str,
    },
    /// The fields are individually valid but do not make sense together.
    #[error("{origin}: {kind} {name:?}: {path}: {message}")]
    Invalid {
        origin: String,
        kind: &'static str,
        name: String,
        path: String,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A manifest from an Argo CD repo: one of the kinds Flotilla reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Manifest {
    Application(Box<Application>),
    AppProject(Box<AppProject>),
    ApplicationSet(Box<ApplicationSet>),
}

/// Reads every document of a YAML stream that is an Argo CD kind. Empty documents
/// are skipped; any other kind is an error, since a file handed to Flotilla as an
/// Application that holds something else is a mistake worth hearing about.
pub fn parse_manifests(text: &str, origin: &str) -> Result<Vec<Manifest>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|source| Error::Yaml {
        origin: origin.to_owned(),
        source: Box::new(source),
    })?;
    let mut out = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        match (api_version, kind) {
            (API_VERSION, "Application") => out.push(Manifest::Application(Box::new(
                Application::from_value(doc, origin)?,
            ))),
            (API_VERSION, "AppProject") => out.push(Manifest::AppProject(Box::new(
                AppProject::from_value(doc, origin)?,
            ))),
            (API_VERSION, "ApplicationSet") => out.push(Manifest::ApplicationSet(Box::new(
                ApplicationSet::from_value(doc, origin)?,
            ))),
            _ => {
                return Err(Error::NotArgo {
                    origin: origin.to_owned(),
                    index,
                    found: format!("{kind:?} in {api_version:?}"),
                });
            }
        }
    }
    Ok(out)
}

/// Deserializes `doc` into `T`, naming the path of the first bad field.
pub(crate) fn typed<T: DeserializeOwned>(
    doc: Value,
    origin: &str,
    kind: &'static str,
) -> Result<T> {
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    serde_path_to_error::deserialize(doc).map_err(|e| Error::Field {
        origin: origin.to_owned(),
        kind,
        name,
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// A field the API server or a controller owns: accepted, and dropped on reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerOwned;

impl<'de> Deserialize<'de> for ServerOwned {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Self)
    }
}

/// `metadata`: what a user sets, plus the server-owned fields, accepted and ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub finalizers: Vec<String>,
    #[serde(default, skip_serializing)]
    uid: ServerOwned,
    #[serde(default, skip_serializing)]
    resource_version: ServerOwned,
    #[serde(default, skip_serializing)]
    generation: ServerOwned,
    #[serde(default, skip_serializing)]
    creation_timestamp: ServerOwned,
    #[serde(default, skip_serializing)]
    managed_fields: ServerOwned,
    #[serde(default, skip_serializing)]
    self_link: ServerOwned,
}

/// An Argo CD `Application`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Application {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ApplicationSpec,
    /// Owned by the controller; accepted so exported manifests load, then ignored.
    #[serde(default, skip_serializing)]
    status: ServerOwned,
    #[serde(default, skip_serializing)]
    operation: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationSpec {
    #[serde(default = "default_project")]
    pub project: String,
    #[serde(default)]
    pub source: Option<Source>,
    /// Multiple sources (Argo CD 2.6+): each renders, or lends its files to the
    /// others' `$ref/…` value files through its `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<Source>>,
    pub destination: Destination,
    #[serde(default)]
    pub sync_policy: Option<SyncPolicy>,
    #[serde(default)]
    pub ignore_differences: Vec<IgnoreDifference>,
    #[serde(default)]
    pub info: Vec<Info>,
    #[serde(default)]
    pub revision_history_limit: Option<i64>,
    #[serde(default, skip_serializing)]
    source_hydrator: Option<Value>,
}

fn default_project() -> String {
    "default".to_owned()
}

/// Where the manifests come from: a path in a Git repo, or a chart in a Helm repo.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(rename = "repoURL")]
    pub repo_url: String,
    /// A branch, tag or commit for Git; a chart version (or range) for Helm repos.
    #[serde(default = "default_revision")]
    pub target_revision: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub chart: Option<String>,
    #[serde(default)]
    pub helm: Option<Helm>,
    #[serde(default)]
    pub kustomize: Option<Kustomize>,
    #[serde(default)]
    pub directory: Option<Directory>,
    /// A label for the source, shown in the UI; harmless.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, skip_serializing)]
    plugin: Option<Value>,
    /// A name other sources' Helm value files reach this source's files by
    /// (`$name/path`); multiple sources only.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_: Option<String>,
}

impl Source {
    /// Whether the source renders manifests itself; a source with only a `ref`
    /// lends its files to other sources and renders nothing.
    pub fn renders(&self) -> bool {
        self.chart.is_some() || self.path.is_some()
    }
}

fn default_revision() -> String {
    "HEAD".to_owned()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Helm {
    #[serde(default)]
    pub release_name: Option<String>,
    /// Values as one YAML string.
    #[serde(default)]
    pub values: Option<String>,
    /// Values as a structured object; merged over `values`.
    #[serde(default)]
    pub values_object: Option<Value>,
    /// Values files, relative to the chart (or `$values/...` refs, unsupported).
    #[serde(default)]
    pub value_files: Vec<String>,
    #[serde(default)]
    pub ignore_missing_value_files: bool,
    #[serde(default)]
    pub parameters: Vec<HelmParameter>,
    #[serde(default)]
    pub file_parameters: Vec<HelmFileParameter>,
    #[serde(default)]
    pub skip_crds: bool,
    #[serde(default)]
    pub skip_tests: bool,
    #[serde(default)]
    pub skip_schema_validation: bool,
    #[serde(default)]
    pub pass_credentials: bool,
    /// Only `v3` exists.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub kube_version: Option<String>,
    #[serde(default)]
    pub api_versions: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelmParameter {
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub force_string: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelmFileParameter {
    pub name: String,
    pub path: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kustomize {
    #[serde(default)]
    pub name_prefix: Option<String>,
    #[serde(default)]
    pub name_suffix: Option<String>,
    /// `name=newName:tag`, `name:tag`, `name@digest`, as `kustomize edit set image` takes.
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub force_common_labels: bool,
    #[serde(default)]
    pub force_common_annotations: bool,
    #[serde(default)]
    pub label_without_selector: bool,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub replicas: Vec<KustomizeReplica>,
    #[serde(default)]
    pub patches: Vec<Value>,
    #[serde(default)]
    pub components: Vec<String>,
    #[serde(default)]
    pub kube_version: Option<String>,
    #[serde(default)]
    pub api_versions: Vec<String>,
    #[serde(default, skip_serializing)]
    common_annotations_envsubst: Option<Value>,
    #[serde(default, skip_serializing)]
    version: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KustomizeReplica {
    pub name: String,
    pub count: Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Directory {
    #[serde(default)]
    pub recurse: bool,
    /// A glob, or `{a,b}` alternatives, matched against paths relative to the source path.
    #[serde(default)]
    pub include: Option<String>,
    #[serde(default)]
    pub exclude: Option<String>,
    #[serde(default, skip_serializing)]
    jsonnet: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncPolicy {
    #[serde(default)]
    pub automated: Option<Automated>,
    #[serde(default)]
    pub sync_options: Vec<String>,
    #[serde(default)]
    pub retry: Option<Retry>,
    #[serde(default)]
    pub managed_namespace_metadata: Option<ManagedNamespaceMetadata>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Automated {
    #[serde(default)]
    pub prune: bool,
    #[serde(default)]
    pub self_heal: bool,
    #[serde(default)]
    pub allow_empty: bool,
    /// Argo CD 3: `enabled: false` keeps the block but switches automation off.
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub backoff: Option<Backoff>,
    #[serde(default)]
    pub refresh: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub factor: Option<i64>,
    #[serde(default)]
    pub max_duration: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagedNamespaceMetadata {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IgnoreDifference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub json_pointers: Vec<String>,
    #[serde(default)]
    pub jq_path_expressions: Vec<String>,
    #[serde(default)]
    pub managed_fields_managers: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Info {
    pub name: String,
    pub value: String,
}

/// How an Application's source is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceKind {
    /// A chart from a Helm repository (`chart` is set).
    HelmRepo,
    /// Whatever the path holds: chosen from the files, as Argo CD does.
    Detect,
    Helm,
    Kustomize,
    Directory,
}

/// The sync options Argo CD defines, as `Name=value`. Anything else is refused.
const SYNC_OPTIONS: &[(&str, &[&str])] = &[
    ("CreateNamespace", &["true", "false"]),
    ("PruneLast", &["true", "false"]),
    (
        "PrunePropagationPolicy",
        &["foreground", "background", "orphan"],
    ),
    ("ApplyOutOfSyncOnly", &["true", "false"]),
    ("ServerSideApply", &["true", "false"]),
    ("Replace", &["true", "false"]),
    ("Validate", &["true", "false"]),
    ("RespectIgnoreDifferences", &["true", "false"]),
    ("FailOnSharedResource", &["true", "false"]),
    ("SkipDryRunOnMissingResource", &["true", "false"]),
    ("Prune", &["true", "false", "confirm"]),
    ("Delete", &["true", "false", "confirm"]),
    ("Force", &["true", "false"]),
];

/// Sync options Argo CD defines that Flotilla refuses, and why.
const REFUSED_SYNC_OPTIONS: &[(&str, &str)] = &[
    (
        "ServerSideApply=false",
        "Flotilla always applies server-side (field manager flotilla); client-side apply is \
         not implemented, so remove the option",
    ),
    (
        "Force=true",
        "deleting and re-creating an object the apiserver will not patch is not implemented; \
         remove the option (Replace=true replaces the object in place)",
    ),
];

/// Checks `Name=value` sync options against the ones Argo CD defines.
pub fn check_sync_option(option: &str) -> Result<(), String> {
    let Some((name, value)) = option.split_once('=') else {
        return Err(format!(
            "sync option {option:?} is not of the form Name=value"
        ));
    };
    match SYNC_OPTIONS.iter().find(|(n, _)| *n == name) {
        None => Err(format!("unknown sync option {name:?}")),
        Some((_, values)) if !values.contains(&value) => Err(format!(
            "sync option {name} takes one of {}, not {value:?}",
            values.join(", ")
        )),
        Some(_) if let Some((_, why)) = REFUSED_SYNC_OPTIONS.iter().find(|(o, _)| *o == option) => {
            Err(format!(
                "sync option {option} is not supported by Flotilla: {why}"
            ))
        }
        Some(_) => Ok(()),
    }
}

impl Application {
    /// Reads one Application from YAML text.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let mut found = parse_manifests(text, origin)?
            .into_iter()
            .filter_map(|m| match m {
                Manifest::Application(app) => Some(app),
                Manifest::AppProject(_) | Manifest::ApplicationSet(_) => None,
            });
        match (found.next(), found.next()) {
            (Some(app), None) => Ok(*app),
            (None, _) => Err(Error::NotArgo {
                origin: origin.to_owned(),
                index: 0,
                found: "no Application".to_owned(),
            }),
            (Some(app), Some(_)) => Err(Error::Invalid {
                origin: origin.to_owned(),
                kind: "Application",
                name: app.metadata.name.clone(),
                path: "(file)".to_owned(),
                message: "holds more than one Application; pass one".to_owned(),
            }),
        }
    }

    /// Reads and validates one Application from a parsed document.
    pub fn from_value(doc: Value, origin: &str) -> Result<Self> {
        let app: Self = typed(doc, origin, "Application")?;
        app.validate(origin)?;
        Ok(app)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The source: `spec.source`, or with several sources the first that renders.
    /// An `Application` only exists once validated, and validation refuses one
    /// without a source, and several sources of which none renders.
    pub fn source(&self) -> &Source {
        let sources = self.sources();
        sources
            .iter()
            .find(|s| s.renders())
            .or(sources.first())
            .expect("invariant: a validated Application has a source")
    }

    /// True when the app deletes what it deployed once it is itself deleted: the
    /// resources finalizer, or its `/foreground` or `/background` variant.
    pub fn cascades(&self) -> bool {
        self.metadata.finalizers.iter().any(|f| {
            f.strip_prefix(RESOURCES_FINALIZER).is_some_and(|rest| {
                rest.is_empty() || rest == "/foreground" || rest == "/background"
            })
        })
    }

    /// True when the cascade deletes in the background
    /// (`resources-finalizer.argocd.argoproj.io/background`).
    pub fn cascades_in_background(&self) -> bool {
        self.metadata
            .finalizers
            .iter()
            .any(|f| *f == format!("{RESOURCES_FINALIZER}/background"))
    }

    /// `argocd.argoproj.io/skip-reconcile: "true"`: the hub leaves the app as it
    /// is, rendering nothing and issuing nothing, as Argo CD's controller does.
    pub fn skips_reconcile(&self) -> bool {
        self.metadata
            .annotations
            .get(SKIP_RECONCILE)
            .is_some_and(|v| v == "true")
    }

    /// The automated policy, if automation is on.
    pub fn automated(&self) -> Option<&Automated> {
        self.spec
            .sync_policy
            .as_ref()
            .and_then(|p| p.automated.as_ref())
            .filter(|a| a.enabled != Some(false))
    }

    /// `syncPolicy.retry` as the agent runs it, with Argo CD's defaults: 5 s, a
    /// factor of 2, at most 3 min. `None` when the app does not retry.
    pub fn retry(&self) -> Option<flotilla_common::bundle::Retry> {
        let retry = self.spec.sync_policy.as_ref()?.retry.as_ref()?;
        let backoff = retry.backoff.clone().unwrap_or_default();
        let secs = |text: Option<&str>, default: u64| {
            text.and_then(retry_duration_secs).unwrap_or(default)
        };
        Some(flotilla_common::bundle::Retry {
            // An unset limit is Argo CD's 0: no retries.
            limit: u32::try_from(retry.limit.unwrap_or(0)).unwrap_or(0),
            backoff_secs: secs(backoff.duration.as_deref(), 5),
            factor: u64::try_from(backoff.factor.unwrap_or(2)).unwrap_or(1),
            max_backoff_secs: secs(backoff.max_duration.as_deref(), 180),
        })
        .filter(|r| r.limit > 0)
    }

    /// True when the sync options hold `Name=true` (options are case-sensitive, as in Argo CD).
    pub fn sync_option(&self, name: &str) -> Option<&str> {
        self.spec
            .sync_policy
            .as_ref()?
            .sync_options
            .iter()
            .find_map(|o| o.strip_prefix(name)?.strip_prefix('='))
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let name = self.metadata.name.clone();
        let invalid = |path: &str, message: String| Error::Invalid {
            origin: origin.to_owned(),
            kind: "Application",
            name: name.clone(),
            path: path.to_owned(),
            message,
        };
        let unsupported = |path: &str, why: &'static str| Error::Unsupported {
            origin: origin.to_owned(),
            kind: "Application",
            name: name.clone(),
            path: path.to_owned(),
            why,
        };

        if !is_dns_subdomain(&self.metadata.name) {
            return Err(invalid(
                "metadata.name",
                "must be a lowercase DNS name (a-z, 0-9, '-', '.'), at most 253 characters"
                    .to_owned(),
            ));
        }
        // The project is part of RBAC objects (`PROJECT/NAME`), like the name.
        if !is_dns_subdomain(&self.spec.project) {
            return Err(invalid(
                "spec.project",
                format!(
                    "{:?} must be a lowercase DNS name (a-z, 0-9, '-', '.'), at most 253 \
                     characters",
                    self.spec.project
                ),
            ));
        }
        for (key, value) in &self.metadata.annotations {
            if !key.starts_with("argocd.argoproj.io/") {
                continue;
            }
            match APPLICATION_ANNOTATIONS.iter().find(|(k, _)| k == key) {
                Some((_, Ok(_)))
                    if key != SKIP_RECONCILE || value == "true" || value == "false" => {}
                Some((_, Ok(_))) => {
                    return Err(invalid(
                        &format!("metadata.annotations[{key}]"),
                        format!("must be \"true\" or \"false\", not {value:?}"),
                    ));
                }
                Some((_, Err(why))) => {
                    return Err(unsupported(&format!("metadata.annotations[{key}]"), why));
                }
                None => {
                    return Err(unsupported(
                        &format!("metadata.annotations[{key}]"),
                        "an Argo CD annotation Flotilla does not know on an Application",
                    ));
                }
            }
        }
        for (i, finalizer) in self.metadata.finalizers.iter().enumerate() {
            let known = finalizer
                .strip_prefix(RESOURCES_FINALIZER)
                .is_some_and(|rest| {
                    rest.is_empty() || rest == "/foreground" || rest == "/background"
                })
                || finalizer.starts_with(POST_DELETE_FINALIZER);
            if !known {
                return Err(unsupported(
                    &format!("metadata.finalizers[{i}]"),
                    "Flotilla knows resources-finalizer.argocd.argoproj.io (and its /foreground \
                     and /background variants) and Argo CD's post-delete finalizers; an \
                     Application is not a Kubernetes object here, so no other finalizer runs",
                ));
            }
        }
        if self.operation.is_some() {
            return Err(unsupported(
                "operation",
                "start a sync with `flotilla app sync` instead of writing an operation",
            ));
        }
        if self.spec.source_hydrator.is_some() {
            return Err(unsupported(
                "spec.sourceHydrator",
                "source hydration is not implemented",
            ));
        }
        match (&self.spec.source, &self.spec.sources) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "spec",
                    "sets both source and sources; Argo CD would ignore source: set one".to_owned(),
                ));
            }
            (None, None) => return Err(invalid("spec.source", "is required".to_owned())),
            (None, Some(sources)) if sources.is_empty() => {
                return Err(invalid(
                    "spec.sources",
                    "is empty; give at least one source".to_owned(),
                ));
            }
            (Some(source), None) => {
                self.validate_source(source, "spec.source", &BTreeMap::new(), origin)?;
            }
            (None, Some(sources)) => {
                // Refs first, so any source's value files may name any ref.
                let mut refs = BTreeMap::new();
                for (i, source) in sources.iter().enumerate() {
                    let at = format!("spec.sources[{i}]");
                    let Some(name) = &source.ref_ else { continue };
                    let valid = !name.is_empty()
                        && name.len() <= 63
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if !valid {
                        return Err(invalid(
                            &format!("{at}.ref"),
                            format!("{name:?} must be letters, digits, '-' or '_'"),
                        ));
                    }
                    if source.chart.is_some() {
                        return Err(unsupported(
                            &format!("{at}.ref"),
                            "a ref names a Git source's files; a chart from a Helm repository has none to lend",
                        ));
                    }
                    if refs.insert(name.clone(), i).is_some() {
                        return Err(invalid(
                            &format!("{at}.ref"),
                            format!("{name:?} is used by another source too"),
                        ));
                    }
                }
                for (i, source) in sources.iter().enumerate() {
                    self.validate_source(source, &format!("spec.sources[{i}]"), &refs, origin)?;
                }
                if !sources.iter().any(Source::renders) {
                    return Err(invalid(
                        "spec.sources",
                        "no source has a path or a chart, so nothing would render".to_owned(),
                    ));
                }
            }
        }

        let dest = &self.spec.destination;
        match (&dest.server, &dest.name) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "spec.destination",
                    "sets both server and name; set one".to_owned(),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "spec.destination",
                    "needs server or name".to_owned(),
                ));
            }
            _ => {}
        }

        if let Some(policy) = &self.spec.sync_policy {
            for (i, option) in policy.sync_options.iter().enumerate() {
                check_sync_option(option)
                    .map_err(|m| invalid(&format!("spec.syncPolicy.syncOptions[{i}]"), m))?;
            }
        }
        if self
            .spec
            .sync_policy
            .as_ref()
            .is_some_and(|p| p.managed_namespace_metadata.is_some())
            && self.sync_option("CreateNamespace") != Some("true")
        {
            return Err(invalid(
                "spec.syncPolicy.managedNamespaceMetadata",
                "applies to the namespace CreateNamespace=true makes; add that sync option"
                    .to_owned(),
            ));
        }
        if let Some(retry) = self
            .spec
            .sync_policy
            .as_ref()
            .and_then(|p| p.retry.as_ref())
        {
            if retry.limit.is_some_and(|l| l > MAX_RETRY_LIMIT) {
                return Err(unsupported(
                    "spec.syncPolicy.retry.limit",
                    "more than 100 retries: the agent retries in line with its cluster's other \
                     apps, so a longer series would hold them all back",
                ));
            }
            if retry.limit.is_some_and(|l| l < 0) {
                return Err(unsupported(
                    "spec.syncPolicy.retry.limit",
                    "unlimited retries (a negative limit) would hold the app's newer revisions back \
                     forever; set a limit",
                ));
            }
            if retry.refresh {
                return Err(unsupported(
                    "spec.syncPolicy.retry.refresh",
                    "a retry syncs the bundle that failed; a newer revision is synced once the \
                     retries end",
                ));
            }
            let backoff = retry.backoff.clone().unwrap_or_default();
            for (field, text) in [
                ("duration", &backoff.duration),
                ("maxDuration", &backoff.max_duration),
            ] {
                if let Some(text) = text.as_deref().filter(|t| retry_duration_secs(t).is_none()) {
                    return Err(invalid(
                        &format!("spec.syncPolicy.retry.backoff.{field}"),
                        format!("{text:?} is not a duration such as 5s, 2m or 1h (or seconds)"),
                    ));
                }
            }
            if backoff.factor.is_some_and(|f| f < 1) {
                return Err(invalid(
                    "spec.syncPolicy.retry.backoff.factor",
                    "must be at least 1".to_owned(),
                ));
            }
        }
        for (i, ignore) in self.spec.ignore_differences.iter().enumerate() {
            if let Some(p) = ignore.json_pointers.iter().find(|p| !p.starts_with('/')) {
                return Err(invalid(
                    &format!("spec.ignoreDifferences[{i}].jsonPointers"),
                    format!("{p:?} is not a JSON pointer (it must start with '/')"),
                ));
            }
            for (j, expr) in ignore.jq_path_expressions.iter().enumerate() {
                if let Err(e) = flotilla_common::jq::PathExpr::compile(expr) {
                    return Err(invalid(
                        &format!("spec.ignoreDifferences[{i}].jqPathExpressions[{j}]"),
                        e.to_string(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks one source at `at` (`spec.source` or `spec.sources[i]`); `refs` are
    /// the multi-source refs by name (empty for a single source).
    fn validate_source(
        &self,
        source: &Source,
        at: &str,
        refs: &BTreeMap<String, usize>,
        origin: &str,
    ) -> Result<()> {
        let name = self.metadata.name.clone();
        let invalid = |path: &str, message: String| Error::Invalid {
            origin: origin.to_owned(),
            kind: "Application",
            name: name.clone(),
            path: format!("{at}{path}"),
            message,
        };
        let unsupported = |path: &str, why: &'static str| Error::Unsupported {
            origin: origin.to_owned(),
            kind: "Application",
            name: name.clone(),
            path: format!("{at}{path}"),
            why,
        };
        let multi = at != "spec.source";
        if source.plugin.is_some() {
            return Err(unsupported(
                ".plugin",
                "config management plugins are not implemented",
            ));
        }
        if source.ref_.is_some() && !multi {
            return Err(unsupported(
                ".ref",
                "refs only exist for multiple sources (spec.sources)",
            ));
        }
        if source.repo_url.trim().is_empty() {
            return Err(invalid(".repoURL", "is required".to_owned()));
        }
        match (&source.chart, &source.path) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "",
                    "sets both chart (a Helm repository) and path (a Git repository); set one"
                        .to_owned(),
                ));
            }
            (None, None) if source.ref_.is_none() => {
                return Err(invalid(
                    ".path",
                    "is required unless chart (or, among several sources, ref) is set".to_owned(),
                ));
            }
            _ => {}
        }
        if let Some(path) = source
            .path
            .as_ref()
            .filter(|p| p.starts_with('/') || p.split('/').any(|part| part == ".."))
        {
            return Err(invalid(
                ".path",
                format!("{path:?} must stay inside the repository"),
            ));
        }
        let types = [
            source.helm.is_some(),
            source.kustomize.is_some(),
            source.directory.is_some(),
        ];
        if types.iter().filter(|t| **t).count() > 1 {
            return Err(invalid(
                "",
                "sets more than one of helm, kustomize and directory; set one".to_owned(),
            ));
        }
        if !source.renders() && types.iter().any(|t| *t) {
            return Err(invalid(
                "",
                "a source with only a ref renders nothing; its helm, kustomize or directory \
                 settings would be ignored"
                    .to_owned(),
            ));
        }
        if source.chart.is_some() && (source.kustomize.is_some() || source.directory.is_some()) {
            return Err(invalid("", "a chart is rendered with helm only".to_owned()));
        }
        if let Some(helm) = &source.helm {
            if let Some(v) = helm.version.as_deref().filter(|v| *v != "v3") {
                return Err(invalid(
                    ".helm.version",
                    format!("only v3 exists, not {v:?}"),
                ));
            }
            for file in helm.value_files.iter().filter(|f| f.starts_with('$')) {
                if !multi {
                    return Err(unsupported(
                        ".helm.valueFiles",
                        "$ref value files need multiple sources (spec.sources)",
                    ));
                }
                let (reference, rest) = file[1..].split_once('/').unwrap_or((&file[1..], ""));
                if !refs.contains_key(reference) {
                    return Err(invalid(
                        ".helm.valueFiles",
                        format!("{file:?} names ref {reference:?}, which no source has"),
                    ));
                }
                if rest.is_empty()
                    || rest.starts_with('/')
                    || rest.split('/').any(|part| part == "..")
                {
                    return Err(invalid(
                        ".helm.valueFiles",
                        format!(
                            "{file:?} must name a file inside ref {reference:?}'s checkout, \
                             without '..' or a leading '/'"
                        ),
                    ));
                }
            }
            if helm.values_object.as_ref().is_some_and(|v| !v.is_object()) {
                return Err(invalid(
                    ".helm.valuesObject",
                    "must be a mapping".to_owned(),
                ));
            }
        }
        if let Some(k) = &source.kustomize {
            if k.common_annotations_envsubst.is_some() {
                return Err(unsupported(
                    ".kustomize.commonAnnotationsEnvsubst",
                    "environment substitution is not implemented",
                ));
            }
            if k.version.is_some() {
                return Err(unsupported(
                    ".kustomize.version",
                    "Flotilla runs the one kustomize it ships with",
                ));
            }
        }
        if source
            .directory
            .as_ref()
            .is_some_and(|d| d.jsonnet.is_some())
        {
            return Err(unsupported(
                ".directory.jsonnet",
                "jsonnet is not implemented",
            ));
        }
        Ok(())
    }

    /// Every source of the app: `spec.sources`, or `spec.source` alone.
    pub fn sources(&self) -> &[Source] {
        match (&self.spec.sources, &self.spec.source) {
            (Some(sources), _) if !sources.is_empty() => sources,
            (_, Some(source)) => std::slice::from_ref(source),
            _ => &[],
        }
    }

    /// Whether the app has more than one source (`spec.sources`).
    pub fn is_multi_source(&self) -> bool {
        self.spec.sources.is_some()
    }

    /// Whether the app is rendered from something other than one Git source: a
    /// chart from a Helm repository, or several sources. Such apps are resolved
    /// source by source ([`crate::refresh`]), not from one Git commit.
    pub fn needs_resolved_sources(&self) -> bool {
        self.is_multi_source() || self.sources().iter().any(|s| s.chart.is_some())
    }

    /// How the source is rendered, from what the Application says.
    pub fn source_kind(&self) -> SourceKind {
        self.source().kind()
    }
}

impl Source {
    /// How this source is rendered, from what it says.
    pub fn kind(&self) -> SourceKind {
        let source = self;
        if source.chart.is_some() {
            SourceKind::HelmRepo
        } else if source.helm.is_some() {
            SourceKind::Helm
        } else if source.kustomize.is_some() {
            SourceKind::Kustomize
        } else if source.directory.is_some() {
            SourceKind::Directory
        } else {
            SourceKind::Detect
        }
    }
}

/// A retry backoff: a Go-style duration (`5s`, `2m`), or bare seconds, as Argo CD
/// reads it.
fn retry_duration_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(secs);
    }
    project::windows::parse_duration(text).and_then(|d| u64::try_from(d.as_secs()).ok())
}

pub(crate) use flotilla_common::model::is_dns_subdomain;
