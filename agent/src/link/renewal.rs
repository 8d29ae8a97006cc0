//! The driver's half of certificate renewal: telling the session when the
//! certificate is due, making the key pair, and checking and persisting what
//! the hub issues. When to ask, and again after a failure, is the session's.

use std::time::{Duration, Instant, SystemTime};

use flotilla_common::protocol::AgentSession;
use tracing::{info, warn};

use super::{Agent, Applier};
use crate::identity::{self, Identity};

/// Tells `session` when `identity`'s certificate is due for renewal (two thirds
/// into its life, or now if that has passed) and when it expires, which paces
/// retries. A certificate that cannot be read is not renewed (the hub issued it;
/// it will refuse it once it expires).
pub(super) fn schedule_renewal(session: &mut AgentSession, identity: &Identity) {
    let now = Instant::now();
    let after = |at: SystemTime| now + at.duration_since(SystemTime::now()).unwrap_or_default();
    let due = match identity.renewal_due() {
        Ok(due) => after(due),
        Err(e) => {
            warn!(error = %e, "cannot schedule the certificate renewal");
            now + Duration::from_secs(365 * 24 * 3600)
        }
    };
    let expires = identity
        .certificate_validity()
        .ok()
        .map(|(_, not_after)| after(not_after));
    session.schedule_renewal(due, expires);
}

/// Makes the key pair of a renewal that is due and asks the hub to certify it.
pub(super) fn ask_renewal(session: &mut AgentSession, renewal_key: &mut Option<identity::NewKey>) {
    match identity::new_key() {
        Ok(key) => match session.request_renewal(key.public_key) {
            Ok(()) => {
                info!("asking the hub to renew the client certificate");
                *renewal_key = Some(key);
            }
            Err(_) => session.renewal_failed(Instant::now()),
        },
        Err(e) => {
            warn!(error = %e, "making a key pair for renewal failed");
            session.renewal_failed(Instant::now());
        }
    }
}

impl<A: Applier> Agent<A> {
    /// Takes the certificate the hub renewed for `renewal_key` into `identity`,
    /// once it checks out and is persisted; otherwise keeps the current one.
    pub(super) async fn renewed(
        &self,
        identity: &mut Identity,
        session: &mut AgentSession,
        renewal_key: &mut Option<identity::NewKey>,
        certificate: Vec<u8>,
    ) {
        let Some(key) = renewal_key.take() else {
            warn!("the hub sent a certificate that was not asked for; ignored");
            return;
        };
        let renewed = Identity {
            key_pkcs8: key.pkcs8,
            certificate,
            ..identity.clone()
        };
        if let Err(e) = identity::check_certificate(&renewed, &key.public_key) {
            warn!(error = %e, "refused the renewed certificate; keeping the current one");
            return;
        }
        // Persisted before use: the hub keeps the current certificate
        // accepted until the new one is first used, so a failed write only
        // means asking again.
        if let Err(e) = self.keeper.save(&renewed).await {
            warn!(error = %e, "storing the renewed identity failed; keeping the current one");
            return;
        }
        *identity = renewed;
        schedule_renewal(session, identity);
        info!("client certificate renewed; the next connection uses it");
        self.state.send_modify(|s| s.renewals += 1);
    }
}
