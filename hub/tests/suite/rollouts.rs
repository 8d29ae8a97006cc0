//! Rollouts on the hub side: a real Git repository, real renders and a real
//! store, with the agents' status reports written as the link stores them. A
//! RollingSync set's new bundles are held by the issuer until their step
//! starts, and a step that turns Degraded gives back what the rollout moved.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::SystemTime;

use flotilla_common::bundle::{Bundle, Envelope};
use flotilla_common::message::Status;
use flotilla_common::model::{AppRef, Health, SyncStatus};
use flotilla_hub::app::Application;
use flotilla_hub::refresh::Refresher;
use flotilla_hub::render::{Renderer, Tools};
use flotilla_hub::rollout::Rollouts;
use flotilla_hub::source::RepoCache;
use flotilla_hub::store::{AppOrigin, AppRecord, ClusterRecord, RolloutPhase, StatusRecord, Store};

use crate::support::source::WorkRepo;

fn set(url: &str) -> String {
    set_annotated(url, "{}")
}

/// The set, with `annotations` (a YAML flow mapping) on it.
fn set_annotated(url: &str, annotations: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata: {{name: shop, annotations: {annotations}}}
spec:
  generators: [{{list: {{elements: [{{app: shop-a, wave: one}}, {{app: shop-b, wave: two}}]}}}}]
  strategy:
    type: RollingSync
    rollingSync:
      steps:
        - matchExpressions: [{{key: wave, operator: In, values: [one]}}]
        - matchExpressions: [{{key: wave, operator: In, values: [two]}}]
  template:
    metadata: {{name: '{{{{app}}}}', labels: {{wave: '{{{{wave}}}}'}}}}
    spec:
      source: {{repoURL: '{url}', targetRevision: main, path: shop}}
      destination: {{name: east, namespace: '{{{{app}}}}'}}
      syncPolicy: {{automated: {{prune: true}}}}
"
    )
}

fn configmap(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: shop}}\ndata: {{value: \"{value}\"}}\n"
    )
}

struct Hub {
    _dir: tempfile::TempDir,
    store: Store,
    refresher: Refresher,
    rollouts: Rollouts,
    url: String,
}

impl Hub {
    async fn new(repo: &WorkRepo) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        store
            .put_cluster(&ClusterRecord {
                name: "east".to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        let cache = RepoCache::new(dir.path().join("repos")).unwrap();
        let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env()))
            .await
            .unwrap();
        let rollouts = Rollouts::new(store.clone(), Arc::clone(refresher.issuer()))
            .with_metrics(refresher.metrics());
        let url = repo.path().display().to_string();
        let root = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: root}}\nspec:\n  project: default\n  source: {{repoURL: '{url}', targetRevision: main, path: sets}}\n  destination: {{name: east, namespace: argocd}}\n"
        );
        store
            .put_app(&AppRecord::new(
                Application::from_yaml(&root, "test").unwrap(),
                AppOrigin::Store,
            ))
            .await
            .unwrap();
        Hub {
            _dir: dir,
            store,
            refresher,
            rollouts,
            url,
        }
    }

    /// What `/metrics` shows now.
    fn metrics(&self) -> String {
        flotilla_hub::metrics::encode(
            &self.refresher.metrics(),
            &flotilla_hub::metrics::snapshot(&self.store, None, None),
        )
    }

    async fn refresh(&self) {
        self.refresher
            .refresh_repo(&self.url, SystemTime::now())
            .await
            .unwrap();
    }

    async fn tick(&self) {
        self.rollouts.tick(SystemTime::now()).await.unwrap();
    }

    /// The latest generation of `app` on east and its ConfigMap's value.
    fn latest(&self, app: &str) -> Option<(u64, String)> {
        let (generation, bytes) = self.store.latest_bundle("default", app, "east").unwrap()?;
        let bundle = Bundle::decode(&Envelope::decode(&bytes).unwrap().payload).unwrap();
        let manifest = bundle.objects[0].manifest_json().unwrap();
        Some((
            generation,
            manifest["data"]["value"].as_str().unwrap().to_owned(),
        ))
    }

    /// Stores a status report as the link stores an agent's.
    async fn report(&self, app: &str, generation: u64, health: Health) {
        let status = Status {
            sequence: 1,
            app: AppRef::new("default", app),
            generation,
            sync: SyncStatus::Synced,
            health,
            resources: Vec::new(),
            drift: Vec::new(),
            events: Vec::new(),
            operation: None,
        };
        self.store
            .put_status("east", &StatusRecord { at_ms: 0, status })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn held_bundles_reach_a_cluster_only_when_their_step_starts_and_a_degraded_step_rolls_back() {
    let repo = WorkRepo::new();
    let url = repo.path().display().to_string();
    repo.write("sets/shop.yaml", &set(&url))
        .write("shop/cm.yaml", &configmap("1"));
    let v1 = repo.commit("v1");
    let hub = Hub::new(&repo).await;

    hub.refresh().await;
    assert_eq!(
        hub.latest("shop-a"),
        None,
        "held, not issued, before a tick"
    );
    assert_eq!(hub.latest("shop-b"), None);
    hub.tick().await;
    assert_eq!(
        hub.latest("shop-a"),
        Some((1, "1".to_owned())),
        "step one released"
    );
    assert_eq!(hub.latest("shop-b"), None, "step two has not started");
    hub.tick().await;
    assert_eq!(hub.latest("shop-b"), None, "step one is not healthy yet");
    hub.report("shop-a", 1, Health::Healthy).await;
    hub.tick().await;
    assert_eq!(
        hub.latest("shop-b"),
        Some((1, "1".to_owned())),
        "step two started"
    );
    hub.report("shop-b", 1, Health::Healthy).await;
    hub.tick().await;
    let done = hub.store.rollout("shop").unwrap().unwrap();
    assert_eq!(done.phase, RolloutPhase::Completed);
    assert_eq!(done.to_revision.as_deref(), Some(v1.as_str()));
    // /metrics: both steps with apps timed (the empty implicit last one is not),
    // and the rollout counted by its phase.
    let metrics = hub.metrics();
    assert!(
        metrics.contains("flotilla_rollout_step_duration_seconds_count 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_rollouts{phase=\"Completed\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_rollouts{phase=\"RolledBack\"} 0\n"),
        "{metrics}"
    );

    // A bad revision: step one turns Degraded, goes back, step two never starts.
    repo.write("shop/cm.yaml", &configmap("2"));
    let v2 = repo.commit("v2");
    hub.refresh().await;
    assert_eq!(hub.latest("shop-a"), Some((1, "1".to_owned())), "held");
    hub.tick().await;
    assert_eq!(hub.latest("shop-a"), Some((2, "2".to_owned())));
    hub.report("shop-a", 2, Health::Degraded).await;
    hub.tick().await;
    let rolled = hub.store.rollout("shop").unwrap().unwrap();
    assert_eq!(rolled.phase, RolloutPhase::RolledBack, "{rolled:#?}");
    assert_eq!(rolled.failed_app.as_deref(), Some("default/shop-a"));
    let metrics = hub.metrics();
    assert!(
        metrics.contains("flotilla_rollouts{phase=\"RolledBack\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_rollouts{phase=\"Completed\"} 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_rollout_step_duration_seconds_count 2\n"),
        "a failed step is not a passed one: {metrics}"
    );
    assert!(
        rolled.reason.as_deref().unwrap().contains("Degraded"),
        "{rolled:#?}"
    );
    assert_eq!(
        hub.latest("shop-a"),
        Some((3, "1".to_owned())),
        "the generation from before, signed again as a new one"
    );
    assert_eq!(
        hub.latest("shop-b"),
        Some((1, "1".to_owned())),
        "never saw v2"
    );

    // Not retried by the next refresh or tick; retried on request.
    hub.refresh().await;
    hub.tick().await;
    assert_eq!(hub.latest("shop-a"), Some((3, "1".to_owned())));
    hub.rollouts.retry("shop").await.unwrap();
    hub.tick().await;
    let retried = hub.store.rollout("shop").unwrap().unwrap();
    assert_eq!(retried.phase, RolloutPhase::Progressing);
    assert_eq!(retried.to_revision.as_deref(), Some(v2.as_str()));
    assert_eq!(hub.latest("shop-a"), Some((4, "2".to_owned())));
    assert_eq!(hub.latest("shop-b"), Some((1, "1".to_owned())));

    // A newer commit supersedes it from step one; abort gives shop-a back v1.
    repo.write("shop/cm.yaml", &configmap("3"));
    let v3 = repo.commit("v3");
    hub.refresh().await;
    hub.tick().await;
    let superseding = hub.store.rollout("shop").unwrap().unwrap();
    assert_eq!(superseding.to_revision.as_deref(), Some(v3.as_str()));
    assert_eq!(superseding.step, 0);
    assert_eq!(hub.latest("shop-a"), Some((5, "3".to_owned())));
    let aborted = hub
        .rollouts
        .abort("shop", "admin", SystemTime::now())
        .await
        .unwrap();
    assert_eq!(aborted.phase, RolloutPhase::Aborted);
    assert_eq!(
        hub.latest("shop-a"),
        Some((6, "1".to_owned())),
        "back to what ran before the superseded rollout"
    );
    assert_eq!(hub.latest("shop-b"), Some((1, "1".to_owned())));
}

#[tokio::test]
async fn a_set_that_asks_to_pause_before_a_step_waits_there_for_resume() {
    let repo = WorkRepo::new();
    let url = repo.path().display().to_string();
    repo.write(
        "sets/shop.yaml",
        &set_annotated(&url, "{flotilla.io/rollout-pause-before: '2'}"),
    )
    .write("shop/cm.yaml", &configmap("1"));
    repo.commit("v1");
    let hub = Hub::new(&repo).await;

    hub.refresh().await;
    hub.tick().await;
    assert_eq!(hub.latest("shop-a"), Some((1, "1".to_owned())));
    hub.report("shop-a", 1, Health::Healthy).await;
    hub.tick().await;
    hub.tick().await;
    let waiting = hub.store.rollout("shop").unwrap().unwrap();
    assert_eq!(waiting.step, 1, "{waiting:#?}");
    assert!(waiting.paused, "paused before step 2: {waiting:#?}");
    assert_eq!(waiting.phase, RolloutPhase::Progressing);
    assert_eq!(hub.latest("shop-b"), None, "held while paused");

    hub.rollouts.resume("shop").await.unwrap();
    hub.tick().await;
    assert_eq!(hub.latest("shop-b"), Some((1, "1".to_owned())));
    hub.report("shop-b", 1, Health::Healthy).await;
    hub.tick().await;
    let done = hub.store.rollout("shop").unwrap().unwrap();
    assert_eq!(done.phase, RolloutPhase::Completed, "{done:#?}");
    assert!(!done.paused);
}

#[tokio::test]
async fn an_app_that_fails_within_the_budget_goes_back_alone_and_the_rollout_goes_on() {
    let repo = WorkRepo::new();
    let url = repo.path().display().to_string();
    repo.write(
        "sets/shop.yaml",
        &set_annotated(&url, "{flotilla.io/rollout-failure-budget: '1'}"),
    )
    .write("shop/cm.yaml", &configmap("1"));
    repo.commit("v1");
    let hub = Hub::new(&repo).await;
    hub.refresh().await;
    hub.tick().await;
    hub.report("shop-a", 1, Health::Healthy).await;
    hub.tick().await;
    hub.report("shop-b", 1, Health::Healthy).await;
    hub.tick().await;
    assert_eq!(
        hub.store.rollout("shop").unwrap().unwrap().phase,
        RolloutPhase::Completed
    );

    // v2: shop-a turns Degraded. One failure is within the budget: shop-a alone
    // goes back, and step two still starts.
    repo.write("shop/cm.yaml", &configmap("2"));
    repo.commit("v2");
    hub.refresh().await;
    hub.tick().await;
    assert_eq!(hub.latest("shop-a"), Some((2, "2".to_owned())));
    hub.report("shop-a", 2, Health::Degraded).await;
    hub.tick().await;
    assert_eq!(
        hub.latest("shop-a"),
        Some((3, "1".to_owned())),
        "shop-a back on v1, as a new generation"
    );
    let going = hub.store.rollout("shop").unwrap().unwrap();
    assert_eq!(going.phase, RolloutPhase::Progressing, "{going:#?}");
    hub.tick().await;
    assert_eq!(
        hub.latest("shop-b"),
        Some((2, "2".to_owned())),
        "step two started"
    );
    // A second failure spends more than the budget: everything the rollout moved
    // goes back.
    hub.report("shop-b", 2, Health::Degraded).await;
    hub.tick().await;
    let rolled = hub.store.rollout("shop").unwrap().unwrap();
    assert_eq!(rolled.phase, RolloutPhase::RolledBack, "{rolled:#?}");
    assert_eq!(rolled.failed_app.as_deref(), Some("default/shop-b"));
    assert_eq!(hub.latest("shop-b"), Some((3, "1".to_owned())));
    assert_eq!(
        hub.latest("shop-a"),
        Some((3, "1".to_owned())),
        "not rolled back twice"
    );
}

/// A cluster that registers after an app of apps rendered reaches its sets'
/// clusters generators without a new commit: the hub marks parents to render
/// again on a registration (the quickstart once waited for ever on this).
#[tokio::test]
async fn a_cluster_registered_after_the_parent_rendered_gets_its_generated_apps() {
    let repo = WorkRepo::new();
    let url = repo.path().display().to_string();
    repo.write(
        "sets/web.yaml",
        &format!(
            "apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata: {{name: web}}
spec:
  generators: [{{clusters: {{}}}}]
  template:
    metadata: {{name: 'web-{{{{name}}}}'}}
    spec:
      source: {{repoURL: '{url}', targetRevision: main, path: shop}}
      destination: {{name: '{{{{name}}}}', namespace: web}}
"
        ),
    )
    .write("shop/cm.yaml", &configmap("1"));
    repo.commit("v1");
    let hub = Hub::new(&repo).await;
    hub.refresh().await;
    assert!(hub.store.app("default", "web-east").unwrap().is_some());

    hub.store
        .put_cluster(&ClusterRecord {
            name: "west".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    hub.refresh().await;
    assert!(
        hub.store.app("default", "web-west").unwrap().is_none(),
        "the same commit alone does not render the parent again"
    );
    let marked = hub.refresher.render_parents_again().await.unwrap();
    assert_eq!(marked, 1, "the root is the one parent");
    hub.refresh().await;
    assert!(
        hub.store.app("default", "web-west").unwrap().is_some(),
        "the new cluster's app was generated"
    );
}
