//! The clusters as the link reports them to the API: connection state, what was
//! pushed since start, and the last acknowledgement per app.

use super::{Result, Shared, lock};
use crate::store::AckRecord;

/// A cluster as the link sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// The cluster.
    pub cluster: String,
    /// Whether an agent connection is up.
    pub connected: bool,
    /// When the hub last heard from it, ms since the epoch.
    pub last_seen_ms: Option<u64>,
    /// The agent's version.
    pub agent_version: Option<String>,
    /// Bundles this hub process has pushed to it since it started.
    pub bundles_sent: u64,
    /// The last acknowledgement per app, keyed `project/name`.
    pub acks: std::collections::BTreeMap<String, AckRecord>,
}

impl ClusterView {
    /// The view as the API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let acks: serde_json::Map<String, serde_json::Value> = self
            .acks
            .iter()
            .map(|(app, ack)| {
                let ack = serde_json::json!({
                    "generation": ack.generation,
                    "digest": ack.digest,
                    "outcome": ack.outcome,
                    "atMs": ack.at_ms,
                });
                (app.clone(), ack)
            })
            .collect();
        serde_json::json!({
            "state": if self.connected { "Connected" } else { "Disconnected" },
            "lastSeenMs": self.last_seen_ms,
            "agentVersion": self.agent_version,
            "bundlesSentSinceStart": self.bundles_sent,
            "acks": acks,
        })
    }
}

/// The link's view of its clusters, for the API. It does not keep the link
/// alive: once the link stops it sees nothing.
#[derive(Clone)]
pub struct Views(pub(super) std::sync::Weak<Shared>);

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").finish_non_exhaustive()
    }
}

impl Views {
    /// Every registered cluster's connection state; empty once the link stopped.
    pub fn clusters(&self) -> Result<Vec<ClusterView>> {
        match self.0.upgrade() {
            Some(shared) => cluster_views(&shared),
            None => Ok(Vec::new()),
        }
    }
}

/// Every registered cluster as the link sees it: the store's record, and
/// whether this process holds a connection.
pub(super) fn cluster_views(shared: &Shared) -> Result<Vec<ClusterView>> {
    let links = shared.store.links()?;
    let connected = lock(&shared.connections);
    let sent = lock(&shared.sent);
    Ok(links
        .into_iter()
        .map(|link| ClusterView {
            connected: link.connected && connected.contains_key(&link.cluster),
            bundles_sent: sent.get(&link.cluster).copied().unwrap_or(0),
            cluster: link.cluster,
            last_seen_ms: link.last_seen_ms,
            agent_version: link.agent_version,
            acks: link.acks,
        })
        .collect())
}
