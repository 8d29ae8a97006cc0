//! A refresh, end to end on the hub side: a real Git repository, a real sled store,
//! real renders, and bundles that verify with the hub's key.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

#[path = "source/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use std::time::{Duration, SystemTime};

use flotilla_common::bundle::{Bundle, Envelope};
use flotilla_common::model::Timestamp;
use flotilla_common::signing::{Expectation, KeySet, verify};
use flotilla_hub::app::Application;
use flotilla_hub::refresh::{Outcome, Refresher};
use flotilla_hub::render::{Renderer, Tools};
use flotilla_hub::source::RepoCache;
use flotilla_hub::store::{AppOrigin, AppRecord, ClusterRecord, Store};

use fixture::WorkRepo;

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{value: \"{value}\"}}\n"
    )
}

fn application(name: &str, repo: &WorkRepo, path: &str, extra_meta: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\n  namespace: argocd\n{extra_meta}spec:\n  project: default\n  source: {{repoURL: '{}', targetRevision: main, path: {path}}}\n  destination: {{name: east, namespace: {name}}}\n  syncPolicy: {{automated: {{prune: true, selfHeal: true}}}}\n",
        repo.path().display()
    )
}

struct Hub {
    _dir: tempfile::TempDir,
    store: Store,
    refresher: Refresher,
    url: String,
}

async fn hub(repo: &WorkRepo) -> Hub {
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
    Hub {
        _dir: dir,
        store,
        refresher,
        url: repo.path().display().to_string(),
    }
}

impl Hub {
    async fn declare(&self, yaml: &str) {
        let app = Application::from_yaml(yaml, "test").unwrap();
        self.store
            .put_app(&AppRecord::new(app, AppOrigin::Store))
            .await
            .unwrap();
    }

    async fn refresh(&self) -> Vec<(String, Outcome)> {
        self.refresher
            .refresh_repo(&self.url, SystemTime::now())
            .await
            .unwrap()
    }

    /// The latest bundle of an app on east, verified with the hub's key.
    fn bundle(&self, app: &str) -> Option<Bundle> {
        let (generation, bytes) = self.store.latest_bundle("default", app, "east").unwrap()?;
        let envelope = Envelope::decode(&bytes).unwrap();
        let keys = KeySet::new(1, &[self.refresher.signer().public_key()]).unwrap();
        let expect = Expectation {
            cluster: "east",
            now: Timestamp::from_system_time(SystemTime::now()),
        };
        let bundle = verify(&envelope, &keys, expect, |_| None).unwrap();
        assert_eq!(bundle.generation, generation);
        Some(bundle)
    }
}

fn outcome<'a>(outcomes: &'a [(String, Outcome)], app: &str) -> &'a Outcome {
    &outcomes
        .iter()
        .find(|(name, _)| name == &format!("default/{app}"))
        .unwrap_or_else(|| panic!("no outcome for {app}: {outcomes:?}"))
        .1
}

fn value(bundle: &Bundle) -> String {
    let manifest = bundle.objects[0].manifest_json().unwrap();
    manifest["data"]["value"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_new_commit_renders_only_the_apps_it_touches() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"))
        .write("apps/b/cm.yaml", &configmap("b", "1"))
        .write("README.md", "fleet\n");
    repo.commit("first");
    let hub = hub(&repo).await;
    hub.declare(&application("a", &repo, "apps/a", "")).await;
    hub.declare(&application("b", &repo, "apps/b", "")).await;

    let first = hub.refresh().await;
    assert!(
        matches!(outcome(&first, "a"), Outcome::Rendered { generations, .. } if generations == &[("east".to_owned(), 1)])
    );
    let a1 = hub.bundle("a").unwrap();
    assert_eq!(a1.objects[0].namespace.as_deref(), Some("a"));
    assert!(a1.policy.automated.as_ref().unwrap().prune);

    repo.write("apps/a/cm.yaml", &configmap("a", "2"));
    let second_commit = repo.commit("change a");
    let second = hub.refresh().await;
    assert!(
        matches!(outcome(&second, "a"), Outcome::Rendered { generations, .. } if generations == &[("east".to_owned(), 2)])
    );
    assert!(matches!(outcome(&second, "b"), Outcome::NotAffected { .. }));
    assert_eq!(value(&hub.bundle("a").unwrap()), "2");
    assert_eq!(hub.bundle("a").unwrap().source.revision, second_commit);
    assert_eq!(hub.bundle("b").unwrap().generation, 1);

    repo.write("README.md", "fleet, edited\n");
    repo.commit("docs only");
    let third = hub.refresh().await;
    assert!(matches!(outcome(&third, "a"), Outcome::NotAffected { .. }));
    assert_eq!(hub.bundle("a").unwrap().generation, 2);
}

#[tokio::test]
async fn a_failed_render_keeps_the_last_good_bundle_and_records_the_error() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"));
    repo.commit("good");
    let hub = hub(&repo).await;
    hub.declare(&application("a", &repo, "apps/a", "")).await;
    hub.refresh().await;

    repo.write(
        "apps/a/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [broken\n",
    );
    repo.commit("bad");
    let failed = hub.refresh().await;
    let Outcome::Failed { error } = outcome(&failed, "a") else {
        panic!("{failed:?}")
    };
    assert!(error.contains("apps/a/cm.yaml"), "{error}");
    let bundle = hub.bundle("a").unwrap();
    assert_eq!(
        bundle.generation, 1,
        "no new generation from a failed render"
    );
    assert_eq!(bundle.objects.len(), 1, "never an empty bundle");
    let record = hub.store.app("default", "a").unwrap().unwrap();
    assert!(record.render_error.unwrap().contains("apps/a/cm.yaml"));

    repo.write("apps/a/cm.yaml", &configmap("a", "3"));
    repo.commit("fixed");
    hub.refresh().await;
    assert_eq!(value(&hub.bundle("a").unwrap()), "3");
    assert_eq!(
        hub.store.app("default", "a").unwrap().unwrap().render_error,
        None
    );
}

#[tokio::test]
async fn an_unregistered_destination_is_an_error_on_the_app() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"));
    repo.commit("first");
    let hub = hub(&repo).await;
    hub.declare(&application("a", &repo, "apps/a", "").replace("name: east", "name: mars"))
        .await;
    let outcomes = hub.refresh().await;
    let Outcome::Failed { error } = outcome(&outcomes, "a") else {
        panic!("{outcomes:?}")
    };
    assert!(error.contains("\"mars\" is not registered"), "{error}");
}

#[tokio::test]
async fn an_app_of_apps_adopts_its_children_and_cascades_deletes() {
    let repo = WorkRepo::new();
    let finalizer = "  finalizers: [resources-finalizer.argocd.argoproj.io]\n";
    repo.write("apps/a/cm.yaml", &configmap("a", "1"))
        .write("apps/b/cm.yaml", &configmap("b", "1"))
        .write("argo/a.yaml", &application("a", &repo, "apps/a", finalizer))
        .write("argo/b.yaml", &application("b", &repo, "apps/b", ""))
        .write("argo/README.md", "the fleet's apps\n");
    repo.commit("root");
    let hub = hub(&repo).await;
    hub.declare(&application("root", &repo, "argo", "")).await;

    let outcomes = hub.refresh().await;
    assert!(
        matches!(outcome(&outcomes, "root"), Outcome::Rendered { .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        hub.bundle("root").unwrap().objects.len(),
        0,
        "Applications are the hub's, never sent to a cluster"
    );
    for child in ["a", "b"] {
        let record = hub.store.app("default", child).unwrap().unwrap();
        assert_eq!(
            record.origin,
            AppOrigin::Parent {
                project: "default".to_owned(),
                name: "root".to_owned()
            }
        );
        assert_eq!(
            hub.bundle(child).unwrap().generation,
            1,
            "{child} rendered in the same refresh"
        );
    }

    repo.remove("argo/a.yaml").remove("argo/b.yaml");
    repo.commit("drop both children");
    let outcomes = hub.refresh().await;
    assert_eq!(outcome(&outcomes, "a"), &Outcome::Deleted { pruned: true });
    assert_eq!(outcome(&outcomes, "b"), &Outcome::Deleted { pruned: false });
    assert!(hub.store.app("default", "a").unwrap().is_none());
    assert!(hub.store.app("default", "b").unwrap().is_none());

    let deletion = hub.bundle("a").unwrap();
    assert_eq!(deletion.generation, 2);
    assert!(deletion.objects.is_empty());
    let automated = deletion.policy.automated.unwrap();
    assert!(
        automated.prune && automated.allow_empty,
        "with the finalizer, its objects are pruned"
    );
    assert_eq!(
        hub.bundle("b").unwrap().generation,
        1,
        "without the finalizer, its objects are left alone"
    );
}

#[tokio::test]
async fn an_app_its_project_does_not_permit_is_refused_naming_the_rule() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"));
    repo.commit("first");
    let hub = hub(&repo).await;
    let project = "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {name: locked}\nspec:\n  sourceRepos: ['https://git.example/*']\n  destinations: [{name: '*', namespace: '*'}]\n";
    let project = flotilla_hub::app::parse_manifests(project, "project.yaml").unwrap();
    let flotilla_hub::app::Manifest::AppProject(project) = &project[0] else {
        panic!("a project")
    };
    hub.store.put_project(project).await.unwrap();
    hub.declare(
        &application("a", &repo, "apps/a", "").replace("project: default", "project: locked"),
    )
    .await;
    hub.declare(
        &application("b", &repo, "apps/a", "").replace("project: default", "project: nowhere"),
    )
    .await;

    let outcomes = hub.refresh().await;
    let failed = |app: &str| match outcomes
        .iter()
        .find(|(n, _)| n.ends_with(&format!("/{app}")))
    {
        Some((_, Outcome::Failed { error })) => error.clone(),
        other => panic!("{app}: {other:?}"),
    };
    assert!(
        failed("a").contains("project locked") && failed("a").contains("spec.sourceRepos"),
        "{}",
        failed("a")
    );
    assert!(
        failed("b").contains("project nowhere does not exist"),
        "{}",
        failed("b")
    );
    assert!(
        hub.store
            .latest_bundle("locked", "a", "east")
            .unwrap()
            .is_none(),
        "nothing stored"
    );
}

#[tokio::test]
async fn application_sets_in_git_generate_apps_that_follow_their_generators() {
    let repo = WorkRepo::new();
    let url = repo.path().display().to_string();
    let list_set = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata: {{name: listed}}\nspec:\n  generators: [{{list: {{elements: [{{name: metrics}}]}}}}]\n  template:\n    metadata: {{name: '{{{{name}}}}'}}\n    spec:\n      source: {{repoURL: '{url}', targetRevision: main, path: 'addons/{{{{name}}}}'}}\n      destination: {{name: east, namespace: addons}}\n"
    );
    let git_set = |glob: &str| {
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata: {{name: found}}\nspec:\n  generators: [{{git: {{repoURL: '{url}', revision: main, directories: [{{path: '{glob}'}}, {{path: addons/metrics, exclude: true}}]}}}}]\n  template:\n    metadata: {{name: '{{{{path.basename}}}}'}}\n    spec:\n      source: {{repoURL: '{url}', targetRevision: main, path: '{{{{path}}}}'}}\n      destination: {{name: east, namespace: addons}}\n"
        )
    };
    repo.write("addons/metrics/cm.yaml", &configmap("metrics", "1"))
        .write("addons/logging/cm.yaml", &configmap("logging", "1"))
        .write("argo/listed.yaml", &list_set)
        .write("argo/found.yaml", &git_set("addons/*"));
    repo.commit("addons");
    let hub = hub(&repo).await;
    hub.declare(&application("root", &repo, "argo", "")).await;

    hub.refresh().await;
    let mut apps: Vec<String> = hub
        .store
        .apps()
        .unwrap()
        .into_iter()
        .map(|a| a.name())
        .collect();
    apps.sort();
    assert_eq!(apps, ["logging", "metrics", "root"]);
    assert_eq!(hub.bundle("metrics").unwrap().generation, 1);
    assert_eq!(hub.bundle("logging").unwrap().generation, 1);
    assert!(
        hub.store
            .app("default", "logging")
            .unwrap()
            .unwrap()
            .application
            .cascades(),
        "generated apps cascade unless the set preserves resources"
    );

    repo.write("argo/found.yaml", &git_set("addons/none-*"));
    repo.commit("the git generator no longer finds logging");
    let outcomes = hub.refresh().await;
    assert_eq!(
        outcome(&outcomes, "logging"),
        &Outcome::Deleted { pruned: true }
    );
    assert!(hub.bundle("logging").unwrap().objects.is_empty());
    assert!(hub.store.app("default", "metrics").unwrap().is_some());
}

/// A bundle past half its life is re-issued as the next generation with a fresh
/// validity and the same desired state, so an agent that comes back after a long
/// time offline is never left with only an expired bundle; a younger one is left
/// alone.
#[tokio::test]
async fn a_bundle_past_half_its_life_is_reissued_with_the_same_objects() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"));
    let commit = repo.commit("first");
    let hub = hub(&repo).await;
    hub.declare(&application("a", &repo, "apps/a", "")).await;

    // Rendered five days ago: with the default seven-day life, two days are left.
    let now = SystemTime::now();
    let five_days_ago = now - Duration::from_secs(5 * 24 * 3600);
    hub.refresher
        .refresh_repo(&hub.url, five_days_ago)
        .await
        .unwrap();
    let old = hub.bundle("a").unwrap();
    assert_eq!(old.generation, 1);

    hub.refresh().await;
    let new = hub.bundle("a").unwrap();
    assert_eq!(
        new.generation, 2,
        "a bundle with two days left was not re-issued"
    );
    assert!(new.not_after.0 >= old.not_after.0 + 4 * 24 * 3600);
    assert_eq!(new.objects, old.objects);
    assert_eq!(new.policy, old.policy);
    assert_eq!(new.source.revision, commit);

    // Fresh now: the next refresh leaves it be.
    hub.refresh().await;
    assert_eq!(hub.bundle("a").unwrap().generation, 2);
}

fn locked_project(spec: &str) -> flotilla_hub::app::AppProject {
    let text = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: locked}}\nspec:\n{spec}"
    );
    let parsed = flotilla_hub::app::parse_manifests(&text, "project.yaml").unwrap();
    let flotilla_hub::app::Manifest::AppProject(project) = &parsed[0] else {
        panic!("a project")
    };
    (**project).clone()
}

#[tokio::test]
async fn a_repository_no_project_allows_is_neither_fetched_nor_rendered() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"));
    repo.commit("first");
    let hub = hub(&repo).await;
    hub.store
        .put_project(&locked_project(
            "  sourceRepos: ['https://git.example/*']\n  destinations: [{name: '*', namespace: '*'}]\n",
        ))
        .await
        .unwrap();
    hub.declare(
        &application("a", &repo, "apps/a", "").replace("project: default", "project: locked"),
    )
    .await;

    let outcomes = hub.refresh().await;
    let [(name, Outcome::Failed { error })] = outcomes.as_slice() else {
        panic!("{outcomes:?}")
    };
    assert_eq!(name, "locked/a");
    assert!(error.contains("spec.sourceRepos"), "{error}");
    let fetched = std::fs::read_dir(hub._dir.path().join("repos"))
        .unwrap()
        .count();
    assert_eq!(
        fetched, 0,
        "the repository was fetched although no project allows it"
    );
    let sync = hub
        .refresher
        .render_revision("locked", "a", "main", SystemTime::now())
        .await
        .unwrap();
    assert!(matches!(sync, Outcome::Failed { .. }), "{sync:?}");
    assert_eq!(
        std::fs::read_dir(hub._dir.path().join("repos"))
            .unwrap()
            .count(),
        0,
        "sync --revision fetched a repository its project does not allow"
    );
}

#[tokio::test]
async fn a_destination_the_project_refuses_is_refused_before_rendering() {
    let repo = WorkRepo::new();
    // A render would fail on this file: the error must be the project's.
    repo.write(
        "apps/a/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [oops\n",
    );
    repo.commit("first");
    let hub = hub(&repo).await;
    hub.store
        .put_project(&locked_project(
            "  sourceRepos: ['*']\n  destinations: [{name: '*', namespace: 'only-here'}]\n",
        ))
        .await
        .unwrap();
    hub.declare(
        &application("a", &repo, "apps/a", "").replace("project: default", "project: locked"),
    )
    .await;
    let outcomes = hub.refresh().await;
    let [(_, Outcome::Failed { error })] = outcomes.as_slice() else {
        panic!("{outcomes:?}")
    };
    assert!(
        error.contains("project locked") && !error.contains("cm.yaml"),
        "the app was rendered before its destination was checked: {error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_that_stalls_fails_after_the_fetch_timeout() {
    // As the hub's main does: fetching over https needs a crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/fleet.git", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    store
        .put_cluster(&ClusterRecord {
            name: "east".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let app = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: a}}\nspec:\n  source: {{repoURL: '{url}', path: a, targetRevision: main}}\n  destination: {{name: east, namespace: a}}\n"
    );
    store
        .put_app(&AppRecord::new(
            Application::from_yaml(&app, "test").unwrap(),
            AppOrigin::Store,
        ))
        .await
        .unwrap();
    let cache = RepoCache::new(dir.path().join("repos")).unwrap();
    let refresher = Refresher::new(store, cache, Renderer::new(Tools::from_env()))
        .await
        .unwrap()
        .with_fetch_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        refresher.refresh_repo(&url, SystemTime::now()),
    )
    .await
    .expect("the refresh came back")
    .unwrap_err();
    assert!(
        matches!(e, flotilla_hub::refresh::Error::FetchTimeout { .. }),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_password_in_a_repo_url_never_reaches_the_stored_error() {
    let repo = WorkRepo::new();
    repo.commit("empty");
    let hub = hub(&repo).await;
    hub.store
        .put_project(&locked_project(
            "  sourceRepos: ['https://git.example/*']\n  destinations: [{name: '*', namespace: '*'}]\n",
        ))
        .await
        .unwrap();
    let url = "https://bob:pw-19fe@elsewhere.example/x.git";
    let app = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: a}}\nspec:\n  project: locked\n  source: {{repoURL: '{url}', path: a, targetRevision: main}}\n  destination: {{name: east, namespace: a}}\n"
    );
    hub.declare(&app).await;
    let outcomes = hub
        .refresher
        .refresh_repo(url, SystemTime::now())
        .await
        .unwrap();
    let [(_, Outcome::Failed { error })] = outcomes.as_slice() else {
        panic!("{outcomes:?}")
    };
    assert!(error.contains("spec.sourceRepos"), "{error}");
    assert!(!error.contains("pw-19fe"), "{error}");
    let stored = hub.store.app("locked", "a").unwrap().unwrap();
    assert!(
        !stored.render_error.unwrap_or_default().contains("pw-19fe"),
        "the password was stored"
    );
}
