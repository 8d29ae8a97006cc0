//! Issue 15's fleet rollouts, end to end with real processes: `flotilla serve`
//! and one `flotilla-agent` per local cluster, an ApplicationSet written as
//! Argo CD users write it with a `RollingSync` strategy: clusters labelled
//! `wave=canary` in step one, `wave=main` in step two, which holds
//! (`maxUpdate: 0`) until promoted.
//!
//! - A good commit reaches the canary first; the main cluster keeps the old
//!   revision through the canary's soak, a pause and a resume, and gets the
//!   new one only once the step is promoted.
//! - A bad commit (a Deployment that can never become Available) fails the
//!   canary step: the canary goes back to the revision it had, the main
//!   cluster never sees the bad one, and the rollout ends `RolledBack` naming
//!   the app; the bad revision is not rolled out again on the next refresh.
//! - A newer commit mid-rollout supersedes it and starts again from step one;
//!   the main cluster never sees the superseded revision.
//! - A hub killed mid-rollout carries on from the step it was at.
//!
//! Needs `target/debug/flotilla` and `target/debug/flotilla-agent`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::{LocalCluster, fleet};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::Value;

use crate::support::processes::{Agent, Hub, PASSWORD, binary, run};

const CONVERGE: Duration = Duration::from_secs(120);
const SOAK_SECS: u64 = 3;

struct Repo(PathBuf);

impl Repo {
    fn git(&self, args: &[&str]) -> String {
        run(Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
            .args(args)
            .current_dir(&self.0))
    }

    /// Writes the shop app at `version`, with a Deployment that never becomes
    /// Available when `broken`, and commits; returns the commit.
    fn commit(&self, version: &str, broken: bool) -> String {
        std::fs::write(
            self.0.join("shop/configmap.yaml"),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop\ndata:\n  version: \"{version}\"\n"
            ),
        )
        .unwrap();
        let deployment = self.0.join("shop/deployment.yaml");
        if broken {
            // No node carries this label, so its pod is never scheduled, and
            // the Deployment controller gives up after five seconds.
            std::fs::write(
                &deployment,
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: never-available\nspec:\n  replicas: 1\n  progressDeadlineSeconds: 5\n  selector:\n    matchLabels: {app: never-available}\n  template:\n    metadata:\n      labels: {app: never-available}\n    spec:\n      nodeSelector: {flotilla.io/no-such-node: \"true\"}\n      containers:\n        - {name: app, image: registry.invalid/never:1}\n",
            )
            .unwrap();
        } else if deployment.exists() {
            std::fs::remove_file(&deployment).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", &format!("shop {version}")]);
        self.git(&["rev-parse", "HEAD"]).trim().to_owned()
    }
}

fn fleet_repo(dir: &Path, namespace: &str) -> Repo {
    let root = dir.join("fleet");
    std::fs::create_dir_all(root.join("shop")).unwrap();
    std::fs::create_dir_all(root.join("sets")).unwrap();
    let url = format!("file://{}", root.display());
    std::fs::write(
        root.join("sets/shop.yaml"),
        format!(
            "apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: shop
  namespace: argocd
  annotations:
    flotilla.io/rollout-soak: {SOAK_SECS}s
    flotilla.io/rollout-progress-deadline: 60s
spec:
  generators:
    - clusters:
        selector:
          matchExpressions:
            - {{key: wave, operator: Exists}}
  strategy:
    type: RollingSync
    rollingSync:
      steps:
        - matchExpressions:
            - {{key: wave, operator: In, values: [canary]}}
        - matchExpressions:
            - {{key: wave, operator: In, values: [main]}}
          maxUpdate: 0
  template:
    metadata:
      name: 'shop-{{{{name}}}}'
      labels:
        wave: '{{{{metadata.labels.wave}}}}'
    spec:
      project: default
      source:
        repoURL: '{url}'
        targetRevision: main
        path: shop
      destination:
        name: '{{{{name}}}}'
        namespace: {namespace}
      syncPolicy:
        automated: {{prune: true, selfHeal: true}}
        syncOptions: [CreateNamespace=true]
"
        ),
    )
    .unwrap();
    let repo = Repo(root);
    repo.git(&["init", "-q", "-b", "main"]);
    repo
}

/// The `version` of the shop ConfigMap on a cluster, if it is there.
async fn version(client: &kube::Client, namespace: &str) -> Option<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = api.get_opt("shop").await.ok()??;
    cm.data?.get("version").cloned()
}

async fn has_broken_deployment(client: &kube::Client, namespace: &str) -> bool {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    matches!(api.get_opt("never-available").await, Ok(Some(_)))
}

/// What the test watches on both clusters at once.
struct Fleet {
    canary: kube::Client,
    main: kube::Client,
    namespace: String,
}

impl Fleet {
    async fn versions(&self) -> (Option<String>, Option<String>) {
        (
            version(&self.canary, &self.namespace).await,
            version(&self.main, &self.namespace).await,
        )
    }
}

async fn rollout(hub: &mut Hub) -> Value {
    hub.client(CONVERGE)
        .await
        .get("/api/v1/rollouts/shop")
        .await
        .unwrap()
}

async fn act(hub: &mut Hub, action: &str) -> Value {
    hub.client(CONVERGE)
        .await
        .post(&format!("/api/v1/rollouts/shop/{action}"), "{}".to_owned())
        .await
        .unwrap()
}

async fn refresh(hub: &mut Hub) {
    hub.client(CONVERGE)
        .await
        .post(
            "/api/v1/applications/default/fleet/refresh",
            "{}".to_owned(),
        )
        .await
        .unwrap();
}

/// Polls both clusters until `done` holds, asserting `never` on every look.
async fn watch(
    fleet: &Fleet,
    what: &str,
    timeout: Duration,
    mut never: impl FnMut(&(Option<String>, Option<String>)) -> Option<String>,
    done: impl Fn(&(Option<String>, Option<String>)) -> bool,
) {
    let start = Instant::now();
    loop {
        let seen = fleet.versions().await;
        if let Some(broken) = never(&seen) {
            panic!("while waiting for {what}: {broken} (canary, main) = {seen:?}");
        }
        if done(&seen) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; (canary, main) = {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is(v: &Option<String>, want: &str) -> bool {
    v.as_deref() == Some(want)
}

async fn wait_phase(hub: &mut Hub, phase: &str, revision: &str) -> Value {
    hub.wait_for(
        &format!("rollout shop {phase} at {revision}"),
        "/api/v1/rollouts/shop",
        CONVERGE,
        |r| r["phase"] == phase && r["toRevision"] == revision,
    )
    .await
}

/// Waits until the rollout holds at step two (index 1) for `revision`.
async fn wait_held_at_main(hub: &mut Hub, revision: &str) -> Value {
    hub.wait_for(
        "the rollout to hold at the main step",
        "/api/v1/rollouts/shop",
        CONVERGE,
        |r| r["phase"] == "Progressing" && r["toRevision"] == revision && r["step"] == 1,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_sync_set_moves_step_by_step_and_rolls_a_bad_commit_back() {
    let _alone = crate::support::alone().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clusters: Vec<LocalCluster> = fleet().expect("the local fleet is running");
    assert!(clusters.len() >= 2, "needs two clusters");
    let (canary, main) = (&clusters[0], &clusters[1]);
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("rollout-{}", std::process::id());
    let repo = fleet_repo(dir.path(), &namespace);
    let v1 = repo.commit("1", false);

    let mut hub = Hub::new(dir.path(), "127.0.0.1", None);
    let joins = [
        hub.add_cluster_labelled(canary.name(), &["wave=canary"]),
        hub.add_cluster_labelled(main.name(), &["wave=main"]),
    ];
    hub.start();
    let mut agents: Vec<Agent> = [canary, main]
        .iter()
        .zip(&joins)
        .map(|(c, join)| Agent::new(c, join, dir.path()))
        .collect();
    for agent in &mut agents {
        agent.start();
    }
    hub.wait_for(
        "both agents connected",
        "/api/v1/clusters",
        CONVERGE,
        |list| {
            list["items"].as_array().is_some_and(|l| {
                l.iter()
                    .filter(|c| c["link"]["state"] == "Connected")
                    .count()
                    == 2
            })
        },
    )
    .await;
    let fleet = Fleet {
        canary: canary.client().await.unwrap(),
        main: main.client().await.unwrap(),
        namespace: namespace.clone(),
    };

    // The app of apps that holds the set, as the recipe's root app does.
    let url = format!("file://{}", repo.0.display());
    hub.client(CONVERGE)
        .await
        .post(
            "/api/v1/applications",
            format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: fleet, namespace: argocd}}\nspec:\n  project: default\n  source: {{repoURL: '{url}', targetRevision: main, path: sets}}\n  destination: {{name: {}, namespace: argocd}}\n  syncPolicy: {{automated: {{}}}}\n",
                canary.name()
            ),
        )
        .await
        .unwrap();

    // The first revision rolls out too: the canary first, and the main cluster
    // only once promoted.
    wait_held_at_main(&mut hub, &v1).await;
    watch(
        &fleet,
        "v1 on the canary",
        CONVERGE,
        |_| None,
        |(c, _)| is(c, "1"),
    )
    .await;
    assert_eq!(
        fleet.versions().await.1,
        None,
        "the main step holds until promoted"
    );
    act(&mut hub, "promote").await;
    wait_phase(&mut hub, "Completed", &v1).await;
    watch(
        &fleet,
        "v1 on both",
        CONVERGE,
        |_| None,
        |(c, m)| is(c, "1") && is(m, "1"),
    )
    .await;

    // A good commit: canary, soak, hold, pause, resume, promote.
    let v2 = repo.commit("2", false);
    refresh(&mut hub).await;
    let canary_moved = Instant::now();
    watch(
        &fleet,
        "v2 on the canary",
        CONVERGE,
        |(_, m)| (!is(m, "1")).then(|| "the main cluster left v1 before its step".to_owned()),
        |(c, _)| is(c, "2"),
    )
    .await;
    let held = wait_held_at_main(&mut hub, &v2).await;
    assert!(
        canary_moved.elapsed() >= Duration::from_secs(SOAK_SECS),
        "the canary step passed before its soak time"
    );
    let shop_canary = format!("shop-{}", canary.name());
    let canary_app = held["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == shop_canary.as_str())
        .unwrap();
    assert_eq!(canary_app["phase"], "Passed", "{held:#}");
    assert_eq!(held["fromRevision"], v1.as_str(), "{held:#}");
    let paused = act(&mut hub, "pause").await;
    assert_eq!(paused["paused"], true);
    act(&mut hub, "resume").await;
    // maxUpdate 0 holds the main step even when not paused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fleet.versions().await, (Some("2".into()), Some("1".into())));
    // The CLI shows the rollout, step by step.
    let cli = |args: &[&str]| {
        run(Command::new(binary("flotilla"))
            .args(args)
            .env("XDG_CONFIG_HOME", dir.path().join("cli"))
            .env("FLOTILLA_PASSWORD", PASSWORD))
    };
    cli(&["login", "--server", &hub.server(), "--username", "admin"]);
    let shown = cli(&["rollout", "get", "shop"]);
    eprintln!("{shown}");
    assert!(
        shown.contains("Progressing") && shown.contains(&shop_canary) && shown.contains("Passed"),
        "{shown}"
    );
    assert!(
        cli(&["rollout", "list"]).contains("2/3"),
        "step two of three (the last holds unmatched apps)"
    );
    act(&mut hub, "promote").await;
    watch(
        &fleet,
        "v2 on the main cluster",
        CONVERGE,
        |_| None,
        |(c, m)| is(c, "2") && is(m, "2"),
    )
    .await;
    wait_phase(&mut hub, "Completed", &v2).await;

    // A bad commit: the canary fails, goes back to v2; the main cluster never
    // sees v3.
    let v3 = repo.commit("3", true);
    refresh(&mut hub).await;
    let main_never_sees_v3 = |(_, m): &(Option<String>, Option<String>)| {
        (!is(m, "2")).then(|| "the main cluster left v2 during the bad rollout".to_owned())
    };
    watch(
        &fleet,
        "v3 on the canary",
        CONVERGE,
        main_never_sees_v3,
        |(c, _)| is(c, "3"),
    )
    .await;
    let rolled = wait_phase(&mut hub, "RolledBack", &v3).await;
    assert_eq!(
        rolled["failedApp"],
        format!("default/{shop_canary}"),
        "{rolled:#}"
    );
    let reason = rolled["reason"].as_str().unwrap();
    eprintln!("rolled back: {reason}");
    assert!(
        reason.contains("Degraded") || reason.contains("progress deadline"),
        "{reason}"
    );
    assert_eq!(rolled["step"], 0, "no later step started: {rolled:#}");
    watch(
        &fleet,
        "the canary back on v2",
        CONVERGE,
        main_never_sees_v3,
        |(c, _)| is(c, "2"),
    )
    .await;
    let start = Instant::now();
    while has_broken_deployment(&fleet.canary, &namespace).await {
        assert!(
            start.elapsed() < CONVERGE,
            "the rollback did not prune the bad Deployment"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!has_broken_deployment(&fleet.main, &namespace).await);
    // The failed revision is not rolled out again by the next refresh.
    refresh(&mut hub).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(rollout(&mut hub).await["phase"], "RolledBack");
    assert_eq!(fleet.versions().await, (Some("2".into()), Some("2".into())));

    // A newer commit mid-rollout supersedes it from step one; the main cluster
    // never sees the superseded revision.
    let v4 = repo.commit("4", false);
    refresh(&mut hub).await;
    wait_held_at_main(&mut hub, &v4).await;
    let v5 = repo.commit("5", false);
    refresh(&mut hub).await;
    let main_never_sees_v4 = |(_, m): &(Option<String>, Option<String>)| {
        is(m, "4").then(|| "the main cluster got the superseded revision".to_owned())
    };
    let restarted = hub
        .wait_for(
            "the rollout restarted for v5",
            "/api/v1/rollouts/shop",
            CONVERGE,
            |r| r["toRevision"] == v5.as_str(),
        )
        .await;
    assert_eq!(
        restarted["step"], 0,
        "a superseding rollout starts from step one"
    );
    assert_eq!(restarted["fromRevision"], v2.as_str(), "{restarted:#}");
    watch(
        &fleet,
        "v5 on the canary",
        CONVERGE,
        main_never_sees_v4,
        |(c, _)| is(c, "5"),
    )
    .await;
    wait_held_at_main(&mut hub, &v5).await;

    // The hub is killed while the rollout holds at the main step, and carries on.
    hub.kill();
    hub.start();
    let after = wait_held_at_main(&mut hub, &v5).await;
    assert_eq!(after["phase"], "Progressing");
    assert_eq!(fleet.versions().await.1.as_deref(), Some("2"));
    act(&mut hub, "promote").await;
    watch(
        &fleet,
        "v5 on both",
        CONVERGE,
        main_never_sees_v4,
        |(c, m)| is(c, "5") && is(m, "5"),
    )
    .await;
    wait_phase(&mut hub, "Completed", &v5).await;
    for agent in &mut agents {
        agent.assert_running();
    }
}
