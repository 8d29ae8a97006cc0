//! A real hub link and real agents on loopback, for the link tests, the
//! end-to-end test and the benchmark.

// Test support: a panic is the failure report.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use flotilla_agent::link::{AckOnly, Agent, AgentConfig, LinkState};
use flotilla_common::bundle::{Automated, Bundle, Envelope, Object, Source, SyncPolicy};
use flotilla_common::model::{AppRef, ClusterFacts, Gvk, Timestamp};
use flotilla_common::project::ProjectRules;
use flotilla_hub::cluster;
use flotilla_hub::link::{Link, LinkConfig};
use flotilla_hub::store::Store;
use tokio::sync::watch;

/// Installs ring as the process's rustls provider, once.
pub fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A hub's store and link on 127.0.0.1, in `dir`.
pub struct Hub {
    pub store: Store,
    pub link: Link,
    pub addr: SocketAddr,
    pub fingerprint: String,
}

impl Hub {
    /// Starts (or restarts) a hub on `dir`, on `addr` (port 0 for any).
    pub async fn start(dir: &Path, addr: SocketAddr) -> Hub {
        Hub::start_with(dir, LinkConfig::new(addr)).await
    }

    pub async fn start_with(dir: &Path, config: LinkConfig) -> Hub {
        crypto();
        let store = Store::open(&dir.join("db")).unwrap();
        let link = Link::start(store.clone(), config).await.unwrap();
        let addr = link.local_addr().unwrap();
        let fingerprint = link.ca_fingerprint();
        Hub {
            store,
            link,
            addr,
            fingerprint,
        }
    }

    /// Stops the hub and releases its database.
    pub async fn stop(self) {
        self.link.stop().await;
        drop(self.store);
    }

    /// A bootstrap token for `name`.
    pub async fn add(&self, name: &str) -> String {
        cluster::add(
            &self.store,
            name,
            Default::default(),
            cluster::DEFAULT_TOKEN_TTL,
            SystemTime::now(),
        )
        .await
        .unwrap()
        .token
    }

    /// Signs and stores a bundle of `objects` ConfigMaps (each about `object_bytes`
    /// big), as hub::refresh does; the link pushes it.
    pub async fn publish(
        &self,
        cluster: &str,
        app: &str,
        generation: u64,
        objects: usize,
    ) -> Envelope {
        self.publish_sized(cluster, app, generation, objects, 16)
            .await
    }

    pub async fn publish_sized(
        &self,
        cluster: &str,
        app: &str,
        generation: u64,
        objects: usize,
        object_bytes: usize,
    ) -> Envelope {
        let envelope = sign(&self.store, cluster, app, generation, objects, object_bytes).await;
        self.store
            .put_bundle(
                "default",
                app,
                cluster,
                generation,
                &envelope.encode().unwrap(),
            )
            .await
            .unwrap();
        envelope
    }
}

/// A signed bundle for (app, cluster, generation).
pub async fn sign(
    store: &Store,
    cluster: &str,
    app: &str,
    generation: u64,
    objects: usize,
    object_bytes: usize,
) -> Envelope {
    let signer = store.bundle_signer().await.unwrap();
    signer
        .sign(&bundle(cluster, app, generation, objects, object_bytes))
        .unwrap()
}

pub fn bundle(
    cluster: &str,
    app: &str,
    generation: u64,
    objects: usize,
    object_bytes: usize,
) -> Bundle {
    let now = Timestamp::from_system_time(SystemTime::now());
    Bundle {
        app: AppRef::new("default", app),
        cluster: cluster.to_owned(),
        source: Source {
            repo: "https://git.example/fleet.git".to_owned(),
            revision: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            path: format!("apps/{app}"),
        },
        generation,
        created_at: now,
        not_after: Timestamp(now.0 + 3600),
        policy: SyncPolicy {
            automated: Some(Automated::default()),
            sync_options: Vec::new(),
            deletion: None,
            retry: None,
            managed_namespace_metadata: None,
        },
        ignore_differences: Vec::new(),
        project: ProjectRules::allow_all("default", cluster),
        objects: (0..objects)
            .map(|i| {
                let name = format!("cm-{i}");
                Object::new(
                    Gvk::new("", "v1", "ConfigMap"),
                    Some("default".to_owned()),
                    &name,
                    &serde_json::json!({
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": name, "namespace": "default"},
                        "data": {"value": "x".repeat(object_bytes)},
                    }),
                )
            })
            .collect(),
    }
}

/// Facts for a made-up cluster with this kube-system UID.
pub fn facts(uid: &str) -> ClusterFacts {
    ClusterFacts {
        kubernetes_version: "v1.35.0".to_owned(),
        api_resources: Vec::new(),
        api_server_url: format!("https://{uid}.example:6443"),
        kube_system_uid: uid.to_owned(),
    }
}

/// Agent settings for tests: quick retries.
pub fn agent_config(
    hub: &Hub,
    cluster: &str,
    token: Option<String>,
    state_dir: &Path,
) -> AgentConfig {
    let mut config = AgentConfig::new(
        hub.addr,
        hub.fingerprint.clone(),
        cluster.to_owned(),
        state_dir.to_owned(),
    );
    config.token = token;
    config.facts = facts(&format!("uid-{cluster}"));
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(500);
    config
}

/// A running agent.
pub struct RunningAgent {
    pub state: watch::Receiver<LinkState>,
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), flotilla_agent::link::Error>>,
    pub dir: PathBuf,
}

impl RunningAgent {
    pub fn start(config: AgentConfig) -> RunningAgent {
        Self::start_with(config, AckOnly)
    }

    /// Starts an agent that hands bundles to `applier`.
    #[allow(dead_code)]
    pub fn start_with(
        config: AgentConfig,
        applier: impl flotilla_agent::link::Applier,
    ) -> RunningAgent {
        let dir = config.state_dir.clone();
        let agent = Agent::new(config, applier).unwrap();
        let state = agent.state();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(agent.run(stopped));
        RunningAgent {
            state,
            stop,
            task,
            dir,
        }
    }

    /// Stops the agent and waits for it, returning how it ended.
    pub async fn stop(self) -> Result<(), flotilla_agent::link::Error> {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }

    /// Waits until the agent's state satisfies `f`.
    pub async fn wait(&mut self, what: &str, f: impl Fn(&LinkState) -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(20), self.state.wait_for(|s| f(s)))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            waited,
            "timed out waiting for the agent: {what}; state: {:?}",
            *self.state.borrow()
        );
    }

    pub fn applied_generation(&self, app: &str) -> Option<u64> {
        self.state
            .borrow()
            .applied
            .iter()
            .find(|a| a.app.name == app)
            .map(|a| a.generation)
    }
}

/// Registers `name` with a real agent and returns its identity, with the agent
/// stopped.
pub async fn registered(hub: &Hub, name: &str, dir: &Path) -> flotilla_agent::identity::Identity {
    let mut agent = RunningAgent::start(agent_config(hub, name, Some(hub.add(name).await), dir));
    agent.wait("connected", |s| s.connected).await;
    agent.stop().await.unwrap();
    flotilla_agent::identity::Identity::load(dir)
        .unwrap()
        .unwrap()
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects with `identity`'s client certificate without speaking the protocol,
/// and says whether the hub accepted the handshake: TLS 1.3 reports a refused
/// client certificate just after the client's side of the handshake, so a
/// connection that is still open a moment later was accepted.
pub async fn probe(
    addr: SocketAddr,
    identity: &flotilla_agent::identity::Identity,
) -> Result<(), String> {
    let config = flotilla_agent::link::client_config(
        &identity.ca_fingerprint,
        Some((&identity.certificate, &identity.key_pkcs8)),
        Duration::from_secs(15),
        Duration::from_secs(60),
    )
    .unwrap();
    let endpoint = flotilla_agent::link::client_endpoint(addr).unwrap();
    let connection = endpoint
        .connect_with(config, addr, flotilla_agent::link::HUB_SERVER_NAME)
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    let closed = tokio::time::timeout(Duration::from_millis(700), connection.closed()).await;
    connection.close(0u32.into(), b"probe done");
    match closed {
        Ok(reason) => Err(reason.to_string()),
        Err(_) => Ok(()),
    }
}
