//! The hub⇄agent conversation as sans-IO state machines: [`HubSession`] and
//! [`AgentSession`].
//!
//! Neither touches a clock or a socket. The driver (hub::link, agent::link) feeds
//! them connection events and decoded messages through `handle_*(now, …)`, and
//! takes what they want sent through [`HubSession::poll_transmit`] or
//! [`AgentSession::poll_transmit`], what they want the driver to act on through
//! `poll_event`, and when they next want to be woken through `poll_timeout`.
//!
//! A session outlives its connections. That is how it knows, after a reconnect:
//! - on the hub, which bundles the agent still needs: only those newer than what
//!   its `Hello` reports;
//! - on the agent, which status reports the hub has not acknowledged, so they are
//!   sent again;
//! - on both, when the peer has gone quiet for too long.
//!
//! Writes an acknowledgement depends on are the driver's: the hub acks a status
//! with [`HubSession::ack_status`] only after storing it, and the agent acks a
//! bundle with [`AgentSession::bundle_outcome`] only after flushing it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::bundle::{Digest, Envelope};
use crate::frame::{self, Limits};
use crate::message::{
    Applied, BundleAck, BundleOutcome, Channel, Command, CommandResult, Goodbye, GoodbyeReason,
    Heartbeat, Hello, Message, ProtocolVersion, Register, Registered, Renew, RenewalRefused,
    Renewed, SUPPORTED_VERSIONS, Status, StatusAck, Welcome, negotiate,
};
use crate::model::{AppRef, ClusterFacts};
use crate::signing::KeySetUpdate;

mod agent;
mod hub;
#[cfg(test)]
mod tests;

pub use agent::{AgentEvent, AgentSession};
pub use hub::{HubEvent, HubSession, MAX_EARLY_STATUS};

/// Errors a session reports for input it cannot accept.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer sent a message the protocol does not allow in this state. The
    /// session has queued a `Goodbye` and closed.
    #[error("unexpected {message} message while {state}")]
    Unexpected {
        /// The message's name.
        message: &'static str,
        /// The session's state.
        state: &'static str,
    },
    /// More status reports came ahead of the agent's `Hello` than
    /// [`MAX_EARLY_STATUS`]. The session has queued a `Goodbye` and closed.
    #[error("status reports before hello")]
    StatusBeforeHello,
    /// A call the session cannot honour in its current state.
    #[error("cannot {action} while {state}")]
    NotReady {
        /// What was asked.
        action: &'static str,
        /// The session's state.
        state: &'static str,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Timing shared by both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How often the agent sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// How long without hearing anything before the peer counts as gone.
    pub silence_limit: Duration,
}

impl Default for Timing {
    /// Heartbeats every 15 s, as QUIC keep-alives; gone after 60 s, as the QUIC
    /// idle timeout.
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            silence_limit: Duration::from_secs(60),
        }
    }
}

/// A message a session wants sent, and the kind of stream to send it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The stream kind: the control stream, or a new stream for a bundle or status.
    pub channel: Channel,
    /// The message.
    pub message: Message,
}

impl Transmit {
    fn new(message: Message) -> Self {
        Self {
            channel: Channel::of(&message),
            message,
        }
    }

    /// Encodes the message as one frame.
    pub fn encode(&self, limits: &Limits) -> frame::Result<Vec<u8>> {
        frame::encode(&self.message, limits)
    }
}

/// The ALPN protocol both ends insist on.
pub const ALPN: &[u8] = b"flotilla/1";

/// QUIC application error codes the hub closes connections with; the agent tells
/// a revocation from a lost connection by them.
pub mod close_code {
    /// A normal end.
    pub const DONE: u32 = 0;
    /// The peer broke the protocol (garbage, oversized or misplaced frame).
    pub const PROTOCOL: u32 = 1;
    /// The cluster was removed.
    pub const REVOKED: u32 = 2;
    /// Too many connections without a certificate are registering.
    pub const BUSY: u32 = 3;
    /// A newer connection of the same cluster replaced this one.
    pub const REPLACED: u32 = 4;
    /// The hub is shutting down.
    pub const SHUTDOWN: u32 = 5;
}

/// The name of a message, for errors and logs.
fn message_name(message: &Message) -> &'static str {
    match message {
        Message::Register(_) => "Register",
        Message::Registered(_) => "Registered",
        Message::Hello(_) => "Hello",
        Message::Welcome(_) => "Welcome",
        Message::Heartbeat(_) => "Heartbeat",
        Message::Bundle(_) => "Bundle",
        Message::BundleAck(_) => "BundleAck",
        Message::Status(_) => "Status",
        Message::StatusAck(_) => "StatusAck",
        Message::Command(_) => "Command",
        Message::CommandResult(_) => "CommandResult",
        Message::KeySetUpdate(_) => "KeySetUpdate",
        Message::Goodbye(_) => "Goodbye",
        Message::Renew(_) => "Renew",
        Message::Renewed(_) => "Renewed",
        Message::RenewalRefused(_) => "RenewalRefused",
        Message::Facts(_) => "Facts",
    }
}

/// Tracks when the peer was last heard from.
#[derive(Clone, Copy, Debug)]
struct Liveness {
    last_heard: Instant,
    limit: Duration,
}

impl Liveness {
    fn new(now: Instant, limit: Duration) -> Self {
        Self {
            last_heard: now,
            limit,
        }
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    fn deadline(&self) -> Instant {
        self.last_heard + self.limit
    }

    fn is_overdue(&self, now: Instant) -> bool {
        now >= self.deadline()
    }
}

fn goodbye(reason: GoodbyeReason, message: impl Into<String>) -> Message {
    Message::Goodbye(Goodbye {
        reason,
        message: message.into(),
    })
}
