//! TLS for the link: the hub's certificate chain, TLS 1.3 and ALPN only, and the
//! pinning of client certificates to registered clusters, checked against the
//! store during the handshake.

use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use super::{ALPN, Result, lock};
use crate::ca::{self, Ca};
use crate::store::Store;

/// Accepts a client certificate only if it chains to the hub's CA and is the
/// current certificate of a registered cluster; a connection may also come without
/// one, to register.
#[derive(Debug)]
struct RegisteredClients {
    chain: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// Emptied when the link stops: quinn keeps the server configuration for a
    /// while after, and the store must be free to open again.
    store: StoreSlot,
}

/// The store, as the certificate verifier holds it.
pub type StoreSlot = Arc<Mutex<Option<Store>>>;

impl rustls::server::danger::ClientCertVerifier for RegisteredClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let Some(store) = lock(&self.store).clone() else {
            return Err(rustls::Error::General("the hub is stopping".to_owned()));
        };
        match store.cluster_by_cert(&ca::fingerprint(end_entity)) {
            Ok(Some(_)) => Ok(verified),
            Ok(None) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            )),
            Err(e) => Err(rustls::Error::General(format!(
                "looking up the client certificate: {e}"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The rustls side of the server configuration: the hub's certificate and CA,
/// TLS 1.3 only, ALPN `flotilla/1`, optional client certificates checked against
/// the store.
pub(super) fn crypto_config(
    ca: &Ca,
    store: StoreSlot,
) -> Result<quinn::crypto::rustls::QuicServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.ca_cert_der().to_vec()))?;
    let chain = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let verifier = Arc::new(RegisteredClients { chain, store });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![
                CertificateDer::from(ca.server_cert_der().to_vec()),
                CertificateDer::from(ca.ca_cert_der().to_vec()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.server_key_der().to_vec())),
        )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(quinn::crypto::rustls::QuicServerConfig::try_from(tls)?)
}

/// The SHA-256 the store knows the connection's client certificate by, if it
/// presented one.
pub(super) fn peer_fingerprint(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|cert| ca::fingerprint(cert))
}
