//! Argo CD `ApplicationSet`: one template, many Applications, one per parameter set
//! its generators produce.
//!
//! Generators are `list` (with `elementsYaml`), `clusters` (the hub's
//! registered clusters, selected by labels), `git` directories and files,
//! `matrix` and `merge` (nested two levels, as Argo CD allows), each with an
//! optional post-`selector`; [`generators`] makes their parameter sets and
//! [`glob`] matches git paths as Argo CD does. Templates use Argo CD's default
//! `{{param}}` substitution. Generators that need a service Flotilla does not run
//! (`scmProvider`, `pullRequest`, `clusterDecisionResource`, `plugin`) and
//! `goTemplate: true` are refused by name, never ignored.
//!
//! `spec.strategy` is read as Argo CD writes it: `AllAtOnce`, or `RollingSync`
//! with `rollingSync.steps` (label `matchExpressions` on the generated
//! Applications, `maxUpdate` as a count or a percent). [`crate::rollout`] drives
//! a RollingSync set's apps step by step.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Application, Error, Metadata, Result, ServerOwned, typed};

mod generators;
mod glob;
#[cfg(test)]
mod tests;

/// One parameter set: what `{{name}}` placeholders are replaced with.
pub type Params = BTreeMap<String, String>;

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
    /// Argo CD's switch for selectors on nested generators; Flotilla always
    /// applies them, as Argo CD does since it was deprecated.
    #[serde(default, skip_serializing)]
    apply_nested_selectors: bool,
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

/// How many apps of a rollout may fail before the whole rollout rolls back
/// ([`FAILURE_BUDGET_ANNOTATION`]): a count, or a percent of the rollout's apps
/// rounded down (OCM's `maxFailures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureBudget {
    Count(u64),
    Percent(u64),
}

impl FailureBudget {
    /// `2` or `10%`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        match text.strip_suffix('%') {
            Some(percent) => percent
                .trim()
                .parse()
                .ok()
                .filter(|p| *p <= 100)
                .map(Self::Percent),
            None => text.parse().ok().map(Self::Count),
        }
    }

    /// How many failed apps of `total` it allows.
    pub fn allowed(self, total: usize) -> usize {
        match self {
            Self::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Self::Percent(p) => {
                let total = u64::try_from(total).unwrap_or(u64::MAX);
                usize::try_from(total.saturating_mul(p) / 100).unwrap_or(usize::MAX)
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

/// One generator; exactly one of `list`, `clusters`, `git`, `matrix` and `merge`
/// is set. `selector` filters what it generates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Generator {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<ListGenerator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<ClustersGenerator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitGenerator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<MatrixGenerator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeGenerator>,
    #[serde(default, skip_serializing)]
    scm_provider: Option<Value>,
    #[serde(default, skip_serializing)]
    pull_request: Option<Value>,
    #[serde(default, skip_serializing)]
    cluster_decision_resource: Option<Value>,
    #[serde(default, skip_serializing)]
    plugin: Option<Value>,
    /// Keeps only the parameter sets whose values match, as if they were labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListGenerator {
    #[serde(default)]
    pub elements: Vec<BTreeMap<String, Value>>,
    /// More elements, as a YAML list in a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elements_yaml: Option<String>,
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

/// Two generators, every parameter set of the first with every one of the
/// second; the second may use the first's parameters in its own fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatrixGenerator {
    pub generators: Vec<Generator>,
}

/// The first generator's parameter sets, each overridden by the sets of the
/// later generators that agree with it on every merge key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MergeGenerator {
    #[serde(default)]
    pub merge_keys: Vec<String>,
    pub generators: Vec<Generator>,
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
    /// Globs in Go's `path.Match` dialect, over the repository's directories.
    #[serde(default)]
    pub directories: Vec<GitPattern>,
    /// Globs in git's pathspec dialect, over the repository's files; each file
    /// that matches holds one parameter set (a mapping) or several (a list).
    #[serde(default)]
    pub files: Vec<GitPattern>,
    /// Puts the `path` parameters under `PREFIX.path`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_param_prefix: String,
    /// Extra parameters, available as `values.KEY`; may use the other params.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
}

fn head() -> String {
    "HEAD".to_owned()
}

/// One `directories` or `files` entry: a glob, and whether what it matches is
/// left out even when another entry matches it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitPattern {
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
    pub annotations: BTreeMap<String, String>,
    /// The Argo CD project the cluster is scoped to; empty when none.
    pub project: String,
}

/// What a generator needs from outside: the hub's clusters, and the directories
/// and files at a revision of a repo.
pub trait GeneratorInput {
    fn clusters(&self) -> Vec<ClusterParams>;
    /// Every directory path (repo-relative, `/`-separated) at `revision` of `repo`.
    fn directories(&self, repo: &str, revision: &str) -> std::result::Result<Vec<String>, String>;
    /// Every file at `revision` of `repo`.
    fn files(&self, repo: &str, revision: &str) -> std::result::Result<RepoFiles, String>;
}

/// A repository's files: repo-relative, `/`-separated paths and contents,
/// shared so a matrix asking for them again copies nothing.
pub type RepoFiles = std::sync::Arc<Vec<(String, Vec<u8>)>>;

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
                "Go templates are not implemented; write the template with Argo CD's default {{param}} placeholders",
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
            self.validate_generator(origin, g, &format!("spec.generators[{i}]"), 0)?;
        }
        Ok(())
    }

    /// Checks one generator and those it nests: exactly one kind, none of the
    /// kinds that need services Flotilla cannot run, nesting no deeper than Argo
    /// CD allows (a matrix or merge inside a matrix or merge, and no further),
    /// and well-formed globs and selectors.
    fn validate_generator(
        &self,
        origin: &str,
        g: &Generator,
        at: &str,
        depth: usize,
    ) -> Result<()> {
        let invalid = |path: String, message: String| Error::Invalid {
            origin: origin.to_owned(),
            kind: "ApplicationSet",
            name: self.metadata.name.clone(),
            path,
            message,
        };
        for (field, set) in [
            ("scmProvider", g.scm_provider.is_some()),
            ("pullRequest", g.pull_request.is_some()),
            (
                "clusterDecisionResource",
                g.cluster_decision_resource.is_some(),
            ),
            ("plugin", g.plugin.is_some()),
        ] {
            if set {
                return Err(self.unsupported(
                    origin,
                    &format!("{at}.{field}"),
                    "this generator needs a service Flotilla does not run",
                ));
            }
        }
        let set = [
            g.list.is_some(),
            g.clusters.is_some(),
            g.git.is_some(),
            g.matrix.is_some(),
            g.merge.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(invalid(
                at.to_owned(),
                "needs exactly one generator".to_owned(),
            ));
        }
        if let Some(selector) = &g.selector {
            check_operators(&selector.match_expressions).map_err(|(j, m)| {
                invalid(format!("{at}.selector.matchExpressions[{j}].operator"), m)
            })?;
        }
        if let Some(c) = &g.clusters {
            check_operators(&c.selector.match_expressions).map_err(|(j, m)| {
                invalid(
                    format!("{at}.clusters.selector.matchExpressions[{j}].operator"),
                    m,
                )
            })?;
        }
        if let Some(git) = &g.git {
            if git.directories.is_empty() == git.files.is_empty() {
                return Err(invalid(
                    format!("{at}.git"),
                    "needs either directories or files".to_owned(),
                ));
            }
            for (field, patterns, dialect) in [
                ("directories", &git.directories, glob::Dialect::Path),
                ("files", &git.files, glob::Dialect::Pathspec),
            ] {
                for (j, p) in patterns.iter().enumerate() {
                    glob::check(&p.path, dialect).map_err(|e| {
                        invalid(format!("{at}.git.{field}[{j}].path"), e.to_string())
                    })?;
                }
            }
        }
        let nested = match (&g.matrix, &g.merge) {
            (Some(m), _) => {
                if m.generators.len() != 2 {
                    return Err(invalid(
                        format!("{at}.matrix.generators"),
                        format!(
                            "a matrix takes exactly 2 generators, not {}",
                            m.generators.len()
                        ),
                    ));
                }
                Some(("matrix", &m.generators))
            }
            (None, Some(m)) => {
                if m.generators.len() < 2 {
                    return Err(invalid(
                        format!("{at}.merge.generators"),
                        "a merge takes at least 2 generators".to_owned(),
                    ));
                }
                if m.merge_keys.is_empty() {
                    return Err(invalid(
                        format!("{at}.merge.mergeKeys"),
                        "a merge needs at least one merge key".to_owned(),
                    ));
                }
                Some(("merge", &m.generators))
            }
            (None, None) => None,
        };
        if let Some((kind, children)) = nested {
            if depth >= 2 {
                return Err(invalid(
                    format!("{at}.{kind}"),
                    "Argo CD nests matrix and merge generators two levels deep, no more".to_owned(),
                ));
            }
            for (j, child) in children.iter().enumerate() {
                self.validate_generator(
                    origin,
                    child,
                    &format!("{at}.{kind}.generators[{j}]"),
                    depth + 1,
                )?;
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

    /// The steps a rollout pauses before ([`PAUSE_BEFORE_ANNOTATION`]), as
    /// indexes from 0; `steps` is how many the strategy has, and one more (the
    /// apps that match no step) may be named too.
    pub fn pause_before(&self, steps: usize) -> std::result::Result<Vec<usize>, (String, String)> {
        let Some(text) = self.metadata.annotations.get(PAUSE_BEFORE_ANNOTATION) else {
            return Ok(Vec::new());
        };
        let path = format!("metadata.annotations[{PAUSE_BEFORE_ANNOTATION:?}]");
        let mut indexes = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<usize>() {
                Ok(n) if (1..=steps + 1).contains(&n) => indexes.push(n - 1),
                _ => {
                    return Err((
                        path,
                        format!(
                            "{part:?} is not a step number from 1 to {} (the last being the \
                             apps that match no step)",
                            steps + 1
                        ),
                    ));
                }
            }
        }
        indexes.sort_unstable();
        indexes.dedup();
        Ok(indexes)
    }

    /// The failure budget ([`FAILURE_BUDGET_ANNOTATION`]), `None` when not set.
    pub fn failure_budget(&self) -> std::result::Result<Option<FailureBudget>, (String, String)> {
        let Some(text) = self.metadata.annotations.get(FAILURE_BUDGET_ANNOTATION) else {
            return Ok(None);
        };
        FailureBudget::parse(text).map(Some).ok_or_else(|| {
            (
                format!("metadata.annotations[{FAILURE_BUDGET_ANNOTATION:?}]"),
                format!("{text:?} is not a count nor a percent from 0% to 100%"),
            )
        })
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
                    check_operators(&step.match_expressions).map_err(|(j, m)| {
                        invalid(
                            format!(
                                "spec.strategy.rollingSync.steps[{i}].matchExpressions[{j}].operator"
                            ),
                            m,
                        )
                    })?;
                    if let Some(max) = &step.max_update {
                        max.of(1).map_err(|m| {
                            invalid(format!("spec.strategy.rollingSync.steps[{i}].maxUpdate"), m)
                        })?;
                    }
                }
                self.pause_before(steps.len())
                    .map_err(|(path, message)| invalid(path, message))?;
                self.failure_budget()
                    .map_err(|(path, message)| invalid(path, message))?;
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
        let mut params: Vec<Params> = Vec::new();
        for (i, g) in self.spec.generators.iter().enumerate() {
            params.extend(
                generators::params(g, &format!("spec.generators[{i}]"), input)
                    .map_err(|(path, message)| invalid(path, message))?,
            );
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
/// The steps (numbered from 1, as `rollout get` shows them; a comma-separated
/// list) a rollout pauses before, for manual promotion: it starts none of the
/// step's apps until `flotilla rollout resume` or `promote`.
pub const PAUSE_BEFORE_ANNOTATION: &str = "flotilla.io/rollout-pause-before";
/// How many of a rollout's apps may fail (each rolled back on its own) before the
/// whole rollout rolls back: a count or a percent ([`FailureBudget`]); none by
/// default, so the first failure rolls everything back.
pub const FAILURE_BUDGET_ANNOTATION: &str = "flotilla.io/rollout-failure-budget";
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

/// The first expression whose operator is not one Kubernetes has.
fn check_operators(expressions: &[LabelExpression]) -> std::result::Result<(), (usize, String)> {
    match expressions.iter().enumerate().find(|(_, e)| {
        !matches!(
            e.operator.as_str(),
            "In" | "NotIn" | "Exists" | "DoesNotExist"
        )
    }) {
        Some((j, e)) => Err((
            j,
            format!("{:?} is not In, NotIn, Exists or DoesNotExist", e.operator),
        )),
        None => Ok(()),
    }
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
