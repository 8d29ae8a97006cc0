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

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use flotilla_common::bundle::{Bundle, Envelope};
use flotilla_common::frame::{self, FrameDecoder, Limits};
use flotilla_common::message::{
    Applied, BundleOutcome, Channel, Command, CommandOutcome, CommandResult, GoodbyeReason,
    Message, Register, Rejection, Status,
};
use flotilla_common::model::{ClusterFacts, Health, SyncStatus, Timestamp};
use flotilla_common::protocol::{AgentEvent, AgentSession, Timing};
use flotilla_common::signing::{self, Expectation};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::identity::{self, Identity};
use crate::journal::{self as store, Store};

pub use flotilla_common::protocol::ALPN;

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

pub use crate::backoff::Backoff;
use crate::backoff::random_unit;

/// Trusts a server certificate only if it chains to the CA whose SHA-256 is
/// pinned; the hub sends that CA in its chain.
#[derive(Debug)]
pub struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedCa {
    /// Pins `fingerprint` (lowercase hex SHA-256 of the CA's DER).
    pub fn new(fingerprint: &str) -> Self {
        Self {
            fingerprint: fingerprint.to_ascii_lowercase().replace(':', ""),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| hex(&Sha256::digest(cert.as_ref())) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the hub's certificate chain has no CA with the pinned fingerprint".to_owned(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("building the pinned verifier: {e}")))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

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

/// Input to the connection loop.
enum Input {
    Message(Message),
    BadFrame(String),
    StreamEnded,
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
    /// An agent with its store opened from `config.state_dir`.
    pub fn new(config: AgentConfig, applier: A) -> Result<Self> {
        let store = Store::open(&config.state_dir.join("db"))?;
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

    /// Numbers a status, puts it in the outbox and queues it for the hub.
    async fn report(
        &self,
        session: &mut AgentSession,
        mut status: Status,
    ) -> std::result::Result<(), Attempt> {
        status.sequence = session.next_status_sequence();
        self.store.push_outbox(&status).await.map_err(Error::from)?;
        session.report_status(status);
        let outbox = session.unacknowledged().count();
        self.state.send_modify(|s| s.outbox = outbox);
        Ok(())
    }

    async fn connect(
        &self,
        config: quinn::ClientConfig,
    ) -> std::result::Result<quinn::Connection, Attempt> {
        let connecting = self
            .endpoint
            .connect_with(config, self.config.hub, HUB_SERVER_NAME)
            .map_err(|e| Attempt::Connect(e.to_string()))?;
        connecting
            .await
            .map_err(|e| Attempt::Connect(e.to_string()))
    }

    async fn register(&self) -> std::result::Result<Identity, Attempt> {
        let token = self.config.token.clone().ok_or(Error::NoToken)?;
        let key = identity::new_key().map_err(Error::from)?;
        let config = client_config(
            &self.config.ca_fingerprint,
            None,
            self.config.keep_alive,
            self.config.idle_timeout,
        )?;
        let connection = self.connect(config).await?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| Attempt::Ended(e.to_string()))?;
        let mut session = AgentSession::new(Timing::default(), Vec::new(), Vec::new());
        session.handle_connected_to_register(
            Instant::now(),
            Register {
                token,
                public_key: key.public_key,
                facts: self.config.facts.clone(),
            },
        );
        while let Some(transmit) = session.poll_transmit() {
            let bytes = transmit
                .encode(&self.config.limits)
                .map_err(|e| Attempt::Ended(e.to_string()))?;
            send.write_all(&bytes)
                .await
                .map_err(|e| Attempt::Ended(e.to_string()))?;
        }
        let mut decoder = FrameDecoder::new(Channel::Control, &self.config.limits);
        let mut buf = vec![0u8; 16 * 1024];
        let outcome = loop {
            let n = match recv.read(&mut buf).await {
                Ok(Some(n)) => n,
                Ok(None) => {
                    break Err(Attempt::Ended("the hub closed the registration".to_owned()));
                }
                Err(e) => break Err(Attempt::Ended(e.to_string())),
            };
            let mut input = buf.get(..n).unwrap_or_default();
            let message = match decoder.decode_next(&mut input) {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                Err(e) => break Err(Attempt::Ended(e.to_string())),
            };
            let _ = session.handle_message(Instant::now(), message);
            match session.poll_event() {
                Some(AgentEvent::Registered(registered)) => {
                    let identity = Identity {
                        cluster: self.config.cluster.clone(),
                        ca_fingerprint: self.config.ca_fingerprint.clone(),
                        key_pkcs8: key.pkcs8,
                        certificate: registered.certificate,
                        key_set: registered.key_set,
                    };
                    self.keeper.save(&identity).await.map_err(Error::from)?;
                    break Ok(identity);
                }
                Some(AgentEvent::Goodbye(goodbye)) => {
                    break Err(Attempt::Fatal(Error::RegistrationRefused(goodbye.message)));
                }
                _ => {}
            }
        };
        connection.close(0u32.into(), b"registered");
        outcome
    }

    async fn serve(
        &self,
        identity: &mut Identity,
        session: &mut AgentSession,
        backoff: &mut Backoff,
        stop: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Attempt> {
        let config = client_config(
            &identity.ca_fingerprint,
            Some((&identity.certificate, &identity.key_pkcs8)),
            self.config.keep_alive,
            self.config.idle_timeout,
        )?;
        let connection = self.connect(config).await?;
        let (mut control, recv) = connection
            .open_bi()
            .await
            .map_err(|e| stream_failed(&connection, e))?;
        let limits = self.config.limits;
        let (tx, mut inputs) = mpsc::channel(64);
        let reader = tokio::spawn(control_reader(recv, limits, tx.clone()));
        let bundles = tokio::spawn(bundle_reader(connection.clone(), limits, tx));
        session.handle_connected(Instant::now());
        let result = self
            .drive(
                identity,
                session,
                backoff,
                stop,
                &connection,
                &mut control,
                &mut inputs,
            )
            .await;
        reader.abort();
        bundles.abort();
        session.handle_disconnected(Instant::now());
        let _ = control.finish();
        connection.close(0u32.into(), b"agent closing");
        self.state.send_modify(|s| s.connected = false);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        identity: &mut Identity,
        session: &mut AgentSession,
        backoff: &mut Backoff,
        stop: &mut watch::Receiver<bool>,
        connection: &quinn::Connection,
        control: &mut quinn::SendStream,
        inputs: &mut mpsc::Receiver<Input>,
    ) -> std::result::Result<(), Attempt> {
        let limits = self.config.limits;
        let ended = |e: &dyn std::fmt::Display| stream_failed(connection, e);
        let mut early: Vec<Message> = Vec::new();
        let mut reports = self.reports.lock().await;
        let mut finished = self.finished_rx.lock().await;
        let mut applied = self.applied_rx.lock().await;
        let mut renewal = Renewal::Due(renewal_at(identity));
        // The cluster's facts, read once the session is up and sent when read.
        let (facts_tx, mut facts_rx) = mpsc::channel(1);
        let mut facts_task: Option<AbortOnDrop> = None;
        loop {
            if facts_task.is_none() && session.version().is_some() {
                let applier = self.applier.clone();
                let facts_tx = facts_tx.clone();
                facts_task = Some(AbortOnDrop(tokio::spawn(
                    async move {
                        if let Some(facts) = applier.facts().await {
                            let _ = facts_tx.send(facts).await;
                        }
                    }
                    .in_current_span(),
                )));
            }
            while let Some(transmit) = session.poll_transmit() {
                let bytes = transmit.encode(&limits).map_err(|e| ended(&e))?;
                match transmit.channel {
                    Channel::Status => {
                        // Opened in order, so the hub reads them in order.
                        let mut stream = connection.open_uni().await.map_err(|e| ended(&e))?;
                        stream.write_all(&bytes).await.map_err(|e| ended(&e))?;
                        stream.finish().map_err(|e| ended(&e))?;
                    }
                    _ => control.write_all(&bytes).await.map_err(|e| ended(&e))?,
                }
            }
            let mut handled = false;
            while let Some(event) = session.poll_event() {
                handled = true;
                self.handle_event(identity, session, backoff, &mut renewal, event)
                    .await?;
            }
            if handled {
                continue;
            }
            let deadline = session
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let renew_at = match &renewal {
                Renewal::Due(at) if session.version().is_some() => Some(*at),
                _ => None,
            };
            tokio::select! {
                _ = sleep_until_some(renew_at) => {
                    renewal = match identity::new_key() {
                        Ok(key) => match session.request_renewal(key.public_key) {
                            Ok(()) => {
                                info!("asking the hub to renew the client certificate");
                                Renewal::Asked(key)
                            }
                            Err(_) => Renewal::Due(Instant::now() + renewal_retry(identity)),
                        },
                        Err(e) => {
                            warn!(error = %e, "making a key pair for renewal failed");
                            Renewal::Due(Instant::now() + renewal_retry(identity))
                        }
                    };
                }
                input = inputs.recv() => match input {
                    Some(Input::Message(message)) => {
                        // Bundle streams and the control stream race: a bundle can
                        // arrive before the Welcome sent ahead of it. Hold it until
                        // the session is established.
                        if matches!(message, Message::Bundle(_)) && session.version().is_none() {
                            if early.len() >= 64 {
                                return Err(Attempt::Ended("bundles before welcome".to_owned()));
                            }
                            early.push(message);
                            continue;
                        }
                        let welcome = matches!(message, Message::Welcome(_));
                        if let Err(e) = session.handle_message(Instant::now(), message) {
                            warn!(error = %e, "the hub broke the protocol");
                        }
                        if welcome && session.version().is_some() {
                            for message in early.drain(..) {
                                let _ = session.handle_message(Instant::now(), message);
                            }
                        }
                    }
                    Some(Input::BadFrame(e)) => return Err(Attempt::Ended(e)),
                    Some(Input::StreamEnded) | None => {
                        // Let the close reason arrive if the hub is closing.
                        let reason = tokio::time::timeout(Duration::from_secs(1), connection.closed()).await;
                        return Err(match reason {
                            Ok(reason) => connection_ended(reason),
                            Err(_) => Attempt::Ended("the hub ended the control stream".to_owned()),
                        });
                    }
                },
                status = next_report(&mut reports) => self.report(session, status).await?,
                Some(facts) = facts_rx.recv() => {
                    if let Err(e) = session.report_facts(facts) {
                        warn!(error = %e, "the cluster's facts could not be sent");
                    }
                }
                Some((done, report)) = applied.recv() => self.bundle_applied(session, done, report).await?,
                Some(done) = finished.recv() => {
                    if let Some(status) = done.status {
                        self.report(session, status).await?;
                    }
                    let id = done.result.request_id;
                    if let Err(e) = session.command_result(done.result) {
                        warn!(request_id = id, error = %e, "the result of a command could not be sent");
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(Instant::now()),
                reason = connection.closed() => return Err(connection_ended(reason)),
                _ = stopped(stop) => {
                    session.close(GoodbyeReason::Shutdown, "agent stopping");
                    while let Some(transmit) = session.poll_transmit() {
                        if let Ok(bytes) = transmit.encode(&limits) {
                            let _ = control.write_all(&bytes).await;
                        }
                    }
                    return Ok(());
                }
            }
        }
    }

    async fn handle_event(
        &self,
        identity: &mut Identity,
        session: &mut AgentSession,
        backoff: &mut Backoff,
        renewal: &mut Renewal,
        event: AgentEvent,
    ) -> std::result::Result<(), Attempt> {
        match event {
            AgentEvent::Established { .. } => {
                backoff.reset();
                info!("connected to the hub");
                self.state.send_modify(|s| {
                    s.connected = true;
                    s.sessions += 1;
                    s.last_error = None;
                });
            }
            AgentEvent::Bundle(envelope) => self.handle_bundle(identity, session, envelope).await?,
            AgentEvent::StatusAcked { sequence } => {
                self.store
                    .remove_outbox(sequence)
                    .await
                    .map_err(Error::from)?;
                self.state
                    .send_modify(|s| s.outbox = s.outbox.saturating_sub(1));
            }
            AgentEvent::Command(command) => {
                info!(request_id = command.request_id, app = %command.app, "command received");
                let running = self.applier.command(command);
                let finished = self.finished.clone();
                tokio::spawn(
                    async move {
                        let _ = finished.send(running.await);
                    }
                    .in_current_span(),
                );
            }
            AgentEvent::KeySetUpdate(update) => match identity.key_set.apply_update(&update) {
                Ok(key_set) => {
                    let mut updated = identity.clone();
                    updated.key_set = key_set;
                    self.keeper.save(&updated).await.map_err(Error::from)?;
                    *identity = updated;
                    // The new set is used from the next connection on.
                    return Err(Attempt::Ended("key set updated".to_owned()));
                }
                Err(e) => warn!(error = %e, "refused a key set update"),
            },
            AgentEvent::Goodbye(goodbye) => {
                return Err(match goodbye.reason {
                    GoodbyeReason::Revoked => Attempt::Fatal(Error::Revoked(goodbye.message)),
                    _ => Attempt::Ended(format!("hub said goodbye: {}", goodbye.message)),
                });
            }
            AgentEvent::PeerSilent => return Err(Attempt::Ended("the hub went silent".to_owned())),
            AgentEvent::Renewed(renewed) => {
                let Renewal::Asked(key) = std::mem::replace(
                    renewal,
                    Renewal::Due(Instant::now() + renewal_retry(identity)),
                ) else {
                    warn!("the hub sent a certificate that was not asked for; ignored");
                    return Ok(());
                };
                let renewed = Identity {
                    key_pkcs8: key.pkcs8,
                    certificate: renewed.certificate,
                    ..identity.clone()
                };
                if let Err(e) = identity::check_certificate(&renewed, &key.public_key) {
                    warn!(error = %e, "refused the renewed certificate; keeping the current one");
                    return Ok(());
                }
                // Persisted before use: the hub keeps the current certificate
                // accepted until the new one is first used, so a failed write only
                // means asking again.
                if let Err(e) = self.keeper.save(&renewed).await {
                    warn!(error = %e, "storing the renewed identity failed; keeping the current one");
                    return Ok(());
                }
                *identity = renewed;
                *renewal = Renewal::Due(renewal_at(identity));
                info!("client certificate renewed; the next connection uses it");
                self.state.send_modify(|s| s.renewals += 1);
            }
            AgentEvent::RenewalRefused(refused) => {
                warn!(reason = %refused.reason, "the hub did not renew the client certificate");
                *renewal = Renewal::Due(Instant::now() + renewal_retry(identity));
            }
            AgentEvent::Registered(_) => {}
        }
        Ok(())
    }

    async fn handle_bundle(
        &self,
        identity: &Identity,
        session: &mut AgentSession,
        envelope: Envelope,
    ) -> std::result::Result<(), Attempt> {
        self.state.send_modify(|s| s.bundles_received += 1);
        let applied = session.applied();
        let expect = Expectation {
            cluster: &identity.cluster,
            now: Timestamp::from_system_time(SystemTime::now()),
        };
        // Newer than what was applied and than what is stored and still queued: a
        // bundle sent before another may arrive after it, on a stream of its own.
        let mut stored = Ok(None);
        let verified = signing::verify(&envelope, &identity.key_set, expect, |app| {
            stored = self.store.generation(app);
            let applied = applied.iter().find(|a| &a.app == app).map(|a| a.generation);
            applied.max(stored.as_ref().ok().copied().flatten())
        });
        stored.map_err(Error::from)?;
        let bundle = match verified {
            Ok(bundle) => bundle,
            Err(e) => {
                warn!(generation = envelope.generation, error = %e, "refused a bundle");
                self.state.send_modify(|s| s.bundles_rejected += 1);
                session.bundle_outcome(
                    None,
                    envelope.generation,
                    envelope.digest,
                    BundleOutcome::Rejected(Rejection::from(&e)),
                );
                return Ok(());
            }
        };
        // The hub checked the app's AppProject when it rendered the bundle; check
        // again here, and where this agent may act, before anything is stored or
        // applied.
        let permitted = bundle
            .permitted()
            .map_err(|violation| violation.to_string())
            .and_then(|()| self.applier.admits(&bundle));
        if let Err(violation) = permitted {
            warn!(app = %bundle.app, generation = envelope.generation, %violation, "refused a bundle its project or this agent's reach does not permit");
            self.state.send_modify(|s| s.bundles_rejected += 1);
            session.bundle_outcome(
                Some(bundle.app.clone()),
                envelope.generation,
                envelope.digest,
                BundleOutcome::Rejected(Rejection::NotPermitted {
                    message: violation.to_string(),
                }),
            );
            return Ok(());
        }
        let record = Applied {
            app: bundle.app.clone(),
            generation: envelope.generation,
            digest: envelope.digest,
        };
        let bytes = envelope
            .encode()
            .map_err(|e| Attempt::Ended(format!("re-encoding a verified bundle: {e}")))?;
        self.store
            .put_bundle(&record, &bytes)
            .await
            .map_err(Error::from)?;
        let queued = Queued {
            bundle,
            generation: envelope.generation,
            digest: envelope.digest,
        };
        if self.queue.send(queued).is_err() {
            return Err(Attempt::Ended("the apply task is gone".to_owned()));
        }
        Ok(())
    }

    /// Acknowledges a bundle the applier is done with, and reports its status.
    async fn bundle_applied(
        &self,
        session: &mut AgentSession,
        done: Queued,
        report: ApplyReport,
    ) -> std::result::Result<(), Attempt> {
        info!(app = %done.bundle.app.name, generation = done.generation, outcome = ?report.outcome, "bundle applied");
        session.bundle_outcome(
            Some(done.bundle.app.clone()),
            done.generation,
            done.digest,
            report.outcome,
        );
        if let Some(status) = report.status {
            self.report(session, status).await?;
        }
        let applied = session.applied();
        let outbox = session.unacknowledged().count();
        self.state.send_modify(|s| {
            s.applied = applied;
            s.outbox = outbox;
        });
        Ok(())
    }
}

/// Where renewing the client certificate stands on one connection.
enum Renewal {
    /// Ask the hub at this moment (at once if it has passed).
    Due(Instant),
    /// Asked; the fresh key pair waits for its certificate.
    Asked(identity::NewKey),
}

/// When to ask for a renewal of `identity`'s certificate, as an `Instant`: two
/// thirds into its life, or now if that has passed. A certificate that cannot be
/// read is not renewed (the hub issued it; it will refuse it once it expires).
fn renewal_at(identity: &Identity) -> Instant {
    match identity.renewal_due() {
        Ok(due) => Instant::now() + due.duration_since(SystemTime::now()).unwrap_or_default(),
        Err(e) => {
            warn!(error = %e, "cannot schedule the certificate renewal");
            Instant::now() + Duration::from_secs(365 * 24 * 3600)
        }
    }
}

/// How long to wait before asking again after a renewal failed: a quarter of
/// the certificate's remaining life, between 1 s and 5 min.
fn renewal_retry(identity: &Identity) -> Duration {
    let remaining = identity
        .certificate_validity()
        .ok()
        .and_then(|(_, not_after)| not_after.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    (remaining / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What a failed stream operation means: the connection's own close reason when it
/// is closed, so that a hub revoking this cluster (which closes the connection as
/// soon as the handshake ends) is never taken for a lost connection when a write
/// on the stream fails first; otherwise the stream's error.
fn stream_failed(connection: &quinn::Connection, error: impl std::fmt::Display) -> Attempt {
    match connection.close_reason() {
        Some(reason) => connection_ended(reason),
        None => Attempt::Ended(error.to_string()),
    }
}

/// What a closed connection means: fatal if the hub revoked this cluster.
fn connection_ended(reason: quinn::ConnectionError) -> Attempt {
    match &reason {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code
                == quinn::VarInt::from_u32(flotilla_common::protocol::close_code::REVOKED) =>
        {
            Attempt::Fatal(Error::Revoked(
                String::from_utf8_lossy(&close.reason).into_owned(),
            ))
        }
        _ => Attempt::Ended(reason.to_string()),
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

/// The next status the applier reports on its own; never, if it reports none.
async fn next_report(reports: &mut Option<mpsc::UnboundedReceiver<Status>>) -> Status {
    match reports {
        Some(receiver) => match receiver.recv().await {
            Some(status) => status,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn control_reader(mut recv: quinn::RecvStream, limits: Limits, tx: mpsc::Sender<Input>) {
    // read_chunk hands over quinn's own buffers: no idle read buffer per agent.
    let mut decoder = FrameDecoder::new(Channel::Control, &limits);
    loop {
        let chunk = match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) | Err(_) => {
                let _ = tx.send(Input::StreamEnded).await;
                return;
            }
        };
        let mut input: &[u8] = &chunk.bytes;
        loop {
            match decoder.decode_next(&mut input) {
                Ok(Some(message)) => {
                    if tx.send(Input::Message(message)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx
                        .send(Input::BadFrame(format!("control stream: {e}")))
                        .await;
                    return;
                }
            }
        }
    }
}

/// Reads bundle streams in the order the hub opened them.
async fn bundle_reader(connection: quinn::Connection, limits: Limits, tx: mpsc::Sender<Input>) {
    let limit = limits.for_channel(Channel::Bundle) + frame::PREFIX_LEN;
    while let Ok(mut stream) = connection.accept_uni().await {
        let input = match stream.read_to_end(limit).await {
            Ok(bytes) => match frame::decode(&bytes, Channel::Bundle, &limits) {
                Ok(message) => Input::Message(message),
                Err(e) => Input::BadFrame(format!("bundle stream: {e}")),
            },
            Err(e) => Input::BadFrame(format!("bundle stream: {e}")),
        };
        let bad = matches!(input, Input::BadFrame(_));
        if tx.send(input).await.is_err() || bad {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay(1.0)).collect();
        assert_eq!(delays[0], Duration::from_secs(1));
        assert_eq!(delays[1], Duration::from_secs(2));
        assert_eq!(delays[7], Duration::from_secs(30));
        let low = backoff.next_delay(0.0);
        assert_eq!(low, Duration::from_secs(15));
        backoff.reset();
        assert_eq!(backoff.next_delay(1.0), Duration::from_secs(1));
    }
}
