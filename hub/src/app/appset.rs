//! Argo CD `ApplicationSet`: one template, many Applications, one per parameter set
//! its generators produce.
//!
//! Supported generators are `list`, `clusters` (the hub's registered clusters,
//! selected by labels) and `git` directories; templates use Argo CD's default
//! `{{param}}` substitution. Anything else (`matrix`, `merge`, `scmProvider`,
//! `pullRequest`, `goTemplate: true`, …) is refused by name, never ignored.
//!
//! `spec.strategy` is read as Argo CD writes it: `AllAtOnce`, or `RollingSync`
//! with `rollingSync.steps` (label `matchExpressions` on the generated
//! Applications, `maxUpdate` as a count or a percent). [`crate::rollout`] drives
//! a RollingSync set's apps step by step.

use std::collections::BTreeMap;
use std::time::Duration;

use globset::Glob;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Application, Error, Metadata, Result, ServerOwned, typed};

#[cfg(test)]
mod tests;

/// An Argo CD `ApplicationSet`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationSet {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ApplicationSetSpec,
    #[serde(default, skip_serializing)]
    status: ServerOwned,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationSetSpec {
    pub generators: Vec<Generator>,
    /// An Application's `metadata` and `spec`, with `{{param}}` placeholders.
    pub template: Value,
    #[serde(default)]
    pub go_template: bool,
    #[serde(default, skip_serializing)]
    go_template_options: Option<Value>,
    #[serde(default)]
    pub sync_policy: Option<AppSetSyncPolicy>,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    #[serde(default, skip_serializing)]
    template_patch: Option<Value>,
    #[serde(default, skip_serializing)]
    ignore_application_differences: Option<Value>,
    #[serde(default, skip_serializing)]
    preserved_fields: Option<Value>,
}

/// How generated Applications take a change: Argo CD's `spec.strategy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Strategy {
    /// `AllAtOnce` (the default) or `RollingSync`.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub rolling_sync: Option<RollingSync>,
    #[serde(default, skip_serializing)]
    deletion_order: Option<Value>,
}

/// The steps of a `RollingSync` strategy, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingSync {
    #[serde(default)]
    pub steps: Vec<RollingStep>,
}

/// One step: the generated Applications whose labels match every expression.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingStep {
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
    /// How many of the step's apps may be updating at once: a count, or a
    /// percent of the step's apps (`"25%"`). Unset is all of them; 0 holds the
    /// step until it is promoted.
    #[serde(default)]
    pub max_update: Option<IntOrPercent>,
}

/// Kubernetes' int-or-string, as `maxUpdate` takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrPercent {
    Int(i64),
    Text(String),
}

impl IntOrPercent {
    /// How many of `total` apps this allows at once. A percent rounds down but
    /// never below one, so only an explicit 0 (or `0%`) holds a step.
    pub fn of(&self, total: usize) -> Result<usize, String> {
        match self {
            Self::Int(n) => usize::try_from(*n).map_err(|_| format!("{n} is negative")),
            Self::Text(text) => {
                let percent: u64 = text
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse().ok())
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| {
                        format!("{text:?} is not a count nor a percent from 0% to 100%")
                    })?;
                if percent == 0 {
                    return Ok(0);
                }
                let total_u64 = u64::try_from(total).unwrap_or(u64::MAX);
                let share =
                    usize::try_from(total_u64.saturating_mul(percent) / 100).unwrap_or(total);
                Ok(share.max(1))
            }
        }
    }
}

impl Strategy {
    /// The steps when this is a `RollingSync`.
    pub fn rolling_steps(&self) -> Option<&[RollingStep]> {
        (self.kind == "RollingSync")
            .then(|| self.rolling_sync.as_ref().map(|r| r.steps.as_slice()))
            .flatten()
    }
}

impl RollingStep {
    /// Whether an Application with `labels` belongs to this step.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        selects(
            &LabelSelector {
                match_labels: BTreeMap::new(),
                match_expressions: self.match_expressions.clone(),
            },
            labels,
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSetSyncPolicy {
    /// Keep what generated apps deployed when they are removed.
    #[serde(default)]
    pub preserve_resources_on_deletion: bool,
    #[serde(default, skip_serializing)]
    applications_sync: Option<Value>,
}

/// One generator; exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Generator {
    #[serde(default)]
    pub list: Option<ListGenerator>,
    #[serde(default)]
    pub clusters: Option<ClustersGenerator>,
    #[serde(default)]
    pub git: Option<GitGenerator>,
    #[serde(default, skip_serializing)]
    matrix: Option<Value>,
    #[serde(default, skip_serializing)]
    merge: Option<Value>,
    #[serde(default, skip_serializing)]
    scm_provider: Option<Value>,
    #[serde(default, skip_serializing)]
    pull_request: Option<Value>,
    #[serde(default, skip_serializing)]
    cluster_decision_resource: Option<Value>,
    #[serde(default, skip_serializing)]
    plugin: Option<Value>,
    #[serde(default, skip_serializing)]
    selector: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListGenerator {
    pub elements: Vec<BTreeMap<String, Value>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClustersGenerator {
    #[serde(default)]
    pub selector: LabelSelector,
    /// Extra parameters, available as `values.KEY`; may use the cluster's params.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelExpression {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitGenerator {
    #[serde(rename = "repoURL")]
    pub repo_url: String,
    #[serde(default = "head")]
    pub revision: String,
    #[serde(default)]
    pub directories: Vec<GitDirectory>,
    #[serde(default, skip_serializing)]
    files: Option<Value>,
    #[serde(default, skip_serializing)]
    path_param_prefix: Option<Value>,
    #[serde(default, skip_serializing)]
    values: Option<Value>,
}

fn head() -> String {
    "HEAD".to_owned()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitDirectory {
    pub path: String,
    #[serde(default)]
    pub exclude: bool,
}

/// A registered cluster, as the clusters generator sees it.
#[derive(Clone, Debug, Default)]
pub struct ClusterParams {
    pub name: String,
    pub server: String,
    pub labels: BTreeMap<String, String>,
}

/// What a generator needs from outside: the hub's clusters, and the directories at
/// a revision of a repo.
pub trait GeneratorInput {
    fn clusters(&self) -> Vec<ClusterParams>;
    /// Every directory path (repo-relative, `/`-separated) at `revision` of `repo`.
    fn directories(&self, repo: &str, revision: &str) -> std::result::Result<Vec<String>, String>;
}

impl ApplicationSet {
    /// Reads and validates one ApplicationSet from a parsed document.
    pub fn from_value(doc: Value, origin: &str) -> Result<Self> {
        let set: Self = typed(doc, origin, "ApplicationSet")?;
        set.validate(origin)?;
        Ok(set)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    fn unsupported(&self, origin: &str, path: &str, why: &'static str) -> Error {
        Error::Unsupported {
            origin: origin.to_owned(),
            kind: "ApplicationSet",
            name: self.metadata.name.clone(),
            path: path.to_owned(),
            why,
        }
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let spec = &self.spec;
        if spec.go_template || spec.go_template_options.is_some() {
            return Err(self.unsupported(
                origin,
                "spec.goTemplate",
                "only {{param}} templates are implemented",
            ));
        }
        if let Some(strategy) = &spec.strategy {
            self.validate_strategy(origin, strategy)?;
        }
        for (path, set) in [
            ("spec.templatePatch", spec.template_patch.is_some()),
            (
                "spec.ignoreApplicationDifferences",
                spec.ignore_application_differences.is_some(),
            ),
            ("spec.preservedFields", spec.preserved_fields.is_some()),
            (
                "spec.syncPolicy.applicationsSync",
                spec.sync_policy
                    .as_ref()
                    .is_some_and(|p| p.applications_sync.is_some()),
            ),
        ] {
            if set {
                return Err(self.unsupported(origin, path, "not implemented"));
            }
        }
        for (i, g) in spec.generators.iter().enumerate() {
            let at = |field: &str| format!("spec.generators[{i}].{field}");
            for (field, set) in [
                ("matrix", g.matrix.is_some()),
                ("merge", g.merge.is_some()),
                ("scmProvider", g.scm_provider.is_some()),
                ("pullRequest", g.pull_request.is_some()),
                (
                    "clusterDecisionResource",
                    g.cluster_decision_resource.is_some(),
                ),
                ("plugin", g.plugin.is_some()),
                ("selector", g.selector.is_some()),
            ] {
                if set {
                    return Err(self.unsupported(
                        origin,
                        &at(field),
                        "this generator is not implemented",
                    ));
                }
            }
            if g.git.as_ref().is_some_and(|git| {
                git.files.is_some() || git.path_param_prefix.is_some() || git.values.is_some()
            }) {
                return Err(self.unsupported(
                    origin,
                    &at("git"),
                    "only git directories are implemented",
                ));
            }
            let set = [g.list.is_some(), g.clusters.is_some(), g.git.is_some()];
            if set.iter().filter(|s| **s).count() != 1 {
                return Err(Error::Invalid {
                    origin: origin.to_owned(),
                    kind: "ApplicationSet",
                    name: self.metadata.name.clone(),
                    path: format!("spec.generators[{i}]"),
                    message: "needs exactly one generator".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The rollout gates set by annotation: how long an app must stay Synced and
    /// Healthy before it passes ([`SOAK_ANNOTATION`], none by default), and how
    /// long it may take to get there ([`PROGRESS_DEADLINE_ANNOTATION`], ten
    /// minutes by default).
    pub fn rollout_gates(&self) -> std::result::Result<(Duration, Duration), (String, String)> {
        let read = |key: &str, default: Duration| match self.metadata.annotations.get(key) {
            None => Ok(default),
            Some(text) => parse_duration(text).ok_or_else(|| {
                (
                    format!("metadata.annotations[{key:?}]"),
                    format!("{text:?} is not a duration such as 30s, 5m or 1h"),
                )
            }),
        };
        Ok((
            read(SOAK_ANNOTATION, Duration::ZERO)?,
            read(PROGRESS_DEADLINE_ANNOTATION, DEFAULT_PROGRESS_DEADLINE)?,
        ))
    }

    fn validate_strategy(&self, origin: &str, strategy: &Strategy) -> Result<()> {
        let invalid = |path: String, message: String| Error::Invalid {
            origin: origin.to_owned(),
            kind: "ApplicationSet",
            name: self.metadata.name.clone(),
            path,
            message,
        };
        if strategy.deletion_order.is_some() {
            return Err(self.unsupported(origin, "spec.strategy.deletionOrder", "not implemented"));
        }
        if let Err((path, message)) = self.rollout_gates() {
            return Err(invalid(path, message));
        }
        match strategy.kind.as_str() {
            "" | "AllAtOnce" => Ok(()),
            "RollingSync" => {
                let steps = strategy.rolling_steps().unwrap_or_default();
                if steps.is_empty() {
                    return Err(invalid(
                        "spec.strategy.rollingSync.steps".to_owned(),
                        "a RollingSync strategy needs at least one step".to_owned(),
                    ));
                }
                for (i, step) in steps.iter().enumerate() {
                    for (j, e) in step.match_expressions.iter().enumerate() {
                        if !matches!(
                            e.operator.as_str(),
                            "In" | "NotIn" | "Exists" | "DoesNotExist"
                        ) {
                            return Err(invalid(
                                format!(
                                    "spec.strategy.rollingSync.steps[{i}].matchExpressions[{j}].operator"
                                ),
                                format!(
                                    "{:?} is not In, NotIn, Exists or DoesNotExist",
                                    e.operator
                                ),
                            ));
                        }
                    }
                    if let Some(max) = &step.max_update {
                        max.of(1).map_err(|m| {
                            invalid(format!("spec.strategy.rollingSync.steps[{i}].maxUpdate"), m)
                        })?;
                    }
                }
                Ok(())
            }
            other => Err(invalid(
                "spec.strategy.type".to_owned(),
                format!("{other:?} is not AllAtOnce or RollingSync"),
            )),
        }
    }

    /// The Applications this set generates now, in generator order. Two parameter
    /// sets that give one Application name are an error, as in Argo CD.
    pub fn generate(&self, input: &dyn GeneratorInput) -> Result<Vec<Application>> {
        let origin = format!("ApplicationSet {}", self.name());
        let invalid = |path: String, message: String| Error::Invalid {
            origin: origin.clone(),
            kind: "ApplicationSet",
            name: self.metadata.name.clone(),
            path,
            message,
        };
        let mut params: Vec<BTreeMap<String, String>> = Vec::new();
        for (i, g) in self.spec.generators.iter().enumerate() {
            if let Some(list) = &g.list {
                params.extend(list.elements.iter().map(|e| {
                    e.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                            )
                        })
                        .collect()
                }));
            } else if let Some(c) = &g.clusters {
                for cluster in input
                    .clusters()
                    .into_iter()
                    .filter(|cl| selects(&c.selector, &cl.labels))
                {
                    let mut p = BTreeMap::from([
                        ("name".to_owned(), cluster.name.clone()),
                        ("nameNormalized".to_owned(), normalize(&cluster.name)),
                        ("server".to_owned(), cluster.server.clone()),
                    ]);
                    for (k, v) in &cluster.labels {
                        p.insert(format!("metadata.labels.{k}"), v.clone());
                    }
                    for (k, v) in &c.values {
                        let value = substitute_str(v, &p);
                        p.insert(format!("values.{k}"), value);
                    }
                    params.push(p);
                }
            } else if let Some(git) = &g.git {
                let dirs = input
                    .directories(&git.repo_url, &git.revision)
                    .map_err(|m| invalid(format!("spec.generators[{i}].git"), m))?;
                let globs = |exclude: bool| -> Vec<globset::GlobMatcher> {
                    git.directories
                        .iter()
                        .filter(|d| d.exclude == exclude)
                        .filter_map(|d| Glob::new(&d.path).ok().map(|g| g.compile_matcher()))
                        .collect()
                };
                let (include, exclude) = (globs(false), globs(true));
                for dir in dirs {
                    if include.iter().any(|g| g.is_match(&dir))
                        && !exclude.iter().any(|g| g.is_match(&dir))
                    {
                        params.push(path_params(&dir));
                    }
                }
            }
        }
        let mut apps = Vec::with_capacity(params.len());
        let mut names = BTreeMap::new();
        for p in &params {
            let mut template = self.spec.template.clone();
            substitute(&mut template, p);
            let Value::Object(mut doc) = template else {
                return Err(invalid(
                    "spec.template".to_owned(),
                    "must be a mapping".to_owned(),
                ));
            };
            doc.insert("apiVersion".to_owned(), super::API_VERSION.into());
            doc.insert("kind".to_owned(), "Application".into());
            let app = Application::from_value(Value::Object(doc), &origin)?;
            if let Some(previous) = names.insert(app.name().to_owned(), p.clone()) {
                return Err(invalid(
                    "spec.template.metadata.name".to_owned(),
                    format!(
                        "two parameter sets ({previous:?} and {p:?}) both generate {:?}",
                        app.name()
                    ),
                ));
            }
            apps.push(app);
        }
        Ok(apps)
    }
}

/// How long an app of a RollingSync step must stay Synced and Healthy before
/// the step counts it as passed (OCM's `minSuccessTime`).
pub const SOAK_ANNOTATION: &str = "flotilla.io/rollout-soak";
/// How long an app of a RollingSync step may take to become Synced and Healthy
/// before the step fails.
pub const PROGRESS_DEADLINE_ANNOTATION: &str = "flotilla.io/rollout-progress-deadline";
/// The progress deadline when the annotation is not set.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

/// `90`, `90s`, `5m` or `1h`.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().all(|e| {
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| e.values.contains(v)),
                "NotIn" => !value.is_some_and(|v| e.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// A name as a DNS label: lowercase, with anything else turned into `-`.
fn normalize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Argo CD's git-directory parameters: `path`, `path.basename`,
/// `path.basenameNormalized` and `path[N]` for each segment.
fn path_params(dir: &str) -> BTreeMap<String, String> {
    let basename = dir.rsplit('/').next().unwrap_or(dir).to_owned();
    let mut p = BTreeMap::from([
        ("path".to_owned(), dir.to_owned()),
        ("path.path".to_owned(), dir.to_owned()),
        ("path.basenameNormalized".to_owned(), normalize(&basename)),
        ("path.basename".to_owned(), basename),
    ]);
    for (i, segment) in dir.split('/').enumerate() {
        p.insert(format!("path[{i}]"), segment.to_owned());
    }
    p
}

/// Replaces `{{ key }}` in every string of `value`; unknown keys stay as written.
fn substitute(value: &mut Value, params: &BTreeMap<String, String>) {
    match value {
        Value::String(s) => *s = substitute_str(s, params),
        Value::Array(items) => items.iter_mut().for_each(|v| substitute(v, params)),
        Value::Object(map) => map.values_mut().for_each(|v| substitute(v, params)),
        _ => {}
    }
}

fn substitute_str(text: &str, params: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let key = rest[start + 2..start + len].trim();
        out.push_str(&rest[..start]);
        match params.get(key) {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[start..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}
