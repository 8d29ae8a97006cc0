//! The agent's engine against a real local cluster (`tests/cluster`), never a mock:
//! the recipe's sync waves and hooks, a failing hook, prune, bad input and a
//! no-change re-sync.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use flotilla_agent::apply::{self, Action, HookOutcome, Outcome};
use flotilla_common::bundle::{Automated, HookPhase};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use support::{applier, bundle, cluster_for, config_map, deployment, object, unique};

use crate::support;

/// The recipe's "Sync Waves" example: namespace (-1) → configmap (0) → deployment
/// (1) → service (2), and the service is created only once the deployment is
/// available.
#[tokio::test]
async fn recipe_sync_waves_apply_in_order_and_wait_for_health() {
    let cluster = cluster_for("waves");
    let client = cluster.client().await.unwrap();
    let ns = unique("waves");
    let app = format!("{ns}-app");
    let label = apply::app_label(&flotilla_common::model::AppRef::new("default", &app));

    // Record the order in which objects appear and the deployment becomes available.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let selector = watcher::Config::default().labels(&format!("{}={label}", apply::APP_LABEL));
    let watch = |kind: &'static str| {
        let tx = tx.clone();
        let client = client.clone();
        let selector = selector.clone();
        async move {
            let api: Api<kube::api::DynamicObject> = match kind {
                "ConfigMap" => {
                    Api::all_with(client, &kube::api::ApiResource::erase::<ConfigMap>(&()))
                }
                "Deployment" => {
                    Api::all_with(client, &kube::api::ApiResource::erase::<Deployment>(&()))
                }
                _ => Api::all_with(client, &kube::api::ApiResource::erase::<Service>(&())),
            };
            let mut events = watcher::watcher(api, selector).boxed();
            while let Some(Ok(event)) = events.next().await {
                if let watcher::Event::InitDone = event {
                    let _ = tx.send("ready".to_owned());
                }
                if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = event {
                    let _ = tx.send(format!("{kind} seen"));
                    let v = serde_json::to_value(&o).unwrap();
                    if v.pointer("/status/availableReplicas")
                        .and_then(|r| r.as_i64())
                        == Some(2)
                    {
                        let _ = tx.send(format!("{kind} available"));
                    }
                }
            }
        }
    };
    let watchers = [
        tokio::spawn(watch("ConfigMap")),
        tokio::spawn(watch("Deployment")),
        tokio::spawn(watch("Service")),
    ];
    // Start syncing only once every watch is established, so event order is the
    // order things happened in.
    for _ in 0..3 {
        let ready = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
        assert_eq!(ready.unwrap().as_deref(), Some("ready"));
    }

    let mut objects = vec![
        object(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns,
            "annotations": {"argocd.argoproj.io/sync-wave": "-1"}}}),
        ),
        object(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "myapp-config", "namespace": ns,
            "annotations": {"argocd.argoproj.io/sync-wave": "0"}}, "data": {"greeting": "hello"}}),
        ),
        object(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "myapp", "namespace": ns,
            "annotations": {"argocd.argoproj.io/sync-wave": "2"}},
            "spec": {"selector": {"app": "myapp"}, "ports": [{"port": 80}]}}),
        ),
    ];
    let mut d = deployment(&ns, "myapp", 2);
    d.wave = 1;
    objects.push(d);
    let b = bundle(&app, 1, objects, None);
    let report = applier(&client).sync(&b).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let waves: Vec<(String, i32)> = report
        .resources
        .iter()
        .map(|r| (r.resource.gvk.kind.clone(), r.wave))
        .collect();
    assert_eq!(
        waves,
        [
            ("Namespace".into(), -1),
            ("ConfigMap".into(), 0),
            ("Deployment".into(), 1),
            ("Service".into(), 2)
        ]
    );
    assert!(report.resources.iter().all(|r| r.action == Action::Created));
    assert_eq!(report.health(), flotilla_common::model::Health::Healthy);

    tokio::time::sleep(Duration::from_millis(300)).await;
    for w in watchers {
        w.abort();
    }
    let mut seen = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    let at = |e: &str| {
        seen.iter()
            .position(|s| s == e)
            .unwrap_or_else(|| panic!("{e} not in {seen:?}"))
    };
    assert!(at("ConfigMap seen") < at("Deployment seen"), "{seen:?}");
    assert!(at("Deployment available") < at("Service seen"), "{seen:?}");
    support::delete_namespace(&client, &ns).await;
}

/// The recipe's "Sync Hooks" example: the PreSync migration runs to completion
/// before anything of the Sync phase exists, the PostSync smoke test after, and
/// both are deleted because of HookSucceeded.
#[tokio::test]
async fn recipe_sync_hooks_run_around_the_sync_phase_and_are_deleted_on_success() {
    let cluster = cluster_for("hooks");
    let client = cluster.client().await.unwrap();
    let ns = unique("hooks");
    support::create_namespace(&client, &ns).await;
    let objects = vec![
        support::job(&ns, "db-migration", "PreSync", Some("HookSucceeded"), false),
        support::job(&ns, "smoke-test", "PostSync", Some("HookSucceeded"), false),
        deployment(&ns, "myapp", 1),
    ];
    let b = bundle(&format!("{ns}-app"), 1, objects, None);
    let report = applier(&client).sync(&b).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let hooks: Vec<(&str, HookPhase, &HookOutcome, bool)> = report
        .hooks
        .iter()
        .map(|h| (h.resource.name.as_str(), h.phase, &h.outcome, h.deleted))
        .collect();
    assert_eq!(
        hooks,
        [
            (
                "db-migration",
                HookPhase::PreSync,
                &HookOutcome::Succeeded,
                true
            ),
            (
                "smoke-test",
                HookPhase::PostSync,
                &HookOutcome::Succeeded,
                true
            ),
        ]
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    assert!(jobs.get_opt("db-migration").await.unwrap().is_none());
    assert!(jobs.get_opt("smoke-test").await.unwrap().is_none());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deployments.get_opt("myapp").await.unwrap().is_some());
    support::delete_namespace(&client, &ns).await;
}

/// With CreateNamespace=true the namespace exists before the PreSync phase, as in
/// Argo CD: a migration Job can run in the namespace of a first sync.
#[tokio::test]
async fn create_namespace_happens_before_presync_hooks_run() {
    let cluster = cluster_for("hooks-fresh-namespace");
    let client = cluster.client().await.unwrap();
    let ns = unique("freshns");
    let objects = vec![
        support::job(&ns, "db-migration", "PreSync", Some("HookSucceeded"), false),
        config_map(&ns, "myapp-config"),
    ];
    let mut b = bundle(&format!("{ns}-app"), 1, objects, None);
    b.policy.sync_options.push("CreateNamespace=true".into());
    let report = applier(&client).sync(&b).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let hook = report.hook("db-migration").unwrap();
    assert_eq!(
        (hook.phase, &hook.outcome),
        (HookPhase::PreSync, &HookOutcome::Succeeded)
    );
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(maps.get_opt("myapp-config").await.unwrap().is_some());
    support::delete_namespace(&client, &ns).await;
}

/// A failing PreSync hook stops the sync before the Sync phase: nothing of it is
/// applied, the SyncFail hook runs, and the failed hook stays for inspection
/// because its policy only deletes it on success.
#[tokio::test]
async fn failing_presync_hook_stops_the_sync_and_runs_sync_fail_hooks() {
    let cluster = cluster_for("hookfail");
    let client = cluster.client().await.unwrap();
    let ns = unique("hookfail");
    support::create_namespace(&client, &ns).await;
    let objects = vec![
        support::job(&ns, "db-migration", "PreSync", Some("HookSucceeded"), true),
        support::job(&ns, "report-failure", "SyncFail", None, false),
        deployment(&ns, "myapp", 1),
        config_map(&ns, "myapp-config"),
    ];
    let b = bundle(&format!("{ns}-app"), 1, objects, None);
    let report = applier(&client).sync(&b).await;
    match &report.outcome {
        Outcome::Failed { resource, message } => {
            assert_eq!(resource.as_ref().unwrap().name, "db-migration");
            assert!(message.contains("db-migration"), "{message}");
        }
        Outcome::Succeeded => panic!("the sync should fail"),
    }
    assert!(report.resources.iter().all(|r| r.action == Action::Skipped));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deployments.get_opt("myapp").await.unwrap().is_none());
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(maps.get_opt("myapp-config").await.unwrap().is_none());
    let failed = report.hook("db-migration").unwrap();
    assert!(
        matches!(failed.outcome, HookOutcome::Failed(_)),
        "{failed:?}"
    );
    assert!(!failed.deleted);
    let sync_fail = report.hook("report-failure").unwrap();
    assert_eq!(sync_fail.outcome, HookOutcome::Succeeded);
    // What the hub will see: the failing object and message, and each hook.
    let status = report.to_status(flotilla_common::model::Timestamp(1), Vec::new());
    assert_eq!(status.sync, flotilla_common::model::SyncStatus::OutOfSync);
    let failed_event = status
        .events
        .iter()
        .find(|e| e.reason == "SyncFailed")
        .unwrap();
    assert_eq!(failed_event.resource.as_ref().unwrap().name, "db-migration");
    let hook_events: Vec<&str> = status.events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(hook_events, ["HookFailed", "HookSucceeded", "SyncFailed"]);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    assert!(jobs.get_opt("db-migration").await.unwrap().is_some());
    support::delete_namespace(&client, &ns).await;
}

/// Automated prune removes only what left the bundle and Flotilla created for
/// this app; Prune=false objects, unmanaged objects and other apps' objects stay;
/// an empty bundle prunes nothing without allowEmpty; a second app claiming an
/// object gets a conflict instead of taking it.
#[tokio::test]
async fn automated_prune_deletes_only_this_apps_objects_that_left_the_bundle() {
    let cluster = cluster_for("prune");
    let client = cluster.client().await.unwrap();
    let ns = unique("prune");
    support::create_namespace(&client, &ns).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    // Someone else's object in the same namespace.
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "hand-made"}})).unwrap(),
    )
    .await
    .unwrap();
    let policy = Some(Automated {
        prune: true,
        self_heal: false,
        allow_empty: false,
    });
    let mut keep = config_map(&ns, "keep-me");
    keep.sync_options = vec!["Prune=false".into()];
    let app = format!("{ns}-app");
    let applier = applier(&client);
    let first = bundle(
        &app,
        1,
        vec![config_map(&ns, "stays"), config_map(&ns, "goes"), keep],
        policy.clone(),
    );
    let report = applier.sync(&first).await;
    assert!(report.succeeded(), "{:?}", report.outcome);

    let second = bundle(&app, 2, vec![config_map(&ns, "stays")], policy.clone());
    let report = applier.sync(&second).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let pruned: Vec<&str> = report.pruned.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(pruned, ["goes"]);
    assert_eq!(report.resource("stays").unwrap().action, Action::Unchanged);
    assert!(support::gone_or_going(&maps, "goes").await);
    assert!(maps.get_opt("keep-me").await.unwrap().is_some());
    assert!(maps.get_opt("hand-made").await.unwrap().is_some());

    // An empty bundle would prune everything: refused without allowEmpty.
    let empty = bundle(&app, 3, vec![], policy.clone());
    let report = applier.sync(&empty).await;
    assert!(!report.succeeded());
    assert!(report.pruned.is_empty());
    assert!(maps.get_opt("stays").await.unwrap().is_some());

    // Another app claiming the same object is a reported conflict, not a fight.
    let other = bundle(
        &format!("{ns}-other"),
        1,
        vec![config_map(&ns, "stays")],
        policy.clone(),
    );
    let report = applier.sync(&other).await;
    let result = report.resource("stays").unwrap();
    assert_eq!(result.action, Action::Failed);
    assert!(
        apply::is_conflict(result.error.as_deref().unwrap()),
        "{result:?}"
    );
    let live = maps.get("stays").await.unwrap();
    assert_eq!(
        live.metadata.labels.unwrap()[apply::APP_LABEL],
        apply::app_label(&flotilla_common::model::AppRef::new("default", &app))
    );

    // With allowEmpty, the empty bundle prunes what the app owns.
    let allow = Some(Automated {
        prune: true,
        self_heal: false,
        allow_empty: true,
    });
    let report = applier.sync(&bundle(&app, 4, vec![], allow)).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    assert!(support::gone_or_going(&maps, "stays").await);
    assert!(maps.get_opt("keep-me").await.unwrap().is_some());
    support::delete_namespace(&client, &ns).await;
}

/// Bad objects fail one by one with the apiserver's message; the rest of the wave
/// is applied. A missing namespace is an error without CreateNamespace and is
/// created with it.
#[tokio::test]
async fn bad_objects_fail_alone_and_the_rest_of_the_wave_is_applied() {
    let cluster = cluster_for("bad");
    let client = cluster.client().await.unwrap();
    let ns = unique("bad");
    support::create_namespace(&client, &ns).await;
    let missing_ns = format!("{ns}-missing");
    let objects = vec![
        config_map(&ns, "good"),
        object(
            json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g", "namespace": ns}}),
        ),
        object(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad-port", "namespace": ns},
            "spec": {"ports": [{"port": 99999}]}}),
        ),
        config_map(&missing_ns, "nowhere"),
    ];
    let app = format!("{ns}-app");
    let report = applier(&client)
        .sync(&bundle(&app, 1, objects.clone(), None))
        .await;
    assert!(!report.succeeded());
    assert_eq!(report.resource("good").unwrap().action, Action::Created);
    let error = |name: &str| {
        report
            .resource(name)
            .unwrap()
            .error
            .as_ref()
            .unwrap()
            .to_string()
    };
    assert!(error("g").contains("Gadget"), "{}", error("g"));
    assert!(error("bad-port").contains("99999"), "{}", error("bad-port"));
    assert!(
        error("nowhere").contains("not found"),
        "{}",
        error("nowhere")
    );

    let mut b = bundle(&app, 2, vec![config_map(&missing_ns, "nowhere")], None);
    b.policy.sync_options.push("CreateNamespace=true".into());
    let report = applier(&client).sync(&b).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt(&missing_ns).await.unwrap().is_some());
    support::delete_namespace(&client, &ns).await;
    support::delete_namespace(&client, &missing_ns).await;
}

/// Re-syncing an unchanged bundle writes nothing: every object is recognised as
/// in sync from one LIST per kind.
#[tokio::test]
async fn unchanged_resync_makes_no_write_calls() {
    let cluster = cluster_for("resync");
    let client = cluster.client().await.unwrap();
    let ns = unique("resync");
    support::create_namespace(&client, &ns).await;
    let mut objects = Vec::new();
    for i in 0..40 {
        objects.push(config_map(&ns, &format!("cm-{i}")));
    }
    for i in 0..5 {
        let mut d = deployment(&ns, &format!("web-{i}"), 1);
        d.wave = 1;
        objects.push(d);
        let mut s = support::service(&ns, &format!("web-{i}"));
        s.wave = 2;
        objects.push(s);
    }
    let app = format!("{ns}-app");
    let applier = applier(&client);
    let report = applier.sync(&bundle(&app, 1, objects.clone(), None)).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    assert_eq!(report.writes, 50);
    let started = Instant::now();
    let report = applier.sync(&bundle(&app, 2, objects, None)).await;
    let took = started.elapsed();
    assert!(report.succeeded(), "{:?}", report.outcome);
    assert_eq!(report.writes, 0);
    assert!(
        report
            .resources
            .iter()
            .all(|r| r.action == Action::Unchanged)
    );
    eprintln!("no-change re-sync of 50 objects took {took:?}");
    support::delete_namespace(&client, &ns).await;
}

/// A CRD and a custom resource of its kind in one bundle: the CRD is applied
/// first, becomes Established, discovery finds the new kind, and the resource is
/// applied; its health comes from its Ready condition.
#[tokio::test]
async fn crd_is_established_before_its_custom_resources_are_applied() {
    let cluster = cluster_for("crd");
    let client = cluster.client().await.unwrap();
    let ns = unique("crd");
    support::create_namespace(&client, &ns).await;
    let group = format!("{ns}.example.com");
    let crd_name = format!("widgets.{group}");
    let objects = vec![
        object(
            json!({"apiVersion": group.clone() + "/v1", "kind": "Widget",
            "metadata": {"name": "w1", "namespace": ns}, "spec": {"size": 3}}),
        ),
        object(
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": crd_name},
            "spec": {"group": group, "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object",
                        "x-kubernetes-preserve-unknown-fields": true}}}]}}),
        ),
    ];
    let report = applier(&client)
        .sync(&bundle(&format!("{ns}-app"), 1, objects, None))
        .await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let kinds: Vec<&str> = report
        .resources
        .iter()
        .map(|r| r.resource.gvk.kind.as_str())
        .collect();
    assert_eq!(kinds, ["CustomResourceDefinition", "Widget"]);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let _ = crds.delete(&crd_name, &Default::default()).await;
    support::delete_namespace(&client, &ns).await;
}

fn widget_crd(group: &str, served: bool) -> serde_json::Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": format!("widgets.{group}")},
    "spec": {"group": group, "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [{"name": "v1", "served": served, "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object",
                "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

type Crd =
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Serves version v1 of the Widget CRD of `group`, as a CRD's author turning it on
/// (or as the apiserver getting around to serving a CRD it just established).
async fn serve_widgets(crds: &Api<Crd>, group: &str) {
    let patch = json!([{"op": "replace", "path": "/spec/versions/0/served", "value": true}]);
    crds.patch(
        &format!("widgets.{group}"),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Json::<()>(serde_json::from_value(patch).unwrap()),
    )
    .await
    .unwrap();
}

/// The apiserver marks a CRD Established a moment before discovery serves its
/// group, and a sync that asks in that moment used to fail with "the cluster does
/// not serve kind". The test holds that moment open on purpose rather than hoping
/// to hit it: the CRD's only version is not served when the agent asks for the
/// Widget kind, and is turned on only once the sync has been waiting for half a
/// second. The agent must wait for the kind (bounded, with backoff) and converge,
/// both when the CRD is in the same bundle and when this agent applied it in an
/// earlier one, and the report must say that it waited.
#[tokio::test]
async fn custom_resources_wait_for_discovery_to_serve_the_kind_of_a_crd_just_applied() {
    let cluster = cluster_for("crdrace");
    let client = cluster.client().await.unwrap();
    let ns = unique("crdrace");
    support::create_namespace(&client, &ns).await;
    let crds: Api<Crd> = Api::all(client.clone());
    let applier = applier(&client);
    for same_bundle in [true, false] {
        let group = format!(
            "{}.{ns}.example.com",
            if same_bundle { "same" } else { "earlier" }
        );
        let widget = object(
            json!({"apiVersion": format!("{group}/v1"), "kind": "Widget",
            "metadata": {"name": "w1", "namespace": ns}, "spec": {"size": 3}}),
        );
        let crd = object(widget_crd(&group, false));
        let objects = if same_bundle {
            vec![widget, crd]
        } else {
            let report = applier
                .sync(&bundle(&format!("{ns}-crd"), 1, vec![crd], None))
                .await;
            assert!(report.succeeded(), "{:?}", report.outcome);
            vec![widget]
        };
        let b = bundle(&format!("{ns}-{group}"), 1, objects, None);
        let done = std::sync::atomic::AtomicBool::new(false);
        let sync = async {
            let report = applier.sync(&b).await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            report
        };
        // Anything still running after a second and a half is waiting for the
        // kind: the rest of the sync is a CRD and one custom resource. Before the
        // fix it had long failed by then. The margin over the 400 ms the wait must
        // last is for a loaded machine, where applying the CRD before the wait
        // begins took over 100 ms and a 500 ms delay made the wait look short.
        let serve = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let ended_early = done.load(std::sync::atomic::Ordering::SeqCst);
            if !ended_early {
                serve_widgets(&crds, &group).await;
            }
            ended_early
        };
        let (report, ended_early) =
            tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(sync, serve) })
                .await
                .unwrap();
        assert!(
            !ended_early,
            "same bundle {same_bundle}: the sync ended before the kind was served: {:?}",
            report.outcome
        );
        assert!(
            report.succeeded(),
            "same bundle {same_bundle}: {:?}",
            report.outcome
        );
        assert_eq!(report.resource("w1").unwrap().action, Action::Created);
        let waited: Vec<String> = report
            .kind_waits
            .iter()
            .map(|(gvk, _)| format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind))
            .collect();
        assert_eq!(waited, [format!("{group}/v1/Widget")]);
        assert!(report.kind_waits[0].1 >= Duration::from_millis(400));
        let status = report.to_status(
            flotilla_common::model::Timestamp::from_system_time(std::time::SystemTime::now()),
            Vec::new(),
        );
        assert!(
            status
                .events
                .iter()
                .any(|e| e.reason == "KindServed"
                    && e.message.contains(&format!("{group}/v1/Widget"))),
            "{:?}",
            status.events
        );
        let _ = crds
            .delete(&format!("widgets.{group}"), &Default::default())
            .await;
    }
    support::delete_namespace(&client, &ns).await;
}

/// A kind that a CRD provides is waited for only so long: a CRD whose version
/// never becomes served fails the sync after `kind_wait`, and the error says that
/// Flotilla waited and for what.
#[tokio::test]
async fn a_kind_that_is_never_served_fails_after_the_bounded_wait() {
    let _alone = support::alone().await;
    let cluster = cluster_for("crdnever");
    let client = cluster.client().await.unwrap();
    let ns = unique("crdnever");
    support::create_namespace(&client, &ns).await;
    let group = format!("{ns}.example.com");
    let applier = apply::Applier::new(
        client.clone(),
        "test",
        flotilla_agent::store::Store::temporary().unwrap(),
        apply::Options {
            kind_wait: Duration::from_secs(2),
            ..Default::default()
        },
    );
    let objects = vec![
        object(
            json!({"apiVersion": format!("{group}/v1"), "kind": "Widget",
            "metadata": {"name": "w1", "namespace": ns}}),
        ),
        object(widget_crd(&group, false)),
    ];
    let started = Instant::now();
    let report = applier
        .sync(&bundle(&format!("{ns}-app"), 1, objects, None))
        .await;
    let took = started.elapsed();
    let Outcome::Failed { message, .. } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        message.contains("does not serve kind") && message.contains("waited"),
        "{message}"
    );
    // One wait, not one for the live listing and another for the apply.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    let crds: Api<Crd> = Api::all(client.clone());
    let _ = crds
        .delete(&format!("widgets.{group}"), &Default::default())
        .await;
    support::delete_namespace(&client, &ns).await;
}

/// A kind that no CRD or APIService in the bundle (or recently applied) provides
/// fails at once with the clear error, not after the wait for a provider.
#[tokio::test]
async fn a_kind_nothing_provides_fails_at_once() {
    let _alone = support::alone().await;
    let cluster = cluster_for("nokind");
    let client = cluster.client().await.unwrap();
    let ns = unique("nokind");
    support::create_namespace(&client, &ns).await;
    let objects = vec![object(
        json!({"apiVersion": format!("{ns}.example.com/v1"), "kind": "Gadget",
            "metadata": {"name": "g1", "namespace": ns}}),
    )];
    let started = Instant::now();
    let report = applier(&client)
        .sync(&bundle(&format!("{ns}-app"), 1, objects, None))
        .await;
    let took = started.elapsed();
    assert!(!report.succeeded());
    let Outcome::Failed { message, .. } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert!(message.contains("does not serve kind"), "{message}");
    assert!(!message.contains("waited"), "{message}");
    assert!(report.kind_waits.is_empty());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    support::delete_namespace(&client, &ns).await;
}

/// A hook never replaces or deletes a same-named object it does not own: not one
/// Flotilla did not create, and not another app's. The hook fails, saying why, and
/// the object is untouched (same uid, same data), whatever the delete policy says.
#[tokio::test]
async fn a_hook_never_replaces_or_deletes_an_object_it_does_not_own() {
    let cluster = cluster_for("hookowner");
    let client = cluster.client().await.unwrap();
    let ns = unique("hookowner");
    support::create_namespace(&client, &ns).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let other = apply::app_label(&flotilla_common::model::AppRef::new("default", "other"));
    for (name, labels) in [
        ("unmanaged", json!({})),
        ("others", json!({ apply::APP_LABEL: other })),
    ] {
        let theirs: ConfigMap =
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "data": {"owner": "someone else"}}))
            .unwrap();
        let created = maps.create(&PostParams::default(), &theirs).await.unwrap();
        for policy in [
            "BeforeHookCreation",
            "HookFailed",
            "HookSucceeded,HookFailed",
        ] {
            let hook = object(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns, "annotations": {
                    "argocd.argoproj.io/hook": "PreSync",
                    "argocd.argoproj.io/hook-delete-policy": policy}},
                "data": {"owner": "the hook"}}));
            let report = applier(&client)
                .sync(&bundle(
                    &format!("{ns}-app"),
                    1,
                    vec![hook, config_map(&ns, "app-config")],
                    None,
                ))
                .await;
            let Outcome::Failed { message, .. } = &report.outcome else {
                panic!("{name}/{policy}: {:?}", report.outcome)
            };
            assert!(message.contains("already managed by app"), "{message}");
            let after = maps.get(name).await.unwrap();
            assert_eq!(after.metadata.uid, created.metadata.uid, "{name}/{policy}");
            assert_eq!(
                after.data.unwrap().get("owner").map(String::as_str),
                Some("someone else"),
                "{name}/{policy}"
            );
            // Nothing of the Sync phase ran after the refused hook.
            assert!(maps.get_opt("app-config").await.unwrap().is_none());
        }
    }
    support::delete_namespace(&client, &ns).await;
}

/// The hub decides from its facts (or a rendered CRD) whether a kind is namespaced
/// when it checks the project; the agent decides from the cluster's discovery. A
/// cluster-scoped object placed in a namespace (a ClusterRoleBinding made to look
/// namespaced, to pass a project that allows only a namespace) is refused before
/// anything is applied, and nothing is created.
#[tokio::test]
async fn a_cluster_scoped_object_the_hub_thought_namespaced_is_refused() {
    let cluster = cluster_for("scope");
    let client = cluster.client().await.unwrap();
    let ns = unique("scope");
    support::create_namespace(&client, &ns).await;
    let name = format!("{ns}-take-over");
    let binding = object(json!({"apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]}));
    let b = bundle(
        &format!("{ns}-app"),
        1,
        vec![config_map(&ns, "a"), binding],
        None,
    );
    let applier = applier(&client);
    let refused = applier.check_scopes(&b).await.unwrap_err();
    assert!(
        refused.to_string().contains("cluster-scoped") && refused.to_string().contains(&ns),
        "{refused}"
    );
    // Applied anyway (an engine that skipped the check), the object still fails.
    let report = applier.sync(&b).await;
    assert!(!report.succeeded());
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client.clone());
    assert!(bindings.get_opt(&name).await.unwrap().is_none());
    support::delete_namespace(&client, &ns).await;
}

/// An agent killed in the middle of a sync (the sync future dropped after its
/// PreSync hook ran) and restarted with the same store converges: the hook does
/// not run twice and nothing that should stay is pruned.
#[tokio::test]
async fn restarted_sync_converges_without_rerunning_hooks_or_pruning() {
    let cluster = cluster_for("restart");
    let client = cluster.client().await.unwrap();
    let ns = unique("restart");
    support::create_namespace(&client, &ns).await;
    let dir = std::env::temp_dir().join(unique("flotilla-agent-store"));
    let policy = Some(Automated {
        prune: true,
        self_heal: false,
        allow_empty: false,
    });
    let app = format!("{ns}-app");
    let make_applier = || {
        apply::Applier::new(
            client.clone(),
            "test",
            flotilla_agent::store::Store::open(&dir).unwrap(),
            apply::Options::default(),
        )
    };
    {
        let first = make_applier();
        let report = first
            .sync(&bundle(
                &app,
                1,
                vec![config_map(&ns, "old")],
                policy.clone(),
            ))
            .await;
        assert!(report.succeeded(), "{:?}", report.outcome);
    }
    let mut d = deployment(&ns, "web", 1);
    d.wave = 1;
    let objects = vec![
        support::job(&ns, "migrate", "PreSync", None, false),
        config_map(&ns, "old"),
        config_map(&ns, "new"),
        d,
    ];
    let b = bundle(&app, 2, objects, policy);
    {
        let killed = make_applier();
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let sync = killed.sync(&b);
        tokio::pin!(sync);
        // Run the sync until the PreSync hook's Job has completed, then kill it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            tokio::select! {
                _ = &mut sync => panic!("the sync finished before it could be killed"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let done = jobs
                .get_opt("migrate")
                .await
                .unwrap()
                .is_some_and(|j| j.status.and_then(|s| s.succeeded).unwrap_or(0) > 0);
            let web: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            if done && web.get_opt("web").await.unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "the hook never completed");
        }
    }
    let restarted = make_applier();
    let report = restarted.sync(&b).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    assert_eq!(
        report.hook("migrate").unwrap().outcome,
        HookOutcome::AlreadyRan
    );
    assert!(report.pruned.is_empty());
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(maps.get_opt("old").await.unwrap().is_some());
    assert!(maps.get_opt("new").await.unwrap().is_some());
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
    support::delete_namespace(&client, &ns).await;
}

/// With a manual sync policy the agent only reports what differs: a changed and
/// a missing object are OutOfSync, an object that left the bundle requires
/// pruning, and computing this writes nothing.
#[tokio::test]
async fn manual_policy_diff_reports_out_of_sync_without_writing() {
    let cluster = cluster_for("manual");
    let client = cluster.client().await.unwrap();
    let ns = unique("manual");
    support::create_namespace(&client, &ns).await;
    let app = format!("{ns}-app");
    let applier = applier(&client);
    let first = bundle(
        &app,
        1,
        vec![config_map(&ns, "same"), config_map(&ns, "leaving")],
        None,
    );
    assert!(applier.sync(&first).await.succeeded());
    let writes = applier.writes();
    let mut changed = config_map(&ns, "same");
    changed.manifest = serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "same", "namespace": ns}, "data": {"name": "other"}}))
    .unwrap();
    let second = bundle(&app, 2, vec![changed, config_map(&ns, "new")], None);
    let diff = applier.diff(&second).await.unwrap();
    let mut seen: Vec<(String, flotilla_common::model::SyncStatus, Option<String>)> = diff
        .into_iter()
        .map(|s| (s.resource.name, s.sync, s.message))
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    use flotilla_common::model::SyncStatus::OutOfSync;
    assert_eq!(
        seen,
        [
            ("leaving".into(), OutOfSync, Some("requires pruning".into())),
            ("new".into(), OutOfSync, Some("missing".into())),
            (
                "same".into(),
                OutOfSync,
                Some("differs from the bundle".into())
            ),
        ]
    );
    assert_eq!(applier.writes(), writes);
    support::delete_namespace(&client, &ns).await;
}

/// Replace=true replaces instead of applying; Validate=false lets an unknown
/// field through, which strict validation otherwise refuses with the
/// apiserver's message.
#[tokio::test]
async fn replace_and_validate_sync_options_change_how_objects_are_written() {
    let cluster = cluster_for("options");
    let client = cluster.client().await.unwrap();
    let ns = unique("options");
    support::create_namespace(&client, &ns).await;
    let mut replaced = config_map(&ns, "replaced");
    replaced.sync_options = vec!["Replace=true".into()];
    let odd = |name: &str| {
        object(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns}, "data": {"a": "b"}, "extraField": 1}))
    };
    let mut lenient = odd("lenient");
    lenient.sync_options = vec!["Validate=false".into()];
    let app = format!("{ns}-app");
    let applier = applier(&client);
    let report = applier
        .sync(&bundle(
            &app,
            1,
            vec![replaced, lenient, odd("strict")],
            None,
        ))
        .await;
    assert_eq!(
        report.resource("replaced").unwrap().action,
        Action::Replaced
    );
    let lenient = report.resource("lenient").unwrap();
    assert_eq!(lenient.action, Action::Created, "{lenient:?}");
    let strict = report.resource("strict").unwrap();
    assert_eq!(strict.action, Action::Failed);
    let message = strict.error.as_ref().unwrap().to_string();
    assert!(message.contains("extraField"), "{message}");
    support::delete_namespace(&client, &ns).await;
}

/// Deleting an app deletes what it owns but leaves Delete=false objects.
#[tokio::test]
async fn deleting_an_app_keeps_delete_false_objects() {
    let cluster = cluster_for("delete-app");
    let client = cluster.client().await.unwrap();
    let ns = unique("delapp");
    support::create_namespace(&client, &ns).await;
    let mut keep = config_map(&ns, "keep");
    keep.sync_options = vec!["Delete=false".into()];
    let b = bundle(
        &format!("{ns}-app"),
        1,
        vec![config_map(&ns, "goes"), keep],
        None,
    );
    let applier = applier(&client);
    assert!(applier.sync(&b).await.succeeded());
    let (deleted, kept) = applier.delete_app(&b.app).await.unwrap();
    assert_eq!(
        deleted.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["goes"]
    );
    assert_eq!(
        kept.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["keep"]
    );
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(support::gone_or_going(&maps, "goes").await);
    assert!(maps.get_opt("keep").await.unwrap().is_some());
    support::delete_namespace(&client, &ns).await;
}

/// `Prune=confirm`: an automated prune leaves the object in place and says it
/// waits for confirmation; a sync with the user's confirmation prunes it.
#[tokio::test]
async fn prune_confirm_waits_for_a_confirmed_sync() {
    let cluster = cluster_for("prune-confirm");
    let client = cluster.client().await.unwrap();
    let ns = unique("pconfirm");
    support::create_namespace(&client, &ns).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let policy = Some(Automated {
        prune: true,
        self_heal: false,
        allow_empty: false,
    });
    let mut guarded = config_map(&ns, "guarded");
    guarded.sync_options = vec!["Prune=confirm".into()];
    let app = format!("{ns}-app");
    let applier = applier(&client);
    let first = bundle(
        &app,
        1,
        vec![config_map(&ns, "stays"), config_map(&ns, "goes"), guarded],
        policy.clone(),
    );
    assert!(applier.sync(&first).await.succeeded());

    let second = bundle(&app, 2, vec![config_map(&ns, "stays")], policy.clone());
    let report = applier.sync(&second).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let pruned: Vec<&str> = report.pruned.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(pruned, ["goes"]);
    let (kept, why) = report.kept.first().unwrap();
    assert_eq!(kept.name, "guarded");
    assert!(why.contains("waiting for confirmation"), "{why}");
    assert!(maps.get_opt("guarded").await.unwrap().is_some());
    // The app's state says what waits, and why.
    let waiting = applier
        .requiring_pruning(&second.app, |r| r.name == "stays")
        .unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    let message = waiting[0].message.as_deref().unwrap();
    assert!(
        message.contains("Prune=confirm: waiting for confirmation"),
        "{message}"
    );

    // Syncing again without confirmation still keeps it.
    let report = applier.sync(&second).await;
    assert!(report.pruned.is_empty(), "{:?}", report.pruned);
    assert!(maps.get_opt("guarded").await.unwrap().is_some());

    let confirmed = apply::SyncRequest {
        confirm: true,
        ..Default::default()
    };
    let report = applier.sync_with(&second, &confirmed).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let pruned: Vec<&str> = report.pruned.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(pruned, ["guarded"]);
    assert!(support::gone_or_going(&maps, "guarded").await);
    support::delete_namespace(&client, &ns).await;
}

/// A cascading delete (the hub's deletion bundle) keeps `Delete=false` objects,
/// even when the option was added after the object was created, and keeps
/// `Delete=confirm` objects until the deletion is confirmed.
#[tokio::test]
async fn a_cascading_delete_keeps_delete_false_and_waits_for_delete_confirm() {
    let cluster = cluster_for("delete-options");
    let client = cluster.client().await.unwrap();
    let ns = unique("delopts");
    support::create_namespace(&client, &ns).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let policy = Some(Automated {
        prune: true,
        self_heal: false,
        allow_empty: false,
    });
    let app = format!("{ns}-app");
    let applier = applier(&client);
    // Created without options first.
    let first = bundle(
        &app,
        1,
        vec![
            config_map(&ns, "goes"),
            config_map(&ns, "keep"),
            config_map(&ns, "ask"),
        ],
        policy.clone(),
    );
    assert!(applier.sync(&first).await.succeeded());
    let mut keep = config_map(&ns, "keep");
    keep.sync_options = vec!["Delete=false".into()];
    let mut ask = config_map(&ns, "ask");
    ask.sync_options = vec!["Delete=confirm".into()];
    let second = bundle(
        &app,
        2,
        vec![config_map(&ns, "goes"), keep, ask],
        policy.clone(),
    );
    assert!(applier.sync(&second).await.succeeded());

    let deletion = |generation, confirmed| {
        let mut b = bundle(
            &app,
            generation,
            vec![],
            Some(Automated {
                prune: true,
                self_heal: false,
                allow_empty: true,
            }),
        );
        b.policy.deletion = Some(flotilla_common::bundle::Deletion {
            confirmed,
            background: false,
        });
        b
    };
    let report = applier.sync(&deletion(3, false)).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let pruned: Vec<&str> = report.pruned.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(pruned, ["goes"]);
    let kept: Vec<(&str, &str)> = report
        .kept
        .iter()
        .map(|(r, why)| (r.name.as_str(), why.as_str()))
        .collect();
    assert!(kept.contains(&("keep", "Delete=false")), "{kept:?}");
    assert!(
        kept.iter()
            .any(|(name, why)| *name == "ask" && why.contains("Delete=confirm")),
        "{kept:?}"
    );
    assert!(support::gone_or_going(&maps, "goes").await);
    assert!(maps.get_opt("keep").await.unwrap().is_some());
    assert!(maps.get_opt("ask").await.unwrap().is_some());

    // Confirmed: the Delete=confirm object goes; Delete=false still stays.
    let report = applier.sync(&deletion(4, true)).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let pruned: Vec<&str> = report.pruned.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(pruned, ["ask"]);
    assert!(support::gone_or_going(&maps, "ask").await);
    assert!(maps.get_opt("keep").await.unwrap().is_some());
    support::delete_namespace(&client, &ns).await;
}

/// `RespectIgnoreDifferences=true` with `ignoreDifferences` on a Deployment's
/// replicas (an autoscaler's field): a later sync keeps the replicas another
/// manager set; without the option the sync puts them back.
#[tokio::test]
async fn respect_ignore_differences_keeps_the_live_replicas_on_sync() {
    let cluster = cluster_for("respect-ignore");
    let client = cluster.client().await.unwrap();
    let ns = unique("respect");
    support::create_namespace(&client, &ns).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let applier = applier(&client);
    let scale_to = |name: &'static str, replicas: i64| {
        let deployments = deployments.clone();
        async move {
            deployments
                .patch(
                    name,
                    &kube::api::PatchParams::apply("hpa-like").force(),
                    &kube::api::Patch::Apply(json!({
                        "apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": name}, "spec": {"replicas": replicas}
                    })),
                )
                .await
                .unwrap();
        }
    };
    let replicas = |name: &'static str| {
        let deployments = deployments.clone();
        async move { deployments.get(name).await.unwrap().spec.unwrap().replicas }
    };
    for (name, respect) in [("respected", true), ("overwritten", false)] {
        let app = format!("{ns}-{name}");
        let make = |generation, image: &str| {
            let mut d = deployment(&ns, name, 2);
            let mut manifest = d.manifest_json().unwrap();
            manifest["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
            d = support::object(manifest);
            let mut b = bundle(&app, generation, vec![d], None);
            b.ignore_differences = vec![flotilla_common::bundle::IgnoreDifference {
                group: "apps".into(),
                kind: "Deployment".into(),
                json_pointers: vec!["/spec/replicas".into()],
                ..Default::default()
            }];
            if respect {
                b.policy.sync_options = vec!["RespectIgnoreDifferences=true".into()];
            }
            b
        };
        assert!(applier.sync(&make(1, "nginx:1.25")).await.succeeded());
        scale_to(name, 5).await;
        let report = applier.sync(&make(2, "nginx:1.26")).await;
        assert!(report.succeeded(), "{:?}", report.outcome);
        let expected = if respect { 5 } else { 2 };
        assert_eq!(replicas(name).await, Some(expected), "{name}");
    }
    support::delete_namespace(&client, &ns).await;
}

/// A hook the hub named from its `generateName` runs as a new object on every
/// sync, even when its delete policy keeps the last one (`HookFailed`).
#[tokio::test]
async fn a_generate_name_hook_is_created_afresh_on_every_sync() {
    let cluster = cluster_for("generate-name");
    let client = cluster.client().await.unwrap();
    let ns = unique("genname");
    support::create_namespace(&client, &ns).await;
    let hook = || {
        let mut manifest = support::job(&ns, "before-1a2b3", "PreSync", Some("HookFailed"), false)
            .manifest_json()
            .unwrap();
        manifest["metadata"]["generateName"] = json!("before-");
        support::object(manifest)
    };
    let app = format!("{ns}-app");
    let applier = applier(&client);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let mut uids = Vec::new();
    for generation in 1..=2 {
        let b = bundle(
            &app,
            generation,
            vec![hook(), config_map(&ns, "settings")],
            None,
        );
        let report = applier.sync(&b).await;
        assert!(report.succeeded(), "{:?}", report.outcome);
        assert!(
            matches!(report.hooks[0].outcome, HookOutcome::Succeeded),
            "{:?}",
            report.hooks
        );
        let live = jobs.get("before-1a2b3").await.unwrap();
        uids.push(live.metadata.uid.unwrap());
    }
    assert_ne!(
        uids[0], uids[1],
        "the second sync reused the first run's Job"
    );
    support::delete_namespace(&client, &ns).await;
}

/// `PruneLast=true` on one object: the others that left the bundle are pruned
/// before the PostSync hooks, that one after them.
#[tokio::test]
async fn an_object_marked_prune_last_is_pruned_after_the_others() {
    let cluster = cluster_for("prune-last");
    let client = cluster.client().await.unwrap();
    let ns = unique("prunelast");
    support::create_namespace(&client, &ns).await;
    let policy = Some(Automated {
        prune: true,
        self_heal: false,
        allow_empty: false,
    });
    let mut last = config_map(&ns, "a-last");
    last.sync_options = vec!["PruneLast=true".into()];
    let app = format!("{ns}-app");
    let applier = applier(&client);
    let first = bundle(
        &app,
        1,
        vec![last, config_map(&ns, "b-early"), config_map(&ns, "stays")],
        policy.clone(),
    );
    assert!(applier.sync(&first).await.succeeded());
    let second = bundle(
        &app,
        2,
        vec![
            config_map(&ns, "stays"),
            support::job(&ns, "after", "PostSync", Some("HookSucceeded"), false),
        ],
        policy,
    );
    let report = applier.sync(&second).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let pruned: Vec<&str> = report.pruned.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(pruned, ["b-early", "a-last"]);
    // Pruned one pass after the other: alphabetically a-last would come first.
    assert!(report.hooks.iter().any(|h| h.resource.name == "after"));
    support::delete_namespace(&client, &ns).await;
}

/// PreDelete and PostDelete hooks never run on a sync; when the app is deleted
/// (the hub's deletion bundle carries them) PreDelete runs before the objects are
/// deleted and PostDelete after.
#[tokio::test]
async fn delete_hooks_run_only_when_the_app_is_deleted() {
    let cluster = cluster_for("delete-hooks");
    let client = cluster.client().await.unwrap();
    let ns = unique("delhooks");
    support::create_namespace(&client, &ns).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let policy = Some(Automated {
        prune: true,
        self_heal: false,
        allow_empty: false,
    });
    let app = format!("{ns}-app");
    let applier = applier(&client);
    let pre = support::job(&ns, "pre-delete", "PreDelete", None, false);
    let post = support::job(&ns, "post-delete", "PostDelete", None, false);
    let first = bundle(
        &app,
        1,
        vec![config_map(&ns, "settings"), pre.clone(), post.clone()],
        policy,
    );
    let report = applier.sync(&first).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    assert!(report.hooks.is_empty(), "{:?}", report.hooks);
    assert!(jobs.get_opt("pre-delete").await.unwrap().is_none());

    let mut deletion = bundle(
        &app,
        2,
        vec![pre, post],
        Some(Automated {
            prune: true,
            self_heal: false,
            allow_empty: true,
        }),
    );
    deletion.policy.deletion = Some(flotilla_common::bundle::Deletion {
        confirmed: false,
        background: false,
    });
    let report = applier.sync(&deletion).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let ran: Vec<(&str, HookPhase)> = report
        .hooks
        .iter()
        .map(|h| (h.resource.name.as_str(), h.phase))
        .collect();
    assert_eq!(
        ran,
        [
            ("pre-delete", HookPhase::PreDelete),
            ("post-delete", HookPhase::PostDelete)
        ]
    );
    let pruned: Vec<&str> = report.pruned.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(pruned, ["settings"]);
    let operation = report.operation(None);
    assert!(
        operation
            .resources
            .iter()
            .any(|r| r.resource.name == "post-delete"),
        "{:?}",
        operation.resources
    );
    support::delete_namespace(&client, &ns).await;
}

/// `managedNamespaceMetadata` with `CreateNamespace=true`: the destination
/// namespace is made with the labels and annotations, and a pre-existing one
/// gets them added without losing its own.
#[tokio::test]
async fn managed_namespace_metadata_labels_the_destination_namespace() {
    let cluster = cluster_for("ns-metadata");
    let client = cluster.client().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let applier = applier(&client);
    for existing in [false, true] {
        let ns = unique("nsmeta");
        if existing {
            namespaces
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(
                        json!({"metadata": {"name": ns, "labels": {"own": "yes"}}}),
                    )
                    .unwrap(),
                )
                .await
                .unwrap();
        }
        let mut b = bundle(
            &format!("{ns}-app"),
            1,
            vec![config_map(&ns, "settings")],
            None,
        );
        b.project.destination.namespace = Some(ns.clone());
        b.policy.sync_options = vec!["CreateNamespace=true".into()];
        b.policy.managed_namespace_metadata = Some(flotilla_common::bundle::NamespaceMetadata {
            labels: [("team".to_owned(), "web".to_owned())].into(),
            annotations: [("owner".to_owned(), "alice".to_owned())].into(),
        });
        let report = applier.sync(&b).await;
        assert!(report.succeeded(), "{:?}", report.outcome);
        let live = namespaces.get(&ns).await.unwrap();
        let labels = live.metadata.labels.unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("web"));
        if existing {
            assert_eq!(labels.get("own").map(String::as_str), Some("yes"));
        }
        assert_eq!(
            live.metadata
                .annotations
                .unwrap()
                .get("owner")
                .map(String::as_str),
            Some("alice")
        );
        support::delete_namespace(&client, &ns).await;
    }
}

/// `compare-options: IgnoreExtraneous` with `Prune=false`: once the object
/// leaves Git it is kept, and it does not make the app OutOfSync.
#[tokio::test]
async fn an_ignore_extraneous_object_kept_after_leaving_git_does_not_count() {
    let cluster = cluster_for("ignore-extraneous");
    let client = cluster.client().await.unwrap();
    let ns = unique("extraneous");
    support::create_namespace(&client, &ns).await;
    let kept = |name: &str, extraneous: bool| {
        let mut annotations = json!({"argocd.argoproj.io/sync-options": "Prune=false"});
        if extraneous {
            annotations["argocd.argoproj.io/compare-options"] = json!("IgnoreExtraneous");
        }
        support::object(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations},
            "data": {"k": "v"}}))
    };
    let policy = Some(Automated {
        prune: true,
        self_heal: false,
        allow_empty: false,
    });
    let app = format!("{ns}-app");
    let applier = applier(&client);
    let first = bundle(
        &app,
        1,
        vec![
            kept("quiet", true),
            kept("loud", false),
            config_map(&ns, "stays"),
        ],
        policy.clone(),
    );
    assert!(applier.sync(&first).await.succeeded());
    let second = bundle(&app, 2, vec![config_map(&ns, "stays")], policy);
    assert!(applier.sync(&second).await.succeeded());
    let statuses = applier
        .requiring_pruning(&second.app, |r| r.name == "stays")
        .unwrap();
    let sync_of = |name: &str| {
        statuses
            .iter()
            .find(|s| s.resource.name == name)
            .map(|s| s.sync)
            .unwrap()
    };
    assert_eq!(sync_of("quiet"), flotilla_common::model::SyncStatus::Synced);
    assert_eq!(
        sync_of("loud"),
        flotilla_common::model::SyncStatus::OutOfSync
    );
    support::delete_namespace(&client, &ns).await;
}

/// Moving an app from Argo CD: objects Argo CD created (its instance label and
/// tracking-id annotation, its field manager, a client-side apply record) are
/// taken over in place on the first sync, never deleted and re-created, and from
/// then on they are this app's to prune.
#[tokio::test]
async fn objects_argo_cd_managed_are_adopted_in_place() {
    let cluster = cluster_for("adopt-argo");
    let client = cluster.client().await.unwrap();
    let ns = unique("adopt");
    support::create_namespace(&client, &ns).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    // As Argo CD leaves them: applied under its own field manager.
    for (kind, manifest) in [
        (
            "ConfigMap",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": ns,
                    "labels": {"app.kubernetes.io/instance": "web"},
                    "annotations": {"argocd.argoproj.io/tracking-id": "web:/ConfigMap:shop/settings"}},
                "data": {"name": "settings"}}),
        ),
        (
            "Deployment",
            deployment(&ns, "web", 2).manifest_json().unwrap(),
        ),
    ] {
        let api: Api<kube::api::DynamicObject> = match kind {
            "ConfigMap" => Api::namespaced_with(
                client.clone(),
                &ns,
                &kube::api::ApiResource::erase::<ConfigMap>(&()),
            ),
            _ => Api::namespaced_with(
                client.clone(),
                &ns,
                &kube::api::ApiResource::erase::<Deployment>(&()),
            ),
        };
        let name = manifest["metadata"]["name"].as_str().unwrap().to_owned();
        api.patch(
            &name,
            &kube::api::PatchParams::apply("argocd-controller"),
            &kube::api::Patch::Apply(&manifest),
        )
        .await
        .unwrap();
    }
    let uid_before = maps.get("settings").await.unwrap().metadata.uid;
    let deployment_uid = deployments.get("web").await.unwrap().metadata.uid;

    let policy = Some(Automated {
        prune: true,
        self_heal: false,
        allow_empty: false,
    });
    let app = format!("{ns}-web");
    let applier = applier(&client);
    let first = bundle(
        &app,
        1,
        vec![config_map(&ns, "settings"), deployment(&ns, "web", 2)],
        policy.clone(),
    );
    let report = applier.sync(&first).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    assert_eq!(
        report.resource("settings").unwrap().action,
        Action::Configured
    );
    assert!(report.pruned.is_empty());
    let live = maps.get("settings").await.unwrap();
    assert_eq!(
        live.metadata.uid, uid_before,
        "re-created instead of adopted"
    );
    assert_eq!(
        live.metadata.labels.as_ref().unwrap()[apply::APP_LABEL],
        apply::app_label(&first.app)
    );
    assert_eq!(
        deployments.get("web").await.unwrap().metadata.uid,
        deployment_uid
    );

    // Adopted objects are the app's own: one that leaves Git is pruned.
    let second = bundle(&app, 2, vec![deployment(&ns, "web", 2)], policy);
    let report = applier.sync(&second).await;
    assert!(report.succeeded(), "{:?}", report.outcome);
    let pruned: Vec<&str> = report.pruned.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(pruned, ["settings"]);
    support::delete_namespace(&client, &ns).await;
}
