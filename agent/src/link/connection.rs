//! One mutual-TLS connection: reads the control stream and the bundle
//! streams, writes what the session wants sent, and wakes the session on its
//! timers, until the connection ends or the agent stops.

use std::time::{Duration, Instant};

use flotilla_common::frame::{self, FrameDecoder, Limits};
use flotilla_common::message::{Channel, GoodbyeReason, Message, Status};
use flotilla_common::protocol::AgentSession;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument as _, warn};

use super::renewal::schedule_renewal;
use super::{AbortOnDrop, Agent, Applier, Attempt, Backoff, Error, client_config, stopped};
use crate::identity::{self, Identity};

/// Input to the connection loop.
enum Input {
    Message(Message),
    BadFrame(String),
    StreamEnded,
}

impl<A: Applier> Agent<A> {
    pub(super) async fn serve(
        &self,
        identity: &mut Identity,
        session: &mut AgentSession,
        backoff: &mut Backoff,
        stop: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Attempt> {
        let config = client_config(
            &identity.ca_fingerprint,
            Some((&identity.certificate, &identity.key_pkcs8)),
            self.config.keep_alive,
            self.config.idle_timeout,
        )?;
        let connection = self.connect(config).await?;
        let (mut control, recv) = connection
            .open_bi()
            .await
            .map_err(|e| stream_failed(&connection, e))?;
        let limits = self.config.limits;
        let (tx, mut inputs) = mpsc::channel(64);
        let reader = tokio::spawn(control_reader(recv, limits, tx.clone()));
        let bundles = tokio::spawn(bundle_reader(connection.clone(), limits, tx));
        session.handle_connected(Instant::now());
        let result = self
            .drive(
                identity,
                session,
                backoff,
                stop,
                &connection,
                &mut control,
                &mut inputs,
            )
            .await;
        reader.abort();
        bundles.abort();
        session.handle_disconnected(Instant::now());
        let _ = control.finish();
        connection.close(0u32.into(), b"agent closing");
        self.state.send_modify(|s| s.connected = false);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        identity: &mut Identity,
        session: &mut AgentSession,
        backoff: &mut Backoff,
        stop: &mut watch::Receiver<bool>,
        connection: &quinn::Connection,
        control: &mut quinn::SendStream,
        inputs: &mut mpsc::Receiver<Input>,
    ) -> std::result::Result<(), Attempt> {
        let limits = self.config.limits;
        let ended = |e: &dyn std::fmt::Display| stream_failed(connection, e);
        let mut reports = self.reports.lock().await;
        let mut finished = self.finished_rx.lock().await;
        let mut applied = self.applied_rx.lock().await;
        // The fresh key pair of a renewal asked for on this connection.
        let mut renewal_key: Option<identity::NewKey> = None;
        schedule_renewal(session, identity);
        // The cluster's facts, read once the session is up and sent when read.
        let (facts_tx, mut facts_rx) = mpsc::channel(1);
        let mut facts_task: Option<AbortOnDrop> = None;
        loop {
            if facts_task.is_none() && session.version().is_some() {
                let applier = self.applier.clone();
                let facts_tx = facts_tx.clone();
                facts_task = Some(AbortOnDrop(tokio::spawn(
                    async move {
                        if let Some(facts) = applier.facts().await {
                            let _ = facts_tx.send(facts).await;
                        }
                    }
                    .in_current_span(),
                )));
            }
            while let Some(transmit) = session.poll_transmit() {
                let bytes = transmit.encode(&limits).map_err(|e| ended(&e))?;
                match transmit.channel {
                    Channel::Status => {
                        // Opened in order, so the hub reads them in order.
                        let mut stream = connection.open_uni().await.map_err(|e| ended(&e))?;
                        stream.write_all(&bytes).await.map_err(|e| ended(&e))?;
                        stream.finish().map_err(|e| ended(&e))?;
                    }
                    _ => control.write_all(&bytes).await.map_err(|e| ended(&e))?,
                }
            }
            let mut handled = false;
            while let Some(event) = session.poll_event() {
                handled = true;
                self.handle_event(identity, session, backoff, &mut renewal_key, event)
                    .await?;
            }
            if handled {
                continue;
            }
            let deadline = session
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(Input::Message(message)) => {
                        if let Err(e) = session.handle_message(Instant::now(), message) {
                            warn!(error = %e, "the hub broke the protocol");
                        }
                    }
                    Some(Input::BadFrame(e)) => return Err(Attempt::Ended(e)),
                    Some(Input::StreamEnded) | None => {
                        // Let the close reason arrive if the hub is closing.
                        let reason = tokio::time::timeout(Duration::from_secs(1), connection.closed()).await;
                        return Err(match reason {
                            Ok(reason) => connection_ended(reason),
                            Err(_) => Attempt::Ended("the hub ended the control stream".to_owned()),
                        });
                    }
                },
                status = next_report(&mut reports) => self.report(session, status).await?,
                Some(facts) = facts_rx.recv() => {
                    if let Err(e) = session.report_facts(facts) {
                        warn!(error = %e, "the cluster's facts could not be sent");
                    }
                }
                Some((done, report)) = applied.recv() => self.bundle_applied(session, done, report).await?,
                Some(done) = finished.recv() => {
                    if let Some(status) = done.status {
                        self.report(session, status).await?;
                    }
                    let id = done.result.request_id;
                    if let Err(e) = session.command_result(done.result) {
                        warn!(request_id = id, error = %e, "the result of a command could not be sent");
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(Instant::now()),
                reason = connection.closed() => return Err(connection_ended(reason)),
                _ = stopped(stop) => {
                    session.close(GoodbyeReason::Shutdown, "agent stopping");
                    while let Some(transmit) = session.poll_transmit() {
                        if let Ok(bytes) = transmit.encode(&limits) {
                            let _ = control.write_all(&bytes).await;
                        }
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// What a failed stream operation means: the connection's own close reason when it
/// is closed, so that a hub revoking this cluster (which closes the connection as
/// soon as the handshake ends) is never taken for a lost connection when a write
/// on the stream fails first; otherwise the stream's error.
fn stream_failed(connection: &quinn::Connection, error: impl std::fmt::Display) -> Attempt {
    match connection.close_reason() {
        Some(reason) => connection_ended(reason),
        None => Attempt::Ended(error.to_string()),
    }
}

/// What a closed connection means: fatal if the hub revoked this cluster.
fn connection_ended(reason: quinn::ConnectionError) -> Attempt {
    match &reason {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code
                == quinn::VarInt::from_u32(flotilla_common::protocol::close_code::REVOKED) =>
        {
            Attempt::Fatal(Error::Revoked(
                String::from_utf8_lossy(&close.reason).into_owned(),
            ))
        }
        _ => Attempt::Ended(reason.to_string()),
    }
}

/// The next status the applier reports on its own; never, if it reports none.
async fn next_report(reports: &mut Option<mpsc::UnboundedReceiver<Status>>) -> Status {
    match reports {
        Some(receiver) => match receiver.recv().await {
            Some(status) => status,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn control_reader(mut recv: quinn::RecvStream, limits: Limits, tx: mpsc::Sender<Input>) {
    // read_chunk hands over quinn's own buffers: no idle read buffer per agent.
    let mut decoder = FrameDecoder::new(Channel::Control, &limits);
    loop {
        let chunk = match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) | Err(_) => {
                let _ = tx.send(Input::StreamEnded).await;
                return;
            }
        };
        let mut input: &[u8] = &chunk.bytes;
        loop {
            match decoder.decode_next(&mut input) {
                Ok(Some(message)) => {
                    if tx.send(Input::Message(message)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx
                        .send(Input::BadFrame(format!("control stream: {e}")))
                        .await;
                    return;
                }
            }
        }
    }
}

/// Reads bundle streams in the order the hub opened them.
async fn bundle_reader(connection: quinn::Connection, limits: Limits, tx: mpsc::Sender<Input>) {
    let limit = limits.for_channel(Channel::Bundle) + frame::PREFIX_LEN;
    while let Ok(mut stream) = connection.accept_uni().await {
        let input = match stream.read_to_end(limit).await {
            Ok(bytes) => match frame::decode(&bytes, Channel::Bundle, &limits) {
                Ok(message) => Input::Message(message),
                Err(e) => Input::BadFrame(format!("bundle stream: {e}")),
            },
            Err(e) => Input::BadFrame(format!("bundle stream: {e}")),
        };
        let bad = matches!(input, Input::BadFrame(_));
        if tx.send(input).await.is_err() || bad {
            return;
        }
    }
}
