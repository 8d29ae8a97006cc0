//! Benchmark: from `git commit` plus the forge's push webhook until the hub reports
//! a 50-object app Synced and Healthy at that commit on two local clusters.
//!
//! Not a timed test: run it on purpose, with two local clusters up,
//!
//! ```sh
//! FLOTILLA_TEST_CLUSTERS=east,west cargo test --release -p flotilla-hub \
//!     --test sync_latency -- --ignored --nocapture
//! ```
//!
//! `FLOTILLA_BENCH_ROUNDS` sets the number of commits (30 by default). Each round
//! changes the image of the app's 10 Deployments (a real rollout on both clusters)
//! and one value in each of its 30 ConfigMaps.

#![allow(clippy::unwrap_used)]

#[path = "ops/fixture.rs"]
mod fixture;

use std::time::{Duration, Instant};

use fixture::source_fixture::WorkRepo;
use fixture::*;
use serde_json::Value;

const DEPLOYMENTS: usize = 10;
const SERVICES: usize = 10;
const CONFIG_MAPS: usize = 30;

fn write_app(repo: &WorkRepo, round: usize) {
    let mut text = String::new();
    for i in 0..DEPLOYMENTS {
        text.push_str(&format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web-{i}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: web-{i}}}\n  template:\n    metadata:\n      labels: {{app: web-{i}}}\n    spec:\n      containers:\n        - name: web\n          image: registry.example/web:1.{round}\n"
        ));
    }
    for i in 0..SERVICES {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web-{i}\nspec:\n  selector: {{app: web-{i}}}\n  ports: [{{port: 80}}]\n"
        ));
    }
    for i in 0..CONFIG_MAPS {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings-{i}\ndata:\n  round: \"{round}\"\n"
        ));
    }
    repo.write("apps/fifty/objects.yaml", &text);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn commit_to_synced_and_healthy_on_two_clusters() {
    let rounds: usize = std::env::var("FLOTILLA_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let fleet = Fleet::start_on(2).await;
    let namespace = format!("bench-{}", std::process::id());
    let repo = WorkRepo::new();
    write_app(&repo, 0);
    repo.commit("round 0");
    let apps: Vec<String> = fleet
        .members
        .iter()
        .map(|m| format!("fifty-{}", m.name))
        .collect();
    for (member, app) in fleet.members.iter().zip(&apps) {
        let manifest = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {app}}}\nspec:\n  project: default\n  source: {{repoURL: 'file://{}', path: apps/fifty, targetRevision: main}}\n  destination: {{name: {}, namespace: {namespace}}}\n  syncPolicy:\n    automated: {{prune: true, selfHeal: true}}\n    syncOptions: [CreateNamespace=true]\n",
            repo.path().display(),
            member.name
        );
        let (status, body) = fleet.create_manifest(&manifest).await;
        assert_eq!(status, 201, "{body}");
    }
    let ready = |app: &Value, commit: &str| {
        let s = &app["status"];
        s["sync"] == "Synced"
            && s["health"] == "Healthy"
            && s["clusters"][0]["revision"] == commit
            && s["clusters"][0]["resources"].as_array().map(Vec::len)
                == Some(DEPLOYMENTS + SERVICES + CONFIG_MAPS)
    };
    let head = repo.head();
    for app in &apps {
        fleet
            .wait_status(app, "the first sync", |s| {
                ready(&serde_json::json!({ "status": s }), &head)
            })
            .await;
    }

    let mut took = Vec::new();
    for round in 1..=rounds {
        write_app(&repo, round);
        let start = Instant::now();
        let commit = repo.commit(&format!("round {round}"));
        assert_eq!(fleet.push_webhook(&repo).await, 202);
        let mut pending: Vec<&String> = apps.iter().collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for app in pending {
                if !ready(&fleet.app(app).await, &commit) {
                    still.push(app);
                }
            }
            pending = still;
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "round {round} did not converge in 120 s"
            );
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let elapsed = start.elapsed();
        println!("round {round:>3}: {:>6} ms", elapsed.as_millis());
        took.push(elapsed);
    }
    took.sort();
    println!(
        "commit + webhook -> Synced and Healthy on {} clusters, {} objects, {rounds} rounds: p50 {} ms, p99 {} ms, max {} ms (loadavg {})",
        fleet.members.len(),
        DEPLOYMENTS + SERVICES + CONFIG_MAPS,
        percentile(&took, 50.0).as_millis(),
        percentile(&took, 99.0).as_millis(),
        took.last().unwrap().as_millis(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    for member in &fleet.members {
        let _ = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(member.kube.clone())
            .delete(&namespace, &Default::default())
            .await;
    }
    fleet.stop(&[]).await;
}
