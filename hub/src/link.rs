//! The hub's end of the agent link: a QUIC endpoint (ALPN `flotilla/1`, rustls
//! with ring) that registers clusters and then talks to each agent over mutual
//! TLS, driving one [`HubSession`](flotilla_common::protocol::HubSession) per
//! connection.
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
//!
//! This file holds the [`Link`] handle the rest of the hub uses. Reading order of
//! the parts, from the socket inwards:
//! - [`endpoint`]: the QUIC transport limits and the UDP socket;
//! - [`tls`]: the hub's certificate and the check of client certificates;
//! - [`accept`]: who gets a handshake, and whether a connection registers or is
//!   an agent;
//! - [`registration`]: a connection without a certificate that registers;
//! - [`connection`]: one agent's connection, moving frames between QUIC and its
//!   session;
//! - [`push`]: newly stored bundles, handed to their cluster's connection;
//! - [`events`]: what agents said, recorded for the rest of the hub (acks,
//!   status reports, facts, command results), and [`renewal`] of client
//!   certificates;
//! - [`views`]: the clusters as the API shows them.

mod accept;
mod connection;
mod endpoint;
mod events;
mod push;
mod registration;
mod renewal;
mod tls;
mod views;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flotilla_common::frame::Limits;
use flotilla_common::message::{BundleOutcome, Command, CommandResult};
use flotilla_common::model::AppRef;
use flotilla_common::signing::{BundleSigner, KeySet};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{Instrument as _, info, info_span};

use crate::ca::{self, Ca};
use crate::cluster::{self, epoch_ms};
use crate::store::{self, Store};

pub use endpoint::server_config;
pub use flotilla_common::protocol::{ALPN, close_code};
pub use tls::StoreSlot;
pub use views::{ClusterView, Views};

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
    /// How many bytes of newly stored bundles are on their way to agents at
    /// once, 16 MiB by default; the rest wait as names in a queue, not read
    /// from the store (see [`push`]).
    pub bundle_bytes_in_flight: usize,
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
            bundle_bytes_in_flight: 16 * 1024 * 1024,
        }
    }
}

/// A message to one agent's connection task.
enum ToConnection {
    /// Boxed whole: tokio allocates a channel's slots 32 at a time, up front, on
    /// every connection.
    Publish(Box<push::Push>),
    /// Boxed for the same reason.
    Command(Box<Command>),
    /// Re-read every bundle of the cluster from the store.
    Resync,
    Revoke,
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
        let reset_key = store.stateless_reset_key().await?;
        let bind = |source| Error::Bind {
            addr: config.listen,
            source,
        };
        let endpoint = quinn::Endpoint::new(
            endpoint::endpoint_config(&reset_key),
            Some(server_config(&ca, verifier_store.clone(), &config)?),
            endpoint::bind_socket(config.listen).map_err(bind)?,
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
        let accept = tokio::spawn(accept::accept_loop(
            endpoint.clone(),
            shared.clone(),
            stop.clone(),
        ));
        let pusher = tokio::spawn(push::push_new_bundles(
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
        views::cluster_views(&self.shared)
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
            if conn.send(ToConnection::Command(Box::new(command))).is_err() {
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

impl crate::status::Connections for Link {
    fn is_connected(&self, cluster: &str) -> bool {
        Link::is_connected(self, cluster)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
