//! One agent's connection: frames move between QUIC streams and the agent's
//! [`HubSession`]; what the session reports goes to [`events`](super::events).

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_common::bundle::Envelope;
use flotilla_common::frame::{self, FrameDecoder, Limits};
use flotilla_common::message::{Channel, GoodbyeReason, Message};
use flotilla_common::model::AppRef;
use flotilla_common::protocol::{Error as ProtocolError, HubEvent, HubSession, Timing};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{debug, info, warn};

use super::{Shared, ToConnection, close_code, events, lock, push};
use crate::cluster;
use crate::store::Store;

/// Input to one agent connection's loop, from its control stream or its status
/// streams.
enum Input {
    Message(Message),
    BadFrame(String),
    StreamEnded,
}

/// The most bytes taken from the control stream at once.
const CONTROL_LIMIT_CHUNK: usize = 64 * 1024;

/// The next message in what was read of the control stream, if it holds a whole
/// one. `read_chunk` hands over quinn's own buffers, so an idle connection holds
/// no read buffer of ours.
fn next_control_message(
    decoder: &mut FrameDecoder,
    read: &mut Option<quinn::Chunk>,
) -> Option<Input> {
    let chunk = read.as_mut()?;
    let mut input: &[u8] = &chunk.bytes;
    let decoded = decoder.decode_next(&mut input);
    let consumed = chunk.bytes.len() - input.len();
    match decoded {
        Ok(Some(message)) => {
            chunk.bytes = chunk.bytes.slice(consumed..);
            if chunk.bytes.is_empty() {
                *read = None;
            }
            Some(Input::Message(message))
        }
        // The decoder keeps a partial frame itself.
        Ok(None) => {
            *read = None;
            None
        }
        Err(e) => Some(Input::BadFrame(format!("control stream: {e}"))),
    }
}

/// The next status report: status streams are read one at a time, in the order
/// the agent opened them. `None` once the connection accepts no more streams.
async fn next_status(connection: &quinn::Connection, limits: &Limits) -> Option<Input> {
    let mut stream = connection.accept_uni().await.ok()?;
    let limit = limits.for_channel(Channel::Status) + frame::PREFIX_LEN;
    Some(match stream.read_to_end(limit).await {
        Ok(bytes) => match frame::decode(&bytes, Channel::Status, limits) {
            Ok(message) => Input::Message(message),
            Err(e) => Input::BadFrame(format!("status stream: {e}")),
        },
        Err(e) => Input::BadFrame(format!("status stream: {e}")),
    })
}

/// Sends one bundle on a stream of its own. `permit`, the bundle's share of the
/// push budget, is held until the agent has acknowledged every byte (or for
/// [`push::HOLD_AT_MOST`]).
async fn send_bundle(
    connection: quinn::Connection,
    bytes: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
) {
    let result = async {
        let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
        stream.write_all(&bytes).await.map_err(|e| e.to_string())?;
        drop(bytes);
        stream.finish().map_err(|e| e.to_string())?;
        if permit.is_some() {
            let _ = tokio::time::timeout(push::HOLD_AT_MOST, stream.stopped()).await;
        }
        Ok::<_, String>(())
    }
    .await;
    drop(permit);
    if let Err(e) = result {
        debug!(error = %e, "sending a bundle failed; the agent's next hello asks again");
    }
}

/// Serves one agent's connection until it ends: moves frames between QUIC and
/// the agent's [`HubSession`], hands the session's events to [`events`], and
/// takes bundles, commands and revocations from the rest of the link.
pub(super) async fn serve_agent(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    cluster: String,
    presented: String,
) {
    // Store work is boxed where it is awaited: a task's future is as large as
    // its largest state, and these would otherwise size every idle agent's task.
    match Box::pin(cluster::confirm_certificate(
        &shared.store,
        &cluster,
        &presented,
    ))
    .await
    {
        Ok(true) => info!("agent uses its renewed certificate; the previous one no longer works"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "retiring the previous client certificate failed"),
    }
    let (to_conn, mut from_hub) = mpsc::unbounded_channel();
    let id = shared
        .next_connection
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some((_, older)) = lock(&shared.connections).insert(cluster.clone(), (id, to_conn)) {
        // The older connection's task sees its channel close and ends.
        drop(older);
    }
    let accepted = tokio::time::timeout(shared.config.idle_timeout, connection.accept_bi()).await;
    let Ok(Ok((mut control, mut control_recv))) = accepted else {
        forget_connection(&shared, &cluster, id);
        return;
    };
    let limits = shared.config.limits;
    // One task per connection: the control stream and the status streams are
    // read here, in the same select as everything else, so an idle agent costs
    // one task and no channel between readers.
    let mut decoder = FrameDecoder::new(Channel::Control, &limits);
    let mut control_read: Option<quinn::Chunk> = None;
    let mut status = std::pin::pin!(next_status(&connection, &limits));
    let mut statuses_ended = false;

    let timing = Timing {
        heartbeat_interval: shared.config.keep_alive,
        silence_limit: shared.config.idle_timeout,
    };
    let mut session = HubSession::new(timing);
    session.handle_connected(Instant::now());
    if let Ok(Some(link)) = shared.store.link(&cluster) {
        session.resume_after_status(link.last_status_sequence);
    }
    publish_stored(&shared.store, &cluster, &mut session);

    let mut close = (close_code::DONE, "session ended".to_owned());
    // Commands sent on this connection: their waiters learn it ended.
    let mut sent_commands: Vec<u64> = Vec::new();
    let mut established = false;
    // Budget shares of bundles just handed to the session, for the pushes it
    // makes of them; what it did not send (the agent has it) frees its share.
    let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
    'conn: loop {
        while let Some(transmit) = session.poll_transmit() {
            let bytes = match transmit.encode(&limits) {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!(error = %e, "a message does not fit its frame; not sent");
                    continue;
                }
            };
            match transmit.channel {
                Channel::Bundle => {
                    if let Message::Bundle(envelope) = &transmit.message {
                        info!(
                            generation = envelope.generation,
                            bytes = bytes.len(),
                            "pushing bundle"
                        );
                    }
                    events::bundle_pushed(&shared, &cluster);
                    tokio::spawn(send_bundle(connection.clone(), bytes, permits.pop()));
                }
                _ => {
                    if control.write_all(&bytes).await.is_err() {
                        break 'conn;
                    }
                }
            }
        }
        permits.clear();
        let mut ended = false;
        let mut handled = false;
        while let Some(event) = session.poll_event() {
            handled = true;
            if matches!(event, HubEvent::Established { .. }) && !established {
                established = true;
                shared
                    .established
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            ended |= Box::pin(events::handle_event(
                &shared,
                &cluster,
                &presented,
                &mut session,
                event,
            ))
            .await;
        }
        if ended {
            // Send whatever the event queued (a Goodbye) before closing.
            while let Some(transmit) = session.poll_transmit() {
                if let Ok(bytes) = transmit.encode(&limits) {
                    let _ = control.write_all(&bytes).await;
                }
            }
            break;
        }
        if handled {
            // Events may have queued replies (status acks); send them first.
            continue;
        }
        let deadline = session
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let input = match next_control_message(&mut decoder, &mut control_read) {
            Some(input) => input,
            None => tokio::select! {
                read = control_recv.read_chunk(CONTROL_LIMIT_CHUNK, true) => match read {
                    Ok(Some(chunk)) => {
                        control_read = Some(chunk);
                        continue;
                    }
                    Ok(None) | Err(_) => Input::StreamEnded,
                },
                read = &mut status, if !statuses_ended => {
                    status.set(next_status(&connection, &limits));
                    match read {
                        Some(input) => input,
                        None => {
                            statuses_ended = true;
                            continue;
                        }
                    }
                }
            command = from_hub.recv() => match command {
                Some(ToConnection::Publish(push)) => {
                    let push::Push { app, envelope, permit } = *push;
                    session.publish(app, envelope);
                    permits.push(permit);
                    continue;
                }
                Some(ToConnection::Command(command)) => {
                    let request_id = command.request_id;
                    sent_commands.retain(|id| lock(&shared.pending).contains_key(id));
                    sent_commands.push(request_id);
                    if let Err(e) = session.send_command(*command) {
                        // Dropping the waiter tells the caller the command was not sent.
                        info!(error = %e, request_id, "a command could not be sent");
                        lock(&shared.pending).remove(&request_id);
                    }
                    continue;
                }
                Some(ToConnection::Resync) => {
                    publish_stored(&shared.store, &cluster, &mut session);
                    continue;
                }
                Some(ToConnection::Revoke) => {
                    session.close(GoodbyeReason::Revoked, "the cluster was removed from the hub");
                    while let Some(transmit) = session.poll_transmit() {
                        if let Ok(bytes) = transmit.encode(&limits) {
                            let _ = control.write_all(&bytes).await;
                        }
                    }
                    close = (close_code::REVOKED, "the cluster was removed from the hub".to_owned());
                    break;
                }
                None => {
                    close = (close_code::REPLACED, "replaced by a newer connection".to_owned());
                    break;
                }
            },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    session.handle_timeout(Instant::now());
                    continue;
                }
                _ = connection.closed() => break,
            },
        };
        match input {
            Input::Message(message) => {
                if let Message::Hello(hello) = &message {
                    Box::pin(events::hello_received(
                        &shared,
                        &cluster,
                        &hello.agent_version,
                    ))
                    .await;
                }
                match session.handle_message(Instant::now(), message) {
                    Ok(()) => {}
                    Err(e @ ProtocolError::StatusBeforeHello) => {
                        close = (close_code::PROTOCOL, e.to_string());
                        break;
                    }
                    Err(e) => {
                        info!(error = %e, "agent broke the protocol");
                        close = (close_code::PROTOCOL, e.to_string());
                    }
                }
            }
            Input::BadFrame(e) => {
                info!(error = %e, "agent sent a bad frame; closing");
                close = (close_code::PROTOCOL, e);
                break;
            }
            Input::StreamEnded => break,
        }
    }
    let _ = control.finish();
    if close.0 != close_code::PROTOCOL {
        // Give a Goodbye already written a moment to arrive before closing.
        let _ = tokio::time::timeout(Duration::from_millis(200), connection.closed()).await;
    }
    connection.close(close.0.into(), close.1.as_bytes());
    {
        let mut pending = lock(&shared.pending);
        for request_id in sent_commands {
            pending.remove(&request_id);
        }
    }
    if established {
        shared
            .established
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    session.handle_disconnected(Instant::now());
    if forget_connection(&shared, &cluster, id) {
        Box::pin(events::disconnected(&shared, &cluster)).await;
    }
    info!(reason = %close.1, "agent disconnected");
}

/// Hands the session the newest stored bundle of every app of `cluster`; it sends
/// those the agent lacks.
fn publish_stored(store: &Store, cluster: &str, session: &mut HubSession) {
    match store.latest_bundles_for(cluster) {
        Ok(bundles) => {
            for (project, app, bytes) in bundles {
                if let Ok(envelope) = Envelope::decode(&bytes) {
                    session.publish(AppRef::new(project, app), envelope);
                }
            }
        }
        Err(e) => warn!(error = %e, "reading stored bundles failed"),
    }
}

/// Removes this connection from the table if it is still the current one for
/// the cluster; says whether it was.
fn forget_connection(shared: &Shared, cluster: &str, id: u64) -> bool {
    let mut connections = lock(&shared.connections);
    if connections
        .get(cluster)
        .is_some_and(|(current, _)| *current == id)
    {
        connections.remove(cluster);
        true
    } else {
        false
    }
}
