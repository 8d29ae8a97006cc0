//! Helpers shared by the agent's cluster tests: which local cluster to use, unique
//! names, bundles built the way the hub renders them, and a turn for the tests
//! that must run alone.
// Test support: a panic is the failure report.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use flotilla_agent::apply::{Applier, Options};
use flotilla_agent::store::Store;
use flotilla_common::bundle::{
    Automated, Bundle, Hook, HookDeletePolicy, HookPhase, Object, Source, SyncPolicy,
};
use flotilla_common::model::{AppRef, Gvk, Timestamp};
use flotilla_common::project::ProjectRules;
use flotilla_tests::LocalCluster;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

/// Held by the tests that must not share the machine with each other: those that
/// assert on how long something took and those that start a control plane of
/// their own. When each area was its own test binary they never met a test of
/// another area; in one binary they would, so they take turns instead. Tests
/// that take it hold the guard to their end.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the other tests that run alone to finish.
pub async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    ALONE.lock().await
}

/// One cluster of the fleet, chosen by `key` so tests spread over the fleet.
pub fn cluster_for(key: &str) -> LocalCluster {
    let fleet = flotilla_tests::fleet().unwrap();
    let index = key.bytes().map(usize::from).sum::<usize>() % fleet.len();
    fleet[index].clone()
}

/// A name no other test, and no other run of this one, uses: the process id, a
/// counter for names taken in this process, and the clock for runs that reuse a pid.
pub fn unique(prefix: &str) -> String {
    static TAKEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let count = TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{:x}-{count:x}-{:x}",
        std::process::id(),
        nanos % 0xffff
    )
}

pub fn applier(client: &kube::Client) -> Applier {
    Applier::new(
        client.clone(),
        "test",
        Store::temporary().unwrap(),
        Options {
            wave_timeout: Duration::from_secs(60),
            hook_timeout: Duration::from_secs(60),
            parallelism: 16,
            ..Default::default()
        },
    )
}

pub fn bundle(
    app: &str,
    generation: u64,
    objects: Vec<Object>,
    automated: Option<Automated>,
) -> Bundle {
    Bundle {
        app: AppRef::new("default", app),
        cluster: "test".into(),
        source: Source::default(),
        generation,
        created_at: Timestamp(0),
        not_after: Timestamp(u64::MAX),
        policy: SyncPolicy {
            automated,
            sync_options: Vec::new(),
            deletion: None,
            retry: None,
            managed_namespace_metadata: None,
        },
        ignore_differences: Vec::new(),
        project: ProjectRules::allow_all("default", "test"),
        objects,
    }
}

/// An object with its Argo CD annotations read as the hub reads them.
pub fn object(manifest: Value) -> Object {
    let api_version = manifest["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = Gvk::new(group, version, manifest["kind"].as_str().unwrap());
    let meta = &manifest["metadata"];
    let namespace = meta["namespace"].as_str().map(str::to_owned);
    let mut object = Object::new(gvk, namespace, meta["name"].as_str().unwrap(), &manifest);
    let annotation = |key: &str| meta["annotations"][key].as_str().map(str::to_owned);
    if let Some(wave) = annotation("argocd.argoproj.io/sync-wave") {
        object.wave = wave.parse().unwrap();
    }
    if let Some(phase) = annotation("argocd.argoproj.io/hook") {
        let phase = match phase.as_str() {
            "PreSync" => HookPhase::PreSync,
            "Sync" => HookPhase::Sync,
            "PostSync" => HookPhase::PostSync,
            "SyncFail" => HookPhase::SyncFail,
            "PreDelete" => HookPhase::PreDelete,
            "PostDelete" => HookPhase::PostDelete,
            _ => HookPhase::Skip,
        };
        let delete_policy = annotation("argocd.argoproj.io/hook-delete-policy")
            .map(|p| {
                p.split(',')
                    .map(|p| match p.trim() {
                        "HookSucceeded" => HookDeletePolicy::HookSucceeded,
                        "HookFailed" => HookDeletePolicy::HookFailed,
                        _ => HookDeletePolicy::BeforeHookCreation,
                    })
                    .collect()
            })
            .unwrap_or_default();
        object.hook = Some(Hook {
            phase,
            delete_policy,
        });
    }
    if let Some(options) = annotation("argocd.argoproj.io/sync-options") {
        object.sync_options = options.split(',').map(|s| s.trim().to_owned()).collect();
    }
    object
}

pub fn config_map(ns: &str, name: &str) -> Object {
    object(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns}, "data": {"name": name}}))
}

pub fn deployment(ns: &str, name: &str, replicas: i64) -> Object {
    object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]}}}}))
}

pub fn service(ns: &str, name: &str) -> Object {
    object(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "protocol": "TCP"}]}}))
}

/// A hook Job. kwok marks the pods of a Job complete, so a normal one succeeds; a
/// `failing` one can never be scheduled and runs into its 2 s deadline.
pub fn job(
    ns: &str,
    name: &str,
    phase: &str,
    delete_policy: Option<&str>,
    failing: bool,
) -> Object {
    let mut annotations = json!({"argocd.argoproj.io/hook": phase});
    if let Some(policy) = delete_policy {
        annotations["argocd.argoproj.io/hook-delete-policy"] = json!(policy);
    }
    let mut pod = json!({"restartPolicy": "Never",
        "containers": [{"name": "run", "image": "example.com/app:1", "command": ["./run.sh"]}]});
    let mut spec = json!({"backoffLimit": 0, "template": {"spec": pod.take()}});
    if failing {
        spec["activeDeadlineSeconds"] = json!(2);
        spec["template"]["spec"]["nodeSelector"] = json!({"flotilla.dev/no-such-node": "true"});
    }
    object(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": spec}))
}

pub async fn create_namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
    )
    .await
    .unwrap();
}

pub async fn delete_namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// Whether an object is deleted or being deleted (foreground deletion leaves it
/// visible, with a deletion timestamp, until the garbage collector finishes).
pub async fn gone_or_going<K>(api: &Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await.unwrap() {
        None => true,
        Some(o) => o.meta().deletion_timestamp.is_some(),
    }
}

/// A `kubectl` command against `cluster` as its admin: the kubectl that
/// `tests/build-k8s` built at the clusters' version, never the machine's own.
pub fn kubectl_command(cluster: &LocalCluster) -> std::process::Command {
    let mut command = std::process::Command::new(flotilla_tests::tool("kubectl").unwrap());
    command.arg("--kubeconfig").arg(cluster.kubeconfig_path());
    command
}

/// Runs `kubectl` against `cluster` as its admin, as a user editing it by hand.
pub fn kubectl(cluster: &LocalCluster, args: &[&str]) {
    let out = kubectl_command(cluster).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for the first item on `rx` that `accept` takes, failing with `what`
/// after `limit`.
pub async fn next_matching<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    what: &str,
    limit: Duration,
    mut accept: impl FnMut(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let item = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
        if accept(&item) {
            return item;
        }
    }
}
