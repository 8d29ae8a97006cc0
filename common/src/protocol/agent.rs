//! The agent's side of its sessions with the hub.

use super::*;

/// Where the agent's conversation with the hub stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No connection.
    Down,
    /// `Register` sent; waiting for `Registered`.
    Registering,
    /// `Hello` sent; waiting for `Welcome`.
    Opening,
    /// `Welcome` received.
    Up(ProtocolVersion),
    /// `Goodbye` sent or received; waiting for the driver to drop the connection.
    Closing,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Down => "disconnected",
            State::Registering => "registering",
            State::Opening => "waiting for welcome",
            State::Up(_) => "established",
            State::Closing => "closing",
        }
    }
}

/// Bundles the hub may send on their own streams before the `Welcome` that
/// precedes them on the control stream arrives; more is a broken hub.
const EARLY_BUNDLES: usize = 64;

/// The shortest and longest wait before asking again after a renewal failed.
const RENEWAL_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

/// Where renewing the client certificate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Renewal {
    /// The driver has not said when the certificate is due.
    Unscheduled,
    /// Ask at this moment (at once if it has passed), once established.
    Due(Instant),
    /// [`AgentEvent::RenewalDue`] is raised; the driver is making a key pair.
    Making,
    /// `Renew` sent; waiting for `Renewed` or `RenewalRefused`.
    Asked,
}

/// What the agent driver must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentEvent {
    /// Registration succeeded: store the certificate and key set, then reconnect
    /// with mutual TLS.
    Registered(Registered),
    /// The session is established at `version`.
    Established {
        /// The negotiated version.
        version: ProtocolVersion,
    },
    /// A bundle arrived: verify it, apply it, flush, then call
    /// [`AgentSession::bundle_outcome`].
    Bundle(Envelope),
    /// A command arrived: run it, then call [`AgentSession::command_result`].
    Command(Command),
    /// A new key set arrived: check it with
    /// [`KeySet::apply_update`](crate::signing::KeySet::apply_update).
    KeySetUpdate(KeySetUpdate),
    /// The hub stored a status report; drop it from the persistent outbox.
    StatusAcked {
        /// The report's sequence number.
        sequence: u64,
    },
    /// The hub issued a new client certificate for the key sent with
    /// [`AgentSession::request_renewal`]: persist it with that key, use it from
    /// the next connection on, and [`AgentSession::schedule_renewal`] the next
    /// renewal. One that was not asked for is dropped and never raised.
    Renewed(Renewed),
    /// The hub did not renew the certificate; the session asks again later.
    RenewalRefused(RenewalRefused),
    /// The certificate is due for renewal: make a key pair and pass its public
    /// half to [`AgentSession::request_renewal`], or call
    /// [`AgentSession::renewal_failed`].
    RenewalDue,
    /// The hub said goodbye.
    Goodbye(Goodbye),
    /// Nothing heard from the hub for too long; drop the connection.
    PeerSilent,
}

/// The agent's state machine. It lives as long as the agent process, across
/// connections, and is seeded from the agent's store at start.
#[derive(Debug)]
pub struct AgentSession {
    timing: Timing,
    state: State,
    liveness: Option<Liveness>,
    next_heartbeat: Option<Instant>,
    heartbeat_sequence: u64,
    /// The last applied bundle per app, reported in `Hello`.
    applied: BTreeMap<AppRef, (u64, Digest)>,
    /// Status reports the hub has not acknowledged, by sequence.
    outbox: BTreeMap<u64, Status>,
    next_status_sequence: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<AgentEvent>,
    /// Bundles that arrived before `Welcome` on this connection, in order.
    early: Vec<Envelope>,
    renewal: Renewal,
    /// When the current client certificate expires, if the driver could read it.
    certificate_expires: Option<Instant>,
}

impl AgentSession {
    /// A session seeded with what the agent has applied and the status reports
    /// it has not had acknowledged, both read from its store.
    pub fn new(timing: Timing, applied: Vec<Applied>, outbox: Vec<Status>) -> Self {
        let next_status_sequence = outbox
            .iter()
            .map(|status| status.sequence.saturating_add(1))
            .max()
            .unwrap_or(1);
        Self {
            timing,
            state: State::Down,
            liveness: None,
            next_heartbeat: None,
            heartbeat_sequence: 0,
            applied: applied
                .into_iter()
                .map(|a| (a.app, (a.generation, a.digest)))
                .collect(),
            outbox: outbox.into_iter().map(|s| (s.sequence, s)).collect(),
            next_status_sequence,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            early: Vec::new(),
            renewal: Renewal::Unscheduled,
            certificate_expires: None,
        }
    }

    fn open(&mut self, now: Instant, state: State) {
        self.state = state;
        self.liveness = Some(Liveness::new(now, self.timing.silence_limit));
        self.next_heartbeat = None;
        self.transmits.clear();
        self.early.clear();
    }

    /// Connected to the hub with a client certificate: says `Hello`.
    pub fn handle_connected(&mut self, now: Instant) {
        self.open(now, State::Opening);
        let hello = Hello {
            versions: SUPPORTED_VERSIONS.to_vec(),
            applied: self.applied(),
            agent_version: crate::VERSION.to_owned(),
        };
        self.transmits
            .push_back(Transmit::new(Message::Hello(hello)));
    }

    /// Connected to the hub with a bootstrap token: asks to register.
    pub fn handle_connected_to_register(&mut self, now: Instant, register: Register) {
        self.open(now, State::Registering);
        self.transmits
            .push_back(Transmit::new(Message::Register(register)));
    }

    /// The connection is gone. Unacknowledged status reports stay in the outbox.
    pub fn handle_disconnected(&mut self, _now: Instant) {
        self.state = State::Down;
        self.liveness = None;
        self.next_heartbeat = None;
        self.transmits.clear();
        self.early.clear();
    }

    /// A message from the hub.
    pub fn handle_message(&mut self, now: Instant, message: Message) -> Result<()> {
        if let Some(liveness) = &mut self.liveness {
            liveness.heard(now);
        }
        match (self.state, message) {
            (State::Down | State::Closing, _) => Ok(()),
            (_, Message::Goodbye(goodbye)) => {
                self.state = State::Closing;
                self.events.push_back(AgentEvent::Goodbye(goodbye));
                Ok(())
            }
            (State::Registering, Message::Registered(registered)) => {
                self.events.push_back(AgentEvent::Registered(registered));
                Ok(())
            }
            (State::Opening, Message::Welcome(welcome))
                if SUPPORTED_VERSIONS.contains(&welcome.version) =>
            {
                self.handle_welcome(now, welcome);
                Ok(())
            }
            // Bundle streams race the control stream: a bundle sent after the
            // Welcome can arrive before it. It is held, and raised after it.
            (State::Opening, Message::Bundle(envelope)) if self.early.len() < EARLY_BUNDLES => {
                self.early.push(envelope);
                Ok(())
            }
            (State::Up(_), Message::Heartbeat(_)) => Ok(()),
            (State::Up(_), Message::Bundle(envelope)) => {
                self.events.push_back(AgentEvent::Bundle(envelope));
                Ok(())
            }
            (State::Up(_), Message::StatusAck(ack)) => {
                if self.outbox.remove(&ack.sequence).is_some() {
                    self.events.push_back(AgentEvent::StatusAcked {
                        sequence: ack.sequence,
                    });
                }
                Ok(())
            }
            (State::Up(_), Message::Command(command)) => {
                self.events.push_back(AgentEvent::Command(command));
                Ok(())
            }
            (State::Up(_), Message::KeySetUpdate(update)) => {
                self.events.push_back(AgentEvent::KeySetUpdate(update));
                Ok(())
            }
            (State::Up(_), Message::Renewed(renewed)) => {
                // Until the driver schedules the next renewal, or if it cannot
                // keep this certificate, asking again waits as after a failure.
                let asked = self.renewal == Renewal::Asked;
                self.renewal = Renewal::Due(now + self.renewal_retry(now));
                if asked {
                    self.events.push_back(AgentEvent::Renewed(renewed));
                }
                Ok(())
            }
            (State::Up(_), Message::RenewalRefused(refused)) => {
                self.renewal = Renewal::Due(now + self.renewal_retry(now));
                self.events.push_back(AgentEvent::RenewalRefused(refused));
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

    fn handle_welcome(&mut self, now: Instant, welcome: Welcome) {
        self.state = State::Up(welcome.version);
        if welcome.heartbeat_interval_ms > 0 {
            self.timing.heartbeat_interval = Duration::from_millis(welcome.heartbeat_interval_ms);
        }
        self.next_heartbeat = Some(now + self.timing.heartbeat_interval);
        self.events.push_back(AgentEvent::Established {
            version: welcome.version,
        });
        for envelope in self.early.drain(..) {
            self.events.push_back(AgentEvent::Bundle(envelope));
        }
        // Whatever the hub has not acknowledged goes again, oldest first.
        let unacked: Vec<Status> = self.outbox.values().cloned().collect();
        for status in unacked {
            self.transmits
                .push_back(Transmit::new(Message::Status(status)));
        }
    }

    /// Reports what became of a bundle, after its outcome is flushed to the store.
    /// An applied bundle becomes the app's last applied one, which the next
    /// `Hello` reports.
    pub fn bundle_outcome(
        &mut self,
        app: Option<AppRef>,
        generation: u64,
        digest: Digest,
        outcome: BundleOutcome,
    ) {
        if let (Some(app), BundleOutcome::Applied) = (&app, &outcome) {
            self.applied.insert(app.clone(), (generation, digest));
        }
        if matches!(self.state, State::Up(_)) {
            self.transmits
                .push_back(Transmit::new(Message::BundleAck(BundleAck {
                    app,
                    generation,
                    digest,
                    outcome,
                })));
        }
    }

    /// Numbers the next status report at least `next`: the driver persists the
    /// counter, so numbers keep rising across restarts even with an empty outbox,
    /// and the hub can drop a report it already stored.
    pub fn resume_status_sequence(&mut self, next: u64) {
        self.next_status_sequence = self.next_status_sequence.max(next);
    }

    /// The number the next status report will get.
    pub fn next_status_sequence(&self) -> u64 {
        self.next_status_sequence
    }

    /// Queues a status report, numbering it; it stays in the outbox until the hub
    /// acknowledges it. Returns its sequence number, for the store.
    pub fn report_status(&mut self, mut status: Status) -> u64 {
        let sequence = self.next_status_sequence;
        self.next_status_sequence += 1;
        status.sequence = sequence;
        self.outbox.insert(sequence, status.clone());
        if matches!(self.state, State::Up(_)) {
            self.transmits
                .push_back(Transmit::new(Message::Status(status)));
        }
        sequence
    }

    /// When to renew the client certificate in use: at `due` (two thirds into
    /// its life), raised as [`AgentEvent::RenewalDue`] once the session is
    /// established. `expires` (`None` when the certificate cannot be read) paces
    /// the retries after a failure: a quarter of the remaining life, between 1 s
    /// and 5 min. Call it on every connection and after every renewal; it forgets
    /// a renewal asked for on an earlier connection.
    pub fn schedule_renewal(&mut self, due: Instant, expires: Option<Instant>) {
        self.renewal = Renewal::Due(due);
        self.certificate_expires = expires;
    }

    /// Asks the hub for a new client certificate for `public_key`, the public
    /// half of a key pair the driver just made and keeps until the answer comes.
    pub fn request_renewal(&mut self, public_key: [u8; 32]) -> Result<()> {
        if !matches!(self.state, State::Up(_)) {
            return Err(Error::NotReady {
                action: "ask for a certificate renewal",
                state: self.state.name(),
            });
        }
        self.transmits
            .push_back(Transmit::new(Message::Renew(Renew { public_key })));
        self.renewal = Renewal::Asked;
        Ok(())
    }

    /// The driver could not ask for the renewal [`AgentEvent::RenewalDue`]
    /// wanted (no key pair, or the session was not ready): ask again later.
    pub fn renewal_failed(&mut self, now: Instant) {
        self.renewal = Renewal::Due(now + self.renewal_retry(now));
    }

    fn renewal_retry(&self, now: Instant) -> Duration {
        let remaining = self
            .certificate_expires
            .and_then(|expires| expires.checked_duration_since(now))
            .unwrap_or_default();
        (remaining / 4).clamp(RENEWAL_RETRY.0, RENEWAL_RETRY.1)
    }

    fn renewal_due(&self) -> Option<Instant> {
        match (self.state, self.renewal) {
            (State::Up(_), Renewal::Due(at)) => Some(at),
            _ => None,
        }
    }

    /// Tells the hub what the cluster is like now (see [`Message::Facts`]).
    pub fn report_facts(&mut self, facts: ClusterFacts) -> Result<()> {
        if !matches!(self.state, State::Up(_)) {
            return Err(Error::NotReady {
                action: "report the cluster's facts",
                state: self.state.name(),
            });
        }
        self.transmits
            .push_back(Transmit::new(Message::Facts(facts)));
        Ok(())
    }

    /// Reports what became of a command.
    pub fn command_result(&mut self, result: CommandResult) -> Result<()> {
        if !matches!(self.state, State::Up(_)) {
            return Err(Error::NotReady {
                action: "send a command result",
                state: self.state.name(),
            });
        }
        self.transmits
            .push_back(Transmit::new(Message::CommandResult(result)));
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

    /// Time has passed; call at [`AgentSession::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, State::Down | State::Closing) {
            return;
        }
        if self.liveness.is_some_and(|l| l.is_overdue(now)) {
            self.close(GoodbyeReason::HeartbeatTimeout, "no message from the hub");
            self.events.push_back(AgentEvent::PeerSilent);
            return;
        }
        if let Some(due) = self.next_heartbeat
            && now >= due
        {
            self.heartbeat_sequence += 1;
            self.transmits
                .push_back(Transmit::new(Message::Heartbeat(Heartbeat {
                    sequence: self.heartbeat_sequence,
                })));
            self.next_heartbeat = Some(now + self.timing.heartbeat_interval);
        }
        if self.renewal_due().is_some_and(|due| now >= due) {
            self.renewal = Renewal::Making;
            self.events.push_back(AgentEvent::RenewalDue);
        }
    }

    /// When to call [`AgentSession::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.state, State::Down | State::Closing) {
            return None;
        }
        let silence = self.liveness.map(|l| l.deadline());
        [silence, self.next_heartbeat, self.renewal_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// The last applied bundle per app, sorted by app.
    pub fn applied(&self) -> Vec<Applied> {
        self.applied
            .iter()
            .map(|(app, (generation, digest))| Applied {
                app: app.clone(),
                generation: *generation,
                digest: *digest,
            })
            .collect()
    }

    /// Status reports the hub has not acknowledged, oldest first.
    pub fn unacknowledged(&self) -> impl Iterator<Item = &Status> {
        self.outbox.values()
    }

    /// The negotiated version, once established.
    pub fn version(&self) -> Option<ProtocolVersion> {
        match self.state {
            State::Up(version) => Some(version),
            _ => None,
        }
    }
}
