//! A refresh: Git to signed, stored bundles for every app that uses one repository.
//!
//! For each app of the repo it resolves the app's revision, skips it when the commit
//! did not change anything the app renders, renders it for every registered cluster
//! its destination names, and stores a new signed bundle generation where the
//! desired state changed. Applications and AppProjects an app renders (app of apps)
//! are adopted by the hub instead of being sent to a cluster; a child that
//! disappears is deleted, and with Argo CD's resources finalizer its objects are
//! pruned too. A failed render is recorded on the app and keeps its last good bundle.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_common::bundle::{self, Bundle, Object};
use flotilla_common::model::{AppRef, Timestamp};
use flotilla_common::signing::BundleSigner;
use tracing::{Instrument as _, info, info_span, warn};

use crate::app::appset::{ClusterParams, GeneratorInput};
use crate::app::project::{self, Violation};
use crate::app::{API_VERSION, AppProject, Application, ApplicationSet, RESOURCES_FINALIZER};
use crate::metrics::Metrics;
use crate::render::{Renderer, Target, affected_by};
use crate::source::{self, CommitId, Repo, RepoCache, RepoSpec};
use crate::store::{self, AppOrigin, AppRecord, ClusterRecord, Event, Store};

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
    /// A Helm repository chart has versions, not Git revisions.
    #[error(
        "application {app} takes its chart from a Helm repository; sync --revision needs a Git source"
    )]
    RevisionUnsupported { app: String },
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
    Deleted {
        pruned: bool,
    },
}

/// Drives refreshes against one store.
pub struct Refresher {
    store: Store,
    cache: Arc<RepoCache>,
    renderer: Renderer,
    signer: BundleSigner,
    bundle_ttl: Duration,
    metrics: Arc<Metrics>,
}

impl Refresher {
    pub async fn new(store: Store, cache: RepoCache, renderer: Renderer) -> Result<Self> {
        let signer = store.bundle_signer().await?;
        Ok(Self {
            store,
            cache: Arc::new(cache),
            renderer,
            signer,
            bundle_ttl: DEFAULT_BUNDLE_TTL,
            metrics: Arc::default(),
        })
    }

    /// Records render durations and errors in `metrics` instead of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Where render durations and errors are counted.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The key agents must trust to accept this hub's bundles.
    pub fn signer(&self) -> &BundleSigner {
        &self.signer
    }

    /// Refreshes every app whose source is `url`.
    pub async fn refresh_repo(&self, url: &str, now: SystemTime) -> Result<Vec<(String, Outcome)>> {
        let span = info_span!("refresh", repo = %RepoSpec::new(url).redacted_url());
        async {
            let spec = match self.store.repo(url)? {
                Some(record) => record.spec(),
                None => RepoSpec::new(url),
            };
            let cache = self.cache.clone();
            let repo = tokio::task::spawn_blocking(move || cache.fetch(&spec))
                .await
                .map_err(|source| Error::Join {
                    url: RepoSpec::new(url).redacted_url(),
                    source,
                })??;
            let mut outcomes = Vec::new();
            // Children adopted from a parent are refreshed in the same pass, so a
            // whole app-of-apps tree settles in one refresh.
            let mut done = BTreeSet::new();
            loop {
                let pending: Vec<AppRecord> = self
                    .store
                    .apps()?
                    .into_iter()
                    .filter(|a| {
                        source::webhook::same_repository(&a.application.source().repo_url, url)
                    })
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
                    if self.store.app(&record.project(), &record.name())?.is_none() {
                        continue;
                    }
                    done.insert((record.project(), record.name()));
                    let name = format!("{}/{}", record.project(), record.name());
                    let span = info_span!("app", app = %name);
                    let outcome = self
                        .refresh_app(&repo, record, now)
                        .instrument(span)
                        .await?;
                    outcomes.extend(
                        outcome
                            .into_iter()
                            .map(|(n, o)| (if n.is_empty() { name.clone() } else { n }, o)),
                    );
                }
            }
            for (project, name) in &done {
                self.redate_expiring(project, name, now).await?;
            }
            Ok(outcomes)
        }
        .instrument(span)
        .await
    }

    /// Re-issues, as the next generation with a fresh validity, each of the app's
    /// latest bundles that is past half its life. Without it an app whose desired
    /// state stays the same for longer than a bundle lives would leave an agent that
    /// was offline meanwhile with only an expired bundle, which it must refuse.
    /// The objects, policy and source stay as they were, so an agent applying the
    /// new generation writes nothing.
    async fn redate_expiring(&self, project: &str, name: &str, now: SystemTime) -> Result<()> {
        let due = Timestamp::from_system_time(now).saturating_add(self.bundle_ttl / 2);
        for cluster in self.store.clusters()? {
            let Some((generation, bytes)) =
                self.store.latest_bundle(project, name, &cluster.name)?
            else {
                continue;
            };
            let Some(previous) = bundle::Envelope::decode(&bytes)
                .ok()
                .and_then(|e| Bundle::decode(&e.payload).ok())
            else {
                continue;
            };
            if previous.not_after >= due {
                continue;
            }
            let redated = Bundle {
                generation: generation + 1,
                created_at: Timestamp::from_system_time(now),
                not_after: Timestamp::from_system_time(now).saturating_add(self.bundle_ttl),
                ..previous
            };
            let bytes = self.seal(&redated)?;
            info!(cluster = %cluster.name, app = %format!("{project}/{name}"), generation = redated.generation, "re-issuing a bundle past half its life");
            self.store
                .put_bundle(project, name, &cluster.name, redated.generation, &bytes)
                .await?;
        }
        Ok(())
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
            let Some(mut record) = self.store.app(project, name)? else {
                return Err(Error::NoSuchApp {
                    app: format!("{project}/{name}"),
                });
            };
            if record.application.source().chart.is_some() {
                return Err(Error::RevisionUnsupported {
                    app: format!("{project}/{name}"),
                });
            }
            let url = record.application.source().repo_url.clone();
            let spec = match self.store.repo(&url)? {
                Some(repo) => repo.spec(),
                None => RepoSpec::new(&url),
            };
            let cache = self.cache.clone();
            let repo = tokio::task::spawn_blocking(move || cache.fetch(&spec))
                .await
                .map_err(|source| Error::Join {
                    url: RepoSpec::new(&url).redacted_url(),
                    source,
                })??;
            let original = record.application.clone();
            if let Some(source) = record.application.spec.source.as_mut() {
                source.target_revision = revision.to_owned();
            }
            // Render even when the commit is the one rendered last.
            record.rendered_commit = None;
            let outcomes = self.refresh_app(&repo, record, now).await?;
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
        now: SystemTime,
    ) -> Result<Vec<(String, Outcome)>> {
        let app = record.application.clone();

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

        let clusters: Vec<ClusterRecord> = self
            .store
            .clusters()?
            .into_iter()
            .filter(|c| c.is_destination(&app.spec.destination))
            .collect();
        if clusters.is_empty() {
            let dest = &app.spec.destination;
            let named = dest
                .name
                .as_deref()
                .or(dest.server.as_deref())
                .unwrap_or("");
            return self
                .fail(
                    record,
                    format!("destination cluster {named:?} is not registered"),
                )
                .await;
        }

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

        let project = match self.store.project(&app.spec.project)? {
            Some(project) => project,
            None if app.spec.project == "default" => project::built_in_default(),
            None => {
                let missing = Violation::NoSuchProject {
                    project: app.spec.project.clone(),
                };
                return self.fail_project(record, missing.to_string()).await;
            }
        };

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
            if let Err(violation) = project.permits(&app, &objects) {
                return self
                    .fail_project(record, format!("cluster {}: {violation}", cluster.name))
                    .await;
            }
            // Children are the same for every cluster; keep the first cluster's.
            children.get_or_insert(found);
            checked.push((cluster, objects));
        }
        // ApplicationSets are expanded once, and before anything is stored, so a
        // failing generator leaves every cluster's bundle as it was.
        let children = match children.map(|found| self.expand_sets(found)).transpose() {
            Ok(children) => children,
            Err(e) => return self.fail(record, e).await,
        };
        for (cluster, objects) in checked {
            if let Some(generation) = self
                .store_bundle(&record, &app, &project, cluster, &commit, objects, now)
                .await?
            {
                generations.push((cluster.name.clone(), generation));
            }
        }
        if let Some(children) = children {
            outcomes.extend(self.adopt(&record, children, now).await?);
        }

        record.rendered_commit = Some(commit.to_string());
        record.rendered_kind = kind;
        record.render_error = None;
        record.project_violation = false;
        self.store.put_app(&record).await?;
        let outcome = if generations.is_empty() {
            Outcome::Unchanged {
                commit: commit.to_string(),
            }
        } else {
            info!(commit = %commit, ?generations, "rendered new bundles");
            Outcome::Rendered {
                commit: commit.to_string(),
                generations,
            }
        };
        outcomes.insert(0, (String::new(), outcome));
        Ok(outcomes)
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
        warn!(%error, "render failed; the last good bundle stays in force");
        record.render_error = Some(error.clone());
        self.store.put_app(&record).await?;
        self.event(&record, "render-failed", &error).await?;
        Ok(vec![(String::new(), Outcome::Failed { error })])
    }

    /// Stores the next generation for (app, cluster) when the desired state differs
    /// from the latest stored one. Returns the new generation.
    #[allow(clippy::too_many_arguments)]
    async fn store_bundle(
        &self,
        record: &AppRecord,
        app: &Application,
        app_project: &AppProject,
        cluster: &ClusterRecord,
        commit: &CommitId,
        objects: Vec<Object>,
        now: SystemTime,
    ) -> Result<Option<u64>> {
        let (project, name) = (record.project(), record.name());
        let latest = self.store.latest_bundle(&project, &name, &cluster.name)?;
        let mut bundle = Bundle {
            app: AppRef::new(project.clone(), name.clone()),
            cluster: cluster.name.clone(),
            source: bundle::Source {
                repo: app.source().repo_url.clone(),
                revision: commit.to_string(),
                path: app.source().path.clone().unwrap_or_default(),
            },
            generation: latest.as_ref().map_or(1, |(g, _)| g + 1),
            created_at: Timestamp::from_system_time(now),
            not_after: Timestamp::from_system_time(now).saturating_add(self.bundle_ttl),
            policy: sync_policy(app),
            ignore_differences: ignore_differences(app),
            project: app_project.rules(&app.spec.destination),
            objects,
        };
        let previous = latest
            .as_ref()
            .and_then(|(_, bytes)| bundle::Envelope::decode(bytes).ok())
            .and_then(|e| Bundle::decode(&e.payload).ok());
        if previous.is_some_and(|p| same_desired_state(&p, &bundle)) {
            return Ok(None);
        }
        bundle
            .objects
            .sort_by(|a, b| (&a.gvk, &a.namespace, &a.name).cmp(&(&b.gvk, &b.namespace, &b.name)));
        let bytes = self.seal(&bundle)?;
        info!(cluster = %cluster.name, generation = bundle.generation, objects = bundle.objects.len(), "storing a new bundle");
        self.store
            .put_bundle(&project, &name, &cluster.name, bundle.generation, &bytes)
            .await?;
        Ok(Some(bundle.generation))
    }

    /// Adopts the Applications and AppProjects a parent rendered, and deletes the
    /// children it no longer renders.
    async fn adopt(
        &self,
        parent: &AppRecord,
        children: Vec<ArgoObject>,
        now: SystemTime,
    ) -> Result<Vec<(String, Outcome)>> {
        let origin = AppOrigin::Parent {
            project: parent.project(),
            name: parent.name(),
        };
        let mut outcomes = Vec::new();
        let mut kept = BTreeSet::new();
        for child in children {
            match child {
                ArgoObject::Project(project) => self.store.put_project(&project).await?,
                // Expanded before adoption.
                ArgoObject::Set(_) => {}
                ArgoObject::Application(app) => {
                    let key = (app.spec.project.clone(), app.metadata.name.clone());
                    kept.insert(key.clone());
                    let existing = self.store.app(&key.0, &key.1)?;
                    let record = match existing {
                        Some(mut r) if r.origin == origin => {
                            if r.application == *app {
                                continue;
                            }
                            r.application = *app;
                            r.rendered_commit = None;
                            r
                        }
                        Some(_) => {
                            warn!(child = %format!("{}/{}", key.0, key.1), "an app of that name already exists and is not this parent's; not adopted");
                            continue;
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
            }
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
                self.prune_everywhere(&gone, now).await?;
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
        Ok(outcomes)
    }

    /// Stores an empty, prune-everything bundle for every cluster the app was on, so
    /// its agents delete what it deployed (Argo CD's cascade delete).
    pub async fn prune_everywhere(&self, record: &AppRecord, now: SystemTime) -> Result<()> {
        for cluster in self.store.clusters()? {
            let Some((generation, bytes)) =
                self.store
                    .latest_bundle(&record.project(), &record.name(), &cluster.name)?
            else {
                continue;
            };
            let Some(previous) = bundle::Envelope::decode(&bytes)
                .ok()
                .and_then(|e| Bundle::decode(&e.payload).ok())
            else {
                continue;
            };
            let deletion = Bundle {
                generation: generation + 1,
                created_at: Timestamp::from_system_time(now),
                not_after: Timestamp::from_system_time(now).saturating_add(self.bundle_ttl),
                policy: bundle::SyncPolicy {
                    automated: Some(bundle::Automated {
                        prune: true,
                        self_heal: false,
                        allow_empty: true,
                    }),
                    sync_options: previous.policy.sync_options.clone(),
                },
                objects: Vec::new(),
                ..previous
            };
            let bytes = self.seal(&deletion)?;
            self.store
                .put_bundle(
                    &record.project(),
                    &record.name(),
                    &cluster.name,
                    deletion.generation,
                    &bytes,
                )
                .await?;
        }
        Ok(())
    }

    /// Replaces each ApplicationSet by the Applications it generates now. Unless the
    /// set preserves resources on deletion, its apps carry the resources finalizer,
    /// so an app the set stops generating takes its objects with it.
    fn expand_sets(&self, found: Vec<ArgoObject>) -> Result<Vec<ArgoObject>, String> {
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
            for mut app in set.generate(self).map_err(|e| e.to_string())? {
                if !preserve && !app.cascades() {
                    app.metadata.finalizers.push(RESOURCES_FINALIZER.to_owned());
                }
                out.push(ArgoObject::Application(Box::new(app)));
            }
        }
        Ok(out)
    }

    /// Signs a bundle and encodes the envelope, as the store keeps it.
    fn seal(&self, bundle: &Bundle) -> Result<Vec<u8>> {
        let sign_error = |source| Error::Sign {
            app: bundle.app.to_string(),
            cluster: bundle.cluster.clone(),
            source,
        };
        let envelope = self.signer.sign(bundle).map_err(sign_error)?;
        envelope
            .encode()
            .map_err(|e| sign_error(flotilla_common::signing::Error::Bundle(e)))
    }

    async fn event(&self, record: &AppRecord, action: &str, detail: &str) -> Result<()> {
        let target = format!("application/{}/{}", record.project(), record.name());
        self.store
            .push_event(&Event::now("hub", action, target, detail))
            .await?;
        Ok(())
    }
}

enum ArgoObject {
    Application(Box<Application>),
    Project(Box<AppProject>),
    Set(Box<ApplicationSet>),
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

fn sync_policy(app: &Application) -> bundle::SyncPolicy {
    let policy = app.spec.sync_policy.clone().unwrap_or_default();
    bundle::SyncPolicy {
        automated: app.automated().map(|a| bundle::Automated {
            prune: a.prune,
            self_heal: a.self_heal,
            allow_empty: a.allow_empty,
        }),
        sync_options: policy.sync_options,
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
fn same_desired_state(a: &Bundle, b: &Bundle) -> bool {
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
            })
            .collect()
    }

    fn directories(&self, repo: &str, revision: &str) -> std::result::Result<Vec<String>, String> {
        let spec = match self.store.repo(repo).map_err(|e| e.to_string())? {
            Some(record) => record.spec(),
            None => RepoSpec::new(repo),
        };
        let fetched = self.cache.fetch(&spec).map_err(|e| e.to_string())?;
        let commit = fetched.resolve(revision).map_err(|e| e.to_string())?;
        let files = fetched
            .files(&commit, "", &source::Limits::default())
            .map_err(|e| e.to_string())?;
        let mut dirs = BTreeSet::new();
        for file in files {
            let mut path = file.path.as_str();
            while let Some((parent, _)) = path.rsplit_once('/') {
                dirs.insert(parent.to_owned());
                path = parent;
            }
        }
        Ok(dirs.into_iter().collect())
    }
}
