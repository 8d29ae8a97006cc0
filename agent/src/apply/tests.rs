use flotilla_common::bundle::Object;
use flotilla_common::model::{AppRef, Gvk};
use serde_json::json;

use super::app_label;

/// An object of `kind` in wave `wave`, for tests of this module and its children.
pub(super) fn object(kind: &str, name: &str, wave: i32) -> Object {
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
