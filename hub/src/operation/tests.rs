#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use flotilla_common::model::AppRef;

use super::{Error, Operations, SyncRequest};
use crate::app::Application;
use crate::clock::epoch_ms;
use crate::store::{AppOrigin, AppRecord, ClusterRecord, OperationRecord, Phase, Store};

fn record(name: &str) -> AppRecord {
    let application = Application::from_yaml(
        &format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  project: default\n  source: {{repoURL: 'https://git.example/fleet.git', path: apps}}\n  destination: {{name: east}}\n"
        ),
        "test",
    )
    .unwrap();
    AppRecord::new(application, AppOrigin::Store)
}

fn operations(store: &Store) -> Operations {
    Operations::new(store.clone(), None, None, Duration::from_secs(300))
}

fn running(started_at_ms: u64) -> OperationRecord {
    OperationRecord {
        request_id: Some(7),
        initiated_by: "alice".to_owned(),
        generation: 3,
        phase: Phase::Running,
        message: "waiting for the agent".to_owned(),
        dry_run: false,
        prune: false,
        started_at_ms,
        finished_at_ms: None,
        resources: Vec::new(),
        history_id: None,
    }
}

#[tokio::test]
async fn a_dry_run_of_a_revision_is_refused_before_anything_is_looked_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let request = SyncRequest {
        dry_run: true,
        revision: Some("v2".to_owned()),
        ..SyncRequest::default()
    };
    let refused = operations(&store)
        .plan_sync(&AppRef::new("default", "missing"), &request)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::DryRunWithRevision { revision } if revision == "v2"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_sync_of_an_unknown_app_or_without_a_link_is_refused_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let operations = operations(&store);
    let missing = operations
        .plan_sync(&AppRef::new("default", "missing"), &SyncRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(missing, Error::AppNotFound(_)), "{missing:?}");
    assert_eq!(missing.to_string(), "application default/missing not found");

    store.put_app(&record("web")).await.unwrap();
    let unlinked = operations
        .plan_sync(&AppRef::new("default", "web"), &SyncRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(unlinked, Error::NoLink), "{unlinked:?}");
    let unlinked = operations
        .roll_back(&AppRef::new("default", "web"), 1)
        .await
        .unwrap_err();
    assert!(matches!(unlinked, Error::NoLink), "{unlinked:?}");
}

#[tokio::test]
async fn an_app_without_a_registered_destination_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let operations = operations(&store);
    let web = record("web");
    let none = operations.destinations(&web).unwrap_err();
    assert!(matches!(none, Error::NoDestination(_)), "{none:?}");
    store
        .put_cluster(&ClusterRecord {
            name: "east".to_owned(),
            ..ClusterRecord::default()
        })
        .await
        .unwrap();
    assert_eq!(operations.destinations(&web).unwrap(), ["east"]);
}

#[tokio::test]
async fn a_running_sync_makes_the_cluster_busy_until_the_command_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let operations = operations(&store);
    let app = AppRef::new("default", "web");
    assert!(operations.refuse_if_busy(&app, "east").is_ok());

    let now = epoch_ms(SystemTime::now());
    store
        .put_operation("default", "web", "east", &running(now))
        .await
        .unwrap();
    let busy = operations.refuse_if_busy(&app, "east").unwrap_err();
    assert!(
        matches!(&busy, Error::Busy { cluster, generation: 3, initiated_by } if cluster == "east" && initiated_by == "alice"),
        "{busy:?}"
    );
    assert!(operations.refuse_if_busy(&app, "west").is_ok());

    // A hub that stopped mid-sync left this one Running long ago.
    let stale = now - 301_000;
    store
        .put_operation("default", "web", "east", &running(stale))
        .await
        .unwrap();
    assert!(operations.refuse_if_busy(&app, "east").is_ok());
}
