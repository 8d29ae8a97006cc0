//! Commands from the hub run by a real agent over real QUIC with mutual TLS,
//! against a real local cluster. The hub's link does not send commands yet, so
//! after the agent registered and took a bundle through it, a stand-in hub on
//! the same address, CA and store drives the sans-IO `HubSession` by hand and
//! sends them.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fixture::{Hub, RunningAgent, agent_config, eventually};
use flotilla_agent::apply::{Applier, Options};
use flotilla_agent::engine::Engine;
use flotilla_common::bundle::{Object, SyncPolicy};
use flotilla_common::frame::{self, FrameDecoder, Limits};
use flotilla_common::message::{
    Channel, Command, CommandKind, CommandOutcome, CommandResult, Message, ResourceAction, Status,
    SyncOptions,
};
use flotilla_common::model::{AppRef, Gvk, SyncStatus};
use flotilla_common::protocol::{HubEvent, HubSession, Timing};
use flotilla_hub::ca::Ca;
use flotilla_hub::link::{LinkConfig, server_config};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams};
use tokio::sync::mpsc;

use crate::support::link as fixture;

/// A hub reduced to its session: sends what the session queues on the control
/// stream, and feeds it everything the agent sends.
struct StandIn {
    session: HubSession,
    connection: quinn::Connection,
    control: quinn::SendStream,
    /// Acks and command results in the order they arrived.
    log: Vec<String>,
    inbox: mpsc::UnboundedReceiver<Message>,
    statuses: Vec<Status>,
    results: Vec<CommandResult>,
    established: bool,
}

impl StandIn {
    async fn accept(endpoint: &quinn::Endpoint) -> StandIn {
        let connection = endpoint.accept().await.unwrap().await.unwrap();
        let (control, mut recv) = connection.accept_bi().await.unwrap();
        let uni = connection.clone();
        let (tx, inbox) = mpsc::unbounded_channel();
        let limits = Limits::default();
        let control_tx = tx.clone();
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(Channel::Control, &limits);
            while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                let mut input: &[u8] = &chunk.bytes;
                while let Ok(Some(message)) = decoder.decode_next(&mut input) {
                    let _ = control_tx.send(message);
                }
            }
        });
        tokio::spawn(async move {
            while let Ok(mut stream) = uni.accept_uni().await {
                let bytes = stream.read_to_end(1 << 20).await.unwrap();
                let _ = tx.send(frame::decode(&bytes, Channel::Status, &limits).unwrap());
            }
        });
        let mut session = HubSession::new(Timing::default());
        session.handle_connected(Instant::now());
        StandIn {
            session,
            connection,
            control,
            log: Vec::new(),
            inbox,
            statuses: Vec::new(),
            results: Vec::new(),
            established: false,
        }
    }

    /// Runs the conversation until `done` holds, for at most 60 s.
    async fn until(&mut self, what: &str, done: impl Fn(&StandIn) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            while let Some(transmit) = self.session.poll_transmit() {
                let bytes = transmit.encode(&Limits::default()).unwrap();
                if transmit.channel == Channel::Bundle {
                    let mut stream = self.connection.open_uni().await.unwrap();
                    stream.write_all(&bytes).await.unwrap();
                    stream.finish().unwrap();
                } else {
                    self.control.write_all(&bytes).await.unwrap();
                }
            }
            while let Some(event) = self.session.poll_event() {
                match event {
                    HubEvent::Established { .. } => self.established = true,
                    HubEvent::Status(status) => {
                        self.session.ack_status(status.sequence);
                        self.statuses.push(status);
                    }
                    HubEvent::CommandResult(result) => {
                        self.log.push(format!("result {}", result.request_id));
                        self.results.push(result);
                    }
                    HubEvent::BundleAck(ack) => {
                        let app = ack.app.map(|a| a.name).unwrap_or_default();
                        self.log.push(format!("ack {app} {}", ack.generation));
                    }
                    _ => {}
                }
            }
            if done(self) {
                return;
            }
            let message = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap();
            self.session
                .handle_message(Instant::now(), message)
                .unwrap();
        }
    }

    async fn command(&mut self, request_id: u64, app: &AppRef, kind: CommandKind) -> CommandResult {
        self.session
            .send_command(Command {
                request_id,
                app: app.clone(),
                kind,
            })
            .unwrap();
        self.until("the command's result", |s| {
            s.results.iter().any(|r| r.request_id == request_id)
        })
        .await;
        self.results
            .iter()
            .find(|r| r.request_id == request_id)
            .unwrap()
            .clone()
    }
}

fn config_map(ns: &str, name: &str) -> Object {
    Object::new(
        Gvk::new("", "v1", "ConfigMap"),
        Some(ns.to_owned()),
        name,
        &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns}, "data": {"name": name}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_diff_and_refused_commands_run_over_the_link_and_report_their_operation() {
    let cluster = flotilla_tests::fleet().unwrap()[0].clone();
    let client = cluster.client().await.unwrap();
    let ns = format!(
        "linkcmd-{:x}-{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 0xfffff
    );
    let hub_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = hub.addr;
    let token = hub.add("east").await;
    let engine = Engine::with_options(
        Applier::new(
            client.clone(),
            "east",
            flotilla_agent::store::Store::temporary().unwrap(),
            Options {
                wave_timeout: Duration::from_secs(5),
                ..Options::default()
            },
        ),
        flotilla_agent::engine::Options {
            // The stale-generation command below waits this long for a bundle
            // that never comes.
            bundle_wait: Duration::from_secs(1),
            ..flotilla_agent::engine::Options::default()
        },
    );
    let mut agent = RunningAgent::start_with(
        agent_config(&hub, "east", Some(token), agent_dir.path()),
        engine,
    );
    agent.wait("connected", |s| s.connected).await;

    // A manual-sync bundle through the hub's real link: taken and diffed only.
    let mut bundle = fixture::bundle("east", "web", 1, 0, 0);
    bundle.policy = SyncPolicy {
        automated: None,
        sync_options: vec!["CreateNamespace=true".to_owned()],
        deletion: None,
        retry: None,
        managed_namespace_metadata: None,
    };
    bundle.objects = vec![config_map(&ns, "one"), config_map(&ns, "two")];
    let envelope = hub
        .store
        .bundle_signer()
        .await
        .unwrap()
        .sign(&bundle)
        .unwrap();
    hub.store
        .put_bundle("default", "web", "east", 1, &envelope.encode().unwrap())
        .await
        .unwrap();
    agent
        .wait("taken", |s| s.applied.iter().any(|a| a.generation == 1))
        .await;
    eventually("an OutOfSync status", Duration::from_secs(20), || {
        hub.store
            .status("default", "web", "east")
            .unwrap()
            .is_some_and(|s| s.status.sync == SyncStatus::OutOfSync)
    })
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(
        namespaces.get_opt(&ns).await.unwrap().is_none(),
        "nothing applied"
    );

    // Stop the link but keep its store, whose CA and cluster records the
    // stand-in uses.
    let Hub { store, link, .. } = hub;
    link.stop().await;
    agent.wait("disconnected", |s| !s.connected).await;
    let ca = Ca::load_or_create(&store, SystemTime::now()).await.unwrap();
    let server = server_config(
        &ca,
        Arc::new(Mutex::new(Some(store.clone()))),
        &LinkConfig::new(addr),
    )
    .unwrap();
    // The stopped link's socket may take a moment to close.
    let mut attempts = 0;
    let endpoint = loop {
        match quinn::Endpoint::server(server.clone(), addr) {
            Ok(endpoint) => break endpoint,
            Err(e) if attempts < 50 => {
                attempts += 1;
                eprintln!("binding {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("binding {addr}: {e}"),
        }
    };
    let mut hub = StandIn::accept(&endpoint).await;
    hub.until("the session", |s| s.established).await;
    let app = bundle.app.clone();

    let stale = hub
        .command(
            1,
            &app,
            CommandKind::Sync(SyncOptions {
                generation: 3,
                ..SyncOptions::default()
            }),
        )
        .await;
    let CommandOutcome::Failed { message } = &stale.outcome else {
        panic!("{stale:?}")
    };
    assert!(
        message.contains("generation 1") && message.contains("generation 3"),
        "{message}"
    );

    let synced = hub
        .command(
            2,
            &app,
            CommandKind::Sync(SyncOptions {
                generation: 1,
                ..SyncOptions::default()
            }),
        )
        .await;
    assert!(
        matches!(synced.outcome, CommandOutcome::Done { .. }),
        "{synced:?}"
    );
    hub.until("the sync's status", |s| {
        s.statuses.iter().any(|st| {
            st.operation
                .as_ref()
                .is_some_and(|o| o.request_id == Some(2))
        })
    })
    .await;
    let status = hub
        .statuses
        .iter()
        .find(|st| {
            st.operation
                .as_ref()
                .is_some_and(|o| o.request_id == Some(2))
        })
        .unwrap();
    assert_eq!(status.sync, SyncStatus::Synced);
    let operation = status.operation.as_ref().unwrap();
    assert_eq!(operation.resources.len(), 2);
    assert!(
        operation
            .resources
            .iter()
            .all(|r| r.action == ResourceAction::Created)
    );
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(maps.get_opt("one").await.unwrap().is_some());
    assert!(maps.get_opt("two").await.unwrap().is_some());

    let diff = hub.command(3, &app, CommandKind::Diff).await;
    assert!(
        matches!(diff.outcome, CommandOutcome::Done { .. }),
        "{diff:?}"
    );
    assert!(diff.diffs.is_empty(), "{:?}", diff.diffs);

    let unknown = hub
        .command(4, &AppRef::new("default", "nope"), CommandKind::Refresh)
        .await;
    assert!(matches!(unknown.outcome, CommandOutcome::Failed { .. }));

    // A sync that takes seconds (a Deployment that cannot schedule, waited on
    // until the wave times out) does not hold up a command for another app.
    let mut slow = fixture::bundle("east", "slow", 1, 0, 0);
    slow.policy = SyncPolicy {
        automated: Some(Default::default()),
        sync_options: Vec::new(),
        deletion: None,
        retry: None,
        managed_namespace_metadata: None,
    };
    slow.objects = vec![Object::new(
        Gvk::new("apps", "v1", "Deployment"),
        Some(ns.clone()),
        "stuck",
        &serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "stuck", "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "stuck"}},
                "template": {"metadata": {"labels": {"app": "stuck"}},
                    "spec": {"nodeSelector": {"flotilla.dev/no-such-node": "true"},
                        "containers": [{"name": "app", "image": "example.com/app:1"}]}}}}),
    )];
    let signed = store.bundle_signer().await.unwrap().sign(&slow).unwrap();
    assert!(hub.session.publish(slow.app.clone(), signed));
    // Flushes what the session queued, the bundle among it.
    hub.until("the slow bundle to be sent", |_| true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refreshed = hub.command(5, &app, CommandKind::Refresh).await;
    assert!(
        matches!(refreshed.outcome, CommandOutcome::Done { .. }),
        "{refreshed:?}"
    );
    hub.until("the slow bundle's ack", |s| {
        s.log.iter().any(|l| l == "ack slow 1")
    })
    .await;
    let order: Vec<&String> = hub
        .log
        .iter()
        .filter(|l| *l == "result 5" || *l == "ack slow 1")
        .collect();
    assert_eq!(order, ["result 5", "ack slow 1"], "{:?}", hub.log);

    agent.stop().await.unwrap();
    endpoint.close(0u32.into(), b"done");
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
