//! The hub's transport CA: made on first start, kept in the store's `keys` tree,
//! and used for the hub's QUIC server certificate and every cluster's client
//! certificate.
//!
//! Agents pin the CA by the SHA-256 of its DER encoding ([`Ca::fingerprint`]), which
//! `flotilla cluster add` prints into the install manifest. Client certificates
//! carry the cluster name as their common name, but the hub never reads it back: it
//! names a connected agent by the SHA-256 of the certificate it presented, looked up
//! in the `clusters` tree, so a removed cluster's certificate is worthless at once.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, PublicKeyData, SignatureAlgorithm,
};
use sha2::{Digest as _, Sha256};

use crate::store::{self, Store};

/// The DNS name in the hub's server certificate; agents check it whatever address
/// they dial, since the CA is pinned and private to this hub.
pub const SERVER_NAME: &str = "flotilla-hub";

const CA_KEY: &[u8] = b"transport-ca-key";
const CA_CERT: &[u8] = b"transport-ca-cert";
const SERVER_KEY: &[u8] = b"transport-server-key";
const SERVER_CERT: &[u8] = b"transport-server-cert";

/// The CA's lifetime: long, because rotating it means re-registering every agent.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The API certificate's lifetime; a new one is made at every start.
const API_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The server certificate's lifetime; it is remade when the CA is.
const SERVER_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Errors from the CA.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen could not make a key or a certificate.
    #[error("failed to {what}")]
    Certificate {
        /// What was being made.
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// Reading or writing the CA in the store failed.
    #[error("failed to keep the transport CA in the store")]
    Store(#[from] store::Error),
    /// A stored CA key does not parse: corruption.
    #[error("the stored transport CA key does not parse")]
    StoredKey(#[source] rcgen::Error),
    /// The system's random source failed.
    #[error("failed to draw a certificate serial from the system's random source")]
    Random,
    /// A time outside what a certificate can carry.
    #[error("certificate validity time is out of range")]
    Time,
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The hub's CA and server certificate.
pub struct Ca {
    ca_key: KeyPair,
    ca_cert: Vec<u8>,
    server_key_der: Vec<u8>,
    server_cert: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// An agent's Ed25519 public key as rcgen wants it for signing a certificate.
struct Ed25519Public<'a>(&'a [u8; 32]);

impl PublicKeyData for Ed25519Public<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

fn cert_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Certificate { what, source }
}

fn offset_time(time: SystemTime) -> Result<time::OffsetDateTime> {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| Error::Time)?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).map_err(|_| Error::Time)?)
        .map_err(|_| Error::Time)
}

fn ca_params() -> Result<CertificateParams> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(cert_error("make CA parameters"))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "flotilla hub transport CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a DER certificate, as lowercase hex: how agents pin the CA and
/// how the hub names a client certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

impl Ca {
    /// Loads the CA from the store, or makes and stores one on first start.
    pub async fn load_or_create(store: &Store, now: SystemTime) -> Result<Self> {
        if let (Some(key), Some(cert), Some(server_key), Some(server_cert)) = (
            store.key_bytes(CA_KEY)?,
            store.key_bytes(CA_CERT)?,
            store.key_bytes(SERVER_KEY)?,
            store.key_bytes(SERVER_CERT)?,
        ) {
            let pem = String::from_utf8_lossy(&key).into_owned();
            let ca_key = KeyPair::from_pem(&pem).map_err(Error::StoredKey)?;
            return Ok(Self {
                ca_key,
                ca_cert: cert,
                server_key_der: server_key,
                server_cert,
            });
        }
        let ca_key = KeyPair::generate_for(&PKCS_ED25519).map_err(cert_error("make the CA key"))?;
        let mut params = ca_params()?;
        params.not_before = offset_time(now - Duration::from_secs(3600))?;
        params.not_after = offset_time(now + CA_LIFETIME)?;
        let ca_cert = params
            .self_signed(&ca_key)
            .map_err(cert_error("self-sign the CA"))?
            .der()
            .to_vec();
        let server_key =
            KeyPair::generate_for(&PKCS_ED25519).map_err(cert_error("make the server key"))?;
        let mut server = CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .map_err(cert_error("make server certificate parameters"))?;
        server.not_before = offset_time(now - Duration::from_secs(3600))?;
        server.not_after = offset_time(now + SERVER_LIFETIME)?;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::new(ca_params()?, &ca_key);
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .map_err(cert_error("sign the server certificate"))?
            .der()
            .to_vec();
        let ca = Self {
            server_key_der: server_key.serialize_der(),
            ca_cert,
            server_cert,
            ca_key,
        };
        // The certificates first, the CA key last: `load_or_create` only trusts a
        // complete set.
        store.put_key_bytes(CA_CERT, &ca.ca_cert).await?;
        store.put_key_bytes(SERVER_CERT, &ca.server_cert).await?;
        store.put_key_bytes(SERVER_KEY, &ca.server_key_der).await?;
        store
            .put_key_bytes(CA_KEY, ca.ca_key.serialize_pem().as_bytes())
            .await?;
        Ok(ca)
    }

    /// The SHA-256 of the CA certificate, which agents pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.ca_cert)
    }

    /// The CA certificate, DER.
    pub fn ca_cert_der(&self) -> &[u8] {
        &self.ca_cert
    }

    /// The server certificate, DER.
    pub fn server_cert_der(&self) -> &[u8] {
        &self.server_cert
    }

    /// The server key, PKCS#8 DER.
    pub fn server_key_der(&self) -> &[u8] {
        &self.server_key_der
    }

    /// Issues a certificate for the hub's HTTPS API, valid for `names` (DNS names
    /// or IP addresses) and for [`SERVER_NAME`], with a fresh key. Returns the
    /// certificate and its PKCS#8 key, both DER.
    pub fn issue_api_cert(&self, names: &[String], now: SystemTime) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut all: Vec<String> = vec![SERVER_NAME.to_owned()];
        all.extend(
            names
                .iter()
                .filter(|n| !all.contains(n))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(cert_error("make the API key"))?;
        let mut params =
            CertificateParams::new(all).map_err(cert_error("make API certificate parameters"))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "flotilla hub API");
        params.distinguished_name = name;
        params.not_before = offset_time(now - Duration::from_secs(3600))?;
        params.not_after = offset_time(now + API_CERT_LIFETIME)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|_| Error::Random)?;
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let issuer = Issuer::new(ca_params()?, &self.ca_key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(cert_error("sign the API certificate"))?
            .der()
            .to_vec();
        Ok((cert, key.serialize_der()))
    }

    /// Issues a client certificate for `cluster`'s Ed25519 public key, valid from
    /// now for `lifetime`. Only this hub checks client certificates, on the clock
    /// that issued them, so unlike the server certificate it needs no allowance
    /// for skew; backdating would also stretch the life the agent takes two thirds
    /// of to schedule its renewal. A second back covers DER's whole-second times.
    pub fn issue_client_cert(
        &self,
        cluster: &str,
        public_key: &[u8; 32],
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Vec<u8>> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(cert_error("make client certificate parameters"))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, cluster);
        params.distinguished_name = name;
        params.not_before = offset_time(now - Duration::from_secs(1))?;
        params.not_after = offset_time(now + lifetime)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|_| Error::Random)?;
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let issuer = Issuer::new(ca_params()?, &self.ca_key);
        Ok(params
            .signed_by(&Ed25519Public(public_key), &issuer)
            .map_err(cert_error("sign a client certificate"))?
            .der()
            .to_vec())
    }
}
