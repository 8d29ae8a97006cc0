//! Done-when of issue 5 with real processes: `flotilla serve` and two
//! `flotilla-agent`s, one per local cluster, a real Git repository as the source,
//! an app per cluster created through the API with the CLI, both bundles
//! acknowledged, then the hub SIGKILLed and restarted on the same data folder:
//! both agents come back and nothing they already applied is sent again.
//!
//! Needs `target/debug/flotilla` and `target/debug/flotilla-agent`
//! (`cargo build -p flotilla-hub -p flotilla-agent`).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_hub::client::Client;
use flotilla_tests::{LocalCluster, fleet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::Value;

use processes::{Child, binary, flag, log_tails, run};

use crate::support::processes;

fn free_port() -> u16 {
    processes::free_port("127.0.0.1")
}

const PASSWORD: &str = "done-when-admin-password";
const IDLE_TIMEOUT_SECS: &str = "30";

/// A Git repository with one plain-directory app of a single ConfigMap.
fn fleet_repo(dir: &Path, configmap: &str) -> PathBuf {
    let repo = dir.join("fleet");
    std::fs::create_dir_all(repo.join("app")).unwrap();
    std::fs::write(
        repo.join("app/configmap.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {configmap}\ndata:\n  greeting: hello\n"
        ),
    )
    .unwrap();
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
            .args(args)
            .current_dir(&repo));
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "one configmap"]);
    repo
}

fn hub_command(data: &Path, api: u16, quic: u16) -> Command {
    let mut command = Command::new(binary("flotilla"));
    command
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{api}")])
        // Plain HTTP is allowed on loopback; HTTPS is tested in the hub's own tests.
        .arg("--plain-http")
        .args(["--agent-listen", &format!("127.0.0.1:{quic}")])
        // A killed hub sends no close. The restarted one answers the agents' next
        // keep-alive on their dead connections with a stateless reset, made with
        // the key kept in its store, long before the idle timeout would end them.
        .args([
            "--keep-alive-secs",
            "1",
            "--idle-timeout-secs",
            IDLE_TIMEOUT_SECS,
        ])
        .env("FLOTILLA_ADMIN_PASSWORD", PASSWORD);
    command
}

/// `GET /api/v1/clusters` as admin, by cluster name, once the hub answers.
async fn clusters(server: &str) -> Option<serde_json::Map<String, Value>> {
    let trust = flotilla_hub::client::Trust::default();
    let session = Client::login(server, "admin", PASSWORD, trust.clone())
        .await
        .ok()?;
    let list = Client::new(server, Some(session.token), &trust)
        .ok()?
        .get("/api/v1/clusters")
        .await
        .ok()?;
    Some(
        list["items"]
            .as_array()?
            .iter()
            .map(|c| (c["name"].as_str().unwrap_or("").to_owned(), c.clone()))
            .collect(),
    )
}

/// Polls the cluster list until `ready` holds for it, or fails after `timeout`.
async fn wait_for_clusters(
    server: &str,
    what: &str,
    timeout: Duration,
    hub: &mut Child,
    logs: &Path,
    ready: impl Fn(&serde_json::Map<String, Value>) -> bool,
) -> serde_json::Map<String, Value> {
    let start = Instant::now();
    let mut last = None;
    loop {
        hub.assert_running();
        if let Some(list) = clusters(server).await {
            if ready(&list) {
                return list;
            }
            last = Some(list);
        }
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; last cluster list: {last:#?}{}",
            log_tails(logs)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agent_processes_come_back_after_the_hub_process_is_killed_without_resends() {
    let _alone = crate::support::alone().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fleet: Vec<LocalCluster> = fleet().expect("the local fleet is running");
    assert!(fleet.len() >= 2, "needs two clusters");
    let fleet = &fleet[..2];
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let data = dir.path().join("hub");
    let (api, quic) = (free_port(), free_port());
    let server = format!("http://127.0.0.1:{api}");
    let configmap = format!("done-when-{}", std::process::id());
    let repo = fleet_repo(dir.path(), &configmap);

    // Clusters are added on the data folder before the hub first starts.
    let mut joins = Vec::new();
    for cluster in fleet {
        let line = run(Command::new(binary("flotilla"))
            .args(["cluster", "add", cluster.name(), "--data-dir"])
            .arg(&data)
            .args(["--hub-address", &format!("127.0.0.1:{quic}")])
            .arg("--print-command"));
        joins.push((cluster.clone(), line));
    }

    let mut hub = Child::spawn("hub-1", &mut hub_command(&data, api, quic), &logs);
    let mut agents = Vec::new();
    for (cluster, line) in &joins {
        let mut command = Command::new(binary("flotilla-agent"));
        command
            .args(["--cluster", &flag(line, "cluster")])
            .args(["--hub", &flag(line, "hub")])
            .args(["--ca-fingerprint", &flag(line, "ca-fingerprint")])
            .args(["--token", &flag(line, "token")])
            .arg("--state-dir")
            .arg(dir.path().join(format!("agent-{}", cluster.name())))
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig_path())
            .args(["--backoff-max-secs", "1"])
            .args([
                "--keep-alive-secs",
                "1",
                "--idle-timeout-secs",
                IDLE_TIMEOUT_SECS,
            ]);
        agents.push(Child::spawn(
            &format!("agent-{}", cluster.name()),
            &mut command,
            &logs,
        ));
    }

    // Log in and create one app per cluster with the CLI.
    let cli_home = dir.path().join("cli");
    let cli = |args: &[&str]| {
        let mut command = Command::new(binary("flotilla"));
        command
            .args(args)
            .env("XDG_CONFIG_HOME", &cli_home)
            .env("FLOTILLA_PASSWORD", PASSWORD);
        command
    };
    let start = Instant::now();
    while !cli(&["login", "--server", &server, "--username", "admin"])
        .output()
        .unwrap()
        .status
        .success()
    {
        hub.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the hub API never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Registered first: an app whose destination cluster is not registered yet
    // renders nothing until the repository's next poll.
    wait_for_clusters(
        &server,
        "both agents registered and connected",
        Duration::from_secs(60),
        &mut hub,
        &logs,
        |list| {
            fleet.iter().all(|c| {
                list.get(c.name())
                    .is_some_and(|c| c["link"]["state"] == "Connected")
            })
        },
    )
    .await;
    for cluster in fleet {
        let name = cluster.name();
        let manifest = dir.path().join(format!("app-{name}.yaml"));
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: done-when-{name}
  namespace: argocd
spec:
  project: default
  source:
    repoURL: file://{}
    targetRevision: main
    path: app
  destination:
    name: {name}
    namespace: default
  syncPolicy:
    automated: {{}}
",
                repo.display()
            ),
        )
        .unwrap();
        run(&mut cli(&[
            "app",
            "create",
            "-f",
            manifest.to_str().unwrap(),
        ]));
    }

    // Both bundles acknowledged as applied, and the objects are in the clusters.
    let acked = |list: &serde_json::Map<String, Value>| {
        fleet.iter().all(|c| {
            let Some(link) = list.get(c.name()).map(|c| &c["link"]) else {
                return false;
            };
            link["state"] == "Connected"
                && link["acks"][format!("default/done-when-{}", c.name())]["outcome"] == "Applied"
        })
    };
    let before = wait_for_clusters(
        &server,
        "both bundles acknowledged",
        Duration::from_secs(90),
        &mut hub,
        &logs,
        acked,
    )
    .await;
    for cluster in fleet {
        let configmaps = Api::<ConfigMap>::namespaced(cluster.client().await.unwrap(), "default");
        let applied = configmaps.get(&configmap).await.unwrap();
        assert_eq!(
            applied.data.unwrap()["greeting"],
            "hello",
            "{}",
            cluster.name()
        );
        assert_eq!(before[cluster.name()]["link"]["bundlesSentSinceStart"], 1);
    }

    // SIGKILL: no goodbye, no flush beyond what was already on disk.
    hub.kill();
    let killed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let killed = Instant::now();
    let mut hub = Child::spawn("hub-2", &mut hub_command(&data, api, quic), &logs);
    let back = |list: &serde_json::Map<String, Value>| {
        fleet.iter().all(|c| {
            let Some(link) = list.get(c.name()).map(|c| &c["link"]) else {
                return false;
            };
            link["state"] == "Connected"
                && link["lastSeenMs"]
                    .as_u64()
                    .is_some_and(|t| t >= killed_at_ms)
        })
    };
    wait_for_clusters(
        &server,
        "both agents back",
        Duration::from_secs(60),
        &mut hub,
        &logs,
        back,
    )
    .await;
    let returned = killed.elapsed();
    eprintln!(
        "both agents were back {returned:?} after the SIGKILL (idle timeout {IDLE_TIMEOUT_SECS} s)"
    );
    // Without the stateless reset they would wait out the idle timeout.
    assert!(
        returned < Duration::from_secs(15),
        "the agents waited for the idle timeout: {returned:?}"
    );
    // Give a resend, if there were one, time to happen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = wait_for_clusters(
        &server,
        "the cluster list",
        Duration::from_secs(10),
        &mut hub,
        &logs,
        back,
    )
    .await;
    for cluster in fleet {
        let name = cluster.name();
        let link = &after[name]["link"];
        assert_eq!(
            link["bundlesSentSinceStart"], 0,
            "{name} was sent again what it had applied: {link:#}"
        );
        assert_eq!(link["agentVersion"], flotilla_common::VERSION, "{link:#}");
        let app = format!("default/done-when-{name}");
        assert_eq!(
            link["acks"][&app]["generation"], before[name]["link"]["acks"][&app]["generation"],
            "{link:#}"
        );
    }
    for agent in &mut agents {
        agent.assert_running();
    }
    // The agents agree: each verified and applied one bundle in its life.
    for cluster in fleet {
        let log =
            std::fs::read_to_string(logs.join(format!("agent-{}.log", cluster.name()))).unwrap();
        assert_eq!(
            log.matches("bundle applied").count(),
            1,
            "{}: {log}",
            cluster.name()
        );
    }

    // Only what this test made is removed: the agents, the hub, the ConfigMaps.
    drop(agents);
    drop(hub);
    for cluster in fleet {
        let configmaps = Api::<ConfigMap>::namespaced(cluster.client().await.unwrap(), "default");
        let _ = configmaps.delete(&configmap, &Default::default()).await;
    }
}
