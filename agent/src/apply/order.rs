//! Argo CD's apply order: phase, then wave, then kind, then name. CRDs go before
//! everything else of the Sync phase, so the kinds they define are served (and
//! discovered) by the time objects of those kinds are applied.

use flotilla_common::bundle::{HookPhase, Object};

pub use flotilla_common::model::kind_rank;

#[cfg(test)]
mod tests;

fn phase_rank(object: &Object) -> u8 {
    match object.hook.as_ref().map(|h| h.phase) {
        Some(HookPhase::PreSync) => 0,
        None | Some(HookPhase::Sync) => 1,
        Some(HookPhase::PostSync) => 2,
        Some(HookPhase::SyncFail) => 3,
        Some(HookPhase::Skip) => 4,
        Some(HookPhase::PreDelete) => 5,
        Some(HookPhase::PostDelete) => 6,
    }
}

fn is_crd(object: &Object) -> bool {
    object.gvk.group == "apiextensions.k8s.io" && object.gvk.kind == "CustomResourceDefinition"
}

/// The wave an object runs in: its own, except that Sync-phase CRDs run first.
pub(crate) fn effective_wave(object: &Object) -> i64 {
    if object.hook.is_none() && is_crd(object) {
        i64::MIN
    } else {
        i64::from(object.wave)
    }
}

/// `objects` in the order a sync applies them.
pub fn sync_order(objects: &[Object]) -> Vec<&Object> {
    let mut sorted: Vec<&Object> = objects.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |o: &'_ Object| (phase_rank(o), effective_wave(o), kind_rank(&o.gvk.kind));
        key(a)
            .cmp(&key(b))
            .then_with(|| a.gvk.kind.cmp(&b.gvk.kind))
            .then_with(|| a.namespace.cmp(&b.namespace))
            .then_with(|| a.name.cmp(&b.name))
    });
    sorted
}
