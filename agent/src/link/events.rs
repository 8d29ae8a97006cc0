//! What the agent does with what the session raises: bundles are verified,
//! checked, stored and queued; statuses go through the outbox; commands run on
//! tasks of their own; key set updates and goodbyes end the connection.

use std::time::SystemTime;

use flotilla_common::bundle::Envelope;
use flotilla_common::message::{Applied, BundleOutcome, GoodbyeReason, Rejection, Status};
use flotilla_common::model::Timestamp;
use flotilla_common::protocol::{AgentEvent, AgentSession};
use flotilla_common::signing::{self, Expectation};
use tracing::{Instrument as _, info, warn};

use super::renewal::ask_renewal;
use super::{Agent, Applier, ApplyReport, Attempt, Backoff, Error, Queued};
use crate::identity::{self, Identity};

impl<A: Applier> Agent<A> {
    pub(super) async fn handle_event(
        &self,
        identity: &mut Identity,
        session: &mut AgentSession,
        backoff: &mut Backoff,
        renewal_key: &mut Option<identity::NewKey>,
        event: AgentEvent,
    ) -> std::result::Result<(), Attempt> {
        match event {
            AgentEvent::Established { .. } => {
                backoff.reset();
                info!("connected to the hub");
                self.state.send_modify(|s| {
                    s.connected = true;
                    s.sessions += 1;
                    s.last_error = None;
                });
            }
            AgentEvent::Bundle(envelope) => self.handle_bundle(identity, session, envelope).await?,
            AgentEvent::StatusAcked { sequence } => {
                self.store
                    .remove_outbox(sequence)
                    .await
                    .map_err(Error::from)?;
                self.state
                    .send_modify(|s| s.outbox = s.outbox.saturating_sub(1));
            }
            AgentEvent::Command(command) => {
                info!(request_id = command.request_id, app = %command.app, "command received");
                let running = self.applier.command(command);
                let finished = self.finished.clone();
                tokio::spawn(
                    async move {
                        let _ = finished.send(running.await);
                    }
                    .in_current_span(),
                );
            }
            AgentEvent::KeySetUpdate(update) => match identity.key_set.apply_update(&update) {
                Ok(key_set) => {
                    let mut updated = identity.clone();
                    updated.key_set = key_set;
                    self.keeper.save(&updated).await.map_err(Error::from)?;
                    *identity = updated;
                    // The new set is used from the next connection on.
                    return Err(Attempt::Ended("key set updated".to_owned()));
                }
                Err(e) => warn!(error = %e, "refused a key set update"),
            },
            AgentEvent::Goodbye(goodbye) => {
                return Err(match goodbye.reason {
                    GoodbyeReason::Revoked => Attempt::Fatal(Error::Revoked(goodbye.message)),
                    _ => Attempt::Ended(format!("hub said goodbye: {}", goodbye.message)),
                });
            }
            AgentEvent::PeerSilent => return Err(Attempt::Ended("the hub went silent".to_owned())),
            AgentEvent::RenewalDue => ask_renewal(session, renewal_key),
            AgentEvent::Renewed(renewed) => {
                self.renewed(identity, session, renewal_key, renewed.certificate)
                    .await;
            }
            AgentEvent::RenewalRefused(refused) => {
                warn!(reason = %refused.reason, "the hub did not renew the client certificate");
                *renewal_key = None;
            }
            AgentEvent::Registered(_) => {}
        }
        Ok(())
    }

    async fn handle_bundle(
        &self,
        identity: &Identity,
        session: &mut AgentSession,
        envelope: Envelope,
    ) -> std::result::Result<(), Attempt> {
        self.state.send_modify(|s| s.bundles_received += 1);
        let applied = session.applied();
        let expect = Expectation {
            cluster: &identity.cluster,
            now: Timestamp::from_system_time(SystemTime::now()),
        };
        // Newer than what was applied and than what is stored and still queued: a
        // bundle sent before another may arrive after it, on a stream of its own.
        let mut stored = Ok(None);
        let verified = signing::verify(&envelope, &identity.key_set, expect, |app| {
            stored = self.store.generation(app);
            let applied = applied.iter().find(|a| &a.app == app).map(|a| a.generation);
            applied.max(stored.as_ref().ok().copied().flatten())
        });
        stored.map_err(Error::from)?;
        let bundle = match verified {
            Ok(bundle) => bundle,
            Err(e) => {
                warn!(generation = envelope.generation, error = %e, "refused a bundle");
                self.state.send_modify(|s| s.bundles_rejected += 1);
                session.bundle_outcome(
                    None,
                    envelope.generation,
                    envelope.digest,
                    BundleOutcome::Rejected(Rejection::from(&e)),
                );
                return Ok(());
            }
        };
        // The hub checked the app's AppProject when it rendered the bundle; check
        // again here, and where this agent may act, before anything is stored or
        // applied.
        let permitted = bundle
            .permitted()
            .map_err(|violation| violation.to_string())
            .and_then(|()| self.applier.admits(&bundle));
        if let Err(violation) = permitted {
            warn!(app = %bundle.app, generation = envelope.generation, %violation, "refused a bundle its project or this agent's reach does not permit");
            self.state.send_modify(|s| s.bundles_rejected += 1);
            session.bundle_outcome(
                Some(bundle.app.clone()),
                envelope.generation,
                envelope.digest,
                BundleOutcome::Rejected(Rejection::NotPermitted {
                    message: violation.to_string(),
                }),
            );
            return Ok(());
        }
        let record = Applied {
            app: bundle.app.clone(),
            generation: envelope.generation,
            digest: envelope.digest,
        };
        let bytes = envelope
            .encode()
            .map_err(|e| Attempt::Ended(format!("re-encoding a verified bundle: {e}")))?;
        self.store
            .put_bundle(&record, &bytes)
            .await
            .map_err(Error::from)?;
        let queued = Queued {
            bundle,
            generation: envelope.generation,
            digest: envelope.digest,
        };
        if self.queue.send(queued).is_err() {
            return Err(Attempt::Ended("the apply task is gone".to_owned()));
        }
        Ok(())
    }

    /// Acknowledges a bundle the applier is done with, and reports its status.
    pub(super) async fn bundle_applied(
        &self,
        session: &mut AgentSession,
        done: Queued,
        report: ApplyReport,
    ) -> std::result::Result<(), Attempt> {
        info!(app = %done.bundle.app.name, generation = done.generation, outcome = ?report.outcome, "bundle applied");
        session.bundle_outcome(
            Some(done.bundle.app.clone()),
            done.generation,
            done.digest,
            report.outcome,
        );
        if let Some(status) = report.status {
            self.report(session, status).await?;
        }
        let applied = session.applied();
        let outbox = session.unacknowledged().count();
        self.state.send_modify(|s| {
            s.applied = applied;
            s.outbox = outbox;
        });
        Ok(())
    }

    /// Numbers a status, puts it in the outbox and queues it for the hub.
    pub(super) async fn report(
        &self,
        session: &mut AgentSession,
        mut status: Status,
    ) -> std::result::Result<(), Attempt> {
        status.sequence = session.next_status_sequence();
        self.store.push_outbox(&status).await.map_err(Error::from)?;
        session.report_status(status);
        let outbox = session.unacknowledged().count();
        self.state.send_modify(|s| s.outbox = outbox);
        Ok(())
    }
}
