//! Benchmark: from `git commit` plus the forge's push webhook until the hub reports
//! a 50-object app Synced and Healthy at that commit on two local clusters.
//!
//! Not a timed test: run it on purpose, with two local clusters up,
//!
//! ```sh
//! FLOTILLA_TEST_CLUSTERS=east,west cargo test --release -p flotilla-hub \
//!     --test suite -- --ignored --nocapture sync_latency::
//! ```
//!
//! `FLOTILLA_BENCH_ROUNDS` sets the number of commits (30 by default). Each round
//! changes one value in each of the app's 30 ConfigMaps and, unless
//! `FLOTILLA_BENCH_CHANGE=config`, the image of its 10 Deployments too: a real
//! rollout on both clusters, whose pace kube-controller-manager's client rate limit
//! (20 requests/s by default) sets. Each round prints where the time went.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use fixture::*;
use serde_json::{Value, json};

use crate::support::ops as fixture;
use crate::support::source::WorkRepo;

const DEPLOYMENTS: usize = 10;
const SERVICES: usize = 10;
const CONFIG_MAPS: usize = 30;

/// The app's 50 objects for `round`.
fn objects(round: usize, images: bool) -> Vec<Value> {
    let image = if images { round } else { 0 };
    let mut objects = Vec::new();
    for i in 0..DEPLOYMENTS {
        objects.push(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": format!("web-{i}")},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": format!("web-{i}")}},
                "template": {
                    "metadata": {"labels": {"app": format!("web-{i}")}},
                    "spec": {"containers": [{"name": "web", "image": format!("registry.example/web:1.{image}")}]},
                },
            },
        }));
    }
    for i in 0..SERVICES {
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": format!("web-{i}")},
            "spec": {"selector": {"app": format!("web-{i}")}, "ports": [{"port": 80}]},
        }));
    }
    for i in 0..CONFIG_MAPS {
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": format!("settings-{i}")},
            "data": {"round": round.to_string()},
        }));
    }
    objects
}

/// Writes the objects to the repository, one JSON document each (JSON is YAML).
fn write_app(repo: &WorkRepo, round: usize, images: bool) {
    let text: String = objects(round, images)
        .iter()
        .map(|o| format!("---\n{o}\n"))
        .collect();
    repo.write("apps/fifty/objects.yaml", &text);
}

/// The peer: the same objects applied with server-side apply straight to each
/// cluster (what `kubectl apply --server-side` does), then waited on until every
/// Deployment has rolled out, on all clusters at once.
async fn apply_directly(fleet: &Fleet, namespace: &str, round: usize, images: bool) {
    use kube::api::{DynamicObject, Patch, PatchParams};
    use kube::discovery::ApiResource;
    let params = PatchParams::apply("bench-peer").force();
    let mut work = Vec::new();
    for member in &fleet.members {
        let kube = member.kube.clone();
        let params = params.clone();
        let namespace = namespace.to_owned();
        work.push(tokio::spawn(async move {
            for object in objects(round, images) {
                let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/')
                {
                    Some((g, v)) => (g.to_owned(), v.to_owned()),
                    None => (
                        String::new(),
                        object["apiVersion"].as_str().unwrap().to_owned(),
                    ),
                };
                let kind = object["kind"].as_str().unwrap();
                let gvk = kube::api::GroupVersionKind::gvk(&group, &version, kind);
                let resource = ApiResource::from_gvk(&gvk);
                let api = kube::Api::<DynamicObject>::namespaced_with(
                    kube.clone(),
                    &namespace,
                    &resource,
                );
                let name = object["metadata"]["name"].as_str().unwrap().to_owned();
                api.patch(&name, &params, &Patch::Apply(&object))
                    .await
                    .unwrap();
            }
            let deployments =
                kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(kube, &namespace);
            loop {
                let list = deployments.list(&Default::default()).await.unwrap();
                let rolled = list.items.len() == DEPLOYMENTS
                    && list.items.iter().all(|d| {
                        let generation = d.metadata.generation;
                        let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                        d.status.as_ref().is_some_and(|s| {
                            s.observed_generation == generation
                                && s.updated_replicas == Some(wanted)
                                && s.available_replicas == Some(wanted)
                                && s.replicas == Some(wanted)
                        })
                    });
                if rolled {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for task in work {
        task.await.unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn commit_to_synced_and_healthy_on_two_clusters() {
    let _alone = crate::support::alone().await;
    let rounds: usize = std::env::var("FLOTILLA_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let fleet = Fleet::start_on(2).await;
    let namespace = format!("bench-{}", std::process::id());
    let repo = WorkRepo::new();
    let images = std::env::var("FLOTILLA_BENCH_CHANGE").as_deref() != Ok("config");
    write_app(&repo, 0, images);
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
    // Where the time goes, per round: the hub has rendered and signed the new
    // bundles (their revision is the commit), the agents have reported on that
    // generation, and both are Synced and Healthy.
    let mut rendered = Vec::new();
    let mut reported = Vec::new();
    for round in 1..=rounds {
        write_app(&repo, round, images);
        let start = Instant::now();
        let commit = repo.commit(&format!("round {round}"));
        assert_eq!(fleet.push_webhook(&repo).await, 202);
        let (mut rendered_at, mut reported_at) = (None, None);
        loop {
            let mut states = Vec::new();
            for app in &apps {
                states.push(fleet.app(app).await);
            }
            let cluster = |a: &Value| a["status"]["clusters"][0].clone();
            if rendered_at.is_none()
                && states
                    .iter()
                    .all(|a| cluster(a)["revision"] == commit.as_str())
            {
                rendered_at = Some(start.elapsed());
            }
            if reported_at.is_none()
                && rendered_at.is_some()
                && states.iter().all(|a| {
                    let c = cluster(a);
                    c["reportedGeneration"] == c["generation"]
                })
            {
                reported_at = Some(start.elapsed());
            }
            if states.iter().all(|a| ready(a, &commit)) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "round {round} did not converge in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = start.elapsed();
        let rendered_at = rendered_at.unwrap_or(elapsed);
        let reported_at = reported_at.unwrap_or(elapsed);
        println!(
            "round {round:>3}: {:>6} ms (rendered and signed {:>5} ms, first report on it {:>5} ms)",
            elapsed.as_millis(),
            rendered_at.as_millis(),
            reported_at.as_millis()
        );
        took.push(elapsed);
        rendered.push(rendered_at);
        reported.push(reported_at);
    }
    // The peer, in the same run, into a namespace of its own on each cluster.
    let peer_namespace = format!("{namespace}-peer");
    for member in &fleet.members {
        let namespaces =
            kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(member.kube.clone());
        namespaces
            .create(
                &Default::default(),
                &serde_json::from_value(json!({"metadata": {"name": peer_namespace}})).unwrap(),
            )
            .await
            .unwrap();
    }
    apply_directly(&fleet, &peer_namespace, 0, images).await;
    let mut peer = Vec::new();
    for round in 1..=rounds {
        let start = Instant::now();
        apply_directly(&fleet, &peer_namespace, round, images).await;
        peer.push(start.elapsed());
        println!(
            "peer round {round:>3}: {:>6} ms",
            start.elapsed().as_millis()
        );
    }
    peer.sort();
    println!(
        "peer (server-side apply of the same objects straight to both clusters, then every Deployment rolled out): p50 {} ms, p99 {} ms, max {} ms",
        percentile(&peer, 50.0).as_millis(),
        percentile(&peer, 99.0).as_millis(),
        peer.last().unwrap().as_millis()
    );

    rendered.sort();
    reported.sort();
    println!(
        "median: rendered and signed {} ms, agents reported on it {} ms",
        percentile(&rendered, 50.0).as_millis(),
        percentile(&reported, 50.0).as_millis()
    );
    took.sort();
    println!(
        "commit + webhook -> Synced and Healthy on {} clusters, {} objects ({}), {rounds} rounds: p50 {} ms, p99 {} ms, max {} ms (loadavg {})",
        fleet.members.len(),
        DEPLOYMENTS + SERVICES + CONFIG_MAPS,
        if images {
            "new images and config"
        } else {
            "config only"
        },
        percentile(&took, 50.0).as_millis(),
        percentile(&took, 99.0).as_millis(),
        took.last().unwrap().as_millis(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    for member in &fleet.members {
        let namespaces =
            kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(member.kube.clone());
        for ns in [&namespace, &peer_namespace] {
            let _ = namespaces.delete(ns, &Default::default()).await;
        }
    }
    fleet.stop(&[]).await;
}
