use serde_json::json;

use super::{Segment, compare, contains, manager_of, without_ignored};

fn key(path: &str) -> Vec<Segment> {
    path.split('.').map(|k| Segment::Key(k.into())).collect()
}

#[test]
fn contains_ignores_server_added_fields_but_sees_changed_ones() {
    let desired = json!({"spec": {"replicas": 3, "ports": [{"port": 80}]}});
    let live = json!({"spec": {"replicas": 3, "ports": [{"port": 80, "protocol": "TCP"}], "x": 1}, "status": {}});
    assert!(contains(&desired, &live));
    let drifted = json!({"spec": {"replicas": 5, "ports": [{"port": 80}]}});
    assert!(!contains(&desired, &drifted));
    let fewer = json!({"spec": {"replicas": 3, "ports": []}});
    assert!(!contains(&desired, &fewer));
}

#[test]
fn compare_reports_changed_fields_but_not_status_or_server_metadata() {
    let desired = json!({"metadata": {"name": "web", "resourceVersion": "1", "labels": {"a": "b"}},
        "spec": {"replicas": 3, "template": {"x": [1, 2]}}, "status": {"ready": 3}});
    let live = json!({"metadata": {"name": "web", "resourceVersion": "9", "labels": {"a": "b", "c": "d"}},
        "spec": {"replicas": 5, "template": {"x": [1, 2]}}, "status": {"ready": 5}});
    let found = compare(&desired, &live);
    assert_eq!(
        found,
        vec![
            (key("metadata.labels.c"), None, Some(json!("d"))),
            (key("spec.replicas"), Some(json!(3)), Some(json!(5))),
        ]
    );
}

#[test]
fn manager_is_the_one_owning_the_field() {
    let live = json!({"metadata": {"managedFields": [
        {"manager": "flotilla", "operation": "Apply", "time": "2026-01-01T00:00:00Z",
         "fieldsV1": {"f:spec": {"f:template": {}}}},
        {"manager": "kubectl-edit", "operation": "Update", "time": "2026-01-01T00:01:00Z",
         "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    ]}});
    assert_eq!(
        manager_of(&live, &key("spec.replicas")).as_deref(),
        Some("kubectl-edit")
    );
    assert_eq!(
        manager_of(&live, &key("spec.template.x")).as_deref(),
        Some("flotilla")
    );
    assert_eq!(manager_of(&live, &key("data.other")), None);
}

#[test]
fn ignored_paths_are_removed_by_pointer_and_by_jq_path() {
    let bundle = Bundle {
        app: AppRef::new("default", "a"),
        cluster: "east".into(),
        source: Default::default(),
        generation: 1,
        created_at: Timestamp(0),
        not_after: Timestamp(1),
        policy: Default::default(),
        ignore_differences: vec![IgnoreDifference {
            group: "apps".into(),
            kind: "Deployment".into(),
            json_pointers: vec!["/spec/replicas".into(), "/metadata/annotations/a~1b".into()],
            jq_path_expressions: vec![".spec.template.spec.containers".into()],
            ..IgnoreDifference::default()
        }],
        project: flotilla_common::project::ProjectRules::allow_all("default", "east"),
        objects: Vec::new(),
    };
    let deployment = ResourceRef {
        gvk: Gvk::new("apps", "v1", "Deployment"),
        namespace: Some("shop".into()),
        name: "web".into(),
    };
    let object = serde_json::json!({
        "metadata": {"annotations": {"a/b": "x", "keep": "y"}},
        "spec": {"replicas": 3, "paused": false,
            "template": {"spec": {"containers": [{"name": "app"}], "hostNetwork": false}}}
    });
    let stripped = without_ignored(&bundle, &deployment, object.clone());
    assert_eq!(
        stripped,
        serde_json::json!({
            "metadata": {"annotations": {"keep": "y"}},
            "spec": {"paused": false, "template": {"spec": {"hostNetwork": false}}}
        })
    );
    let config_map = ResourceRef {
        gvk: Gvk::new("", "v1", "ConfigMap"),
        ..deployment
    };
    assert_eq!(
        without_ignored(&bundle, &config_map, object.clone()),
        object
    );
}

use flotilla_common::bundle::{Bundle, IgnoreDifference};
use flotilla_common::model::{AppRef, Gvk, ResourceRef, Timestamp};

fn bundle_ignoring(rule: IgnoreDifference) -> Bundle {
    Bundle {
        app: AppRef::new("default", "a"),
        cluster: "east".into(),
        source: Default::default(),
        generation: 1,
        created_at: Timestamp(0),
        not_after: Timestamp(1),
        policy: Default::default(),
        ignore_differences: vec![rule],
        project: flotilla_common::project::ProjectRules::allow_all("default", "east"),
        objects: Vec::new(),
    }
}

#[test]
fn jq_path_expressions_select_fields_as_jq_does_and_group_star_matches_any_group() {
    let bundle = bundle_ignoring(IgnoreDifference {
        group: "*".into(),
        kind: "Deployment".into(),
        jq_path_expressions: vec![
            r#".spec.template.spec.containers[] | select(.name == "sidecar") | .image"#.into(),
        ],
        ..IgnoreDifference::default()
    });
    let deployment = ResourceRef {
        gvk: Gvk::new("apps", "v1", "Deployment"),
        namespace: Some("shop".into()),
        name: "web".into(),
    };
    let containers = |app: &str, sidecar: &str| {
        serde_json::json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": app},
            {"name": "sidecar", "image": sidecar}
        ]}}}})
    };
    // The injected sidecar's image is ignored; the app's is not.
    let drift = super::differences(
        &bundle,
        &deployment,
        &containers("app:1", "proxy:1"),
        &containers("app:1", "proxy:9"),
        "flotilla",
    );
    assert!(drift.is_empty(), "{drift:?}");
    let drift = super::differences(
        &bundle,
        &deployment,
        &containers("app:1", "proxy:1"),
        &containers("app:2", "proxy:1"),
        "flotilla",
    );
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert!(drift[0].path.contains("[0]"), "{drift:?}");
}

#[test]
fn respecting_ignored_fields_takes_them_from_the_live_object() {
    let bundle = bundle_ignoring(IgnoreDifference {
        group: "apps".into(),
        kind: "Deployment".into(),
        json_pointers: vec!["/spec/replicas".into(), "/spec/paused".into()],
        ..IgnoreDifference::default()
    });
    let deployment = ResourceRef {
        gvk: Gvk::new("apps", "v1", "Deployment"),
        namespace: Some("shop".into()),
        name: "web".into(),
    };
    let desired =
        serde_json::json!({"spec": {"replicas": 2, "paused": true, "minReadySeconds": 5}});
    let live = serde_json::json!({"spec": {"replicas": 7, "minReadySeconds": 1}});
    assert_eq!(
        super::respecting_ignored(&bundle, &deployment, desired, &live),
        serde_json::json!({"spec": {"replicas": 7, "minReadySeconds": 5}})
    );
}
