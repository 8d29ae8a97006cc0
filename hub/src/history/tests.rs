#![allow(clippy::unwrap_used)]

use flotilla_common::message::{Operation, OperationPhase, ResourceAction, ResourceResult, Status};
use flotilla_common::model::{AppRef, Gvk, Health, ResourceRef, SyncStatus, Timestamp};

use super::*;

async fn store_bundle(store: &Store, generation: u64, revision: &str) -> String {
    let bundle = crate::testing::bundle("shop", "east", generation, revision, Vec::new());
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
    envelope.digest.to_string()
}

fn status(generation: u64, request_id: Option<u64>, dry_run: bool) -> Status {
    let resource = ResourceRef {
        gvk: Gvk::new("", "v1", "ConfigMap"),
        namespace: Some("shop".to_owned()),
        name: "settings".to_owned(),
    };
    Status {
        sequence: 1,
        app: AppRef::new("default", "shop"),
        generation,
        sync: SyncStatus::Synced,
        health: Health::Healthy,
        resources: Vec::new(),
        drift: Vec::new(),
        events: Vec::new(),
        operation: Some(Box::new(Operation {
            request_id,
            started_at: Timestamp(100),
            duration_ms: 2500,
            phase: OperationPhase::Succeeded,
            message: "1 configured".to_owned(),
            dry_run,
            resources: vec![ResourceResult {
                resource,
                action: ResourceAction::Configured,
                message: None,
            }],
        })),
    }
}

#[tokio::test]
async fn a_commanded_sync_is_recorded_with_its_user_bundle_and_resources() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let digest = store_bundle(&store, 3, "abc123").await;
    let running = OperationRecord {
        request_id: Some(77),
        initiated_by: "alice".to_owned(),
        generation: 3,
        phase: Phase::Running,
        message: String::new(),
        dry_run: false,
        prune: true,
        started_at_ms: 99_000,
        finished_at_ms: None,
        resources: Vec::new(),
        history_id: None,
    };
    store
        .put_operation("default", "shop", "east", &running)
        .await
        .unwrap();

    let entry = record(&store, "east", &status(3, Some(77), false), 200_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.id, 1);
    assert_eq!(entry.initiated_by, "alice");
    assert_eq!(entry.revision, "abc123");
    assert_eq!(entry.digest, digest);
    assert_eq!(entry.generation, 3);
    assert_eq!(
        (entry.started_at_ms, entry.finished_at_ms),
        (100_000, Some(102_500))
    );
    assert_eq!(entry.result, Phase::Succeeded);
    assert_eq!(entry.resources.len(), 1);
    assert_eq!(entry.resources[0].action, "Configured");
    assert_eq!(entry.resources[0].name, "settings");
    // The bundle stays with the entry for a rollback.
    assert!(
        store
            .history_bundle("default", "shop", 1)
            .unwrap()
            .is_some()
    );

    let done = store.operation("default", "shop", "east").unwrap().unwrap();
    assert!(!done.is_running());
    assert_eq!(done.phase, Phase::Succeeded);
    assert_eq!(done.history_id, Some(1));
    assert!(done.prune);
}

#[tokio::test]
async fn syncs_the_agent_starts_are_automated_for_a_new_generation_and_self_heal_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store_bundle(&store, 1, "aaa").await;
    let first = record(&store, "east", &status(1, None, false), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.initiated_by, AUTOMATED);
    let again = record(&store, "east", &status(1, None, false), 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.initiated_by, SELF_HEAL);
    assert_eq!(again.id, 2);

    // A failed automated sync tried again is still automated.
    store_bundle(&store, 2, "bbb").await;
    let mut failing = status(2, None, false);
    if let Some(op) = failing.operation.as_mut() {
        op.phase = OperationPhase::Failed;
    }
    let failed = record(&store, "east", &failing, 3).await.unwrap().unwrap();
    assert_eq!(
        (failed.initiated_by.as_str(), failed.result),
        (AUTOMATED, Phase::Failed)
    );
    let retried = record(&store, "east", &status(2, None, false), 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retried.initiated_by, AUTOMATED);
}

#[tokio::test]
async fn dry_runs_and_statuses_without_an_operation_are_not_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store_bundle(&store, 1, "aaa").await;
    let mut plain = status(1, None, false);
    plain.operation = None;
    assert!(record(&store, "east", &plain, 1).await.unwrap().is_none());
    assert!(
        record(&store, "east", &status(1, Some(5), true), 1)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.history("default", "shop").unwrap().is_empty());
    let op = store.operation("default", "shop", "east").unwrap().unwrap();
    assert!(op.dry_run);
    assert_eq!(op.initiated_by, "unknown (request 5)");
}
