//! The hub and agent sessions driven against each other in memory by [`Pair`].

use super::*;
use crate::fixture::{self, CLUSTER, NOW};
use crate::message::{CommandKind, CommandOutcome, Rejection, SyncOptions};
use crate::model::{ClusterFacts, Health, SyncStatus};
use crate::signing::{self, BundleSigner, Expectation, KeySet};

/// A hub session and an agent session wired together through real frames.
///
/// The agent side behaves like a well-behaved driver: it verifies every bundle
/// and acknowledges it. The hub side stores and acks every status unless told not
/// to. Every event is kept so tests can assert on it.
struct Pair {
    now: Instant,
    hub: HubSession,
    agent: AgentSession,
    limits: Limits,
    connected: bool,
    signer: BundleSigner,
    trusted: KeySet,
    hub_acks_status: bool,
    hub_events: Vec<HubEvent>,
    agent_events: Vec<AgentEvent>,
    /// Every bundle message delivered to the agent, as (app, generation).
    delivered: Vec<(AppRef, u64)>,
    /// Every status delivered to the hub, by sequence.
    statuses_delivered: Vec<u64>,
}

impl Pair {
    fn new() -> Self {
        let signer = fixture::signer(1);
        let trusted = fixture::trusting(&[&signer]);
        Self {
            now: Instant::now(),
            hub: HubSession::new(Timing::default()),
            agent: AgentSession::new(Timing::default(), Vec::new(), Vec::new()),
            limits: Limits::default(),
            connected: false,
            signer,
            trusted,
            hub_acks_status: true,
            hub_events: Vec::new(),
            agent_events: Vec::new(),
            delivered: Vec::new(),
            statuses_delivered: Vec::new(),
        }
    }

    fn connect(&mut self) {
        self.connected = true;
        self.hub.handle_connected(self.now);
        self.agent.handle_connected(self.now);
        self.drive();
    }

    /// Drops the connection with whatever was in flight.
    fn disconnect(&mut self) {
        self.connected = false;
        self.hub.handle_disconnected(self.now);
        self.agent.handle_disconnected(self.now);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.hub.handle_timeout(self.now);
        self.agent.handle_timeout(self.now);
        self.drive();
    }

    fn publish(&mut self, app: &str, generation: u64) {
        let envelope = self
            .signer
            .sign(&fixture::bundle(app, generation, 2))
            .unwrap();
        self.hub.publish(AppRef::new("default", app), envelope);
        self.drive();
    }

    fn wire(&self, transmit: &Transmit) -> Message {
        let bytes = transmit.encode(&self.limits).unwrap();
        frame::decode(&bytes, transmit.channel, &self.limits).unwrap()
    }

    /// Moves messages and reacts to events until both sides are quiet.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            while let Some(transmit) = self.hub.poll_transmit() {
                moved = true;
                if self.connected {
                    let message = self.wire(&transmit);
                    if let Message::Bundle(envelope) = &message {
                        let bundle = Bundle::decode(&envelope.payload).unwrap();
                        self.delivered.push((bundle.app, bundle.generation));
                    }
                    let _ = self.agent.handle_message(self.now, message);
                }
            }
            while let Some(transmit) = self.agent.poll_transmit() {
                moved = true;
                if self.connected {
                    let message = self.wire(&transmit);
                    if let Message::Status(status) = &message {
                        self.statuses_delivered.push(status.sequence);
                    }
                    let _ = self.hub.handle_message(self.now, message);
                }
            }
            while let Some(event) = self.agent.poll_event() {
                moved = true;
                if let AgentEvent::Bundle(envelope) = &event {
                    self.apply(envelope);
                }
                self.agent_events.push(event);
            }
            while let Some(event) = self.hub.poll_event() {
                moved = true;
                if let (HubEvent::Status(status), true) = (&event, self.hub_acks_status) {
                    self.hub.ack_status(status.sequence);
                }
                self.hub_events.push(event);
            }
            if !moved {
                break;
            }
        }
    }

    fn apply(&mut self, envelope: &Envelope) {
        let applied = self.agent.applied();
        let expect = Expectation {
            cluster: CLUSTER,
            now: NOW,
        };
        let outcome = signing::verify(envelope, &self.trusted, expect, |app| {
            applied.iter().find(|a| &a.app == app).map(|a| a.generation)
        });
        match outcome {
            Ok(bundle) => self.agent.bundle_outcome(
                Some(bundle.app),
                envelope.generation,
                envelope.digest,
                BundleOutcome::Applied,
            ),
            Err(error) => self.agent.bundle_outcome(
                None,
                envelope.generation,
                envelope.digest,
                BundleOutcome::Rejected(Rejection::from(&error)),
            ),
        }
    }

    fn applied_generation(&self, app: &str) -> Option<u64> {
        self.agent
            .applied()
            .into_iter()
            .find(|a| a.app.name == app)
            .map(|a| a.generation)
    }
}

use crate::bundle::Bundle;

fn status(app: &str) -> Status {
    Status {
        sequence: 0,
        app: AppRef::new("default", app),
        generation: 1,
        sync: SyncStatus::Synced,
        health: Health::Healthy,
        resources: Vec::new(),
        drift: Vec::new(),
        events: Vec::new(),
        operation: None,
    }
}

#[test]
fn connecting_negotiates_a_version_and_establishes_both_sides() {
    let mut pair = Pair::new();
    pair.connect();
    assert_eq!(pair.hub.version(), Some(1));
    assert_eq!(pair.agent.version(), Some(1));
    assert!(
        pair.agent_events
            .contains(&AgentEvent::Established { version: 1 })
    );
}

#[test]
fn an_agent_speaking_only_unknown_versions_gets_a_clear_goodbye() {
    let now = Instant::now();
    let mut hub = HubSession::new(Timing::default());
    hub.handle_connected(now);
    let hello = Hello {
        versions: vec![7, 9],
        applied: Vec::new(),
        agent_version: "0.1.0".to_owned(),
    };
    hub.handle_message(now, Message::Hello(hello)).unwrap();
    let Some(Transmit {
        message: Message::Goodbye(goodbye),
        ..
    }) = hub.poll_transmit()
    else {
        panic!("expected a goodbye");
    };
    assert_eq!(
        goodbye.reason,
        GoodbyeReason::UnsupportedVersion {
            offered: vec![7, 9],
            supported: SUPPORTED_VERSIONS.to_vec(),
        }
    );
    assert!(goodbye.message.contains("upgrade the agent"));
    assert_eq!(
        hub.poll_event(),
        Some(HubEvent::VersionRefused {
            offered: vec![7, 9]
        })
    );
    assert_eq!(hub.version(), None);
    assert!(hub.poll_transmit().is_none());
}

#[test]
fn a_published_bundle_is_verified_applied_and_acknowledged() {
    let mut pair = Pair::new();
    pair.connect();
    pair.publish("web", 1);
    assert_eq!(pair.applied_generation("web"), Some(1));
    assert!(pair.hub.apps_behind().is_empty());
    assert!(pair.hub_events.iter().any(|e| matches!(
        e,
        HubEvent::BundleAck(BundleAck {
            outcome: BundleOutcome::Applied,
            generation: 1,
            ..
        })
    )));
}

#[test]
fn reconnect_resends_only_bundles_newer_than_hello_and_unacknowledged_statuses() {
    let mut pair = Pair::new();
    pair.connect();
    pair.publish("web", 1);
    pair.publish("api", 1);
    assert_eq!(pair.delivered.len(), 2);

    // The hub stops acknowledging, a status goes unanswered, then the link drops.
    pair.hub_acks_status = false;
    let sequence = pair.agent.report_status(status("web"));
    pair.drive();
    assert_eq!(pair.statuses_delivered, vec![sequence]);
    pair.disconnect();

    // While disconnected the hub gets a newer web and a first db bundle; a status
    // reported offline waits in the outbox.
    pair.publish("web", 2);
    pair.publish("db", 1);
    let offline = pair.agent.report_status(status("api"));
    assert_eq!(pair.agent.unacknowledged().count(), 2);

    pair.hub_acks_status = true;
    pair.delivered.clear();
    pair.statuses_delivered.clear();
    pair.connect();

    // Hello said web@1 and api@1: only web@2 and db@1 travel; api@1 does not.
    let mut delivered = pair.delivered.clone();
    delivered.sort();
    assert_eq!(
        delivered,
        vec![
            (AppRef::new("default", "db"), 1),
            (AppRef::new("default", "web"), 2),
        ]
    );
    assert_eq!(pair.applied_generation("web"), Some(2));
    assert_eq!(pair.applied_generation("db"), Some(1));
    // Both unacknowledged statuses were resent, oldest first, and are now acked.
    assert_eq!(pair.statuses_delivered, vec![sequence, offline]);
    assert_eq!(pair.agent.unacknowledged().count(), 0);
    assert!(pair.hub.apps_behind().is_empty());
}

#[test]
fn a_bundle_lost_in_flight_is_sent_again_after_reconnect() {
    let mut pair = Pair::new();
    pair.connect();
    // Publish while the wire is cut but neither side has noticed yet.
    pair.connected = false;
    pair.publish("web", 1);
    assert!(pair.delivered.is_empty());
    pair.disconnect();
    pair.connect();
    assert_eq!(pair.delivered, vec![(AppRef::new("default", "web"), 1)]);
    assert_eq!(pair.applied_generation("web"), Some(1));
}

#[test]
fn an_agent_restarted_from_its_store_resends_its_outbox() {
    let mut pair = Pair::new();
    let mut pending = status("web");
    pending.sequence = 41;
    pair.agent = AgentSession::new(Timing::default(), Vec::new(), vec![pending]);
    pair.connect();
    assert_eq!(pair.statuses_delivered, vec![41]);
    assert_eq!(pair.agent.report_status(status("web")), 42);
}

#[test]
fn heartbeats_keep_the_link_alive_and_a_silent_peer_is_detected() {
    let mut pair = Pair::new();
    pair.connect();
    for _ in 0..10 {
        pair.advance(Duration::from_secs(15));
    }
    assert!(!pair.hub_events.contains(&HubEvent::PeerSilent));
    assert!(!pair.agent_events.contains(&AgentEvent::PeerSilent));
    assert_eq!(pair.hub.version(), Some(1));

    // Cut the wire: both sides notice after the silence limit, not before.
    pair.connected = false;
    pair.advance(Duration::from_secs(45));
    assert!(!pair.hub_events.contains(&HubEvent::PeerSilent));
    pair.advance(Duration::from_secs(16));
    assert!(pair.hub_events.contains(&HubEvent::PeerSilent));
    assert!(pair.agent_events.contains(&AgentEvent::PeerSilent));
    assert_eq!(pair.hub.poll_timeout(), None);
}

#[test]
fn poll_timeout_names_the_next_heartbeat() {
    let mut pair = Pair::new();
    pair.connect();
    assert_eq!(
        pair.agent.poll_timeout(),
        Some(pair.now + Duration::from_secs(15))
    );
    assert_eq!(
        pair.hub.poll_timeout(),
        Some(pair.now + Duration::from_secs(60))
    );
}

#[test]
fn a_refused_bundle_is_acknowledged_with_its_typed_rejection() {
    let mut pair = Pair::new();
    pair.connect();
    let mut bundle = fixture::bundle("web", 1, 1);
    bundle.cluster = "west".to_owned();
    let envelope = pair.signer.sign(&bundle).unwrap();
    pair.hub.publish(AppRef::new("default", "web"), envelope);
    pair.drive();
    // The agent could not tell the app (it refused the bundle unread); the hub's
    // session names it from the digest, so the refusal reaches the app's status.
    assert!(pair.hub_events.iter().any(|e| matches!(
        e,
        HubEvent::BundleAck(BundleAck {
            app: Some(app),
            outcome: BundleOutcome::Rejected(Rejection::WrongCluster),
            ..
        }) if *app == AppRef::new("default", "web")
    )));
    assert_eq!(pair.applied_generation("web"), None);
    assert_eq!(pair.hub.apps_behind(), vec![AppRef::new("default", "web")]);
}

#[test]
fn a_command_comes_back_with_its_result() {
    let mut pair = Pair::new();
    pair.connect();
    let command = Command {
        request_id: 9,
        app: AppRef::new("default", "web"),
        kind: CommandKind::Sync(SyncOptions::default()),
    };
    pair.hub.send_command(command.clone()).unwrap();
    pair.drive();
    assert!(pair.agent_events.contains(&AgentEvent::Command(command)));
    let result = CommandResult {
        request_id: 9,
        outcome: CommandOutcome::Done {
            message: "synced".to_owned(),
        },
        drift: Vec::new(),
        diffs: Vec::new(),
    };
    pair.agent.command_result(result.clone()).unwrap();
    pair.drive();
    assert!(pair.hub_events.contains(&HubEvent::CommandResult(result)));
}

#[test]
fn a_key_set_update_reaches_the_agent() {
    let mut pair = Pair::new();
    pair.connect();
    let next = KeySet::new(2, &[fixture::signer(2).public_key()]).unwrap();
    let update = pair.signer.sign_key_set(&next);
    pair.hub.send_key_set_update(update.clone()).unwrap();
    pair.drive();
    assert!(
        pair.agent_events
            .contains(&AgentEvent::KeySetUpdate(update.clone()))
    );
    assert_eq!(pair.trusted.apply_update(&update).unwrap(), next);
}

#[test]
fn registration_returns_a_certificate_and_key_set() {
    let mut pair = Pair::new();
    pair.connected = true;
    pair.hub.handle_connected(pair.now);
    let register = Register {
        token: "token".to_owned(),
        public_key: [3; 32],
        facts: ClusterFacts {
            kubernetes_version: "v1.35.0".to_owned(),
            api_resources: Vec::new(),
            api_server_url: "https://127.0.0.1:6443".to_owned(),
            kube_system_uid: "uid".to_owned(),
        },
    };
    pair.agent
        .handle_connected_to_register(pair.now, register.clone());
    pair.drive();
    assert!(pair.hub_events.contains(&HubEvent::Registering(register)));
    let registered = Registered {
        certificate: vec![1, 2, 3],
        key_set: pair.trusted.clone(),
    };
    pair.hub.accept_registration(registered.clone()).unwrap();
    pair.drive();
    assert!(
        pair.agent_events
            .contains(&AgentEvent::Registered(registered))
    );
}

#[test]
fn a_refused_registration_says_goodbye() {
    let mut pair = Pair::new();
    pair.connected = true;
    pair.hub.handle_connected(pair.now);
    pair.agent.handle_connected_to_register(
        pair.now,
        Register {
            token: "used".to_owned(),
            public_key: [3; 32],
            facts: ClusterFacts::default(),
        },
    );
    pair.drive();
    pair.hub.refuse_registration("token already used");
    pair.drive();
    assert!(pair.agent_events.iter().any(|e| matches!(
        e,
        AgentEvent::Goodbye(Goodbye {
            reason: GoodbyeReason::RegistrationRefused,
            ..
        })
    )));
}

#[test]
fn a_message_out_of_turn_is_a_protocol_violation() {
    let now = Instant::now();
    let mut hub = HubSession::new(Timing::default());
    hub.handle_connected(now);
    let result = hub.handle_message(now, Message::StatusAck(StatusAck { sequence: 1 }));
    assert!(matches!(result, Err(Error::Unexpected { .. })));
    assert!(matches!(
        hub.poll_transmit().map(|t| t.message),
        Some(Message::Goodbye(Goodbye {
            reason: GoodbyeReason::ProtocolViolation,
            ..
        }))
    ));
}

#[test]
fn an_older_bundle_does_not_replace_a_newer_one_on_the_hub() {
    let mut hub = HubSession::new(Timing::default());
    let signer = fixture::signer(1);
    let app = AppRef::new("default", "web");
    assert!(hub.publish(
        app.clone(),
        signer.sign(&fixture::bundle("web", 2, 1)).unwrap()
    ));
    assert!(!hub.publish(app, signer.sign(&fixture::bundle("web", 1, 1)).unwrap()));
}

#[test]
fn a_renewal_request_comes_back_with_a_certificate() {
    let mut pair = Pair::new();
    pair.connect();
    pair.agent.request_renewal([7; 32]).unwrap();
    pair.drive();
    assert!(pair.hub_events.contains(&HubEvent::Renew(Renew {
        public_key: [7; 32]
    })));
    pair.hub.accept_renewal(vec![4, 5, 6]).unwrap();
    pair.drive();
    assert!(pair.agent_events.contains(&AgentEvent::Renewed(Renewed {
        certificate: vec![4, 5, 6]
    })));
    // The session carries on: bundles still flow after a renewal.
    pair.publish("web", 1);
    assert_eq!(pair.applied_generation("web"), Some(1));
}

#[test]
fn a_refused_renewal_reaches_the_agent_with_its_reason_and_keeps_the_session() {
    let mut pair = Pair::new();
    pair.connect();
    pair.agent.request_renewal([7; 32]).unwrap();
    pair.drive();
    pair.hub.refuse_renewal("the CA is unavailable").unwrap();
    pair.drive();
    assert!(
        pair.agent_events
            .contains(&AgentEvent::RenewalRefused(RenewalRefused {
                reason: "the CA is unavailable".to_owned()
            }))
    );
    assert_eq!(pair.hub.version(), Some(1));
    assert_eq!(pair.agent.version(), Some(1));
}

#[test]
fn renewal_needs_an_established_session() {
    let now = Instant::now();
    let mut agent = AgentSession::new(Timing::default(), Vec::new(), Vec::new());
    assert!(matches!(
        agent.request_renewal([1; 32]),
        Err(Error::NotReady { .. })
    ));
    // A hub that has not welcomed the agent treats Renew as out of turn.
    let mut hub = HubSession::new(Timing::default());
    hub.handle_connected(now);
    let result = hub.handle_message(
        now,
        Message::Renew(Renew {
            public_key: [1; 32],
        }),
    );
    assert!(matches!(result, Err(Error::Unexpected { .. })));
    assert!(matches!(
        hub.accept_renewal(vec![1]),
        Err(Error::NotReady { .. })
    ));
}

#[test]
fn the_hub_lets_go_of_a_bundle_the_agent_applied_and_takes_it_again_to_resend() {
    let mut pair = Pair::new();
    pair.connect();
    pair.publish("web", 1);
    assert_eq!(pair.applied_generation("web"), Some(1));
    assert_eq!(pair.hub.bundles_held(), 0);

    // Published while the agent is away: held until the agent has applied it.
    pair.disconnect();
    pair.publish("web", 2);
    assert_eq!(pair.hub.bundles_held(), 1);
    pair.connect();
    assert_eq!(pair.applied_generation("web"), Some(2));
    assert_eq!(pair.hub.bundles_held(), 0);

    // An agent that lost its store says so in its Hello; the released bundle
    // cannot travel until the driver publishes it again, and then it does.
    pair.disconnect();
    pair.agent = AgentSession::new(Timing::default(), Vec::new(), Vec::new());
    pair.delivered.clear();
    pair.connect();
    assert!(pair.delivered.is_empty());
    assert_eq!(pair.hub.apps_behind(), vec![AppRef::new("default", "web")]);
    pair.publish("web", 2);
    assert_eq!(pair.delivered, vec![(AppRef::new("default", "web"), 2)]);
    assert_eq!(pair.hub.bundles_held(), 0);
}

#[test]
fn acks_for_apps_the_hub_never_published_are_passed_on_but_not_tracked() {
    let mut pair = Pair::new();
    pair.connect();
    pair.publish("web", 1);
    assert_eq!(pair.hub.apps_applied(), 1);
    for i in 0..100 {
        let ack = Message::BundleAck(BundleAck {
            app: Some(AppRef::new("default", format!("made-up-{i}"))),
            generation: 1,
            digest: Digest::of(b"made up"),
            outcome: BundleOutcome::Applied,
        });
        pair.hub.handle_message(pair.now, ack).unwrap();
    }
    // The driver still sees each one, to refuse and count it.
    let passed_on = std::iter::from_fn(|| pair.hub.poll_event())
        .filter(|e| matches!(e, HubEvent::BundleAck(_)))
        .count();
    assert_eq!(passed_on, 100);
    assert_eq!(pair.hub.apps_applied(), 1);
    assert!(pair.hub.apps_behind().is_empty());
}

#[test]
fn facts_reach_the_hub_only_from_an_established_session() {
    let facts = crate::model::ClusterFacts {
        kubernetes_version: "v1.36.0".to_owned(),
        ..Default::default()
    };
    let mut early = AgentSession::new(Timing::default(), Vec::new(), Vec::new());
    assert!(matches!(
        early.report_facts(facts.clone()),
        Err(Error::NotReady { .. })
    ));
    let mut hub = HubSession::new(Timing::default());
    hub.handle_connected(Instant::now());
    assert!(matches!(
        hub.handle_message(Instant::now(), Message::Facts(facts.clone())),
        Err(Error::Unexpected { .. })
    ));

    let mut pair = Pair::new();
    pair.connect();
    pair.agent.report_facts(facts.clone()).unwrap();
    pair.drive();
    assert!(pair.hub_events.contains(&HubEvent::Facts(facts)));
}

#[test]
fn a_bundle_that_arrives_before_the_welcome_is_held_until_the_session_is_up() {
    let mut pair = Pair::new();
    pair.connected = true;
    pair.hub.handle_connected(pair.now);
    pair.agent.handle_connected(pair.now);
    // The bundle's own stream beats the control stream carrying the Welcome.
    let envelope = pair.signer.sign(&fixture::bundle("web", 1, 2)).unwrap();
    pair.agent
        .handle_message(pair.now, Message::Bundle(envelope))
        .unwrap();
    assert_eq!(pair.agent.poll_event(), None);
    pair.drive();
    assert_eq!(pair.applied_generation("web"), Some(1));
    let established = pair
        .agent_events
        .iter()
        .position(|e| matches!(e, AgentEvent::Established { .. }));
    let bundle = pair
        .agent_events
        .iter()
        .position(|e| matches!(e, AgentEvent::Bundle(_)));
    assert!(established < bundle, "{:?}", pair.agent_events);
}

#[test]
fn more_bundles_before_the_welcome_than_a_hub_sends_is_a_protocol_violation() {
    let signer = fixture::signer(1);
    let now = Instant::now();
    let mut agent = AgentSession::new(Timing::default(), Vec::new(), Vec::new());
    agent.handle_connected(now);
    let envelope = signer.sign(&fixture::bundle("web", 1, 2)).unwrap();
    for _ in 0..64 {
        agent
            .handle_message(now, Message::Bundle(envelope.clone()))
            .unwrap();
    }
    let result = agent.handle_message(now, Message::Bundle(envelope));
    assert!(matches!(result, Err(Error::Unexpected { .. })));
    let sent: Vec<Message> = std::iter::from_fn(|| agent.poll_transmit())
        .map(|t| t.message)
        .collect();
    assert!(
        sent.iter().any(|m| matches!(m, Message::Goodbye(g)
            if g.reason == GoodbyeReason::ProtocolViolation)),
        "{sent:?}"
    );
}

#[test]
fn a_renewal_is_raised_when_due_once_established_and_again_after_a_refusal() {
    let mut pair = Pair::new();
    let due = |pair: &Pair| {
        pair.agent_events
            .iter()
            .filter(|e| **e == AgentEvent::RenewalDue)
            .count()
    };
    // Due already, but nothing is asked before the session is up.
    pair.agent
        .schedule_renewal(pair.now, Some(pair.now + Duration::from_secs(410)));
    pair.agent.handle_timeout(pair.now);
    assert_eq!(pair.agent.poll_event(), None);
    pair.connect();
    assert_eq!(pair.agent.poll_timeout(), Some(pair.now));
    pair.advance(Duration::from_secs(10));
    assert_eq!(due(&pair), 1);
    // Raised once: the driver is making a key pair.
    pair.advance(Duration::from_secs(10));
    assert_eq!(due(&pair), 1);

    pair.agent.request_renewal([7; 32]).unwrap();
    pair.drive();
    pair.hub.refuse_renewal("the CA is unavailable").unwrap();
    pair.drive();
    // Asked again after a quarter of the remaining 390 s: 97.5 s.
    for _ in 0..9 {
        pair.advance(Duration::from_secs(10));
    }
    assert_eq!(due(&pair), 1);
    pair.advance(Duration::from_secs(10));
    assert_eq!(due(&pair), 2);

    // A driver that cannot make a key pair asks again, as after a refusal:
    // a quarter of the remaining 290 s, 72.5 s.
    pair.agent.renewal_failed(pair.now);
    for _ in 0..7 {
        pair.advance(Duration::from_secs(10));
    }
    assert_eq!(due(&pair), 2);
    pair.advance(Duration::from_secs(10));
    assert_eq!(due(&pair), 3);
    assert_eq!(pair.agent.version(), Some(1));
}

#[test]
fn only_a_certificate_that_was_asked_for_is_raised() {
    let mut pair = Pair::new();
    pair.connect();
    let renewed = Renewed {
        certificate: vec![4, 5, 6],
    };
    pair.agent
        .handle_message(pair.now, Message::Renewed(renewed.clone()))
        .unwrap();
    pair.drive();
    assert!(
        !pair
            .agent_events
            .contains(&AgentEvent::Renewed(renewed.clone()))
    );

    pair.agent.request_renewal([7; 32]).unwrap();
    pair.drive();
    pair.hub
        .accept_renewal(renewed.certificate.clone())
        .unwrap();
    pair.drive();
    assert!(
        pair.agent_events
            .contains(&AgentEvent::Renewed(renewed.clone()))
    );

    // A renewal asked for on a lost connection is forgotten with it.
    pair.agent.request_renewal([8; 32]).unwrap();
    pair.drive();
    pair.disconnect();
    pair.agent
        .schedule_renewal(pair.now + Duration::from_secs(3600), None);
    pair.connect();
    pair.agent_events.clear();
    pair.agent
        .handle_message(pair.now, Message::Renewed(renewed.clone()))
        .unwrap();
    pair.drive();
    assert!(!pair.agent_events.contains(&AgentEvent::Renewed(renewed)));
}

fn hello() -> Message {
    Message::Hello(Hello {
        versions: SUPPORTED_VERSIONS.to_vec(),
        applied: Vec::new(),
        agent_version: "0.1.0".to_owned(),
    })
}

fn numbered(app: &str, sequence: u64) -> Message {
    Message::Status(Status {
        sequence,
        ..status(app)
    })
}

/// A connected hub session that has stored the agent's reports up to `stored`,
/// waiting for the agent's Hello.
fn connected_hub(stored: u64) -> (Instant, HubSession) {
    let now = Instant::now();
    let mut hub = HubSession::new(Timing::default());
    hub.resume_after_status(stored);
    hub.handle_connected(now);
    (now, hub)
}

/// The sequences of the status reports `hub` hands over, in order.
fn handed_over(hub: &mut HubSession) -> Vec<u64> {
    std::iter::from_fn(|| hub.poll_event())
        .filter_map(|event| match event {
            HubEvent::Status(status) => Some(status.sequence),
            _ => None,
        })
        .collect()
}

/// The sequences `hub` acknowledges, in order.
fn acknowledged(hub: &mut HubSession) -> Vec<u64> {
    std::iter::from_fn(|| hub.poll_transmit())
        .filter_map(|transmit| match transmit.message {
            Message::StatusAck(ack) => Some(ack.sequence),
            _ => None,
        })
        .collect()
}

#[test]
fn status_reports_that_overtake_the_hello_are_handed_over_once_established() {
    let (now, mut hub) = connected_hub(0);
    hub.handle_message(now, numbered("web", 1)).unwrap();
    hub.handle_message(now, numbered("api", 2)).unwrap();
    assert_eq!(hub.poll_event(), None);
    assert!(hub.poll_transmit().is_none());

    hub.handle_message(now, hello()).unwrap();
    assert!(matches!(
        hub.poll_event(),
        Some(HubEvent::Established { .. })
    ));
    assert_eq!(handed_over(&mut hub), vec![1, 2]);
}

#[test]
fn too_many_status_reports_before_the_hello_close_the_session() {
    let (now, mut hub) = connected_hub(0);
    for sequence in 1..=MAX_EARLY_STATUS as u64 {
        hub.handle_message(now, numbered("web", sequence)).unwrap();
    }
    let result = hub.handle_message(now, numbered("web", 100));
    assert!(
        matches!(result, Err(Error::StatusBeforeHello)),
        "{result:?}"
    );
    assert!(hub.is_closing());
    let Some(Transmit {
        message: Message::Goodbye(goodbye),
        ..
    }) = hub.poll_transmit()
    else {
        panic!("expected a goodbye");
    };
    assert_eq!(goodbye.reason, GoodbyeReason::ProtocolViolation);
    // The Hello that comes too late establishes nothing.
    hub.handle_message(now, hello()).unwrap();
    assert_eq!(hub.version(), None);
    assert_eq!(hub.poll_event(), None);
}

#[test]
fn a_stored_status_whose_ack_was_lost_is_acknowledged_again_not_handed_over() {
    let mut pair = Pair::new();
    pair.connect();
    let sequence = pair.agent.report_status(status("web"));
    // The report reaches the hub, which stores and acknowledges it; the link
    // drops before the ack reaches the agent.
    let transmit = pair.agent.poll_transmit().unwrap();
    let message = pair.wire(&transmit);
    pair.hub.handle_message(pair.now, message).unwrap();
    let Some(HubEvent::Status(stored)) = pair.hub.poll_event() else {
        panic!("expected the status");
    };
    pair.hub.ack_status(stored.sequence);
    assert!(pair.hub.poll_transmit().is_some());
    pair.disconnect();
    assert_eq!(pair.agent.unacknowledged().count(), 1);

    pair.connect();
    // The agent sent it again and got its ack, but the hub's driver never saw
    // it a second time.
    assert_eq!(pair.statuses_delivered, vec![sequence]);
    assert_eq!(pair.agent.unacknowledged().count(), 0);
    assert!(
        !pair
            .hub_events
            .iter()
            .any(|e| matches!(e, HubEvent::Status(_))),
        "{:?}",
        pair.hub_events
    );
    // A new report still goes through.
    let next = pair.agent.report_status(status("web"));
    pair.drive();
    assert!(
        pair.hub_events
            .iter()
            .any(|e| matches!(e, HubEvent::Status(s) if s.sequence == next))
    );
}

#[test]
fn a_restarted_hub_resumes_after_the_last_stored_status() {
    let (now, mut hub) = connected_hub(5);
    hub.handle_message(now, hello()).unwrap();
    while hub.poll_transmit().is_some() {}
    while hub.poll_event().is_some() {}

    hub.handle_message(now, numbered("web", 5)).unwrap();
    assert!(handed_over(&mut hub).is_empty());
    assert_eq!(acknowledged(&mut hub), vec![5]);
    hub.handle_message(now, numbered("web", 6)).unwrap();
    assert_eq!(handed_over(&mut hub), vec![6]);
    // Not acknowledged (the driver failed to store it): a copy is handed over
    // again rather than acknowledged unstored.
    hub.handle_message(now, numbered("web", 6)).unwrap();
    assert_eq!(handed_over(&mut hub), vec![6]);
    assert!(acknowledged(&mut hub).is_empty());
}

#[test]
fn early_copies_of_one_report_are_handed_over_once() {
    let (now, mut hub) = connected_hub(1);
    hub.handle_message(now, numbered("web", 1)).unwrap();
    hub.handle_message(now, numbered("web", 2)).unwrap();
    hub.handle_message(now, numbered("web", 2)).unwrap();
    hub.handle_message(now, hello()).unwrap();
    assert_eq!(handed_over(&mut hub), vec![2]);
    // Report 1 was stored before: acknowledged again at once.
    assert_eq!(acknowledged(&mut hub), vec![1]);
}

#[test]
fn a_renewal_for_a_removed_cluster_ends_the_session_as_revoked() {
    let mut pair = Pair::new();
    pair.connect();
    pair.agent.request_renewal([7; 32]).unwrap();
    pair.drive();
    pair.hub
        .refuse_renewal_of_removed_cluster("cluster east is not registered")
        .unwrap();
    assert!(pair.hub.is_closing());
    pair.drive();
    assert!(pair.agent_events.iter().any(|e| matches!(
        e,
        AgentEvent::Goodbye(Goodbye {
            reason: GoodbyeReason::Revoked,
            ..
        })
    )));
}

#[test]
fn a_renewal_is_answered_only_when_asked_for_and_once() {
    let mut pair = Pair::new();
    pair.connect();
    assert!(matches!(
        pair.hub.accept_renewal(vec![1]),
        Err(Error::NotReady { .. })
    ));
    pair.agent.request_renewal([7; 32]).unwrap();
    pair.drive();
    pair.hub.accept_renewal(vec![1]).unwrap();
    assert!(matches!(
        pair.hub.refuse_renewal("twice"),
        Err(Error::NotReady { .. })
    ));
}
