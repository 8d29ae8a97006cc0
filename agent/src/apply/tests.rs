use flotilla_common::bundle::{Hook, HookPhase, Object};
use flotilla_common::model::{AppRef, Gvk};
use serde_json::json;

use super::{Reach, app_label, contains, sync_order};

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

fn resource(kind: &str, name: &str) -> flotilla_common::model::ResourceRef {
    object(kind, name, 0).resource()
}

fn report(outcome: super::Outcome, dry_run: bool) -> super::SyncReport {
    use super::{Action, HookOutcome, HookResult, ObjectResult};
    let hook = |name: &str, phase, outcome| HookResult {
        resource: resource("Job", name),
        phase,
        outcome,
        deleted: false,
    };
    super::SyncReport {
        app: AppRef::new("default", "shop"),
        generation: 4,
        outcome,
        resources: vec![ObjectResult {
            resource: resource("ConfigMap", "settings"),
            wave: 0,
            action: if dry_run {
                Action::WouldChange
            } else {
                Action::Configured
            },
            health: crate::health::assess_live(None),
            error: None,
        }],
        hooks: vec![
            hook("migrate", HookPhase::PreSync, HookOutcome::AlreadyRan),
            hook(
                "smoke",
                HookPhase::PostSync,
                HookOutcome::Failed("exit 1".into()),
            ),
        ],
        pruned: vec![resource("ConfigMap", "old")],
        kept: vec![(resource("ConfigMap", "pinned"), "Prune=false".into())],
        writes: 2,
        waves: Vec::new(),
        kind_waits: Vec::new(),
        warnings: Vec::new(),
        started_at: flotilla_common::model::Timestamp(7),
        duration: std::time::Duration::from_millis(1500),
        dry_run,
    }
}

#[test]
fn an_operation_lists_hooks_objects_pruned_and_kept_in_the_order_they_ran() {
    use flotilla_common::message::{OperationPhase, ResourceAction};
    let failed = super::Outcome::Failed {
        resource: Some(resource("Job", "smoke")),
        message: "hook smoke failed".into(),
    };
    let operation = report(failed, false).operation(Some(9));
    let listed: Vec<(&str, ResourceAction)> = operation
        .resources
        .iter()
        .map(|r| (r.resource.name.as_str(), r.action))
        .collect();
    assert_eq!(
        listed,
        [
            ("migrate", ResourceAction::HookSucceeded),
            ("settings", ResourceAction::Configured),
            ("old", ResourceAction::Pruned),
            ("pinned", ResourceAction::PruneSkipped),
            ("smoke", ResourceAction::HookFailed),
        ]
    );
    assert_eq!(operation.request_id, Some(9));
    assert_eq!(operation.phase, OperationPhase::Failed);
    assert_eq!(operation.duration_ms, 1500);
    assert_eq!(
        operation.message,
        "sync of generation 4 failed: hook smoke failed"
    );
    assert_eq!(
        operation.resources[0].message.as_deref(),
        Some("PreSync hook: already ran for this generation")
    );
}

#[test]
fn a_dry_run_operation_says_what_would_change() {
    use flotilla_common::message::ResourceAction;
    let operation = report(super::Outcome::Succeeded, true).operation(None);
    assert!(operation.dry_run);
    let old = operation
        .resources
        .iter()
        .find(|r| r.resource.name == "old")
        .unwrap();
    assert_eq!(old.action, ResourceAction::WouldChange);
    assert_eq!(old.message.as_deref(), Some("would be pruned"));
    assert_eq!(
        operation.message,
        "dry run of generation 4: 1 would change, 0 unchanged, 1 would be pruned"
    );
}

#[test]
fn reach_is_a_list_of_namespace_names_or_the_whole_cluster() {
    assert_eq!(Reach::parse("").unwrap(), Reach::Cluster);
    assert_eq!(Reach::parse(" , ").unwrap(), Reach::Cluster);
    assert_eq!(
        Reach::parse("team-b, team-a,team-b").unwrap(),
        Reach::Namespaces(["team-a".to_owned(), "team-b".to_owned()].into())
    );
    for bad in ["Team", "a/b", "-a", "a-", "x y", "../etc"] {
        assert!(Reach::parse(bad).is_err(), "{bad}");
    }
}
