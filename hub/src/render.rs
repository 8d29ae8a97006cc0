//! Rendering: an Application at a commit, for one cluster, becomes bundle objects.
//!
//! Plain directories are rendered in Rust ([`directory`]); kustomize and helm apps run
//! the real binaries ([`kustomize`], [`helm`]) in a private copy of the tree, with a
//! deadline. Results are cached by everything that can change them: commit, path,
//! source parameters, destination namespace, cluster facts and tool versions; in
//! memory, and in the hub's store when the renderer has one, so a restarted hub
//! does not render again what it rendered before. A failure is an error for that
//! app, never an empty result.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_common::bundle::Object;
use flotilla_common::model::ClusterFacts;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use crate::app::{Application, Directory, Source, SourceKind};
use crate::chart::Pulled;
use crate::source::{self, CommitId, Limits, Repo, RepoFile};
use crate::store::Store;

mod argument;
pub mod build_env;
pub mod directory;
pub mod helm;
pub mod kustomize;
pub mod objects;
mod tool;

pub use argument::redact_urls;
use build_env::BuildEnv;
pub use objects::sort_for_apply;
pub use tool::{DEFAULT_TIMEOUT, Tools};

#[cfg(test)]
mod tests;

/// Why an app did not render.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the app's files from Git failed (missing path, symlink, size limit, ...).
    #[error(transparent)]
    Source(#[from] source::Error),
    /// A manifest file is not valid YAML or JSON, or holds something that is not an object.
    #[error("{file}: {message}")]
    Manifest { file: String, message: String },
    /// A rendered document lacks apiVersion, kind or metadata.name.
    #[error("a rendered document is not a Kubernetes object: {what}")]
    NotAnObject { what: String },
    /// The same object is rendered twice.
    #[error("{object} is rendered more than once")]
    Duplicate { object: String },
    /// An Argo CD or Helm annotation has a value Flotilla cannot use.
    #[error("{object}: annotation {annotation}: {message}")]
    Annotation {
        object: String,
        annotation: &'static str,
        message: String,
    },
    /// An include or exclude glob does not compile.
    #[error("directory glob {pattern:?}: {message}")]
    Glob { pattern: String, message: String },
    /// A kustomization names a remote base; renders come from the commit alone.
    #[error("{file}: remote base {entry:?} is not allowed; vendor it into the repository")]
    RemoteBase { file: String, entry: String },
    /// A field of the app cannot be handed to helm or kustomize safely: it would be
    /// read as an option, split into more than it says, or lead out of the checkout.
    #[error("{field} {value:?}: {reason}")]
    Refused {
        field: String,
        value: String,
        reason: String,
    },
    /// A chart's dependencies could not be fetched.
    #[error("helm could not fetch the chart dependencies {dependencies}:\n{message}")]
    Dependency {
        /// `name from repository`, for each dependency concerned.
        dependencies: String,
        /// helm's message, with any URL password redacted.
        message: String,
    },
    /// A helm value file or file parameter cannot be used.
    #[error("helm value file {file}: {message}")]
    ValueFile { file: String, message: String },
    /// The tool is not installed where Flotilla looked.
    #[error("{tool} is not available at {path} (set FLOTILLA_{} or put it on PATH)", tool.to_uppercase())]
    ToolMissing {
        tool: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The tool failed; its stderr says why.
    #[error("{tool} {args} failed ({status}):\n{stderr}")]
    ToolFailed {
        tool: String,
        args: String,
        status: String,
        stderr: String,
    },
    /// The tool ran past its deadline and was killed.
    #[error("{tool} did not finish within {timeout:?} and was killed")]
    ToolTimeout { tool: String, timeout: Duration },
    /// A local file operation failed.
    #[error("{what} ({path})")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cluster an app is rendered for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Target<'a> {
    /// The cluster's name, for messages.
    pub cluster: &'a str,
    /// Its version and APIs, for Helm and for knowing which kinds are namespaced.
    /// Without them (the CLI with no cluster), common defaults are used.
    pub facts: Option<&'a ClusterFacts>,
}

/// What an app rendered to.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The objects, in apply order.
    pub objects: Arc<Vec<Object>>,
    /// How the source was rendered, after detection: what [`affected_by`] needs.
    pub kind: SourceKind,
}

/// How many renders the cache keeps before it starts over.
const CACHE_ENTRIES: usize = 4096;

/// Renders Applications, caching results.
pub struct Renderer {
    tools: Tools,
    limits: Limits,
    tool_versions: OnceCell<String>,
    cache: Mutex<HashMap<[u8; 32], Rendered>>,
    /// Where renders outlive the process, when set.
    store: Option<Store>,
    /// Renders served from a cache, for metrics and tests.
    hits: AtomicU64,
    /// Extra certificate authorities for chart dependency repositories, PEM.
    extra_roots: Vec<Vec<u8>>,
}

/// One source of an app and what it was resolved to.
#[derive(Clone, Copy)]
pub struct SourceInput<'a> {
    /// The source as the Application writes it.
    pub source: &'a Source,
    /// Its content at the resolved revision.
    pub input: Input<'a>,
}

/// A source's content at its resolved revision.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// A Git source at a commit of its fetched repository.
    Git {
        repo: &'a Repo,
        commit: &'a CommitId,
    },
    /// A chart archive from a Helm repository or an OCI registry.
    Chart(&'a Pulled),
}

impl Input<'_> {
    /// The revision, as shown and as part of the cache key.
    pub fn revision(&self) -> String {
        match self {
            Self::Git { commit, .. } => commit.to_string(),
            Self::Chart(pulled) => pulled.revision(),
        }
    }
}

/// A render as the store keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Persisted {
    kind: SourceKind,
    objects: Vec<Object>,
}

impl Renderer {
    pub fn new(tools: Tools) -> Self {
        Self {
            tools,
            limits: Limits::default(),
            tool_versions: OnceCell::new(),
            cache: Mutex::new(HashMap::new()),
            store: None,
            hits: AtomicU64::new(0),
            extra_roots: Vec::new(),
        }
    }

    /// Trusts these PEM certificate authorities for chart dependency repositories.
    pub fn with_extra_roots(mut self, roots: Vec<Vec<u8>>) -> Self {
        self.extra_roots = roots;
        self
    }

    /// Keeps renders in `store` too, so they outlive the process.
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Whether renders are kept in a store.
    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// How many renders were served from the cache, in memory or in the store.
    pub fn cache_hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Renders `app` at `commit` of `repo` (ignored for charts from a Helm repository)
    /// for `target`, in apply order.
    ///
    /// Reading the tree is synchronous disk I/O on the local bare clone; fetching,
    /// the slow part, happens before, in [`source`].
    pub async fn render(
        &self,
        app: &Application,
        repo: Option<&Repo>,
        commit: Option<&CommitId>,
        target: Target<'_>,
    ) -> Result<Rendered> {
        let key = self.cache_key(app, commit, target).await;
        if let Some(hit) = self.cache_get(&key) {
            return Ok(hit);
        }
        let (kind, manifests) = self.manifests(app, repo, commit, target).await?;
        let mut objects = objects::to_objects(
            manifests,
            app.spec.destination.namespace.as_deref(),
            target.facts,
        )?;
        sort_for_apply(&mut objects);
        let rendered = Rendered {
            objects: Arc::new(objects),
            kind,
        };
        self.cache_put(key, rendered.clone());
        Ok(rendered)
    }

    /// Renders `app` from its sources, each at the revision it was resolved to
    /// (`inputs`, in the order of the app's sources), for `target`. Sources with
    /// only a `ref` render nothing: their checkouts serve the others' `$ref/…`
    /// value files. The result is cached by every source's revision.
    pub async fn render_sources(
        &self,
        app: &Application,
        inputs: &[SourceInput<'_>],
        target: Target<'_>,
    ) -> Result<Rendered> {
        let revisions: Vec<String> = inputs.iter().map(|i| i.input.revision()).collect();
        let sources: Vec<&Source> = inputs.iter().map(|i| i.source).collect();
        let key = self
            .cache_key_of(app, &revisions.join("\n"), &sources, target)
            .await;
        if let Some(hit) = self.cache_get(&key) {
            return Ok(hit);
        }
        let scratch = scratch_dir()?;
        let mut refs = BTreeMap::new();
        for (i, input) in inputs.iter().enumerate() {
            let (Some(name), Input::Git { repo, commit }) = (&input.source.ref_, input.input)
            else {
                continue;
            };
            let root = scratch.path().join(format!("ref-{i}"));
            repo.export(commit, &root, &self.limits)?;
            refs.insert(name.clone(), root);
        }
        let mut manifests = Vec::new();
        let mut kind = None;
        for input in inputs.iter().filter(|i| i.source.renders()) {
            let (this_kind, mut these) = match input.input {
                Input::Git { repo, commit } => {
                    self.git_manifests(app, input.source, repo, commit, target, &refs)
                        .await?
                }
                Input::Chart(pulled) => {
                    let own = scratch_dir()?;
                    let revision = input.input.revision();
                    let source = &BuildEnv::new(app, input.source, &revision, target.facts)
                        .apply(app, input.source);
                    let out = helm::template(
                        &self.tools,
                        app,
                        source,
                        helm::Chart::Archive {
                            path: &pulled.archive,
                        },
                        target.facts,
                        own.path(),
                        &self.context(refs.clone()),
                    )
                    .await?;
                    (SourceKind::HelmRepo, parse_output("helm template", &out)?)
                }
            };
            kind.get_or_insert(this_kind);
            manifests.append(&mut these);
        }
        let mut objects = objects::to_objects(
            manifests,
            app.spec.destination.namespace.as_deref(),
            target.facts,
        )?;
        sort_for_apply(&mut objects);
        let rendered = Rendered {
            objects: Arc::new(objects),
            kind: kind.unwrap_or(SourceKind::Directory),
        };
        self.cache_put(key, rendered.clone());
        Ok(rendered)
    }

    /// What helm needs besides the chart: ref checkouts, credentials, roots.
    fn context(&self, refs: BTreeMap<String, PathBuf>) -> helm::Context<'_> {
        helm::Context {
            refs,
            store: self.store.as_ref(),
            extra_roots: &self.extra_roots,
        }
    }

    async fn manifests(
        &self,
        app: &Application,
        repo: Option<&Repo>,
        commit: Option<&CommitId>,
        target: Target<'_>,
    ) -> Result<(SourceKind, Vec<serde_json::Value>)> {
        let source = app.source();
        if app.source_kind() == SourceKind::HelmRepo {
            let scratch = scratch_dir()?;
            let chart = helm::Chart::Repo {
                url: &source.repo_url,
                name: source.chart.as_deref().unwrap_or_default(),
                version: &source.target_revision,
            };
            let source = &BuildEnv::new(app, source, &source.target_revision, target.facts)
                .apply(app, source);
            let out = helm::template(
                &self.tools,
                app,
                source,
                chart,
                target.facts,
                scratch.path(),
                &self.context(BTreeMap::new()),
            )
            .await?;
            return Ok((SourceKind::HelmRepo, parse_output("helm template", &out)?));
        }
        let (Some(repo), Some(commit)) = (repo, commit) else {
            return Err(Error::Manifest {
                file: argument::redact_urls(&app.source().repo_url),
                message: "a Git source needs a fetched repository and a commit".to_owned(),
            });
        };
        self.git_manifests(app, source, repo, commit, target, &BTreeMap::new())
            .await
    }

    /// What one Git source renders to at `commit`.
    async fn git_manifests(
        &self,
        app: &Application,
        source: &Source,
        repo: &Repo,
        commit: &CommitId,
        target: Target<'_>,
        refs: &BTreeMap<String, PathBuf>,
    ) -> Result<(SourceKind, Vec<serde_json::Value>)> {
        let path = repo.normalize_path(source.path.as_deref().unwrap_or(""))?;
        let mut kind = source.kind();
        let mut files: Option<Vec<RepoFile>> = None;
        if matches!(kind, SourceKind::Detect | SourceKind::Directory) {
            let read = repo.files(commit, &path, &self.limits)?;
            if kind == SourceKind::Detect {
                kind = detect(&read, &path);
            }
            files = Some(read);
        }
        match (kind, files) {
            (SourceKind::Directory, Some(files)) => {
                let default = Directory::default();
                let options = source.directory.as_ref().unwrap_or(&default);
                Ok((kind, directory::render(&files, &path, options)?))
            }
            (kind, _) => {
                let scratch = scratch_dir()?;
                let root = scratch.path().join("repo");
                repo.export(commit, &root, &self.limits)?;
                let app_dir = root.join(&path);
                let out = if kind == SourceKind::Helm {
                    let chart = helm::Chart::Dir {
                        root: &root,
                        dir: &app_dir,
                    };
                    let source = &BuildEnv::new(app, source, commit.as_str(), target.facts)
                        .apply(app, source);
                    helm::template(
                        &self.tools,
                        app,
                        source,
                        chart,
                        target.facts,
                        scratch.path(),
                        &self.context(refs.clone()),
                    )
                    .await?
                } else {
                    kustomize::build(&self.tools, &root, &app_dir, source.kustomize.as_ref())
                        .await?
                };
                let tool = if kind == SourceKind::Helm {
                    "helm template"
                } else {
                    "kustomize build"
                };
                Ok((kind, parse_output(tool, &out)?))
            }
        }
    }

    async fn cache_key(
        &self,
        app: &Application,
        commit: Option<&CommitId>,
        target: Target<'_>,
    ) -> [u8; 32] {
        self.cache_key_of(
            app,
            commit.map(CommitId::as_str).unwrap_or(""),
            &[app.source()],
            target,
        )
        .await
    }

    async fn cache_key_of(
        &self,
        app: &Application,
        revision: &str,
        sources: &[&Source],
        target: Target<'_>,
    ) -> [u8; 32] {
        let versions = self
            .tool_versions
            .get_or_init(|| self.tools.versions())
            .await;
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(revision.as_bytes());
        field(&serde_json::to_vec(sources).unwrap_or_default());
        field(&serde_json::to_vec(&app.spec.destination.namespace).unwrap_or_default());
        field(app.name().as_bytes());
        field(&serde_json::to_vec(&target.facts).unwrap_or_default());
        field(versions.as_bytes());
        h.finalize().into()
    }

    fn cache_get(&self, key: &[u8; 32]) -> Option<Rendered> {
        let hit = self
            .cache
            .lock()
            .ok()
            .and_then(|cache| cache.get(key).cloned())
            .or_else(|| {
                let persisted: Persisted = self.store.as_ref()?.cached_render(key).ok()??;
                let rendered = Rendered {
                    objects: Arc::new(persisted.objects),
                    kind: persisted.kind,
                };
                self.remember(*key, rendered.clone());
                Some(rendered)
            });
        if hit.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    fn cache_put(&self, key: [u8; 32], rendered: Rendered) {
        if let Some(store) = &self.store {
            let persisted = Persisted {
                kind: rendered.kind,
                objects: rendered.objects.to_vec(),
            };
            // A cache: a failed write costs a render after a restart, nothing more.
            if let Err(error) = store.cache_render(&key, &persisted, CACHE_ENTRIES) {
                tracing::warn!(%error, "could not keep a render in the store");
            }
        }
        self.remember(key, rendered);
    }

    fn remember(&self, key: [u8; 32], rendered: Rendered) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, rendered);
        }
    }
}

/// What an undecorated source path holds, as Argo CD decides: a kustomization
/// makes it kustomize, a Chart.yaml makes it helm, anything else is a directory.
fn detect(files: &[RepoFile], path: &str) -> SourceKind {
    let at = |name: &str| {
        let want = if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}/{name}")
        };
        files.iter().any(|f| f.path == want)
    };
    if kustomize::KUSTOMIZATION_FILES.iter().any(|n| at(n)) {
        SourceKind::Kustomize
    } else if at("Chart.yaml") {
        SourceKind::Helm
    } else {
        SourceKind::Directory
    }
}

fn scratch_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("flotilla-render-")
        .tempdir()
        .map_err(|source| Error::Io {
            what: "creating a scratch folder for rendering".to_owned(),
            path: std::env::temp_dir(),
            source,
        })
}

fn parse_output(tool: &str, out: &[u8]) -> Result<Vec<serde_json::Value>> {
    let mut manifests = Vec::new();
    directory::parse_file(&format!("output of {tool}"), out, &mut manifests)?;
    Ok(manifests)
}

/// Whether a change to `changed` (repo-relative paths, from a tree diff) can change
/// what `app` renders. Directory apps depend on their folder; kustomize and helm
/// apps may reach anywhere in the repo (`../base`, value files), so any change
/// re-renders them unless the change is plainly inside another app's folder and
/// theirs has no parent references, which only the tools could tell: to stay
/// correct, they are re-rendered on any change. `rendered_as` is
/// [`Rendered::kind`] from the last render.
pub fn affected_by(app: &Application, rendered_as: SourceKind, changed: &[String]) -> bool {
    if app.source_kind() == SourceKind::HelmRepo {
        return false;
    }
    let path = app.source().path.as_deref().unwrap_or("").trim_matches('/');
    let path = if path == "." { "" } else { path };
    match rendered_as {
        SourceKind::Directory => changed.iter().any(|c| {
            path.is_empty()
                || c == path
                || c.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('/'))
        }),
        _ => !changed.is_empty(),
    }
}

/// Prints objects as one multi-document YAML stream, in the order given.
pub fn to_yaml_stream(objects: &[Object]) -> Result<String> {
    let mut out = String::new();
    for object in objects {
        let manifest = object.manifest_json().map_err(|e| Error::Manifest {
            file: objects::describe(&object.gvk, object.namespace.as_deref(), &object.name),
            message: e.to_string(),
        })?;
        let yaml = serde_saphyr::to_string(&manifest).map_err(|e| Error::Manifest {
            file: objects::describe(&object.gvk, object.namespace.as_deref(), &object.name),
            message: e.to_string(),
        })?;
        out.push_str("---\n");
        out.push_str(&yaml);
        if !yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}
