//! Issue 14's charts, end to end with real processes: `flotilla serve` and a
//! `flotilla-agent` on a local cluster, a chart repository over HTTPS with Basic
//! authentication and an OCI registry on loopback, credentials given as Argo CD
//! repository Secrets. An Application shaped like the recipe's
//! kube-prometheus-stack one (a chart from a repository, a semver range, values)
//! and a multi-source one (a chart from the registry, its values from Git) sync
//! and report Healthy; a newly published chart version reaches the cluster.
//!
//! Needs `target/debug/flotilla` and `target/debug/flotilla-agent`, and the
//! `registry` that `tests/build-k8s` builds.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::fleet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::{Value, json};

use crate::support::charts::{ChartRepoServer, Registry, TestCa, argocd_secret, publish};
use crate::support::processes::{Agent, Hub, run};

const USER: &str = "chart-reader";
const PASSWORD: &str = "e2e-chart-password-7";
const CONVERGE: Duration = Duration::from_secs(120);

fn values_repo(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("values");
    std::fs::create_dir_all(repo.join("monitoring")).unwrap();
    std::fs::write(repo.join("monitoring/values.yaml"), "retention: 45d\n").unwrap();
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
            .args(args)
            .current_dir(&repo));
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "values"]);
    repo
}

async fn config_data(client: &kube::Client, namespace: &str, name: &str) -> Option<Value> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = api.get_opt(name).await.ok()??;
    serde_json::to_value(cm.data?).ok()
}

fn synced_and_healthy(app: &Value) -> bool {
    app["status"]["sync"] == "Synced"
        && app["status"]["health"] == "Healthy"
        && app["renderError"].is_null()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_from_a_repository_and_a_registry_sync_healthy_and_follow_new_versions() {
    let _alone = crate::support::alone().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = fleet().expect("the local fleet is running").remove(0);
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("charts-{}", std::process::id());

    let ca = TestCa::new();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    for version in ["57.0.0", "58.0.0", "58.1.0"] {
        publish(&served, "metrics-stack", version, "");
    }
    let charts = ChartRepoServer::start(&ca, served.clone(), Some((USER, PASSWORD)), false);
    let registry = Registry::start(&ca, USER, PASSWORD).await;
    registry.push("charts", "exporter", "1.0.0");
    registry.push("charts", "exporter", "1.1.0");
    let values = values_repo(dir.path());
    let values_url = format!("file://{}", values.display());

    let mut hub = Hub::new(dir.path(), "127.0.0.1", None);
    let ca_file = dir.path().join("repo-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    hub.set_env("FLOTILLA_REPO_CA_FILE", ca_file.to_str().unwrap());
    let join = hub.add_cluster(cluster.name());
    hub.start();
    let mut agent = Agent::new(&cluster, &join, dir.path());
    agent.start();
    hub.wait_for(
        "the agent connected",
        "/api/v1/clusters",
        CONVERGE,
        |list| {
            list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == cluster.name() && c["link"]["state"] == "Connected")
        },
    )
    .await;

    let client = hub.client(CONVERGE).await;
    // The chart repository, polled every 2 s; a credential template for the
    // registry's host.
    let mut repository = json!({
        "argocdSecret": argocd_secret("charts", "repository", &[
            ("type", "helm"), ("url", &charts.url), ("username", USER), ("password", PASSWORD),
        ]),
    });
    repository["pollIntervalSeconds"] = 2.into();
    client
        .post("/api/v1/repositories", repository.to_string())
        .await
        .unwrap();
    client
        .post(
            "/api/v1/repositories",
            json!({
                "argocdSecret": argocd_secret("registry-creds", "repo-creds", &[
                    ("type", "oci"), ("url", &format!("oci://{}/", registry.host)),
                    ("username", USER), ("password", PASSWORD),
                ]),
            })
            .to_string(),
        )
        .await
        .unwrap();
    // Nothing shown gives a password away.
    let listed = client
        .get("/api/v1/repositories")
        .await
        .unwrap()
        .to_string();
    assert!(!listed.contains(PASSWORD), "{listed}");

    // The recipe's kube-prometheus-stack shape.
    client
        .post(
            "/api/v1/applications",
            format!(
                "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: monitoring
  namespace: argocd
spec:
  project: default
  source:
    repoURL: {}
    chart: metrics-stack
    targetRevision: 58.*
    helm:
      releaseName: monitoring
      valuesObject:
        retention: 30d
  destination:
    name: {}
    namespace: {namespace}
  syncPolicy:
    automated: {{prune: true, selfHeal: true}}
    syncOptions: [CreateNamespace=true, ServerSideApply=true]
",
                charts.url,
                cluster.name()
            ),
        )
        .await
        .unwrap();
    // Several sources: the chart from the registry, its values from Git.
    client
        .post(
            "/api/v1/applications",
            format!(
                "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: exporter
  namespace: argocd
spec:
  project: default
  sources:
    - repoURL: oci://{}/charts
      chart: exporter
      targetRevision: '>=1.0 <2'
      helm:
        valueFiles: [$values/monitoring/values.yaml]
    - repoURL: '{values_url}'
      targetRevision: main
      ref: values
  destination:
    name: {}
    namespace: {namespace}
  syncPolicy:
    automated: {{prune: true, selfHeal: true}}
    syncOptions: [CreateNamespace=true]
",
                registry.host,
                cluster.name()
            ),
        )
        .await
        .unwrap();

    let monitoring = hub
        .wait_for(
            "monitoring Synced and Healthy",
            "/api/v1/applications/default/monitoring",
            CONVERGE,
            synced_and_healthy,
        )
        .await;
    let revision = monitoring["sources"][0]["revision"].as_str().unwrap();
    assert!(revision.starts_with("58.1.0 (sha256:"), "{monitoring:#}");
    let exporter = hub
        .wait_for(
            "exporter Synced and Healthy",
            "/api/v1/applications/default/exporter",
            CONVERGE,
            synced_and_healthy,
        )
        .await;
    assert!(
        exporter["sources"][0]["revision"]
            .as_str()
            .unwrap()
            .starts_with("1.1.0 (sha256:"),
        "{exporter:#}"
    );
    assert_eq!(
        exporter["sources"][1]["revision"].as_str().unwrap().len(),
        40
    );

    let kube = cluster.client().await.unwrap();
    let data = config_data(&kube, &namespace, "monitoring-metrics-stack")
        .await
        .unwrap();
    assert_eq!(data["chartVersion"], "58.1.0");
    assert_eq!(data["retention"], "30d");
    let data = config_data(&kube, &namespace, "exporter-exporter")
        .await
        .unwrap();
    assert_eq!(data["chartVersion"], "1.1.0");
    assert_eq!(data["retention"], "45d", "values from the Git ref");

    // A new version in range is published: polling picks it up and it reaches
    // the cluster.
    let published = Instant::now();
    publish(&served, "metrics-stack", "58.2.0", "");
    loop {
        let data = config_data(&kube, &namespace, "monitoring-metrics-stack").await;
        if data.as_ref().is_some_and(|d| d["chartVersion"] == "58.2.0") {
            break;
        }
        agent.assert_running();
        assert!(
            published.elapsed() < CONVERGE,
            "58.2.0 never reached the cluster; last: {data:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let in_cluster = published.elapsed();
    hub.wait_for(
        "monitoring Synced at 58.2.0",
        "/api/v1/applications/default/monitoring",
        CONVERGE,
        |app| {
            synced_and_healthy(app)
                && app["sources"][0]["revision"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("58.2.0"))
        },
    )
    .await;
    eprintln!(
        "figure: new chart version published to applied in the cluster in {in_cluster:?}, \
         to Synced in {:?} (poll interval 2 s)",
        published.elapsed()
    );

    // A new version pushed to the registry is picked up by `app refresh`.
    registry.push("charts", "exporter", "1.2.0");
    let pushed = Instant::now();
    client
        .post(
            "/api/v1/applications/default/exporter/refresh",
            String::new(),
        )
        .await
        .unwrap();
    hub.wait_for(
        "exporter Synced at 1.2.0",
        "/api/v1/applications/default/exporter",
        CONVERGE,
        |app| {
            synced_and_healthy(app)
                && app["sources"][0]["revision"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("1.2.0"))
        },
    )
    .await;
    eprintln!(
        "figure: new chart version pushed to the registry to Synced after app refresh in {:?}",
        pushed.elapsed()
    );

    // Leave the cluster as it was.
    for app in ["monitoring", "exporter"] {
        client
            .delete(&format!("/api/v1/applications/default/{app}"))
            .await
            .unwrap();
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(kube.clone());
    let _ = namespaces.delete(&namespace, &Default::default()).await;
    hub.kill();
    agent.kill();
}
