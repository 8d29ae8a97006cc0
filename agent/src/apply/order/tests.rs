use flotilla_common::bundle::{Hook, HookPhase};

use super::sync_order;
use crate::apply::tests::object;

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
