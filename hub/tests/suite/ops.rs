//! Sync orchestration end to end: a real hub (store, link, API server and
//! refresher on loopback) and a real agent with its apply engine against a local
//! cluster, with Applications from a real Git repository, driven through the API
//! and the `flotilla` binary as a user drives them.
//!
//! Needs a running local cluster: the first of `FLOTILLA_TEST_CLUSTERS` (or
//! `east`), as `tests/run` starts it.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fixture::*;
use flotilla_hub::store::OperationRecord;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};

use crate::support::link::eventually;
use crate::support::ops as fixture;
use crate::support::source::WorkRepo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_app_is_out_of_sync_and_a_denied_sync_and_a_wait_that_runs_out_fail() {
    let fleet = Fleet::start().await;
    let name = unique("ops-manual");
    let cm = format!("{name}-settings");
    let repo = repo_with_config_map(&cm, "one");
    fleet.create_app(&repo, &name, false).await;

    // The agent diffs a manual bundle without applying it: OutOfSync, Missing,
    // with the ConfigMap in the resource tree.
    let app = fleet
        .wait_status(&name, "OutOfSync", |s| s["sync"] == "OutOfSync")
        .await;
    let east = &app["status"]["clusters"][0];
    assert_eq!(east["cluster"], fleet.cluster.as_str());
    assert_eq!(east["connected"], true);
    let resources = east["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 1, "{resources:?}");
    assert_eq!(resources[0]["kind"], "ConfigMap");
    assert_eq!(resources[0]["name"], cm.as_str());
    assert_eq!(resources[0]["sync"], "OutOfSync");
    assert!(
        fleet.config_map(&cm).await.is_none(),
        "a manual app was applied"
    );

    // The list and the tree show it too.
    fleet.cli_login("admin", ADMIN_PASSWORD);
    let list = fleet.cli("admin", &["app", "list"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let row = text(&list.stdout)
        .lines()
        .find(|l| l.starts_with(&name))
        .map(str::to_owned)
        .unwrap();
    assert!(row.contains("OutOfSync"), "{row}");
    let get = fleet.cli("admin", &["app", "get", &name]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    let shown = text(&get.stdout);
    assert!(shown.contains("Sync:        OutOfSync"), "{shown}");
    assert!(shown.contains(&cm), "{shown}");

    // A read-only user may not sync: 403 with a JSON error from the API, and the
    // CLI exits 1 with the hub's message. Nothing is applied.
    let object = format!("default/{name}");
    let (status, body) = fleet
        .call(
            "POST",
            &format!("/api/v1/applications/{object}/sync"),
            Some(&fleet.viewer),
            json!({}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("permission denied") && message.contains("sync"),
        "{message}"
    );
    fleet.cli_login("viewer", VIEWER_PASSWORD);
    let denied = fleet.cli("viewer", &["app", "sync", &name]);
    assert_eq!(denied.status.code(), Some(1), "{}", text(&denied.stderr));
    let stderr = text(&denied.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains(&object), "{stderr}");
    assert!(fleet.config_map(&cm).await.is_none());
    // No operation was started for the denied user.
    assert!(
        fleet
            .store
            .operation("default", &name, &fleet.cluster)
            .unwrap()
            .is_none()
    );

    // Waiting for Synced on an app nobody syncs runs out of time: exit 1.
    let started = std::time::Instant::now();
    let wait = fleet.cli("admin", &["app", "wait", &name, "--sync", "--timeout", "2"]);
    assert_eq!(wait.status.code(), Some(1), "{}", text(&wait.stderr));
    assert!(started.elapsed() >= Duration::from_secs(2));
    let stderr = text(&wait.stderr);
    assert!(stderr.contains("timed out after 2s"), "{stderr}");
    assert!(stderr.contains("OutOfSync"), "{stderr}");

    // One operation at a time: while a sync runs there, another is refused.
    let running = OperationRecord {
        request_id: Some(1),
        initiated_by: "someone-else".to_owned(),
        generation: 1,
        phase: flotilla_hub::store::Phase::Running,
        message: String::new(),
        dry_run: false,
        prune: false,
        started_at_ms: flotilla_hub::cluster::epoch_ms(std::time::SystemTime::now()),
        finished_at_ms: None,
        resources: Vec::new(),
        history_id: None,
    };
    fleet
        .store
        .put_operation("default", &name, &fleet.cluster, &running)
        .await
        .unwrap();
    let (status, body) = fleet
        .call(
            "POST",
            &format!("/api/v1/applications/{object}/sync"),
            Some(&fleet.admin),
            json!({"dryRun": true}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("already in progress") && message.contains("someone-else"),
        "{message}"
    );
    let app = fleet.app(&name).await;
    assert_eq!(app["status"]["operation"]["phase"], "Running");

    fleet.stop(&[&cm]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_applies_a_manual_app_and_the_history_records_it_with_the_user() {
    let fleet = Fleet::start().await;
    let name = unique("ops-sync");
    let cm = format!("{name}-settings");
    let repo = repo_with_config_map(&cm, "one");
    let commit = repo.head();
    fleet.create_app(&repo, &name, false).await;
    fleet
        .wait_status(&name, "OutOfSync", |s| s["sync"] == "OutOfSync")
        .await;

    // The diff shows the missing ConfigMap: exit 20.
    fleet.cli_login("admin", ADMIN_PASSWORD);
    let diff = fleet.cli("admin", &["app", "diff", &name]);
    assert_eq!(diff.status.code(), Some(20), "{}", text(&diff.stderr));
    let shown = text(&diff.stdout);
    assert!(shown.contains(&format!("+  name: {cm}")), "{shown}");

    let sync = fleet.cli("admin", &["app", "sync", &name]);
    assert!(sync.status.success(), "{}", text(&sync.stderr));
    let shown = text(&sync.stdout);
    assert!(shown.contains("Phase: Succeeded"), "{shown}");
    assert!(shown.contains("Created"), "{shown}");
    assert_eq!(
        fleet.config_map(&cm).await.unwrap().data.unwrap()["value"],
        "one"
    );
    fleet
        .wait_status(&name, "Synced and Healthy", |s| {
            s["sync"] == "Synced" && s["health"] == "Healthy"
        })
        .await;
    let after = fleet.cli("admin", &["app", "diff", &name]);
    assert_eq!(after.status.code(), Some(0), "{}", text(&after.stdout));

    let history = fleet.store.history("default", &name).unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    let entry = &history[0];
    assert_eq!(entry.initiated_by, "admin");
    assert_eq!(entry.revision, commit);
    assert_eq!(entry.result, flotilla_hub::store::Phase::Succeeded);
    assert_eq!(entry.cluster, fleet.cluster);
    assert!(entry.digest.starts_with("sha256:"));
    assert!(entry.finished_at_ms >= Some(entry.started_at_ms));
    assert!(
        entry
            .resources
            .iter()
            .any(|r| r.name == cm && r.action == "Created"),
        "{:?}",
        entry.resources
    );
    let listed = fleet.cli("admin", &["app", "history", &name]);
    assert!(listed.status.success());
    let row = text(&listed.stdout);
    assert!(row.contains("admin") && row.contains(&commit[..8]), "{row}");

    fleet.stop(&[&cm]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_resends_the_older_bundle_and_switches_automation_off() {
    let fleet = Fleet::start().await;
    let name = unique("ops-rollback");
    let cm = format!("{name}-settings");
    let repo = repo_with_config_map(&cm, "one");
    fleet.create_app(&repo, &name, true).await;
    fleet
        .wait_status(&name, "Synced", |s| s["sync"] == "Synced")
        .await;
    eventually(
        "the first sync in the history",
        Duration::from_secs(30),
        || fleet.store.history("default", &name).unwrap().len() == 1,
    )
    .await;

    write_config_map(&repo, &cm, "two");
    repo.commit("two");
    let (status, body) = fleet
        .call(
            "POST",
            &format!("/api/v1/applications/default/{name}/refresh"),
            Some(&fleet.admin),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "the second sync in the history",
        Duration::from_secs(60),
        || fleet.store.history("default", &name).unwrap().len() == 2,
    )
    .await;
    let history = fleet.store.history("default", &name).unwrap();
    assert_eq!(history[1].initiated_by, "automated");
    assert_eq!(
        fleet.config_map(&cm).await.unwrap().data.unwrap()["value"],
        "two"
    );

    fleet.cli_login("admin", ADMIN_PASSWORD);
    let first = history[0].id.to_string();
    let rollback = fleet.cli("admin", &["app", "rollback", &name, &first]);
    assert!(rollback.status.success(), "{}", text(&rollback.stderr));
    let shown = text(&rollback.stdout);
    assert!(shown.contains("automated sync is now off"), "{shown}");
    assert_eq!(
        fleet.config_map(&cm).await.unwrap().data.unwrap()["value"],
        "one"
    );
    let app = fleet.app(&name).await;
    assert_eq!(app["automated"], false);
    let generation = fleet
        .store
        .latest_bundle("default", &name, &fleet.cluster)
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(generation, 3, "the rollback is a new generation");
    let history = fleet.store.history("default", &name).unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.generation, 3);
    assert_eq!(last.initiated_by, "admin");
    assert_eq!(last.revision, history[0].revision);
    let audit = fleet.store.events().unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "rollback" && e.actor == "admin"),
        "{audit:?}"
    );

    fleet.stop(&[&cm]).await;
}

/// `sync --revision` renders the app at that revision as a new generation and
/// leaves its targetRevision alone; under automated sync it is refused. Needs no
/// cluster: the hub's side ends at the link, where no agent is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_to_a_revision_renders_it_as_a_new_generation_and_is_refused_under_automation() {
    let repo = repo_with_config_map("settings", "one");
    let first = repo.head();
    write_config_map(&repo, "settings", "two");
    repo.commit("two");

    let fleet = Fleet::start_unconnected("east").await;
    for (name, policy) in [("manual", ""), ("auto", "\n  syncPolicy: {automated: {}}")] {
        let manifest = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  source: {{repoURL: 'file://{}', path: app, targetRevision: main}}\n  destination: {{name: east, namespace: default}}{policy}\n",
            repo.path().display()
        );
        let (status, body) = fleet.create_manifest(&manifest).await;
        assert_eq!(status, 201, "{body}");
    }
    let bundle = |app: &str| {
        fleet
            .store
            .latest_bundle("default", app, "east")
            .unwrap()
            .map(|(generation, bytes)| {
                let envelope = flotilla_common::bundle::Envelope::decode(&bytes).unwrap();
                let bundle = flotilla_common::bundle::Bundle::decode(&envelope.payload).unwrap();
                (generation, bundle.source.revision)
            })
    };
    eventually("both apps rendered", Duration::from_secs(30), || {
        bundle("manual").is_some() && bundle("auto").is_some()
    })
    .await;
    assert_ne!(bundle("manual").unwrap().1, first);

    let sync = |app: &'static str| {
        fleet
            .http
            .post(format!(
                "{}/api/v1/applications/default/{app}/sync",
                fleet.url()
            ))
            .bearer_auth(&fleet.admin)
            .header("content-type", "application/json")
            .body(json!({"revision": first}).to_string())
            .send()
    };
    let reply = sync("manual").await.unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    let body: Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    // Rendered and stored as generation 2; the sync itself fails, naming the
    // unconnected cluster. A refresh still running from the apps' creation may
    // already have rendered the target revision again as generation 3 (the app is
    // manual, so that bundle is only diffed): generation 2 is the one to check.
    let at_two = fleet
        .store
        .bundle_at("default", "manual", "east", 2)
        .unwrap()
        .map(|bytes| {
            let envelope = flotilla_common::bundle::Envelope::decode(&bytes).unwrap();
            flotilla_common::bundle::Bundle::decode(&envelope.payload)
                .unwrap()
                .source
                .revision
        });
    assert_eq!(at_two.as_deref(), Some(first.as_str()));
    assert!(bundle("manual").unwrap().0 >= 2);
    assert_eq!(body["phase"], "Failed", "{body}");
    assert_eq!(
        body["clusters"][0]["message"], "cluster east is not connected",
        "{body}"
    );
    let record = fleet.store.app("default", "manual").unwrap().unwrap();
    assert_eq!(record.application.source().target_revision, "main");

    let refused = sync("auto").await.unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    let body: Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("automated sync"),
        "{body}"
    );
    assert_eq!(bundle("auto").unwrap().0, 1);

    fleet.stop(&[]).await;
}

/// A dry run changes nothing: with a revision, which would render and store a
/// new generation (and adopt or remove child apps), it is refused before
/// anything renders. Needs no cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_to_a_revision_stores_no_generation_and_changes_nothing() {
    let repo = repo_with_config_map("settings", "one");
    let first = repo.head();
    write_config_map(&repo, "settings", "two");
    repo.commit("two");

    let fleet = Fleet::start_unconnected("east").await;
    let manifest = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: manual}}\nspec:\n  source: {{repoURL: 'file://{}', path: app, targetRevision: main}}\n  destination: {{name: east, namespace: default}}\n",
        repo.path().display()
    );
    let (status, body) = fleet.create_manifest(&manifest).await;
    assert_eq!(status, 201, "{body}");
    let latest = || {
        fleet
            .store
            .latest_bundle("default", "manual", "east")
            .unwrap()
            .map(|(generation, _)| generation)
    };
    // Rendered means the bundle and then the app's record are stored: the
    // record is what the test compares after the refused dry run.
    eventually("the app rendered", Duration::from_secs(30), || {
        latest().is_some()
            && fleet
                .store
                .app("default", "manual")
                .unwrap()
                .is_some_and(|a| a.rendered_commit.is_some())
    })
    .await;
    let before = fleet.store.app("default", "manual").unwrap().unwrap();

    let (status, body) = fleet
        .call(
            "POST",
            "/api/v1/applications/default/manual/sync",
            Some(&fleet.admin),
            json!({"revision": first, "dryRun": true}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("dryRun") && message.contains(&first),
        "{message}"
    );
    // Nothing stored: no generation, no operation, no history, the app as it was.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(latest(), Some(1));
    assert!(
        fleet
            .store
            .operation("default", "manual", "east")
            .unwrap()
            .is_none()
    );
    assert!(fleet.store.history("default", "manual").unwrap().is_empty());
    let after = fleet.store.app("default", "manual").unwrap().unwrap();
    assert_eq!(after.rendered_commit, before.rendered_commit);
    fleet.stop(&[]).await;
}

/// A Secret changed behind Flotilla's back in a real cluster: the app's status
/// and its diff show that its password drifted, never the password (desired or
/// live, plain or base64), to a read-only user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_secret_shows_masks_in_status_and_diff_never_its_values() {
    use base64::Engine as _;
    use k8s_openapi::api::core::v1::Secret;
    let fleet = Fleet::start().await;
    let name = unique("ops-secret");
    let secret = format!("{name}-db");
    let repo = WorkRepo::new();
    repo.write(
        "app/secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}, namespace: default}}\nstringData: {{password: desired-pw-1f3a, user: admin-7d21}}\n"
        ),
    );
    repo.commit("a secret");
    fleet.create_app(&repo, &name, true).await;
    fleet
        .wait_status(&name, "Synced", |s| s["sync"] == "Synced")
        .await;

    let secrets = kube::Api::<Secret>::namespaced(fleet.kube().clone(), "default");
    let patch = json!({"stringData": {"password": "live-pw-9c2e"}});
    secrets
        .patch(
            &secret,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let app = fleet
        .wait_status(&name, "OutOfSync after the edit", |s| {
            s["sync"] == "OutOfSync"
        })
        .await;

    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let values = [
        "desired-pw-1f3a".to_owned(),
        "live-pw-9c2e".to_owned(),
        "admin-7d21".to_owned(),
        b64("desired-pw-1f3a"),
        b64("live-pw-9c2e"),
        b64("admin-7d21"),
    ];
    let shown = app.to_string();
    for value in &values {
        assert!(
            !shown.contains(value.as_str()),
            "{value} in the status: {shown}"
        );
    }
    let (status, diff) = fleet
        .call(
            "GET",
            &format!("/api/v1/applications/default/{name}/diff"),
            Some(&fleet.viewer),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{diff}");
    let shown = diff.to_string();
    for value in &values {
        assert!(
            !shown.contains(value.as_str()),
            "{value} in the diff: {shown}"
        );
    }
    let item = diff["clusters"][0]["diffs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "Secret")
        .unwrap_or_else(|| panic!("no Secret in the diff: {diff}"));
    let side =
        |key: &str| -> Value { serde_saphyr::from_str(item[key].as_str().unwrap()).unwrap() };
    let (desired, live) = (side("desired"), side("live"));
    assert_eq!(desired["data"]["user"], live["data"]["user"], "{diff}");
    assert_ne!(
        desired["data"]["password"], live["data"]["password"],
        "{diff}"
    );
    assert!(
        desired["data"]["password"]
            .as_str()
            .unwrap()
            .starts_with("++++"),
        "{diff}"
    );

    let _ = secrets.delete(&secret, &Default::default()).await;
    fleet.stop(&[]).await;
}

/// The recipe's myapp: a Deployment, a Service and a ConfigMap under
/// `apps/myapp/production`, the Deployment running `image`.
fn write_myapp(repo: &WorkRepo, image: &str, with_config: bool) {
    repo.write(
        "apps/myapp/production/deployment.yaml",
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: myapp\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: myapp}}\n  template:\n    metadata:\n      labels: {{app: myapp}}\n    spec:\n      containers:\n        - name: web\n          image: {image}\n          ports: [{{containerPort: 80}}]\n"
        ),
    );
    repo.write(
        "apps/myapp/production/service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: myapp\nspec:\n  selector: {app: myapp}\n  ports: [{port: 80, targetPort: 80}]\n",
    );
    if with_config {
        repo.write(
            "apps/myapp/production/configmap.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: myapp-settings\ndata:\n  greeting: hello\n",
        );
    } else {
        repo.remove("apps/myapp/production/configmap.yaml");
    }
}

/// The image of `namespace/myapp` on `member`'s cluster, if it exists.
async fn myapp_image(member: &Member, namespace: &str) -> Option<String> {
    use k8s_openapi::api::apps::v1::Deployment;
    let deployment = kube::Api::<Deployment>::namespaced(member.kube.clone(), namespace)
        .get_opt("myapp")
        .await
        .unwrap()?;
    deployment.spec?.template.spec?.containers[0].image.clone()
}

/// Polls `f` every 100 ms for up to `limit`, failing with `what`.
async fn until<F, Fut>(what: &str, limit: Duration, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Argo CD's Simple Application from the recipe, once per cluster: automated
/// prune and selfHeal with CreateNamespace. A commit (announced by a push webhook)
/// changes the image and both clusters converge; a `kubectl` edit is reverted and
/// reported with the field manager that made it; a file deleted from Git is pruned
/// on both clusters, and nothing else is. The apps are made from the manifest and
/// from `app create` flags; `app delete` cascades unless told not to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recipes_simple_application_converges_heals_prunes_and_cascades_on_two_clusters() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Service};

    let fleet = Fleet::start_on(2).await;
    let namespace = unique("production");
    let repo = WorkRepo::new();
    write_myapp(&repo, "nginx:1.25", true);
    repo.commit("myapp 1.25");
    let apps: Vec<String> = fleet
        .members
        .iter()
        .map(|m| format!("myapp-{}", m.name))
        .collect();
    // The first cluster's app from the recipe's manifest, the others' from
    // `flotilla app create` flags, as `argocd app create` takes them.
    fleet.cli_login("admin", ADMIN_PASSWORD);
    for (i, (member, app)) in fleet.members.iter().zip(&apps).enumerate() {
        if i == 0 {
            let manifest = format!(
                "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {app}
  namespace: argocd
spec:
  project: default
  source:
    repoURL: 'file://{repo}'
    targetRevision: main
    path: apps/myapp/production
  destination:
    name: {cluster}
    namespace: {namespace}
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
    syncOptions:
      - CreateNamespace=true
",
                repo = repo.path().display(),
                cluster = member.name,
            );
            let (status, body) = fleet.create_manifest(&manifest).await;
            assert_eq!(status, 201, "{body}");
        } else {
            let url = format!("file://{}", repo.path().display());
            let created = fleet.cli(
                "admin",
                &[
                    "app",
                    "create",
                    app,
                    "--repo",
                    &url,
                    "--path",
                    "apps/myapp/production",
                    "--revision",
                    "main",
                    "--dest-name",
                    &member.name,
                    "--dest-namespace",
                    &namespace,
                    "--sync-policy",
                    "automated",
                    "--auto-prune",
                    "--self-heal",
                    "--sync-option",
                    "CreateNamespace=true",
                ],
            );
            assert!(created.status.success(), "{}", text(&created.stderr));
        }
    }
    let synced_at = |commit: String| {
        move |s: &Value| {
            s["sync"] == "Synced"
                && s["health"] == "Healthy"
                && s["clusters"][0]["revision"] == commit.as_str()
        }
    };
    for app in &apps {
        fleet
            .wait_status(app, "Synced and Healthy", synced_at(repo.head()))
            .await;
    }
    for member in &fleet.members {
        assert!(
            kube::Api::<Namespace>::all(member.kube.clone())
                .get_opt(&namespace)
                .await
                .unwrap()
                .is_some(),
            "CreateNamespace made no namespace on {}",
            member.name
        );
        assert_eq!(
            myapp_image(member, &namespace).await.as_deref(),
            Some("nginx:1.25")
        );
    }

    // A new image in Git, announced by the forge's webhook: both clusters roll.
    write_myapp(&repo, "nginx:1.26", true);
    let commit = repo.commit("myapp 1.26");
    assert_eq!(fleet.push_webhook(&repo).await, 202);
    for app in &apps {
        fleet
            .wait_status(app, "the new image Synced", synced_at(commit.clone()))
            .await;
    }
    for member in &fleet.members {
        assert_eq!(
            myapp_image(member, &namespace).await.as_deref(),
            Some("nginx:1.26"),
            "{} did not converge",
            member.name
        );
    }

    // `kubectl scale`/`edit` behind Flotilla's back on the first cluster: reverted,
    // recorded as a selfHeal sync, and the drift names the field manager.
    let first = &fleet.members[0];
    let deployments = kube::Api::<Deployment>::namespaced(first.kube.clone(), &namespace);
    deployments
        .patch(
            "myapp",
            &kube::api::PatchParams::apply("kubectl-edit").force(),
            &kube::api::Patch::Apply(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "myapp"},
                "spec": {"replicas": 5},
            })),
        )
        .await
        .unwrap();
    until(
        "the edit to be reverted",
        Duration::from_secs(60),
        || async {
            deployments
                .get("myapp")
                .await
                .unwrap()
                .spec
                .unwrap()
                .replicas
                == Some(2)
        },
    )
    .await;
    eventually(
        "a selfHeal entry in the history",
        Duration::from_secs(30),
        || {
            fleet
                .store
                .history("default", &apps[0])
                .unwrap()
                .iter()
                .any(|h| {
                    h.initiated_by == "selfHeal"
                        && h.result == flotilla_hub::store::Phase::Succeeded
                })
        },
    )
    .await;
    let reports = fleet
        .store
        .status_history("default", &apps[0], &first.name)
        .unwrap();
    // The edit and its heal fall in one report: the drift is gone by then, and the
    // report's events say what drifted and who changed it.
    let named = |r: &flotilla_hub::store::StatusRecord| {
        r.status.drift.iter().any(|d| {
            d.path == ".spec.replicas" && d.field_manager.as_deref() == Some("kubectl-edit")
        }) || r.status.events.iter().any(|e| {
            e.reason == "Drifted"
                && e.message.contains("replicas")
                && e.message.contains("kubectl-edit")
        })
    };
    assert!(
        reports.iter().any(named),
        "no report says kubectl-edit changed the replicas: {:?}",
        reports
            .iter()
            .map(|r| (&r.status.drift, &r.status.events))
            .collect::<Vec<_>>()
    );

    // The ConfigMap's file leaves Git: pruned on both clusters; the rest stays.
    write_myapp(&repo, "nginx:1.26", false);
    let commit = repo.commit("drop the settings");
    assert_eq!(fleet.push_webhook(&repo).await, 202);
    for app in &apps {
        fleet
            .wait_status(app, "the prune Synced", synced_at(commit.clone()))
            .await;
    }
    for member in &fleet.members {
        let config_maps = kube::Api::<ConfigMap>::namespaced(member.kube.clone(), &namespace);
        until(
            "the ConfigMap to be pruned",
            Duration::from_secs(30),
            || async {
                config_maps
                    .get_opt("myapp-settings")
                    .await
                    .unwrap()
                    .is_none()
            },
        )
        .await;
        assert!(
            kube::Api::<Service>::namespaced(member.kube.clone(), &namespace)
                .get_opt("myapp")
                .await
                .unwrap()
                .is_some()
        );
        assert!(myapp_image(member, &namespace).await.is_some());
    }

    // `app delete` cascades by default: the first cluster's objects go. With
    // --cascade=false the second cluster's stay, unmanaged.
    let deleted = fleet.cli("admin", &["app", "delete", &apps[0]]);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    until(
        "the cascade to delete the Deployment",
        Duration::from_secs(30),
        || async { myapp_image(first, &namespace).await.is_none() },
    )
    .await;
    assert!(
        kube::Api::<Service>::namespaced(first.kube.clone(), &namespace)
            .get_opt("myapp")
            .await
            .unwrap()
            .is_none()
    );
    let kept = fleet.cli("admin", &["app", "delete", &apps[1], "--cascade=false"]);
    assert!(kept.status.success(), "{}", text(&kept.stderr));
    assert!(fleet.store.app("default", &apps[1]).unwrap().is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        myapp_image(&fleet.members[1], &namespace).await.as_deref(),
        Some("nginx:1.26"),
        "--cascade=false deleted the objects"
    );

    for member in &fleet.members {
        let _ = kube::Api::<Namespace>::all(member.kube.clone())
            .delete(&namespace, &Default::default())
            .await;
    }
    fleet.stop(&[]).await;
}

/// An app whose destination its AppProject does not allow is refused with the
/// rule named, in the app's conditions and from `flotilla app get`, and nothing
/// reaches the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_outside_its_projects_destinations_is_refused_naming_the_rule() {
    let fleet = Fleet::start().await;
    let project = unique("team");
    let name = unique("ops-outside");
    let cm = format!("{name}-settings");
    let repo = repo_with_config_map(&cm, "one");
    let (status, body) = fleet
        .post_text(
            "/api/v1/projects",
            &format!(
                "apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata:
  name: {project}
spec:
  sourceRepos: ['*']
  destinations:
    - name: {cluster}
      namespace: 'team-*'
",
                cluster = fleet.cluster
            ),
        )
        .await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    let manifest = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  project: {project}\n  source: {{repoURL: 'file://{}', path: app, targetRevision: main}}\n  destination: {{name: {}, namespace: default}}\n  syncPolicy: {{automated: {{prune: true}}}}\n",
        repo.path().display(),
        fleet.cluster
    );
    let (status, body) = fleet.create_manifest(&manifest).await;
    let refused_at_once = status >= 400;
    if refused_at_once {
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("is not permitted by spec.destinations"),
            "{message}"
        );
    } else {
        assert_eq!(status, 201, "{body}");
        let path = format!("/api/v1/applications/{project}/{name}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let condition = loop {
            let (status, app) = fleet
                .call("GET", &path, Some(&fleet.admin), Value::Null)
                .await;
            assert_eq!(status, 200, "{app}");
            let found = app["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "InvalidSpecError")
                .cloned();
            if let Some(found) = found {
                break found;
            }
            assert!(std::time::Instant::now() < deadline, "no condition: {app}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let message = condition["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("project {project}"))
                && message.contains("is not permitted by spec.destinations"),
            "{message}"
        );
        assert!(
            fleet
                .store
                .latest_bundle(&project, &name, &fleet.cluster)
                .unwrap()
                .is_none(),
            "a bundle was made for a refused app"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        fleet.config_map(&cm).await.is_none(),
        "the refused app was applied"
    );
    fleet.stop(&[]).await;
}

/// An app whose destination cluster has not registered yet waits with a condition
/// saying so, and renders as soon as the cluster's agent registers, not at the next
/// poll (three minutes later by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_waiting_for_its_cluster_renders_as_soon_as_the_cluster_registers() {
    let _alone = crate::support::alone().await;
    let mut fleet = Fleet::start_on(1).await;
    let late = flotilla_tests::fleet()
        .unwrap()
        .into_iter()
        .nth(1)
        .expect("this test needs two local clusters in FLOTILLA_TEST_CLUSTERS");
    let name = unique("ops-late");
    let cm = format!("{name}-settings");
    let repo = repo_with_config_map(&cm, "one");
    let manifest = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  project: default\n  source: {{repoURL: 'file://{}', path: app, targetRevision: main}}\n  destination: {{name: {}, namespace: default}}\n  syncPolicy: {{automated: {{prune: true}}}}\n",
        repo.path().display(),
        late.name()
    );
    let (status, body) = fleet.create_manifest(&manifest).await;
    assert_eq!(status, 201, "{body}");
    fleet
        .wait_status(&name, "a condition naming the missing cluster", |s| {
            s["conditions"].as_array().into_iter().flatten().any(|c| {
                c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("is not registered"))
            })
        })
        .await;

    let started = std::time::Instant::now();
    let member = Member::start(&fleet.store, &fleet.link, &late).await;
    let config_maps = kube::Api::<ConfigMap>::namespaced(member.kube.clone(), "default");
    fleet.members.push(member);
    fleet
        .wait_status(&name, "Synced and Healthy", |s| {
            s["sync"] == "Synced" && s["health"] == "Healthy"
        })
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}: the poll, not the registration, rendered it",
        started.elapsed()
    );
    assert_eq!(
        config_maps.get(&cm).await.unwrap().data.unwrap()["value"],
        "one"
    );
    let _ = config_maps.delete(&cm, &Default::default()).await;
    fleet.stop(&[]).await;
}

/// The admin's AppProject `name`, open to every repository and to the test
/// cluster's `default` namespace, with `extra` spec lines.
async fn create_project(fleet: &Fleet, name: &str, annotations: &str, extra: &str) {
    let (status, body) = fleet
        .post_text(
            "/api/v1/projects",
            &format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: {name}, annotations: {{{annotations}}}}}\nspec:\n  sourceRepos: ['*']\n  destinations: [{{name: {cluster}, namespace: default}}]\n{extra}",
                cluster = fleet.cluster
            ),
        )
        .await;
    assert!(status == 200 || status == 201, "{status}: {body}");
}

/// Polls `project/name` until a condition of `kind` holds all of `parts`.
async fn wait_condition(fleet: &Fleet, project: &str, name: &str, kind: &str, parts: &[&str]) {
    let path = format!("/api/v1/applications/{project}/{name}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, app) = fleet
            .call("GET", &path, Some(&fleet.admin), Value::Null)
            .await;
        assert_eq!(status, 200, "{app}");
        let found = app["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"] == kind
                    && parts
                        .iter()
                        .all(|p| c["message"].as_str().unwrap_or_default().contains(p))
            });
        if found {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} condition with {parts:?}: {app}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A parent in one team's project that renders a child Application into the
/// `default` project (which would let the child deploy anything anywhere) is
/// refused: the parent shows a condition naming the child and the rule, the
/// child's ConfigMap never reaches the cluster, and the parent's permitted child
/// is applied all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_cannot_create_a_child_outside_its_project_and_says_so() {
    let fleet = Fleet::start().await;
    let project = unique("team-adopt");
    let parent = unique("ops-parent");
    let good = format!("{parent}-good");
    let escape = format!("{parent}-escape");
    let repo = WorkRepo::new();
    let child = |name: &str, child_project: &str, path: &str| {
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  project: {child_project}\n  source: {{repoURL: 'file://{}', path: {path}, targetRevision: main}}\n  destination: {{name: {}, namespace: default}}\n  syncPolicy: {{automated: {{prune: true}}}}\n",
            repo.path().display(),
            fleet.cluster
        )
    };
    let cm = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\ndata: {{value: \"x\"}}\n"
        )
    };
    repo.write("good/cm.yaml", &cm(&good))
        .write("escape/cm.yaml", &cm(&escape))
        .write("argo/good.yaml", &child(&good, &project, "good"))
        .write("argo/escape.yaml", &child(&escape, "default", "escape"));
    repo.commit("parent with two children");
    create_project(&fleet, &project, "", "").await;
    let (status, body) = fleet
        .create_manifest(&child(&parent, &project, "argo"))
        .await;
    assert_eq!(status, 201, "{body}");

    wait_condition(
        &fleet,
        &project,
        &parent,
        "ChildRefusedError",
        &[
            &format!("Application default/{escape}"),
            "in project default",
            "flotilla.dev/parent-projects",
        ],
    )
    .await;
    until(
        "the permitted child applied",
        Duration::from_secs(60),
        || async { fleet.config_map(&good).await.is_some() },
    )
    .await;
    assert!(fleet.store.app("default", &escape).unwrap().is_none());
    assert!(
        fleet.config_map(&escape).await.is_none(),
        "the refused child reached the cluster"
    );

    fleet.stop(&[&good]).await;
}

/// A rollback re-signs an old bundle; once the project no longer permits its
/// objects, the rollback is refused naming the rule, nothing is stored and the
/// cluster keeps what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_the_narrowed_project_no_longer_permits_is_refused() {
    let fleet = Fleet::start().await;
    let project = unique("team-narrow");
    let name = unique("ops-narrow");
    let cm = format!("{name}-settings");
    let repo = repo_with_config_map(&cm, "one");
    create_project(&fleet, &project, "", "").await;
    let manifest = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  project: {project}\n  source: {{repoURL: 'file://{}', path: app, targetRevision: main}}\n  destination: {{name: {}, namespace: default}}\n  syncPolicy: {{automated: {{prune: true}}}}\n",
        repo.path().display(),
        fleet.cluster
    );
    let (status, body) = fleet.create_manifest(&manifest).await;
    assert_eq!(status, 201, "{body}");
    eventually(
        "the first sync in the history",
        Duration::from_secs(60),
        || fleet.store.history(&project, &name).unwrap().len() == 1,
    )
    .await;
    let first = fleet.store.history(&project, &name).unwrap()[0].id;

    // An admin narrows the project (the API has no update; the store is what an
    // update would write).
    let narrowed = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: {project}}}\nspec:\n  sourceRepos: ['*']\n  destinations: [{{name: {}, namespace: default}}]\n  namespaceResourceBlacklist: [{{group: '', kind: ConfigMap}}]\n",
        fleet.cluster
    );
    let manifests = flotilla_hub::app::parse_manifests(&narrowed, "narrowed").unwrap();
    let flotilla_hub::app::Manifest::AppProject(narrowed) = &manifests[0] else {
        panic!("a project")
    };
    fleet.store.put_project(narrowed).await.unwrap();
    let latest = || {
        fleet
            .store
            .latest_bundle(&project, &name, &fleet.cluster)
            .unwrap()
            .unwrap()
            .0
    };
    let before = latest();

    let (status, body) = fleet
        .call(
            "POST",
            &format!("/api/v1/applications/{project}/{name}/rollback"),
            Some(&fleet.admin),
            json!({"id": first}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("history entry {first}"))
            && message.contains("no longer permits")
            && message.contains("spec.namespaceResourceBlacklist"),
        "{body}"
    );
    assert_eq!(latest(), before, "a refused rollback stored a bundle");
    let record = fleet.store.app(&project, &name).unwrap().unwrap();
    assert!(
        record.application.automated().is_some(),
        "a refused rollback switched automation off"
    );
    assert_eq!(
        fleet.config_map(&cm).await.unwrap().data.unwrap()["value"],
        "one"
    );

    fleet.stop(&[&cm]).await;
}

/// A bundle the agent refuses before it can read which app it is for (here: one
/// that expired on the way) shows on that app as a BundleRejected condition with
/// the reason, through the real link and the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_the_agent_refuses_unread_shows_on_its_app_with_the_reason() {
    let fleet = Fleet::start().await;
    let name = unique("ops-expired");
    let cm = format!("{name}-settings");
    let repo = repo_with_config_map(&cm, "one");
    fleet.create_app(&repo, &name, true).await;
    fleet
        .wait_status(&name, "Synced and Healthy", |s| {
            s["sync"] == "Synced" && s["health"] == "Healthy"
        })
        .await;

    // The next generation, signed by the hub's key but already expired.
    let (generation, bytes) = fleet
        .store
        .latest_bundle("default", &name, &fleet.cluster)
        .unwrap()
        .unwrap();
    let envelope = flotilla_common::bundle::Envelope::decode(&bytes).unwrap();
    let mut bundle = flotilla_common::bundle::Bundle::decode(&envelope.payload).unwrap();
    bundle.generation = generation + 1;
    bundle.not_after = flotilla_common::model::Timestamp::from_system_time(
        std::time::SystemTime::now() - Duration::from_secs(60),
    );
    let expired = fleet
        .store
        .bundle_signer()
        .await
        .unwrap()
        .sign(&bundle)
        .unwrap();
    fleet
        .store
        .put_bundle(
            "default",
            &name,
            &fleet.cluster,
            bundle.generation,
            &expired.encode().unwrap(),
        )
        .await
        .unwrap();

    let app = fleet
        .wait_status(&name, "a BundleRejected condition", |s| {
            s["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "BundleRejected")
        })
        .await;
    let condition = app["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "BundleRejected")
        .unwrap();
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("generation {}", generation + 1)) && message.contains("expired"),
        "{message}"
    );
    assert_eq!(condition["cluster"], fleet.cluster.as_str());
    assert_eq!(app["status"]["sync"], "Unknown", "{app}");
    // The cluster keeps what it had.
    assert_eq!(
        fleet.config_map(&cm).await.unwrap().data.unwrap()["value"],
        "one"
    );
    fleet.stop(&[&cm]).await;
}

/// Argo CD's confirmation options end to end: a `Prune=confirm` object that left
/// Git stays and the app says it waits for confirmation until `app confirm`; a
/// cascading `app delete` of an app holding a `Delete=confirm` object is refused,
/// naming it, until `--confirm`; and a `Delete=false` object outlives the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_delete_confirmation_wait_for_the_user() {
    let fleet = Fleet::start().await;
    let name = unique("ops-confirm");
    let [plain, guarded, asked, kept] =
        ["plain", "guarded", "asked", "kept"].map(|n| format!("{name}-{n}"));
    let repo = WorkRepo::new();
    let map = |cm: &str, options: Option<&str>| {
        let annotations = options
            .map(|o| format!(", annotations: {{argocd.argoproj.io/sync-options: {o}}}"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {cm}, namespace: default{annotations}}}\ndata: {{value: one}}\n"
        )
    };
    repo.write("app/plain.yaml", &map(&plain, None));
    repo.write("app/guarded.yaml", &map(&guarded, Some("Prune=confirm")));
    repo.write("app/asked.yaml", &map(&asked, Some("Delete=confirm")));
    repo.write("app/kept.yaml", &map(&kept, Some("Delete=false")));
    repo.commit("four maps");
    fleet.create_app(&repo, &name, true).await;
    fleet
        .wait_status(&name, "Synced", |s| s["sync"] == "Synced")
        .await;

    repo.remove("app/guarded.yaml");
    let commit = repo.commit("guarded leaves Git");
    assert_eq!(fleet.push_webhook(&repo).await, 202);
    let waits = |s: &Value| {
        s["clusters"][0]["revision"] == commit.as_str()
            && s["clusters"][0]["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| {
                    r["name"] == guarded.as_str()
                        && r["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("waiting for confirmation"))
                })
    };
    fleet
        .wait_status(&name, "the prune to wait for confirmation", waits)
        .await;
    assert!(fleet.config_map(&guarded).await.is_some());
    fleet.cli_login("admin", ADMIN_PASSWORD);
    let shown = fleet.cli("admin", &["app", "get", &name]);
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("Prune=confirm: waiting for confirmation"),
        "{shown}"
    );

    let confirmed = fleet.cli("admin", &["app", "confirm", &name]);
    assert!(confirmed.status.success(), "{}", text(&confirmed.stderr));
    until("the confirmed prune", Duration::from_secs(30), || async {
        fleet.config_map(&guarded).await.is_none()
    })
    .await;

    let refused = fleet.cli("admin", &["app", "delete", &name]);
    assert!(!refused.status.success());
    let message = text(&refused.stderr);
    assert!(
        message.contains("Delete=confirm") && message.contains(&asked),
        "{message}"
    );
    assert!(fleet.store.app("default", &name).unwrap().is_some());
    assert!(fleet.config_map(&plain).await.is_some());

    let deleted = fleet.cli("admin", &["app", "delete", &name, "--confirm"]);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    until("the confirmed cascade", Duration::from_secs(30), || async {
        fleet.config_map(&plain).await.is_none() && fleet.config_map(&asked).await.is_none()
    })
    .await;
    assert!(
        fleet.config_map(&kept).await.is_some(),
        "a Delete=false object was deleted with its app"
    );
    fleet.stop(&[&kept]).await;
}

/// An open deny window in the app's project: the automated app is not applied
/// (it shows OutOfSync), a manual sync is refused naming the window, and
/// `app get` and `proj windows list` show the window as active. The window is
/// open at every minute for an hour, so the test does not depend on the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_deny_window_blocks_automated_and_manual_syncs() {
    let fleet = Fleet::start().await;
    let project = unique("frozen");
    let name = unique("ops-window");
    let cm = format!("{name}-settings");
    let repo = repo_with_config_map(&cm, "one");
    let (status, body) = fleet
        .post_text(
            "/api/v1/projects",
            &format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: {project}}}\nspec:\n  sourceRepos: ['*']\n  destinations: [{{name: '*', namespace: '*'}}]\n  syncWindows:\n    - {{kind: deny, schedule: '* * * * *', duration: 1h, applications: ['*']}}\n"
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = fleet
        .create_manifest(&format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  project: {project}\n  source: {{repoURL: 'file://{}', path: app, targetRevision: main}}\n  destination: {{name: {}, namespace: default}}\n  syncPolicy: {{automated: {{prune: true, selfHeal: true}}}}\n  info: [{{name: Runbook, value: 'https://runbooks.example/web'}}]\n",
            repo.path().display(),
            fleet.cluster
        ))
        .await;
    assert_eq!(status, 201, "{body}");
    let path = format!("/api/v1/applications/{project}/{name}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, app) = fleet
            .call("GET", &path, Some(&fleet.admin), Value::Null)
            .await;
        if app["status"]["sync"] == "OutOfSync" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{app}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fleet.config_map(&cm).await.is_none(),
        "an automated app synced inside a deny window"
    );

    fleet.cli_login("admin", ADMIN_PASSWORD);
    let app = format!("{project}/{name}");
    let refused = fleet.cli("admin", &["app", "sync", &app]);
    assert!(!refused.status.success());
    let message = text(&refused.stderr);
    assert!(
        message.contains("not allowed now") && message.contains("deny window"),
        "{message}"
    );
    assert!(fleet.config_map(&cm).await.is_none());

    let shown = fleet.cli("admin", &["app", "get", &app]);
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("Sync window:") && shown.contains("syncs blocked"),
        "{shown}"
    );
    assert!(
        shown.contains("Runbook:") && shown.contains("https://runbooks.example/web"),
        "spec.info is shown: {shown}"
    );
    let windows = fleet.cli("admin", &["proj", "windows", "list", &project]);
    assert!(windows.status.success(), "{}", text(&windows.stderr));
    let windows = text(&windows.stdout);
    assert!(
        windows.contains("Active") && windows.contains("deny") && windows.contains("* * * * *"),
        "{windows}"
    );
    fleet.stop(&[&cm]).await;
}
