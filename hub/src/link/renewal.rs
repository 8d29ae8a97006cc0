//! Renewal of an agent's client certificate, asked for on its connection.

use std::time::SystemTime;

use flotilla_common::message::Renew;
use flotilla_common::protocol::HubSession;
use tracing::{debug, info, warn};

use super::Shared;
use crate::cluster;

/// Issues a new client certificate to the agent of `cluster`, which presented
/// the certificate `presented`, and has the session answer it; returns whether
/// the connection should end (the session ends it when the cluster was removed
/// meanwhile). When a renewal is due, and what it checks, is
/// [`cluster::renew`]'s to decide, with the store and the CA.
pub(super) async fn renew(
    shared: &Shared,
    cluster: &str,
    presented: &str,
    session: &mut HubSession,
    renew: &Renew,
) -> bool {
    let renewed = cluster::renew(
        &shared.store,
        &shared.ca,
        cluster,
        presented,
        &renew.public_key,
        SystemTime::now(),
        shared.config.cert_lifetime,
    )
    .await;
    let answered = match renewed {
        Ok(renewal) => {
            info!(lifetime = ?shared.config.cert_lifetime, "client certificate renewed");
            session.accept_renewal(renewal.certificate)
        }
        Err(e @ cluster::RenewError::Revoked { .. }) => {
            info!(error = %e, "refused a renewal");
            session.refuse_renewal_of_removed_cluster(e.to_string())
        }
        Err(e) => {
            warn!(error = %e, "renewing a client certificate failed");
            session.refuse_renewal(e.to_string())
        }
    };
    if let Err(e) = answered {
        debug!(error = %e, "a renewal could not be answered");
    }
    session.is_closing()
}
