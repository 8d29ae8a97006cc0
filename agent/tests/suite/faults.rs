//! An apiserver restart in the middle of a sync, on a cluster of the test's own
//! (the fleet's clusters stay up for the other tests): the sync fails cleanly or
//! finishes, a retry converges, and the PreSync hook does not run twice.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::apply::{Applier, HookOutcome, Options};
use flotilla_agent::store::Store;
use flotilla_tests::LocalCluster;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use support::{bundle, config_map, deployment, unique};

use crate::support;

fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/cluster")
}

/// Stops the test's own cluster however the test ends.
struct ClusterGuard(String);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = Command::new(cluster_script())
            .args(["down", &self.0])
            .status();
    }
}

/// Stops this cluster's `component` (a process `tests/cluster up`, run by this
/// test, started and recorded) and returns its command line.
fn stop_component(dir: &Path, component: &str) -> Vec<String> {
    let pid = std::fs::read_to_string(dir.join(format!("pids/{component}"))).unwrap();
    let pid = pid.trim().to_owned();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    // NUL-terminated arguments; an empty one (etcd's `--listen-metrics-urls ""`)
    // is an argument too.
    let args: Vec<String> = cmdline
        .strip_suffix(&[0])
        .unwrap_or(&cmdline)
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    args
}

/// Starts `component` again with the same command line (and working folder) and
/// records its pid, so `tests/cluster down` stops the new process.
fn start_component(dir: &Path, component: &str, args: &[String], cwd: &Path) {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(format!("logs/{component}.log")))
        .unwrap();
    let child = Command::new(&args[0])
        .args(&args[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    std::fs::write(
        dir.join(format!("pids/{component}")),
        child.id().to_string(),
    )
    .unwrap();
    // Reap it when `tests/cluster down` stops it.
    let mut child = child;
    std::thread::spawn(move || child.wait());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_mid_sync_fails_cleanly_and_a_retry_converges() {
    let _alone = support::alone().await;
    restart_mid_sync("kube-apiserver").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_mid_sync_fails_cleanly_and_a_retry_converges() {
    let _alone = support::alone().await;
    restart_mid_sync("etcd").await;
}

/// Restarts `component` of the test's own cluster once the sync's PreSync hook
/// has run, then checks that the sync ends (failed or not, never hung), and a
/// retry converges without running the hook again.
async fn restart_mid_sync(component: &str) {
    let name = unique("restart");
    let up = Command::new(cluster_script())
        .args(["up", &name])
        .output()
        .unwrap();
    let _guard = ClusterGuard(name.clone());
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let cluster = LocalCluster::named(&name).unwrap();
    let client = cluster.client().await.unwrap();
    let ns = "app";
    support::create_namespace(&client, ns).await;

    let mut objects = vec![support::job(ns, "migrate", "PreSync", None, false)];
    for i in 0..100 {
        objects.push(config_map(ns, &format!("first-{i}")));
    }
    let mut d = deployment(ns, "web", 1);
    d.wave = 1;
    objects.push(d);
    for i in 0..100 {
        let mut cm = config_map(ns, &format!("last-{i}"));
        cm.wave = 2;
        objects.push(cm);
    }
    let b = bundle("app", 1, objects, None);
    let store_dir = std::env::temp_dir().join(unique("flotilla-agent-store"));
    let options = Options {
        wave_timeout: Duration::from_secs(30),
        hook_timeout: Duration::from_secs(30),
        parallelism: 16,
        ..Default::default()
    };

    let first = {
        let applier = Applier::new(
            client.clone(),
            &name,
            Store::open(&store_dir).unwrap(),
            options.clone(),
        );
        let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
        let sync = applier.sync(&b);
        tokio::pin!(sync);
        // Let the PreSync hook finish, then take the apiserver away mid-sync.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            tokio::select! {
                report = &mut sync => break report,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            let done = jobs
                .get_opt("migrate")
                .await
                .ok()
                .flatten()
                .is_some_and(|j| j.status.and_then(|s| s.succeeded).unwrap_or(0) > 0);
            if done {
                let pid = std::fs::read_to_string(cluster.dir().join(format!("pids/{component}")))
                    .unwrap();
                let cwd = std::fs::read_link(format!("/proc/{}/cwd", pid.trim())).unwrap();
                let args = stop_component(cluster.dir(), component);
                let stopped = Instant::now();
                tokio::time::sleep(Duration::from_secs(2)).await;
                start_component(cluster.dir(), component, &args, &cwd);
                let report = sync.await;
                eprintln!(
                    "{component} restart: the sync ended {:?} after the stop",
                    stopped.elapsed()
                );
                break report;
            }
            assert!(Instant::now() < deadline, "the hook never completed");
        }
    };
    eprintln!("sync across the {component} restart: {:?}", first.outcome);
    // A sync cut off from its apiserver says so, not that a kind is not served.
    let said = format!("{:?}", first.outcome);
    assert!(!said.contains("does not serve kind"), "{said}");
    assert_eq!(
        first.hook("migrate").unwrap().outcome,
        HookOutcome::Succeeded
    );

    // Wait for the apiserver to serve again, then retry as the agent would.
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    while maps.list(&ListParams::default().limit(1)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the cluster did not serve again after the {component} restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let applier = Applier::new(
        client.clone(),
        &name,
        Store::open(&store_dir).unwrap(),
        options,
    );
    let retried = Instant::now();
    let retry = applier.sync(&b).await;
    assert!(retry.succeeded(), "{:?}", retry.outcome);
    eprintln!(
        "{component} restart: the retry converged in {:?}",
        retried.elapsed()
    );
    assert_eq!(
        retry.hook("migrate").unwrap().outcome,
        HookOutcome::AlreadyRan
    );
    let count = maps.list(&ListParams::default()).await.unwrap().items.len();
    // 200 of ours plus kube-root-ca.crt.
    assert_eq!(count, 201);
    let _ = std::fs::remove_dir_all(&store_dir);
}
