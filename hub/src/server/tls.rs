//! The API's TLS: a certificate from the hub's CA for the listen address (the
//! default), a certificate and key the operator provides, or plain HTTP, which is
//! allowed only on loopback.
//!
//! Handshakes run on their own tasks, so a client that stalls mid-handshake holds
//! up nobody; finished connections are handed to axum through [`TlsListener`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use crate::ca::Ca;
use crate::store::Store;

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the API is served.
#[derive(Clone, Debug, Default)]
pub enum ApiTls {
    /// HTTPS with a certificate the hub's CA issues at start for the listen
    /// address, loopback and [`crate::ca::SERVER_NAME`].
    #[default]
    HubCa,
    /// HTTPS with the hub's CA, also valid for these DNS names or addresses.
    HubCaWithNames(Vec<String>),
    /// HTTPS with a PEM certificate chain and private key the operator provides.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Plain HTTP; refused unless the listen address is loopback.
    Plain,
}

/// Errors setting up the API's TLS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Plain HTTP was asked for on an address other machines can reach.
    #[error(
        "--plain-http serves credentials unencrypted, so it is allowed only on a loopback address, not {0}; drop --plain-http to serve HTTPS"
    )]
    PlainNotLoopback(SocketAddr),
    /// The hub's CA could not issue the API certificate.
    #[error("failed to issue the API certificate from the hub's CA")]
    Ca(#[from] crate::ca::Error),
    /// A provided PEM file does not read or parse.
    #[error("failed to read {what} from {path}")]
    Pem {
        /// Which file: the certificate or the key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// rustls refused the certificate and key.
    #[error("the API certificate and key do not make a TLS configuration")]
    Config(#[from] rustls::Error),
}

/// The rustls configuration for `tls`, or `None` for plain HTTP (after checking
/// that `listen` is loopback).
pub async fn server_config(
    tls: &ApiTls,
    listen: SocketAddr,
    store: &Store,
) -> Result<Option<Arc<rustls::ServerConfig>>, Error> {
    let (chain, key) = match tls {
        ApiTls::Plain if listen.ip().is_loopback() => return Ok(None),
        ApiTls::Plain => return Err(Error::PlainNotLoopback(listen)),
        ApiTls::HubCa | ApiTls::HubCaWithNames(_) => {
            let now = SystemTime::now();
            let ca = Ca::load_or_create(store, now).await?;
            let mut names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            if !listen.ip().is_unspecified() {
                names.push(listen.ip().to_string());
            }
            if let ApiTls::HubCaWithNames(extra) = tls {
                names.extend(extra.iter().cloned());
            }
            names.dedup();
            let (cert, key) = ca.issue_api_cert(&names, now)?;
            (
                vec![
                    CertificateDer::from(cert),
                    CertificateDer::from(ca.ca_cert_der().to_vec()),
                ],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )
        }
        ApiTls::Files { cert, key } => {
            fn pem<'a>(
                what: &'static str,
                path: &'a std::path::Path,
            ) -> impl FnOnce(rustls::pki_types::pem::Error) -> Error + 'a {
                move |source| Error::Pem {
                    what,
                    path: path.to_owned(),
                    source,
                }
            }
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(pem("the certificate", cert))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(pem("the certificate", cert))?;
            if chain.is_empty() {
                return Err(Error::NoCertificate(cert.clone()));
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(pem("the private key", key))?;
            (chain, key)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// Accepted TLS connections, for `axum::serve`.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` and handshaking with `config`.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (sender, ready) = mpsc::channel(64);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        debug!(error = %e, "accepting an API connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "API TLS handshake failed"),
                        Err(_) => debug!(%peer, "API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local_addr,
            ready,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
