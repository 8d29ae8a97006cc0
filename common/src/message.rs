//! Every message the hub and the agent exchange, and the protocol versions they
//! negotiate.
//!
//! Messages travel as [`crate::frame`]s on three kinds of QUIC stream, named by
//! [`Channel`]: the long-lived control stream, one stream per bundle from the hub,
//! and one stream per status report from the agent.

use serde::{Deserialize, Serialize};

use crate::bundle::{Digest, Envelope};
use crate::model::{AppRef, ClusterFacts, Health, ResourceRef, SyncStatus, Timestamp};
use crate::signing::{KeySet, KeySetUpdate, VerifyError};

/// A protocol version number.
pub type ProtocolVersion = u16;

/// The protocol versions this build speaks, newest first.
pub const SUPPORTED_VERSIONS: &[ProtocolVersion] = &[1];

/// Picks the newest version both sides speak, if any.
pub fn negotiate(offered: &[ProtocolVersion]) -> Option<ProtocolVersion> {
    SUPPORTED_VERSIONS
        .iter()
        .copied()
        .find(|version| offered.contains(version))
}

/// The kind of stream a message travels on. Each has its own frame size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The bidirectional control stream: hello, heartbeats, acks, commands.
    Control,
    /// A unidirectional hub-to-agent stream carrying one bundle.
    Bundle,
    /// A unidirectional agent-to-hub stream carrying one status report.
    Status,
}

impl Channel {
    /// The channel a message must travel on.
    pub fn of(message: &Message) -> Channel {
        match message {
            Message::Bundle(_) => Channel::Bundle,
            Message::Status(_) => Channel::Status,
            _ => Channel::Control,
        }
    }
}

/// One message of the hub⇄agent protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Agent → hub, on its first connection: asks to join with a bootstrap token.
    Register(Register),
    /// Hub → agent: registration accepted.
    Registered(Registered),
    /// Agent → hub, first on every connection: versions and what is applied.
    Hello(Hello),
    /// Hub → agent: the version chosen; the session is established.
    Welcome(Welcome),
    /// Either way: proof of life, echoed by the hub.
    Heartbeat(Heartbeat),
    /// Hub → agent: a signed bundle.
    Bundle(Envelope),
    /// Agent → hub: what became of a bundle.
    BundleAck(BundleAck),
    /// Agent → hub: the state of one app.
    Status(Status),
    /// Hub → agent: a status report is stored and need not be resent.
    StatusAck(StatusAck),
    /// Hub → agent: do something now.
    Command(Command),
    /// Agent → hub: what became of a command.
    CommandResult(CommandResult),
    /// Hub → agent: a new trusted key set, signed by a current key.
    KeySetUpdate(KeySetUpdate),
    /// Either way: the sender is closing the session, and why.
    Goodbye(Goodbye),
    /// Agent → hub: asks for a new client certificate for a fresh key pair,
    /// once two thirds of the current certificate's life have passed.
    Renew(Renew),
    /// Hub → agent: the new client certificate; the agent uses it from its next
    /// connection on.
    Renewed(Renewed),
    /// Hub → agent: the certificate was not renewed, and why; the agent tries
    /// again later.
    RenewalRefused(RenewalRefused),
    /// Agent → hub, on every connection once it is up: the cluster as it is now
    /// (its version and the kinds it serves, with their scope), which may differ
    /// from what it was at registration: a CRD installed since, an upgrade.
    Facts(ClusterFacts),
}

/// Asks the hub to register this cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The single-use bootstrap token from `flotilla cluster add`.
    pub token: String,
    /// The agent's Ed25519 public key, for its client certificate.
    pub public_key: [u8; 32],
    /// What the agent found out about its cluster.
    pub facts: ClusterFacts,
}

/// Registration accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The agent's client certificate, DER-encoded.
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
    /// The bundle keys to trust.
    pub key_set: KeySet,
}

/// The generation and digest an agent last applied for one app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The app.
    pub app: AppRef,
    /// Its last applied generation.
    pub generation: u64,
    /// That bundle's digest.
    pub digest: Digest,
}

/// Opens every session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Every protocol version the agent speaks.
    pub versions: Vec<ProtocolVersion>,
    /// The last applied bundle of every app, sorted by app.
    pub applied: Vec<Applied>,
    /// The agent's Flotilla version, which the hub shows per cluster.
    pub agent_version: String,
}

/// Accepts a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both sides now speak.
    pub version: ProtocolVersion,
    /// How often the agent should send a heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
}

/// Proof of life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Counts up per session; the hub echoes it.
    pub sequence: u64,
}

/// The outcome of a bundle on the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleOutcome {
    /// Verified, stored and taken by the app's sync policy: applied under automated
    /// sync, diffed under manual sync (the Status then says whether the cluster
    /// matches). Either way the agent will not need this generation again.
    Applied,
    /// Refused by verification; never applied.
    Rejected(Rejection),
    /// Verified, but applying failed.
    Failed {
        /// What went wrong.
        message: String,
    },
}

/// Why the agent refused a bundle, mirroring [`VerifyError`] so the hub can
/// branch on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// See [`VerifyError::UnknownKey`].
    UnknownKey,
    /// See [`VerifyError::BadSignature`].
    BadSignature,
    /// See [`VerifyError::DigestMismatch`].
    DigestMismatch,
    /// See [`VerifyError::WrongCluster`].
    WrongCluster,
    /// See [`VerifyError::Stale`].
    Stale {
        /// The generation the agent has applied.
        last_applied: u64,
    },
    /// See [`VerifyError::Expired`].
    Expired,
    /// See [`VerifyError::Malformed`].
    Malformed,
    /// The bundle's AppProject does not allow one of its objects.
    NotPermitted {
        /// Which object, and why.
        message: String,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::UnknownKey => {
                f.write_str("it is signed with a key the agent does not trust")
            }
            Rejection::BadSignature => f.write_str("its signature does not verify"),
            Rejection::DigestMismatch => f.write_str("its payload does not match its digest"),
            Rejection::WrongCluster => f.write_str("it is addressed to another cluster"),
            Rejection::Stale { last_applied } => write!(
                f,
                "it is not newer than generation {last_applied}, which the agent already has"
            ),
            Rejection::Expired => f.write_str("it expired before the agent received it"),
            Rejection::Malformed => f.write_str("it does not decode"),
            Rejection::NotPermitted { message } => write!(f, "{message}"),
        }
    }
}

impl std::fmt::Display for BundleOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BundleOutcome::Applied => f.write_str("Applied"),
            BundleOutcome::Rejected(rejection) => write!(f, "Rejected: {rejection}"),
            BundleOutcome::Failed { message } => write!(f, "Failed: {message}"),
        }
    }
}

impl From<&VerifyError> for Rejection {
    fn from(error: &VerifyError) -> Self {
        match error {
            VerifyError::UnknownKey(_) => Rejection::UnknownKey,
            VerifyError::BadSignature(_) => Rejection::BadSignature,
            VerifyError::DigestMismatch { .. } => Rejection::DigestMismatch,
            VerifyError::WrongCluster { .. } => Rejection::WrongCluster,
            VerifyError::Stale { last_applied, .. } => Rejection::Stale {
                last_applied: *last_applied,
            },
            VerifyError::Expired { .. } => Rejection::Expired,
            VerifyError::Malformed(_) => Rejection::Malformed,
        }
    }
}

/// What became of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleAck {
    /// The app, when the agent could tell; a bundle too broken to decode has none.
    pub app: Option<AppRef>,
    /// The generation from the envelope.
    pub generation: u64,
    /// The digest from the envelope.
    pub digest: Digest,
    /// What happened to it.
    pub outcome: BundleOutcome,
}

/// The sync state and health of one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Which resource.
    pub resource: ResourceRef,
    /// Whether it matches the bundle.
    pub sync: SyncStatus,
    /// Its health.
    pub health: Health,
    /// A human-readable explanation, if any.
    pub message: Option<String>,
}

/// One field that changed in the cluster behind Flotilla's back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftEntry {
    /// Which resource.
    pub resource: ResourceRef,
    /// The field path, such as `.spec.replicas`.
    pub path: String,
    /// The desired value as canonical JSON, `None` if the field should be absent.
    pub old: Option<String>,
    /// The live value as canonical JSON, `None` if the field is gone.
    pub new: Option<String>,
    /// The field manager that made the change, if known.
    pub field_manager: Option<String>,
}

/// How serious an event is, as in Kubernetes events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Expected.
    Normal,
    /// Worth a look.
    Warning,
}

/// Something that happened to an app on the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened.
    pub at: Timestamp,
    /// How serious it is.
    pub kind: EventKind,
    /// A CamelCase reason, such as `SyncSucceeded`.
    pub reason: String,
    /// A human-readable message.
    pub message: String,
    /// The resource concerned, if any.
    pub resource: Option<ResourceRef>,
}

/// The state of one app on the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Numbers the report within the agent's lifetime; set by the agent session and
    /// echoed in [`StatusAck`].
    pub sequence: u64,
    /// The app.
    pub app: AppRef,
    /// The generation applied.
    pub generation: u64,
    /// Whether the app matches its bundle.
    pub sync: SyncStatus,
    /// The worst health of its resources.
    pub health: Health,
    /// Every resource's state.
    pub resources: Vec<ResourceStatus>,
    /// Fields changed behind Flotilla's back.
    pub drift: Vec<DriftEntry>,
    /// Events since the last report.
    pub events: Vec<Event>,
    /// The sync operation this report ends, if it ends one: what the hub records
    /// in the app's history.
    pub operation: Option<Box<Operation>>,
}

/// How a sync operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationPhase {
    /// Every step succeeded.
    Succeeded,
    /// A step failed.
    Failed,
}

/// What a sync operation did to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceAction {
    /// It did not exist and was created.
    Created,
    /// It existed, differed, and was changed.
    Configured,
    /// It already matched; nothing was written.
    Unchanged,
    /// It was replaced (`Replace=true`).
    Replaced,
    /// It left the bundle and was deleted.
    Pruned,
    /// It left the bundle and was kept (prune off, or `Prune=false`).
    PruneSkipped,
    /// A hook that ran and succeeded.
    HookSucceeded,
    /// A hook that failed.
    HookFailed,
    /// Writing it failed.
    Failed,
    /// It was not reached because an earlier step failed.
    Skipped,
    /// A dry run would have changed it.
    WouldChange,
}

/// The outcome of one resource in a sync operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceResult {
    /// Which resource.
    pub resource: ResourceRef,
    /// What was done to it.
    pub action: ResourceAction,
    /// The apiserver's or the hook's message, if any.
    pub message: Option<String>,
}

/// One sync operation as the agent ran it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The [`Command`] that asked for it; `None` when the agent started it itself
    /// (a new bundle under automated sync, or selfHeal).
    pub request_id: Option<u64>,
    /// When it started.
    pub started_at: Timestamp,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// How it ended.
    pub phase: OperationPhase,
    /// Why it failed, or a summary.
    pub message: String,
    /// Whether it was a dry run, which writes nothing.
    pub dry_run: bool,
    /// Every resource it touched or meant to, in apply order.
    pub resources: Vec<ResourceResult>,
}

/// A status report is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusAck {
    /// The acknowledged report's sequence number.
    pub sequence: u64,
}

/// How a commanded sync runs, as `argocd app sync` flags it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncOptions {
    /// The bundle generation to sync; the agent refuses when it holds another one.
    pub generation: u64,
    /// Delete what left the bundle, even when the app's policy does not prune.
    pub prune: bool,
    /// Compute what would change and write nothing.
    pub dry_run: bool,
    /// Only these resources; empty for all of them.
    pub resources: Vec<ResourceRef>,
    /// The user confirmed pruning: objects marked `Prune=confirm` are pruned too.
    pub confirm: bool,
}

/// What the hub asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandKind {
    /// Sync the app's bundle now (a manual sync); the operation is reported in a
    /// Status with its `operation` set and this command's request id.
    Sync(SyncOptions),
    /// Compare live state again and report a Status.
    Refresh,
    /// Report the diff between live and desired state without applying.
    Diff,
}

/// One resource's desired and live state, as YAML with server-set fields
/// (`status`, `metadata.managedFields`, `resourceVersion`, `uid`, timestamps)
/// removed, for a unified diff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDiff {
    /// Which resource.
    pub resource: ResourceRef,
    /// What the bundle wants; `None` when the object is live but left the bundle.
    pub desired: Option<String>,
    /// What the cluster holds; `None` when it does not exist.
    pub live: Option<String>,
}

/// A request from the hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Chosen by the hub, echoed in the result.
    pub request_id: u64,
    /// The app concerned.
    pub app: AppRef,
    /// What to do.
    pub kind: CommandKind,
}

/// The outcome of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Done; the message says what happened.
    Done {
        /// What happened.
        message: String,
    },
    /// Could not be done.
    Failed {
        /// Why.
        message: String,
    },
}

/// What became of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The command's request id.
    pub request_id: u64,
    /// Its outcome.
    pub outcome: CommandOutcome,
    /// For `Diff` and `Refresh`, the drift found.
    pub drift: Vec<DriftEntry>,
    /// For `Diff`, every resource whose live state differs from the bundle.
    pub diffs: Vec<ResourceDiff>,
}

/// Why a session ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GoodbyeReason {
    /// No protocol version in common.
    UnsupportedVersion {
        /// What the agent offered.
        offered: Vec<ProtocolVersion>,
        /// What the hub speaks.
        supported: Vec<ProtocolVersion>,
    },
    /// Registration was refused (bad or used token).
    RegistrationRefused,
    /// The cluster was removed and its certificate revoked.
    Revoked,
    /// The peer sent something the protocol does not allow at this point.
    ProtocolViolation,
    /// Nothing was heard from the peer for too long.
    HeartbeatTimeout,
    /// The sender is shutting down.
    Shutdown,
}

/// Ends a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    /// Why, for the peer to branch on.
    pub reason: GoodbyeReason,
    /// The same for a person to read.
    pub message: String,
}

/// Asks for a new client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renew {
    /// The Ed25519 public key of the agent's fresh key pair.
    pub public_key: [u8; 32],
}

/// A renewed client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewed {
    /// The new client certificate, DER-encoded.
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
}

/// A renewal the hub could not grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalRefused {
    /// Why, for a person to read.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_a_common_version() {
        assert_eq!(negotiate(&[7, 1]), Some(1));
        assert_eq!(negotiate(&[2, 3]), None);
        assert_eq!(negotiate(&[]), None);
    }

    #[test]
    fn bundles_and_statuses_have_their_own_channels() {
        let ack = Message::StatusAck(StatusAck { sequence: 1 });
        assert_eq!(Channel::of(&ack), Channel::Control);
    }
}
