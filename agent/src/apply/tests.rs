use flotilla_common::bundle::{Hook, HookPhase, Object};
use flotilla_common::model::{AppRef, Gvk};
use serde_json::json;

use super::{app_label, contains, sync_order};

fn object(kind: &str, name: &str, wave: i32) -> Object {
    let gvk = match kind {
        "CustomResourceDefinition" => Gvk::new("apiextensions.k8s.io", "v1", kind),
        "Deployment" => Gvk::new("apps", "v1", kind),
        "Job" => Gvk::new("batch", "v1", kind),
        _ => Gvk::new("", "v1", kind),
    };
    let mut o = Object::new(gvk, None, name, &json!({"kind": kind}));
    o.wave = wave;
    o
}

#[test]
fn label_is_project_dot_name_when_valid() {
    assert_eq!(
        app_label(&AppRef::new("default", "guestbook")),
        "default.guestbook"
    );
}

#[test]
fn label_is_escaped_and_hashed_when_too_long_or_invalid() {
    let long = app_label(&AppRef::new("default", "a".repeat(80)));
    assert!(long.len() <= 63, "{long}");
    let odd = app_label(&AppRef::new("team a", "app/x"));
    assert!(
        odd.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "{odd}"
    );
    assert_ne!(
        app_label(&AppRef::new("default", "a".repeat(80))),
        app_label(&AppRef::new("default", "a".repeat(81)))
    );
}

#[test]
fn order_is_phase_then_wave_then_kind_with_crds_first() {
    let mut pre = object("Job", "migrate", 5);
    pre.hook = Some(Hook {
        phase: HookPhase::PreSync,
        delete_policy: vec![],
    });
    let mut post = object("Job", "smoke", -5);
    post.hook = Some(Hook {
        phase: HookPhase::PostSync,
        delete_policy: vec![],
    });
    let objects = vec![
        post,
        object("Deployment", "web", 1),
        object("Service", "web", 1),
        object("ConfigMap", "conf", 2),
        object("Namespace", "ns", 0),
        object("CustomResourceDefinition", "widgets", 3),
        pre,
    ];
    let names: Vec<String> = sync_order(&objects)
        .iter()
        .map(|o| format!("{}/{}", o.gvk.kind, o.name))
        .collect();
    assert_eq!(
        names,
        [
            "Job/migrate",
            "CustomResourceDefinition/widgets",
            "Namespace/ns",
            "Service/web",
            "Deployment/web",
            "ConfigMap/conf",
            "Job/smoke"
        ]
    );
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
