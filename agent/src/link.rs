//! The agent's end of the link: dials the hub over QUIC (ALPN `flotilla/1`,
//! rustls with ring), registers once with its bootstrap token, then keeps one
//! mutual-TLS connection up, driving an [`AgentSession`].
//!
//! The hub is trusted by the SHA-256 of its CA certificate, pinned at install
//! time; the hub sends its CA along with its server certificate, and
//! [`PinnedCa`] checks the server certificate against the CA whose fingerprint
//! matches. Every bundle is verified, checked against its AppProject's rules,
//! flushed to the agent's store, handed to the [`Applier`], and only then
//! acknowledged. Bundles are applied one after another on a task of their own,
//! and commands each on theirs, so a long sync never stalls heartbeats; their
//! outcomes, like the statuses the applier reports on its own, come back to the
//! connection loop. Status reports wait in the store's outbox until the hub
//! acknowledges them, and go again, in order, after an outage. Lost connections are retried with jittered exponential backoff.
//!
//! By concern: `tls` pins the hub's CA and builds the QUIC client; `registration`
//! trades the bootstrap token for an identity; `connection` runs one
//! connection's loop (streams in, transmits out, timers); `events` acts on what
//! the session raises (bundles, acks, commands, key sets); `renewal` makes and
//! keeps renewed certificates. Protocol decisions (when to renew, holding
//! bundles that beat the Welcome) are the [`AgentSession`]'s.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_common::bundle::{Bundle, Envelope};
use flotilla_common::frame::Limits;
use flotilla_common::message::{
    Applied, BundleOutcome, Command, CommandOutcome, CommandResult, Status,
};
use flotilla_common::model::{ClusterFacts, Health, SyncStatus};
use flotilla_common::protocol::{AgentSession, Timing};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::backoff::random_unit;
use crate::identity;
use crate::journal::{self as store, Store};

mod connection;
mod events;
mod registration;
mod renewal;
mod tls;

pub use crate::backoff::Backoff;
pub use flotilla_common::protocol::ALPN;
pub use tls::{PinnedCa, client_config, client_endpoint};

/// The DNS name in the hub's server certificate.
pub const HUB_SERVER_NAME: &str = "flotilla-hub";

/// Errors that stop the agent; anything else is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hub refused the registration (bad, used or expired token, or the
    /// cluster is registered under another name). Retrying cannot help.
    #[error("the hub refused registration: {0}")]
    RegistrationRefused(String),
    /// The agent has no identity and no token to register with.
    #[error("the agent is not registered and has no bootstrap token (--token)")]
    NoToken,
    /// The hub removed this cluster.
    #[error("the hub revoked this cluster: {0}")]
    Revoked(String),
    /// The identity could not be made, read or written.
    #[error(transparent)]
    Identity(#[from] identity::Error),
    /// The agent's store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The TLS configuration was refused.
    #[error("failed to configure TLS for the link")]
    Tls(#[from] rustls::Error),
    /// quinn refused the TLS configuration.
    #[error("failed to configure QUIC for the link")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The local UDP socket could not be bound.
    #[error("failed to bind a local udp socket")]
    Bind(#[source] std::io::Error),
    /// The idle timeout does not fit QUIC's encoding.
    #[error("idle timeout {0:?} is out of range")]
    IdleTimeout(Duration),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why one connection attempt ended; always retried.
#[derive(Debug, thiserror::Error)]
enum Attempt {
    #[error("failed to connect to the hub: {0}")]
    Connect(String),
    #[error("the connection to the hub ended: {0}")]
    Ended(String),
    #[error(transparent)]
    Fatal(#[from] Error),
}

/// What applying a verified bundle came to: the outcome to acknowledge and the
/// status to report.
#[derive(Clone, Debug)]
pub struct ApplyReport {
    /// What to tell the hub in the acknowledgement.
    pub outcome: BundleOutcome,
    /// The app's state afterwards; its sequence is set by the link.
    pub status: Option<Status>,
}

/// What running a command came to: the result for the hub, and the app's status
/// afterwards (with the operation a sync ran), if it changed.
#[derive(Clone, Debug)]
pub struct CommandReport {
    /// The command's result.
    pub result: CommandResult,
    /// A status to report; its sequence is set by the link.
    pub status: Option<Status>,
}

/// Where applying a bundle plugs in: the apply engine implements this. The link
/// calls it only with bundles that verified, that their AppProject permits, and
/// that are flushed to the store.
pub trait Applier: Send + Sync + 'static {
    /// Applies `bundle` to the cluster.
    fn apply(&self, bundle: &Bundle) -> impl Future<Output = ApplyReport> + Send;

    /// The cluster's facts as they are now, read for every connection so the hub
    /// learns of kinds installed and upgrades made since registration; `None`
    /// when this applier does not read them (or reading failed).
    fn facts(&self) -> impl Future<Output = Option<ClusterFacts>> + Send {
        async { None }
    }

    /// Whether this applier may apply `bundle` at all (an agent limited to some
    /// namespaces refuses one that reaches outside them), asked before the bundle
    /// is stored: a refused bundle never becomes the app's latest.
    fn admits(&self, bundle: &Bundle) -> Result<(), String> {
        let _ = bundle;
        Ok(())
    }

    /// Called once when the agent starts, with the last bundle of every app it
    /// holds, so the engine can watch them again without re-applying.
    fn resume(&self, bundles: Vec<Bundle>) -> impl Future<Output = ()> + Send {
        drop(bundles);
        async {}
    }

    /// Runs a command from the hub. The link runs it on its own task, so a long
    /// sync does not hold up heartbeats, bundles or other commands.
    fn command(&self, command: Command) -> impl Future<Output = CommandReport> + Send + 'static {
        std::future::ready(CommandReport {
            result: CommandResult {
                request_id: command.request_id,
                outcome: CommandOutcome::Failed {
                    message: "this agent runs no commands".to_owned(),
                },
                drift: Vec::new(),
                diffs: Vec::new(),
            },
            status: None,
        })
    }

    /// Status reports the applier makes on its own (drift, health, self-heal);
    /// the link asks once and sends each one through the outbox.
    fn reports(&self) -> Option<mpsc::UnboundedReceiver<Status>> {
        None
    }
}

/// The stand-in until the apply engine lands: applies nothing, acknowledges every
/// bundle as applied and reports the app Synced and Healthy.
#[derive(Clone, Copy, Debug, Default)]
pub struct AckOnly;

impl Applier for AckOnly {
    async fn apply(&self, bundle: &Bundle) -> ApplyReport {
        ApplyReport {
            outcome: BundleOutcome::Applied,
            status: Some(Status {
                sequence: 0,
                app: bundle.app.clone(),
                generation: bundle.generation,
                sync: SyncStatus::Synced,
                health: Health::Healthy,
                resources: Vec::new(),
                drift: Vec::new(),
                events: Vec::new(),
                operation: None,
            }),
        }
    }
}

/// How the agent reaches its hub.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The hub's QUIC address.
    pub hub: SocketAddr,
    /// The pinned CA fingerprint, lowercase hex SHA-256.
    pub ca_fingerprint: String,
    /// The cluster name the agent was installed for.
    pub cluster: String,
    /// The bootstrap token, needed only until the agent has registered.
    pub token: Option<String>,
    /// What to tell the hub about the cluster when registering.
    pub facts: ClusterFacts,
    /// The state directory: identity and store.
    pub state_dir: PathBuf,
    /// QUIC keep-alive; 15 s.
    pub keep_alive: Duration,
    /// QUIC idle timeout and heartbeat silence limit; 60 s.
    pub idle_timeout: Duration,
    /// The first reconnect delay.
    pub backoff_initial: Duration,
    /// The longest reconnect delay; 30 s.
    pub backoff_max: Duration,
    /// Frame size limits.
    pub limits: Limits,
}

impl AgentConfig {
    /// The defaults for the given hub and cluster.
    pub fn new(
        hub: SocketAddr,
        ca_fingerprint: String,
        cluster: String,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            hub,
            ca_fingerprint,
            cluster,
            token: None,
            facts: ClusterFacts::default(),
            state_dir,
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            limits: Limits::default(),
        }
    }
}

/// What the agent's link is doing, for tests and health checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Whether a session with the hub is established.
    pub connected: bool,
    /// Sessions established so far.
    pub sessions: u64,
    /// Bundle messages received (verified or not).
    pub bundles_received: u64,
    /// Bundles refused.
    pub bundles_rejected: u64,
    /// The last applied bundle per app.
    pub applied: Vec<Applied>,
    /// Status reports waiting for the hub's acknowledgement.
    pub outbox: usize,
    /// Client certificates renewed and persisted since the agent started.
    pub renewals: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

/// One agent: its configuration, store, applier and published state.
pub struct Agent<A: Applier> {
    config: AgentConfig,
    keeper: identity::Keeper,
    store: Store,
    applier: Arc<A>,
    endpoint: quinn::Endpoint,
    state: watch::Sender<LinkState>,
    /// Verified, stored bundles waiting for the applier, in the order they came.
    queue: mpsc::UnboundedSender<Queued>,
    queued: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
    /// Applied bundles, from the apply task back to the connection loop.
    applied_tx: mpsc::UnboundedSender<(Queued, ApplyReport)>,
    applied_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(Queued, ApplyReport)>>,
    /// Statuses the applier reports on its own.
    reports: tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<Status>>>,
    /// Finished commands, from their tasks back to the connection loop.
    finished: mpsc::UnboundedSender<CommandReport>,
    finished_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<CommandReport>>,
}

impl<A: Applier> std::fmt::Debug for Agent<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("cluster", &self.config.cluster)
            .finish_non_exhaustive()
    }
}

impl<A: Applier> Agent<A> {
    /// An agent with its journal opened from `config.state_dir/db`.
    pub fn new(config: AgentConfig, applier: A) -> Result<Self> {
        let store = Store::open(&config.state_dir.join("db"))?;
        Self::with_store(config, store, applier)
    }

    /// An agent over a journal already open in the agent's one database (see
    /// [`crate::store::open_database`]), which the engine's inventory shares.
    pub fn with_store(config: AgentConfig, store: Store, applier: A) -> Result<Self> {
        let endpoint = client_endpoint(config.hub)?;
        Ok(Self::with_parts(config, store, applier, endpoint))
    }

    /// An agent over an already open store and endpoint (load tests share one
    /// endpoint among many agents).
    pub fn with_parts(
        config: AgentConfig,
        store: Store,
        applier: A,
        endpoint: quinn::Endpoint,
    ) -> Self {
        let (state, _) = watch::channel(LinkState::default());
        let (finished, finished_rx) = mpsc::unbounded_channel();
        let (queue, queued) = mpsc::unbounded_channel();
        let (applied_tx, applied_rx) = mpsc::unbounded_channel();
        Self {
            keeper: identity::Keeper::Dir(config.state_dir.clone()),
            config,
            store,
            reports: tokio::sync::Mutex::new(applier.reports()),
            applier: Arc::new(applier),
            endpoint,
            state,
            queue,
            queued: std::sync::Mutex::new(Some(queued)),
            applied_tx,
            applied_rx: tokio::sync::Mutex::new(applied_rx),
            finished,
            finished_rx: tokio::sync::Mutex::new(finished_rx),
        }
    }

    /// Keeps the identity somewhere other than the state directory, such as a
    /// Secret in the agent's cluster.
    #[must_use]
    pub fn with_keeper(mut self, keeper: identity::Keeper) -> Self {
        self.keeper = keeper;
        self
    }

    /// Watches what the link is doing.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    /// Registers if needed, then stays connected until `stop` turns true or a
    /// fatal error (refused registration, revocation).
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let span = info_span!("agent", cluster = %self.config.cluster);
        async move {
            let mut identity = self.keeper.load().await?;
            let timing = Timing {
                heartbeat_interval: self.config.keep_alive,
                silence_limit: self.config.idle_timeout,
            };
            let mut session =
                AgentSession::new(timing, self.store.applied()?, self.store.outbox()?);
            session.resume_status_sequence(self.store.next_status_sequence()?);
            self.applier.resume(self.held_bundles()?).await;
            let _applying = self.start_applying();
            self.state.send_modify(|s| {
                s.applied = session.applied();
                s.outbox = self.store.outbox().map(|o| o.len()).unwrap_or(0);
            });
            let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
            loop {
                if *stop.borrow() {
                    return Ok(());
                }
                let attempt = match identity.as_mut() {
                    Some(id) => self.serve(id, &mut session, &mut backoff, &mut stop).await,
                    None => self.register().await.map(|new| {
                        info!("registered with the hub");
                        identity = Some(new);
                        backoff.reset();
                    }),
                };
                match attempt {
                    Ok(()) => {
                        if identity.is_some() && *stop.borrow() {
                            return Ok(());
                        }
                        if identity.is_some() && !self.state.borrow().connected {
                            // A registration just finished: connect at once.
                            continue;
                        }
                    }
                    Err(Attempt::Fatal(e)) => return Err(e),
                    Err(e) => {
                        debug!(error = %e, "link attempt failed");
                        self.state.send_modify(|s| {
                            s.connected = false;
                            s.last_error = Some(e.to_string());
                        });
                    }
                }
                let delay = backoff.next_delay(random_unit());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut stop) => return Ok(()),
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Starts the task that applies queued bundles in order; it stops when the
    /// returned guard is dropped.
    fn start_applying(&self) -> Option<AbortOnDrop> {
        let mut queued = match self.queued.lock() {
            Ok(mut queued) => queued.take()?,
            Err(poisoned) => poisoned.into_inner().take()?,
        };
        let applier = self.applier.clone();
        let applied = self.applied_tx.clone();
        let task = tokio::spawn(
            async move {
                while let Some(next) = queued.recv().await {
                    let report = applier.apply(&next.bundle).await;
                    if applied.send((next, report)).is_err() {
                        return;
                    }
                }
            }
            .in_current_span(),
        );
        Some(AbortOnDrop(task))
    }

    /// The last bundle of every app in the store; one that no longer decodes is
    /// skipped with a warning, and its app stays unwatched until a newer bundle.
    fn held_bundles(&self) -> Result<Vec<Bundle>> {
        let mut bundles = Vec::new();
        for applied in self.store.applied()? {
            let Some(bytes) = self.store.bundle(&applied.app)? else {
                continue;
            };
            match Envelope::decode(&bytes).and_then(|e| Bundle::decode(&e.payload)) {
                Ok(bundle) => bundles.push(bundle),
                Err(e) => warn!(app = %applied.app, error = %e, "a stored bundle does not decode"),
            }
        }
        Ok(bundles)
    }
}

/// A verified, stored bundle waiting for the applier.
struct Queued {
    bundle: Bundle,
    generation: u64,
    digest: flotilla_common::bundle::Digest,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
