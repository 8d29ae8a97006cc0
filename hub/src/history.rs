//! Turns the operations agents report into each app's sync history.
//!
//! An agent ends every sync it runs with a [`Status`] whose `operation` is set.
//! [`record`] makes that a [`HistoryEntry`]: which bundle (revision, digest,
//! generation) on which cluster, when, how it went per resource, and who started
//! it. A commanded sync carries the request id of the hub's command, and the
//! operation the API wrote when it sent the command names the user; a sync the agent
//! started itself is `automated` for a generation the cluster had not synced before
//! (or only failed to) and `selfHeal` for a re-apply of one it synced. Dry runs change nothing, so they
//! update the operation but are not history, as in Argo CD.

use flotilla_common::bundle::{Bundle, Envelope};
use flotilla_common::message::{Operation, ResourceResult, Status};
use tracing::{debug, info_span};

use crate::store::{
    self, DEFAULT_HISTORY_LIMIT, HistoryEntry, OperationRecord, Phase, ResourceOutcome, Store,
};

/// Who started a sync the agent ran on its own for a new generation.
pub const AUTOMATED: &str = "automated";
/// Who started a re-apply of a generation the cluster already synced.
pub const SELF_HEAL: &str = "selfHeal";

/// A resource's outcome as history keeps it.
pub fn outcome(result: &ResourceResult) -> ResourceOutcome {
    ResourceOutcome {
        group: result.resource.gvk.group.clone(),
        version: result.resource.gvk.version.clone(),
        kind: result.resource.gvk.kind.clone(),
        namespace: result.resource.namespace.clone(),
        name: result.resource.name.clone(),
        action: format!("{:?}", result.action),
        message: result.message.clone(),
    }
}

/// The history limit of an app: its `revisionHistoryLimit`, or Argo CD's default
/// of 10. At least one entry is kept, so the last sync can always be inspected.
pub fn history_limit(store: &Store, project: &str, app: &str) -> store::Result<usize> {
    let set = store
        .app(project, app)?
        .and_then(|a| a.application.spec.revision_history_limit);
    Ok(set.map_or(DEFAULT_HISTORY_LIMIT, |n| {
        usize::try_from(n).unwrap_or(0).max(1)
    }))
}

/// Records the operation `status` ends, if it ends one: updates the operation of
/// (app, cluster) and, unless it was a dry run, appends a history entry. Returns
/// the entry.
pub async fn record(
    store: &Store,
    cluster: &str,
    status: &Status,
    now_ms: u64,
) -> store::Result<Option<HistoryEntry>> {
    let Some(operation) = status.operation.as_deref() else {
        return Ok(None);
    };
    let app = &status.app;
    let span =
        info_span!("history", cluster = %cluster, app = %app, generation = status.generation);
    let _entered = span.enter();
    let previous = store.operation(&app.project, &app.name, cluster)?;
    let initiated_by = initiator(store, cluster, status, operation, previous.as_ref())?;
    let started_at_ms = operation.started_at.0.saturating_mul(1000);
    let finished_at_ms = started_at_ms.saturating_add(operation.duration_ms);
    let resources: Vec<ResourceOutcome> = operation.resources.iter().map(outcome).collect();
    let phase = Phase::from(operation.phase);

    let mut entry = None;
    if !operation.dry_run {
        let bundle = store.bundle_at(&app.project, &app.name, cluster, status.generation)?;
        let (revision, digest) = bundle
            .as_deref()
            .and_then(|bytes| Envelope::decode(bytes).ok())
            .map(|envelope| {
                let revision = Bundle::decode(&envelope.payload)
                    .map(|b| b.source.revision)
                    .unwrap_or_default();
                (revision, envelope.digest.to_string())
            })
            .unwrap_or_default();
        let limit = history_limit(store, &app.project, &app.name)?;
        let stored = store
            .push_history(
                &app.project,
                &app.name,
                HistoryEntry {
                    id: 0,
                    cluster: cluster.to_owned(),
                    revision,
                    digest,
                    generation: status.generation,
                    started_at_ms,
                    finished_at_ms: Some(finished_at_ms.max(started_at_ms)),
                    result: phase,
                    message: operation.message.clone(),
                    initiated_by: initiated_by.clone(),
                    resources: resources.clone(),
                },
                bundle.as_deref(),
                limit,
            )
            .await?;
        debug!(id = stored.id, %initiated_by, "recorded a sync in the history");
        entry = Some(stored);
    }
    let commanded = previous
        .as_ref()
        .filter(|p| p.request_id.is_some() && p.request_id == operation.request_id);
    let record = OperationRecord {
        request_id: operation.request_id,
        initiated_by,
        generation: status.generation,
        phase,
        message: operation.message.clone(),
        dry_run: operation.dry_run,
        prune: commanded.is_some_and(|p| p.prune),
        started_at_ms: commanded.map_or(started_at_ms, |p| p.started_at_ms),
        finished_at_ms: Some(now_ms.max(finished_at_ms)),
        resources,
        history_id: entry.as_ref().map(|e| e.id),
    };
    store
        .put_operation(&app.project, &app.name, cluster, &record)
        .await?;
    Ok(entry)
}

/// Who started the operation `status` ends.
fn initiator(
    store: &Store,
    cluster: &str,
    status: &Status,
    operation: &Operation,
    previous: Option<&OperationRecord>,
) -> store::Result<String> {
    if let Some(id) = operation.request_id {
        return Ok(previous.filter(|p| p.request_id == Some(id)).map_or_else(
            || format!("unknown (request {id})"),
            |p| p.initiated_by.clone(),
        ));
    }
    // A generation this cluster already synced successfully, synced again:
    // selfHeal. After a failure it is the automated sync trying again.
    let app = &status.app;
    let synced_before = store.history(&app.project, &app.name)?.iter().any(|h| {
        h.cluster == cluster && h.generation == status.generation && h.result == Phase::Succeeded
    });
    Ok(if synced_before { SELF_HEAL } else { AUTOMATED }.to_owned())
}

#[cfg(test)]
mod tests;
