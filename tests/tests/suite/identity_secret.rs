//! The agent's identity kept in a Secret of a real cluster (`Keeper::Secret`):
//! saved, read back, overwritten, kept across an agent restart, and a clear error
//! when the agent may not touch the Secret or the apiserver is not there.

#![allow(clippy::unwrap_used)]

use std::error::Error as _;
use std::time::Duration;

use fixture::{Hub, agent_config};
use flotilla_agent::identity::{self, Identity, Keeper};
use flotilla_agent::link::{AckOnly, Agent};
use flotilla_common::signing::KeySet;
use flotilla_tests::{LocalCluster, fleet};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::support::link as fixture;

const SECRET: &str = "flotilla-agent-identity";

/// A namespace of our own on the first cluster, deleted when the test ends.
struct Scratch {
    client: kube::Client,
    namespace: String,
}

impl Scratch {
    async fn new(cluster: &LocalCluster, test: &str) -> Scratch {
        let client = cluster.client().await.unwrap();
        let namespace = format!("flotilla-id-{test}-{}", std::process::id());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        Scratch { client, namespace }
    }

    fn keeper(&self, client: kube::Client) -> Keeper {
        Keeper::Secret {
            client,
            namespace: self.namespace.clone(),
            name: SECRET.to_owned(),
        }
    }

    async fn delete(self) {
        let _ = Api::<Namespace>::all(self.client)
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

fn identity(cluster: &str, certificate: Vec<u8>) -> Identity {
    let key = identity::new_key().unwrap();
    Identity {
        cluster: cluster.to_owned(),
        ca_fingerprint: "ab".repeat(32),
        key_pkcs8: key.pkcs8,
        certificate,
        key_set: KeySet::new(1, &[key.public_key]).unwrap(),
    }
}

fn first_cluster() -> LocalCluster {
    fleet().expect("the local fleet is running").remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_secret_is_saved_read_back_and_overwritten() {
    let cluster = first_cluster();
    let scratch = Scratch::new(&cluster, "save").await;
    let keeper = scratch.keeper(scratch.client.clone());

    // No Secret yet: not registered, not an error.
    assert_eq!(keeper.load().await.unwrap(), None);

    let first = identity("east", vec![1, 2, 3]);
    keeper.save(&first).await.unwrap();
    assert_eq!(keeper.load().await.unwrap(), Some(first.clone()));

    // The Secret holds exactly the identity, as an Opaque Secret the agent owns.
    let secrets = Api::<Secret>::namespaced(scratch.client.clone(), &scratch.namespace);
    let secret = secrets.get(SECRET).await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let data = secret.data.clone().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), vec!["identity.json"]);
    let stored: Identity = serde_json::from_slice(&data["identity.json"].0).unwrap();
    assert_eq!(stored, first);
    let managers: Vec<String> = secret
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, vec!["flotilla-agent".to_owned()]);

    // A second save replaces the first whole, in the same Secret.
    let second = identity("east", vec![4, 5, 6]);
    keeper.save(&second).await.unwrap();
    assert_eq!(keeper.load().await.unwrap(), Some(second.clone()));
    let secret = secrets.get(SECRET).await.unwrap();
    assert_eq!(secret.data.unwrap().len(), 1);

    // A new client (a restarted process) reads the same identity.
    let fresh = scratch.keeper(cluster.client().await.unwrap());
    assert_eq!(fresh.load().await.unwrap(), Some(second));
    scratch.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeping_its_identity_in_a_secret_comes_back_after_a_restart() {
    let cluster = first_cluster();
    let scratch = Scratch::new(&cluster, "restart").await;
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let state_dir = tempfile::tempdir().unwrap();

    let run = |token: Option<String>| {
        let config = agent_config(&hub, "east", token, state_dir.path());
        let agent = Agent::new(config, AckOnly)
            .unwrap()
            .with_keeper(scratch.keeper(scratch.client.clone()));
        let state = agent.state();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        (state, stop, tokio::spawn(agent.run(stopped)))
    };
    let wait_connected = |mut state: tokio::sync::watch::Receiver<_>| async move {
        tokio::time::timeout(
            Duration::from_secs(20),
            state.wait_for(|s: &flotilla_agent::link::LinkState| s.connected),
        )
        .await
        .unwrap()
        .unwrap();
    };

    let (state, stop, task) = run(Some(hub.add("east").await));
    wait_connected(state).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    // The identity is in the Secret, not in the state folder.
    assert!(!state_dir.path().join("identity.json").exists());
    let kept = scratch
        .keeper(scratch.client.clone())
        .load()
        .await
        .unwrap()
        .unwrap();
    let certificate = flotilla_hub::ca::fingerprint(&kept.certificate);
    assert_eq!(
        hub.store.link("east").unwrap().unwrap().cert_sha256,
        certificate
    );

    // Restarted without a token (it is spent): the Secret's identity connects.
    let (state, stop, task) = run(None);
    wait_connected(state).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(
        hub.store.link("east").unwrap().unwrap().cert_sha256,
        certificate
    );
    hub.stop().await;
    scratch.delete().await;
}

/// The chain of causes of `error`, as one string.
fn causes(error: &identity::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_secret_fails_clearly_without_rbac_or_without_an_apiserver() {
    let cluster = first_cluster();
    let scratch = Scratch::new(&cluster, "denied").await;

    // A service account with no role at all, as an agent installed without its RBAC.
    let accounts = Api::<ServiceAccount>::namespaced(scratch.client.clone(), &scratch.namespace);
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "no-rights"}})).unwrap();
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let keeper = scratch.keeper(
        cluster
            .client_as(&scratch.namespace, "no-rights")
            .await
            .unwrap(),
    );
    let secret = format!("{}/{SECRET}", scratch.namespace);

    let error = keeper.load().await.unwrap_err();
    let text = causes(&error);
    assert!(
        text.starts_with(&format!(
            "failed to read the agent identity Secret {secret}"
        )),
        "{text}"
    );
    assert!(text.contains("forbidden"), "{text}");
    let error = keeper.save(&identity("east", vec![1])).await.unwrap_err();
    let text = causes(&error);
    assert!(
        text.starts_with(&format!(
            "failed to write the agent identity Secret {secret}"
        )),
        "{text}"
    );
    assert!(text.contains("forbidden"), "{text}");
    // Nothing was written.
    assert!(
        Api::<Secret>::namespaced(scratch.client.clone(), &scratch.namespace)
            .get_opt(SECRET)
            .await
            .unwrap()
            .is_none()
    );

    // No apiserver on the other end: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut config = kube::Config::new(format!("https://127.0.0.1:{port}").parse().unwrap());
    config.connect_timeout = Some(Duration::from_secs(2));
    let keeper = scratch.keeper(kube::Client::try_from(config).unwrap());
    let error = keeper.load().await.unwrap_err();
    let text = causes(&error);
    assert!(
        text.starts_with(&format!(
            "failed to read the agent identity Secret {secret}"
        )),
        "{text}"
    );
    assert!(
        text.to_lowercase().contains("connect") || text.to_lowercase().contains("refused"),
        "{text}"
    );
    scratch.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_kept_in_the_secret_before_it_is_used() {
    let cluster = first_cluster();
    let scratch = Scratch::new(&cluster, "renew").await;
    let hub_dir = tempfile::tempdir().unwrap();
    let mut link = flotilla_hub::link::LinkConfig::new("127.0.0.1:0".parse().unwrap());
    link.cert_lifetime = Duration::from_secs(6);
    let hub = Hub::start_with(hub_dir.path(), link).await;
    let state_dir = tempfile::tempdir().unwrap();
    let config = agent_config(&hub, "east", Some(hub.add("east").await), state_dir.path());
    let agent = Agent::new(config, AckOnly)
        .unwrap()
        .with_keeper(scratch.keeper(scratch.client.clone()));
    let mut state = agent.state();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent.run(stopped));
    tokio::time::timeout(Duration::from_secs(20), state.wait_for(|s| s.renewals == 1))
        .await
        .unwrap()
        .unwrap();
    let kept = scratch
        .keeper(scratch.client.clone())
        .load()
        .await
        .unwrap()
        .unwrap();
    let link = hub.store.link("east").unwrap().unwrap();
    assert_eq!(
        flotilla_hub::ca::fingerprint(&kept.certificate),
        link.cert_sha256
    );
    assert!(link.previous_cert_sha256.is_some());
    assert!(!state_dir.path().join("identity.json").exists());
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    hub.stop().await;
    scratch.delete().await;
}
