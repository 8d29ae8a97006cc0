use super::*;

fn app(source: &str) -> Application {
    let text = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: a}}\nspec:\n  source:\n{source}\n  destination: {{name: east}}\n"
    );
    Application::from_yaml(&text, "a.yaml").unwrap()
}

fn changed(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|p| (*p).to_owned()).collect()
}

#[test]
fn a_directory_app_is_affected_only_by_changes_inside_its_folder() {
    let a = app("    repoURL: /r\n    path: apps/web");
    assert!(affected_by(
        &a,
        SourceKind::Directory,
        &changed(&["apps/web/deploy.yaml"])
    ));
    assert!(affected_by(
        &a,
        SourceKind::Directory,
        &changed(&["apps/web/deep/x.yaml"])
    ));
    assert!(!affected_by(
        &a,
        SourceKind::Directory,
        &changed(&["apps/web2/deploy.yaml"])
    ));
    assert!(!affected_by(
        &a,
        SourceKind::Directory,
        &changed(&["apps/db/x.yaml", "README.md"])
    ));
    assert!(!affected_by(&a, SourceKind::Directory, &[]));
}

#[test]
fn kustomize_and_helm_apps_are_affected_by_any_change_since_they_reach_outside_their_folder() {
    let a = app("    repoURL: /r\n    path: apps/web/overlays/prod");
    for kind in [SourceKind::Kustomize, SourceKind::Helm] {
        assert!(affected_by(
            &a,
            kind,
            &changed(&["apps/web/base/deploy.yaml"])
        ));
        assert!(!affected_by(&a, kind, &[]));
    }
}

#[test]
fn a_chart_from_a_helm_repository_is_never_affected_by_git_changes() {
    let a = app("    repoURL: https://charts.example\n    chart: web\n    targetRevision: 1.0.0");
    assert!(!affected_by(
        &a,
        SourceKind::HelmRepo,
        &changed(&["anything"])
    ));
}

#[test]
fn a_directory_app_at_the_repo_root_is_affected_by_every_change() {
    let a = app("    repoURL: /r\n    path: .");
    assert!(affected_by(
        &a,
        SourceKind::Directory,
        &changed(&["x/y.yaml"])
    ));
}

fn crd(group: &str, kind: &str, scope: &str, hook: Option<&str>) -> serde_json::Value {
    let mut crd = serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{}s.{group}", kind.to_lowercase())},
        "spec": {"group": group, "scope": scope,
            "names": {"kind": kind, "plural": format!("{}s", kind.to_lowercase())}}
    });
    if let Some(hook) = hook {
        crd["metadata"]["annotations"] = serde_json::json!({ objects::HOOK: hook });
    }
    crd
}

fn binding() -> serde_json::Value {
    serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "take-over"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "shop"}]})
}

fn namespace_of(objects: &[flotilla_common::bundle::Object], kind: &str) -> Option<String> {
    objects
        .iter()
        .find(|o| o.gvk.kind == kind)
        .and_then(|o| o.namespace.clone())
}

#[test]
fn a_rendered_crd_cannot_make_a_cluster_scoped_kubernetes_kind_look_namespaced() {
    for hook in [None, Some("Skip")] {
        let manifests = vec![
            crd(
                "rbac.authorization.k8s.io",
                "ClusterRoleBinding",
                "Namespaced",
                hook,
            ),
            binding(),
        ];
        let objects = objects::to_objects(manifests, Some("shop"), None).unwrap();
        assert_eq!(
            namespace_of(&objects, "ClusterRoleBinding"),
            None,
            "{hook:?}"
        );
    }
}

#[test]
fn the_clusters_facts_decide_scope_before_any_rendered_crd() {
    let facts = flotilla_common::model::ClusterFacts {
        api_resources: vec![flotilla_common::model::ApiResource {
            group_version: "example.com/v1".into(),
            kind: "Widget".into(),
            plural: "widgets".into(),
            namespaced: false,
        }],
        ..Default::default()
    };
    let widget = serde_json::json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w"}});
    let manifests = vec![
        crd("example.com", "Widget", "Namespaced", None),
        widget.clone(),
    ];
    let objects = objects::to_objects(manifests, Some("shop"), Some(&facts)).unwrap();
    assert_eq!(namespace_of(&objects, "Widget"), None);

    // A CRD the cluster has not seen yet decides for its own kind, unless it is
    // never applied.
    let manifests = vec![
        crd("example.com", "Widget", "Namespaced", None),
        widget.clone(),
    ];
    let objects = objects::to_objects(manifests, Some("shop"), None).unwrap();
    assert_eq!(namespace_of(&objects, "Widget").as_deref(), Some("shop"));
    let manifests = vec![
        crd("example.com", "Widget", "Cluster", Some("Skip")),
        widget,
    ];
    let objects = objects::to_objects(manifests, Some("shop"), None).unwrap();
    assert_eq!(namespace_of(&objects, "Widget").as_deref(), Some("shop"));
}

fn hook_job(generate_name: &str, name: Option<&str>, hook: Option<&str>) -> serde_json::Value {
    let mut job = serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"generateName": generate_name},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "run", "image": "busybox"}]}}}
    });
    if let Some(name) = name {
        job["metadata"]["name"] = serde_json::json!(name);
    }
    if let Some(hook) = hook {
        job["metadata"]["annotations"] = serde_json::json!({ "argocd.argoproj.io/hook": hook });
    }
    job
}

#[test]
fn a_hook_with_generate_name_gets_a_stable_name_from_its_prefix() {
    let render = || {
        objects::to_objects(
            vec![hook_job("before-", None, Some("PreSync"))],
            Some("shop"),
            None,
        )
        .unwrap()
    };
    let first = render();
    let name = &first[0].name;
    assert!(
        name.starts_with("before-") && name.len() == "before-".len() + 5,
        "{name}"
    );
    assert_eq!(render()[0].name, *name, "the same hook, the same name");
    let manifest = first[0].manifest_json().unwrap();
    assert_eq!(manifest["metadata"]["name"], name.as_str());
    assert_eq!(
        first[0].hook.as_ref().unwrap().phase,
        flotilla_common::bundle::HookPhase::PreSync
    );
    // A name, when given, wins.
    let named = objects::to_objects(
        vec![hook_job("before-", Some("migrate"), Some("PreSync"))],
        Some("shop"),
        None,
    )
    .unwrap();
    assert_eq!(named[0].name, "migrate");
}

#[test]
fn generate_name_on_an_object_that_is_not_a_hook_is_refused() {
    let e = objects::to_objects(vec![hook_job("web-", None, None)], Some("shop"), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("generateName") && e.contains("only hooks"),
        "{e}"
    );
}

fn annotated_job(annotations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "cleanup", "annotations": annotations},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "run", "image": "busybox"}]}}}
    })
}

#[test]
fn delete_hooks_map_as_argo_cd_maps_them() {
    use flotilla_common::bundle::HookPhase;
    let phase = |annotations| {
        objects::to_objects(vec![annotated_job(annotations)], Some("shop"), None)
            .map(|o| o[0].hook.as_ref().map(|h| h.phase))
    };
    assert_eq!(
        phase(serde_json::json!({"argocd.argoproj.io/hook": "PreDelete"})).unwrap(),
        Some(HookPhase::PreDelete)
    );
    assert_eq!(
        phase(serde_json::json!({"argocd.argoproj.io/hook": "PostDelete"})).unwrap(),
        Some(HookPhase::PostDelete)
    );
    assert_eq!(
        phase(serde_json::json!({"helm.sh/hook": "pre-delete"})).unwrap(),
        Some(HookPhase::PreDelete)
    );
    assert_eq!(
        phase(serde_json::json!({"helm.sh/hook": "post-delete"})).unwrap(),
        Some(HookPhase::PostDelete)
    );
    let e = phase(serde_json::json!({"helm.sh/hook": "post-install,post-delete"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("one phase"), "{e}");
}

#[test]
fn compare_options_are_checked_when_rendered() {
    let with = |options: &str| {
        objects::to_objects(
            vec![annotated_job(
                serde_json::json!({"argocd.argoproj.io/compare-options": options}),
            )],
            Some("shop"),
            None,
        )
    };
    with("IgnoreExtraneous").unwrap();
    with("IgnoreExtraneous, ServerSideDiff=true").unwrap();
    let e = with("ServerSideDiff=false").unwrap_err().to_string();
    assert!(
        e.contains("compare-options") && e.contains("ServerSideDiff=false"),
        "{e}"
    );
    let e = with("IncludeMutationWebhook=true").unwrap_err().to_string();
    assert!(e.contains("unknown compare option"), "{e}");
}
