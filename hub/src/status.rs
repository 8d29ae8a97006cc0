//! An app's state as Argo CD shows it, derived from what the hub holds: the newest
//! bundle per destination cluster, the agents' acknowledgements, their latest
//! Status reports, the connection state, and the current operation.
//!
//! Per cluster:
//! - **sync** is the agent's verdict on the newest bundle. It is `Unknown` while no
//!   bundle exists, while the agent has not yet reported that generation, when it
//!   refused the bundle, and while the cluster is disconnected: the hub cannot
//!   vouch for a cluster it does not hear from.
//! - **health** is the agent's last report, `Unknown` when there is none or the
//!   cluster is disconnected.
//!
//! For the app, sync is `OutOfSync` if any cluster is, else `Unknown` if any is,
//! else `Synced`; health is the worst of the clusters' (as in Argo CD, a resource's
//! worst health is the app's).

use flotilla_common::bundle::{Bundle, Envelope};
use flotilla_common::message::BundleOutcome;
use flotilla_common::model::{Health, SyncStatus};
use serde::Serialize;

use crate::store::{self, AppRecord, OperationRecord, Store};

/// Who knows which clusters have an agent connected now (the running link).
/// Status asks only this, so it depends on no transport.
pub trait Connections {
    /// Whether an agent connection of `cluster` is up.
    fn is_connected(&self, cluster: &str) -> bool;
}

/// A fixed set of connected clusters.
impl Connections for std::collections::BTreeSet<String> {
    fn is_connected(&self, cluster: &str) -> bool {
        self.contains(cluster)
    }
}

/// The derived state of an app.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppState {
    pub sync: SyncStatus,
    pub health: Health,
    /// The running operation if there is one, else the one that ended last.
    pub operation: Option<ClusterOperation>,
    pub conditions: Vec<Condition>,
    pub clusters: Vec<ClusterState>,
}

/// An operation, with the cluster it runs on.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterOperation {
    pub cluster: String,
    #[serde(flatten)]
    pub operation: OperationRecord,
}

/// Something wrong with an app, as Argo CD's `status.conditions` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `ComparisonError`, `InvalidSpecError`, `ChildRefusedError`, `BundleRejected`,
    /// `SyncError` or `ClusterDisconnected`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// The cluster it concerns, if one.
    pub cluster: Option<String>,
}

/// The state of an app on one destination cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterState {
    pub cluster: String,
    pub connected: bool,
    pub sync: SyncStatus,
    pub health: Health,
    /// The newest bundle generation the hub holds.
    pub generation: Option<u64>,
    /// The commit it was rendered from.
    pub revision: Option<String>,
    /// The generation the agent's last report was about.
    pub reported_generation: Option<u64>,
    /// The agent's acknowledgement of the newest bundle it acknowledged.
    pub ack: Option<String>,
    pub operation: Option<OperationRecord>,
    pub resources: Vec<ResourceState>,
}

/// One resource of the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceState {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub sync: SyncStatus,
    pub health: Health,
    pub message: Option<String>,
}

/// The condition kinds, as Argo CD names those it shares.
pub mod condition {
    /// Rendering failed; the last good bundle stays in force.
    pub const COMPARISON_ERROR: &str = "ComparisonError";
    /// The app cannot be placed: no registered cluster matches, or its project
    /// forbids it.
    pub const INVALID_SPEC_ERROR: &str = "InvalidSpecError";
    /// The agent refused the newest bundle.
    pub const BUNDLE_REJECTED: &str = "BundleRejected";
    /// The last sync failed.
    pub const SYNC_ERROR: &str = "SyncError";
    /// No agent connection is up.
    pub const CLUSTER_DISCONNECTED: &str = "ClusterDisconnected";
    /// The app rendered an Application, ApplicationSet or AppProject the hub
    /// refused to adopt; the message names the child and the rule.
    pub const CHILD_REFUSED: &str = "ChildRefusedError";
}

/// Derives the state of `record`. With `live` connections (a running link),
/// connection state is theirs; without (a CLI reading a stopped hub's store),
/// the last recorded one.
pub fn derive(
    store: &Store,
    live: Option<&dyn Connections>,
    record: &AppRecord,
) -> store::Result<AppState> {
    let (project, name) = (record.project(), record.name());
    let mut conditions = Vec::new();
    if let Some(error) = &record.render_error {
        let kind = if record.project_violation {
            condition::INVALID_SPEC_ERROR
        } else {
            condition::COMPARISON_ERROR
        };
        conditions.push(Condition {
            kind: kind.to_owned(),
            message: error.clone(),
            cluster: None,
        });
    }
    for refusal in &record.refused_children {
        conditions.push(Condition {
            kind: condition::CHILD_REFUSED.to_owned(),
            message: refusal.to_string(),
            cluster: None,
        });
    }
    let registered = store.clusters()?;
    let destination = &record.application.spec.destination;
    let destinations: Vec<String> = registered
        .iter()
        .filter(|c| c.is_destination(destination))
        .map(|c| c.name.clone())
        .collect();
    if destinations.is_empty() && record.render_error.is_none() {
        conditions.push(Condition {
            kind: condition::INVALID_SPEC_ERROR.to_owned(),
            message: no_destination_message(&registered, destination),
            cluster: None,
        });
    }
    let mut clusters = Vec::with_capacity(destinations.len());
    for cluster in destinations {
        let state = derive_cluster(store, live, &project, &name, &cluster, &mut conditions)?;
        clusters.push(state);
    }
    let sync = if clusters.is_empty() {
        SyncStatus::Unknown
    } else if clusters.iter().any(|c| c.sync == SyncStatus::OutOfSync) {
        SyncStatus::OutOfSync
    } else if clusters.iter().any(|c| c.sync == SyncStatus::Unknown) {
        SyncStatus::Unknown
    } else {
        SyncStatus::Synced
    };
    let health = if clusters.is_empty() {
        Health::Unknown
    } else {
        Health::worst(clusters.iter().map(|c| c.health))
    };
    let operation = clusters
        .iter()
        .filter_map(|c| c.operation.as_ref().map(|o| (c, o)))
        .max_by_key(|(_, o)| (o.is_running(), o.finished_at_ms, o.started_at_ms))
        .map(|(c, o)| ClusterOperation {
            cluster: c.cluster.clone(),
            operation: o.clone(),
        });
    Ok(AppState {
        sync,
        health,
        operation,
        conditions,
        clusters,
    })
}

/// Why no cluster matches `destination`, with a hint when a cluster's agent
/// reports the URL asked for: only the admin's URL counts, so that cluster needs
/// one set.
fn no_destination_message(
    clusters: &[crate::store::ClusterRecord],
    destination: &crate::app::Destination,
) -> String {
    let reported = destination.server.as_deref().and_then(|server| {
        let server = server.trim_end_matches('/');
        clusters.iter().find(|c| {
            c.server.is_none()
                && c.facts
                    .as_ref()
                    .is_some_and(|f| f.api_server_url.trim_end_matches('/') == server)
        })
    });
    match reported {
        Some(cluster) => format!(
            "no registered cluster matches the destination: cluster {name:?} reports this server URL, but a cluster's URL is the admin's to set (`flotilla cluster set {name} --api-server URL`)",
            name = cluster.name
        ),
        None => "no registered cluster matches the destination".to_owned(),
    }
}

fn derive_cluster(
    store: &Store,
    live: Option<&dyn Connections>,
    project: &str,
    name: &str,
    cluster: &str,
    conditions: &mut Vec<Condition>,
) -> store::Result<ClusterState> {
    let link_record = store.link(cluster)?;
    let connected = match live {
        Some(live) => live.is_connected(cluster),
        None => link_record.as_ref().is_some_and(|l| l.connected),
    };
    let bundle = store
        .latest_bundle(project, name, cluster)?
        .and_then(|(generation, bytes)| {
            let envelope = Envelope::decode(&bytes).ok()?;
            let bundle = Bundle::decode(&envelope.payload).ok()?;
            Some((generation, bundle))
        });
    let generation = bundle.as_ref().map(|(g, _)| *g);
    let ack = link_record
        .as_ref()
        .and_then(|l| l.acks.get(&format!("{project}/{name}")).cloned());
    let status = store.status(project, name, cluster)?.map(|r| r.status);
    let operation = store.operation(project, name, cluster)?;
    let on_cluster = |message: String, kind: &str| Condition {
        kind: kind.to_owned(),
        message,
        cluster: Some(cluster.to_owned()),
    };

    let current = status
        .as_ref()
        .filter(|s| generation.is_some_and(|g| s.generation == g));
    let refused = ack
        .as_ref()
        .filter(|a| generation.is_some_and(|g| a.generation == g))
        .and_then(|a| match &a.outcome {
            BundleOutcome::Rejected(rejection) => Some(rejection),
            _ => None,
        });
    if let Some(reason) = refused {
        conditions.push(on_cluster(
            format!(
                "the agent refused generation {}: {reason}",
                generation.unwrap_or_default()
            ),
            condition::BUNDLE_REJECTED,
        ));
    }
    if !connected {
        conditions.push(on_cluster(
            format!("cluster {cluster} is not connected"),
            condition::CLUSTER_DISCONNECTED,
        ));
    }
    if let Some(op) = operation
        .as_ref()
        .filter(|o| o.phase == store::Phase::Failed)
    {
        conditions.push(on_cluster(op.message.clone(), condition::SYNC_ERROR));
    }
    let sync = match current {
        Some(status) if connected && refused.is_none() => status.sync,
        _ => SyncStatus::Unknown,
    };
    let health = match &status {
        Some(status) if connected => status.health,
        _ => Health::Unknown,
    };
    let resources = match (current, &bundle) {
        (Some(status), _) => status
            .resources
            .iter()
            .map(|r| ResourceState {
                group: r.resource.gvk.group.clone(),
                version: r.resource.gvk.version.clone(),
                kind: r.resource.gvk.kind.clone(),
                namespace: r.resource.namespace.clone(),
                name: r.resource.name.clone(),
                sync: if connected {
                    r.sync
                } else {
                    SyncStatus::Unknown
                },
                health: if connected { r.health } else { Health::Unknown },
                message: r.message.clone(),
            })
            .collect(),
        // Not reported yet: what the bundle holds, with nothing known about it.
        (None, Some((_, bundle))) => bundle
            .objects
            .iter()
            .filter(|o| o.hook.is_none())
            .map(|o| ResourceState {
                group: o.gvk.group.clone(),
                version: o.gvk.version.clone(),
                kind: o.gvk.kind.clone(),
                namespace: o.namespace.clone(),
                name: o.name.clone(),
                sync: SyncStatus::Unknown,
                health: Health::Unknown,
                message: None,
            })
            .collect(),
        (None, None) => Vec::new(),
    };
    Ok(ClusterState {
        cluster: cluster.to_owned(),
        connected,
        sync,
        health,
        generation,
        revision: bundle.map(|(_, b)| b.source.revision),
        reported_generation: status.map(|s| s.generation),
        ack: ack.map(|a| format!("generation {}: {}", a.generation, a.outcome)),
        operation,
        resources,
    })
}

#[cfg(test)]
mod tests;
