//! Newly stored bundles, handed to their cluster's connection as the store
//! announces them.

use flotilla_common::bundle::Envelope;
use flotilla_common::model::AppRef;
use tokio::sync::watch;
use tracing::warn;

use std::sync::Arc;

use super::{Shared, ToConnection, lock};
use crate::store;

/// Hands each newly stored bundle to its cluster's connection, if any.
pub(super) async fn push_new_bundles(
    shared: Arc<Shared>,
    mut stored: tokio::sync::broadcast::Receiver<store::BundleStored>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            event = stored.recv() => event,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stored = match event {
            Ok(stored) => stored,
            Err(RecvError::Lagged(missed)) => {
                // Too many at once: every connection looks at the store again.
                warn!(missed, "bundle notifications lagged; resyncing every agent");
                for (_, conn) in lock(&shared.connections).values() {
                    let _ = conn.send(ToConnection::Resync);
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let connection = lock(&shared.connections)
            .get(&stored.cluster)
            .map(|(_, conn)| conn.clone());
        let Some(connection) = connection else {
            continue;
        };
        let bytes = match shared
            .store
            .latest_bundle(&stored.project, &stored.app, &stored.cluster)
        {
            Ok(Some((_, bytes))) => bytes,
            Ok(None) => continue,
            Err(e) => {
                warn!(cluster = %stored.cluster, app = %stored.app, error = %e, "reading a stored bundle failed");
                continue;
            }
        };
        match Envelope::decode(&bytes) {
            Ok(envelope) => {
                let _ = connection.send(ToConnection::Publish(Box::new((
                    AppRef::new(stored.project, stored.app),
                    envelope,
                ))));
            }
            Err(e) => {
                warn!(cluster = %stored.cluster, app = %stored.app, generation = stored.generation, error = %e, "stored bundle does not decode");
            }
        }
    }
}
