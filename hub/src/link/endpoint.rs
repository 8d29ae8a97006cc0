//! The link's QUIC endpoint: the server configuration with the transport limits
//! each agent connection gets, the connection-id and stateless-reset keys that
//! survive a restart, and the UDP socket.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::warn;

use super::tls::StoreSlot;
use super::{Error, LinkConfig, Result, tls};
use crate::ca::Ca;

/// Status streams an agent may have open towards the hub at once.
const STATUS_STREAMS: u32 = 8;
/// Flow-control window of each stream an agent sends on.
const STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;
/// Flow-control window of everything one agent sends.
const CONNECTION_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// The QUIC server configuration: the hub's certificate and CA, TLS 1.3 only,
/// ALPN `flotilla/1`, optional client certificates checked against the store.
pub fn server_config(
    ca: &Ca,
    store: StoreSlot,
    config: &LinkConfig,
) -> Result<quinn::ServerConfig> {
    let quic = tls::crypto_config(ca, store)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(config.keep_alive));
    transport.max_idle_timeout(Some(
        config
            .idle_timeout
            .try_into()
            .map_err(|_| Error::IdleTimeout(config.idle_timeout))?,
    ));
    // quinn keeps a slot per stream the peer may open, on every connection: an
    // agent opens the control stream and one stream per status report, which
    // the hub reads one at a time, so a few are plenty.
    transport.max_concurrent_uni_streams(STATUS_STREAMS.into());
    transport.max_concurrent_bidi_streams(1u32.into());
    // Bound what each agent can make the hub buffer: quinn's defaults (1.25 MB
    // per stream, no connection limit) let 10,000 agents pin gigabytes. A status
    // report bigger than the window still arrives, in more round trips.
    transport.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    transport.receive_window(CONNECTION_RECEIVE_WINDOW.into());
    // The link sends no datagrams.
    transport.datagram_receive_buffer_size(None);
    // With segmentation offload quinn sends up to ten datagrams per system call,
    // from a buffer each connection keeps at its largest size: about 13 KiB of
    // every idle connection's 47 (heaptrack, 1,000 agents). Without it the
    // buffer is one datagram; pushing a 100 KiB bundle to 10,000 agents costs
    // more system calls, and still stays under the benchmark's 30 s goal.
    transport.enable_segmentation_offload(false);
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Socket buffers the hub asks for. The default (about 200 KiB) holds some 150
/// datagrams: thousands of agents handshaking at once after a hub restart
/// overflow it, and every dropped Initial costs that agent a retransmission
/// timeout. The kernel caps the request at net.core.rmem_max / wmem_max.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// The hub's UDP socket, with [`SOCKET_BUFFER`]-sized buffers where the kernel
/// allows.
pub(super) fn bind_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        warn!(error = %e, "could not enlarge the link's receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        warn!(error = %e, "could not enlarge the link's send buffer");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The endpoint's keys, derived from the stored stateless-reset key. Agents of a
/// hub that crashed still send on their old connections. With the same keys the
/// new process recognises those connection ids as its own and answers with a
/// stateless reset the agents trust, so they reconnect at their next keep-alive
/// instead of after the idle timeout.
pub(super) fn endpoint_config(reset_key: &[u8; 32]) -> quinn::EndpointConfig {
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        reset_key,
    )));
    let cid_key = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::new()
            .chain_update(b"flotilla quic connection id key")
            .chain_update(reset_key)
            .finalize();
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(key)
    };
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    endpoint_config
}
