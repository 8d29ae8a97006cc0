//! The agent's identity: its key pair, the client certificate the hub issued, the
//! pinned CA fingerprint and the trusted bundle key set.
//!
//! Locally it lives in `identity.json` in the state directory, written whole to a
//! temporary file and renamed, readable by the owner only. In a cluster it lives
//! in a Secret ([`Keeper::Secret`]), so a restarted pod keeps its identity even
//! though its bootstrap token is spent.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flotilla_common::signing::KeySet;
use rcgen::{KeyPair, PKCS_ED25519};
use serde::{Deserialize, Serialize};

const FILE: &str = "identity.json";

/// Errors from making, reading and writing the identity.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key pair could not be made.
    #[error("failed to make the agent's key pair")]
    KeyPair(#[source] rcgen::Error),
    /// The identity file could not be read or written.
    #[error("failed to {what} the agent identity at {path}")]
    Io {
        /// Read or write.
        what: &'static str,
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The identity Secret could not be read or written.
    #[error("failed to {what} the agent identity Secret {namespace}/{name}")]
    Secret {
        /// Read or write.
        what: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// The client certificate does not parse as X.509.
    #[error("the agent's client certificate does not parse: {0}")]
    Certificate(String),
    /// The identity file does not parse.
    #[error("the agent identity at {path} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A fresh Ed25519 key pair, before registration.
pub struct NewKey {
    /// PKCS#8 DER of the private key.
    pub pkcs8: Vec<u8>,
    /// The raw public key, as `Register` carries it.
    pub public_key: [u8; 32],
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").finish_non_exhaustive()
    }
}

/// Makes the agent's Ed25519 key pair.
pub fn new_key() -> Result<NewKey> {
    let pair = KeyPair::generate_for(&PKCS_ED25519).map_err(Error::KeyPair)?;
    let mut public_key = [0u8; 32];
    let raw = pair.public_key_raw();
    if raw.len() == 32 {
        public_key.copy_from_slice(raw);
    }
    Ok(NewKey {
        pkcs8: pair.serialize_der(),
        public_key,
    })
}

/// Checks that `identity`'s certificate parses and certifies `public_key`, so a
/// certificate for another key is never persisted in place of a working one.
pub fn check_certificate(identity: &Identity, public_key: &[u8; 32]) -> Result<()> {
    let (_, cert) = x509_parser::parse_x509_certificate(&identity.certificate)
        .map_err(|e| Error::Certificate(e.to_string()))?;
    if cert.public_key().subject_public_key.data.as_ref() != public_key.as_slice() {
        return Err(Error::Certificate(
            "it certifies another public key than the one sent".to_owned(),
        ));
    }
    Ok(())
}

/// Everything the agent needs for mutual TLS and bundle checks.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The cluster name the agent was installed for.
    pub cluster: String,
    /// SHA-256 of the hub's CA certificate, lowercase hex.
    pub ca_fingerprint: String,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// The client certificate, DER.
    pub certificate: Vec<u8>,
    /// The bundle keys to trust.
    pub key_set: KeySet,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cluster", &self.cluster)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// When the client certificate starts and stops being valid.
    pub fn certificate_validity(&self) -> Result<(SystemTime, SystemTime)> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.certificate)
            .map_err(|e| Error::Certificate(e.to_string()))?;
        let at = |time: x509_parser::time::ASN1Time| {
            let seconds = u64::try_from(time.timestamp()).unwrap_or(0);
            SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
        };
        Ok((
            at(cert.validity().not_before),
            at(cert.validity().not_after),
        ))
    }

    /// When to ask for a new certificate: once two thirds of this one's life have
    /// passed.
    pub fn renewal_due(&self) -> Result<SystemTime> {
        let (not_before, not_after) = self.certificate_validity()?;
        let life = not_after.duration_since(not_before).unwrap_or_default();
        Ok(not_before + life * 2 / 3)
    }

    /// Reads the identity from the state directory, if the agent has registered.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                what: "read",
                path,
                source,
            }),
        }
    }

    /// Writes the identity atomically, owner-readable only.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let io = |what, source| Error::Io {
            what,
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create the folder of", e))?;
        let bytes = serde_json::to_vec(self).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source,
        })?;
        let tmp = dir.join(format!("{FILE}.tmp"));
        {
            use std::io::Write as _;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp).map_err(|e| io("write", e))?;
            file.write_all(&bytes).map_err(|e| io("write", e))?;
            file.sync_all().map_err(|e| io("sync", e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io("replace", e))
    }
}

/// Where the identity is kept.
#[derive(Clone)]
pub enum Keeper {
    /// `identity.json` in this folder.
    Dir(PathBuf),
    /// The `identity.json` key of this Secret.
    Secret {
        /// A client for the agent's own cluster.
        client: kube::Client,
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keeper::Dir(dir) => write!(f, "Dir({})", dir.display()),
            Keeper::Secret {
                namespace, name, ..
            } => write!(f, "Secret({namespace}/{name})"),
        }
    }
}

impl Keeper {
    /// Reads the identity, if the agent has registered.
    pub async fn load(&self) -> Result<Option<Identity>> {
        match self {
            Keeper::Dir(dir) => Identity::load(dir),
            Keeper::Secret {
                client,
                namespace,
                name,
            } => {
                let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
                    kube::Api::namespaced(client.clone(), namespace);
                let secret = secrets
                    .get_opt(name)
                    .await
                    .map_err(|source| Error::Secret {
                        what: "read",
                        namespace: namespace.clone(),
                        name: name.clone(),
                        source: Box::new(source),
                    })?;
                let Some(bytes) = secret.and_then(|s| s.data).and_then(|mut d| d.remove(FILE))
                else {
                    return Ok(None);
                };
                serde_json::from_slice(&bytes.0)
                    .map(Some)
                    .map_err(|source| Error::Corrupt {
                        path: PathBuf::from(format!("secret {namespace}/{name}")),
                        source,
                    })
            }
        }
    }

    /// Writes the identity.
    pub async fn save(&self, identity: &Identity) -> Result<()> {
        match self {
            Keeper::Dir(dir) => identity.save(dir),
            Keeper::Secret {
                client,
                namespace,
                name,
            } => {
                let bytes = serde_json::to_vec(identity).map_err(|source| Error::Corrupt {
                    path: PathBuf::from(format!("secret {namespace}/{name}")),
                    source,
                })?;
                let secret = k8s_openapi::api::core::v1::Secret {
                    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..Default::default()
                    },
                    data: Some(
                        [(FILE.to_owned(), k8s_openapi::ByteString(bytes))]
                            .into_iter()
                            .collect(),
                    ),
                    type_: Some("Opaque".to_owned()),
                    ..Default::default()
                };
                let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
                    kube::Api::namespaced(client.clone(), namespace);
                secrets
                    .patch(
                        name,
                        &kube::api::PatchParams::apply("flotilla-agent").force(),
                        &kube::api::Patch::Apply(&secret),
                    )
                    .await
                    .map_err(|source| Error::Secret {
                        what: "write",
                        namespace: namespace.clone(),
                        name: name.clone(),
                        source: Box::new(source),
                    })?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        let key = new_key().unwrap();
        let identity = Identity {
            cluster: "east".to_owned(),
            ca_fingerprint: "ab".to_owned(),
            key_pkcs8: key.pkcs8,
            certificate: vec![1, 2, 3],
            key_set: KeySet::new(1, &[key.public_key]).unwrap(),
        };
        identity.save(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), Some(identity));
    }

    /// An identity whose certificate, for `key`, is valid from `not_before` for
    /// `life`.
    fn certified(key: &NewKey, not_before: SystemTime, life: Duration) -> Identity {
        let pair = KeyPair::try_from(key.pkcs8.as_slice()).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_before = not_before.into();
        params.not_after = (not_before + life).into();
        Identity {
            cluster: "east".to_owned(),
            ca_fingerprint: "ab".to_owned(),
            key_pkcs8: key.pkcs8.clone(),
            certificate: params.self_signed(&pair).unwrap().der().to_vec(),
            key_set: KeySet::new(1, &[key.public_key]).unwrap(),
        }
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_certificates_life() {
        let key = new_key().unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let life = Duration::from_secs(30 * 24 * 3600);
        let identity = certified(&key, start, life);
        assert_eq!(
            identity.certificate_validity().unwrap(),
            (start, start + life)
        );
        assert_eq!(
            identity.renewal_due().unwrap(),
            start + Duration::from_secs(20 * 24 * 3600)
        );
    }

    #[test]
    fn a_certificate_for_another_key_or_not_a_certificate_is_refused() {
        let key = new_key().unwrap();
        let other = new_key().unwrap();
        let identity = certified(&key, SystemTime::now(), Duration::from_secs(60));
        check_certificate(&identity, &key.public_key).unwrap();
        let error = check_certificate(&identity, &other.public_key).unwrap_err();
        assert!(error.to_string().contains("another public key"), "{error}");
        let garbage = Identity {
            certificate: vec![1, 2, 3],
            ..identity
        };
        assert!(matches!(
            check_certificate(&garbage, &key.public_key),
            Err(Error::Certificate(_))
        ));
        assert!(garbage.renewal_due().is_err());
    }
}
