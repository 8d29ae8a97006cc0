//! A connection without a client certificate: it may register its cluster and
//! nothing else.

use std::time::{Duration, Instant, SystemTime};

use flotilla_common::frame::FrameDecoder;
use flotilla_common::message::{Channel, Message, Registered};
use flotilla_common::protocol::{HubSession, Timing};
use tracing::info;

use super::{Shared, close_code};
use crate::cluster;

/// Reads one complete control frame from `recv`.
async fn read_control(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> std::result::Result<Option<Message>, String> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match recv.read(&mut buf).await {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("control stream: {e}")),
        };
        let mut input = buf.get(..n).unwrap_or_default();
        if let Some(message) = decoder.decode_next(&mut input).map_err(|e| e.to_string())? {
            return Ok(Some(message));
        }
    }
}

/// Serves a connection without a client certificate: one `Register` on the
/// control stream, answered with `Registered` or a `Goodbye`.
pub(super) async fn serve_registration(shared: &Shared, connection: &quinn::Connection) {
    let Ok((mut send, mut recv)) = connection.accept_bi().await else {
        return;
    };
    let limits = shared.config.limits;
    let mut decoder = FrameDecoder::new(Channel::Control, &limits);
    let message = match read_control(&mut recv, &mut decoder).await {
        Ok(Some(message)) => message,
        Ok(None) => return,
        Err(e) => {
            info!(error = %e, "refused a registration: bad frame");
            connection.close(close_code::PROTOCOL.into(), e.as_bytes());
            return;
        }
    };
    let Message::Register(register) = message else {
        info!("refused a connection without a client certificate that did not register");
        connection.close(
            close_code::PROTOCOL.into(),
            b"a connection without a client certificate may only register",
        );
        return;
    };
    let now = Instant::now();
    let mut session = HubSession::new(Timing::default());
    session.handle_connected(now);
    let _ = session.handle_message(now, Message::Register(register.clone()));
    while session.poll_event().is_some() {}
    match cluster::register(
        &shared.store,
        &shared.ca,
        &register,
        SystemTime::now(),
        shared.config.cert_lifetime,
    )
    .await
    {
        Ok(registration) => {
            info!(cluster = %registration.cluster, "cluster registered");
            // Nobody listening (no hub service) is fine.
            let _ = shared.registered.send(registration.cluster.clone());
            let _ = session.accept_registration(Registered {
                certificate: registration.certificate,
                key_set: shared.key_set.clone(),
            });
        }
        Err(e) => {
            info!(error = %e, "refused a registration");
            session.refuse_registration(e.to_string());
        }
    }
    while let Some(transmit) = session.poll_transmit() {
        let Ok(bytes) = transmit.encode(&limits) else {
            continue;
        };
        if send.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
    // The agent closes once it has read the answer.
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
}
