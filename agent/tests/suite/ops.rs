//! The running agent's engine against a real local cluster: drift reported with
//! the field manager that made it and reverted under selfHeal, manual sync with
//! sync, dry-run, selective and pruning commands, Diff, and AppProject rules
//! enforced before anything is applied.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_agent::engine::{self, Engine};
use flotilla_common::bundle::{Automated, Bundle, IgnoreDifference};
use flotilla_common::message::{
    BundleOutcome, Command, CommandKind, CommandOutcome, OperationPhase, Rejection, ResourceAction,
    Status, SyncOptions,
};
use flotilla_common::model::{Health, SyncStatus};
use flotilla_common::project::{Destination, ProjectRules};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use support::{applier, bundle, cluster_for, config_map, deployment, job, kubectl, unique};
use tokio::sync::mpsc;

use crate::support;

fn engine(client: &kube::Client) -> Engine {
    Engine::with_options(
        applier(client),
        engine::Options {
            coalesce: Duration::from_millis(200),
            bundle_wait: Duration::from_secs(1),
            ..Default::default()
        },
    )
}

/// Waits for the first status report that `accept` takes, failing after 30 s.
async fn next_status(
    rx: &mut mpsc::UnboundedReceiver<Status>,
    accept: impl FnMut(&Status) -> bool,
) -> Status {
    support::next_matching(rx, "a status report", Duration::from_secs(30), accept).await
}

fn command(id: u64, b: &Bundle, kind: CommandKind) -> Command {
    Command {
        request_id: id,
        app: b.app.clone(),
        kind,
    }
}

fn sync(generation: u64) -> SyncOptions {
    SyncOptions {
        generation,
        ..SyncOptions::default()
    }
}

fn outcome_message(outcome: &CommandOutcome) -> &str {
    match outcome {
        CommandOutcome::Done { message } | CommandOutcome::Failed { message } => message,
    }
}

/// Every ConfigMap and Deployment in `ns` by name, with its resourceVersion.
async fn versions(client: &kube::Client, ns: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for m in maps.list(&ListParams::default()).await.unwrap() {
        if m.metadata.name.as_deref() == Some("kube-root-ca.crt") {
            continue;
        }
        out.insert(
            format!("cm/{}", m.metadata.name.unwrap()),
            m.metadata.resource_version.unwrap(),
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for d in deployments.list(&ListParams::default()).await.unwrap() {
        out.insert(
            format!("deploy/{}", d.metadata.name.unwrap()),
            d.metadata.resource_version.unwrap(),
        );
    }
    out
}

/// A `kubectl patch` (field manager `kubectl-patch`) of a selfHeal app is
/// reported as drift naming that manager, re-applied, reported as an operation
/// the agent started itself, and then reported Synced; a settled app sends no
/// more reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_patch_is_reported_as_drift_with_its_manager_and_healed_as_an_operation() {
    let cluster = cluster_for("ops-heal");
    let client = cluster.client().await.unwrap();
    let ns = unique("opsheal");
    support::create_namespace(&client, &ns).await;
    let engine = engine(&client);
    let mut reports = engine.take_reports().unwrap();
    let b = bundle(
        &format!("{ns}-app"),
        1,
        vec![deployment(&ns, "web", 2), config_map(&ns, "settings")],
        Some(Automated {
            prune: true,
            self_heal: true,
            allow_empty: false,
        }),
    );
    let applied = engine.take(b.clone()).await;
    assert_eq!(applied.outcome, BundleOutcome::Applied);
    let status = applied.status.unwrap();
    assert_eq!(status.sync, SyncStatus::Synced);
    let operation = status.operation.unwrap();
    assert_eq!(operation.request_id, None, "the agent started this sync");
    assert_eq!(operation.phase, OperationPhase::Succeeded);
    assert_eq!(operation.resources.len(), 2);
    assert!(
        operation
            .resources
            .iter()
            .all(|r| r.action == ResourceAction::Created)
    );
    tokio::time::sleep(Duration::from_millis(700)).await;

    kubectl(
        &cluster,
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "settings",
            "--type=merge",
            "-p",
            r#"{"data":{"name":"patched"}}"#,
        ],
    );
    let patched = std::time::Instant::now();
    // Drift, the heal and the return to Synced may share a coalesced report.
    let (mut drifted, mut healed) = (None, None);
    loop {
        let status = next_status(&mut reports, |_| true).await;
        if drifted.is_none() && !status.drift.is_empty() {
            eprintln!(
                "drift reported {:?} after kubectl patch returned",
                patched.elapsed()
            );
            drifted = Some(status.clone());
        }
        if healed.is_none() && status.operation.is_some() {
            eprintln!(
                "self-heal reported {:?} after kubectl patch returned",
                patched.elapsed()
            );
            healed = Some(status.clone());
        }
        if healed.is_some() && status.sync == SyncStatus::Synced && status.drift.is_empty() {
            break;
        }
    }
    let drifted = drifted.expect("the drift was reported");
    assert_eq!(drifted.sync, SyncStatus::OutOfSync);
    let entry = &drifted.drift[0];
    assert_eq!(entry.resource.name, "settings");
    assert_eq!(entry.path, "data.name");
    assert_eq!(entry.field_manager.as_deref(), Some("kubectl-patch"));
    assert_eq!(entry.new.as_deref(), Some("\"patched\""));
    assert!(
        drifted
            .events
            .iter()
            .any(|e| e.reason == "Drifted" && e.message.contains("changed by kubectl-patch")),
        "{:?}",
        drifted.events
    );
    let operation = healed.unwrap().operation.unwrap();
    assert_eq!(operation.request_id, None);
    assert_eq!(operation.phase, OperationPhase::Succeeded);
    assert_eq!(operation.resources.len(), 1);
    assert_eq!(operation.resources[0].resource.name, "settings");
    assert_eq!(operation.resources[0].action, ResourceAction::Configured);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let live = maps.get("settings").await.unwrap();
    assert_eq!(live.data.unwrap()["name"], "settings");

    // Settled: nothing the hub shows changes, so nothing is sent.
    let quiet = tokio::time::timeout(Duration::from_secs(2), reports.recv()).await;
    assert!(quiet.is_err(), "an unchanged app sent {quiet:?}");
    support::delete_namespace(&client, &ns).await;
}

/// Manual sync: a new bundle only makes the app OutOfSync; a dry run writes
/// nothing; a stale generation is refused; a selective sync touches only the
/// chosen object; a full sync applies the rest; Diff shows only the changed
/// object; prune happens only when asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_sync_waits_for_commands_and_honours_their_options() {
    let cluster = cluster_for("ops-manual");
    let client = cluster.client().await.unwrap();
    let ns = unique("opsmanual");
    support::create_namespace(&client, &ns).await;
    let engine = engine(&client);
    let mut reports = engine.take_reports().unwrap();
    let app = format!("{ns}-app");
    let objects = vec![
        deployment(&ns, "web", 1),
        config_map(&ns, "settings"),
        config_map(&ns, "extra"),
    ];
    let mut b = bundle(&app, 1, objects.clone(), None);
    // Changes to settings' data.name are the app's to ignore.
    b.ignore_differences = vec![IgnoreDifference {
        kind: "ConfigMap".into(),
        name: Some("settings".into()),
        json_pointers: vec!["/data/name".into()],
        ..IgnoreDifference::default()
    }];

    let taken = engine.take(b.clone()).await;
    assert_eq!(taken.outcome, BundleOutcome::Applied);
    let status = taken.status.unwrap();
    assert_eq!(status.sync, SyncStatus::OutOfSync);
    assert!(status.operation.is_none(), "no sync ran");
    assert!(versions(&client, &ns).await.is_empty(), "nothing applied");

    // A dry run writes nothing.
    let done = engine
        .command(command(
            1,
            &b,
            CommandKind::Sync(SyncOptions {
                dry_run: true,
                ..sync(1)
            }),
        ))
        .await;
    assert!(
        matches!(done.result.outcome, CommandOutcome::Done { .. }),
        "{:?}",
        done.result
    );
    let operation = done.status.unwrap().operation.unwrap();
    assert!(operation.dry_run);
    assert_eq!(operation.request_id, Some(1));
    assert_eq!(operation.resources.len(), 3);
    assert!(
        operation
            .resources
            .iter()
            .all(|r| r.action == ResourceAction::WouldChange)
    );
    assert!(versions(&client, &ns).await.is_empty(), "the dry run wrote");

    // A generation the agent does not hold.
    let refused = engine
        .command(command(2, &b, CommandKind::Sync(sync(7))))
        .await;
    let CommandOutcome::Failed { message } = &refused.result.outcome else {
        panic!("{:?}", refused.result)
    };
    assert!(
        message.contains("generation 1") && message.contains("generation 7"),
        "{message}"
    );

    // An object the app does not have.
    let mut stranger = objects[1].resource();
    stranger.name = "stranger".into();
    let refused = engine
        .command(command(
            20,
            &b,
            CommandKind::Sync(SyncOptions {
                resources: vec![stranger],
                ..sync(1)
            }),
        ))
        .await;
    let CommandOutcome::Failed { message } = &refused.result.outcome else {
        panic!("{:?}", refused.result)
    };
    assert!(
        message.contains("ConfigMap") && message.contains("/stranger is neither in generation 1"),
        "{message}"
    );

    // Only the chosen object.
    let chosen = objects[1].resource();
    let done = engine
        .command(command(
            3,
            &b,
            CommandKind::Sync(SyncOptions {
                resources: vec![chosen.clone()],
                ..sync(1)
            }),
        ))
        .await;
    assert!(matches!(done.result.outcome, CommandOutcome::Done { .. }));
    let status = done.status.unwrap();
    assert_eq!(
        status.sync,
        SyncStatus::OutOfSync,
        "two objects are missing"
    );
    let operation = status.operation.unwrap();
    assert_eq!(operation.request_id, Some(3));
    assert_eq!(operation.resources.len(), 1);
    assert_eq!(operation.resources[0].resource, chosen);
    assert_eq!(
        versions(&client, &ns).await.keys().collect::<Vec<_>>(),
        ["cm/settings"]
    );

    // Everything.
    let done = engine
        .command(command(4, &b, CommandKind::Sync(sync(1))))
        .await;
    assert!(
        matches!(done.result.outcome, CommandOutcome::Done { .. }),
        "{:?}",
        done.result
    );
    let status = done.status.unwrap();
    assert_eq!(status.sync, SyncStatus::Synced);
    assert_eq!(status.health, Health::Healthy);
    let actions: Vec<ResourceAction> = status
        .operation
        .unwrap()
        .resources
        .iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(actions.len(), 3);
    assert!(actions.contains(&ResourceAction::Unchanged));
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == ResourceAction::Created)
            .count(),
        2
    );

    // A dry run of an app in sync: nothing would change, nothing is written.
    let before = versions(&client, &ns).await;
    let done = engine
        .command(command(
            5,
            &b,
            CommandKind::Sync(SyncOptions {
                dry_run: true,
                ..sync(0)
            }),
        ))
        .await;
    let operation = done.status.unwrap().operation.unwrap();
    assert!(
        operation
            .resources
            .iter()
            .all(|r| r.action == ResourceAction::Unchanged),
        "{operation:?}"
    );
    assert_eq!(versions(&client, &ns).await, before);

    // Diff: nothing, then only the edited object.
    let diff = engine.command(command(6, &b, CommandKind::Diff)).await;
    assert!(
        diff.result.diffs.is_empty(),
        "an app in sync has a diff: {:?}",
        diff.result.diffs
    );
    kubectl(
        &cluster,
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "extra",
            "--type=merge",
            "-p",
            r#"{"data":{"name":"edited"}}"#,
        ],
    );
    kubectl(
        &cluster,
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "settings",
            "--type=merge",
            "-p",
            r#"{"data":{"name":"ignored"}}"#,
        ],
    );
    let diff = engine.command(command(7, &b, CommandKind::Diff)).await;
    assert_eq!(diff.result.diffs.len(), 1, "{:?}", diff.result.diffs);
    let d = &diff.result.diffs[0];
    assert_eq!(d.resource.name, "extra");
    assert!(d.desired.as_deref().unwrap().contains("name: extra"));
    assert!(d.live.as_deref().unwrap().contains("name: edited"));
    assert!(!d.live.as_deref().unwrap().contains("managedFields"));
    // The watch reported the edit on its own, naming kubectl-patch, and nothing
    // reverted it: no selfHeal under manual sync.
    let drifted = next_status(&mut reports, |s| {
        s.drift
            .iter()
            .any(|d| d.resource.name == "extra" && d.path == "data.name")
    })
    .await;
    assert_eq!(drifted.sync, SyncStatus::OutOfSync);
    assert!(drifted.operation.is_none());
    assert!(
        drifted
            .drift
            .iter()
            .all(|d| d.field_manager.as_deref() == Some("kubectl-patch")),
        "{:?}",
        drifted.drift
    );
    assert!(
        !drifted.drift.iter().any(|d| d.resource.name == "settings"),
        "ignored: {:?}",
        drifted.drift
    );
    // Refresh says the same, and still nothing is reverted.
    let refreshed = engine.command(command(8, &b, CommandKind::Refresh)).await;
    let status = refreshed.status.unwrap();
    assert_eq!(status.sync, SyncStatus::OutOfSync);
    assert!(status.operation.is_none());
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert_eq!(
        maps.get("extra").await.unwrap().data.unwrap()["name"],
        "edited"
    );

    // A new generation without "extra": kept until a sync asks for prune. The
    // command comes first, as it may over the link, and waits for the bundle.
    let mut b2 = bundle(&app, 2, objects[..2].to_vec(), None);
    b2.ignore_differences = b.ignore_differences.clone();
    let early = tokio::spawn({
        let engine = engine.clone();
        let c = command(9, &b2, CommandKind::Sync(sync(2)));
        async move { engine.command(c).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.take(b2.clone()).await;
    let done = early.await.unwrap();
    assert!(
        matches!(done.result.outcome, CommandOutcome::Done { .. }),
        "{:?}",
        done.result
    );
    let operation = done.status.unwrap().operation.unwrap();
    assert!(
        operation
            .resources
            .iter()
            .any(|r| r.resource.name == "extra" && r.action == ResourceAction::PruneSkipped),
        "{operation:?}"
    );
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(maps.get_opt("extra").await.unwrap().is_some());
    let diff = engine.command(command(10, &b2, CommandKind::Diff)).await;
    assert!(
        diff.result
            .diffs
            .iter()
            .any(|d| d.resource.name == "extra" && d.desired.is_none() && d.live.is_some()),
        "{:?}",
        diff.result.diffs
    );
    let done = engine
        .command(command(
            11,
            &b2,
            CommandKind::Sync(SyncOptions {
                prune: true,
                ..sync(2)
            }),
        ))
        .await;
    let operation = done.status.unwrap().operation.unwrap();
    assert!(
        operation
            .resources
            .iter()
            .any(|r| r.resource.name == "extra" && r.action == ResourceAction::Pruned),
        "{operation:?}"
    );
    assert!(support::gone_or_going(&maps, "extra").await);
    support::delete_namespace(&client, &ns).await;
}

/// A sync command that arrives while another sync of the app runs is refused
/// with a message saying so; the running one finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sync_during_a_sync_is_refused() {
    let cluster = cluster_for("ops-busy");
    let client = cluster.client().await.unwrap();
    let ns = unique("opsbusy");
    support::create_namespace(&client, &ns).await;
    let engine = engine(&client);
    // A PreSync hook that fails after its 2 s deadline keeps the first sync busy.
    let b = bundle(
        &format!("{ns}-app"),
        1,
        vec![
            job(&ns, "slow", "PreSync", None, true),
            config_map(&ns, "settings"),
        ],
        None,
    );
    engine.take(b.clone()).await;
    let first = tokio::spawn({
        let engine = engine.clone();
        let c = command(1, &b, CommandKind::Sync(sync(1)));
        async move { engine.command(c).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = engine
        .command(command(2, &b, CommandKind::Sync(sync(1))))
        .await;
    let CommandOutcome::Failed { message } = &second.result.outcome else {
        panic!("{:?}", second.result)
    };
    assert!(message.contains("already running a sync"), "{message}");
    let first = first.await.unwrap();
    assert!(
        matches!(first.result.outcome, CommandOutcome::Failed { .. }),
        "the hook fails"
    );
    let operation = first.status.unwrap().operation.unwrap();
    assert_eq!(operation.phase, OperationPhase::Failed);
    assert!(
        operation
            .resources
            .iter()
            .any(|r| r.resource.name == "slow" && r.action == ResourceAction::HookFailed),
        "{operation:?}"
    );
    assert!(outcome_message(&first.result.outcome).contains("hook"));
    support::delete_namespace(&client, &ns).await;
}

/// A bundle whose AppProject does not allow one of its objects is refused with
/// the rule named, and nothing of it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_outside_its_project_is_refused_before_anything_is_applied() {
    let cluster = cluster_for("ops-project");
    let client = cluster.client().await.unwrap();
    let ns = unique("opsproj");
    support::create_namespace(&client, &ns).await;
    let engine = engine(&client);
    let mut b = bundle(
        &format!("{ns}-app"),
        1,
        vec![
            config_map(&ns, "allowed"),
            config_map("kube-system", "smuggled"),
        ],
        Some(Automated::default()),
    );
    let mut rules = ProjectRules::allow_all("team", "test");
    rules.destination.namespace = Some(ns.clone());
    rules.destinations = vec![Destination {
        server: None,
        name: Some("test".into()),
        namespace: Some(ns.clone()),
    }];
    b.project = rules;
    let refused = engine.take(b.clone()).await;
    let BundleOutcome::Rejected(Rejection::NotPermitted { message }) = &refused.outcome else {
        panic!("{:?}", refused.outcome)
    };
    assert_eq!(
        message,
        "project team: destination test namespace kube-system is not permitted by spec.destinations"
    );
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(maps.get_opt("allowed").await.unwrap().is_none());
    let system: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    assert!(system.get_opt("smuggled").await.unwrap().is_none());
    // The engine does not hold it either: a sync command finds nothing.
    let none = engine
        .command(command(1, &b, CommandKind::Sync(sync(1))))
        .await;
    assert!(matches!(none.result.outcome, CommandOutcome::Failed { .. }));
    support::delete_namespace(&client, &ns).await;
}

/// Statuses follow health without a sync: a Deployment that cannot schedule
/// its pods turns Degraded once its progress deadline passes, and the agent
/// reports that on its own, with no operation; then it stays quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_turning_degraded_is_reported_without_an_operation() {
    let cluster = cluster_for("ops-health");
    let client = cluster.client().await.unwrap();
    let ns = unique("opshealth");
    support::create_namespace(&client, &ns).await;
    let applier = flotilla_agent::apply::Applier::new(
        client.clone(),
        "test",
        flotilla_agent::store::Store::temporary().unwrap(),
        flotilla_agent::apply::Options {
            wave_timeout: Duration::from_secs(1),
            hook_timeout: Duration::from_secs(10),
            parallelism: 4,
            ..Default::default()
        },
    );
    let engine = Engine::with_options(
        applier,
        engine::Options {
            coalesce: Duration::from_millis(200),
            bundle_wait: Duration::from_secs(1),
            ..Default::default()
        },
    );
    let mut reports = engine.take_reports().unwrap();
    let stuck = support::object(
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "stuck", "namespace": ns},
        "spec": {"replicas": 1, "progressDeadlineSeconds": 2,
            "selector": {"matchLabels": {"app": "stuck"}},
            "template": {"metadata": {"labels": {"app": "stuck"}},
                "spec": {"nodeSelector": {"flotilla.dev/no-such-node": "true"},
                    "containers": [{"name": "app", "image": "example.com/app:1"}]}}}}),
    );
    let b = bundle(
        &format!("{ns}-app"),
        1,
        vec![stuck],
        Some(Automated::default()),
    );
    let taken = engine.take(b).await;
    let status = taken.status.unwrap();
    assert_eq!(status.health, Health::Progressing, "{status:?}");

    let degraded = next_status(&mut reports, |s| s.health == Health::Degraded).await;
    assert!(degraded.operation.is_none());
    assert_eq!(degraded.resources.len(), 1);
    assert!(
        degraded.resources[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("progress deadline"),
        "{degraded:?}"
    );
    let quiet = tokio::time::timeout(Duration::from_secs(2), reports.recv()).await;
    assert!(quiet.is_err(), "an unchanged app sent {quiet:?}");
    support::delete_namespace(&client, &ns).await;
}

/// `syncPolicy.retry`: an automated sync that fails because its namespace does
/// not exist yet is tried again after the backoff, and succeeds once the
/// namespace appears; without retry it fails once and stays failed.
#[tokio::test]
async fn a_failed_automated_sync_is_retried_with_backoff() {
    let cluster = cluster_for("retry");
    let client = cluster.client().await.unwrap();
    let ns = unique("retry");
    let automated = Some(Automated {
        prune: true,
        self_heal: false,
        allow_empty: false,
    });

    let once = bundle(
        &format!("{ns}-once"),
        1,
        vec![config_map(&ns, "settings")],
        automated.clone(),
    );
    let report = engine(&client).take(once).await;
    assert!(
        matches!(report.outcome, BundleOutcome::Failed { .. }),
        "{:?}",
        report.outcome
    );

    let mut retried = bundle(
        &format!("{ns}-retried"),
        1,
        vec![config_map(&ns, "settings")],
        automated,
    );
    retried.policy.retry = Some(flotilla_common::bundle::Retry {
        limit: 4,
        backoff_secs: 1,
        factor: 2,
        max_backoff_secs: 2,
    });
    let engine = engine(&client);
    let started = std::time::Instant::now();
    let creator = {
        let client = client.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            support::create_namespace(&client, &ns).await;
        })
    };
    let report = engine.take(retried).await;
    creator.await.unwrap();
    assert!(
        matches!(report.outcome, BundleOutcome::Applied),
        "{:?}",
        report.outcome
    );
    assert!(started.elapsed() >= Duration::from_secs(1), "no backoff");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(maps.get_opt("settings").await.unwrap().is_some());
    support::delete_namespace(&client, &ns).await;
}
