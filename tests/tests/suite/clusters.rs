//! The local fleet is real: every cluster runs a Deployment to Available through
//! server-side apply, and each has its own identity.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_tests::{LocalCluster, fleet};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use serde_json::json;

const FIELD_MANAGER: &str = "flotilla-tests";

#[tokio::test]
async fn every_cluster_runs_a_deployment_to_available_and_has_its_own_kube_system_uid() {
    let clusters = fleet().expect("the local fleet is running");
    assert!(
        clusters.len() >= 2,
        "a fleet of two is the smallest real test, got {}",
        clusters.len()
    );

    let mut identities = BTreeMap::new();
    for cluster in &clusters {
        let client = cluster.client().await.expect("client");
        deploy_until_available(cluster, client.clone())
            .await
            .unwrap_or_else(|e| panic!("cluster {}: {e:#}", cluster.name()));

        let kube_system = Api::<Namespace>::all(client)
            .get("kube-system")
            .await
            .unwrap_or_else(|e| panic!("cluster {}: reading kube-system: {e}", cluster.name()));
        let uid = kube_system.metadata.uid.expect("kube-system has a uid");
        if let Some(other) = identities.insert(uid.clone(), cluster.name().to_owned()) {
            panic!(
                "clusters {other} and {} report the same kube-system uid {uid}",
                cluster.name()
            );
        }
    }
    assert_eq!(identities.len(), clusters.len());
}

async fn deploy_until_available(cluster: &LocalCluster, client: Client) -> anyhow::Result<()> {
    let ns = format!("flotilla-smoke-{}", std::process::id());
    let apply = PatchParams::apply(FIELD_MANAGER).force();

    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .patch(
            &ns,
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ),
        )
        .await
        .context("applying the namespace")?;

    let deployments = Api::<Deployment>::namespaced(client, &ns);
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
            }
        }
    });
    let applied = deployments
        .patch("web", &apply, &Patch::Apply(deployment))
        .await
        .context("server-side applying the Deployment")?;
    let managers: Vec<_> = applied
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.as_deref())
        .collect();
    anyhow::ensure!(
        managers.contains(&FIELD_MANAGER),
        "the Deployment was not applied by field manager {FIELD_MANAGER}: {managers:?}"
    );

    let generation = applied.metadata.generation.unwrap_or_default();
    tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(deployments.clone(), "web", move |d: Option<&Deployment>| {
            d.is_some_and(|d| is_available(d, generation))
        }),
    )
    .await
    .with_context(|| {
        format!(
            "the Deployment did not become Available within 120 s (logs: {})",
            cluster.dir().join("logs").display()
        )
    })?
    .context("watching the Deployment")?;

    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .context("deleting the test namespace")?;
    Ok(())
}

/// Available as `kubectl rollout status` would say: the controller saw this
/// generation, every replica is updated and available, and the Available condition holds.
fn is_available(d: &Deployment, generation: i64) -> bool {
    let (Some(spec), Some(status)) = (&d.spec, &d.status) else {
        return false;
    };
    let want = spec.replicas.unwrap_or(1);
    let condition = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Available" && c.status == "True");
    status.observed_generation.unwrap_or_default() >= generation
        && status.updated_replicas.unwrap_or_default() == want
        && status.available_replicas.unwrap_or_default() == want
        && status.replicas.unwrap_or_default() == want
        && condition
}
