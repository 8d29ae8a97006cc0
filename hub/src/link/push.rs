//! Newly stored bundles, handed to their cluster's connection as the store
//! announces them, with a bound on the bytes in flight.
//!
//! A refresh can store a bundle for every cluster within seconds. Reading them
//! all and handing each to its connection at once would put every bundle in
//! memory and in quinn's send buffers together (1 GB for 100 KiB to 10,000
//! agents), and the pushes would compete for the same two cores with the store
//! and the acks. So announcements wait in a queue of names (a few dozen bytes
//! each, one per app and cluster however often it was stored), and a bundle is
//! read from the store only once the bytes already in flight leave room for it.
//! Its share of [`LinkConfig::bundle_bytes_in_flight`](super::LinkConfig) comes
//! back when the agent has acknowledged every byte of it, or after
//! [`HOLD_AT_MOST`], so a stalled agent cannot hold up the fleet.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use flotilla_common::bundle::Envelope;
use flotilla_common::model::AppRef;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, warn};

use super::{Shared, ToConnection, lock};
use crate::store;

/// The longest one push holds its share of the budget. A healthy agent on a
/// slow link acknowledges 100 KiB well within it; one that stopped reading
/// frees its share here, and the stream goes on without it.
pub(super) const HOLD_AT_MOST: Duration = Duration::from_secs(5);

/// A bundle on its way to a connection, with its share of the budget.
pub(super) struct Push {
    pub(super) app: AppRef,
    pub(super) envelope: Envelope,
    pub(super) permit: OwnedSemaphorePermit,
}

/// Which bundle an announcement names; the newest stored is what is sent.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    cluster: String,
    project: String,
    app: String,
}

/// Announcements not read yet, oldest first, each key at most once.
#[derive(Default)]
struct Queue {
    order: VecDeque<Key>,
    queued: HashSet<Key>,
}

impl Queue {
    fn push(&mut self, stored: store::BundleStored) {
        let key = Key {
            cluster: stored.cluster,
            project: stored.project,
            app: stored.app,
        };
        // A newer generation of a queued bundle rides on the queued entry: the
        // store is read when it leaves the queue.
        if self.queued.insert(key.clone()) {
            self.order.push_back(key);
        }
    }

    fn pop(&mut self) -> Option<Key> {
        let key = self.order.pop_front()?;
        self.queued.remove(&key);
        Some(key)
    }
}

/// The next bundle to hand over, read and waiting for its share of the budget.
struct Ready {
    key: Key,
    envelope: Envelope,
    cost: u32,
}

/// Hands each newly stored bundle to its cluster's connection, if any, keeping
/// at most `budget` bytes in flight.
pub(super) async fn push_new_bundles(
    shared: Arc<Shared>,
    mut stored: tokio::sync::broadcast::Receiver<store::BundleStored>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let budget_bytes = shared
        .config
        .bundle_bytes_in_flight
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let budget = Arc::new(Semaphore::new(budget_bytes));
    let mut queue = Queue::default();
    let mut ready: Option<Ready> = None;
    loop {
        while ready.is_none() {
            let Some(key) = queue.pop() else { break };
            ready = read(&shared, key, budget_bytes);
        }
        let cost = ready.as_ref().map_or(0, |r| r.cost);
        tokio::select! {
            // Announcements first, so the broadcast channel never fills while
            // pushes wait for room.
            biased;
            event = stored.recv() => match event {
                Ok(stored) => queue.push(stored),
                Err(RecvError::Lagged(missed)) => {
                    // Too many at once: every connection looks at the store again.
                    warn!(missed, "bundle notifications lagged; resyncing every agent");
                    for (_, conn) in lock(&shared.connections).values() {
                        let _ = conn.send(ToConnection::Resync);
                    }
                }
                Err(RecvError::Closed) => return,
            },
            permit = budget.clone().acquire_many_owned(cost), if ready.is_some() => {
                let Ok(permit) = permit else { return };
                if let Some(ready) = ready.take() {
                    hand_over(&shared, ready, permit);
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Reads the newest stored bundle that `key` names, if its cluster is connected.
fn read(shared: &Shared, key: Key, budget_bytes: usize) -> Option<Ready> {
    if !lock(&shared.connections).contains_key(&key.cluster) {
        // Its connection publishes what is stored when it comes.
        return None;
    }
    let bytes = match shared
        .store
        .latest_bundle(&key.project, &key.app, &key.cluster)
    {
        Ok(Some((_, bytes))) => bytes,
        Ok(None) => return None,
        Err(e) => {
            warn!(cluster = %key.cluster, app = %key.app, error = %e, "reading a stored bundle failed");
            return None;
        }
    };
    // A bundle larger than the whole budget goes alone.
    let cost = bytes.len().clamp(1, budget_bytes) as u32;
    match Envelope::decode(&bytes) {
        Ok(envelope) => Some(Ready {
            key,
            envelope,
            cost,
        }),
        Err(e) => {
            warn!(cluster = %key.cluster, app = %key.app, error = %e, "stored bundle does not decode");
            None
        }
    }
}

fn hand_over(shared: &Shared, ready: Ready, permit: OwnedSemaphorePermit) {
    let connection = lock(&shared.connections)
        .get(&ready.key.cluster)
        .map(|(_, conn)| conn.clone());
    let Some(connection) = connection else {
        debug!(cluster = %ready.key.cluster, "agent disconnected before its bundle left");
        return;
    };
    let _ = connection.send(ToConnection::Publish(Box::new(Push {
        app: AppRef::new(ready.key.project, ready.key.app),
        envelope: ready.envelope,
        permit,
    })));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(cluster: &str, app: &str, generation: u64) -> store::BundleStored {
        store::BundleStored {
            project: "default".into(),
            app: app.into(),
            cluster: cluster.into(),
            generation,
        }
    }

    #[test]
    fn the_queue_keeps_the_order_of_first_announcement_and_each_bundle_once() {
        let mut queue = Queue::default();
        queue.push(stored("east", "web", 1));
        queue.push(stored("west", "web", 1));
        queue.push(stored("east", "web", 2));
        queue.push(stored("east", "api", 1));
        let popped: Vec<(String, String)> = std::iter::from_fn(|| queue.pop())
            .map(|key| (key.cluster, key.app))
            .collect();
        assert_eq!(
            popped,
            [("east", "web"), ("west", "web"), ("east", "api")]
                .map(|(c, a)| (c.to_owned(), a.to_owned()))
        );
        // Once taken, a new announcement queues it again.
        queue.push(stored("east", "web", 3));
        assert_eq!(queue.pop().map(|key| key.app), Some("web".to_owned()));
        assert!(queue.pop().is_none());
    }
}
