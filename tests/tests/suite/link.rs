//! Done-when of issue 5, end to end: two agents, one per local cluster, register
//! with facts read from their real API servers, receive a bundle over real QUIC
//! with mutual TLS on 127.0.0.1, and come back after the hub is stopped and
//! restarted with nothing resent that they already applied.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fixture::{Hub, RunningAgent, eventually};
use flotilla_agent::link::AgentConfig;
use flotilla_tests::fleet;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

use crate::support::link as fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_register_receive_a_bundle_and_return_after_a_hub_restart_without_resends() {
    let clusters = fleet().expect("the local fleet is running");
    assert!(
        clusters.len() >= 2,
        "needs two clusters, got {}",
        clusters.len()
    );
    let clusters = &clusters[..2];
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = hub.addr;

    let mut agents = Vec::new();
    let mut state_dirs = Vec::new();
    for cluster in clusters {
        let name = cluster.name().to_owned();
        let client = cluster.client().await.unwrap();
        let url = cluster.server_url().await.unwrap();
        let facts = flotilla_agent::facts::read(client, url).await.unwrap();
        assert!(!facts.api_resources.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::new(
            addr,
            hub.fingerprint.clone(),
            name.clone(),
            dir.path().to_owned(),
        );
        config.token = Some(hub.add(&name).await);
        config.facts = facts;
        config.backoff_initial = Duration::from_millis(100);
        config.backoff_max = Duration::from_secs(2);
        agents.push((name, config.clone(), RunningAgent::start(config)));
        state_dirs.push(dir);
    }
    for (name, _, agent) in &mut agents {
        agent
            .wait(&format!("{name} connected"), |s| s.connected)
            .await;
    }
    // The hub knows each cluster by the facts its real API server gave.
    for cluster in clusters {
        let client = cluster.client().await.unwrap();
        let uid = Api::<Namespace>::all(client)
            .get("kube-system")
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap();
        let record = hub.store.cluster(cluster.name()).unwrap().unwrap();
        let facts = record.facts.unwrap();
        assert_eq!(facts.kube_system_uid, uid);
        assert!(
            facts.kubernetes_version.starts_with("v1."),
            "{}",
            facts.kubernetes_version
        );
    }

    // One bundle per cluster; both acks arrive with the digests sent.
    let mut digests = Vec::new();
    for (name, _, _) in &agents {
        digests.push(hub.publish(name, "guestbook", 1, 5).await.digest);
    }
    for ((name, _, agent), digest) in agents.iter_mut().zip(&digests) {
        agent
            .wait("applied", |s| s.applied.iter().any(|a| a.generation == 1))
            .await;
        eventually(&format!("{name}'s ack"), Duration::from_secs(10), || {
            hub.store
                .link(name)
                .unwrap()
                .unwrap()
                .acks
                .get("default/guestbook")
                .is_some_and(|a| {
                    a.generation == 1
                        && a.digest == digest.to_string()
                        && a.outcome == flotilla_common::message::BundleOutcome::Applied
                })
        })
        .await;
    }

    // Stop and restart the hub on the same data and port.
    hub.stop().await;
    for (name, _, agent) in &mut agents {
        agent
            .wait(&format!("{name} lost the hub"), |s| !s.connected)
            .await;
    }
    let hub = Hub::start(hub_dir.path(), addr).await;
    for (name, _, agent) in &mut agents {
        agent
            .wait(&format!("{name} back"), |s| s.connected && s.sessions == 2)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for view in hub.link.clusters().unwrap() {
        assert!(view.connected, "{view:?}");
        assert_eq!(
            view.bundles_sent, 0,
            "{} was sent again what it had applied",
            view.cluster
        );
        assert_eq!(
            view.agent_version.as_deref(),
            Some(flotilla_common::VERSION)
        );
    }
    for (_, _, agent) in &agents {
        assert_eq!(agent.state.borrow().bundles_received, 1);
    }

    // Something new still flows after the restart.
    let (first, _, _) = &agents[0];
    hub.publish(first, "guestbook", 2, 5).await;
    agents[0]
        .2
        .wait("generation 2", |s| {
            s.applied.iter().any(|a| a.generation == 2)
        })
        .await;
    assert_eq!(agents[0].2.state.borrow().bundles_received, 2);
    assert_eq!(agents[1].2.state.borrow().bundles_received, 1);

    for (_, _, agent) in agents {
        agent.stop().await.unwrap();
    }
    hub.stop().await;
}

/// The whole path on a real cluster: a bundle the hub stores is pushed over QUIC,
/// verified by the agent, applied by its engine with server-side apply, acknowledged,
/// and reported Synced and Healthy back to the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_travels_from_the_hub_store_into_a_real_cluster_and_reports_back() {
    use flotilla_common::model::{Health, SyncStatus};
    use k8s_openapi::api::core::v1::ConfigMap;

    let cluster = fleet().expect("the local fleet is running").remove(0);
    let name = cluster.name().to_owned();
    let client = cluster.client().await.unwrap();
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let url = cluster.server_url().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(
        hub.addr,
        hub.fingerprint.clone(),
        name.clone(),
        dir.path().to_owned(),
    );
    config.token = Some(hub.add(&name).await);
    config.facts = flotilla_agent::facts::read(client.clone(), url)
        .await
        .unwrap();
    config.backoff_initial = Duration::from_millis(100);
    let inventory = flotilla_agent::store::Store::open(&dir.path().join("inventory")).unwrap();
    let applier = flotilla_agent::apply::Applier::new(
        client.clone(),
        name.clone(),
        inventory,
        flotilla_agent::apply::Options::default(),
    );
    let mut agent = RunningAgent::start_with(config, flotilla_agent::engine::Engine::new(applier));
    agent.wait("connected", |s| s.connected).await;

    let app = format!("e2e-{}", std::process::id());
    let digest = hub.publish(&name, &app, 1, 3).await.digest;
    agent
        .wait("applied", |s| s.applied.iter().any(|a| a.generation == 1))
        .await;
    eventually("the ack", Duration::from_secs(20), || {
        hub.store
            .link(&name)
            .unwrap()
            .unwrap()
            .acks
            .get(&format!("default/{app}"))
            .is_some_and(|a| {
                a.digest == digest.to_string()
                    && a.outcome == flotilla_common::message::BundleOutcome::Applied
            })
    })
    .await;

    let configmaps = Api::<ConfigMap>::namespaced(client, "default");
    for i in 0..3 {
        let cm = configmaps.get(&format!("cm-{i}")).await.unwrap();
        let managers: Vec<_> = cm
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert!(managers.iter().any(|m| m == "flotilla"), "{managers:?}");
    }
    eventually(
        "a Synced, Healthy status on the hub",
        Duration::from_secs(20),
        || {
            hub.store
                .status("default", &app, &name)
                .unwrap()
                .is_some_and(|r| {
                    r.status.sync == SyncStatus::Synced && r.status.health == Health::Healthy
                })
        },
    )
    .await;

    agent.stop().await.unwrap();
    hub.stop().await;
    for i in 0..3 {
        let _ = configmaps
            .delete(&format!("cm-{i}"), &Default::default())
            .await;
    }
}
