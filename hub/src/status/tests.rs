#![allow(clippy::unwrap_used)]

use flotilla_common::bundle::Object;
use flotilla_common::message::{BundleOutcome, Rejection, ResourceStatus, Status};
use flotilla_common::model::{AppRef, Gvk, ResourceRef};

use super::*;
use crate::app::Application;
use crate::store::{AckRecord, AppOrigin, ClusterRecord, LinkRecord, Phase, StatusRecord};

fn application(name: &str) -> Application {
    Application::from_yaml(
        &format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  source: {{repoURL: 'https://git.example/fleet.git', path: apps, targetRevision: main}}\n  destination: {{name: east, namespace: shop}}\n"
        ),
        "test",
    )
    .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    record: AppRecord,
}

async fn fixture(connected: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_cluster(&ClusterRecord {
            name: "east".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    store
        .put_link(&LinkRecord {
            cluster: "east".to_owned(),
            cert_sha256: "00".to_owned(),
            connected,
            ..Default::default()
        })
        .await
        .unwrap();
    let record = AppRecord::new(application("shop"), AppOrigin::Store);
    store.put_app(&record).await.unwrap();
    Fixture {
        _dir: dir,
        store,
        record,
    }
}

fn config_map() -> ResourceRef {
    ResourceRef {
        gvk: Gvk::new("", "v1", "ConfigMap"),
        namespace: Some("shop".to_owned()),
        name: "settings".to_owned(),
    }
}

async fn put_bundle(store: &Store, generation: u64) {
    let resource = config_map();
    let object = Object::new(
        resource.gvk.clone(),
        resource.namespace.clone(),
        &resource.name,
        &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "shop"}}),
    );
    let revision = format!("rev{generation}");
    let bundle = crate::testing::bundle("shop", "east", generation, &revision, vec![object]);
    let envelope = store.bundle_signer().await.unwrap().sign(&bundle).unwrap();
    store
        .put_bundle(
            "default",
            "shop",
            "east",
            generation,
            &envelope.encode().unwrap(),
        )
        .await
        .unwrap();
}

async fn report(store: &Store, generation: u64, sync: SyncStatus, health: Health) {
    let status = Status {
        sequence: 1,
        app: AppRef::new("default", "shop"),
        generation,
        sync,
        health,
        resources: vec![ResourceStatus {
            resource: config_map(),
            sync,
            health,
            message: Some("reported".to_owned()),
        }],
        drift: Vec::new(),
        events: Vec::new(),
        operation: None,
    };
    store
        .put_status("east", &StatusRecord { at_ms: 1, status })
        .await
        .unwrap();
}

fn kinds(state: &AppState) -> Vec<&str> {
    state.conditions.iter().map(|c| c.kind.as_str()).collect()
}

#[tokio::test]
async fn a_manual_app_the_agent_reports_out_of_sync_is_out_of_sync_with_its_resource_tree() {
    let f = fixture(true).await;
    put_bundle(&f.store, 1).await;
    report(&f.store, 1, SyncStatus::OutOfSync, Health::Missing).await;
    let state = derive(&f.store, None, &f.record).unwrap();
    assert_eq!(state.sync, SyncStatus::OutOfSync);
    assert_eq!(state.health, Health::Missing);
    assert!(state.conditions.is_empty(), "{:?}", state.conditions);
    let east = &state.clusters[0];
    assert_eq!(east.generation, Some(1));
    assert_eq!(east.revision.as_deref(), Some("rev1"));
    assert_eq!(east.resources.len(), 1);
    assert_eq!(east.resources[0].kind, "ConfigMap");
    assert_eq!(east.resources[0].sync, SyncStatus::OutOfSync);
    assert_eq!(east.resources[0].message.as_deref(), Some("reported"));
}

#[tokio::test]
async fn sync_is_unknown_until_the_agent_reports_the_newest_generation() {
    let f = fixture(true).await;
    put_bundle(&f.store, 1).await;
    report(&f.store, 1, SyncStatus::Synced, Health::Healthy).await;
    assert_eq!(
        derive(&f.store, None, &f.record).unwrap().sync,
        SyncStatus::Synced
    );
    put_bundle(&f.store, 2).await;
    let state = derive(&f.store, None, &f.record).unwrap();
    assert_eq!(state.sync, SyncStatus::Unknown);
    assert_eq!(state.clusters[0].reported_generation, Some(1));
    // The tree comes from the bundle meanwhile, with nothing known about it.
    assert_eq!(state.clusters[0].resources[0].sync, SyncStatus::Unknown);
    // Health is still the last report's: the objects are live.
    assert_eq!(state.health, Health::Healthy);
}

#[tokio::test]
async fn a_disconnected_cluster_is_unknown_and_says_so() {
    let f = fixture(false).await;
    put_bundle(&f.store, 1).await;
    report(&f.store, 1, SyncStatus::Synced, Health::Healthy).await;
    let state = derive(&f.store, None, &f.record).unwrap();
    assert_eq!(
        (state.sync, state.health),
        (SyncStatus::Unknown, Health::Unknown)
    );
    assert_eq!(kinds(&state), [condition::CLUSTER_DISCONNECTED]);
    assert_eq!(state.conditions[0].cluster.as_deref(), Some("east"));
}

#[tokio::test]
async fn a_rejected_bundle_is_a_condition_with_the_reason() {
    let f = fixture(true).await;
    put_bundle(&f.store, 1).await;
    let mut link = f.store.link("east").unwrap().unwrap();
    link.acks.insert(
        "default/shop".to_owned(),
        AckRecord {
            generation: 1,
            digest: String::new(),
            outcome: BundleOutcome::Rejected(Rejection::Expired),
            at_ms: 1,
        },
    );
    f.store.put_link(&link).await.unwrap();
    let state = derive(&f.store, None, &f.record).unwrap();
    assert_eq!(state.sync, SyncStatus::Unknown);
    assert_eq!(kinds(&state), [condition::BUNDLE_REJECTED]);
    assert!(state.conditions[0].message.contains("expired"));
}

#[tokio::test]
async fn render_errors_and_project_violations_are_told_apart() {
    let mut f = fixture(true).await;
    f.record.render_error = Some("kustomize failed".to_owned());
    assert_eq!(
        kinds(&derive(&f.store, None, &f.record).unwrap()),
        [condition::COMPARISON_ERROR]
    );
    f.record.project_violation = true;
    assert_eq!(
        kinds(&derive(&f.store, None, &f.record).unwrap()),
        [condition::INVALID_SPEC_ERROR]
    );
}

#[tokio::test]
async fn a_running_sync_is_the_current_operation_and_a_failed_one_a_condition() {
    let f = fixture(true).await;
    put_bundle(&f.store, 1).await;
    let mut op = OperationRecord {
        request_id: Some(3),
        initiated_by: "alice".to_owned(),
        generation: 1,
        phase: Phase::Running,
        message: String::new(),
        dry_run: false,
        prune: false,
        started_at_ms: 5,
        finished_at_ms: None,
        resources: Vec::new(),
        history_id: None,
    };
    f.store
        .put_operation("default", "shop", "east", &op)
        .await
        .unwrap();
    let state = derive(&f.store, None, &f.record).unwrap();
    let current = state.operation.unwrap();
    assert_eq!(current.cluster, "east");
    assert!(current.operation.is_running());
    assert!(state.conditions.is_empty());

    op.phase = Phase::Failed;
    op.message = "one or more objects failed to apply".to_owned();
    f.store
        .put_operation("default", "shop", "east", &op)
        .await
        .unwrap();
    let state = derive(&f.store, None, &f.record).unwrap();
    assert_eq!(kinds(&state), [condition::SYNC_ERROR]);
}

#[tokio::test]
async fn an_app_without_a_registered_destination_is_unknown_with_a_condition() {
    let f = fixture(true).await;
    let mut record = f.record.clone();
    record.application.spec.destination.name = Some("nowhere".to_owned());
    let state = derive(&f.store, None, &record).unwrap();
    assert_eq!(
        (state.sync, state.health),
        (SyncStatus::Unknown, Health::Unknown)
    );
    assert_eq!(kinds(&state), [condition::INVALID_SPEC_ERROR]);
    assert!(state.clusters.is_empty());
}

#[tokio::test]
async fn live_connections_override_the_connection_state_the_store_recorded() {
    // The store says connected (a hub killed without marking it), but no agent
    // connection is up: the live view wins.
    let f = fixture(true).await;
    put_bundle(&f.store, 1).await;
    report(&f.store, 1, SyncStatus::Synced, Health::Healthy).await;
    let nobody = std::collections::BTreeSet::new();
    let state = derive(&f.store, Some(&nobody), &f.record).unwrap();
    assert_eq!(state.sync, SyncStatus::Unknown);
    assert!(kinds(&state).contains(&condition::CLUSTER_DISCONNECTED));

    // The store says disconnected, but the agent is connected now.
    let f = fixture(false).await;
    put_bundle(&f.store, 1).await;
    report(&f.store, 1, SyncStatus::Synced, Health::Healthy).await;
    let east = std::collections::BTreeSet::from(["east".to_owned()]);
    let state = derive(&f.store, Some(&east), &f.record).unwrap();
    assert_eq!(state.sync, SyncStatus::Synced);
    assert!(kinds(&state).is_empty(), "{:?}", state.conditions);
}
