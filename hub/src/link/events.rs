//! What agents said, recorded for the rest of the hub: acknowledgements and
//! status reports (with their history entry and metrics), cluster facts, and
//! the results of commands, each checked against what the cluster may speak
//! about. The connection loop hands every session event here.

use std::time::SystemTime;

use flotilla_common::message::BundleOutcome;
use flotilla_common::model::AppRef;
use flotilla_common::protocol::{HubEvent, HubSession};
use tracing::{debug, info, warn};

use super::{Shared, lock, renewal};
use crate::cluster::{self, epoch_ms};
use crate::metrics::RefusedMessage;
use crate::store::{self, AckRecord, LinkRecord, StatusRecord, Store};

/// Changes the link record of `cluster` in place. A cluster removed meanwhile
/// stays removed: the change is dropped rather than written back.
pub(super) async fn update_link(store: &Store, cluster: &str, change: impl Fn(&mut LinkRecord)) {
    if let Err(e) = store.update_link_lazily(cluster, change) {
        warn!(error = %e, "recording the link state failed");
    }
}

/// The agent of `cluster` said hello: it is connected, at `agent_version`.
pub(super) async fn hello_received(shared: &Shared, cluster: &str, agent_version: &str) {
    let now = epoch_ms(SystemTime::now());
    update_link(&shared.store, cluster, |link| {
        link.connected = true;
        link.last_seen_ms = Some(now);
        link.agent_version = Some(agent_version.to_owned());
    })
    .await;
}

/// The current connection of `cluster` ended.
pub(super) async fn disconnected(shared: &Shared, cluster: &str) {
    let now = epoch_ms(SystemTime::now());
    update_link(&shared.store, cluster, |link| {
        link.connected = false;
        link.last_seen_ms = Some(now);
    })
    .await;
}

/// A bundle went out to the agent of `cluster`.
pub(super) fn bundle_pushed(shared: &Shared, cluster: &str) {
    *lock(&shared.sent).entry(cluster.to_owned()).or_insert(0) += 1;
    shared.config.metrics.count_push();
}

/// Whether the agent of `cluster` may speak about `generation` of `app`; a
/// message that may not is counted as refused (`kind`) and logged. A store error
/// is the caller's to handle: nothing unchecked may be stored.
fn speaks_for(
    shared: &Shared,
    cluster: &str,
    app: &AppRef,
    generation: u64,
    kind: RefusedMessage,
) -> Result<bool, store::Error> {
    let allowed = cluster::speaks_for(&shared.store, cluster, app, generation)?;
    if !allowed {
        shared.config.metrics.count_refused(kind);
        warn!(
            app = %app,
            generation,
            kind = kind.name(),
            "refused a message about an app generation the hub never sent this cluster"
        );
    }
    Ok(allowed)
}

/// [`speaks_for`], where a store error refuses the message.
fn checked(allowed: Result<bool, store::Error>) -> bool {
    allowed.unwrap_or_else(|e| {
        warn!(error = %e, "checking what the cluster may speak about failed; message dropped");
        false
    })
}

/// Acts on one session event; returns whether the connection should end.
pub(super) async fn handle_event(
    shared: &Shared,
    cluster: &str,
    presented: &str,
    session: &mut HubSession,
    event: HubEvent,
) -> bool {
    let now = epoch_ms(SystemTime::now());
    match event {
        HubEvent::Established { applied, .. } => {
            info!(apps = applied.len(), "agent connected");
            let applied: Vec<_> = applied
                .into_iter()
                .filter(|applied| {
                    checked(speaks_for(
                        shared,
                        cluster,
                        &applied.app,
                        applied.generation,
                        RefusedMessage::BundleAck,
                    ))
                })
                .collect();
            // Acks are recorded without a flush; a hub killed just after one
            // loses it. The agent's Hello says what it has applied, so the record
            // is made whole again here.
            update_link(&shared.store, cluster, |link| {
                for applied in &applied {
                    let app = format!("{}/{}", applied.app.project, applied.app.name);
                    let known = link
                        .acks
                        .get(&app)
                        .is_some_and(|ack| ack.generation >= applied.generation);
                    if !known {
                        link.acks.insert(
                            app,
                            AckRecord {
                                generation: applied.generation,
                                digest: applied.digest.to_string(),
                                outcome: BundleOutcome::Applied,
                                at_ms: now,
                            },
                        );
                    }
                }
            })
            .await;
            false
        }
        HubEvent::BundleAck(ack) => {
            // The session names the app even when the agent could not (it refused
            // the bundle before reading it); an ack that still names none is about
            // no bundle this hub sent on this connection.
            let Some(acked) = &ack.app else {
                debug!(generation = ack.generation, outcome = %ack.outcome, "an acknowledgement of an unknown bundle");
                return false;
            };
            if !checked(speaks_for(
                shared,
                cluster,
                acked,
                ack.generation,
                RefusedMessage::BundleAck,
            )) {
                return false;
            }
            let app = format!("{}/{}", acked.project, acked.name);
            info!(app = %app, generation = ack.generation, outcome = %ack.outcome, "bundle acknowledged");
            let record = AckRecord {
                generation: ack.generation,
                digest: ack.digest.to_string(),
                outcome: ack.outcome,
                at_ms: now,
            };
            update_link(&shared.store, cluster, |link| {
                link.last_seen_ms = Some(now);
                link.acks.insert(app.clone(), record.clone());
            })
            .await;
            false
        }
        HubEvent::Status(status) => {
            // The session hands over only reports newer than any stored. One
            // about an app the cluster was never sent is acknowledged (so the
            // agent stops resending it) but nothing of it is stored.
            let sequence = status.sequence;
            let allowed = match speaks_for(
                shared,
                cluster,
                &status.app,
                status.generation,
                RefusedMessage::Status,
            ) {
                Ok(allowed) => allowed,
                Err(e) => {
                    // Not acknowledged, so the agent sends it again.
                    warn!(error = %e, "checking a status report's app failed");
                    return false;
                }
            };
            if allowed {
                let record = StatusRecord { at_ms: now, status };
                if let Err(e) = shared.store.put_status(cluster, &record).await {
                    // Not acknowledged, so the agent sends it again.
                    warn!(error = %e, "storing a status failed");
                    return false;
                }
                if let Some(operation) = &record.status.operation {
                    shared.config.metrics.observe_sync(operation.duration_ms);
                }
                if let Err(e) =
                    crate::history::record(&shared.store, cluster, &record.status, now).await
                {
                    // The report itself is stored; only its history entry is lost.
                    warn!(error = %e, "recording the operation in the history failed");
                }
            }
            // The mark the next connection's session resumes after.
            update_link(&shared.store, cluster, |link| {
                link.last_seen_ms = Some(now);
                link.last_status_sequence = sequence;
            })
            .await;
            session.ack_status(sequence);
            false
        }
        HubEvent::Registering(_) => {
            session.refuse_registration("this agent is already registered");
            true
        }
        HubEvent::VersionRefused { offered } => {
            info!(?offered, "agent speaks no common protocol version");
            true
        }
        HubEvent::CommandResult(result) => {
            let request_id = result.request_id;
            let waiting = {
                let mut pending = lock(&shared.pending);
                match pending.get(&request_id) {
                    Some(waiting) if waiting.cluster == cluster => Ok(pending.remove(&request_id)),
                    Some(waiting) => Err(waiting.cluster.clone()),
                    None => Ok(None),
                }
            };
            match waiting {
                Ok(Some(waiting)) => {
                    let _ = waiting.reply.send(result);
                }
                Ok(None) => debug!(request_id, "a command result nobody waits for any more"),
                Err(asked) => {
                    // Left waiting: the cluster asked may still answer.
                    shared
                        .config
                        .metrics
                        .count_refused(RefusedMessage::CommandResult);
                    warn!(
                        request_id,
                        asked = %asked,
                        "refused a result for a command sent to another cluster"
                    );
                }
            }
            false
        }
        HubEvent::Renew(renew) => renewal::renew(shared, cluster, presented, session, &renew).await,
        HubEvent::Facts(facts) => {
            // The certificate names the cluster, so an agent can only ever describe
            // its own; what it says is shown and used for kinds' scope, never for
            // placement (the server URL stays the admin's).
            match shared.store.update_cluster_facts(cluster, &facts).await {
                Ok(true) => info!(
                    kinds = facts.api_resources.len(),
                    version = %facts.kubernetes_version,
                    "cluster facts refreshed"
                ),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "recording the cluster's facts failed"),
            }
            false
        }
        HubEvent::Goodbye(goodbye) => {
            info!(reason = ?goodbye.reason, message = %goodbye.message, "agent said goodbye");
            true
        }
        HubEvent::PeerSilent => true,
    }
}
