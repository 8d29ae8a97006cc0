//! An agent installed with `flotilla cluster add --namespaces`: the manifest's RBAC,
//! applied to a real cluster, lets it act in its namespaces only, and the agent
//! applies there, watches there, and refuses a bundle that reaches anywhere else
//! before it writes anything.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use flotilla_agent::apply::{Applier, Options, Reach};
use flotilla_agent::engine::Engine;
use flotilla_agent::store::Store;
use flotilla_common::bundle::{Automated, Bundle, Object, Source, SyncPolicy};
use flotilla_common::message::{BundleOutcome, Rejection};
use flotilla_common::model::{AppRef, Gvk, Timestamp};
use flotilla_common::project::ProjectRules;
use flotilla_hub::cluster::{self, JoinInfo};
use flotilla_tests::{LocalCluster, fleet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The install manifest's RBAC for an agent limited to `namespaces`, applied with
/// kubectl as an admin would (the bootstrap Secret and the Deployment left out:
/// the agent runs in this test process).
fn install_rbac(cluster: &LocalCluster, namespaces: &[String]) {
    let join = JoinInfo {
        cluster: "east",
        hub_address: "127.0.0.1:7443",
        ca_fingerprint: "ab12",
        token: "unused",
        image: cluster::DEFAULT_AGENT_IMAGE,
        namespaces,
        storage_class: None,
    };
    let documents: Vec<Value> = serde_saphyr::from_multiple(&cluster::manifest(&join)).unwrap();
    let items: Vec<Value> = documents
        .into_iter()
        .filter(|d| !matches!(d["kind"].as_str(), Some("Secret" | "Deployment")))
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let mut kubectl = std::process::Command::new(flotilla_tests::tool("kubectl").unwrap())
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args([
            "apply",
            "--server-side",
            "--field-manager",
            "flotilla-tests",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    kubectl
        .stdin
        .take()
        .unwrap()
        .write_all(list.to_string().as_bytes())
        .unwrap();
    let out = kubectl.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn object(manifest: Value) -> Object {
    let api_version = manifest["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = Gvk::new(group, version, manifest["kind"].as_str().unwrap());
    let namespace = manifest["metadata"]["namespace"]
        .as_str()
        .map(str::to_owned);
    let name = manifest["metadata"]["name"].as_str().unwrap().to_owned();
    Object::new(gvk, namespace, &name, &manifest)
}

fn config_map(namespace: &str, name: &str, value: &str) -> Object {
    object(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace}, "data": {"value": value}}))
}

fn bundle(app: &str, generation: u64, objects: Vec<Object>) -> Bundle {
    Bundle {
        app: AppRef::new("default", app),
        cluster: "east".into(),
        source: Source::default(),
        generation,
        created_at: Timestamp(0),
        not_after: Timestamp(u64::MAX),
        policy: SyncPolicy {
            automated: Some(Automated {
                prune: true,
                self_heal: true,
                allow_empty: false,
            }),
            sync_options: Vec::new(),
            deletion: None,
            retry: None,
            managed_namespace_metadata: None,
        },
        ignore_differences: Vec::new(),
        project: ProjectRules::allow_all("default", "east"),
        objects,
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{:x}-{:x}", std::process::id(), nanos % 0xfffff)
}

fn refused_message(outcome: &BundleOutcome) -> &str {
    match outcome {
        BundleOutcome::Rejected(Rejection::NotPermitted { message }) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_limited_to_namespaces_acts_there_and_refuses_the_rest() {
    let cluster = fleet().expect("the local fleet is running").remove(0);
    let admin = cluster.client().await.unwrap();
    let granted = unique("lp-granted");
    let other = unique("lp-other");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for name in [&granted, &other] {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    install_rbac(&cluster, std::slice::from_ref(&granted));
    // What the installed agent runs as.
    let client = cluster
        .client_as("flotilla-system", "flotilla-agent")
        .await
        .unwrap();

    // The rights are what the manifest promises: nothing outside the namespace.
    let theirs: Api<ConfigMap> = Api::namespaced(client.clone(), &other);
    let forbidden = theirs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "probe"}})).unwrap(),
        )
        .await;
    assert!(
        matches!(&forbidden, Err(kube::Error::Api(e)) if e.code == 403),
        "{forbidden:?}"
    );

    let engine = Engine::new(Applier::new(
        client,
        "east",
        Store::temporary().unwrap(),
        Options {
            reach: Reach::parse(&granted).unwrap(),
            wave_timeout: Duration::from_secs(60),
            ..Options::default()
        },
    ));
    let app = unique("lp-app");

    // In its namespace it applies, and its watch there heals a hand edit.
    let applied = engine
        .take(bundle(
            &app,
            1,
            vec![config_map(&granted, "settings", "one")],
        ))
        .await;
    assert_eq!(applied.outcome, BundleOutcome::Applied, "{applied:?}");
    let mine: Api<ConfigMap> = Api::namespaced(admin.clone(), &granted);
    let live = mine.get("settings").await.unwrap();
    assert_eq!(live.data.unwrap()["value"], "one");
    mine.patch(
        "settings",
        &PatchParams::apply("someone-by-hand").force(),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings"}, "data": {"value": "edited"}})),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let value = mine.get("settings").await.unwrap().data.unwrap()["value"].clone();
        if value == "one" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hand edit was not healed in 30 s: {value}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A bundle that also reaches another namespace is refused whole: not even its
    // object in the granted namespace changes.
    let outside = engine
        .take(bundle(
            &app,
            2,
            vec![
                config_map(&granted, "settings", "two"),
                config_map(&other, "settings", "two"),
            ],
        ))
        .await;
    let message = refused_message(&outside.outcome);
    assert!(message.contains(&format!("namespace {other}")), "{message}");
    assert!(message.contains(&granted), "{message}");
    assert_eq!(
        mine.get("settings").await.unwrap().data.unwrap()["value"],
        "one"
    );
    assert!(
        Api::<ConfigMap>::namespaced(admin.clone(), &other)
            .get_opt("settings")
            .await
            .unwrap()
            .is_none()
    );

    // So is one with a cluster-scoped object.
    let role = unique("lp-role");
    let cluster_wide = engine
        .take(bundle(
            &app,
            3,
            vec![object(json!({"apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole", "metadata": {"name": role},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}))],
        ))
        .await;
    let message = refused_message(&cluster_wide.outcome);
    assert!(message.contains("cluster-scoped"), "{message}");
    assert!(
        Api::<ClusterRole>::all(admin.clone())
            .get_opt(&role)
            .await
            .unwrap()
            .is_none()
    );

    for name in [&granted, &other] {
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
}
