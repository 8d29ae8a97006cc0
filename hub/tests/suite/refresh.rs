//! A refresh, end to end on the hub side: a real Git repository, a real sled store,
//! real renders, and bundles that verify with the hub's key.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

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

use crate::support::source as fixture;

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
        let keys = KeySet::new(1, &[self.refresher.public_key()]).unwrap();
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

// App of apps across projects: what a parent may make the hub adopt.

use flotilla_hub::app::AppProject;
use flotilla_hub::app::adoption::{MANAGES_PROJECTS_ANNOTATION, PARENT_PROJECTS_ANNOTATION};

/// An AppProject that permits every repo and destination, with `annotations`
/// (a YAML flow mapping's body).
fn open_project(name: &str, annotations: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: {name}, annotations: {{{annotations}}}}}\nspec:\n  sourceRepos: ['*']\n  destinations: [{{name: '*', namespace: '*'}}]\n"
    )
}

fn in_project(project: &str, app: String) -> String {
    app.replace("project: default", &format!("project: {project}"))
}

impl Hub {
    /// Stores an AppProject as an admin creates one.
    async fn admin_project(&self, yaml: &str) {
        let manifests = flotilla_hub::app::parse_manifests(yaml, "project.yaml").unwrap();
        let flotilla_hub::app::Manifest::AppProject(project) = &manifests[0] else {
            panic!("a project")
        };
        self.store.put_project(project).await.unwrap();
    }

    fn project(&self, name: &str) -> Option<AppProject> {
        self.store.project(name).unwrap()
    }

    /// The parent's conditions as the API shows them: (type, message).
    fn conditions(&self, project: &str, app: &str) -> Vec<(String, String)> {
        let record = self.store.app(project, app).unwrap().unwrap();
        flotilla_hub::status::derive(&self.store, None, &record)
            .unwrap()
            .conditions
            .into_iter()
            .map(|c| (c.kind, c.message))
            .collect()
    }

    fn refused(&self, project: &str, app: &str) -> Vec<String> {
        self.conditions(project, app)
            .into_iter()
            .filter(|(kind, _)| kind == "ChildRefusedError")
            .map(|(_, message)| message)
            .collect()
    }
}

fn has(messages: &[String], parts: &[&str]) -> bool {
    messages
        .iter()
        .any(|m| parts.iter().all(|part| m.contains(part)))
}

/// A parent in `team-a` that renders children in `default` and in `platform`
/// (which does not list team-a) gets a condition naming each child and the rule;
/// neither is adopted, and its child in its own project and its own bundle are
/// not held up by them.
#[tokio::test]
async fn a_child_in_another_project_is_refused_with_a_condition_and_not_adopted() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"))
        .write(
            "argo/mine.yaml",
            &in_project("team-a", application("mine", &repo, "apps/a", "")),
        )
        .write(
            "argo/into-default.yaml",
            &application("into-default", &repo, "apps/a", ""),
        )
        .write(
            "argo/into-platform.yaml",
            &in_project(
                "platform",
                application("into-platform", &repo, "apps/a", ""),
            ),
        )
        .write("argo/cm.yaml", &configmap("root-own", "1"));
    repo.commit("root");
    let hub = hub(&repo).await;
    hub.admin_project(&open_project("team-a", "")).await;
    hub.admin_project(&open_project("platform", "")).await;
    hub.declare(&in_project(
        "team-a",
        application("root", &repo, "argo", ""),
    ))
    .await;

    let outcomes = hub.refresh().await;
    let root = outcomes
        .iter()
        .find(|(n, _)| n == "team-a/root")
        .map(|(_, o)| o);
    assert!(
        matches!(root, Some(Outcome::Rendered { .. })),
        "the parent's own bundle is not held up: {outcomes:?}"
    );
    let root_bundle = hub.store.latest_bundle("team-a", "root", "east").unwrap();
    assert!(root_bundle.is_some(), "the parent's bundle was stored");
    assert!(hub.store.app("team-a", "mine").unwrap().is_some());
    assert!(
        hub.store
            .latest_bundle("team-a", "mine", "east")
            .unwrap()
            .is_some(),
        "the permitted sibling rendered in the same refresh"
    );
    assert!(hub.store.app("default", "into-default").unwrap().is_none());
    assert!(
        hub.store
            .app("platform", "into-platform")
            .unwrap()
            .is_none()
    );
    assert!(
        hub.store
            .latest_bundle("default", "into-default", "east")
            .unwrap()
            .is_none()
    );

    let refused = hub.refused("team-a", "root");
    assert_eq!(refused.len(), 2, "{refused:?}");
    for (project, child) in [("default", "into-default"), ("platform", "into-platform")] {
        assert!(
            has(
                &refused,
                &[
                    &format!("Application {project}/{child}"),
                    &format!("in project {project}"),
                    PARENT_PROJECTS_ANNOTATION,
                ]
            ),
            "{refused:?}"
        );
    }
    // The same render again keeps the conditions, and a fix clears them.
    repo.remove("argo/into-default.yaml")
        .remove("argo/into-platform.yaml");
    repo.commit("only children of team-a");
    hub.refresh().await;
    assert!(hub.refused("team-a", "root").is_empty());
}

/// A project that lists the parent's project in `flotilla.dev/parent-projects`
/// takes its children, and an ApplicationSet's generated apps follow the same
/// rule: a set whose template names a project that does not allow the parent is
/// refused, naming the set.
#[tokio::test]
async fn a_child_allowed_by_the_parent_projects_annotation_is_adopted_and_sets_follow_the_rule() {
    let repo = WorkRepo::new();
    let url = repo.path().display().to_string();
    let set = |name: &str, project: &str| {
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata: {{name: {name}}}\nspec:\n  generators: [{{list: {{elements: [{{app: {name}-gen}}]}}}}]\n  template:\n    metadata: {{name: '{{{{app}}}}'}}\n    spec:\n      project: {project}\n      source: {{repoURL: '{url}', targetRevision: main, path: apps/a}}\n      destination: {{name: east, namespace: addons}}\n"
        )
    };
    repo.write("apps/a/cm.yaml", &configmap("a", "1"))
        .write(
            "argo/shared.yaml",
            &in_project("platform", application("shared", &repo, "apps/a", "")),
        )
        .write("argo/set-ok.yaml", &set("allowed", "platform"))
        .write("argo/set-bad.yaml", &set("sneaky", "locked"));
    repo.commit("root");
    let hub = hub(&repo).await;
    hub.admin_project(&open_project("team-a", "")).await;
    hub.admin_project(&open_project(
        "platform",
        &format!("'{PARENT_PROJECTS_ANNOTATION}': 'team-b, team-a'"),
    ))
    .await;
    hub.admin_project(&open_project(
        "locked",
        &format!("'{PARENT_PROJECTS_ANNOTATION}': 'team-b'"),
    ))
    .await;
    hub.declare(&in_project(
        "team-a",
        application("root", &repo, "argo", ""),
    ))
    .await;

    hub.refresh().await;
    let shared = hub.store.app("platform", "shared").unwrap().unwrap();
    assert_eq!(
        shared.origin,
        AppOrigin::Parent {
            project: "team-a".to_owned(),
            name: "root".to_owned()
        }
    );
    assert!(
        hub.store
            .latest_bundle("platform", "shared", "east")
            .unwrap()
            .is_some()
    );
    assert!(hub.store.app("platform", "allowed-gen").unwrap().is_some());
    assert!(hub.store.app("locked", "sneaky-gen").unwrap().is_none());
    let refused = hub.refused("team-a", "root");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        has(
            &refused,
            &[
                "Application locked/sneaky-gen",
                "ApplicationSet sneaky",
                "in project locked"
            ]
        ),
        "{refused:?}"
    );
}

/// An app whose project is not marked as managing projects cannot adopt an
/// AppProject, least of all its own or `default`; one whose project is marked may
/// adopt new projects, but never its own, `default`, the mark itself, or a
/// project it did not adopt. Nothing refused changes what the hub holds.
#[tokio::test]
async fn rendered_appprojects_are_adopted_only_from_a_managing_project_and_never_overwrite() {
    let repo = WorkRepo::new();
    // A wide-open project the parents try to slip in under existing names.
    let widened = |name: &str, annotations: &str| {
        open_project(name, annotations).replace(
            "destinations:",
            "clusterResourceWhitelist: [{group: '*', kind: '*'}]\n  destinations:",
        )
    };
    repo.write("team/own.yaml", &widened("team-a", ""))
        .write("team/default.yaml", &widened("default", ""))
        .write("team/new.yaml", &widened("fresh", ""))
        .write(
            "platform/own.yaml",
            &widened(
                "platform",
                &format!("'{MANAGES_PROJECTS_ANNOTATION}': 'true'"),
            ),
        )
        .write("platform/default.yaml", &widened("default", ""))
        .write(
            "platform/grant.yaml",
            &widened(
                "delegate",
                &format!("'{MANAGES_PROJECTS_ANNOTATION}': 'true'"),
            ),
        )
        .write("platform/team.yaml", &widened("team-a", ""))
        .write(
            "platform/shop.yaml",
            &open_project("shop", &format!("'{PARENT_PROJECTS_ANNOTATION}': platform")),
        )
        .write(
            "platform/shop-app.yaml",
            &in_project("shop", application("storefront", &repo, "apps/a", "")),
        )
        .write("apps/a/cm.yaml", &configmap("a", "1"));
    repo.commit("projects");
    let hub = hub(&repo).await;
    hub.admin_project(&open_project("team-a", "")).await;
    hub.admin_project(&open_project(
        "platform",
        &format!("'{MANAGES_PROJECTS_ANNOTATION}': 'true'"),
    ))
    .await;
    let team_before = hub.project("team-a").unwrap();
    let platform_before = hub.project("platform").unwrap();
    hub.declare(&in_project(
        "team-a",
        application("team-root", &repo, "team", ""),
    ))
    .await;
    hub.declare(&in_project(
        "platform",
        application("platform-root", &repo, "platform", ""),
    ))
    .await;

    hub.refresh().await;

    let team = hub.refused("team-a", "team-root");
    assert_eq!(team.len(), 3, "{team:?}");
    for name in ["team-a", "default", "fresh"] {
        assert!(
            has(
                &team,
                &[
                    &format!("AppProject {name}:"),
                    "project team-a is not marked",
                    MANAGES_PROJECTS_ANNOTATION
                ]
            ),
            "{team:?}"
        );
    }
    let platform = hub.refused("platform", "platform-root");
    assert!(
        has(&platform, &["AppProject platform", "parent's own project"]),
        "{platform:?}"
    );
    assert!(
        has(&platform, &["AppProject default", "default project"]),
        "{platform:?}"
    );
    assert!(
        has(
            &platform,
            &["AppProject delegate", "only an admin marks a project"]
        ),
        "{platform:?}"
    );
    assert!(
        has(
            &platform,
            &["AppProject team-a", "was not adopted from this parent"]
        ),
        "{platform:?}"
    );
    assert_eq!(platform.len(), 4, "{platform:?}");

    assert_eq!(hub.project("team-a").unwrap(), team_before);
    assert_eq!(hub.project("platform").unwrap(), platform_before);
    assert!(
        hub.project("default").is_none(),
        "the built-in default stays"
    );
    assert!(hub.project("fresh").is_none());
    assert!(hub.project("delegate").is_none());

    // The managing project's new project, and the app it allows there.
    let shop = hub.project("shop").expect("adopted");
    assert!(shop.accepts_children_from("platform"));
    assert!(hub.store.app("shop", "storefront").unwrap().is_some());
    assert!(
        hub.store
            .latest_bundle("shop", "storefront", "east")
            .unwrap()
            .is_some()
    );

    // Its own adopted project it may change later; a second parent may not.
    repo.write(
        "platform/shop.yaml",
        &open_project(
            "shop",
            &format!("'{PARENT_PROJECTS_ANNOTATION}': 'platform,team-a'"),
        ),
    )
    .write("other/shop.yaml", &widened("shop", ""));
    repo.commit("shop opens to team-a; another parent tries to take it");
    hub.declare(&in_project(
        "platform",
        application("other-root", &repo, "other", ""),
    ))
    .await;
    hub.refresh().await;
    let shop = hub.project("shop").unwrap();
    assert!(shop.accepts_children_from("team-a"));
    assert!(shop.spec.cluster_resource_whitelist.is_empty());
    assert!(
        has(
            &hub.refused("platform", "other-root"),
            &["AppProject shop", "was not adopted from this parent"]
        ),
        "{:?}",
        hub.refused("platform", "other-root")
    );
}

/// `sync --revision` renders the parent at another commit, which nobody reviewed
/// as the target: the children found there are neither adopted nor deleted.
#[tokio::test]
async fn rendering_a_parent_at_another_revision_neither_adopts_nor_deletes_children() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"))
        .write("argo/a.yaml", &application("a", &repo, "apps/a", ""));
    let first = repo.commit("a");
    repo.remove("argo/a.yaml")
        .write("argo/b.yaml", &application("b", &repo, "apps/a", ""));
    repo.commit("b instead of a");

    let hub = hub(&repo).await;
    let mut root = application("root", &repo, "argo", "");
    root = root.replace(
        "  syncPolicy: {automated: {prune: true, selfHeal: true}}\n",
        "",
    );
    hub.declare(&root).await;
    hub.refresh().await;
    assert!(hub.store.app("default", "b").unwrap().is_some());
    assert!(hub.store.app("default", "a").unwrap().is_none());

    hub.refresher
        .render_revision("default", "root", &first, SystemTime::now())
        .await
        .unwrap();
    assert!(
        hub.store.app("default", "a").unwrap().is_none(),
        "adopted from an unreviewed revision"
    );
    assert!(
        hub.store.app("default", "b").unwrap().is_some(),
        "deleted by a render of another revision"
    );
}

/// A bundle past half its life is re-issued only if it still passes its project
/// as the project is now; otherwise the app says why, and nothing is signed.
#[tokio::test]
async fn a_bundle_its_narrowed_project_no_longer_permits_is_not_reissued() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"));
    repo.commit("first");
    let hub = hub(&repo).await;
    hub.admin_project(&open_project("team", "")).await;
    hub.declare(&in_project("team", application("a", &repo, "apps/a", "")))
        .await;
    let five_days_ago = SystemTime::now() - Duration::from_secs(5 * 24 * 3600);
    hub.refresher
        .refresh_repo(&hub.url, five_days_ago)
        .await
        .unwrap();
    assert_eq!(
        hub.store
            .latest_bundle("team", "a", "east")
            .unwrap()
            .unwrap()
            .0,
        1
    );

    hub.admin_project(&open_project("team", "").replace(
        "destinations:",
        "namespaceResourceBlacklist: [{group: '', kind: ConfigMap}]\n  destinations:",
    ))
    .await;
    hub.refresh().await;
    assert_eq!(
        hub.store
            .latest_bundle("team", "a", "east")
            .unwrap()
            .unwrap()
            .0,
        1,
        "re-issued under rules the project dropped"
    );
    let conditions = hub.conditions("team", "a");
    assert!(
        conditions
            .iter()
            .any(|(kind, message)| kind == "InvalidSpecError"
                && message.contains("not re-issuing generation 1")
                && message.contains("spec.namespaceResourceBlacklist")),
        "{conditions:?}"
    );
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
async fn an_application_sets_git_generator_never_fetches_a_repository_its_project_forbids() {
    let repo = WorkRepo::new();
    let other = WorkRepo::new();
    other.write("private/team-secret-name/cm.yaml", &configmap("x", "1"));
    other.commit("another team's repository");
    let url = repo.path().display().to_string();
    let other_url = other.path().display().to_string();
    repo.write(
        "argo/found.yaml",
        &format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata: {{name: found}}\nspec:\n  generators: [{{git: {{repoURL: '{other_url}', revision: main, directories: [{{path: 'private/*'}}]}}}}]\n  template:\n    metadata: {{name: '{{{{path.basename}}}}'}}\n    spec:\n      project: locked\n      source: {{repoURL: '{url}', targetRevision: main, path: argo}}\n      destination: {{name: east, namespace: addons}}\n"
        ),
    );
    repo.commit("a set that lists another repository");
    let hub = hub(&repo).await;
    hub.store
        .put_project(&locked_project(&format!(
            "  sourceRepos: ['{url}']\n  destinations: [{{name: '*', namespace: '*'}}]\n"
        )))
        .await
        .unwrap();
    hub.declare(
        &application("root", &repo, "argo", "").replace("project: default", "project: locked"),
    )
    .await;

    let outcomes = hub.refresh().await;
    let [(name, Outcome::Failed { error })] = outcomes.as_slice() else {
        panic!("{outcomes:?}")
    };
    assert_eq!(name, "locked/root");
    assert!(error.contains("ApplicationSet found"), "{error}");
    assert!(error.contains("spec.sourceRepos"), "{error}");
    // Only the parent's own repository was fetched, and nothing was generated.
    assert_eq!(
        std::fs::read_dir(hub._dir.path().join("repos"))
            .unwrap()
            .count(),
        1
    );
    let names: Vec<String> = hub.store.apps().unwrap().iter().map(|a| a.name()).collect();
    assert_eq!(names, ["root"]);
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
    let _alone = crate::support::alone().await;
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

#[tokio::test]
async fn a_repository_that_cannot_be_fetched_shows_why_on_its_apps_and_keeps_their_bundles() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"));
    repo.commit("first");
    let hub = hub(&repo).await;
    hub.declare(&application("a", &repo, "apps/a", "")).await;
    hub.refresh().await;
    assert_eq!(hub.bundle("a").unwrap().generation, 1);

    // The repository goes away: the fetch fails, and the app says so, with the
    // cause, not only "failed to fetch".
    let moved = repo.path().with_extension("moved");
    std::fs::rename(repo.path(), &moved).unwrap();
    let failed = hub
        .refresher
        .refresh_repo(&hub.url, SystemTime::now())
        .await
        .unwrap_err();
    let record = hub.store.app("default", "a").unwrap().unwrap();
    let shown = record.render_error.expect("the failed fetch is on the app");
    assert!(shown.contains(&failed.to_string()), "{shown}");
    assert!(
        shown.len() > failed.to_string().len(),
        "no cause in {shown:?}"
    );
    // The last good bundle stays in force.
    assert_eq!(hub.bundle("a").unwrap().generation, 1);
    // Polls that fail the same way write nothing more.
    let events = hub.store.events().unwrap().len();
    let _ = hub
        .refresher
        .refresh_repo(&hub.url, SystemTime::now())
        .await;
    assert_eq!(hub.store.events().unwrap().len(), events);

    // It comes back: the error goes.
    std::fs::rename(&moved, repo.path()).unwrap();
    hub.refresh().await;
    let record = hub.store.app("default", "a").unwrap().unwrap();
    assert_eq!(record.render_error, None);
    assert_eq!(hub.bundle("a").unwrap().generation, 1);
}

/// A deny window in the app's project turns automation off in the bundles the
/// hub issues while it is open, and on again once it closes; the time comes from
/// the caller, so the test picks it.
#[tokio::test]
async fn a_deny_sync_window_turns_automation_off_while_it_is_open() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"));
    repo.commit("first");
    let hub = hub(&repo).await;
    hub.admin_project(
        "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {name: default}\nspec:\n  sourceRepos: ['*']\n  destinations: [{name: '*', namespace: '*'}]\n  syncWindows:\n    - {kind: deny, schedule: '0 22 * * *', duration: 1h, applications: ['a']}\n",
    )
    .await;
    hub.declare(&application("a", &repo, "apps/a", "")).await;
    let day = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                / 86_400
                * 86_400,
        );
    let inside = day + Duration::from_secs(22 * 3600 + 1800);
    let after = day + Duration::from_secs(23 * 3600 + 1800);

    hub.refresher.refresh_repo(&hub.url, inside).await.unwrap();
    let blocked = hub.bundle("a").unwrap();
    assert_eq!(
        blocked.policy.automated, None,
        "automated inside a deny window"
    );

    hub.refresher
        .apply_sync_windows("default", "a", after)
        .await
        .unwrap();
    let open = hub.bundle("a").unwrap();
    assert_eq!(open.generation, blocked.generation + 1);
    assert!(open.policy.automated.as_ref().unwrap().prune);
    assert_eq!(open.objects, blocked.objects);

    // Nothing changes while the verdict stays the same.
    hub.refresher
        .apply_sync_windows("default", "a", after + Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(hub.bundle("a").unwrap().generation, open.generation);

    // The next evening the window opens again.
    let next_evening = inside + Duration::from_secs(86_400);
    hub.refresher
        .refresh_repo(&hub.url, next_evening)
        .await
        .unwrap();
    let again = hub.bundle("a").unwrap();
    assert_eq!(again.generation, open.generation + 1);
    assert_eq!(again.policy.automated, None);
}

/// Deleting an app whose finalizer is the `/background` variant sends a deletion
/// bundle that deletes in the background; the plain finalizer, in the foreground.
#[tokio::test]
async fn the_background_finalizer_makes_the_cascade_delete_in_the_background() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"))
        .write("apps/b/cm.yaml", &configmap("b", "1"));
    repo.commit("first");
    let hub = hub(&repo).await;
    hub.declare(&application(
        "a",
        &repo,
        "apps/a",
        "  finalizers: [resources-finalizer.argocd.argoproj.io/background]\n",
    ))
    .await;
    hub.declare(&application(
        "b",
        &repo,
        "apps/b",
        "  finalizers: [resources-finalizer.argocd.argoproj.io]\n",
    ))
    .await;
    hub.refresh().await;
    for (app, background) in [("a", true), ("b", false)] {
        let record = hub.store.app("default", app).unwrap().unwrap();
        hub.refresher
            .prune_everywhere(&record, SystemTime::now(), false)
            .await
            .unwrap();
        let deletion = hub.bundle(app).unwrap().policy.deletion.unwrap();
        assert_eq!(deletion.background, background, "{app}");
        assert!(!deletion.confirmed);
    }
}

/// `argocd.argoproj.io/skip-reconcile: "true"`: a new commit renders nothing and
/// issues nothing for the app; its last bundle stays.
#[tokio::test]
async fn an_app_that_skips_reconcile_is_not_rendered_or_reissued() {
    let repo = WorkRepo::new();
    repo.write("apps/a/cm.yaml", &configmap("a", "1"));
    repo.commit("first");
    let hub = hub(&repo).await;
    hub.declare(&application("a", &repo, "apps/a", "")).await;
    hub.refresh().await;
    let before = hub.bundle("a").unwrap();
    hub.declare(&application(
        "a",
        &repo,
        "apps/a",
        "  annotations: {argocd.argoproj.io/skip-reconcile: 'true'}\n",
    ))
    .await;
    repo.write("apps/a/cm.yaml", &configmap("a", "2"));
    repo.commit("second");
    let outcomes = hub.refresh().await;
    assert!(
        matches!(outcome(&outcomes, "a"), Outcome::SkippedReconcile),
        "{outcomes:?}"
    );
    let after = hub.bundle("a").unwrap();
    assert_eq!(after.generation, before.generation);
    assert_eq!(value(&after), "1");
}
