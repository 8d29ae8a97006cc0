use flotilla_common::bundle::HookPhase;
use flotilla_common::model::AppRef;

use super::{HookOutcome, HookResult, Outcome, SyncReport};
use crate::apply::tests::object;
use crate::apply::{Action, ObjectResult};

fn resource(kind: &str, name: &str) -> flotilla_common::model::ResourceRef {
    object(kind, name, 0).resource()
}

fn report(outcome: Outcome, dry_run: bool) -> SyncReport {
    let hook = |name: &str, phase, outcome| HookResult {
        resource: resource("Job", name),
        phase,
        outcome,
        deleted: false,
    };
    SyncReport {
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
    let failed = Outcome::Failed {
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
    let operation = report(Outcome::Succeeded, true).operation(None);
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
