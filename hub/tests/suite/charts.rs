//! Charts from repositories in the running hub's refresher: a real HTTPS chart
//! repository with Basic authentication (and client certificates), credentials
//! from Argo CD repository Secrets and credential templates, semver ranges, new
//! versions, the chart cache, dependencies, and several sources with `$ref`
//! value files from Git.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::{Instant, SystemTime};

use flotilla_common::bundle::Bundle;
use flotilla_hub::app::Application;
use flotilla_hub::chart::ChartCache;
use flotilla_hub::refresh::{Outcome, Refresher};
use flotilla_hub::render::{Renderer, Tools};
use flotilla_hub::source::{RepoCache, RepositorySecret};
use flotilla_hub::store::{AppOrigin, AppRecord, ClusterRecord, RepoRecord, Store};

use crate::support::charts::{ChartRepoServer, TestCa, argocd_secret, publish, write_chart};
use crate::support::source::WorkRepo;

const USER: &str = "chart-reader";
const PASSWORD: &str = "s3cret-chart-password-42";

struct Hub {
    _dir: tempfile::TempDir,
    store: Store,
    refresher: Refresher,
}

async fn hub(ca: &TestCa) -> Hub {
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
    let charts = ChartCache::new(dir.path().join("charts"))
        .unwrap()
        .trust_root_certificate_pem(ca.pem.clone());
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env()))
        .await
        .unwrap()
        .with_chart_cache(charts);
    Hub {
        _dir: dir,
        store,
        refresher,
    }
}

impl Hub {
    async fn secret(&self, yaml: &str) {
        let read = RepositorySecret::from_yaml(yaml.as_bytes()).unwrap();
        self.store
            .put_repo(&RepoRecord::from_secret(read))
            .await
            .unwrap();
    }

    async fn declare(&self, yaml: &str) {
        let app = Application::from_yaml(yaml, "test").unwrap();
        self.store
            .put_app(&AppRecord::new(app, AppOrigin::Store))
            .await
            .unwrap();
    }

    async fn refresh(&self, url: &str) -> Vec<(String, Outcome)> {
        self.refresher
            .refresh_repo(url, SystemTime::now())
            .await
            .unwrap()
    }

    fn record(&self, app: &str) -> AppRecord {
        self.store.app("default", app).unwrap().unwrap()
    }

    fn bundle(&self, app: &str) -> Bundle {
        let (_, bytes) = self
            .store
            .latest_bundle("default", app, "east")
            .unwrap()
            .unwrap();
        let envelope = flotilla_common::bundle::Envelope::decode(&bytes).unwrap();
        let keys =
            flotilla_common::signing::KeySet::new(1, &[self.refresher.public_key()]).unwrap();
        let expect = flotilla_common::signing::Expectation {
            cluster: "east",
            now: flotilla_common::model::Timestamp::from_system_time(SystemTime::now()),
        };
        flotilla_common::signing::verify(&envelope, &keys, expect, |_| None).unwrap()
    }
}

fn only<'a>(outcomes: &'a [(String, Outcome)], app: &str) -> &'a Outcome {
    &outcomes
        .iter()
        .find(|(name, _)| name == &format!("default/{app}"))
        .unwrap_or_else(|| panic!("no outcome for {app}: {outcomes:?}"))
        .1
}

/// `data` of the ConfigMap named `name` in the bundle.
fn config(bundle: &Bundle, name: &str) -> serde_json::Value {
    let object = bundle
        .objects
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no {name} in {:?}",
                bundle.objects.iter().map(|o| &o.name).collect::<Vec<_>>()
            )
        });
    object.manifest_json().unwrap()["data"].clone()
}

/// The shape of the recipe's kube-prometheus-stack Application: a chart from a
/// repository, a semver range, inline values.
fn stack_app(url: &str, range: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: monitoring\n  namespace: argocd\nspec:\n  project: default\n  source:\n    repoURL: {url}\n    chart: metrics-stack\n    targetRevision: '{range}'\n    helm:\n      releaseName: monitoring\n      valuesObject:\n        retention: 30d\n  destination: {{name: east, namespace: monitoring}}\n  syncPolicy: {{automated: {{prune: true, selfHeal: true}}, syncOptions: [CreateNamespace=true]}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chart_from_an_https_repository_renders_with_a_credential_template_and_follows_new_versions()
 {
    let ca = TestCa::new();
    let served = tempfile::tempdir().unwrap();
    for version in ["57.9.0", "58.0.0", "58.1.0", "59.0.0"] {
        publish(served.path(), "metrics-stack", version, "");
    }
    let server =
        ChartRepoServer::start(&ca, served.path().to_owned(), Some((USER, PASSWORD)), false);
    let hub = hub(&ca).await;
    // A credential template for the whole host, as Argo CD's repo-creds.
    hub.secret(&argocd_secret(
        "charts-creds",
        "repo-creds",
        &[
            ("type", "helm"),
            ("url", &format!("{}/", server.url)),
            ("username", USER),
            ("password", PASSWORD),
        ],
    ))
    .await;
    hub.declare(&stack_app(&server.url, "58.*")).await;

    let started = Instant::now();
    let outcomes = hub.refresh(&server.url).await;
    let cold = started.elapsed();
    assert!(
        matches!(only(&outcomes, "monitoring"), Outcome::Rendered { .. }),
        "{outcomes:?}"
    );
    let data = config(&hub.bundle("monitoring"), "monitoring-metrics-stack");
    assert_eq!(data["chartVersion"], "58.1.0", "the highest 58.x");
    assert_eq!(data["retention"], "30d", "the app's values");
    let record = hub.record("monitoring");
    assert!(
        record.rendered_revisions[0].starts_with("58.1.0 (sha256:"),
        "{:?}",
        record.rendered_revisions
    );
    assert!(record.render_error.is_none());

    // Nothing new: the index is read, nothing renders.
    let outcomes = hub.refresh(&server.url).await;
    assert!(
        matches!(only(&outcomes, "monitoring"), Outcome::NotAffected { .. }),
        "{outcomes:?}"
    );

    // The same digest again renders from the caches: the archive from disk,
    // the render from the renderer's cache.
    let mut record = hub.record("monitoring");
    record.rendered_revisions.clear();
    hub.store.put_app(&record).await.unwrap();
    let archive_hits = hub.refresher.chart_cache().hits();
    let render_hits = hub.refresher.renderer().cache_hits();
    let started = Instant::now();
    let outcomes = hub.refresh(&server.url).await;
    let warm = started.elapsed();
    assert!(
        matches!(only(&outcomes, "monitoring"), Outcome::Unchanged { .. }),
        "{outcomes:?}"
    );
    assert_eq!(hub.refresher.chart_cache().hits(), archive_hits + 1);
    assert_eq!(hub.refresher.renderer().cache_hits(), render_hits + 1);
    eprintln!(
        "figure: refresh with a cold chart render {cold:?}; the same digest again (cache hit) {warm:?}"
    );

    // A new version in range is published: the next refresh picks it up.
    publish(served.path(), "metrics-stack", "58.2.0", "");
    let started = Instant::now();
    let outcomes = hub.refresh(&server.url).await;
    eprintln!(
        "figure: new chart version to a stored bundle in {:?}",
        started.elapsed()
    );
    assert!(
        matches!(only(&outcomes, "monitoring"), Outcome::Rendered { .. }),
        "{outcomes:?}"
    );
    let data = config(&hub.bundle("monitoring"), "monitoring-metrics-stack");
    assert_eq!(data["chartVersion"], "58.2.0");

    // A range in Masterminds' syntax picks across majors.
    let mut record = hub.record("monitoring");
    record.application =
        Application::from_yaml(&stack_app(&server.url, ">=58.1 <60"), "t").unwrap();
    hub.store.put_app(&record).await.unwrap();
    hub.refresh(&server.url).await;
    let data = config(&hub.bundle("monitoring"), "monitoring-metrics-stack");
    assert_eq!(data["chartVersion"], "59.0.0");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_are_a_condition_naming_the_repository_and_chart_never_the_password() {
    let ca = TestCa::new();
    let served = tempfile::tempdir().unwrap();
    publish(served.path(), "metrics-stack", "58.0.0", "");
    let server =
        ChartRepoServer::start(&ca, served.path().to_owned(), Some((USER, PASSWORD)), false);
    let hub = hub(&ca).await;
    let wrong = "wrong-password-do-not-show";
    hub.secret(&argocd_secret(
        "charts",
        "repository",
        &[
            ("type", "helm"),
            ("url", &server.url),
            ("username", USER),
            ("password", wrong),
        ],
    ))
    .await;
    hub.declare(&stack_app(&server.url, "58.*")).await;
    let outcomes = hub.refresh(&server.url).await;
    let Outcome::Failed { error } = only(&outcomes, "monitoring") else {
        panic!("{outcomes:?}");
    };
    assert!(error.contains(&server.url), "{error}");
    assert!(error.contains("metrics-stack"), "{error}");
    assert!(error.contains("401"), "{error}");
    assert!(
        !error.contains(wrong) && !error.contains(PASSWORD),
        "{error}"
    );
    let record = hub.record("monitoring");
    assert_eq!(record.render_error.as_deref(), Some(error.as_str()));

    // A version that does not exist is named with the newest there is.
    hub.secret(&argocd_secret(
        "charts",
        "repository",
        &[
            ("type", "helm"),
            ("url", &server.url),
            ("username", USER),
            ("password", PASSWORD),
        ],
    ))
    .await;
    let mut record = hub.record("monitoring");
    record.application = Application::from_yaml(&stack_app(&server.url, "60.*"), "t").unwrap();
    hub.store.put_app(&record).await.unwrap();
    let outcomes = hub.refresh(&server.url).await;
    let Outcome::Failed { error } = only(&outcomes, "monitoring") else {
        panic!("{outcomes:?}");
    };
    assert!(
        error.contains("60.*") && error.contains("58.0.0") && error.contains("metrics-stack"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_that_wants_a_client_certificate_gets_the_secrets_one() {
    let ca = TestCa::new();
    let served = tempfile::tempdir().unwrap();
    publish(served.path(), "metrics-stack", "58.0.0", "");
    let server = ChartRepoServer::start(&ca, served.path().to_owned(), None, true);
    let hub = hub(&ca).await;
    hub.declare(&stack_app(&server.url, "58.*")).await;
    let outcomes = hub.refresh(&server.url).await;
    assert!(
        matches!(only(&outcomes, "monitoring"), Outcome::Failed { .. }),
        "without a client certificate: {outcomes:?}"
    );
    hub.secret(&argocd_secret(
        "charts",
        "repository",
        &[
            ("type", "helm"),
            ("url", &server.url),
            ("tlsClientCertData", &ca.client_cert),
            ("tlsClientCertKey", &ca.client_key),
        ],
    ))
    .await;
    let outcomes = hub.refresh(&server.url).await;
    assert!(
        matches!(only(&outcomes, "monitoring"), Outcome::Rendered { .. }),
        "{outcomes:?}"
    );
    let record = hub.record("monitoring");
    assert!(record.render_error.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn dependencies_from_a_repository_use_its_credentials_and_a_failure_names_them() {
    let ca = TestCa::new();
    let served = tempfile::tempdir().unwrap();
    publish(served.path(), "exporter", "1.2.0", "");
    let server =
        ChartRepoServer::start(&ca, served.path().to_owned(), Some((USER, PASSWORD)), false);
    let repo = WorkRepo::new();
    let umbrella = write_chart(
        repo.path(),
        "umbrella",
        "0.1.0",
        &format!(
            "dependencies:\n  - name: exporter\n    version: 1.x\n    repository: {}\n",
            server.url
        ),
    );
    assert!(umbrella.is_dir());
    repo.commit("an umbrella chart");
    let git_url = repo.path().display().to_string();
    let hub = hub(&ca).await;
    hub.declare(&format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: umbrella}}\nspec:\n  source: {{repoURL: '{git_url}', path: umbrella, targetRevision: HEAD}}\n  destination: {{name: east, namespace: monitoring}}\n"
    ))
    .await;

    // Without credentials for the dependency's repository: named, with its repository.
    let outcomes = hub.refresh(&git_url).await;
    let Outcome::Failed { error } = only(&outcomes, "umbrella") else {
        panic!("{outcomes:?}");
    };
    assert!(
        error.contains(&format!("exporter from {}", server.url)),
        "{error}"
    );

    hub.secret(&argocd_secret(
        "charts",
        "repository",
        &[
            ("type", "helm"),
            ("url", &server.url),
            ("username", USER),
            ("password", PASSWORD),
        ],
    ))
    .await;
    let outcomes = hub.refresh(&git_url).await;
    assert!(
        matches!(only(&outcomes, "umbrella"), Outcome::Rendered { .. }),
        "{outcomes:?}"
    );
    let bundle = hub.bundle("umbrella");
    assert_eq!(
        config(&bundle, "umbrella-exporter")["chartVersion"],
        "1.2.0"
    );
    assert_eq!(
        config(&bundle, "umbrella-umbrella")["chartVersion"],
        "0.1.0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn several_sources_take_a_chart_from_a_repository_and_its_values_from_git() {
    let ca = TestCa::new();
    let served = tempfile::tempdir().unwrap();
    publish(served.path(), "metrics-stack", "58.0.0", "");
    let server =
        ChartRepoServer::start(&ca, served.path().to_owned(), Some((USER, PASSWORD)), false);
    let values = WorkRepo::new();
    values.write("monitoring/values.yaml", "retention: 7d\n");
    values.commit("values");
    let git_url = values.path().display().to_string();
    let hub = hub(&ca).await;
    hub.secret(&argocd_secret(
        "charts",
        "repository",
        &[
            ("type", "helm"),
            ("url", &server.url),
            ("username", USER),
            ("password", PASSWORD),
        ],
    ))
    .await;
    hub.declare(&format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: monitoring}}\nspec:\n  sources:\n    - repoURL: {}\n      chart: metrics-stack\n      targetRevision: 58.*\n      helm:\n        valueFiles: [$values/monitoring/values.yaml]\n    - repoURL: '{git_url}'\n      targetRevision: HEAD\n      ref: values\n  destination: {{name: east, namespace: monitoring}}\n",
        server.url
    ))
    .await;
    let outcomes = hub.refresh(&server.url).await;
    assert!(
        matches!(only(&outcomes, "monitoring"), Outcome::Rendered { .. }),
        "{outcomes:?}"
    );
    let data = config(&hub.bundle("monitoring"), "monitoring-metrics-stack");
    assert_eq!(data["retention"], "7d", "the values from Git");
    let record = hub.record("monitoring");
    assert_eq!(record.rendered_revisions.len(), 2);
    assert!(record.rendered_revisions[0].starts_with("58.0.0 (sha256:"));
    assert_eq!(record.rendered_revisions[1], values.head());

    // A change in the values repository alone renders the app again.
    values.write("monitoring/values.yaml", "retention: 14d\n");
    values.commit("longer retention");
    let outcomes = hub.refresh(&git_url).await;
    assert!(
        matches!(only(&outcomes, "monitoring"), Outcome::Rendered { .. }),
        "{outcomes:?}"
    );
    let data = config(&hub.bundle("monitoring"), "monitoring-metrics-stack");
    assert_eq!(data["retention"], "14d");
    assert_eq!(
        hub.record("monitoring").rendered_revisions[1],
        values.head()
    );

    // A missing value file in the ref is named with the ref.
    values.remove("monitoring/values.yaml");
    values.commit("values moved");
    let outcomes = hub.refresh(&git_url).await;
    let Outcome::Failed { error } = only(&outcomes, "monitoring") else {
        panic!("{outcomes:?}");
    };
    assert!(
        error.contains("$values/monitoring/values.yaml") && error.contains("\"values\""),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chart_from_an_oci_registry_renders_with_enable_oci_credentials_and_follows_pushes() {
    let ca = TestCa::new();
    let registry = crate::support::charts::Registry::start(&ca, USER, PASSWORD).await;
    registry.push("charts", "metrics-stack", "1.4.0");
    registry.push("charts", "metrics-stack", "1.9.0");
    registry.push("charts", "metrics-stack", "2.0.0");
    let hub = hub(&ca).await;
    // As Argo CD users write it: a helm repository Secret with enableOCI and a
    // URL without a scheme.
    let without_scheme = format!("{}/charts", registry.host);
    hub.secret(&argocd_secret(
        "registry",
        "repository",
        &[
            ("type", "helm"),
            ("enableOCI", "true"),
            ("url", &without_scheme),
            ("username", USER),
            ("password", PASSWORD),
        ],
    ))
    .await;
    let with_scheme = format!("oci://{without_scheme}");
    for (name, url) in [("plain", &without_scheme), ("oci", &with_scheme)] {
        hub.declare(
            &stack_app(url, ">=1.2 <2")
                .replace(
                    "name: monitoring\n  namespace: argocd",
                    &format!("name: {name}\n  namespace: argocd"),
                )
                .replace("releaseName: monitoring", &format!("releaseName: {name}")),
        )
        .await;
        let outcomes = hub.refresh(url).await;
        assert!(
            matches!(only(&outcomes, name), Outcome::Rendered { .. }),
            "{name}: {outcomes:?}"
        );
        let data = config(&hub.bundle(name), &format!("{name}-metrics-stack"));
        assert_eq!(data["chartVersion"], "1.9.0", "{name}: the highest 1.x");
        assert_eq!(data["retention"], "30d");
    }

    registry.push("charts", "metrics-stack", "1.10.0");
    let started = Instant::now();
    let outcomes = hub.refresh(&with_scheme).await;
    eprintln!(
        "figure: new chart version in the registry to a stored bundle in {:?}",
        started.elapsed()
    );
    assert!(
        matches!(only(&outcomes, "oci"), Outcome::Rendered { .. }),
        "{outcomes:?}"
    );
    let data = config(&hub.bundle("oci"), "oci-metrics-stack");
    assert_eq!(data["chartVersion"], "1.10.0");

    // Without the password the registry's refusal is the app's condition.
    hub.secret(&argocd_secret(
        "registry",
        "repository",
        &[("type", "oci"), ("url", &without_scheme)],
    ))
    .await;
    let mut record = hub.record("oci");
    record.rendered_revisions.clear();
    hub.store.put_app(&record).await.unwrap();
    let outcomes = hub.refresh(&with_scheme).await;
    let Outcome::Failed { error } = only(&outcomes, "oci") else {
        panic!("{outcomes:?}");
    };
    assert!(
        error.contains(&without_scheme)
            && error.contains("metrics-stack")
            && !error.contains(PASSWORD),
        "{error}"
    );
}
