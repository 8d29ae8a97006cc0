//! Ed25519 signing and verification of bundles, and the key set an agent trusts.
//!
//! - The hub holds a [`BundleSigner`] and turns a [`Bundle`] into an [`Envelope`].
//! - The agent holds a [`KeySet`] and opens envelopes with [`verify`], the one
//!   place that decides whether a bundle may be applied. It returns the bundle or
//!   a [`VerifyError`] whose variant says exactly why not.
//! - The key set is rotated by a [`KeySetUpdate`] signed with a key the agent
//!   already trusts; [`KeySet::apply_update`] checks it.
//!
//! Key material comes in as bytes: this crate never draws randomness itself.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::bundle::{self, BUNDLE_PAYLOAD_TYPE, Bundle, Digest, ENVELOPE_VERSION, Envelope};
use crate::codec::{self, DecodeFailure};
use crate::model::{AppRef, Timestamp};

pub use crate::bundle::KeyId;

#[cfg(test)]
mod tests;

/// Errors from signing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle could not be encoded.
    #[error("failed to encode bundle")]
    Bundle(#[source] bundle::Error),
    /// A key set must hold at least one key and at most [`MAX_KEYS`].
    #[error("a key set must hold between 1 and {MAX_KEYS} keys, not {0}")]
    KeyCount(usize),
    /// A public key is not a valid Ed25519 point.
    #[error("invalid ed25519 public key")]
    InvalidPublicKey(#[source] ed25519_dalek::SignatureError),
    /// The same key appears twice in a key set.
    #[error("key {0} appears twice in the key set")]
    DuplicateKey(KeyId),
    /// bincode could not encode a key set.
    #[error("failed to encode key set")]
    Encode(#[source] bincode::error::EncodeError),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why [`verify`] refused an envelope. Callers branch on the variant; the agent
/// reports it to the hub and never applies the bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signing key is not in the trusted key set.
    #[error("bundle signed by unknown key {0}")]
    UnknownKey(KeyId),
    /// The signature does not verify under the named key.
    #[error("bad signature from key {0}")]
    BadSignature(KeyId),
    /// The payload does not hash to the digest in the envelope.
    #[error("payload digest {found} does not match envelope digest {expected}")]
    DigestMismatch {
        /// The digest the envelope claims.
        expected: Digest,
        /// The digest of the payload as received.
        found: Digest,
    },
    /// The bundle is addressed to another cluster.
    #[error("bundle is for cluster {found:?}, not {expected:?}")]
    WrongCluster {
        /// This agent's cluster.
        expected: String,
        /// The cluster the bundle names.
        found: String,
    },
    /// The generation is not newer than the one last applied for this app.
    #[error("generation {generation} of {app} is not newer than applied generation {last_applied}")]
    Stale {
        /// The app.
        app: AppRef,
        /// The bundle's generation.
        generation: u64,
        /// The generation last applied.
        last_applied: u64,
    },
    /// The bundle's `not_after` has passed.
    #[error("bundle expired at {not_after}, now is {now}")]
    Expired {
        /// When it expired.
        not_after: Timestamp,
        /// The time it was checked.
        now: Timestamp,
    },
    /// The bytes are not a well-formed envelope or bundle, or the signed header
    /// disagrees with the bundle inside it.
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

/// Errors from applying a [`KeySetUpdate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// The update is signed by a key this key set does not hold.
    #[error("key set update signed by untrusted key {0}")]
    UntrustedSigner(KeyId),
    /// The update's signature does not verify.
    #[error("bad signature on key set update from key {0}")]
    BadSignature(KeyId),
    /// The update's serial is not newer than the current key set's.
    #[error("key set serial {update} is not newer than current serial {current}")]
    Stale {
        /// The current serial.
        current: u64,
        /// The update's serial.
        update: u64,
    },
    /// The bytes are not a well-formed key set or update.
    #[error("malformed key set: {0}")]
    Malformed(String),
}

/// The most keys a key set may hold: enough for rotation with overlap, small
/// enough that a forged set cannot make verification slow.
pub const MAX_KEYS: usize = 16;

/// A bundle-signing key, held by the hub.
pub struct BundleSigner {
    key: SigningKey,
    key_id: KeyId,
}

impl std::fmt::Debug for BundleSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl BundleSigner {
    /// Builds a signer from a 32-byte Ed25519 secret seed. The caller draws the
    /// seed from its own randomness source, or loads it from storage.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let key_id = KeyId::of_public_key(key.verifying_key().as_bytes());
        Self { key, key_id }
    }

    /// The secret seed, for storage.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// This key's id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The raw public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Encodes `bundle` canonically and signs it into an envelope.
    pub fn sign(&self, bundle: &Bundle) -> Result<Envelope> {
        let payload = bundle.encode().map_err(Error::Bundle)?;
        let mut envelope = Envelope {
            version: ENVELOPE_VERSION,
            payload_type: BUNDLE_PAYLOAD_TYPE.to_owned(),
            cluster: bundle.cluster.clone(),
            generation: bundle.generation,
            not_after: bundle.not_after,
            digest: Digest::of(&payload),
            key_id: self.key_id,
            signature: [0; 64],
            payload,
        };
        envelope.signature = self.key.sign(&envelope.signed_bytes()).to_bytes();
        Ok(envelope)
    }

    /// Signs `key_set` so that agents trusting this key accept it as the next set.
    pub fn sign_key_set(&self, key_set: &KeySet) -> KeySetUpdate {
        let signature = self.key.sign(&key_set.signed_bytes()).to_bytes();
        KeySetUpdate {
            key_set: key_set.clone(),
            signer: self.key_id,
            signature,
        }
    }
}

/// The Ed25519 public keys an agent accepts bundles from, with a serial that only
/// grows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "KeySetWire", into = "KeySetWire")]
pub struct KeySet {
    serial: u64,
    keys: Vec<(KeyId, VerifyingKey)>,
}

/// How a key set travels: raw keys only, so ids are always derived, never trusted.
#[derive(Serialize, Deserialize)]
struct KeySetWire {
    serial: u64,
    keys: Vec<[u8; 32]>,
}

impl TryFrom<KeySetWire> for KeySet {
    type Error = Error;

    fn try_from(wire: KeySetWire) -> Result<Self> {
        KeySet::new(wire.serial, &wire.keys)
    }
}

impl From<KeySet> for KeySetWire {
    fn from(set: KeySet) -> Self {
        KeySetWire {
            serial: set.serial,
            keys: set.keys.iter().map(|(_, key)| key.to_bytes()).collect(),
        }
    }
}

/// Separates key-set signatures from envelope signatures made by the same key.
const KEY_SET_DOMAIN: &[u8] = b"flotilla/key-set/v1";

impl KeySet {
    /// Builds a key set from raw public keys. Fails on an empty set, more than
    /// [`MAX_KEYS`] keys, an invalid point or a duplicate.
    pub fn new(serial: u64, public_keys: &[[u8; 32]]) -> Result<Self> {
        if public_keys.is_empty() || public_keys.len() > MAX_KEYS {
            return Err(Error::KeyCount(public_keys.len()));
        }
        let mut keys: Vec<(KeyId, VerifyingKey)> = Vec::with_capacity(public_keys.len());
        for raw in public_keys {
            let key = VerifyingKey::from_bytes(raw).map_err(Error::InvalidPublicKey)?;
            let id = KeyId::of_public_key(raw);
            if keys.iter().any(|(known, _)| *known == id) {
                return Err(Error::DuplicateKey(id));
            }
            keys.push((id, key));
        }
        Ok(Self { serial, keys })
    }

    /// The serial; an update must carry a larger one.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The ids of the keys held, in the order given.
    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(|(id, _)| *id)
    }

    /// Whether the set holds the key with this id.
    pub fn contains(&self, id: KeyId) -> bool {
        self.key(id).is_some()
    }

    fn key(&self, id: KeyId) -> Option<&VerifyingKey> {
        self.keys
            .iter()
            .find_map(|(known, key)| (*known == id).then_some(key))
    }

    /// The bytes a key-set update signature covers: a domain tag, the serial and
    /// each key, every field length-prefixed.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.keys.len() * 40);
        let mut field = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        field(KEY_SET_DOMAIN);
        field(&self.serial.to_be_bytes());
        field(&(self.keys.len() as u64).to_be_bytes());
        for (_, key) in &self.keys {
            field(key.as_bytes());
        }
        out
    }

    /// Encodes the key set for storage.
    pub fn encode(&self) -> Result<Vec<u8>> {
        codec::encode(self).map_err(Error::Encode)
    }

    /// Decodes untrusted bytes into a key set, validating every key.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeySetError> {
        codec::decode(bytes)
            .map_err(|failure: DecodeFailure| KeySetError::Malformed(failure.to_string()))
    }

    /// Checks that `update` is signed by a key in this set and is newer, and
    /// returns the new set. This set is unchanged either way.
    pub fn apply_update(&self, update: &KeySetUpdate) -> Result<KeySet, KeySetError> {
        let signer = self
            .key(update.signer)
            .ok_or(KeySetError::UntrustedSigner(update.signer))?;
        let signature = Signature::from_bytes(&update.signature);
        signer
            .verify_strict(&update.key_set.signed_bytes(), &signature)
            .map_err(|_| KeySetError::BadSignature(update.signer))?;
        if update.key_set.serial <= self.serial {
            return Err(KeySetError::Stale {
                current: self.serial,
                update: update.key_set.serial,
            });
        }
        Ok(update.key_set.clone())
    }
}

/// A new key set, signed by a key of the current one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySetUpdate {
    /// The key set to switch to.
    pub key_set: KeySet,
    /// The id of the key that signed it.
    pub signer: KeyId,
    /// Ed25519 signature over the new set.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

impl KeySetUpdate {
    /// Encodes the update.
    pub fn encode(&self) -> Result<Vec<u8>> {
        codec::encode(self).map_err(Error::Encode)
    }

    /// Decodes untrusted bytes; [`KeySet::apply_update`] decides whether to trust it.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeySetError> {
        codec::decode(bytes)
            .map_err(|failure: DecodeFailure| KeySetError::Malformed(failure.to_string()))
    }
}

/// What the agent expects of a bundle besides a good signature.
#[derive(Clone, Copy, Debug)]
pub struct Expectation<'a> {
    /// This agent's cluster name.
    pub cluster: &'a str,
    /// The current wall-clock time.
    pub now: Timestamp,
}

/// Opens an envelope: the one check between the wire and `apply`.
///
/// In order, it refuses an unknown envelope version or payload type (`Malformed`),
/// an unknown key, a payload that does not match its digest, a bad signature, a
/// bundle for another cluster, an expired bundle, a payload that does not decode or
/// disagrees with the signed header (`Malformed`), and finally a generation not
/// newer than `last_applied(app)` returns for the bundle's app (`Stale`).
pub fn verify(
    envelope: &Envelope,
    trusted: &KeySet,
    expect: Expectation<'_>,
    last_applied: impl FnOnce(&AppRef) -> Option<u64>,
) -> Result<Bundle, VerifyError> {
    if envelope.version != ENVELOPE_VERSION {
        return Err(VerifyError::Malformed(format!(
            "unsupported envelope version {}",
            envelope.version
        )));
    }
    if envelope.payload_type != BUNDLE_PAYLOAD_TYPE {
        return Err(VerifyError::Malformed(format!(
            "unexpected payload type {:?}",
            envelope.payload_type
        )));
    }
    let key = trusted
        .key(envelope.key_id)
        .ok_or(VerifyError::UnknownKey(envelope.key_id))?;
    let found = Digest::of(&envelope.payload);
    if found != envelope.digest {
        return Err(VerifyError::DigestMismatch {
            expected: envelope.digest,
            found,
        });
    }
    let signature = Signature::from_bytes(&envelope.signature);
    key.verify_strict(&envelope.signed_bytes(), &signature)
        .map_err(|_| VerifyError::BadSignature(envelope.key_id))?;
    if envelope.cluster != expect.cluster {
        return Err(VerifyError::WrongCluster {
            expected: expect.cluster.to_owned(),
            found: envelope.cluster.clone(),
        });
    }
    if envelope.not_after <= expect.now {
        return Err(VerifyError::Expired {
            not_after: envelope.not_after,
            now: expect.now,
        });
    }
    let bundle = Bundle::decode(&envelope.payload)
        .map_err(|error| VerifyError::Malformed(error.to_string()))?;
    if bundle.cluster != envelope.cluster
        || bundle.generation != envelope.generation
        || bundle.not_after != envelope.not_after
    {
        return Err(VerifyError::Malformed(
            "signed header disagrees with the bundle inside it".to_owned(),
        ));
    }
    if let Some(last_applied) = last_applied(&bundle.app)
        && bundle.generation <= last_applied
    {
        return Err(VerifyError::Stale {
            app: bundle.app,
            generation: bundle.generation,
            last_applied,
        });
    }
    Ok(bundle)
}

/// Decodes untrusted envelope bytes and [`verify`]s them; a decode failure is
/// `Malformed`.
pub fn verify_bytes(
    bytes: &[u8],
    trusted: &KeySet,
    expect: Expectation<'_>,
    last_applied: impl FnOnce(&AppRef) -> Option<u64>,
) -> Result<Bundle, VerifyError> {
    let envelope =
        Envelope::decode(bytes).map_err(|error| VerifyError::Malformed(error.to_string()))?;
    verify(&envelope, trusted, expect, last_applied)
}
