//! Bad input and attacks: each fails with a clear error and changes nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_agent::identity::Identity;
use flotilla_agent::link::client_config;
use flotilla_agent::link::{AckOnly, ApplyReport};
use flotilla_common::bundle::Envelope;
use flotilla_common::frame::{self, Limits};
use flotilla_common::message::{
    BundleAck, BundleOutcome, Channel, Hello, Message, Rejection, Welcome,
};
use flotilla_hub::ca::Ca;
use flotilla_hub::link::{self, LinkConfig};
use flotilla_hub::store::Store;

use super::fixture::{self, Hub, RunningAgent, agent_config, eventually, registered};

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A raw mutual-TLS connection to `hub` with `identity`'s certificate, speaking
/// nothing yet.
pub(crate) async fn raw_connection(
    hub: &Hub,
    identity: &Identity,
) -> Result<quinn::Connection, String> {
    let config = flotilla_agent::link::client_config(
        &hub.fingerprint,
        Some((&identity.certificate, &identity.key_pkcs8)),
        Duration::from_secs(15),
        Duration::from_secs(60),
    )
    .unwrap();
    let endpoint = flotilla_agent::link::client_endpoint(hub.addr).unwrap();
    endpoint
        .connect_with(config, hub.addr, flotilla_agent::link::HUB_SERVER_NAME)
        .unwrap()
        .await
        .map_err(|e| e.to_string())
}

async fn close_reason(connection: &quinn::Connection) -> (u64, String) {
    let reason = tokio::time::timeout(Duration::from_secs(10), connection.closed())
        .await
        .unwrap();
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => (
            close.error_code.into_inner(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => (u64::MAX, other.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_fails_the_handshake() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let hub_a = Hub::start(dir_a.path(), loopback()).await;
    let hub_b = Hub::start(dir_b.path(), loopback()).await;
    let agent_dir = tempfile::tempdir().unwrap();
    let foreign = registered(&hub_b, "east", agent_dir.path()).await;
    assert_ne!(hub_a.fingerprint, hub_b.fingerprint);

    let mut attempt = raw_connection(&hub_a, &foreign).await;
    if let Ok(connection) = &attempt {
        // TLS 1.3 reports a refused client certificate after the client's side
        // of the handshake; the connection dies at once. Whatever this side was
        // doing when it died (opening a stream, writing) fails with its own error,
        // which may say only "connection lost": the reason is the connection's.
        if let Ok((mut send, _)) = connection.open_bi().await {
            let _ = send.write_all(b"x").await;
        }
        attempt = Err(close_reason(connection).await.1);
    }
    let error = attempt.unwrap_err();
    assert!(
        error.contains("UnknownIssuer")
            || error.contains("BadSignature")
            || error.contains("certificate"),
        "{error}"
    );
    assert!(hub_a.store.link("east").unwrap().is_none());
    assert!(hub_a.store.clusters().unwrap().is_empty());
    hub_a.stop().await;
    hub_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_claiming_another_clusters_name_is_still_named_by_its_certificate() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let east_dir = tempfile::tempdir().unwrap();
    let west_dir = tempfile::tempdir().unwrap();
    let mut east = registered(&hub, "east", east_dir.path()).await;
    registered(&hub, "west", west_dir.path()).await;
    let west_before = hub.store.link("west").unwrap().unwrap();

    // East's certificate, but the agent says it is west.
    east.cluster = "west".to_owned();
    let liar_dir = tempfile::tempdir().unwrap();
    east.save(liar_dir.path()).unwrap();
    let mut liar = RunningAgent::start(agent_config(&hub, "west", None, liar_dir.path()));
    liar.wait("connected", |s| s.connected).await;
    hub.publish("east", "web", 1, 1).await;
    hub.publish("west", "web", 1, 1).await;
    // The hub sends it east's bundle, which it refuses as addressed elsewhere.
    liar.wait("a refusal", |s| s.bundles_rejected == 1).await;
    eventually("east records the refusal", Duration::from_secs(10), || {
        hub.store
            .link("east")
            .unwrap()
            .unwrap()
            .acks
            .values()
            .any(|a| {
                matches!(
                    a.outcome,
                    flotilla_common::message::BundleOutcome::Rejected(
                        flotilla_common::message::Rejection::WrongCluster
                    )
                )
            })
    })
    .await;
    assert!(liar.state.borrow().applied.is_empty());
    let west_after = hub.store.link("west").unwrap().unwrap();
    assert_eq!(west_after.acks, west_before.acks);
    assert!(!west_after.connected);
    liar.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_close_only_that_connection() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&hub, "east", dir.path()).await;

    // A frame whose body is not a message.
    let connection = raw_connection(&hub, &identity).await.unwrap();
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    let mut garbage = 16u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 16]);
    send.write_all(&garbage).await.unwrap();
    let (code, reason) = close_reason(&connection).await;
    assert_eq!(code, u64::from(link::close_code::PROTOCOL), "{reason}");
    assert!(reason.contains("not a valid message"), "{reason}");

    // A length prefix past the 64 KiB control limit: refused before any body.
    let connection = raw_connection(&hub, &identity).await.unwrap();
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let (code, reason) = close_reason(&connection).await;
    assert_eq!(code, u64::from(link::close_code::PROTOCOL), "{reason}");
    assert!(reason.contains("exceeds the 65536-byte limit"), "{reason}");

    // Garbage on a status stream.
    let connection = raw_connection(&hub, &identity).await.unwrap();
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    let mut status = connection.open_uni().await.unwrap();
    status.write_all(&garbage).await.unwrap();
    status.finish().unwrap();
    let (code, reason) = close_reason(&connection).await;
    assert_eq!(code, u64::from(link::close_code::PROTOCOL), "{reason}");
    assert!(reason.contains("status stream"), "{reason}");

    // Nothing was stored, and the real agent still connects.
    assert!(
        hub.store
            .status_history("default", "web", "east")
            .unwrap()
            .is_empty()
    );
    let mut agent = RunningAgent::start(agent_config(&hub, "east", None, dir.path()));
    agent.wait("connected", |s| s.connected).await;
    agent.stop().await.unwrap();
    hub.stop().await;
}

/// A hub that speaks the protocol by hand, to put what a real hub never sends
/// on the wire: a replayed old bundle and a tampered one.
/// A hub that speaks the wire protocol by hand, on a stopped hub's store, CA and
/// address: it sends what a compromised network or a buggy hub might.
struct FakeHub {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    control: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: frame::FrameDecoder,
    pending: std::collections::VecDeque<Message>,
    limits: Limits,
    slot: Arc<Mutex<Option<Store>>>,
}

impl FakeHub {
    /// Waits for the agent on `addr` and answers its `Hello` with a `Welcome`.
    async fn accept(hub_dir: &std::path::Path, addr: std::net::SocketAddr) -> (FakeHub, Hello) {
        let store = Store::open(&hub_dir.join("db")).unwrap();
        let ca = Ca::load_or_create(&store, std::time::SystemTime::now())
            .await
            .unwrap();
        let slot = Arc::new(Mutex::new(Some(store.clone())));
        let config = link::server_config(&ca, slot.clone(), &LinkConfig::new(addr)).unwrap();
        let endpoint = quinn::Endpoint::server(config, addr).unwrap();
        let connection = tokio::time::timeout(Duration::from_secs(20), endpoint.accept())
            .await
            .unwrap()
            .unwrap()
            .await
            .unwrap();
        let (control, recv) = tokio::time::timeout(Duration::from_secs(20), connection.accept_bi())
            .await
            .unwrap()
            .unwrap();
        let limits = Limits::default();
        let mut fake = FakeHub {
            endpoint,
            connection,
            control,
            recv,
            decoder: frame::FrameDecoder::new(Channel::Control, &limits),
            pending: std::collections::VecDeque::new(),
            limits,
            slot,
        };
        let Message::Hello(hello) = fake.next().await else {
            panic!("expected hello")
        };
        let welcome = Message::Welcome(Welcome {
            version: 1,
            heartbeat_interval_ms: 15_000,
        });
        fake.control
            .write_all(&frame::encode(&welcome, &fake.limits).unwrap())
            .await
            .unwrap();
        (fake, hello)
    }

    /// The agent's next message on the control stream.
    async fn next(&mut self) -> Message {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(message) = self.pending.pop_front() {
                return message;
            }
            let n = tokio::time::timeout(Duration::from_secs(20), self.recv.read(&mut buf))
                .await
                .expect("the agent answers within 20 s")
                .unwrap()
                .unwrap();
            let mut input = &buf[..n];
            while let Some(message) = self.decoder.decode_next(&mut input).unwrap() {
                self.pending.push_back(message);
            }
        }
    }

    /// The agent's next bundle acknowledgement.
    async fn ack(&mut self) -> BundleAck {
        loop {
            if let Message::BundleAck(ack) = self.next().await {
                return ack;
            }
        }
    }

    /// Sends `envelope` on a stream of its own, as the hub does.
    async fn send_bundle(&self, envelope: Envelope) {
        let mut stream = self.connection.open_uni().await.unwrap();
        let bytes = frame::encode(&Message::Bundle(envelope), &self.limits).unwrap();
        stream.write_all(&bytes).await.unwrap();
        stream.finish().unwrap();
    }

    fn close(self) {
        self.connection.close(0u32.into(), b"done");
        self.endpoint.close(0u32.into(), b"done");
        self.slot.lock().unwrap().take();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_replayed_bundles_on_the_wire_are_refused_and_not_applied() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let addr = hub.addr;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = RunningAgent::start(agent_config(
        &hub,
        "east",
        Some(hub.add("east").await),
        dir.path(),
    ));
    agent.wait("connected", |s| s.connected).await;
    let old = hub.publish("east", "web", 1, 1).await;
    agent
        .wait("generation 1", |s| {
            s.applied.iter().any(|a| a.generation == 1)
        })
        .await;
    hub.publish("east", "web", 2, 1).await;
    agent
        .wait("generation 2", |s| {
            s.applied.iter().any(|a| a.generation == 2)
        })
        .await;
    let newer = fixture::sign(&hub.store, "east", "web", 3, 1, 16).await;
    hub.stop().await;
    agent.wait("disconnected", |s| !s.connected).await;

    let (mut fake, hello) = FakeHub::accept(hub_dir.path(), addr).await;
    assert_eq!(hello.applied[0].generation, 2);
    let mut tampered: Envelope = newer.clone();
    let last = tampered.payload.len() - 1;
    tampered.payload[last] ^= 1;
    for envelope in [old, tampered] {
        fake.send_bundle(envelope).await;
    }
    let mut outcomes = Vec::new();
    while outcomes.len() < 2 {
        outcomes.push(fake.ack().await.outcome);
    }
    outcomes.sort_by_key(|outcome| format!("{outcome:?}"));
    assert_eq!(
        outcomes,
        vec![
            BundleOutcome::Rejected(Rejection::DigestMismatch),
            BundleOutcome::Rejected(Rejection::Stale { last_applied: 2 }),
        ]
    );
    assert_eq!(agent.applied_generation("web"), Some(2));
    assert_eq!(agent.state.borrow().bundles_rejected, 2);
    fake.close();
    agent.stop().await.unwrap();
}

/// An applier that reports each bundle it starts and finishes it only when the test
/// lets it.
struct Gated {
    started: tokio::sync::mpsc::UnboundedSender<u64>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl flotilla_agent::link::Applier for Gated {
    async fn apply(&self, bundle: &flotilla_common::bundle::Bundle) -> ApplyReport {
        let _ = self.started.send(bundle.generation);
        let _permit = self.gate.acquire().await.unwrap();
        AckOnly.apply(bundle).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_older_than_one_still_being_applied_is_refused_and_never_applied() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let addr = hub.addr;
    let dir = tempfile::tempdir().unwrap();
    let (started, mut applies) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut agent = RunningAgent::start_with(
        agent_config(&hub, "east", Some(hub.add("east").await), dir.path()),
        Gated {
            started,
            gate: gate.clone(),
        },
    );
    agent.wait("connected", |s| s.connected).await;
    let older = fixture::sign(&hub.store, "east", "web", 2, 1, 16).await;
    let newer = fixture::sign(&hub.store, "east", "web", 3, 1, 16).await;
    hub.stop().await;
    agent.wait("disconnected", |s| !s.connected).await;

    // Bundles travel on streams of their own, so one sent first can arrive last:
    // here the newer one is being applied when the older one comes in.
    let (mut fake, _) = FakeHub::accept(hub_dir.path(), addr).await;
    fake.send_bundle(newer).await;
    let first = tokio::time::timeout(Duration::from_secs(20), applies.recv()).await;
    assert_eq!(first.unwrap(), Some(3));
    fake.send_bundle(older).await;
    let ack = fake.ack().await;
    assert_eq!(
        (ack.generation, ack.outcome),
        (
            2,
            BundleOutcome::Rejected(Rejection::Stale { last_applied: 3 })
        )
    );

    gate.add_permits(10);
    let ack = fake.ack().await;
    assert_eq!((ack.generation, ack.outcome), (3, BundleOutcome::Applied));
    assert_eq!(agent.applied_generation("web"), Some(3));
    // Nothing older is applied after it, now or later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(applies.try_recv().is_err(), "an older bundle was applied");
    fake.close();
    let state_dir = agent.dir.clone();
    agent.stop().await.unwrap();
    let journal = flotilla_agent::journal::Store::open(&state_dir.join("db")).unwrap();
    let applied = journal.applied().unwrap();
    assert_eq!(applied.len(), 1);
    assert_eq!(
        applied[0].generation, 3,
        "the journal keeps the newest bundle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_without_a_certificate_leaves_agents_served() {
    let _alone = crate::support::alone().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = RunningAgent::start(agent_config(
        &hub,
        "east",
        Some(hub.add("east").await),
        dir.path(),
    ));
    agent.wait("connected", |s| s.connected).await;

    // 1,000 attempts in about a second from one socket, none with a certificate.
    let config = client_config(
        &hub.fingerprint,
        None,
        Duration::from_secs(15),
        Duration::from_secs(5),
    )
    .unwrap();
    let endpoint = flotilla_agent::link::client_endpoint(hub.addr).unwrap();
    let addr = hub.addr;
    let flood = tokio::spawn(async move {
        let mut attempts = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for _ in 0..1000 {
            tick.tick().await;
            if let Ok(connecting) =
                endpoint.connect_with(config.clone(), addr, flotilla_agent::link::HUB_SERVER_NAME)
            {
                attempts.push(tokio::spawn(async move {
                    if let Ok(connection) = connecting.await {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(3), connection.closed()).await;
                    }
                }));
            }
        }
        for attempt in attempts {
            let _ = attempt.await;
        }
        endpoint
    });

    // Meanwhile the registered agent gets new bundles promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worst = Duration::ZERO;
    for generation in 1..=3 {
        let start = Instant::now();
        hub.publish("east", "web", generation, 1).await;
        agent
            .wait("bundle during the flood", |s| {
                s.applied.iter().any(|a| a.generation == generation)
            })
            .await;
        worst = worst.max(start.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        worst < Duration::from_secs(5),
        "a bundle took {worst:?} during the flood"
    );
    println!("slowest bundle delivery during the flood: {worst:?}");
    let endpoint = flood.await.unwrap();
    endpoint.close(0u32.into(), b"done");
    // No cluster, token or link was created by the flood.
    assert_eq!(hub.store.clusters().unwrap().len(), 1);
    assert!(agent.state.borrow().connected);
    agent.stop().await.unwrap();
    hub.stop().await;
}
