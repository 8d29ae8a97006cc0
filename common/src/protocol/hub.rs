//! The hub's side of one agent's sessions.

use super::*;

/// Where the hub's conversation with one agent stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No connection.
    Down,
    /// Connected; waiting for `Hello` or `Register`.
    Opening,
    /// `Register` received; waiting for the driver to accept or refuse it.
    Registering,
    /// `Welcome` sent.
    Up(ProtocolVersion),
    /// `Goodbye` queued; waiting for the driver to drop the connection.
    Closing,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Down => "disconnected",
            State::Opening => "waiting for hello",
            State::Registering => "registering",
            State::Up(_) => "established",
            State::Closing => "closing",
        }
    }
}

/// What the hub driver must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubEvent {
    /// An agent asks to register; answer with [`HubSession::accept_registration`]
    /// or [`HubSession::refuse_registration`].
    Registering(Register),
    /// The session is established at `version`; `applied` is what the agent has.
    Established {
        /// The negotiated version.
        version: ProtocolVersion,
        /// The agent's last applied bundle per app.
        applied: Vec<Applied>,
    },
    /// The agent speaks no version the hub does; a `Goodbye` saying so is queued.
    VersionRefused {
        /// The versions it offered.
        offered: Vec<ProtocolVersion>,
    },
    /// What became of a bundle.
    BundleAck(BundleAck),
    /// A status report the hub has not stored yet: store it, then call
    /// [`HubSession::ack_status`]. Copies of reports already acknowledged are
    /// acknowledged again by the session and never show up here.
    Status(Status),
    /// What became of a command.
    CommandResult(CommandResult),
    /// The agent asks for a new client certificate; answer with
    /// [`HubSession::accept_renewal`], [`HubSession::refuse_renewal`] or, if the
    /// cluster is gone, [`HubSession::refuse_renewal_of_removed_cluster`].
    Renew(Renew),
    /// The agent's cluster as it is now: record it in place of what it reported
    /// before. It speaks only for its own cluster, which its certificate names.
    Facts(ClusterFacts),
    /// The agent said goodbye.
    Goodbye(Goodbye),
    /// Nothing heard from the agent for too long; drop the connection.
    PeerSilent,
}

/// How many status reports may arrive ahead of the `Hello` before the agent is
/// taken to be misbehaving.
pub const MAX_EARLY_STATUS: usize = 64;

/// The newest bundle of one app. Its envelope is kept only while the agent may
/// still need it: once the agent has applied that generation only the
/// generation and digest stay, so a hub does not hold every bundle it pushed
/// once per connected agent (100 KiB each, 1 GB for 10,000 agents).
#[derive(Debug)]
struct Latest {
    generation: u64,
    digest: Digest,
    /// Boxed: a map allocates room for eleven entries at once, and an
    /// `Envelope` is a few hundred bytes even when its payload is elsewhere.
    envelope: Option<Box<Envelope>>,
}

/// The hub's state machine for one agent. It lives as long as the cluster is
/// registered, across connections.
#[derive(Debug)]
pub struct HubSession {
    timing: Timing,
    state: State,
    liveness: Option<Liveness>,
    /// The newest signed bundle per app.
    latest: BTreeMap<AppRef, Latest>,
    /// What the agent has applied, from `Hello` and acks.
    peer_applied: BTreeMap<AppRef, (u64, Digest)>,
    /// Generations sent on this connection and not yet acknowledged.
    in_flight: BTreeMap<AppRef, u64>,
    /// Status reports that came before the `Hello`: status streams and the
    /// control stream race, so a report can overtake the `Hello` sent ahead of
    /// it. Handed over once the session is established.
    early_status: Vec<Status>,
    /// The highest status sequence the driver has stored and acknowledged.
    status_stored: u64,
    /// `Renew` requests handed to the driver and not answered yet.
    renewals_asked: usize,
    transmits: VecDeque<Transmit>,
    events: VecDeque<HubEvent>,
}

impl HubSession {
    /// A session with no connection yet.
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            state: State::Down,
            liveness: None,
            latest: BTreeMap::new(),
            peer_applied: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            early_status: Vec::new(),
            status_stored: 0,
            renewals_asked: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The agent connected.
    pub fn handle_connected(&mut self, now: Instant) {
        self.state = State::Opening;
        self.liveness = Some(Liveness::new(now, self.timing.silence_limit));
        self.forget_connection();
    }

    /// The connection is gone. Anything unsent is dropped; what the agent still
    /// needs is worked out again from its next `Hello`.
    pub fn handle_disconnected(&mut self, _now: Instant) {
        self.state = State::Down;
        self.liveness = None;
        self.forget_connection();
    }

    /// Drops what belongs to one connection only.
    fn forget_connection(&mut self) {
        self.in_flight.clear();
        self.transmits.clear();
        self.early_status = Vec::new();
        self.renewals_asked = 0;
    }

    /// The agent's status reports up to `sequence` are stored already (the
    /// driver keeps this mark across restarts): copies of them that the agent
    /// sends again are acknowledged at once and not handed over.
    pub fn resume_after_status(&mut self, sequence: u64) {
        self.status_stored = self.status_stored.max(sequence);
    }

    /// A message from the agent.
    pub fn handle_message(&mut self, now: Instant, message: Message) -> Result<()> {
        if let Some(liveness) = &mut self.liveness {
            liveness.heard(now);
        }
        match (self.state, message) {
            (State::Down | State::Closing, _) => Ok(()),
            (_, Message::Goodbye(goodbye)) => {
                self.state = State::Closing;
                self.events.push_back(HubEvent::Goodbye(goodbye));
                Ok(())
            }
            (State::Opening, Message::Register(register)) => {
                self.state = State::Registering;
                self.events.push_back(HubEvent::Registering(register));
                Ok(())
            }
            (State::Opening | State::Registering, Message::Status(status)) => {
                if self.early_status.len() >= MAX_EARLY_STATUS {
                    self.close(
                        GoodbyeReason::ProtocolViolation,
                        Error::StatusBeforeHello.to_string(),
                    );
                    return Err(Error::StatusBeforeHello);
                }
                self.early_status.push(status);
                Ok(())
            }
            (State::Opening, Message::Hello(hello)) => {
                self.handle_hello(hello);
                Ok(())
            }
            (State::Up(_), Message::Heartbeat(heartbeat)) => {
                self.transmits
                    .push_back(Transmit::new(Message::Heartbeat(heartbeat)));
                Ok(())
            }
            (State::Up(_), Message::BundleAck(ack)) => {
                let ack = self.handle_bundle_ack(ack);
                self.events.push_back(HubEvent::BundleAck(ack));
                Ok(())
            }
            (State::Up(_), Message::Status(status)) => {
                self.handle_status(status);
                Ok(())
            }
            (State::Up(_), Message::CommandResult(result)) => {
                self.events.push_back(HubEvent::CommandResult(result));
                Ok(())
            }
            (State::Up(_), Message::Renew(renew)) => {
                self.renewals_asked += 1;
                self.events.push_back(HubEvent::Renew(renew));
                Ok(())
            }
            (State::Up(_), Message::Facts(facts)) => {
                self.events.push_back(HubEvent::Facts(facts));
                Ok(())
            }
            (state, message) => {
                let error = Error::Unexpected {
                    message: message_name(&message),
                    state: state.name(),
                };
                self.close(GoodbyeReason::ProtocolViolation, error.to_string());
                Err(error)
            }
        }
    }

    fn handle_hello(&mut self, hello: Hello) {
        let Some(version) = negotiate(&hello.versions) else {
            self.close(
                GoodbyeReason::UnsupportedVersion {
                    offered: hello.versions.clone(),
                    supported: SUPPORTED_VERSIONS.to_vec(),
                },
                format!(
                    "this hub speaks protocol versions {SUPPORTED_VERSIONS:?}, the agent offered {:?}; upgrade the agent",
                    hello.versions
                ),
            );
            self.events.push_back(HubEvent::VersionRefused {
                offered: hello.versions,
            });
            return;
        };
        self.state = State::Up(version);
        self.peer_applied = hello
            .applied
            .iter()
            .map(|applied| (applied.app.clone(), (applied.generation, applied.digest)))
            .collect();
        self.transmits
            .push_back(Transmit::new(Message::Welcome(Welcome {
                version,
                heartbeat_interval_ms: u64::try_from(self.timing.heartbeat_interval.as_millis())
                    .unwrap_or(u64::MAX),
            })));
        self.events.push_back(HubEvent::Established {
            version,
            applied: hello.applied,
        });
        let needed: Vec<AppRef> = self
            .latest
            .keys()
            .filter(|app| self.peer_needs(app))
            .cloned()
            .collect();
        for app in needed {
            self.send_bundle(&app);
        }
        let apps: Vec<AppRef> = self.latest.keys().cloned().collect();
        for app in apps {
            self.release_if_applied(&app);
        }
        let mut replayed = self.status_stored;
        for status in std::mem::take(&mut self.early_status) {
            // Two copies of one report, both ahead of the Hello: the driver
            // gets the first; the second is neither handed over nor
            // acknowledged, so nothing unstored is ever acknowledged.
            if status.sequence > self.status_stored && status.sequence <= replayed {
                continue;
            }
            replayed = replayed.max(status.sequence);
            self.handle_status(status);
        }
    }

    /// Hands a report the driver has not stored yet over; acknowledges a copy
    /// of one it has.
    fn handle_status(&mut self, status: Status) {
        if status.sequence <= self.status_stored {
            self.ack_status(status.sequence);
        } else {
            self.events.push_back(HubEvent::Status(status));
        }
    }

    /// Drops the envelope of `app` if the agent has applied its generation.
    fn release_if_applied(&mut self, app: &AppRef) {
        if !matches!(self.state, State::Up(_)) {
            return;
        }
        let applied = self
            .peer_applied
            .get(app)
            .map(|(generation, _)| *generation);
        if let Some(latest) = self.latest.get_mut(app)
            && applied.is_some_and(|generation| generation >= latest.generation)
        {
            latest.envelope = None;
        }
    }

    /// How many bundles the session holds in full, waiting for the agent to
    /// apply them.
    pub fn bundles_held(&self) -> usize {
        self.latest
            .values()
            .filter(|latest| latest.envelope.is_some())
            .count()
    }

    /// Tracks what the ack says and returns it with its app filled in: an agent
    /// that refuses a bundle before it can read the app inside (a bad signature, an
    /// expired envelope) names none, and the digest of a bundle this session
    /// published tells which it was.
    fn handle_bundle_ack(&mut self, mut ack: BundleAck) -> BundleAck {
        if ack.app.is_none() {
            ack.app = self
                .latest
                .iter()
                .find(|(_, latest)| latest.digest == ack.digest)
                .map(|(app, _)| app.clone());
        }
        // Only apps this session published are the agent's to acknowledge; any
        // other would grow the session without bound, one made-up app per ack.
        let Some(app) = ack.app.clone().filter(|app| self.latest.contains_key(app)) else {
            return ack;
        };
        if self.in_flight.get(&app) == Some(&ack.generation) {
            self.in_flight.remove(&app);
        }
        if ack.outcome == BundleOutcome::Applied {
            let newer = self
                .peer_applied
                .get(&app)
                .is_none_or(|(generation, _)| ack.generation > *generation);
            if newer {
                self.peer_applied
                    .insert(app.clone(), (ack.generation, ack.digest));
            }
            self.release_if_applied(&app);
        }
        ack
    }

    /// Whether the agent lacks the newest bundle of `app` and it is not on its way.
    fn peer_needs(&self, app: &AppRef) -> bool {
        let Some(latest) = self.latest.get(app) else {
            return false;
        };
        let applied_older = self
            .peer_applied
            .get(app)
            .is_none_or(|(generation, _)| latest.generation > *generation);
        applied_older
            && latest.envelope.is_some()
            && self.in_flight.get(app) != Some(&latest.generation)
    }

    fn send_bundle(&mut self, app: &AppRef) {
        if let Some(envelope) = self.latest.get(app).and_then(|l| l.envelope.as_ref()) {
            self.in_flight.insert(app.clone(), envelope.generation);
            self.transmits
                .push_back(Transmit::new(Message::Bundle(Envelope::clone(envelope))));
        }
    }

    /// Makes `envelope` the newest bundle of `app` and sends it if the agent is
    /// connected and lacks it. An envelope not newer than the one held is ignored
    /// (unless the session released that generation once the agent applied it:
    /// publishing it again lets it be resent to an agent that lost it); returns
    /// whether it was taken.
    pub fn publish(&mut self, app: AppRef, envelope: Envelope) -> bool {
        let taken = self.latest.get(&app).is_none_or(|held| {
            envelope.generation > held.generation
                || (envelope.generation == held.generation && held.envelope.is_none())
        });
        if !taken {
            return false;
        }
        let latest = Latest {
            generation: envelope.generation,
            digest: envelope.digest,
            envelope: Some(Box::new(envelope)),
        };
        self.latest.insert(app.clone(), latest);
        if matches!(self.state, State::Up(_)) && self.peer_needs(&app) {
            self.send_bundle(&app);
        }
        self.release_if_applied(&app);
        true
    }

    /// How many apps the session holds the agent's applied generation of.
    pub fn apps_applied(&self) -> usize {
        self.peer_applied.len()
    }

    /// Apps whose newest bundle the agent has not acknowledged as applied.
    pub fn apps_behind(&self) -> Vec<AppRef> {
        self.latest
            .iter()
            .filter(|(app, latest)| {
                self.peer_applied
                    .get(*app)
                    .is_none_or(|(generation, _)| latest.generation > *generation)
            })
            .map(|(app, _)| app.clone())
            .collect()
    }

    /// Accepts a pending registration.
    pub fn accept_registration(&mut self, registered: Registered) -> Result<()> {
        if self.state != State::Registering {
            return Err(Error::NotReady {
                action: "accept a registration",
                state: self.state.name(),
            });
        }
        self.transmits
            .push_back(Transmit::new(Message::Registered(registered)));
        Ok(())
    }

    /// Refuses a pending registration and closes the session.
    pub fn refuse_registration(&mut self, message: impl Into<String>) {
        self.close(GoodbyeReason::RegistrationRefused, message);
    }

    /// Acknowledges a status report, once the driver has stored it (or decided
    /// to keep nothing of it): the agent stops sending it, and a copy that comes
    /// again is acknowledged without being handed over.
    pub fn ack_status(&mut self, sequence: u64) {
        self.status_stored = self.status_stored.max(sequence);
        if matches!(self.state, State::Up(_)) {
            self.transmits
                .push_back(Transmit::new(Message::StatusAck(StatusAck { sequence })));
        }
    }

    /// Sends a command.
    pub fn send_command(&mut self, command: Command) -> Result<()> {
        self.send_when_up("send a command", Message::Command(command))
    }

    /// Sends the renewed client certificate, DER, in answer to a `Renew`.
    pub fn accept_renewal(&mut self, certificate: Vec<u8>) -> Result<()> {
        self.answer_renewal("send a renewed certificate")?;
        self.transmits
            .push_back(Transmit::new(Message::Renewed(Renewed { certificate })));
        Ok(())
    }

    /// Tells the agent its certificate was not renewed this time (the request
    /// was early, the CA failed); the session stays up and the agent asks again
    /// later.
    pub fn refuse_renewal(&mut self, reason: impl Into<String>) -> Result<()> {
        self.answer_renewal("refuse a renewal")?;
        self.transmits
            .push_back(Transmit::new(Message::RenewalRefused(RenewalRefused {
                reason: reason.into(),
            })));
        Ok(())
    }

    /// Answers a `Renew` from a cluster that is no longer registered: the
    /// session ends with a `Goodbye` saying it was revoked.
    pub fn refuse_renewal_of_removed_cluster(&mut self, reason: impl Into<String>) -> Result<()> {
        self.answer_renewal("refuse a renewal")?;
        self.close(GoodbyeReason::Revoked, reason);
        Ok(())
    }

    /// Takes one `Renew` as answered: only an established session that was
    /// asked may answer.
    fn answer_renewal(&mut self, action: &'static str) -> Result<()> {
        if !matches!(self.state, State::Up(_)) {
            return Err(Error::NotReady {
                action,
                state: self.state.name(),
            });
        }
        if self.renewals_asked == 0 {
            return Err(Error::NotReady {
                action,
                state: "no renewal was asked for",
            });
        }
        self.renewals_asked -= 1;
        Ok(())
    }

    /// Sends a new key set.
    pub fn send_key_set_update(&mut self, update: KeySetUpdate) -> Result<()> {
        self.send_when_up("send a key set update", Message::KeySetUpdate(update))
    }

    fn send_when_up(&mut self, action: &'static str, message: Message) -> Result<()> {
        if !matches!(self.state, State::Up(_)) {
            return Err(Error::NotReady {
                action,
                state: self.state.name(),
            });
        }
        self.transmits.push_back(Transmit::new(message));
        Ok(())
    }

    /// Queues a `Goodbye` and stops accepting messages on this connection.
    pub fn close(&mut self, reason: GoodbyeReason, message: impl Into<String>) {
        if matches!(self.state, State::Down | State::Closing) {
            return;
        }
        self.transmits
            .push_back(Transmit::new(goodbye(reason, message)));
        self.state = State::Closing;
    }

    /// Time has passed; call at [`HubSession::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let overdue = self.liveness.is_some_and(|l| l.is_overdue(now));
        if overdue
            && matches!(
                self.state,
                State::Opening | State::Registering | State::Up(_)
            )
        {
            self.close(
                GoodbyeReason::HeartbeatTimeout,
                "no heartbeat from the agent",
            );
            self.events.push_back(HubEvent::PeerSilent);
        }
    }

    /// When to call [`HubSession::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Down | State::Closing => None,
            _ => self.liveness.map(|l| l.deadline()),
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let transmit = self.transmits.pop_front();
        if self.transmits.is_empty() {
            // A queue keeps its largest size; an idle agent's session should not
            // keep room for a burst of a few-hundred-byte messages.
            self.transmits = VecDeque::new();
        }
        transmit
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        let event = self.events.pop_front();
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        event
    }

    /// Whether the session has said goodbye (or heard one) and waits for the
    /// driver to drop the connection.
    pub fn is_closing(&self) -> bool {
        self.state == State::Closing
    }

    /// The negotiated version, once established.
    pub fn version(&self) -> Option<ProtocolVersion> {
        match self.state {
            State::Up(version) => Some(version),
            _ => None,
        }
    }
}
