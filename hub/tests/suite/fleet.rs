//! The quickstart's example fleet (`examples/fleet`), through the hub's real path:
//! the folder committed to a real Git repository, the root Application declared as
//! `./quickstart` declares it, one refresh with the real kustomize and helm
//! (tests/run puts the ones tests/build-k8s built on PATH), and the signed bundles
//! read back per app and cluster. The checks are the ones a user of the fleet makes:
//! which apps exist where, what each overlay and values file changed, and whether
//! the waves and hooks survived rendering.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::SystemTime;

use flotilla_common::bundle::{Bundle, Envelope, HookDeletePolicy, HookPhase, Object};
use flotilla_common::model::{ApiResource, ClusterFacts, Timestamp};
use flotilla_common::signing::{Expectation, KeySet, verify};
use flotilla_hub::app::Application;
use flotilla_hub::refresh::{Outcome, Refresher};
use flotilla_hub::render::{Renderer, Tools, sort_for_apply};
use flotilla_hub::source::RepoCache;
use flotilla_hub::store::{AppOrigin, AppRecord, ClusterRecord, Store};
use serde_json::Value;

use fixture::WorkRepo;

use crate::support::source as fixture;

/// The repository URL the fleet's manifests name; the quickstart points it at its
/// local copy, and so does this test.
const FLEET_URL: &str = "https://git.example/fleet.git";

/// Every app the root brings, with the clusters it lands on.
const CHILDREN: &[(&str, &[&str])] = &[
    ("guestbook-east", &["east"]),
    ("guestbook-west", &["west"]),
    ("storefront-staging", &["east"]),
    ("storefront-production", &["west"]),
    ("notifier-east", &["east"]),
    ("notifier-west", &["west"]),
    ("orders-east", &["east"]),
    ("orders-west", &["west"]),
];

/// `examples/fleet` committed to a fresh repository, its repoURLs pointing there.
fn fleet_repo() -> WorkRepo {
    let repo = WorkRepo::new();
    let url = repo.path().display().to_string();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet");
    copy_tree(&source, &source, &repo, &url);
    repo.commit("the example fleet");
    repo
}

fn copy_tree(root: &Path, dir: &Path, repo: &WorkRepo, url: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            copy_tree(root, &path, repo, url);
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        repo.write(&rel, &text.replace(FLEET_URL, url));
    }
}

/// What an agent on one of the local clusters reports: its version and the kinds it
/// serves, which Helm sees as `--kube-version` and `--api-versions`.
fn facts(cluster: &str) -> ClusterFacts {
    let kinds = [
        ("v1", "ConfigMap", "configmaps", true),
        ("v1", "Namespace", "namespaces", false),
        ("v1", "Pod", "pods", true),
        ("v1", "Service", "services", true),
        ("v1", "ServiceAccount", "serviceaccounts", true),
        ("apps/v1", "Deployment", "deployments", true),
        ("batch/v1", "Job", "jobs", true),
        (
            "policy/v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
        ),
    ];
    ClusterFacts {
        kubernetes_version: "v1.35.4".to_owned(),
        api_resources: kinds
            .iter()
            .map(|(gv, kind, plural, namespaced)| ApiResource {
                group_version: (*gv).to_owned(),
                kind: (*kind).to_owned(),
                plural: (*plural).to_owned(),
                namespaced: *namespaced,
            })
            .collect(),
        api_server_url: format!("https://{cluster}.fleet.test:6443"),
        kube_system_uid: format!("{cluster}-kube-system"),
    }
}

struct Hub {
    _dir: tempfile::TempDir,
    repo: WorkRepo,
    store: Store,
    refresher: Refresher,
}

/// A hub with east (staging) and west (production) registered, as the quickstart
/// registers them, and the fleet's root Application declared.
async fn hub() -> Hub {
    let repo = fleet_repo();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    for (name, env) in [("east", "staging"), ("west", "production")] {
        store
            .put_cluster(&ClusterRecord {
                name: name.to_owned(),
                labels: BTreeMap::from([("env".to_owned(), env.to_owned())]),
                server: Some(format!("https://{name}.fleet.test:6443")),
                facts: Some(facts(name)),
            })
            .await
            .unwrap();
    }
    let cache = RepoCache::new(dir.path().join("repos")).unwrap();
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env()))
        .await
        .unwrap();
    // The root's project, as the quickstart's admin creates it.
    let project = std::fs::read_to_string(repo.path().join("bootstrap/project.yaml")).unwrap();
    let project = flotilla_hub::app::parse_manifests(&project, "bootstrap/project.yaml").unwrap();
    let flotilla_hub::app::Manifest::AppProject(project) = &project[0] else {
        panic!("bootstrap/project.yaml holds an AppProject")
    };
    store.put_project(project).await.unwrap();
    let root = std::fs::read_to_string(repo.path().join("bootstrap/root.yaml")).unwrap();
    let root = Application::from_yaml(&root, "bootstrap/root.yaml").unwrap();
    store
        .put_app(&AppRecord::new(root, AppOrigin::Store))
        .await
        .unwrap();
    Hub {
        _dir: dir,
        repo,
        store,
        refresher,
    }
}

impl Hub {
    async fn refresh(&self) -> Vec<(String, Outcome)> {
        let url = self.repo.path().display().to_string();
        self.refresher
            .refresh_repo(&url, SystemTime::now())
            .await
            .unwrap()
    }

    /// The latest bundle of `project/app` for `cluster`, verified with the hub's key
    /// as the agent verifies it.
    fn bundle(&self, project: &str, app: &str, cluster: &str) -> Option<Bundle> {
        let (generation, bytes) = self.store.latest_bundle(project, app, cluster).unwrap()?;
        let envelope = Envelope::decode(&bytes).unwrap();
        let keys = KeySet::new(1, &[self.refresher.public_key()]).unwrap();
        let expect = Expectation {
            cluster,
            now: Timestamp::from_system_time(SystemTime::now()),
        };
        let bundle = verify(&envelope, &keys, expect, |_| None).unwrap();
        assert_eq!(bundle.generation, generation);
        Some(bundle)
    }

    /// The bundle of a fleet app on its cluster, which must exist.
    fn fleet_bundle(&self, app: &str, cluster: &str) -> Bundle {
        self.bundle("fleet", app, cluster)
            .unwrap_or_else(|| panic!("no bundle of {app} for {cluster}"))
    }
}

/// `Kind/name` of every object, in apply order.
fn apply_order(bundle: &Bundle) -> Vec<String> {
    let mut objects = bundle.objects.clone();
    sort_for_apply(&mut objects);
    objects
        .iter()
        .map(|o| format!("{}/{}", o.gvk.kind, o.name))
        .collect()
}

fn find<'a>(bundle: &'a Bundle, kind: &str, name: &str) -> &'a Object {
    bundle
        .objects
        .iter()
        .find(|o| o.gvk.kind == kind && o.name == name)
        .unwrap_or_else(|| {
            panic!(
                "{}: no {kind}/{name} in {:?}",
                bundle.app,
                apply_order(bundle)
            )
        })
}

fn manifest(bundle: &Bundle, kind: &str, name: &str) -> Value {
    find(bundle, kind, name).manifest_json().unwrap()
}

fn only_of_kind<'a>(bundle: &'a Bundle, kind: &str) -> &'a Object {
    let found: Vec<&Object> = bundle
        .objects
        .iter()
        .filter(|o| o.gvk.kind == kind)
        .collect();
    assert_eq!(found.len(), 1, "{}: {kind}s: {found:?}", bundle.app);
    found[0]
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {value}"))
}

#[tokio::test]
async fn the_root_app_brings_every_app_of_the_fleet_to_its_clusters() {
    let hub = hub().await;
    let outcomes = hub.refresh().await;
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed { .. }))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");

    // The root renders only Argo CD kinds: the hub keeps them, no cluster gets them.
    let root = hub.bundle("bootstrap", "root", "east").unwrap();
    assert!(root.objects.is_empty(), "{:?}", apply_order(&root));
    assert!(hub.bundle("bootstrap", "root", "west").is_none());
    let project = hub
        .store
        .project("fleet")
        .unwrap()
        .expect("adopted project");
    assert_eq!(
        project.spec.source_repos,
        [hub.repo.path().display().to_string()]
    );

    let mut apps: Vec<(String, String)> = hub
        .store
        .apps()
        .unwrap()
        .iter()
        .map(|a| (a.project(), a.name()))
        .collect();
    apps.sort();
    let mut expected: Vec<(String, String)> = CHILDREN
        .iter()
        .map(|(name, _)| ("fleet".to_owned(), (*name).to_owned()))
        .collect();
    expected.push(("bootstrap".to_owned(), "root".to_owned()));
    expected.sort();
    assert_eq!(apps, expected);

    let objects: BTreeMap<&str, usize> = BTreeMap::from([
        ("guestbook-east", 2),
        ("guestbook-west", 2),
        ("storefront-staging", 3),
        ("storefront-production", 4),
        ("notifier-east", 5),
        ("notifier-west", 6),
        ("orders-east", 6),
        ("orders-west", 6),
    ]);
    for (name, clusters) in CHILDREN {
        let record = hub.store.app("fleet", name).unwrap().unwrap();
        assert_eq!(
            record.origin,
            AppOrigin::Parent {
                project: "bootstrap".to_owned(),
                name: "root".to_owned()
            },
            "{name}"
        );
        assert_eq!(record.render_error, None, "{name}");
        assert!(
            record.application.cascades(),
            "{name}: deleting it from Git deletes what it deployed"
        );
        for cluster in ["east", "west"] {
            let bundle = hub.bundle("fleet", name, cluster);
            if !clusters.contains(&cluster) {
                assert!(bundle.is_none(), "{name} must not reach {cluster}");
                continue;
            }
            let bundle = bundle.unwrap();
            assert_eq!(bundle.generation, 1, "{name} on {cluster}");
            assert_eq!(
                bundle.objects.len(),
                objects[name],
                "{name} on {cluster}: {:?}",
                apply_order(&bundle)
            );
            let automated = bundle.policy.automated.as_ref().unwrap();
            assert!(automated.prune && automated.self_heal, "{name}");
            assert_eq!(bundle.policy.sync_options, ["CreateNamespace=true"]);
            let namespaces: BTreeSet<Option<&str>> = bundle
                .objects
                .iter()
                .map(|o| o.namespace.as_deref())
                .collect();
            let want = name.split('-').next().unwrap();
            let want = if want == "notifier" {
                "notifications"
            } else {
                want
            };
            assert_eq!(namespaces, BTreeSet::from([Some(want)]), "{name}");
        }
    }
}

#[tokio::test]
async fn the_storefront_overlays_differ_where_staging_and_production_should() {
    let hub = hub().await;
    hub.refresh().await;
    let staging = hub.fleet_bundle("storefront-staging", "east");
    let production = hub.fleet_bundle("storefront-production", "west");

    for (bundle, env, replicas, tag, log_level, checkout) in [
        (&staging, "staging", 1, "1.5.0-rc.1", "debug", "one-page"),
        (&production, "production", 3, "1.4.0", "warn", "classic"),
    ] {
        let deployment = manifest(bundle, "Deployment", "storefront");
        assert_eq!(deployment["spec"]["replicas"], replicas, "{env}");
        assert_eq!(
            text(&deployment, "/spec/template/spec/containers/0/image"),
            format!("registry.example/storefront:{tag}")
        );
        assert_eq!(text(&deployment, "/metadata/labels/env"), env);
        assert_eq!(
            text(
                &deployment,
                "/spec/selector/matchLabels/app.kubernetes.io~1name"
            ),
            "storefront"
        );
        // The generated ConfigMap has a content hash in its name, and the
        // Deployment refers to that exact name, so a config change rolls the pods.
        let config = only_of_kind(bundle, "ConfigMap");
        assert!(
            config.name.starts_with("storefront-config-"),
            "{}",
            config.name
        );
        assert_eq!(
            text(
                &deployment,
                "/spec/template/spec/containers/0/envFrom/0/configMapRef/name"
            ),
            config.name
        );
        let data = config.manifest_json().unwrap()["data"].clone();
        assert_eq!(data["LOG_LEVEL"], log_level, "{env}");
        assert_eq!(data["CHECKOUT_FLOW"], checkout, "{env}");
        assert_eq!(data["CART_TTL"], "30m", "{env}: kept from the base");
    }
    assert_ne!(
        only_of_kind(&staging, "ConfigMap").name,
        only_of_kind(&production, "ConfigMap").name
    );

    let limits = manifest(&production, "Deployment", "storefront");
    assert_eq!(
        text(
            &limits,
            "/spec/template/spec/containers/0/resources/limits/memory"
        ),
        "512Mi"
    );
    let pdb = manifest(&production, "PodDisruptionBudget", "storefront");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    assert!(
        !staging
            .objects
            .iter()
            .any(|o| o.gvk.kind == "PodDisruptionBudget"),
        "only production has a disruption budget"
    );
}

#[tokio::test]
async fn the_notifier_chart_takes_each_clusters_values_file() {
    let hub = hub().await;
    hub.refresh().await;
    let east = hub.fleet_bundle("notifier-east", "east");
    let west = hub.fleet_bundle("notifier-west", "west");

    for (bundle, replicas, log_level, chat_room, sender) in [
        (
            &east,
            1,
            "debug",
            "deploys-staging",
            "shop-staging@example.com",
        ),
        (&west, 3, "warn", "shop-alerts", "shop@example.com"),
    ] {
        let deployment = manifest(bundle, "Deployment", "notifier");
        assert_eq!(deployment["spec"]["replicas"], replicas);
        assert_eq!(
            text(&deployment, "/spec/template/spec/containers/0/image"),
            "registry.example/notifier:1.8.2",
            "the tag defaults to the chart's appVersion"
        );
        assert_eq!(
            text(&deployment, "/spec/template/spec/serviceAccountName"),
            "notifier"
        );
        let config = manifest(bundle, "ConfigMap", "notifier");
        let settings: Value = serde_saphyr::from_str(text(&config, "/data/notifier.yaml")).unwrap();
        assert_eq!(settings["logLevel"], log_level);
        assert_eq!(settings["channels"]["chat"]["room"], chat_room);
        assert_eq!(
            settings["channels"]["email"]["from"], sender,
            "values-<env>.yaml is merged over values.yaml"
        );
        // The chart's `helm test` Pod is rendered but never synced.
        let test = find(bundle, "Pod", "notifier-test-connection");
        assert_eq!(test.hook.as_ref().unwrap().phase, HookPhase::Skip);
    }

    // The budget needs policy/v1, which the cluster's facts say it serves.
    let pdb = manifest(&west, "PodDisruptionBudget", "notifier");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    assert!(
        !east
            .objects
            .iter()
            .any(|o| o.gvk.kind == "PodDisruptionBudget")
    );
    let checksum = |b: &Bundle| {
        text(
            &manifest(b, "Deployment", "notifier"),
            "/spec/template/metadata/annotations/checksum~1config",
        )
        .to_owned()
    };
    assert_ne!(checksum(&east), checksum(&west));
}

#[tokio::test]
async fn the_orders_app_keeps_its_waves_and_hooks_in_argo_cds_order() {
    let hub = hub().await;
    hub.refresh().await;
    for cluster in ["east", "west"] {
        let bundle = hub.fleet_bundle(&format!("orders-{cluster}"), cluster);
        assert_eq!(
            apply_order(&bundle),
            [
                "Job/orders-db-migrate",
                "ConfigMap/orders-config",
                "Deployment/orders-api",
                "Service/orders-api",
                "Deployment/orders-worker",
                "Job/orders-smoke-test",
            ]
        );
        let migrate = find(&bundle, "Job", "orders-db-migrate");
        let hook = migrate.hook.as_ref().unwrap();
        assert_eq!(hook.phase, HookPhase::PreSync);
        assert_eq!(hook.delete_policy, [HookDeletePolicy::HookSucceeded]);
        let smoke = find(&bundle, "Job", "orders-smoke-test");
        let hook = smoke.hook.as_ref().unwrap();
        assert_eq!(hook.phase, HookPhase::PostSync);
        assert_eq!(hook.delete_policy, [HookDeletePolicy::BeforeHookCreation]);

        for (kind, name, wave) in [
            ("ConfigMap", "orders-config", 0),
            ("Deployment", "orders-api", 1),
            ("Service", "orders-api", 2),
            ("Deployment", "orders-worker", 2),
        ] {
            let object = find(&bundle, kind, name);
            assert_eq!(object.wave, wave, "{kind}/{name}");
            assert!(object.hook.is_none());
            // The annotation travels to the cluster as written.
            assert_eq!(
                text(
                    &object.manifest_json().unwrap(),
                    "/metadata/annotations/argocd.argoproj.io~1sync-wave"
                ),
                wave.to_string()
            );
        }
        assert_eq!(
            text(
                &migrate.manifest_json().unwrap(),
                "/metadata/annotations/argocd.argoproj.io~1hook"
            ),
            "PreSync"
        );
    }
}

#[tokio::test]
async fn refreshing_the_same_commit_again_changes_nothing() {
    let hub = hub().await;
    hub.refresh().await;
    let again = hub.refresh().await;
    let changed: Vec<_> = again
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::NotAffected { .. } | Outcome::Unchanged { .. }))
        .collect();
    assert!(changed.is_empty(), "{changed:?}");
    for (name, clusters) in CHILDREN {
        for cluster in *clusters {
            assert_eq!(hub.fleet_bundle(name, cluster).generation, 1);
        }
    }
}
