//! The issue's speed benchmark, run by hand on a fresh cluster of its own:
//!
//! ```sh
//! cargo test -p flotilla-agent --release --test suite -- --ignored --nocapture bench::
//! ```
//!
//! 1,000 objects (500 ConfigMaps in wave 0, 250 Deployments of 0 replicas in
//! wave 1, 250 Services in wave 2) are applied with `kubectl apply --server-side` into one
//! namespace and by Flotilla into another, then re-synced unchanged, then drifted.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::drift::{self, Change, Monitor};
use flotilla_common::bundle::Object;
use flotilla_tests::LocalCluster;
use support::{bundle, config_map, deployment};

use crate::support;

/// Stops the benchmark's own cluster however the test ends.
struct ClusterGuard(String);

fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/cluster")
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = Command::new(cluster_script())
            .args(["down", &self.0])
            .status();
    }
}

fn objects(ns: &str) -> Vec<Object> {
    let mut objects = Vec::new();
    for i in 0..500 {
        objects.push(config_map(ns, &format!("cm-{i}")));
    }
    for i in 0..250 {
        // The fake node takes 110 pods, so the Deployments run no pods; the
        // deployment controller must still observe and report each one.
        let mut d = deployment(ns, &format!("web-{i}"), 0);
        d.wave = 1;
        objects.push(d);
        // Headless: the test clusters' service IP range holds fewer than 500.
        let mut s = headless_service(ns, &format!("web-{i}"));
        s.wave = 2;
        objects.push(s);
    }
    objects
}

fn headless_service(ns: &str, name: &str) -> Object {
    support::object(serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "None", "selector": {"app": name},
            "ports": [{"port": 80, "protocol": "TCP"}]}}))
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: starts its own cluster; run by hand with --ignored --nocapture"]
async fn bench_thousand_objects_against_kubectl_server_side() {
    let _alone = support::alone().await;
    let name = support::unique("bench");
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
    support::create_namespace(&client, "by-kubectl").await;
    support::create_namespace(&client, "by-flotilla").await;

    // The same objects as files, one per wave, for kubectl.
    let dir = std::env::temp_dir().join(support::unique("bench-files"));
    std::fs::create_dir_all(&dir).unwrap();
    for wave in 0..3 {
        let items: Vec<serde_json::Value> = objects("by-kubectl")
            .iter()
            .filter(|o| o.wave == wave)
            .map(|o| o.manifest_json().unwrap())
            .collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        std::fs::write(dir.join(format!("wave-{wave}.json")), list.to_string()).unwrap();
    }
    let started = Instant::now();
    let out = support::kubectl_command(&cluster)
        .args([
            "apply",
            "--server-side",
            "--field-manager",
            "kubectl-bench",
            "-f",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let kubectl = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Same end state as a sync: every Deployment observed and Available. This
    // also leaves the controller idle before Flotilla starts.
    let out = support::kubectl_command(&cluster)
        .args(["-n", "by-kubectl", "wait", "--for=condition=Available"])
        .args(["deployment", "--all", "--timeout=120s"])
        .output()
        .unwrap();
    let kubectl_available = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let applier = Arc::new(flotilla_agent::apply::Applier::new(
        client.clone(),
        "bench",
        flotilla_agent::store::Store::temporary().unwrap(),
        flotilla_agent::apply::Options {
            wave_timeout: Duration::from_secs(120),
            ..Default::default()
        },
    ));
    let b = Arc::new(bundle("bench", 1, objects("by-flotilla"), None));
    let started = Instant::now();
    let report = applier.sync(&b).await;
    let flotilla = started.elapsed();
    assert!(report.succeeded(), "{:?}", report.outcome);
    assert_eq!(report.writes, 1000);

    let started = Instant::now();
    let resync = applier
        .sync(&bundle("bench", 2, objects("by-flotilla"), None))
        .await;
    let resync_time = started.elapsed();
    assert!(resync.succeeded(), "{:?}", resync.outcome);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let monitor = Monitor::start(
        applier.clone(),
        b.clone(),
        drift::Options::for_bundle(&b),
        tx,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}
    let edited = Instant::now();
    let out = support::kubectl_command(&cluster)
        .args([
            "-n",
            "by-flotilla",
            "patch",
            "deployment",
            "web-7",
            "--field-manager",
            "kubectl-edit",
            "-p",
            r#"{"spec":{"replicas":1}}"#,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let drift_latency = loop {
        let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if matches!(r.change, Change::Drifted(_)) {
            break edited.elapsed();
        }
    };
    let rss = rss_kib();
    drop(monitor);

    eprintln!("kubectl apply --server-side, 1000 objects: {kubectl:?}");
    eprintln!("flotilla sync (3 waves, waits for health), 1000 objects: {flotilla:?}");
    eprintln!("kubectl apply --server-side + wait Available: {kubectl_available:?}");
    let applying: Duration = report.waves.iter().map(|w| w.applied).sum();
    for w in &report.waves {
        eprintln!(
            "  wave {}: {} objects applied in {:?}, healthy {:?} later",
            w.wave, w.objects, w.applied, w.healthy
        );
    }
    eprintln!(
        "ratio, applying only: {:.2} ({applying:?} / {kubectl:?})",
        applying.as_secs_f64() / kubectl.as_secs_f64()
    );
    eprintln!(
        "ratio, until healthy: {:.2} ({flotilla:?} / {kubectl_available:?})",
        flotilla.as_secs_f64() / kubectl_available.as_secs_f64()
    );
    eprintln!(
        "no-change re-sync: {resync_time:?}, {} writes",
        resync.writes
    );
    eprintln!("drift noticed {drift_latency:?} after kubectl patch returned");
    eprintln!(
        "test process RSS (agent engine + test harness): {} MiB",
        rss / 1024
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(resync.writes, 0);
}
