//! A refresh: Git to signed, stored bundles for every app that uses one repository.
//!
//! For each app of the repo it resolves the app's revision, skips it when the commit
//! did not change anything the app renders, renders it for every registered cluster
//! its destination names, and stores a new signed bundle generation where the
//! desired state changed. Applications and AppProjects an app renders (app of apps)
//! are adopted by the hub instead of being sent to a cluster, within the rules of
//! [`crate::app::adoption`] (a refused child is a condition on the parent); a child
//! that disappears is deleted, and with Argo CD's resources finalizer its objects are
//! pruned too. A failed render is recorded on the app and keeps its last good bundle.
//! Every bundle signed again (re-issued, rolled back) is first checked against the
//! app's project as it is now ([`recheck_bundle`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::bundles::{self, Batch, Issuer, Latest};
use flotilla_common::bundle::{self, Bundle, Object};
use flotilla_common::model::{AppRef, Timestamp};
use tracing::{Instrument as _, info, info_span, warn};

use crate::app::adoption::{self, Refusal};
use crate::app::appset::{ClusterParams, GeneratorInput, RepoFiles};
use crate::app::project::{self, Violation, windows};
use crate::app::{API_VERSION, AppProject, Application, ApplicationSet, RESOURCES_FINALIZER};
use crate::chart::{self, ChartCache, Pulled};
use crate::metrics::Metrics;
use crate::render::{Input, SourceInput};
use crate::render::{Renderer, Target, affected_by};
use crate::source::{self, CommitId, Repo, RepoCache, RepoSpec};
use crate::store::{
    self, AppOrigin, AppRecord, ClusterRecord, Event, Member, RepoRecord, RolloutRecord, Store,
};

/// How long one fetch may take before the refresh gives up on it.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a signed bundle stays valid; the link re-signs what it sends later.
pub const DEFAULT_BUNDLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fetching the repository failed; no app was touched.
    #[error(transparent)]
    Source(#[from] source::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Encoding or signing a bundle failed.
    #[error("signing the bundle of {app} for {cluster}")]
    Sign {
        app: String,
        cluster: String,
        #[source]
        source: flotilla_common::signing::Error,
    },
    /// The app to render does not exist.
    #[error("application {app} not found")]
    NoSuchApp { app: String },
    /// A chart from a Helm repository has versions, not Git revisions, and several
    /// sources have a revision each.
    #[error(
        "application {app} has a chart from a Helm repository or several sources; sync --revision needs one Git source"
    )]
    RevisionUnsupported { app: String },
    /// A bundle to be signed again no longer passes the app's AppProject as it is
    /// now; it was not signed.
    #[error("application {app}: the project no longer permits this bundle: {violation}")]
    Refused {
        app: String,
        #[source]
        violation: Violation,
    },
    /// Fetching the repository took longer than the refresher allows; other
    /// repositories are not held up by it.
    #[error("fetching {url} did not finish within {timeout:?}")]
    FetchTimeout { url: String, timeout: Duration },
    /// Other writers kept taking the next generation of the app's bundle.
    #[error(
        "storing a bundle of {app} for cluster {cluster}: other writers kept taking the next generation"
    )]
    Contended { app: String, cluster: String },
    /// The fetch task died.
    #[error("the fetch of {url} did not complete")]
    Join {
        url: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a refresh did to one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// New bundle generations were stored for these clusters.
    Rendered {
        commit: String,
        generations: Vec<(String, u64)>,
    },
    /// Rendered, and the desired state is what the clusters already have.
    Unchanged {
        commit: String,
    },
    /// The commit changed nothing this app renders.
    NotAffected {
        commit: String,
    },
    /// The render failed; the message is stored on the app.
    Failed {
        error: String,
    },
    /// The app was adopted from, or deleted with, its parent.
    Adopted,
    /// The parent rendered this Argo CD object and the hub refused to adopt it;
    /// the reason is a condition on the parent.
    Refused {
        reason: String,
    },
    Deleted {
        pruned: bool,
    },
    /// `argocd.argoproj.io/skip-reconcile: "true"`: neither rendered nor
    /// re-issued; its clusters keep what they have.
    SkippedReconcile,
}

/// What a render does with the Argo CD objects it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Children {
    /// Adopt them, and delete the children no longer rendered.
    Adopt,
    /// Leave every child as it is: the render is not of the app's target.
    Leave,
}

/// Checks a stored bundle about to be signed again (re-issued, or rolled back to)
/// against the app's AppProject as it is now, and makes it carry the current rules.
/// A bundle the project no longer permits is [`Error::Refused`]: a narrowed
/// project reaches every bundle signed after it changed.
pub fn recheck_bundle(store: &Store, app: &Application, bundle: &mut Bundle) -> Result<()> {
    let refused = |violation| Error::Refused {
        app: bundle.app.to_string(),
        violation,
    };
    let project = match store.project(&app.spec.project)? {
        Some(project) => project,
        None if app.spec.project == "default" => project::built_in_default(),
        None => {
            return Err(refused(Violation::NoSuchProject {
                project: app.spec.project.clone(),
            }));
        }
    };
    bundle.project = project.permits_bundle(app, bundle).map_err(refused)?;
    Ok(())
}

/// Drives refreshes against one store.
pub struct Refresher {
    store: Store,
    cache: Arc<RepoCache>,
    /// Chart archives by digest.
    charts: Arc<ChartCache>,
    renderer: Renderer,
    /// The one writer of bundle generations.
    issuer: Arc<Issuer>,
    bundle_ttl: Duration,
    fetch_timeout: Duration,
    metrics: Arc<Metrics>,
    /// One refresh at a time per app: refreshes of different repositories run
    /// at once, and the next generation of an app's bundle has one writer.
    app_locks: AppLocks,
}

type AppLocks =
    std::sync::Mutex<std::collections::HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

impl Refresher {
    pub async fn new(store: Store, cache: RepoCache, renderer: Renderer) -> Result<Self> {
        let issuer = Arc::new(Issuer::new(store.clone()).await?);
        let charts = ChartCache::new(cache.root().join(".charts")).map_err(|e| {
            Error::Source(source::Error::CacheDir {
                path: cache.root().join(".charts"),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        Ok(Self {
            store: store.clone(),
            cache: Arc::new(cache),
            charts: Arc::new(charts),
            // Renders kept in the hub's store survive a restart.
            renderer: if renderer.has_store() {
                renderer
            } else {
                renderer.with_store(store.clone())
            },
            issuer,
            bundle_ttl: DEFAULT_BUNDLE_TTL,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            metrics: Arc::default(),
            app_locks: AppLocks::default(),
        })
    }

    /// Waits until no other refresh holds the app, and holds it.
    async fn lock_app(&self, project: &str, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.app_locks.lock().unwrap_or_else(|p| p.into_inner());
            // Locks nobody holds or waits for go, so the map stays as small as
            // the set of apps being refreshed.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            locks
                .entry((project.to_owned(), name.to_owned()))
                .or_default()
                .clone()
        };
        lock.lock_owned().await
    }

    /// Keeps chart archives in `charts` (whose extra certificate authorities chart
    /// repositories and the renderer's dependency fetches are trusted with).
    pub fn with_chart_cache(mut self, charts: ChartCache) -> Self {
        self.renderer = std::mem::replace(
            &mut self.renderer,
            Renderer::new(crate::render::Tools::from_env()),
        )
        .with_extra_roots(charts.extra_roots().to_vec());
        self.charts = Arc::new(charts);
        self
    }

    /// The chart archive cache, for its hit count.
    pub fn chart_cache(&self) -> &ChartCache {
        &self.charts
    }

    /// The renderer, for its cache hit count.
    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// Gives up on a fetch after `timeout` instead of [`DEFAULT_FETCH_TIMEOUT`].
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Fetches `url` on the blocking pool within the fetch timeout. Past it, the
    /// fetch is told to stop and the refresh fails with [`Error::FetchTimeout`]; a
    /// remote that stalls costs its own refresh, never another repository's.
    async fn fetch(&self, url: &str) -> Result<Repo> {
        let spec = match self.store.repo_access(url)? {
            Some(record) => RepoSpec {
                url: url.to_owned(),
                credentials: record.credentials,
            },
            None => RepoSpec::new(url),
        };
        let cache = self.cache.clone();
        let interrupt = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = interrupt.clone();
        let task = tokio::task::spawn_blocking(move || cache.fetch_interruptible(&spec, &flag));
        match tokio::time::timeout(self.fetch_timeout, task).await {
            Ok(joined) => Ok(joined.map_err(|source| Error::Join {
                url: RepoSpec::new(url).redacted_url(),
                source,
            })??),
            Err(_) => {
                interrupt.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(Error::FetchTimeout {
                    url: RepoSpec::new(url).redacted_url(),
                    timeout: self.fetch_timeout,
                })
            }
        }
    }

    /// Records render durations and errors in `metrics` instead of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Makes every app-of-apps parent render again at its next refresh, even at
    /// the commit it rendered last: what its ApplicationSets generate depends on
    /// the registered clusters, not only on the commit, so a cluster that
    /// registers must reach the sets' clusters generators. A parent is an app
    /// that another app names as its origin, or that holds a rollout. (A parent
    /// whose every set generated nothing so far is not known as one; it catches
    /// up at its next commit.)
    pub async fn render_parents_again(&self) -> Result<usize> {
        let mut parents: BTreeSet<(String, String)> = BTreeSet::new();
        for app in self.store.apps()? {
            if let AppOrigin::Parent { project, name } = &app.origin {
                parents.insert((project.clone(), name.clone()));
            }
        }
        for rollout in self.store.rollouts()? {
            if let Some((project, name)) = rollout.parent.split_once('/') {
                parents.insert((project.to_owned(), name.to_owned()));
            }
        }
        let mut count = 0;
        for (project, name) in parents {
            if let Some(mut record) = self.store.app(&project, &name)?
                && record.rendered_commit.is_some()
            {
                record.rendered_commit = None;
                self.store.put_app(&record).await?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Where render durations and errors are counted.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The public half of the key agents must trust to accept this hub's bundles.
    pub fn public_key(&self) -> [u8; 32] {
        self.issuer.public_key()
    }

    /// The one writer of bundle generations, which a rollback goes through too.
    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    /// Refreshes every app whose source is `url`.
    pub async fn refresh_repo(&self, url: &str, now: SystemTime) -> Result<Vec<(String, Outcome)>> {
        let span = info_span!("refresh", repo = %RepoSpec::new(url).redacted_url());
        async {
            // The project decides before anything is fetched: a repository that no
            // app's project allows is never fetched (with the hub's stored
            // credentials) nor rendered. Each app refused gets its violation.
            let mut outcomes = Vec::new();
            let mut allowed = false;
            let mut refused = Vec::new();
            let mut needs_git = false;
            for record in self.store.apps()? {
                if !record.uses_repository(url) {
                    continue;
                }
                needs_git |= !record.application.needs_resolved_sources();
                match self.project_permits_source(&record.application)? {
                    Ok(()) => allowed = true,
                    Err(violation) => refused.push((record, violation)),
                }
            }
            if !allowed && !refused.is_empty() {
                for (record, violation) in refused {
                    let name = format!("{}/{}", record.project(), record.name());
                    let outcome = self.fail_project(record, violation.to_string()).await?;
                    outcomes.extend(
                        outcome
                            .into_iter()
                            .map(|(n, o)| (if n.is_empty() { name.clone() } else { n }, o)),
                    );
                }
                return Ok(outcomes);
            }
            // Charts and apps of several sources resolve each source themselves;
            // the Git fetch here serves the apps of one Git source.
            let repo = if needs_git {
                match self.fetch(url).await {
                    Ok(repo) => Some(repo),
                    Err(e) => {
                        self.record_fetch_failure(url, &e).await?;
                        return Err(e);
                    }
                }
            } else {
                None
            };
            // Children adopted from a parent are refreshed in the same pass, so a
            // whole app-of-apps tree settles in one refresh.
            let mut done = BTreeSet::new();
            loop {
                let pending: Vec<AppRecord> = self
                    .store
                    .apps()?
                    .into_iter()
                    .filter(|a| a.uses_repository(url))
                    .filter(|a| !done.contains(&(a.project(), a.name())))
                    .collect();
                if pending.is_empty() {
                    break;
                }
                // Parents first: a parent may delete a child, which then needs no refresh.
                let (roots, children): (Vec<_>, Vec<_>) = pending
                    .into_iter()
                    .partition(|a| a.origin == AppOrigin::Store);
                let batch = if roots.is_empty() { children } else { roots };
                for record in batch {
                    // Another refresh (another spelling of this repository, or a
                    // sync --revision) may hold the app: wait for it, then start
                    // from what it stored.
                    let _app = self.lock_app(&record.project(), &record.name()).await;
                    let Some(record) = self.store.app(&record.project(), &record.name())? else {
                        continue;
                    };
                    done.insert((record.project(), record.name()));
                    let name = format!("{}/{}", record.project(), record.name());
                    if record.application.skips_reconcile() {
                        outcomes.push((name, Outcome::SkippedReconcile));
                        continue;
                    }
                    let span = info_span!("app", app = %name);
                    let outcome = if record.application.needs_resolved_sources() {
                        self.refresh_resolved(record, Children::Adopt, now)
                            .instrument(span)
                            .await?
                    } else if let Some(repo) = &repo {
                        self.refresh_app(repo, record, Children::Adopt, now)
                            .instrument(span)
                            .await?
                    } else {
                        // A child of one Git source adopted in this pass from a
                        // chart: its own repository's refresh renders it.
                        continue;
                    };
                    outcomes.extend(
                        outcome
                            .into_iter()
                            .map(|(n, o)| (if n.is_empty() { name.clone() } else { n }, o)),
                    );
                }
            }
            for (project, name) in &done {
                self.redate_expiring(project, name, now).await?;
                let skipped = self
                    .store
                    .app(project, name)?
                    .is_some_and(|r| r.application.skips_reconcile());
                if !skipped {
                    self.apply_sync_windows(project, name, now).await?;
                }
            }
            Ok(outcomes)
        }
        .instrument(span)
        .await
    }

    /// Shows a failed fetch on every app of the repository, as Argo CD's
    /// ComparisonError does: its last good bundles stay in force, and the next
    /// fetch that works clears it. Written only when the message changes, so a
    /// repository that stays unreachable does not write on every poll.
    async fn record_fetch_failure(&self, url: &str, error: &Error) -> Result<()> {
        let message = crate::render::redact_urls(&flotilla_common::error::describe(error));
        for record in self.store.apps()? {
            if !record.uses_repository(url)
                || record.application.needs_resolved_sources()
                || record.render_error.as_deref() == Some(message.as_str())
                || self.project_permits_source(&record.application)?.is_err()
            {
                continue;
            }
            let _app = self.lock_app(&record.project(), &record.name()).await;
            let Some(record) = self.store.app(&record.project(), &record.name())? else {
                continue;
            };
            self.fail(record, message.clone()).await?;
        }
        Ok(())
    }

    /// Re-issues, as the next generation with a fresh validity, each of the app's
    /// latest bundles that is past half its life. Without it an app whose desired
    /// state stays the same for longer than a bundle lives would leave an agent that
    /// was offline meanwhile with only an expired bundle, which it must refuse.
    /// The objects, policy and source stay as they were, so an agent applying the
    /// new generation writes nothing.
    async fn redate_expiring(&self, project: &str, name: &str, now: SystemTime) -> Result<()> {
        let _app = self.lock_app(project, name).await;
        let due = Timestamp::from_system_time(now).saturating_add(self.bundle_ttl / 2);
        let app = AppRef::new(project, name);
        let mut batch = self.issuer.batch();
        let redated = async {
            for cluster in self.store.clusters()? {
                // The index tells which bundles are due without decoding any; one
                // indexed before it kept expiries is decoded below.
                match self.issuer.indexed(&app, &cluster.name)? {
                    None => continue,
                    Some(indexed) if indexed.not_after.is_some_and(|t| t >= due) => continue,
                    Some(_) => {}
                }
                let Some(record) = self.store.app(project, name)? else {
                    return Ok(());
                };
                let mut previous_generation = 0;
                let issued = batch.issue(&app, &cluster.name, |generation, latest| {
                    let Some(previous) = latest.and_then(|l| l.bundle.clone()) else {
                        return Ok(None);
                    };
                    if previous.not_after >= due {
                        return Ok(None);
                    }
                    previous_generation = generation - 1;
                    let mut redated = Bundle {
                        generation,
                        created_at: Timestamp::from_system_time(now),
                        not_after: Timestamp::from_system_time(now).saturating_add(self.bundle_ttl),
                        ..previous
                    };
                    recheck_bundle(&self.store, &record.application, &mut redated)?;
                    Ok(Some(redated))
                });
                match issued {
                    Ok(Some(generation)) => {
                        info!(cluster = %cluster.name, app = %app, generation, "re-issued a bundle past half its life");
                    }
                    Ok(None) => {}
                    Err(bundles::Error::Draft(Error::Refused { violation, .. })) => {
                        // The old bundle runs out as it would have; nothing signs it
                        // again under rules the project has dropped.
                        let error = format!(
                            "cluster {}: not re-issuing generation {previous_generation}: {violation}",
                            cluster.name
                        );
                        self.fail_project(record, error).await?;
                    }
                    Err(e) => return Err(issue_error(e)),
                }
            }
            Ok(())
        }
        .await;
        // One flush for all the clusters, and what was re-issued before a failure
        // is kept.
        batch.commit().await?;
        redated
    }

    /// Re-issues each of the app's latest bundles whose automation no longer
    /// matches its project's sync windows at `now`: a deny window that opened (or
    /// every allow window closed) turns automated sync and selfHeal off on the
    /// agent, and the window's end turns them on again. Called on every refresh,
    /// so a window takes effect within one poll interval, as in Argo CD, where
    /// windows are checked at each reconciliation.
    pub async fn apply_sync_windows(
        &self,
        project: &str,
        name: &str,
        now: SystemTime,
    ) -> Result<()> {
        let _app = self.lock_app(project, name).await;
        let Some(record) = self.store.app(project, name)? else {
            return Ok(());
        };
        let Ok(app_project) = self.project_of(&record.application)? else {
            return Ok(());
        };
        let app = AppRef::new(project, name);
        let mut batch = self.issuer.batch();
        let result = async {
            for cluster in self.store.clusters()? {
                if !cluster.is_destination(&record.application.spec.destination) {
                    continue;
                }
                let wanted = windowed_policy(&record.application, &app_project, &cluster, now);
                let issued = batch.issue(&app, &cluster.name, |generation, latest| {
                    let Some(previous) = latest.and_then(|l| l.bundle.clone()) else {
                        return Ok(None);
                    };
                    if previous.policy.deletion.is_some()
                        || previous.policy.automated == wanted.automated
                    {
                        return Ok(None);
                    }
                    let mut next = Bundle {
                        generation,
                        created_at: Timestamp::from_system_time(now),
                        not_after: Timestamp::from_system_time(now).saturating_add(self.bundle_ttl),
                        policy: bundle::SyncPolicy {
                            automated: wanted.automated.clone(),
                            ..previous.policy.clone()
                        },
                        ..previous
                    };
                    recheck_bundle(&self.store, &record.application, &mut next)?;
                    Ok(Some(next))
                });
                match issued {
                    Ok(Some(generation)) => {
                        info!(
                            cluster = %cluster.name, app = %app, generation,
                            automated = wanted.automated.is_some(),
                            "a sync window changed the app's automation"
                        );
                    }
                    Ok(None) => {}
                    Err(bundles::Error::Draft(Error::Refused { .. })) => {}
                    Err(e) => return Err(issue_error(e)),
                }
            }
            Ok(())
        }
        .await;
        batch.commit().await?;
        result
    }

    /// Renders one app at `revision` instead of its targetRevision, and stores the
    /// bundles that come of it, for `flotilla app sync --revision`. The app's spec
    /// keeps its targetRevision: the next refresh compares against it again, so a
    /// manual app shows OutOfSync once its target renders differently.
    pub async fn render_revision(
        &self,
        project: &str,
        name: &str,
        revision: &str,
        now: SystemTime,
    ) -> Result<Outcome> {
        let span = info_span!("render_revision", app = %format!("{project}/{name}"), %revision);
        async {
            let _app = self.lock_app(project, name).await;
            let Some(mut record) = self.store.app(project, name)? else {
                return Err(Error::NoSuchApp {
                    app: format!("{project}/{name}"),
                });
            };
            if record.application.needs_resolved_sources() {
                return Err(Error::RevisionUnsupported {
                    app: format!("{project}/{name}"),
                });
            }
            if let Err(violation) = self.project_permits_source(&record.application)? {
                let outcome = self.fail_project(record, violation.to_string()).await?;
                return Ok(outcome
                    .into_iter()
                    .next()
                    .map_or(Outcome::Adopted, |(_, o)| o));
            }
            let url = record.application.source().repo_url.clone();
            let repo = self.fetch(&url).await?;
            let original = record.application.clone();
            if let Some(source) = record.application.spec.source.as_mut() {
                source.target_revision = revision.to_owned();
            }
            // Render even when the commit is the one rendered last.
            record.rendered_commit = None;
            let outcomes = self
                .refresh_app(&repo, record, Children::Leave, now)
                .await?;
            if let Some(mut stored) = self.store.app(project, name)? {
                stored.application = original;
                self.store.put_app(&stored).await?;
            }
            Ok(outcomes
                .into_iter()
                .next()
                .map_or(Outcome::Adopted, |(_, o)| o))
        }
        .instrument(span)
        .await
    }

    async fn refresh_app(
        &self,
        repo: &Repo,
        mut record: AppRecord,
        children_policy: Children,
        now: SystemTime,
    ) -> Result<Vec<(String, Outcome)>> {
        let app = record.application.clone();

        // The project is checked before anything is rendered: its source repos and
        // destinations first, its resource rules on what renders.
        let project = match self.project_of(&app)? {
            Ok(project) => project,
            Err(missing) => return self.fail_project(record, missing.to_string()).await,
        };
        if let Err(violation) = project.permits(&app, &[]) {
            return self.fail_project(record, violation.to_string()).await;
        }

        let commit = match repo.resolve(&app.source().target_revision) {
            Ok(commit) => commit,
            Err(e) => return self.fail(record, e.to_string()).await,
        };
        if let (Some(old), Some(kind), None) = (
            &record.rendered_commit,
            record.rendered_kind,
            &record.render_error,
        ) {
            if *old == commit.as_str() {
                return Ok(vec![(
                    String::new(),
                    Outcome::NotAffected {
                        commit: commit.to_string(),
                    },
                )]);
            }
            let changed = CommitId::parse(old).and_then(|old| repo.changed_paths(&old, &commit));
            if changed.is_ok_and(|changed| !affected_by(&app, kind, &changed)) {
                record.rendered_commit = Some(commit.to_string());
                self.store.put_app(&record).await?;
                return Ok(vec![(
                    String::new(),
                    Outcome::NotAffected {
                        commit: commit.to_string(),
                    },
                )]);
            }
        }

        let Some(clusters) = self.destinations(&app)? else {
            return self.fail_no_destination(record).await;
        };

        let mut rendered_per_cluster = Vec::new();
        for cluster in &clusters {
            let target = Target {
                cluster: &cluster.name,
                facts: cluster.facts.as_ref(),
            };
            let started = std::time::Instant::now();
            let result = self
                .renderer
                .render(&app, Some(repo), Some(&commit), target)
                .await;
            self.metrics
                .observe_render(started.elapsed(), result.is_err());
            match result {
                Ok(rendered) => rendered_per_cluster.push((cluster, rendered)),
                Err(e) => {
                    return self
                        .fail(record, format!("cluster {}: {e}", cluster.name))
                        .await;
                }
            }
        }
        let revision = commit.to_string();
        record.rendered_revisions = vec![revision.clone()];
        self.store_rendered(
            record,
            &app,
            &project,
            rendered_per_cluster,
            &revision,
            children_policy,
            now,
        )
        .await
    }

    /// The registered clusters `app`'s destination names; `None` when there is none.
    fn destinations(&self, app: &Application) -> Result<Option<Vec<ClusterRecord>>> {
        let clusters: Vec<ClusterRecord> = self
            .store
            .clusters()?
            .into_iter()
            .filter(|c| c.is_destination(&app.spec.destination))
            .collect();
        Ok((!clusters.is_empty()).then_some(clusters))
    }

    async fn fail_no_destination(&self, record: AppRecord) -> Result<Vec<(String, Outcome)>> {
        {
            let dest = &record.application.spec.destination;
            let named = dest
                .name
                .as_deref()
                .or(dest.server.as_deref())
                .unwrap_or("")
                .to_owned();
            self.fail(
                record,
                format!("destination cluster {named:?} is not registered"),
            )
            .await
        }
    }

    /// Checks what each cluster rendered against the project, stores the bundles
    /// that changed, adopts the children, and records `revision` as rendered.
    #[allow(clippy::too_many_arguments)]
    async fn store_rendered(
        &self,
        mut record: AppRecord,
        app: &Application,
        project: &AppProject,
        rendered_per_cluster: Vec<(&ClusterRecord, crate::render::Rendered)>,
        revision: &str,
        children_policy: Children,
        now: SystemTime,
    ) -> Result<Vec<(String, Outcome)>> {
        let mut outcomes = Vec::new();
        let mut generations = Vec::new();
        let mut kind = None;
        let mut children = None;
        // Check every cluster's render before storing any, so a violation on one
        // cluster leaves the app's bundles on all of them as they were.
        let mut checked = Vec::with_capacity(rendered_per_cluster.len());
        for (cluster, rendered) in rendered_per_cluster {
            kind = Some(rendered.kind);
            let (objects, found) = match split_argo_objects(&rendered.objects) {
                Ok(split) => split,
                Err(e) => return self.fail(record, e).await,
            };
            if let Err(violation) = project.permits(app, &objects) {
                return self
                    .fail_project(record, format!("cluster {}: {violation}", cluster.name))
                    .await;
            }
            // Children are the same for every cluster; keep the first cluster's.
            children.get_or_insert(found);
            checked.push((cluster, objects));
        }
        // A render of another revision than the app's own (sync --revision) is not
        // what was reviewed: it never adopts nor deletes children.
        if children_policy == Children::Leave {
            if children.as_ref().is_some_and(|found| !found.is_empty()) {
                info!(
                    "children rendered at a revision other than the target are neither adopted nor deleted"
                );
            }
            children = None;
        }
        // ApplicationSets are expanded once, and before anything is stored, so a
        // failing generator leaves every cluster's bundle as it was.
        let mut rolling = Vec::new();
        let children = match children
            .map(|found| self.expand_sets(found, project, &mut rolling))
            .transpose()
        {
            Ok(children) => children,
            Err(e) => return self.fail(record, e).await,
        };
        // One flush per COMMIT_EVERY clusters' bundles, not one each: a fan-out to
        // thousands of clusters would otherwise spend its time flushing.
        let mut batch = self.issuer.batch();
        let mut stored = Ok(());
        for (cluster, objects) in checked {
            match self.store_bundle(
                &mut batch, &record, app, project, cluster, revision, objects, now,
            ) {
                Ok(Some(generation)) => {
                    generations.push((cluster.name.clone(), generation));
                    if batch.pending() >= bundles::COMMIT_EVERY
                        && let Err(e) = batch.commit_pending().await
                    {
                        stored = Err(e.into());
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    stored = Err(e);
                    break;
                }
            }
        }
        // What was written is committed even when a later cluster failed: it is
        // as valid as if it had been stored alone.
        batch.commit().await?;
        stored?;
        if let Some(children) = children {
            let (adopted, refused) = self.adopt(&record, children, now).await?;
            outcomes.extend(adopted);
            record.refused_children = refused;
            self.record_rollouts(&record, rolling).await?;
        }

        record.rendered_commit = Some(revision.to_owned());
        record.rendered_kind = kind;
        record.render_error = None;
        record.project_violation = false;
        self.store.put_app(&record).await?;
        let outcome = if generations.is_empty() {
            Outcome::Unchanged {
                commit: revision.to_owned(),
            }
        } else {
            info!(revision, ?generations, "rendered new bundles");
            Outcome::Rendered {
                commit: revision.to_owned(),
                generations,
            }
        };
        outcomes.insert(0, (String::new(), outcome));
        Ok(outcomes)
    }

    /// Refreshes an app with a chart from a Helm repository or several sources:
    /// resolves each source (a Git fetch, or a chart repository's index or a
    /// registry's tags), renders when any source's revision moved, and stores
    /// what changed. A source that cannot be resolved is a condition on the app
    /// naming the source, its repository and (for a chart) the chart; its last
    /// good bundles stay in force.
    async fn refresh_resolved(
        &self,
        mut record: AppRecord,
        children_policy: Children,
        now: SystemTime,
    ) -> Result<Vec<(String, Outcome)>> {
        let app = record.application.clone();
        let project = match self.project_of(&app)? {
            Ok(project) => project,
            Err(missing) => return self.fail_project(record, missing.to_string()).await,
        };
        if let Err(violation) = project.permits(&app, &[]) {
            return self.fail_project(record, violation.to_string()).await;
        }

        let sources = app.sources();
        let multi = app.is_multi_source();
        let at = |i: usize| {
            if multi {
                format!("spec.sources[{i}]")
            } else {
                "spec.source".to_owned()
            }
        };
        let mut fetched: Vec<Fetched> = Vec::with_capacity(sources.len());
        for (i, source) in sources.iter().enumerate() {
            let got = if let Some(chart_name) = &source.chart {
                self.pull_chart(source, chart_name)
                    .await
                    .map(Fetched::Chart)
                    .map_err(|e| format!("{}: {e}", at(i)))
            } else {
                match self.fetch(&source.repo_url).await {
                    Ok(repo) => repo
                        .resolve(&source.target_revision)
                        .map(|commit| Fetched::Git {
                            repo: Box::new(repo),
                            commit,
                        })
                        .map_err(|e| format!("{}: {e}", at(i))),
                    Err(e) => Err(format!(
                        "{}: {}",
                        at(i),
                        flotilla_common::error::describe(&e)
                    )),
                }
            };
            match got {
                Ok(f) => fetched.push(f),
                Err(error) => return self.fail(record, error).await,
            }
        }
        let revisions: Vec<String> = fetched.iter().map(Fetched::revision).collect();
        if record.render_error.is_none()
            && record.rendered_kind.is_some()
            && record.rendered_revisions == revisions
        {
            return Ok(vec![(
                String::new(),
                Outcome::NotAffected {
                    commit: revisions.join(", "),
                },
            )]);
        }
        let inputs: Vec<SourceInput<'_>> = sources
            .iter()
            .zip(&fetched)
            .map(|(source, f)| SourceInput {
                source,
                input: match f {
                    Fetched::Git { repo, commit } => Input::Git { repo, commit },
                    Fetched::Chart(pulled) => Input::Chart(pulled),
                },
            })
            .collect();

        let Some(clusters) = self.destinations(&app)? else {
            return self.fail_no_destination(record).await;
        };
        let mut rendered_per_cluster = Vec::new();
        for cluster in &clusters {
            let target = Target {
                cluster: &cluster.name,
                facts: cluster.facts.as_ref(),
            };
            let started = std::time::Instant::now();
            let result = self.renderer.render_sources(&app, &inputs, target).await;
            self.metrics
                .observe_render(started.elapsed(), result.is_err());
            match result {
                Ok(rendered) => rendered_per_cluster.push((cluster, rendered)),
                Err(e) => {
                    return self
                        .fail(record, format!("cluster {}: {e}", cluster.name))
                        .await;
                }
            }
        }
        record.rendered_revisions = revisions.clone();
        self.store_rendered(
            record,
            &app,
            &project,
            rendered_per_cluster,
            &revisions.join(", "),
            children_policy,
            now,
        )
        .await
    }

    /// The chart archive a chart source's targetRevision picks, with the
    /// credentials the hub holds for its repository, within the fetch timeout.
    async fn pull_chart(
        &self,
        source: &crate::app::Source,
        chart_name: &str,
    ) -> Result<Pulled, String> {
        let access = self
            .store
            .repo_access(&source.repo_url)
            .map_err(|e| e.to_string())?;
        let repo = RepoRecord::chart_repo(
            access,
            &source.repo_url,
            source.helm.as_ref().is_some_and(|h| h.pass_credentials),
        );
        let work = async {
            let resolved = self
                .charts
                .resolve(&repo, chart_name, &source.target_revision)
                .await?;
            self.charts.pull(&repo, &resolved).await
        };
        match tokio::time::timeout(self.fetch_timeout, work).await {
            Ok(result) => result.map_err(|e: chart::Error| e.to_string()),
            Err(_) => Err(format!(
                "chart {chart_name:?} from {}: fetching did not finish within {:?}",
                repo.redacted_url(),
                self.fetch_timeout
            )),
        }
    }

    /// The app's AppProject, or why there is none.
    fn project_of(&self, app: &Application) -> Result<Result<AppProject, Violation>> {
        Ok(match self.store.project(&app.spec.project)? {
            Some(project) => Ok(project),
            None if app.spec.project == "default" => Ok(project::built_in_default()),
            None => Err(Violation::NoSuchProject {
                project: app.spec.project.clone(),
            }),
        })
    }

    /// Whether the app's project allows its source repository and destination,
    /// the checks that need nothing fetched or rendered.
    fn project_permits_source(&self, app: &Application) -> Result<Result<(), Violation>> {
        Ok(self.project_of(app)?.and_then(|p| p.permits(app, &[])))
    }

    async fn fail(&self, mut record: AppRecord, error: String) -> Result<Vec<(String, Outcome)>> {
        record.project_violation = false;
        self.record_failure(record, error).await
    }

    /// A render the app's AppProject refused, which the app's conditions tell apart.
    async fn fail_project(
        &self,
        mut record: AppRecord,
        error: String,
    ) -> Result<Vec<(String, Outcome)>> {
        record.project_violation = true;
        self.record_failure(record, error).await
    }

    async fn record_failure(
        &self,
        mut record: AppRecord,
        error: String,
    ) -> Result<Vec<(String, Outcome)>> {
        // The message is stored, logged and shown by the API: a repository URL
        // with a password in it (the app's own, or in a tool's output) loses it.
        let error = crate::render::redact_urls(&error);
        warn!(%error, "render failed; the last good bundle stays in force");
        record.render_error = Some(error.clone());
        self.store.put_app(&record).await?;
        self.event(&record, "render-failed", &error).await?;
        Ok(vec![(String::new(), Outcome::Failed { error })])
    }

    /// Stores the next generation for (app, cluster) when the desired state differs
    /// from the latest stored one. Returns the new generation.
    #[allow(clippy::too_many_arguments)]
    fn store_bundle(
        &self,
        batch: &mut Batch<'_>,
        record: &AppRecord,
        app: &Application,
        app_project: &AppProject,
        cluster: &ClusterRecord,
        revision: &str,
        objects: Vec<Object>,
        now: SystemTime,
    ) -> Result<Option<u64>> {
        let (project, name) = (record.project(), record.name());
        let mut objects = objects;
        objects
            .sort_by(|a, b| (&a.gvk, &a.namespace, &a.name).cmp(&(&b.gvk, &b.namespace, &b.name)));
        let app_ref = AppRef::new(project.clone(), name.clone());
        let proposed = batch
            .propose(
                &app_ref,
                &cluster.name,
                |generation, latest: Option<&Latest>| {
                    let bundle = Bundle {
                        app: app_ref.clone(),
                        cluster: cluster.name.clone(),
                        source: bundle::Source {
                            repo: app.source().repo_url.clone(),
                            revision: revision.to_owned(),
                            path: app
                                .source()
                                .path
                                .clone()
                                .or_else(|| app.source().chart.clone())
                                .unwrap_or_default(),
                        },
                        generation,
                        created_at: Timestamp::from_system_time(now),
                        not_after: Timestamp::from_system_time(now).saturating_add(self.bundle_ttl),
                        policy: windowed_policy(app, app_project, cluster, now),
                        ignore_differences: ignore_differences(app),
                        project: app_project.rules(&app.spec.destination),
                        objects: objects.clone(),
                    };
                    let unchanged = latest
                        .and_then(|l| l.bundle.as_ref())
                        .is_some_and(|previous| same_desired_state(previous, &bundle));
                    Ok::<_, std::convert::Infallible>((!unchanged).then_some(bundle))
                },
            )
            .map_err(issue_error)?;
        match proposed {
            bundles::Proposed::Issued(generation) => {
                info!(cluster = %cluster.name, generation, objects = objects.len(), "stored a new bundle");
                Ok(Some(generation))
            }
            bundles::Proposed::Held => {
                info!(cluster = %cluster.name, objects = objects.len(), "held a new bundle for its rollout step");
                Ok(None)
            }
            bundles::Proposed::Unchanged => Ok(None),
        }
    }

    /// Adopts the Applications and AppProjects a parent rendered that the rules of
    /// [`adoption`] allow, and deletes the children it no longer renders. Returns
    /// what became of each child and the children refused, which stay on the
    /// parent as conditions. A refused child that was adopted before is kept as it
    /// was: losing a permission never cascades into deleting what it deployed.
    async fn adopt(
        &self,
        parent: &AppRecord,
        children: Vec<ArgoObject>,
        now: SystemTime,
    ) -> Result<(Vec<(String, Outcome)>, Vec<Refusal>)> {
        let origin = AppOrigin::Parent {
            project: parent.project(),
            name: parent.name(),
        };
        let parent_project = parent.project();
        let mut outcomes = Vec::new();
        let mut refused = Vec::new();
        let mut kept = BTreeSet::new();
        // Projects first, so a child Application may name a project adopted in the
        // same render.
        let (projects, apps): (Vec<_>, Vec<_>) = children
            .into_iter()
            .partition(|c| matches!(c, ArgoObject::Project(_)));
        for child in projects {
            let ArgoObject::Project(project) = child else {
                continue;
            };
            let exists_elsewhere = self.store.project(project.name())?.is_some()
                && self.store.project_origin(project.name())?.as_ref() != Some(&origin);
            let checked = adoption::check_child_project(
                &parent_project,
                self.store.project(&parent_project)?.as_ref(),
                &project,
                exists_elsewhere,
            );
            match checked {
                Ok(()) => {
                    if self.store.project(project.name())?.as_ref() != Some(&*project) {
                        self.store.put_adopted_project(&project, &origin).await?;
                        info!(project = %project.name(), "adopted an AppProject");
                    }
                }
                Err(refusal) => {
                    warn!(%refusal, "a rendered AppProject was refused");
                    outcomes.push((
                        format!("project/{}", project.name()),
                        Outcome::Refused {
                            reason: refusal.to_string(),
                        },
                    ));
                    refused.push(refusal);
                }
            }
        }
        for child in apps {
            let (app, from_set) = match child {
                ArgoObject::Application(app) => (app, None),
                ArgoObject::Generated { set, app } => (app, Some(set)),
                // Expanded before adoption; projects were handled above.
                ArgoObject::Set(_) | ArgoObject::Project(_) => continue,
            };
            let key = (app.spec.project.clone(), app.metadata.name.clone());
            let child_name = match &from_set {
                None => format!("Application {}/{}", key.0, key.1),
                Some(set) => format!(
                    "Application {}/{} (generated by ApplicationSet {set})",
                    key.0, key.1
                ),
            };
            let existing = self.store.app(&key.0, &key.1)?;
            let target = self.store.project(&key.0)?;
            let checked =
                adoption::check_child_app(&parent_project, &app, target.as_ref(), &child_name)
                    .and_then(|()| match &existing {
                        Some(r) if r.origin != origin => Err(Refusal::NotOwnedApp {
                            child: child_name.clone(),
                        }),
                        _ => Ok(()),
                    });
            if let Err(refusal) = checked {
                warn!(%refusal, "a rendered Application was refused");
                if existing.as_ref().is_some_and(|r| r.origin == origin) {
                    kept.insert(key.clone());
                }
                outcomes.push((
                    format!("{}/{}", key.0, key.1),
                    Outcome::Refused {
                        reason: refusal.to_string(),
                    },
                ));
                refused.push(refusal);
                continue;
            }
            kept.insert(key.clone());
            let record = match existing {
                Some(mut r) => {
                    if r.application == *app {
                        continue;
                    }
                    r.application = *app;
                    r.rendered_commit = None;
                    r
                }
                None => AppRecord::new(*app, origin.clone()),
            };
            self.store.put_app(&record).await?;
            self.event(
                &record,
                "adopted",
                &format!("from {}/{}", parent.project(), parent.name()),
            )
            .await?;
            outcomes.push((format!("{}/{}", key.0, key.1), Outcome::Adopted));
        }
        for gone in self
            .store
            .apps()?
            .into_iter()
            .filter(|a| a.origin == origin)
        {
            if kept.contains(&(gone.project(), gone.name())) {
                continue;
            }
            let pruned = gone.application.cascades();
            if pruned {
                // Nobody confirms a deletion that came from Git: Delete=confirm
                // objects stay in place rather than go unconfirmed.
                self.prune_everywhere(&gone, now, false).await?;
            }
            self.store.remove_app(&gone.project(), &gone.name()).await?;
            self.event(
                &gone,
                "deleted",
                if pruned {
                    "with its resources"
                } else {
                    "resources kept"
                },
            )
            .await?;
            outcomes.push((
                format!("{}/{}", gone.project(), gone.name()),
                Outcome::Deleted { pruned },
            ));
        }
        Ok((outcomes, refused))
    }

    /// Stores an empty, prune-everything bundle for every cluster the app was on, so
    /// its agents delete what it deployed (Argo CD's cascade delete). Objects
    /// marked `Delete=false` stay, and so do `Delete=confirm` ones unless the
    /// deletion is `confirmed`.
    pub async fn prune_everywhere(
        &self,
        record: &AppRecord,
        now: SystemTime,
        confirmed: bool,
    ) -> Result<()> {
        let app = AppRef::new(record.project(), record.name());
        let mut batch = self.issuer.batch();
        let mut issued = Ok(());
        for cluster in self.store.clusters()? {
            let drafted = batch
                .issue(&app, &cluster.name, |generation, latest| {
                    let Some(previous) = latest.and_then(|l| l.bundle.clone()) else {
                        return Ok::<_, std::convert::Infallible>(None);
                    };
                    Ok(Some(Bundle {
                        generation,
                        created_at: Timestamp::from_system_time(now),
                        not_after: Timestamp::from_system_time(now).saturating_add(self.bundle_ttl),
                        policy: bundle::SyncPolicy {
                            automated: Some(bundle::Automated {
                                prune: true,
                                self_heal: false,
                                allow_empty: true,
                            }),
                            sync_options: previous.policy.sync_options.clone(),
                            deletion: Some(bundle::Deletion {
                                confirmed,
                                background: record.application.cascades_in_background(),
                            }),
                            retry: None,
                            managed_namespace_metadata: None,
                        },
                        // Only the hooks that run on deletion: PreDelete before the
                        // objects go, PostDelete after.
                        objects: previous
                            .objects
                            .iter()
                            .filter(|o| o.hook.as_ref().is_some_and(|h| h.phase.on_delete()))
                            .cloned()
                            .collect(),
                        ..previous
                    }))
                })
                .map_err(issue_error);
            if let Err(e) = drafted {
                issued = Err(e);
                break;
            }
        }
        batch.commit().await?;
        issued
    }

    /// Replaces each ApplicationSet by the Applications it generates now. Unless the
    /// set preserves resources on deletion, its apps carry the resources finalizer,
    /// so an app the set stops generating takes its objects with it.
    /// A git generator reads its repository on behalf of the app that holds the
    /// set, so that app's `project` must allow the repository before anything is
    /// fetched (with whatever credentials the hub holds for it).
    /// A set with a RollingSync strategy goes into `rolling` with the apps it
    /// generates, for [`Refresher::record_rollouts`].
    fn expand_sets(
        &self,
        found: Vec<ArgoObject>,
        project: &AppProject,
        rolling: &mut Vec<(ApplicationSet, Vec<Member>)>,
    ) -> Result<Vec<ArgoObject>, String> {
        let mut out = Vec::with_capacity(found.len());
        for object in found {
            let ArgoObject::Set(set) = object else {
                out.push(object);
                continue;
            };
            let preserve = set
                .spec
                .sync_policy
                .as_ref()
                .is_some_and(|p| p.preserve_resources_on_deletion);
            let input = ProjectInput {
                refresher: self,
                project,
                read: RefCell::default(),
            };
            let generated = set.generate(&input).map_err(|e| e.to_string())?;
            if set
                .spec
                .strategy
                .as_ref()
                .is_some_and(|s| s.rolling_steps().is_some())
            {
                let members = generated
                    .iter()
                    .map(|app| Member {
                        project: app.spec.project.clone(),
                        name: app.metadata.name.clone(),
                        labels: app.metadata.labels.clone(),
                    })
                    .collect();
                rolling.push(((*set).clone(), members));
            }
            for mut app in generated {
                if !preserve && !app.cascades() {
                    app.metadata.finalizers.push(RESOURCES_FINALIZER.to_owned());
                }
                out.push(ArgoObject::Generated {
                    set: set.metadata.name.clone(),
                    app: Box::new(app),
                });
            }
        }
        Ok(out)
    }

    /// Keeps a rollout record for each RollingSync set `parent` renders, with its
    /// steps, gates and the apps it generates, and marks those apps as driven by
    /// it (their new bundles are held from now on). A set of this parent that is
    /// gone or no longer rolls loses its rollout, and its apps render again so
    /// what was held reaches their clusters at once.
    async fn record_rollouts(
        &self,
        parent: &AppRecord,
        sets: Vec<(ApplicationSet, Vec<Member>)>,
    ) -> Result<()> {
        let parent_name = format!("{}/{}", parent.project(), parent.name());
        let mut kept = BTreeSet::new();
        for (set, members) in sets {
            let name = set.metadata.name.clone();
            let rollout = self.store.rollout(&name)?.unwrap_or_else(|| RolloutRecord {
                name: name.clone(),
                ..RolloutRecord::default()
            });
            if !rollout.parent.is_empty() && rollout.parent != parent_name {
                warn!(set = %name, owner = %rollout.parent, "another app's ApplicationSet of this name holds the rollout; not rolling this one");
                continue;
            }
            kept.insert(name.clone());
            let (soak, deadline) = set.rollout_gates().unwrap_or_default();
            let steps = set
                .spec
                .strategy
                .as_ref()
                .and_then(|s| s.rolling_steps())
                .unwrap_or_default()
                .to_vec();
            let pause_before = set.pause_before(steps.len()).unwrap_or_default();
            let failure_budget = set.failure_budget().unwrap_or_default();
            for gone in rollout.members.iter().filter(|old| {
                !members
                    .iter()
                    .any(|m| m.project == old.project && m.name == old.name)
            }) {
                self.store
                    .remove_rollout_member(&gone.project, &gone.name)
                    .await?;
            }
            for member in &members {
                if self
                    .store
                    .rollout_member(&member.project, &member.name)?
                    .as_deref()
                    != Some(name.as_str())
                {
                    self.store
                        .put_rollout_member(&member.project, &member.name, &name)
                        .await?;
                }
            }
            let updated = RolloutRecord {
                parent: parent_name.clone(),
                steps,
                pause_before,
                failure_budget,
                soak_ms: u64::try_from(soak.as_millis()).unwrap_or(u64::MAX),
                progress_deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                members,
                ..rollout.clone()
            };
            if updated != rollout {
                self.store.put_rollout(&updated).await?;
            }
        }
        for rollout in self.store.rollouts()? {
            if rollout.parent != parent_name || kept.contains(&rollout.name) {
                continue;
            }
            info!(set = %rollout.name, "the ApplicationSet no longer rolls; its apps take changes at once");
            self.store.remove_rollout(&rollout).await?;
            for member in &rollout.members {
                if let Some(mut app) = self.store.app(&member.project, &member.name)? {
                    app.rendered_commit = None;
                    app.rendered_revisions.clear();
                    self.store.put_app(&app).await?;
                }
            }
        }
        Ok(())
    }

    async fn event(&self, record: &AppRecord, action: &str, detail: &str) -> Result<()> {
        let target = format!("application/{}/{}", record.project(), record.name());
        self.store
            .push_event(&Event::now("hub", action, target, detail))
            .await?;
        Ok(())
    }
}

/// A failure of the bundle issuer as a refresh reports it.
pub fn issue_error<E: Into<Error> + std::error::Error + 'static>(e: bundles::Error<E>) -> Error {
    match e {
        bundles::Error::Draft(e) => e.into(),
        bundles::Error::Store(e) => Error::Store(e),
        bundles::Error::Sign {
            app,
            cluster,
            source,
            ..
        } => Error::Sign {
            app: app.to_string(),
            cluster,
            source,
        },
        bundles::Error::Contended { app, cluster } => Error::Contended {
            app: app.to_string(),
            cluster,
        },
    }
}

impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// What one source of an app was resolved to.
enum Fetched {
    Git { repo: Box<Repo>, commit: CommitId },
    Chart(Pulled),
}

impl Fetched {
    fn revision(&self) -> String {
        match self {
            Self::Git { commit, .. } => commit.to_string(),
            Self::Chart(pulled) => pulled.revision(),
        }
    }
}

enum ArgoObject {
    Application(Box<Application>),
    Project(Box<AppProject>),
    Set(Box<ApplicationSet>),
    /// An Application an ApplicationSet generated.
    Generated {
        set: String,
        app: Box<Application>,
    },
}

/// Splits Argo CD kinds (adopted by the hub) from the objects sent to the cluster.
fn split_argo_objects(objects: &[Object]) -> Result<(Vec<Object>, Vec<ArgoObject>), String> {
    let mut rest = Vec::with_capacity(objects.len());
    let mut argo = Vec::new();
    for object in objects {
        let api_version = format!("{}/{}", object.gvk.group, object.gvk.version);
        if api_version != API_VERSION
            || !matches!(
                object.gvk.kind.as_str(),
                "Application" | "AppProject" | "ApplicationSet"
            )
        {
            rest.push(object.clone());
            continue;
        }
        let manifest = object.manifest_json().map_err(|e| e.to_string())?;
        let origin = format!("rendered {} {}", object.gvk.kind, object.name);
        if object.gvk.kind == "Application" {
            let app = Application::from_value(manifest, &origin).map_err(|e| e.to_string())?;
            argo.push(ArgoObject::Application(Box::new(app)));
        } else if object.gvk.kind == "ApplicationSet" {
            let set = ApplicationSet::from_value(manifest, &origin).map_err(|e| e.to_string())?;
            argo.push(ArgoObject::Set(Box::new(set)));
        } else {
            let project = AppProject::from_value(manifest, &origin).map_err(|e| e.to_string())?;
            argo.push(ArgoObject::Project(Box::new(project)));
        }
    }
    Ok((rest, argo))
}

/// The objects of `record`'s newest bundles that carry `Delete=confirm` (on the
/// object, or for the whole app): a cascading delete must be confirmed before
/// they go.
pub fn awaiting_delete_confirmation(
    store: &Store,
    record: &AppRecord,
) -> store::Result<Vec<(String, flotilla_common::model::ResourceRef)>> {
    let mut found = Vec::new();
    for cluster in store.clusters()? {
        let Some((_, bytes)) =
            store.latest_bundle(&record.project(), &record.name(), &cluster.name)?
        else {
            continue;
        };
        let Some(bundle) = bundle::Envelope::decode(&bytes)
            .ok()
            .and_then(|e| Bundle::decode(&e.payload).ok())
        else {
            continue;
        };
        let app_wide = bundle
            .policy
            .sync_options
            .iter()
            .any(|o| o.trim() == "Delete=confirm");
        for object in bundle.objects.iter().filter(|o| o.hook.is_none()) {
            let own = object
                .sync_options
                .iter()
                .find_map(|o| o.trim().strip_prefix("Delete="));
            if own == Some("confirm") || (own.is_none() && app_wide) {
                found.push((cluster.name.clone(), object.resource()));
            }
        }
    }
    Ok(found)
}

/// Whether syncs of `app` may run on `cluster` at `now`, by its project's sync
/// windows.
pub fn sync_window_verdict(
    app: &Application,
    app_project: &AppProject,
    cluster: &ClusterRecord,
    now: SystemTime,
) -> windows::Verdict {
    let target = windows::Target {
        app: app.name(),
        namespace: app.spec.destination.namespace.as_deref().unwrap_or(""),
        cluster: &cluster.name,
        server: cluster.server.as_deref(),
    };
    windows::verdict(&app_project.spec.sync_windows, &target, now)
}

/// The app's sync policy on `cluster` at `now`: automation is off while its
/// project's sync windows block automated syncs there.
fn windowed_policy(
    app: &Application,
    app_project: &AppProject,
    cluster: &ClusterRecord,
    now: SystemTime,
) -> bundle::SyncPolicy {
    let mut policy = sync_policy(app);
    if !sync_window_verdict(app, app_project, cluster, now).automated {
        policy.automated = None;
    }
    policy
}

fn sync_policy(app: &Application) -> bundle::SyncPolicy {
    let policy = app.spec.sync_policy.clone().unwrap_or_default();
    bundle::SyncPolicy {
        automated: app.automated().map(|a| bundle::Automated {
            prune: a.prune,
            self_heal: a.self_heal,
            allow_empty: a.allow_empty,
        }),
        sync_options: policy.sync_options,
        deletion: None,
        retry: app.retry(),
        managed_namespace_metadata: policy.managed_namespace_metadata.map(|m| {
            bundle::NamespaceMetadata {
                labels: m.labels,
                annotations: m.annotations,
            }
        }),
    }
}

fn ignore_differences(app: &Application) -> Vec<bundle::IgnoreDifference> {
    app.spec
        .ignore_differences
        .iter()
        .map(|i| bundle::IgnoreDifference {
            group: i.group.clone(),
            kind: i.kind.clone(),
            name: i.name.clone(),
            namespace: i.namespace.clone(),
            json_pointers: i.json_pointers.clone(),
            jq_path_expressions: i.jq_path_expressions.clone(),
            managed_fields_managers: i.managed_fields_managers.clone(),
        })
        .collect()
}

/// Same objects and policy: a new generation would change nothing on the cluster.
pub fn same_desired_state(a: &Bundle, b: &Bundle) -> bool {
    fn sorted(objects: &[Object]) -> Vec<&Object> {
        let mut v: Vec<&Object> = objects.iter().collect();
        v.sort_by(|x, y| (&x.gvk, &x.namespace, &x.name).cmp(&(&y.gvk, &y.namespace, &y.name)));
        v
    }
    a.policy == b.policy
        && a.ignore_differences == b.ignore_differences
        && a.project == b.project
        && a.source.repo == b.source.repo
        && a.source.path == b.source.path
        && sorted(&a.objects) == sorted(&b.objects)
}

/// ApplicationSet generators read the hub's clusters and its repositories.
impl GeneratorInput for Refresher {
    fn clusters(&self) -> Vec<ClusterParams> {
        self.store
            .clusters()
            .unwrap_or_default()
            .into_iter()
            .map(|c| ClusterParams {
                // The admin's URL, never the agent's: an empty one matches no
                // destination.server, so a generated app reaches it by name only.
                server: c.server.unwrap_or_default(),
                name: c.name,
                labels: c.labels,
                ..ClusterParams::default()
            })
            .collect()
    }

    fn directories(&self, repo: &str, revision: &str) -> std::result::Result<Vec<String>, String> {
        Ok(directories_of(&self.files(repo, revision)?))
    }

    fn files(&self, repo: &str, revision: &str) -> std::result::Result<RepoFiles, String> {
        let spec = match self.store.repo(repo).map_err(|e| e.to_string())? {
            Some(record) => record.spec(),
            None => RepoSpec::new(repo),
        };
        let fetched = self.cache.fetch(&spec).map_err(|e| e.to_string())?;
        let commit = fetched.resolve(revision).map_err(|e| e.to_string())?;
        let files = fetched
            .files(&commit, "", &source::Limits::default())
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(
            files.into_iter().map(|f| (f.path, f.contents)).collect(),
        ))
    }
}

/// Every folder holding a file, repo-relative.
fn directories_of(files: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut dirs = BTreeSet::new();
    for (file, _) in files {
        let mut path = file.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            dirs.insert(parent.to_owned());
            path = parent;
        }
    }
    dirs.into_iter().collect()
}

/// The hub's clusters and repositories as one parent app's sets see them: a
/// git generator may only read a repository the parent's project permits, which
/// is checked before anything is fetched, for every repository a generator
/// names (a matrix's second generator may name one from the first's values).
/// Each repository revision is read once per set, however many of a matrix's
/// parameter sets ask for it.
struct ProjectInput<'a> {
    refresher: &'a Refresher,
    project: &'a AppProject,
    read: RefCell<BTreeMap<(String, String), RepoFiles>>,
}

impl ProjectInput<'_> {
    fn read(&self, repo: &str, revision: &str) -> std::result::Result<RepoFiles, String> {
        self.project
            .permits_repo(repo)
            .map_err(|violation| format!("the git generator's repository: {violation}"))?;
        let key = (repo.to_owned(), revision.to_owned());
        if let Some(files) = self.read.borrow().get(&key) {
            return Ok(Arc::clone(files));
        }
        let files = self.refresher.files(repo, revision)?;
        self.read.borrow_mut().insert(key, Arc::clone(&files));
        Ok(files)
    }
}

impl GeneratorInput for ProjectInput<'_> {
    fn clusters(&self) -> Vec<ClusterParams> {
        self.refresher.clusters()
    }

    fn directories(&self, repo: &str, revision: &str) -> std::result::Result<Vec<String>, String> {
        Ok(directories_of(&self.read(repo, revision)?))
    }

    fn files(&self, repo: &str, revision: &str) -> std::result::Result<RepoFiles, String> {
        self.read(repo, revision)
    }
}
