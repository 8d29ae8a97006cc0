//! A client of the hub's API, for the `flotilla` CLI: it keeps the session a `login`
//! made, and turns the API's answers into typed errors (a 403 stays a permission
//! denial, with the hub's message).
//!
//! Over HTTPS it trusts the hub by the fingerprint of the hub's CA (what `flotilla
//! login --ca-fingerprint` saves in the session), by the system's roots for a
//! certificate the operator provided, or not at all with `--insecure`.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No session: `flotilla login` first.
    #[error("not logged in (run `flotilla login --server URL --username NAME`)")]
    NotLoggedIn,
    /// The hub could not be reached, or its certificate was not trusted.
    #[error("cannot reach the hub at {server}{hint}")]
    Unreachable {
        server: String,
        /// What to try, when the cause suggests something.
        hint: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// The hub refused the credentials or the session expired.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// RBAC denied the request.
    #[error("{0}")]
    PermissionDenied(String),
    /// The hub answered with another error.
    #[error("the hub answered {status}: {message}")]
    Api { status: u16, message: String },
    /// rustls refused the client's TLS settings.
    #[error("failed to set up TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// The HTTP client could not be built.
    #[error("failed to set up the HTTP client")]
    Http(#[source] reqwest::Error),
    /// A CA fingerprint is not 64 hex digits.
    #[error("CA fingerprint {0:?} is not a SHA-256 in hex (64 hex digits, colons allowed)")]
    BadFingerprint(String),
    /// Reading or writing the session file failed.
    #[error("session file {path}")]
    SessionFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the client trusts the hub's certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trust {
    /// The SHA-256 of a certificate in the hub's chain (its CA, as `flotilla
    /// cluster add` and the hub's log show it), lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// Accept any certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

impl Trust {
    /// Pins `fingerprint`, written in hex with or without colons.
    pub fn pinned(fingerprint: &str) -> Result<Self> {
        let normal = fingerprint.trim().replace(':', "").to_ascii_lowercase();
        if normal.len() != 64 || !normal.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::BadFingerprint(fingerprint.to_owned()));
        }
        Ok(Self {
            ca_fingerprint: Some(normal),
            insecure: false,
        })
    }
}

/// A logged-in session, kept in the user's config folder (mode 0600).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub server: String,
    pub token: String,
    /// How the hub's certificate is trusted.
    #[serde(default, flatten)]
    pub trust: Trust,
}

/// Where the session is kept: `$XDG_CONFIG_HOME/flotilla/session.json`.
pub fn session_path() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(std::env::temp_dir)
        .join("flotilla")
        .join("session.json")
}

impl Session {
    /// Forgets the saved session; says whether there was one.
    pub fn remove() -> Result<bool> {
        let path = session_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::SessionFile { path, source }),
        }
    }

    pub fn load() -> Result<Self> {
        let path = session_path();
        let text = std::fs::read_to_string(&path).map_err(|_| Error::NotLoggedIn)?;
        serde_json::from_str(&text).map_err(|_| Error::NotLoggedIn)
    }

    pub fn save(&self) -> Result<()> {
        let path = session_path();
        let io = |source| Error::SessionFile {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        write_private(&path, text.as_bytes()).map_err(io)
    }
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Talks to one hub.
pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
}

/// A reqwest client that trusts the hub as `trust` says.
pub fn http_client(trust: &Trust) -> Result<reqwest::Client> {
    http_client_builder(trust)?.build().map_err(Error::Http)
}

/// A reqwest client builder that trusts the hub as `trust` says, for callers
/// that set more (such as the local address to connect from).
pub fn http_client_builder(trust: &Trust) -> Result<reqwest::ClientBuilder> {
    let builder = reqwest::Client::builder();
    let builder = if trust.insecure || trust.ca_fingerprint.is_some() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = if trust.insecure {
            Arc::new(AnyCertificate(provider.clone()))
        } else {
            Arc::new(flotilla_common::tls::PinnedCa::new(
                trust.ca_fingerprint.as_deref().unwrap_or_default(),
            ))
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        builder.use_preconfigured_tls(config)
    } else {
        builder
    };
    Ok(builder)
}

impl Client {
    pub fn new(server: &str, token: Option<String>, trust: &Trust) -> Result<Self> {
        Ok(Self {
            http: http_client(trust)?,
            server: server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    pub fn from_session() -> Result<Self> {
        let session = Session::load()?;
        Self::new(&session.server, Some(session.token), &session.trust)
    }

    /// Logs in and returns the session (not yet saved).
    pub async fn login(
        server: &str,
        username: &str,
        password: &str,
        trust: Trust,
    ) -> Result<Session> {
        let client = Self::new(server, None, &trust)?;
        let body = serde_json::json!({ "username": username, "password": password });
        let reply = client
            .send(
                reqwest::Method::POST,
                "/api/v1/session",
                Some(body.to_string()),
            )
            .await?;
        Ok(Session {
            server: client.server,
            token: reply["token"].as_str().unwrap_or_default().to_owned(),
            trust,
        })
    }

    /// The hub's address.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: String) -> Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: String) -> Result<Value> {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Value> {
        let unreachable = |source: reqwest::Error| Error::Unreachable {
            server: self.server.clone(),
            hint: if source.is_connect() && self.server.starts_with("https://") {
                " (a hub serving its own CA's certificate is trusted with --ca-fingerprint, as `flotilla hub` prints it, or --insecure)"
            } else {
                ""
            },
            source,
        };
        let mut request = self.http.request(method, format!("{}{path}", self.server));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(unreachable)?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = json["message"]
            .as_str()
            .or(json["error"].as_str())
            .map(str::to_owned)
            .unwrap_or(text);
        match status {
            200..=299 => Ok(json),
            401 => Err(Error::Unauthorized(message)),
            403 => Err(Error::PermissionDenied(message)),
            _ => Err(Error::Api { status, message }),
        }
    }
}

/// `--insecure`: any certificate, as `argocd --insecure`. The handshake's
/// signatures are still checked, so the peer holds the key it presents.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
