//! The hub's end of the agent link: a QUIC endpoint (ALPN `flotilla/1`, rustls
//! with ring) that registers clusters and then talks to each agent over mutual
//! TLS, driving one [`HubSession`] per connection.
//!
//! - A connection without a client certificate may only register: one `Register`
//!   on the control stream, answered with `Registered` or a `Goodbye`, then closed.
//!   At most [`LinkConfig::max_registering`] such connections are served at once;
//!   the rest are closed at once, so a flood of them cannot crowd out agents.
//! - A connection with a client certificate is named by the certificate's SHA-256,
//!   looked up in the store during the handshake: an unknown or revoked
//!   certificate fails the handshake.
//! - Each bundle goes on its own unidirectional stream, as soon as the store holds
//!   it (a sled subscription on the `bundles` tree). Status reports arrive on
//!   unidirectional streams, read one after another so they are stored in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flotilla_common::bundle::Envelope;
use flotilla_common::frame::{self, FrameDecoder, Limits};
use flotilla_common::message::{
    BundleOutcome, Channel, Command, CommandResult, GoodbyeReason, Message, Registered,
};
use flotilla_common::model::AppRef;
use flotilla_common::protocol::{HubEvent, HubSession, Timing};
use flotilla_common::signing::{BundleSigner, KeySet};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::ca::{self, Ca};
use crate::cluster::{self, epoch_ms};
use crate::metrics::RefusedMessage;
use crate::store::{self, AckRecord, LinkRecord, StatusRecord, Store};

pub use flotilla_common::protocol::{ALPN, close_code};

/// Errors from starting and running the link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CA could not be loaded or made.
    #[error("failed to load the transport CA")]
    Ca(#[from] ca::Error),
    /// The store failed.
    #[error("link store access failed")]
    Store(#[from] store::Error),
    /// rustls refused the configuration.
    #[error("failed to configure TLS for the link")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("failed to build the client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the TLS configuration.
    #[error("failed to configure QUIC for the link")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The idle timeout does not fit QUIC's encoding.
    #[error("idle timeout {0:?} is out of range")]
    IdleTimeout(Duration),
    /// The UDP socket could not be bound.
    #[error("failed to listen for agents on udp {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The bundle key set could not be built.
    #[error("failed to build the bundle key set")]
    KeySet(#[from] flotilla_common::signing::Error),
}

/// Why a command got no result.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No agent connection of the cluster is up.
    #[error("cluster {cluster} is not connected")]
    NotConnected {
        /// The cluster.
        cluster: String,
    },
    /// The connection ended before the agent answered.
    #[error("the connection to cluster {cluster} ended before its agent answered")]
    ConnectionLost {
        /// The cluster.
        cluster: String,
    },
    /// The agent did not answer in time.
    #[error("the agent of cluster {cluster} did not answer within {after:?}")]
    Timeout {
        /// The cluster.
        cluster: String,
        /// How long the hub waited.
        after: Duration,
    },
    /// No request id could be drawn.
    #[error("failed to draw a request id")]
    Store(#[from] store::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the link runs.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// The UDP address agents dial.
    pub listen: SocketAddr,
    /// QUIC keep-alive, 15 s by default.
    pub keep_alive: Duration,
    /// QUIC idle timeout, and how long the session waits for a heartbeat; 60 s.
    pub idle_timeout: Duration,
    /// How long issued client certificates last; 30 days.
    pub cert_lifetime: Duration,
    /// Frame size limits.
    pub limits: Limits,
    /// How many connections without a certificate are served at once.
    pub max_registering: usize,
    /// How long a connection without a certificate has to register.
    pub register_timeout: Duration,
    /// Where bundle pushes and reported sync durations are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// How many TLS handshakes run at once. The rest wait in quinn's queue of
    /// incoming connections (their retransmitted packets are kept there), so
    /// thousands of agents reconnecting together do not fill tokio's run queue
    /// with handshakes and starve the task that reads the UDP socket. Only a
    /// client that proved its address (a QUIC Retry) takes a slot.
    pub max_handshakes: usize,
    /// How long one handshake may take before the hub gives up on it, so
    /// stalled handshakes cannot hold every slot.
    pub handshake_timeout: Duration,
}

impl LinkConfig {
    /// The defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            cert_lifetime: cluster::DEFAULT_CERT_LIFETIME,
            limits: Limits::default(),
            max_registering: 64,
            register_timeout: Duration::from_secs(10),
            metrics: Arc::default(),
            max_handshakes: 128,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A message to one agent's connection task.
enum ToConnection {
    /// Boxed whole: tokio allocates a channel's slots 32 at a time, up front, on
    /// every connection.
    Publish(Box<(AppRef, Envelope)>),
    Command(Command),
    /// Re-read every bundle of the cluster from the store.
    Resync,
    Revoke,
}

/// A cluster as the link sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// The cluster.
    pub cluster: String,
    /// Whether an agent connection is up.
    pub connected: bool,
    /// When the hub last heard from it, ms since the epoch.
    pub last_seen_ms: Option<u64>,
    /// The agent's version.
    pub agent_version: Option<String>,
    /// Bundles this hub process has pushed to it since it started.
    pub bundles_sent: u64,
    /// The last acknowledgement per app, keyed `project/name`.
    pub acks: std::collections::BTreeMap<String, AckRecord>,
}

impl ClusterView {
    /// The view as the API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let acks: serde_json::Map<String, serde_json::Value> = self
            .acks
            .iter()
            .map(|(app, ack)| {
                let ack = serde_json::json!({
                    "generation": ack.generation,
                    "digest": ack.digest,
                    "outcome": ack.outcome,
                    "atMs": ack.at_ms,
                });
                (app.clone(), ack)
            })
            .collect();
        serde_json::json!({
            "state": if self.connected { "Connected" } else { "Disconnected" },
            "lastSeenMs": self.last_seen_ms,
            "agentVersion": self.agent_version,
            "bundlesSentSinceStart": self.bundles_sent,
            "acks": acks,
        })
    }
}

/// The link's view of its clusters, for the API. It does not keep the link
/// alive: once the link stops it sees nothing.
#[derive(Clone)]
pub struct Views(std::sync::Weak<Shared>);

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").finish_non_exhaustive()
    }
}

impl Views {
    /// Every registered cluster's connection state; empty once the link stopped.
    pub fn clusters(&self) -> Result<Vec<ClusterView>> {
        match self.0.upgrade() {
            Some(shared) => cluster_views(&shared),
            None => Ok(Vec::new()),
        }
    }
}

struct Shared {
    store: Store,
    ca: Ca,
    key_set: KeySet,
    config: LinkConfig,
    connections: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<ToConnection>)>>,
    next_connection: std::sync::atomic::AtomicU64,
    registering: Semaphore,
    /// Agent sessions past `Hello`, for a connected count that needs no store scan.
    established: std::sync::atomic::AtomicUsize,
    /// Bundles pushed per cluster since start, to show that a reconnect resends
    /// nothing the agent already has.
    sent: Mutex<HashMap<String, u64>>,
    /// Commands sent and not answered yet, by request id.
    pending: Mutex<HashMap<u64, PendingCommand>>,
    /// Announces each cluster that registers, so apps waiting for it render now.
    registered: tokio::sync::broadcast::Sender<String>,
}

/// A command waiting for its result. Only the cluster it was sent to may answer
/// it: request ids are sequential, so any agent could guess another's.
struct PendingCommand {
    cluster: String,
    reply: oneshot::Sender<CommandResult>,
}

/// The running link.
pub struct Link {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    verifier_store: StoreSlot,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("addr", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

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

/// Status streams an agent may have open towards the hub at once.
const STATUS_STREAMS: u32 = 8;
/// Flow-control window of each stream an agent sends on.
const STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;
/// Flow-control window of everything one agent sends.
const CONNECTION_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// The QUIC server configuration: the hub's certificate and CA, TLS 1.3 only,
/// ALPN `flotilla/1`, optional client certificates checked against the store.
pub fn server_config(
    ca: &Ca,
    store: StoreSlot,
    config: &LinkConfig,
) -> Result<quinn::ServerConfig> {
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
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(config.keep_alive));
    transport.max_idle_timeout(Some(
        config
            .idle_timeout
            .try_into()
            .map_err(|_| Error::IdleTimeout(config.idle_timeout))?,
    ));
    // quinn keeps a slot per stream the peer may open, on every connection: an
    // agent opens the control stream and one stream per status report, which
    // the hub reads one at a time, so a few are plenty.
    transport.max_concurrent_uni_streams(STATUS_STREAMS.into());
    transport.max_concurrent_bidi_streams(1u32.into());
    // Bound what each agent can make the hub buffer: quinn's defaults (1.25 MB
    // per stream, no connection limit) let 10,000 agents pin gigabytes. A status
    // report bigger than the window still arrives, in more round trips.
    transport.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    transport.receive_window(CONNECTION_RECEIVE_WINDOW.into());
    // The link sends no datagrams.
    transport.datagram_receive_buffer_size(None);
    // With segmentation offload quinn sends up to ten datagrams per system call,
    // from a buffer each connection keeps at its largest size: about 13 KiB of
    // every idle connection's 47 (heaptrack, 1,000 agents). Without it the
    // buffer is one datagram; pushing a 100 KiB bundle to 10,000 agents costs
    // more system calls, and still stays under the benchmark's 30 s goal.
    transport.enable_segmentation_offload(false);
    server.transport_config(Arc::new(transport));
    Ok(server)
}

impl Link {
    /// Loads (or makes) the CA and the bundle key, binds the UDP socket, and
    /// starts accepting agents and pushing bundles.
    pub async fn start(store: Store, config: LinkConfig) -> Result<Self> {
        let ca = Ca::load_or_create(&store, SystemTime::now()).await?;
        // A hub that was killed left its clusters marked connected.
        for mut link in store.links()? {
            if link.connected {
                link.connected = false;
                store.put_link(&link).await?;
            }
        }
        // Commands sent before a restart died with that process; their
        // operations will never end by themselves.
        let stale = store
            .fail_running_operations(
                "the hub restarted while the operation ran",
                epoch_ms(SystemTime::now()),
            )
            .await?;
        if stale > 0 {
            info!(
                operations = stale,
                "marked operations cut short by a restart as failed"
            );
        }
        let signer: BundleSigner = store.bundle_signer().await?;
        let key_set = KeySet::new(1, &[signer.public_key()])?;
        let verifier_store: StoreSlot = Arc::new(Mutex::new(Some(store.clone())));
        // Agents of a hub that crashed still send on their old connections. With
        // the same keys the new process recognises those connection ids as its
        // own and answers with a stateless reset the agents trust, so they
        // reconnect at their next keep-alive instead of after the idle timeout.
        let reset_key = store.stateless_reset_key().await?;
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &reset_key,
        )));
        let cid_key = {
            use sha2::Digest as _;
            let digest = sha2::Sha256::new()
                .chain_update(b"flotilla quic connection id key")
                .chain_update(reset_key)
                .finalize();
            let mut key = [0u8; 8];
            key.copy_from_slice(&digest[..8]);
            u64::from_be_bytes(key)
        };
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let bind = |source| Error::Bind {
            addr: config.listen,
            source,
        };
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server_config(&ca, verifier_store.clone(), &config)?),
            bind_socket(config.listen).map_err(bind)?,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind)?;
        let shared = Arc::new(Shared {
            store: store.clone(),
            ca,
            key_set,
            registering: Semaphore::new(config.max_registering),
            config,
            connections: Mutex::new(HashMap::new()),
            next_connection: std::sync::atomic::AtomicU64::new(1),
            established: std::sync::atomic::AtomicUsize::new(0),
            sent: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            registered: tokio::sync::broadcast::channel(64).0,
        });
        let (shutdown, stop) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(endpoint.clone(), shared.clone(), stop.clone()));
        let pusher = tokio::spawn(push_new_bundles(
            shared.clone(),
            store.subscribe_bundles(),
            stop,
        ));
        info!(addr = ?endpoint.local_addr().ok(), fingerprint = %shared.ca.fingerprint(), "agent link listening");
        Ok(Self {
            endpoint,
            shared,
            verifier_store,
            shutdown,
            tasks: vec![accept, pusher],
        })
    }

    /// The UDP address agents dial.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The CA fingerprint agents pin.
    pub fn ca_fingerprint(&self) -> String {
        self.shared.ca.fingerprint()
    }

    /// Removes a cluster and revokes its certificate at once: its open connection
    /// is closed and its next handshake fails.
    pub async fn remove_cluster(&self, name: &str) -> Result<bool> {
        let found = self.shared.store.remove_cluster(name).await?;
        if let Some((_, conn)) = lock(&self.shared.connections).get(name) {
            let _ = conn.send(ToConnection::Revoke);
        }
        Ok(found)
    }

    /// How many agents have an established session now. Unlike [`Link::clusters`]
    /// it reads no store, so it is cheap to poll with 10,000 agents.
    pub fn connected_count(&self) -> usize {
        self.shared
            .established
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every registered cluster's connection state.
    pub fn clusters(&self) -> Result<Vec<ClusterView>> {
        cluster_views(&self.shared)
    }

    /// The name of each cluster that registers from now on.
    pub fn registrations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.shared.registered.subscribe()
    }

    /// A handle on [`Link::clusters`] for the API.
    pub fn views(&self) -> Views {
        Views(Arc::downgrade(&self.shared))
    }

    /// A fresh request id for a [`Command`], unique across hub restarts.
    pub fn new_request_id(&self) -> Result<u64, CommandError> {
        Ok(self.shared.store.next_id()?)
    }

    /// Whether an agent connection of `cluster` is up.
    pub fn is_connected(&self, cluster: &str) -> bool {
        lock(&self.shared.connections).contains_key(cluster)
    }

    /// Sends `command` to the agent of `cluster` and waits up to `timeout` for its
    /// result.
    pub async fn command(
        &self,
        cluster: &str,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResult, CommandError> {
        let request_id = command.request_id;
        let span = info_span!("command", cluster = %cluster, app = %command.app, request_id);
        let (tx, rx) = oneshot::channel();
        {
            let connections = lock(&self.shared.connections);
            let Some((_, conn)) = connections.get(cluster) else {
                return Err(CommandError::NotConnected {
                    cluster: cluster.to_owned(),
                });
            };
            lock(&self.shared.pending).insert(
                request_id,
                PendingCommand {
                    cluster: cluster.to_owned(),
                    reply: tx,
                },
            );
            if conn.send(ToConnection::Command(command)).is_err() {
                lock(&self.shared.pending).remove(&request_id);
                return Err(CommandError::NotConnected {
                    cluster: cluster.to_owned(),
                });
            }
        }
        let answer = tokio::time::timeout(timeout, rx).instrument(span).await;
        match answer {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(CommandError::ConnectionLost {
                cluster: cluster.to_owned(),
            }),
            Err(_) => {
                lock(&self.shared.pending).remove(&request_id);
                Err(CommandError::Timeout {
                    cluster: cluster.to_owned(),
                    after: timeout,
                })
            }
        }
    }

    /// Waits until the agent of `cluster` has acknowledged `generation` (or a newer
    /// one) of `app`, up to `timeout`; returns the acknowledgement's outcome, or
    /// `None` when none came in time.
    pub async fn wait_for_ack(
        &self,
        cluster: &str,
        app: &AppRef,
        generation: u64,
        timeout: Duration,
    ) -> Option<BundleOutcome> {
        let key = format!("{}/{}", app.project, app.name);
        let deadline = Instant::now() + timeout;
        loop {
            let ack = self
                .shared
                .store
                .link(cluster)
                .ok()
                .flatten()
                .and_then(|l| l.acks.get(&key).cloned())
                .filter(|a| a.generation >= generation);
            if let Some(ack) = ack {
                return Some(ack.outcome);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops a link others share (the API's handlers hold it): waits up to `grace`
    /// for requests still finishing to let go, then stops it. `false` when they
    /// did not let go in time; the link is then left to end with the process.
    pub async fn stop_shared(mut link: Arc<Link>, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        loop {
            match Arc::try_unwrap(link) {
                Ok(link) => {
                    link.stop().await;
                    return true;
                }
                Err(shared) if Instant::now() < deadline => {
                    link = shared;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => return false,
            }
        }
    }
    /// Closes every connection and stops.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        lock(&self.verifier_store).take();
        self.endpoint
            .close(close_code::SHUTDOWN.into(), b"hub shutting down");
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        self.endpoint.wait_idle().await;
        // Connection tasks hold the store; wait for them so the database can be
        // opened again at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.shared) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // An aborted task's flush runs on until it is done, with the database open.
        let _ =
            tokio::time::timeout(Duration::from_secs(10), self.shared.store.flushes_done()).await;
    }
}

fn cluster_views(shared: &Shared) -> Result<Vec<ClusterView>> {
    let links = shared.store.links()?;
    let connected = lock(&shared.connections);
    let sent = lock(&shared.sent);
    Ok(links
        .into_iter()
        .map(|link| ClusterView {
            connected: link.connected && connected.contains_key(&link.cluster),
            bundles_sent: sent.get(&link.cluster).copied().unwrap_or(0),
            cluster: link.cluster,
            last_seen_ms: link.last_seen_ms,
            agent_version: link.agent_version,
            acks: link.acks,
        })
        .collect())
}

/// Socket buffers the hub asks for. The default (about 200 KiB) holds some 150
/// datagrams: thousands of agents handshaking at once after a hub restart
/// overflow it, and every dropped Initial costs that agent a retransmission
/// timeout. The kernel caps the request at net.core.rmem_max / wmem_max.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// The hub's UDP socket, with [`SOCKET_BUFFER`]-sized buffers where the kernel
/// allows.
fn bind_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        warn!(error = %e, "could not enlarge the link's receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        warn!(error = %e, "could not enlarge the link's send buffer");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(Semaphore::new(shared.config.max_handshakes.max(1)));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(incoming) = incoming else { return };
        // A handshake slot goes only to a client that proved it receives at its
        // address: anyone else gets a stateless Retry (a small packet, no state,
        // no slot) and comes back with its token. Otherwise a few spoofed
        // Initials per second would hold every slot for the handshake timeout.
        if !incoming.remote_address_validated() {
            let remote = incoming.remote_address();
            if let Err(e) = incoming.retry() {
                debug!(%remote, "an unvalidated client could not be sent a retry");
                e.into_incoming().ignore();
            }
            continue;
        }
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => permit,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok(permit) = permit else { return };
        let shared = shared.clone();
        let mut stopping = stop.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let limit = shared.config.handshake_timeout;
            // A handshake still under way when the hub stops is dropped at once: it
            // holds the store, which `Link::stop` must release for a restart.
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(limit, incoming) => handshake,
                _ = stopping.wait_for(|s| *s) => return,
            };
            drop(permit);
            match handshake {
                Ok(Ok(connection)) => serve_connection(shared, connection).await,
                Ok(Err(e)) => debug!(%remote, error = %e, "handshake failed"),
                Err(_) => debug!(%remote, ?limit, "handshake timed out"),
            }
        });
    }
}

/// Hands each newly stored bundle to its cluster's connection, if any.
async fn push_new_bundles(
    shared: Arc<Shared>,
    mut stored: tokio::sync::broadcast::Receiver<store::BundleStored>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            event = stored.recv() => event,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stored = match event {
            Ok(stored) => stored,
            Err(RecvError::Lagged(missed)) => {
                // Too many at once: every connection looks at the store again.
                warn!(missed, "bundle notifications lagged; resyncing every agent");
                for (_, conn) in lock(&shared.connections).values() {
                    let _ = conn.send(ToConnection::Resync);
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let connection = lock(&shared.connections)
            .get(&stored.cluster)
            .map(|(_, conn)| conn.clone());
        let Some(connection) = connection else {
            continue;
        };
        let bytes = match shared
            .store
            .latest_bundle(&stored.project, &stored.app, &stored.cluster)
        {
            Ok(Some((_, bytes))) => bytes,
            Ok(None) => continue,
            Err(e) => {
                warn!(cluster = %stored.cluster, app = %stored.app, error = %e, "reading a stored bundle failed");
                continue;
            }
        };
        match Envelope::decode(&bytes) {
            Ok(envelope) => {
                let _ = connection.send(ToConnection::Publish(Box::new((
                    AppRef::new(stored.project, stored.app),
                    envelope,
                ))));
            }
            Err(e) => {
                warn!(cluster = %stored.cluster, app = %stored.app, generation = stored.generation, error = %e, "stored bundle does not decode");
            }
        }
    }
}

fn peer_certificate(connection: &quinn::Connection) -> Option<Vec<u8>> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|cert| cert.to_vec())
}

async fn serve_connection(shared: Arc<Shared>, connection: quinn::Connection) {
    let remote = connection.remote_address();
    match peer_certificate(&connection) {
        Some(cert) => {
            let presented = ca::fingerprint(&cert);
            let cluster = match shared.store.cluster_by_cert(&presented) {
                Ok(Some(cluster)) => cluster,
                Ok(None) => {
                    connection.close(close_code::REVOKED.into(), b"certificate revoked");
                    return;
                }
                Err(e) => {
                    warn!(%remote, error = %e, "looking up a client certificate failed");
                    connection.close(close_code::SHUTDOWN.into(), b"hub store error");
                    return;
                }
            };
            let span = info_span!("agent", cluster = %cluster, %remote);
            serve_agent(shared, connection, cluster, presented)
                .instrument(span)
                .await;
        }
        None => {
            let Ok(_permit) = shared.registering.try_acquire() else {
                connection.close(
                    close_code::BUSY.into(),
                    b"too many registrations; retry later",
                );
                return;
            };
            let timeout = shared.config.register_timeout;
            let span = info_span!("register", %remote);
            let served = tokio::time::timeout(timeout, serve_registration(&shared, &connection))
                .instrument(span)
                .await;
            if served.is_err() {
                connection.close(close_code::PROTOCOL.into(), b"registration timed out");
            }
        }
    }
}

/// Reads one complete control frame from `recv`.
async fn read_control(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> std::result::Result<Option<Message>, String> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match recv.read(&mut buf).await {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("control stream: {e}")),
        };
        let mut input = buf.get(..n).unwrap_or_default();
        if let Some(message) = decoder.decode_next(&mut input).map_err(|e| e.to_string())? {
            return Ok(Some(message));
        }
    }
}

async fn serve_registration(shared: &Shared, connection: &quinn::Connection) {
    let Ok((mut send, mut recv)) = connection.accept_bi().await else {
        return;
    };
    let limits = shared.config.limits;
    let mut decoder = FrameDecoder::new(Channel::Control, &limits);
    let message = match read_control(&mut recv, &mut decoder).await {
        Ok(Some(message)) => message,
        Ok(None) => return,
        Err(e) => {
            info!(error = %e, "refused a registration: bad frame");
            connection.close(close_code::PROTOCOL.into(), e.as_bytes());
            return;
        }
    };
    let Message::Register(register) = message else {
        info!("refused a connection without a client certificate that did not register");
        connection.close(
            close_code::PROTOCOL.into(),
            b"a connection without a client certificate may only register",
        );
        return;
    };
    let now = Instant::now();
    let mut session = HubSession::new(Timing::default());
    session.handle_connected(now);
    let _ = session.handle_message(now, Message::Register(register.clone()));
    while session.poll_event().is_some() {}
    match cluster::register(
        &shared.store,
        &shared.ca,
        &register,
        SystemTime::now(),
        shared.config.cert_lifetime,
    )
    .await
    {
        Ok(registration) => {
            info!(cluster = %registration.cluster, "cluster registered");
            // Nobody listening (no hub service) is fine.
            let _ = shared.registered.send(registration.cluster.clone());
            let _ = session.accept_registration(Registered {
                certificate: registration.certificate,
                key_set: shared.key_set.clone(),
            });
        }
        Err(e) => {
            info!(error = %e, "refused a registration");
            session.refuse_registration(e.to_string());
        }
    }
    while let Some(transmit) = session.poll_transmit() {
        let Ok(bytes) = transmit.encode(&limits) else {
            continue;
        };
        if send.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
    // The agent closes once it has read the answer.
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
}

/// How many status reports may arrive ahead of the Hello before the agent is
/// taken to be misbehaving.
const MAX_EARLY: usize = 64;

/// Input to one agent connection's loop.
enum Input {
    /// Boxed: a tokio channel allocates its slots 32 at a time, up front, and a
    /// `Message` is a few hundred bytes, which made the channel alone several KiB
    /// of every idle connection.
    Message(Box<Message>),
    BadFrame(String),
    StreamEnded,
}

async fn control_reader(mut recv: quinn::RecvStream, limits: Limits, tx: mpsc::Sender<Input>) {
    // read_chunk hands over quinn's own buffers, so an idle connection holds no
    // read buffer of ours.
    let mut decoder = FrameDecoder::new(Channel::Control, &limits);
    loop {
        let chunk = match recv.read_chunk(CONTROL_LIMIT_CHUNK, true).await {
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
                    if tx.send(Input::Message(Box::new(message))).await.is_err() {
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

/// The most bytes taken from the control stream at once.
const CONTROL_LIMIT_CHUNK: usize = 64 * 1024;

/// Reads status streams one at a time, in the order the agent opened them.
async fn status_reader(connection: quinn::Connection, limits: Limits, tx: mpsc::Sender<Input>) {
    let limit = limits.for_channel(Channel::Status) + frame::PREFIX_LEN;
    while let Ok(mut stream) = connection.accept_uni().await {
        let input = match stream.read_to_end(limit).await {
            Ok(bytes) => match frame::decode(&bytes, Channel::Status, &limits) {
                Ok(message) => Input::Message(Box::new(message)),
                Err(e) => Input::BadFrame(format!("status stream: {e}")),
            },
            Err(e) => Input::BadFrame(format!("status stream: {e}")),
        };
        let bad = matches!(input, Input::BadFrame(_));
        if tx.send(input).await.is_err() || bad {
            return;
        }
    }
}

async fn send_bundle(connection: quinn::Connection, bytes: Vec<u8>) {
    let result = async {
        let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
        stream.write_all(&bytes).await.map_err(|e| e.to_string())?;
        stream.finish().map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = result {
        debug!(error = %e, "sending a bundle failed; the agent's next hello asks again");
    }
}

/// Changes the link record of `cluster` in place. A cluster removed meanwhile
/// stays removed: the change is dropped rather than written back.
async fn update_link(store: &Store, cluster: &str, change: impl Fn(&mut LinkRecord)) {
    if let Err(e) = store.update_link_lazily(cluster, change) {
        warn!(error = %e, "recording the link state failed");
    }
}

async fn serve_agent(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    cluster: String,
    presented: String,
) {
    match cluster::confirm_certificate(&shared.store, &cluster, &presented).await {
        Ok(true) => info!("agent uses its renewed certificate; the previous one no longer works"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "retiring the previous client certificate failed"),
    }
    let (to_conn, mut from_hub) = mpsc::unbounded_channel();
    let id = shared
        .next_connection
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some((_, older)) = lock(&shared.connections).insert(cluster.clone(), (id, to_conn)) {
        // The older connection's task sees its channel close and ends.
        drop(older);
    }
    let accepted = tokio::time::timeout(shared.config.idle_timeout, connection.accept_bi()).await;
    let Ok(Ok((mut control, recv))) = accepted else {
        forget_connection(&shared, &cluster, id);
        return;
    };
    let limits = shared.config.limits;
    let (input_tx, mut inputs) = mpsc::channel(64);
    let reader = tokio::spawn(control_reader(recv, limits, input_tx.clone()));
    let statuses = tokio::spawn(status_reader(connection.clone(), limits, input_tx));

    let timing = Timing {
        heartbeat_interval: shared.config.keep_alive,
        silence_limit: shared.config.idle_timeout,
    };
    let mut session = HubSession::new(timing);
    session.handle_connected(Instant::now());
    publish_stored(&shared.store, &cluster, &mut session);

    let mut close = (close_code::DONE, "session ended".to_owned());
    let mut early: Vec<Message> = Vec::new();
    // Commands sent on this connection: their waiters learn it ended.
    let mut sent_commands: Vec<u64> = Vec::new();
    let mut established = false;
    'conn: loop {
        while let Some(transmit) = session.poll_transmit() {
            let bytes = match transmit.encode(&limits) {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!(error = %e, "a message does not fit its frame; not sent");
                    continue;
                }
            };
            match transmit.channel {
                Channel::Bundle => {
                    if let Message::Bundle(envelope) = &transmit.message {
                        info!(
                            generation = envelope.generation,
                            bytes = bytes.len(),
                            "pushing bundle"
                        );
                    }
                    *lock(&shared.sent).entry(cluster.clone()).or_insert(0) += 1;
                    shared.config.metrics.count_push();
                    tokio::spawn(send_bundle(connection.clone(), bytes));
                }
                _ => {
                    if control.write_all(&bytes).await.is_err() {
                        break 'conn;
                    }
                }
            }
        }
        let mut ended = false;
        let mut handled = false;
        while let Some(event) = session.poll_event() {
            handled = true;
            if matches!(event, HubEvent::Established { .. }) && !established {
                established = true;
                shared
                    .established
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            ended |= handle_event(&shared, &cluster, &presented, &mut session, event).await;
        }
        if ended {
            // Send whatever the event queued (a Goodbye) before closing.
            while let Some(transmit) = session.poll_transmit() {
                if let Ok(bytes) = transmit.encode(&limits) {
                    let _ = control.write_all(&bytes).await;
                }
            }
            break;
        }
        if handled {
            // Events may have queued replies (status acks); send them first.
            continue;
        }
        let deadline = session
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            input = inputs.recv() => match input {
                Some(Input::Message(message)) => {
                    let message = *message;
                    // Status streams and the control stream race: a report can
                    // arrive before the Hello sent ahead of it. Hold it until the
                    // session is established.
                    if matches!(message, Message::Status(_)) && session.version().is_none() {
                        if early.len() >= MAX_EARLY {
                            close = (close_code::PROTOCOL, "status reports before hello".to_owned());
                            break;
                        }
                        early.push(message);
                        continue;
                    }
                    let hello = matches!(message, Message::Hello(_));
                    if let Message::Hello(hello) = &message {
                        let version = hello.agent_version.clone();
                        let now = epoch_ms(SystemTime::now());
                        update_link(&shared.store, &cluster, |link| {
                            link.connected = true;
                            link.last_seen_ms = Some(now);
                            link.agent_version = Some(version.clone());
                        })
                        .await;
                    }
                    if let Err(e) = session.handle_message(Instant::now(), message) {
                        info!(error = %e, "agent broke the protocol");
                        close = (close_code::PROTOCOL, e.to_string());
                    }
                    if hello && session.version().is_some() {
                        for message in early.drain(..) {
                            let _ = session.handle_message(Instant::now(), message);
                        }
                    }
                }
                Some(Input::BadFrame(e)) => {
                    info!(error = %e, "agent sent a bad frame; closing");
                    close = (close_code::PROTOCOL, e);
                    break;
                }
                Some(Input::StreamEnded) | None => break,
            },
            command = from_hub.recv() => match command {
                Some(ToConnection::Publish(published)) => {
                    let (app, envelope) = *published;
                    session.publish(app, envelope);
                }
                Some(ToConnection::Command(command)) => {
                    let request_id = command.request_id;
                    sent_commands.retain(|id| lock(&shared.pending).contains_key(id));
                    sent_commands.push(request_id);
                    if let Err(e) = session.send_command(command) {
                        // Dropping the waiter tells the caller the command was not sent.
                        info!(error = %e, request_id, "a command could not be sent");
                        lock(&shared.pending).remove(&request_id);
                    }
                }
                Some(ToConnection::Resync) => publish_stored(&shared.store, &cluster, &mut session),
                Some(ToConnection::Revoke) => {
                    session.close(GoodbyeReason::Revoked, "the cluster was removed from the hub");
                    while let Some(transmit) = session.poll_transmit() {
                        if let Ok(bytes) = transmit.encode(&limits) {
                            let _ = control.write_all(&bytes).await;
                        }
                    }
                    close = (close_code::REVOKED, "the cluster was removed from the hub".to_owned());
                    break;
                }
                None => {
                    close = (close_code::REPLACED, "replaced by a newer connection".to_owned());
                    break;
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                session.handle_timeout(Instant::now());
            }
            _ = connection.closed() => break,
        }
    }
    let _ = control.finish();
    if close.0 != close_code::PROTOCOL {
        // Give a Goodbye already written a moment to arrive before closing.
        let _ = tokio::time::timeout(Duration::from_millis(200), connection.closed()).await;
    }
    connection.close(close.0.into(), close.1.as_bytes());
    reader.abort();
    statuses.abort();
    {
        let mut pending = lock(&shared.pending);
        for request_id in sent_commands {
            pending.remove(&request_id);
        }
    }
    if established {
        shared
            .established
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    session.handle_disconnected(Instant::now());
    if forget_connection(&shared, &cluster, id) {
        let now = epoch_ms(SystemTime::now());
        update_link(&shared.store, &cluster, |link| {
            link.connected = false;
            link.last_seen_ms = Some(now);
        })
        .await;
    }
    info!(reason = %close.1, "agent disconnected");
}

/// Hands the session the newest stored bundle of every app of `cluster`; it sends
/// those the agent lacks.
fn publish_stored(store: &Store, cluster: &str, session: &mut HubSession) {
    match store.latest_bundles_for(cluster) {
        Ok(bundles) => {
            for (project, app, bytes) in bundles {
                if let Ok(envelope) = Envelope::decode(&bytes) {
                    session.publish(AppRef::new(project, app), envelope);
                }
            }
        }
        Err(e) => warn!(error = %e, "reading stored bundles failed"),
    }
}

/// Removes this connection from the table if it is still the current one for
/// the cluster; says whether it was.
fn forget_connection(shared: &Shared, cluster: &str, id: u64) -> bool {
    let mut connections = lock(&shared.connections);
    if connections
        .get(cluster)
        .is_some_and(|(current, _)| *current == id)
    {
        connections.remove(cluster);
        true
    } else {
        false
    }
}

/// Whether the agent of `cluster` may speak about `generation` of `app`; a
/// message that may not is counted as refused (`kind`) and logged. A store error
/// is the caller's to handle: nothing unchecked may be stored.
fn speaks_for(
    shared: &Shared,
    cluster: &str,
    app: &AppRef,
    generation: u64,
    kind: RefusedMessage,
) -> Result<bool, store::Error> {
    let allowed = cluster::speaks_for(&shared.store, cluster, app, generation)?;
    if !allowed {
        shared.config.metrics.count_refused(kind);
        warn!(
            app = %app,
            generation,
            kind = kind.name(),
            "refused a message about an app generation the hub never sent this cluster"
        );
    }
    Ok(allowed)
}

/// [`speaks_for`], where a store error refuses the message.
fn checked(allowed: Result<bool, store::Error>) -> bool {
    allowed.unwrap_or_else(|e| {
        warn!(error = %e, "checking what the cluster may speak about failed; message dropped");
        false
    })
}

/// Acts on one session event; returns whether the connection should end.
async fn handle_event(
    shared: &Shared,
    cluster: &str,
    presented: &str,
    session: &mut HubSession,
    event: HubEvent,
) -> bool {
    let now = epoch_ms(SystemTime::now());
    match event {
        HubEvent::Established { applied, .. } => {
            info!(apps = applied.len(), "agent connected");
            let applied: Vec<_> = applied
                .into_iter()
                .filter(|applied| {
                    checked(speaks_for(
                        shared,
                        cluster,
                        &applied.app,
                        applied.generation,
                        RefusedMessage::BundleAck,
                    ))
                })
                .collect();
            // Acks are recorded without a flush; a hub killed just after one
            // loses it. The agent's Hello says what it has applied, so the record
            // is made whole again here.
            update_link(&shared.store, cluster, |link| {
                for applied in &applied {
                    let app = format!("{}/{}", applied.app.project, applied.app.name);
                    let known = link
                        .acks
                        .get(&app)
                        .is_some_and(|ack| ack.generation >= applied.generation);
                    if !known {
                        link.acks.insert(
                            app,
                            AckRecord {
                                generation: applied.generation,
                                digest: applied.digest.to_string(),
                                outcome: BundleOutcome::Applied,
                                at_ms: now,
                            },
                        );
                    }
                }
            })
            .await;
            false
        }
        HubEvent::BundleAck(ack) => {
            // The session names the app even when the agent could not (it refused
            // the bundle before reading it); an ack that still names none is about
            // no bundle this hub sent on this connection.
            let Some(acked) = &ack.app else {
                debug!(generation = ack.generation, outcome = %ack.outcome, "an acknowledgement of an unknown bundle");
                return false;
            };
            if !checked(speaks_for(
                shared,
                cluster,
                acked,
                ack.generation,
                RefusedMessage::BundleAck,
            )) {
                return false;
            }
            let app = format!("{}/{}", acked.project, acked.name);
            info!(app = %app, generation = ack.generation, outcome = %ack.outcome, "bundle acknowledged");
            let record = AckRecord {
                generation: ack.generation,
                digest: ack.digest.to_string(),
                outcome: ack.outcome,
                at_ms: now,
            };
            update_link(&shared.store, cluster, |link| {
                link.last_seen_ms = Some(now);
                link.acks.insert(app.clone(), record.clone());
            })
            .await;
            false
        }
        HubEvent::Status(status) => {
            let sequence = status.sequence;
            let seen = shared
                .store
                .link(cluster)
                .ok()
                .flatten()
                .map_or(0, |l| l.last_status_sequence);
            // A report about an app the cluster was never sent is acknowledged
            // (so the agent stops resending it) but nothing of it is stored.
            let allowed = if sequence > seen {
                match speaks_for(
                    shared,
                    cluster,
                    &status.app,
                    status.generation,
                    RefusedMessage::Status,
                ) {
                    Ok(allowed) => allowed,
                    Err(e) => {
                        // Not acknowledged, so the agent sends it again.
                        warn!(error = %e, "checking a status report's app failed");
                        return false;
                    }
                }
            } else {
                false
            };
            if allowed {
                let record = StatusRecord { at_ms: now, status };
                if let Err(e) = shared.store.put_status(cluster, &record).await {
                    // Not acknowledged, so the agent sends it again.
                    warn!(error = %e, "storing a status failed");
                    return false;
                }
                if let Some(operation) = &record.status.operation {
                    shared.config.metrics.observe_sync(operation.duration_ms);
                }
                if let Err(e) =
                    crate::history::record(&shared.store, cluster, &record.status, now).await
                {
                    // The report itself is stored; only its history entry is lost.
                    warn!(error = %e, "recording the operation in the history failed");
                }
            }
            if sequence > seen {
                update_link(&shared.store, cluster, |link| {
                    link.last_seen_ms = Some(now);
                    link.last_status_sequence = sequence;
                })
                .await;
            }
            session.ack_status(sequence);
            false
        }
        HubEvent::Registering(_) => {
            session.refuse_registration("this agent is already registered");
            true
        }
        HubEvent::VersionRefused { offered } => {
            info!(?offered, "agent speaks no common protocol version");
            true
        }
        HubEvent::CommandResult(result) => {
            let request_id = result.request_id;
            let waiting = {
                let mut pending = lock(&shared.pending);
                match pending.get(&request_id) {
                    Some(waiting) if waiting.cluster == cluster => Ok(pending.remove(&request_id)),
                    Some(waiting) => Err(waiting.cluster.clone()),
                    None => Ok(None),
                }
            };
            match waiting {
                Ok(Some(waiting)) => {
                    let _ = waiting.reply.send(result);
                }
                Ok(None) => debug!(request_id, "a command result nobody waits for any more"),
                Err(asked) => {
                    // Left waiting: the cluster asked may still answer.
                    shared
                        .config
                        .metrics
                        .count_refused(RefusedMessage::CommandResult);
                    warn!(
                        request_id,
                        asked = %asked,
                        "refused a result for a command sent to another cluster"
                    );
                }
            }
            false
        }
        HubEvent::Renew(renew) => {
            let renewed = cluster::renew(
                &shared.store,
                &shared.ca,
                cluster,
                presented,
                &renew.public_key,
                SystemTime::now(),
                shared.config.cert_lifetime,
            )
            .await;
            match renewed {
                Ok(renewal) => {
                    info!(lifetime = ?shared.config.cert_lifetime, "client certificate renewed");
                    let _ = session.accept_renewal(renewal.certificate);
                    false
                }
                Err(e @ cluster::RenewError::Revoked { .. }) => {
                    info!(error = %e, "refused a renewal");
                    session.close(GoodbyeReason::Revoked, e.to_string());
                    true
                }
                Err(e) => {
                    warn!(error = %e, "renewing a client certificate failed");
                    let _ = session.refuse_renewal(e.to_string());
                    false
                }
            }
        }
        HubEvent::Facts(facts) => {
            // The certificate names the cluster, so an agent can only ever describe
            // its own; what it says is shown and used for kinds' scope, never for
            // placement (the server URL stays the admin's).
            match shared.store.update_cluster_facts(cluster, &facts).await {
                Ok(true) => info!(
                    kinds = facts.api_resources.len(),
                    version = %facts.kubernetes_version,
                    "cluster facts refreshed"
                ),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "recording the cluster's facts failed"),
            }
            false
        }
        HubEvent::Goodbye(goodbye) => {
            info!(reason = ?goodbye.reason, message = %goodbye.message, "agent said goodbye");
            true
        }
        HubEvent::PeerSilent => true,
    }
}
