use flotilla_common::message::DriftEntry;
use flotilla_common::model::{Gvk, ResourceRef};

use super::describe_entry;

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
