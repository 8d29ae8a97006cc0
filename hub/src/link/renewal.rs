//! Renewal of an agent's client certificate, asked for on its connection.

use std::time::SystemTime;

use flotilla_common::message::{GoodbyeReason, Renew};
use flotilla_common::protocol::HubSession;
use tracing::{info, warn};

use super::Shared;
use crate::cluster;

/// Issues a new client certificate to the agent of `cluster`, which presented
/// the certificate `presented`, and answers it; returns whether the connection
/// should end (the cluster was removed meanwhile).
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
    match renewed {
        Ok(renewal) => {
            info!(lifetime = ?shared.config.cert_lifetime, "client certificate renewed");
            let _ = session.accept_renewal(renewal.certificate);
            false
        }
        Err(e @ cluster::RenewError::Revoked { .. }) => {
            info!(error = %e, "refused a renewal");
            session.close(GoodbyeReason::Revoked, e.to_string());
            true
        }
        Err(e) => {
            warn!(error = %e, "renewing a client certificate failed");
            let _ = session.refuse_renewal(e.to_string());
            false
        }
    }
}
