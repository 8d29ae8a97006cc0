//! Who gets in: a handshake slot only for a client that proved its address,
//! a bounded number of handshakes at once, and then the split between an agent
//! (named by its client certificate) and a connection that registers.

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tracing::{Instrument as _, debug, info_span, warn};

use super::{Shared, close_code, connection, registration, tls};

/// Accepts connections until the link stops.
pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(Semaphore::new(shared.config.max_handshakes.max(1)));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(incoming) = incoming else { return };
        // A handshake slot goes only to a client that proved it receives at its
        // address: anyone else gets a stateless Retry (a small packet, no state,
        // no slot) and comes back with its token. Otherwise a few spoofed
        // Initials per second would hold every slot for the handshake timeout.
        if !incoming.remote_address_validated() {
            let remote = incoming.remote_address();
            if let Err(e) = incoming.retry() {
                debug!(%remote, "an unvalidated client could not be sent a retry");
                e.into_incoming().ignore();
            }
            continue;
        }
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => permit,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok(permit) = permit else { return };
        let shared = shared.clone();
        let mut stopping = stop.clone();
        let remote = incoming.remote_address();
        let limit = shared.config.handshake_timeout;
        // Boxed, and made before the task: the task lives as long as the
        // connection, and its future is as large as its largest state, so a
        // handshake held inline would size every idle agent's task.
        let handshake = Box::pin(tokio::time::timeout(limit, incoming.into_future()));
        tokio::spawn(async move {
            // A handshake still under way when the hub stops is dropped at once: it
            // holds the store, which `Link::stop` must release for a restart.
            let handshake = tokio::select! {
                handshake = handshake => handshake,
                _ = stopping.wait_for(|s| *s) => return,
            };
            drop(permit);
            match handshake {
                Ok(Ok(connection)) => serve_connection(shared, connection).await,
                Ok(Err(e)) => debug!(%remote, error = %e, "handshake failed"),
                Err(_) => debug!(%remote, ?limit, "handshake timed out"),
            }
        });
    }
}

/// Serves one connection whose handshake completed: an agent, named by its
/// client certificate, or a connection without one, which may only register.
async fn serve_connection(shared: Arc<Shared>, connection: quinn::Connection) {
    let remote = connection.remote_address();
    match tls::peer_fingerprint(&connection) {
        Some(presented) => {
            let cluster = match shared.store.cluster_by_cert(&presented) {
                Ok(Some(cluster)) => cluster,
                Ok(None) => {
                    connection.close(close_code::REVOKED.into(), b"certificate revoked");
                    return;
                }
                Err(e) => {
                    warn!(%remote, error = %e, "looking up a client certificate failed");
                    connection.close(close_code::SHUTDOWN.into(), b"hub store error");
                    return;
                }
            };
            let span = info_span!("agent", cluster = %cluster, %remote);
            connection::serve_agent(shared, connection, cluster, presented)
                .instrument(span)
                .await;
        }
        None => {
            let Ok(_permit) = shared.registering.try_acquire() else {
                connection.close(
                    close_code::BUSY.into(),
                    b"too many registrations; retry later",
                );
                return;
            };
            let timeout = shared.config.register_timeout;
            let span = info_span!("register", %remote);
            // Boxed so that registering does not size every agent's task.
            let served = tokio::time::timeout(
                timeout,
                Box::pin(registration::serve_registration(&shared, &connection)),
            )
            .instrument(span)
            .await;
            if served.is_err() {
                connection.close(close_code::PROTOCOL.into(), b"registration timed out");
            }
        }
    }
}
