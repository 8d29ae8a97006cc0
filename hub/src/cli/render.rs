//! `flotilla render`: the objects an Application renders to, printed in apply
//! order without a hub (like `argocd app manifests --local` or `flux build`).

use std::path::PathBuf;

use anyhow::Context as _;
use flotilla_common::model::{ApiResource, ClusterFacts};
use flotilla_hub::app::Application;
use flotilla_hub::chart::{ChartCache, Pulled};
use flotilla_hub::render::{self, Input, Renderer, SourceInput, Target, Tools};
use flotilla_hub::source::{CommitId, Repo, RepoCache, RepoSpec};
use flotilla_hub::store::{RepoRecord, Store};

use super::UsageError;

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// The file holding the Application.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Render this branch, tag or commit instead of the Application's targetRevision.
    #[arg(long)]
    revision: Option<String>,
    /// Render for this registered cluster, using the Kubernetes version and APIs its
    /// agent reported (needs --data-dir).
    #[arg(long)]
    cluster: Option<String>,
    /// The hub's data folder, for repo credentials and cluster facts.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where bare clones are kept between runs.
    #[arg(long, env = "FLOTILLA_REPO_CACHE")]
    repo_cache: Option<PathBuf>,
    /// Kubernetes version for Helm's --kube-version, overriding the cluster's.
    #[arg(long)]
    kube_version: Option<String>,
    /// An API version (group/version or group/version/Kind) for Helm's
    /// --api-versions; repeatable. Replaces the cluster's list.
    #[arg(long = "api-versions")]
    api_versions: Vec<String>,
}

pub async fn run(args: RenderArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| UsageError(format!("reading {}: {e}", args.file.display())))?;
    let mut app = Application::from_yaml(&text, &args.file.display().to_string())
        .map_err(|e| UsageError(e.to_string()))?;
    if let Some(revision) = &args.revision {
        if app.needs_resolved_sources() {
            return Err(UsageError(
                "--revision names a Git revision; this Application has a chart from a Helm \
                 repository or several sources: edit their targetRevision instead"
                    .to_owned(),
            )
            .into());
        }
        if let Some(source) = app.spec.source.as_mut() {
            source.target_revision = revision.clone();
        }
    }

    let store = match &args.data_dir {
        Some(dir) => Some(
            Store::open(dir)
                .context("opening the hub's data folder (stop the hub, or omit --data-dir)")?,
        ),
        None => None,
    };
    let mut facts = match (&args.cluster, &store) {
        (Some(name), Some(store)) => {
            let cluster = store.cluster(name)?.ok_or_else(|| {
                let known: Vec<String> = store
                    .clusters()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.name)
                    .collect();
                UsageError(format!(
                    "no cluster named {name:?} is registered (known: {})",
                    known.join(", ")
                ))
            })?;
            cluster.facts
        }
        (Some(_), None) => {
            return Err(UsageError(
                "--cluster needs --data-dir (or FLOTILLA_DATA_DIR) to find the cluster".to_owned(),
            )
            .into());
        }
        (None, _) => None,
    };
    if args.kube_version.is_some() || !args.api_versions.is_empty() {
        let f = facts.get_or_insert_with(ClusterFacts::default);
        if let Some(v) = &args.kube_version {
            f.kubernetes_version = v.clone();
        }
        if !args.api_versions.is_empty() {
            f.api_resources = args.api_versions.iter().map(|v| api_version(v)).collect();
        }
    }

    let tools = Tools::from_env();
    let renderer = Renderer::new(tools);
    let target = Target {
        cluster: args.cluster.as_deref().unwrap_or(""),
        facts: facts.as_ref(),
    };
    let rendered = if app.needs_resolved_sources() {
        render_sources(&app, &renderer, store.as_ref(), &args, target).await?
    } else {
        let source = app.source();
        let spec = match store
            .as_ref()
            .map(|s| s.repo(&source.repo_url))
            .transpose()?
            .flatten()
        {
            Some(record) => record.spec(),
            None => RepoSpec::new(local_url(&source.repo_url, &args.file)),
        };
        let cache_dir = args.repo_cache.clone().unwrap_or_else(default_repo_cache);
        let cache = RepoCache::new(cache_dir)?;
        let revision = source.target_revision.clone();
        let repo = tokio::task::spawn_blocking(move || cache.fetch(&spec))
            .await
            .context("the fetch task failed")??;
        let commit = repo.resolve(&revision)?;
        renderer
            .render(&app, Some(&repo), Some(&commit), target)
            .await?
    };
    print!("{}", render::to_yaml_stream(&rendered.objects)?);
    Ok(())
}

/// Renders an app with a chart from a repository or several sources as the hub
/// does: each source resolved (charts through their repository's index or the
/// registry's tags, with the hub's stored credentials when --data-dir is given).
async fn render_sources(
    app: &Application,
    renderer: &Renderer,
    store: Option<&Store>,
    args: &RenderArgs,
    target: Target<'_>,
) -> anyhow::Result<render::Rendered> {
    enum Got {
        Git(Box<Repo>, CommitId),
        Chart(Pulled),
    }
    let cache_dir = args.repo_cache.clone().unwrap_or_else(default_repo_cache);
    let charts = ChartCache::new(cache_dir.join(".charts"))?;
    let mut got = Vec::new();
    for source in app.sources() {
        let access = store
            .map(|s| s.repo_access(&source.repo_url))
            .transpose()?
            .flatten();
        if let Some(chart) = &source.chart {
            let repo = RepoRecord::chart_repo(
                access,
                &source.repo_url,
                source.helm.as_ref().is_some_and(|h| h.pass_credentials),
            );
            let resolved = charts
                .resolve(&repo, chart, &source.target_revision)
                .await?;
            got.push(Got::Chart(charts.pull(&repo, &resolved).await?));
        } else {
            let spec = match access {
                Some(record) => RepoSpec {
                    url: source.repo_url.clone(),
                    credentials: record.credentials,
                },
                None => RepoSpec::new(local_url(&source.repo_url, &args.file)),
            };
            let cache = RepoCache::new(cache_dir.clone())?;
            let repo = tokio::task::spawn_blocking(move || cache.fetch(&spec))
                .await
                .context("the fetch task failed")??;
            let commit = repo.resolve(&source.target_revision)?;
            got.push(Got::Git(Box::new(repo), commit));
        }
    }
    let inputs: Vec<SourceInput<'_>> = app
        .sources()
        .iter()
        .zip(&got)
        .map(|(source, got)| SourceInput {
            source,
            input: match got {
                Got::Git(repo, commit) => Input::Git { repo, commit },
                Got::Chart(pulled) => Input::Chart(pulled),
            },
        })
        .collect();
    Ok(renderer.render_sources(app, &inputs, target).await?)
}

/// A relative local path in repoURL is relative to the Application's file.
fn local_url(url: &str, app_file: &std::path::Path) -> String {
    let is_remote = url.contains("://") || url.contains('@');
    if is_remote || std::path::Path::new(url).is_absolute() {
        return url.to_owned();
    }
    let base = app_file.parent().unwrap_or(std::path::Path::new("."));
    base.join(url).display().to_string()
}

fn default_repo_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("flotilla").join("repos")
}

/// `group/version` or `group/version/Kind` as an API resource for Helm.
fn api_version(value: &str) -> ApiResource {
    let parts: Vec<&str> = value.split('/').collect();
    let (group_version, kind) = match parts[..] {
        [g, v, k] => (format!("{g}/{v}"), k.to_owned()),
        _ => (value.to_owned(), String::new()),
    };
    ApiResource {
        group_version,
        kind,
        plural: String::new(),
        namespaced: true,
    }
}
