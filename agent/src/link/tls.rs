//! TLS for the link: the hub is trusted by the pinned SHA-256 of its CA, and the
//! agent authenticates with the client certificate the hub issued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{ALPN, Error, Result};

pub use flotilla_common::tls::PinnedCa;

/// The QUIC client configuration: pinned CA, and the client certificate if the
/// agent has one.
pub fn client_config(
    ca_fingerprint: &str,
    client: Option<(&[u8], &[u8])>,
    keep_alive: Duration,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa::new(ca_fingerprint)));
    let mut tls = match client {
        Some((cert, key)) => builder.with_client_auth_cert(
            vec![CertificateDer::from(cert.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    transport.max_idle_timeout(Some(
        idle_timeout
            .try_into()
            .map_err(|_| Error::IdleTimeout(idle_timeout))?,
    ));
    transport.max_concurrent_uni_streams(64u32.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A local UDP endpoint for dialling the hub.
pub fn client_endpoint(hub: SocketAddr) -> Result<quinn::Endpoint> {
    let local: SocketAddr = if hub.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    quinn::Endpoint::client(local).map_err(Error::Bind)
}
