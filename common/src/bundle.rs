//! Bundles: the rendered objects of one app for one cluster at one generation, and
//! the [`Envelope`] that carries a bundle's encoded bytes with its signature.
//!
//! A bundle's bytes are canonical: objects are sorted by (gvk, namespace, name) and
//! each manifest is canonical JSON, so the same desired state always has the same
//! [`Digest`] whatever order the renderer produced it in. Manifests travel as JSON
//! bytes and never as serde-tagged Rust structs, because bincode silently drops
//! data that `flatten`, `untagged` or `skip_serializing_if` would describe.
//!
//! Signing and verifying envelopes lives in [`crate::signing`].

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::codec::{self, DecodeFailure};
use crate::model::{AppRef, Gvk, ResourceRef, Timestamp};
use crate::project::{ProjectRules, Violation};

mod canonical;
#[cfg(test)]
mod tests;

pub use canonical::canonical_json;

/// Errors from building, encoding and decoding bundles and envelopes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest is not valid JSON.
    #[error("manifest of {resource:?} is not valid json")]
    ManifestNotJson {
        /// The object whose manifest failed to parse.
        resource: Box<ResourceRef>,
        /// Why it failed.
        #[source]
        source: serde_json::Error,
    },
    /// bincode could not encode a value.
    #[error("failed to encode")]
    Encode(#[source] bincode::error::EncodeError),
    /// The bytes are not a valid encoding.
    #[error("failed to decode")]
    Decode(#[source] DecodeFailure),
    /// Two objects in one bundle have the same kind, namespace and name.
    #[error("bundle holds {0:?} more than once")]
    DuplicateObject(Box<ResourceRef>),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The envelope format version this crate writes and accepts.
pub const ENVELOPE_VERSION: u16 = 1;

/// The `payload_type` of an envelope whose payload is an encoded [`Bundle`].
pub const BUNDLE_PAYLOAD_TYPE: &str = "application/vnd.flotilla.bundle.v1+bincode";

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a bundle's objects came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The Git repository URL.
    pub repo: String,
    /// The commit SHA that was rendered.
    pub revision: String,
    /// The path inside the repository.
    pub path: String,
}

/// Automated sync options of an app, as in Argo CD's `syncPolicy.automated`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Automated {
    /// Delete objects that left the bundle.
    pub prune: bool,
    /// Re-apply when live state drifts.
    pub self_heal: bool,
    /// Allow a bundle that would prune every object.
    pub allow_empty: bool,
}

/// An app's sync policy, as in Argo CD's `syncPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPolicy {
    /// `Some` when sync is automated; `None` means manual sync.
    pub automated: Option<Automated>,
    /// App-wide sync options, such as `CreateNamespace=true`.
    pub sync_options: Vec<String>,
    /// `Some` when this bundle deletes the app (a cascading delete): every object
    /// goes, except those marked `Delete=false`, and those marked `Delete=confirm`
    /// unless the deletion was confirmed.
    pub deletion: Option<Deletion>,
    /// How a failed automated sync is retried (`syncPolicy.retry`); `None` tries
    /// once.
    pub retry: Option<Retry>,
    /// Labels and annotations for the destination namespace that
    /// `CreateNamespace=true` makes (`syncPolicy.managedNamespaceMetadata`).
    pub managed_namespace_metadata: Option<NamespaceMetadata>,
}

/// Labels and annotations Flotilla keeps on a namespace it manages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceMetadata {
    /// Labels to set.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Annotations to set.
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Argo CD's `syncPolicy.retry`: up to `limit` more attempts after a failed sync,
/// waiting `backoff_secs`, then that times `factor` each time, at most
/// `max_backoff_secs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// How many times a failed sync is tried again.
    pub limit: u32,
    /// The first wait, in seconds.
    pub backoff_secs: u64,
    /// What each wait is multiplied by for the next.
    pub factor: u64,
    /// The longest wait, in seconds.
    pub max_backoff_secs: u64,
}

impl Retry {
    /// The waits before each retry, in order.
    pub fn waits(&self) -> impl Iterator<Item = std::time::Duration> + '_ {
        let mut next = self.backoff_secs.min(self.max_backoff_secs);
        (0..self.limit).map(move |_| {
            let wait = next;
            next = next
                .saturating_mul(self.factor.max(1))
                .min(self.max_backoff_secs);
            std::time::Duration::from_secs(wait)
        })
    }
}

/// How an app is being deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// A user confirmed the deletion, so `Delete=confirm` objects are deleted too.
    pub confirmed: bool,
    /// Delete in the background (`resources-finalizer.argocd.argoproj.io/background`)
    /// rather than in the foreground, Argo CD's default.
    pub background: bool,
}

/// One `ignoreDifferences` entry of an Argo CD Application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoreDifference {
    /// API group of the objects this applies to.
    pub group: String,
    /// Kind of the objects this applies to.
    pub kind: String,
    /// Only this object name, if set.
    pub name: Option<String>,
    /// Only this namespace, if set.
    pub namespace: Option<String>,
    /// JSON pointers to ignore.
    pub json_pointers: Vec<String>,
    /// jq path expressions to ignore.
    pub jq_path_expressions: Vec<String>,
    /// Ignore fields owned by these field managers.
    pub managed_fields_managers: Vec<String>,
}

/// The phase a hook runs in (`argocd.argoproj.io/hook`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HookPhase {
    /// Before the Sync phase.
    PreSync,
    /// With the other objects of the Sync phase.
    Sync,
    /// After every Sync-phase object is healthy.
    PostSync,
    /// When the sync fails.
    SyncFail,
    /// Never applied; Argo CD's `Skip`.
    Skip,
    /// Only when the app is deleted, before its objects go.
    PreDelete,
    /// Only when the app is deleted, after its objects are gone.
    PostDelete,
}

impl HookPhase {
    /// Whether the hook runs only when its app is deleted.
    pub fn on_delete(self) -> bool {
        matches!(self, Self::PreDelete | Self::PostDelete)
    }
}

/// When a hook is deleted (`argocd.argoproj.io/hook-delete-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HookDeletePolicy {
    /// After the hook succeeded.
    HookSucceeded,
    /// After the hook failed.
    HookFailed,
    /// Before a new one is created.
    BeforeHookCreation,
}

/// A hook annotation on an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// The phase it runs in.
    pub phase: HookPhase,
    /// When it is deleted; empty means Argo CD's default.
    pub delete_policy: Vec<HookDeletePolicy>,
}

/// One rendered Kubernetes object in a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// The object's group, version and kind.
    pub gvk: Gvk,
    /// Its namespace, `None` when cluster-scoped.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its sync wave (`argocd.argoproj.io/sync-wave`).
    pub wave: i32,
    /// Its hook, if it is one.
    pub hook: Option<Hook>,
    /// Its sync options (`argocd.argoproj.io/sync-options`).
    pub sync_options: Vec<String>,
    /// The manifest as canonical JSON bytes.
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
}

impl Object {
    /// Builds an object, storing `manifest` as canonical JSON.
    pub fn new(
        gvk: Gvk,
        namespace: Option<String>,
        name: impl Into<String>,
        manifest: &serde_json::Value,
    ) -> Self {
        Self {
            gvk,
            namespace,
            name: name.into(),
            wave: 0,
            hook: None,
            sync_options: Vec::new(),
            manifest: canonical_json(manifest),
        }
    }

    /// The object's identity.
    pub fn resource(&self) -> ResourceRef {
        ResourceRef {
            gvk: self.gvk.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Parses the manifest bytes.
    pub fn manifest_json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.manifest).map_err(|source| Error::ManifestNotJson {
            resource: Box::new(self.resource()),
            source,
        })
    }

    fn sort_key(&self) -> (&Gvk, &Option<String>, &str) {
        (&self.gvk, &self.namespace, &self.name)
    }
}

/// The desired state of one app on one cluster at one generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The app it belongs to.
    pub app: AppRef,
    /// The cluster it is addressed to.
    pub cluster: String,
    /// What was rendered.
    pub source: Source,
    /// Increases by one for every bundle of this app on this cluster.
    pub generation: u64,
    /// When the hub made it.
    pub created_at: Timestamp,
    /// After this the agent refuses it.
    pub not_after: Timestamp,
    /// The app's sync policy.
    pub policy: SyncPolicy,
    /// The app's `ignoreDifferences`.
    pub ignore_differences: Vec<IgnoreDifference>,
    /// The app's AppProject rules and destination, which the agent enforces again
    /// before it applies anything.
    pub project: ProjectRules,
    /// The rendered objects.
    pub objects: Vec<Object>,
}

/// The same fields as [`Bundle`] in the same order, with the objects borrowed in
/// canonical order, so encoding does not copy every manifest to sort it.
#[derive(Serialize)]
struct CanonicalBundle<'a> {
    app: &'a AppRef,
    cluster: &'a str,
    source: &'a Source,
    generation: u64,
    created_at: Timestamp,
    not_after: Timestamp,
    policy: &'a SyncPolicy,
    ignore_differences: &'a [IgnoreDifference],
    project: &'a ProjectRules,
    objects: Vec<&'a Object>,
}

impl Bundle {
    /// Encodes the bundle canonically: objects sorted by (gvk, namespace, name).
    ///
    /// Fails if two objects share a kind, namespace and name, since then their
    /// order, and so the digest, would depend on the input order.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut objects: Vec<&Object> = self.objects.iter().collect();
        objects.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        if let Some(pair) = objects
            .windows(2)
            .find(|w| w[0].sort_key() == w[1].sort_key())
        {
            return Err(Error::DuplicateObject(Box::new(pair[0].resource())));
        }
        let canonical = CanonicalBundle {
            app: &self.app,
            cluster: &self.cluster,
            source: &self.source,
            generation: self.generation,
            created_at: self.created_at,
            not_after: self.not_after,
            policy: &self.policy,
            ignore_differences: &self.ignore_differences,
            project: &self.project,
            objects,
        };
        codec::encode(&canonical).map_err(Error::Encode)
    }

    /// Whether the bundle's AppProject permits its source, its destination and
    /// every object in it; the first rule broken otherwise.
    pub fn permitted(&self) -> std::result::Result<(), Violation> {
        self.project
            .permits(&self.source.repo, &self.cluster, &self.objects)
    }

    /// The digest of the canonical encoding; independent of object order.
    pub fn digest(&self) -> Result<Digest> {
        Ok(Digest::of(&self.encode()?))
    }

    /// Decodes untrusted bytes. Never panics, and never allocates more than twice
    /// `bytes.len()` for any single field.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bundle: Bundle = codec::decode(bytes).map_err(Error::Decode)?;
        let mut seen: Vec<_> = bundle.objects.iter().map(Object::sort_key).collect();
        seen.sort();
        if let Some(pair) = seen.windows(2).find(|w| w[0] == w[1]) {
            let (gvk, namespace, name) = pair[0];
            return Err(Error::DuplicateObject(Box::new(ResourceRef {
                gvk: gvk.clone(),
                namespace: namespace.clone(),
                name: name.to_owned(),
            })));
        }
        Ok(bundle)
    }
}

/// A key id: the first 8 bytes of the SHA-256 of an Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of a raw Ed25519 public key.
    pub fn of_public_key(public_key: &[u8; 32]) -> Self {
        let hash: [u8; 32] = Sha256::digest(public_key).into();
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash[..8]);
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A signed bundle as it travels: header fields the agent checks before it decodes
/// the payload, the payload bytes, and an Ed25519 signature.
///
/// Build one with [`crate::signing::BundleSigner::sign`] and open it with
/// [`crate::signing::verify`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The envelope format version, [`ENVELOPE_VERSION`].
    pub version: u16,
    /// What the payload is, [`BUNDLE_PAYLOAD_TYPE`].
    pub payload_type: String,
    /// The cluster the bundle is addressed to.
    pub cluster: String,
    /// The bundle's generation.
    pub generation: u64,
    /// The bundle's expiry.
    pub not_after: Timestamp,
    /// SHA-256 of `payload`.
    pub digest: Digest,
    /// The id of the key that signed it.
    pub key_id: KeyId,
    /// Ed25519 signature over [`Envelope::signed_bytes`].
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
    /// The encoded [`Bundle`].
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("version", &self.version)
            .field("payload_type", &self.payload_type)
            .field("cluster", &self.cluster)
            .field("generation", &self.generation)
            .field("not_after", &self.not_after)
            .field("digest", &self.digest)
            .field("key_id", &self.key_id)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// Separates envelope signatures from every other use of the same key.
const ENVELOPE_DOMAIN: &[u8] = b"flotilla/envelope/v1";

impl Envelope {
    /// The bytes the signature covers: a domain tag, then every field except the
    /// signature, each preceded by its length as a big-endian u64, so no two
    /// different envelopes can produce the same bytes.
    ///
    /// The payload is covered through its SHA-256 `digest`, which is a signed field
    /// and which [`crate::signing::verify`] checks against the payload before the
    /// signature. Signing the digest rather than the payload itself means the
    /// payload is hashed once (SHA-256) instead of also through Ed25519's SHA-512,
    /// which is what lets verification run at hashing speed.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.payload_type.len() + self.cluster.len());
        let mut field = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        field(ENVELOPE_DOMAIN);
        field(&self.version.to_be_bytes());
        field(self.payload_type.as_bytes());
        field(self.cluster.as_bytes());
        field(&self.generation.to_be_bytes());
        field(&self.not_after.0.to_be_bytes());
        field(&self.digest.0);
        field(&self.key_id.0);
        out
    }

    /// Encodes the envelope for storage or the wire.
    pub fn encode(&self) -> Result<Vec<u8>> {
        codec::encode(self).map_err(Error::Encode)
    }

    /// Decodes untrusted bytes. This only parses; [`crate::signing::verify`]
    /// decides whether to trust the result.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        codec::decode(bytes).map_err(Error::Decode)
    }
}
