use flotilla_common::message::DriftEntry;
use flotilla_common::model::{Gvk, ResourceRef};
use serde_json::json;

use super::compare::Segment;
use super::{compare, describe_entry, manager_of};

fn key(path: &str) -> Vec<Segment> {
    path.split('.').map(|k| Segment::Key(k.into())).collect()
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
fn entry_reads_like_the_issue_asks() {
    let entry = DriftEntry {
        resource: ResourceRef {
            gvk: Gvk::new("apps", "v1", "Deployment"),
            namespace: Some("ns".into()),
            name: "web".into(),
        },
        path: "spec.replicas".into(),
        old: Some("3".into()),
        new: Some("5".into()),
        field_manager: Some("kubectl-edit".into()),
    };
    assert_eq!(
        describe_entry(&entry),
        "spec.replicas: 3 → 5, changed by kubectl-edit"
    );
}

#[test]
fn a_secret_drift_names_the_field_and_never_its_values() {
    let entry = DriftEntry {
        resource: ResourceRef {
            gvk: Gvk::new("", "v1", "Secret"),
            namespace: Some("ns".into()),
            name: "db".into(),
        },
        path: "data.password".into(),
        old: Some("\"aHVudGVyMg==\"".into()),
        new: Some("\"b3BlbnNlc2FtZQ==\"".into()),
        field_manager: Some("kubectl-edit".into()),
    };
    let text = describe_entry(&entry);
    assert!(
        !text.contains("aHVudGVyMg==") && !text.contains("b3BlbnNlc2FtZQ=="),
        "{text}"
    );
    assert_eq!(
        text,
        "data.password: ++++++++ → ++++++++++++, changed by kubectl-edit"
    );
    let added = DriftEntry { old: None, ..entry };
    assert!(describe_entry(&added).starts_with("data.password: (absent) → +"));
}

#[test]
fn ignored_paths_are_removed_by_pointer_and_by_jq_path() {
    use flotilla_common::bundle::{Bundle, IgnoreDifference};
    use flotilla_common::model::{AppRef, Gvk, ResourceRef, Timestamp};
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
    let stripped = super::without_ignored(&bundle, &deployment, object.clone());
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
        super::without_ignored(&bundle, &config_map, object.clone()),
        object
    );
}
