//! An agent speaks only for its own cluster: a second registered agent, with its
//! own certificate, speaking the protocol by hand, tries to answer and report for
//! the first cluster's app, and the hub stores nothing of it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::identity::Identity;
use flotilla_common::frame::{self, FrameDecoder, Limits};
use flotilla_common::message::{
    Applied, BundleAck, BundleOutcome, Channel, Command, CommandKind, CommandOutcome,
    CommandResult, Hello, Message, Operation, OperationPhase, SUPPORTED_VERSIONS, Status,
};
use flotilla_common::model::{AppRef, Health, SyncStatus, Timestamp};
use flotilla_hub::link::LinkConfig;
use flotilla_hub::metrics::{Metrics, RefusedMessage};
use flotilla_hub::store::HistoryEntry;

use super::attacks::raw_connection;
use super::fixture::{Hub, RunningAgent, agent_config, eventually, registered};

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A hub whose counters the test reads.
async fn hub_with_metrics(dir: &std::path::Path) -> (Hub, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let mut config = LinkConfig::new(loopback());
    config.metrics = metrics.clone();
    (Hub::start_with(dir, config).await, metrics)
}

/// An agent that speaks the protocol by hand over real QUIC and mutual TLS, to
/// send what a well-behaved agent never does.
struct RawAgent {
    connection: quinn::Connection,
    control: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    received: VecDeque<Message>,
    limits: Limits,
}

impl RawAgent {
    /// Connects with `identity`'s certificate and says hello, claiming `applied`.
    async fn connect(hub: &Hub, identity: &Identity, applied: Vec<Applied>) -> RawAgent {
        let connection = raw_connection(hub, identity).await.unwrap();
        let (control, recv) = connection.open_bi().await.unwrap();
        let limits = Limits::default();
        let mut raw = RawAgent {
            connection,
            control,
            recv,
            decoder: FrameDecoder::new(Channel::Control, &limits),
            received: VecDeque::new(),
            limits,
        };
        raw.send(Message::Hello(Hello {
            versions: SUPPORTED_VERSIONS.to_vec(),
            applied,
            agent_version: "raw".to_owned(),
        }))
        .await;
        raw.next_matching("welcome", |m| matches!(m, Message::Welcome(_)))
            .await;
        raw
    }

    async fn send(&mut self, message: Message) {
        let bytes = frame::encode(&message, &self.limits).unwrap();
        self.control.write_all(&bytes).await.unwrap();
    }

    /// Sends a status report on its own stream, as agents do, and waits for the
    /// hub to acknowledge it: by then the hub has decided what to keep of it.
    async fn report(&mut self, status: Status) {
        let sequence = status.sequence;
        let mut stream = self.connection.open_uni().await.unwrap();
        let bytes = frame::encode(&Message::Status(status), &self.limits).unwrap();
        stream.write_all(&bytes).await.unwrap();
        stream.finish().unwrap();
        self.next_matching(
            "status ack",
            |m| matches!(m, Message::StatusAck(ack) if ack.sequence == sequence),
        )
        .await;
    }

    /// The next control message `f` accepts; others are skipped.
    async fn next_matching(&mut self, what: &str, f: impl Fn(&Message) -> bool) -> Message {
        let mut buf = [0u8; 4096];
        loop {
            while let Some(message) = self.received.pop_front() {
                if f(&message) {
                    return message;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(20), self.recv.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("the hub sends {what} within 20 s"))
                .unwrap()
                .unwrap();
            let mut input = &buf[..n];
            while let Some(message) = self.decoder.decode_next(&mut input).unwrap() {
                self.received.push_back(message);
            }
        }
    }

    fn close(self) {
        self.connection.close(0u32.into(), b"done");
    }
}

/// A report on `app` that ends a sync, so the hub would record it in history.
fn report(sequence: u64, app: &str, generation: u64) -> Status {
    Status {
        sequence,
        app: AppRef::new("default", app),
        generation,
        sync: SyncStatus::Synced,
        health: Health::Degraded,
        resources: Vec::new(),
        drift: Vec::new(),
        events: Vec::new(),
        operation: Some(Box::new(Operation {
            request_id: None,
            started_at: Timestamp(1),
            duration_ms: 10,
            phase: OperationPhase::Failed,
            message: "forged".to_owned(),
            dry_run: false,
            resources: Vec::new(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_write_status_acks_or_history_for_another_clusters_app() {
    let hub_dir = tempfile::tempdir().unwrap();
    let (hub, metrics) = hub_with_metrics(hub_dir.path()).await;
    let west_dir = tempfile::tempdir().unwrap();
    let west = registered(&hub, "west", west_dir.path()).await;

    // East is a real agent that runs `web` and reports on it.
    let east_dir = tempfile::tempdir().unwrap();
    let mut east = RunningAgent::start(agent_config(
        &hub,
        "east",
        Some(hub.add("east").await),
        east_dir.path(),
    ));
    east.wait("connected", |s| s.connected).await;
    let web = hub.publish("east", "web", 1, 1).await;
    eventually("east's status is stored", Duration::from_secs(10), || {
        hub.store
            .status("default", "web", "east")
            .unwrap()
            .is_some()
    })
    .await;
    let real = hub
        .store
        .push_history(
            "default",
            "web",
            HistoryEntry {
                id: 0,
                cluster: "east".to_owned(),
                revision: "0123456789abcdef0123456789abcdef01234567".to_owned(),
                digest: web.digest.to_string(),
                generation: 1,
                started_at_ms: 1,
                finished_at_ms: Some(2),
                result: flotilla_hub::store::Phase::Succeeded,
                message: String::new(),
                initiated_by: "automated".to_owned(),
                resources: Vec::new(),
            },
            None,
            10,
        )
        .await
        .unwrap();
    // West runs only `api`.
    hub.publish("west", "api", 1, 1).await;
    let east_status = hub.store.status("default", "web", "east").unwrap();

    // West claims in its hello to have applied east's app.
    let claimed = Applied {
        app: AppRef::new("default", "web"),
        generation: 1,
        digest: web.digest,
    };
    let mut raw = RawAgent::connect(&hub, &west, vec![claimed]).await;
    // More reports ending a sync than web's history keeps, to push the real
    // entry out.
    for sequence in 1..=11 {
        raw.report(report(sequence, "web", 1)).await;
    }
    raw.send(Message::BundleAck(BundleAck {
        app: Some(AppRef::new("default", "web")),
        generation: 1,
        digest: web.digest,
        outcome: BundleOutcome::Applied,
    }))
    .await;
    // Its own app, at a generation the hub never signed for it.
    raw.report(report(12, "api", 7)).await;
    // Its own app, as it is: kept, so the refusals above are about the app.
    raw.report(report(13, "api", 1)).await;

    let history = hub.store.history("default", "web").unwrap();
    assert_eq!(history, vec![real], "west's reports reached web's history");
    assert!(
        hub.store
            .status("default", "web", "west")
            .unwrap()
            .is_none()
    );
    assert!(
        hub.store
            .status_history("default", "web", "west")
            .unwrap()
            .is_empty()
    );
    assert!(
        hub.store
            .operation("default", "web", "west")
            .unwrap()
            .is_none()
    );
    assert_eq!(
        hub.store.status("default", "web", "east").unwrap(),
        east_status
    );
    let kept = hub.store.status("default", "api", "west").unwrap().unwrap();
    assert_eq!(
        (kept.status.sequence, kept.status.generation),
        (13, 1),
        "west's report on its own app is kept"
    );
    assert_eq!(
        hub.store
            .status_history("default", "api", "west")
            .unwrap()
            .len(),
        1
    );
    assert_eq!(metrics.refused(RefusedMessage::Status), 12);
    eventually(
        "the forged ack and hello entry are counted",
        Duration::from_secs(10),
        || metrics.refused(RefusedMessage::BundleAck) == 2,
    )
    .await;
    let west_link = hub.store.link("west").unwrap().unwrap();
    assert!(
        !west_link.acks.contains_key("default/web"),
        "{:?}",
        west_link.acks
    );
    let text = flotilla_hub::metrics::encode(&metrics, &Default::default());
    assert!(
        text.contains("flotilla_agent_messages_refused_total{kind=\"status\"} 12\n"),
        "{text}"
    );

    raw.close();
    east.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_result_from_another_cluster_is_dropped_and_the_asked_cluster_answers() {
    let hub_dir = tempfile::tempdir().unwrap();
    let (hub, metrics) = hub_with_metrics(hub_dir.path()).await;
    let east_dir = tempfile::tempdir().unwrap();
    let west_dir = tempfile::tempdir().unwrap();
    let east_identity = registered(&hub, "east", east_dir.path()).await;
    let west_identity = registered(&hub, "west", west_dir.path()).await;
    let mut east = RawAgent::connect(&hub, &east_identity, Vec::new()).await;
    let mut west = RawAgent::connect(&hub, &west_identity, Vec::new()).await;
    eventually("both are connected", Duration::from_secs(10), || {
        hub.link.is_connected("east") && hub.link.is_connected("west")
    })
    .await;

    let request_id = hub.link.new_request_id().unwrap();
    let command = Command {
        request_id,
        app: AppRef::new("default", "web"),
        kind: CommandKind::Refresh,
    };
    let result = |message: &str| CommandResult {
        request_id,
        outcome: CommandOutcome::Done {
            message: message.to_owned(),
        },
        drift: Vec::new(),
        diffs: Vec::new(),
    };
    let (answer, ()) = tokio::join!(
        hub.link.command("east", command, Duration::from_secs(20)),
        async {
            east.next_matching(
                "the command",
                |m| matches!(m, Message::Command(c) if c.request_id == request_id),
            )
            .await;
            // Request ids are sequential: west guesses east's and answers first.
            west.send(Message::CommandResult(result("forged by west")))
                .await;
            eventually("west's answer is refused", Duration::from_secs(10), || {
                metrics.refused(RefusedMessage::CommandResult) == 1
            })
            .await;
            east.send(Message::CommandResult(result("from east"))).await;
        }
    );
    let answer = answer.unwrap();
    assert_eq!(
        answer.outcome,
        CommandOutcome::Done {
            message: "from east".to_owned()
        }
    );
    assert_eq!(metrics.refused(RefusedMessage::CommandResult), 1);

    // A forged answer to a command nobody answers leaves the caller waiting
    // for the cluster it asked, and then timing out.
    let request_id = hub.link.new_request_id().unwrap();
    let command = Command {
        request_id,
        app: AppRef::new("default", "web"),
        kind: CommandKind::Refresh,
    };
    let (answer, ()) = tokio::join!(
        hub.link.command("east", command, Duration::from_secs(2)),
        async {
            east.next_matching(
                "the command",
                |m| matches!(m, Message::Command(c) if c.request_id == request_id),
            )
            .await;
            west.send(Message::CommandResult(CommandResult {
                request_id,
                outcome: CommandOutcome::Failed {
                    message: "forged by west".to_owned(),
                },
                drift: Vec::new(),
                diffs: Vec::new(),
            }))
            .await;
        }
    );
    let error = answer.unwrap_err();
    assert!(
        matches!(error, flotilla_hub::link::CommandError::Timeout { .. }),
        "{error}"
    );
    assert_eq!(metrics.refused(RefusedMessage::CommandResult), 2);
    east.close();
    west.close();
    hub.stop().await;
}

/// An applier that reports whatever facts the test sets.
struct ReportsFacts(Arc<std::sync::Mutex<flotilla_common::model::ClusterFacts>>);

impl flotilla_agent::link::Applier for ReportsFacts {
    async fn apply(
        &self,
        bundle: &flotilla_common::bundle::Bundle,
    ) -> flotilla_agent::link::ApplyReport {
        flotilla_agent::link::Applier::apply(&flotilla_agent::link::AckOnly, bundle).await
    }

    async fn facts(&self) -> Option<flotilla_common::model::ClusterFacts> {
        Some(self.0.lock().unwrap().clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_facts_are_refreshed_on_every_connection_and_never_move_the_server_url() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = hub.add("east").await;

    // A cluster-scoped CRD installed after registration: the hub must learn that
    // its kind is cluster-scoped, or a namespace-only project would let it through.
    let mut now = super::fixture::facts("uid-east");
    now.api_resources.push(flotilla_common::model::ApiResource {
        group_version: "example.com/v1".to_owned(),
        kind: "Widget".to_owned(),
        plural: "widgets".to_owned(),
        namespaced: false,
    });
    now.api_server_url = "https://claimed.example:6443".to_owned();
    let shared = Arc::new(std::sync::Mutex::new(now));
    let stored_kinds = |hub: &Hub| {
        hub.store
            .cluster("east")
            .unwrap()
            .and_then(|c| c.facts)
            .map(|f| (f.kubernetes_version, f.api_resources.len()))
    };

    let mut agent = RunningAgent::start_with(
        agent_config(&hub, "east", Some(token), dir.path()),
        ReportsFacts(shared.clone()),
    );
    agent.wait("connected", |s| s.connected).await;
    eventually(
        "the facts of the first connection",
        Duration::from_secs(20),
        || stored_kinds(&hub) == Some(("v1.35.0".to_owned(), 1)),
    )
    .await;
    // Shown, never used for placement: the server URL stays the admin's (none).
    assert_eq!(hub.store.cluster("east").unwrap().unwrap().server, None);

    // An upgrade, seen on the next connection.
    shared.lock().unwrap().kubernetes_version = "v1.36.0".to_owned();
    agent.stop().await.unwrap();
    let mut agent = RunningAgent::start_with(
        agent_config(&hub, "east", None, dir.path()),
        ReportsFacts(shared.clone()),
    );
    agent.wait("connected again", |s| s.connected).await;
    eventually(
        "the facts of the second connection",
        Duration::from_secs(20),
        || stored_kinds(&hub) == Some(("v1.36.0".to_owned(), 1)),
    )
    .await;
    agent.stop().await.unwrap();
    hub.stop().await;
}
