//! Shared by the Flotilla hub and agent: the model, bundles, signing and the sans-IO
//! wire protocol.
//!
//! This crate does no I/O and depends on no async runtime, QUIC stack or Kubernetes
//! client. Time and randomness are passed in, so everything here is deterministic
//! under test.
//!
//! # Where to start reading
//!
//! - [`model`]: the shared vocabulary (apps, resources, sync status, health).
//! - [`bundle`]: a [`Bundle`](bundle::Bundle) is one app's rendered objects for one
//!   cluster at one generation, encoded canonically so its digest is stable. An
//!   [`Envelope`](bundle::Envelope) carries it with a signature.
//! - [`project`]: the AppProject rules a bundle carries, which the agent enforces
//!   again before applying anything.
//! - [`signing`]: the hub signs with a [`BundleSigner`](signing::BundleSigner); the
//!   agent opens envelopes with [`signing::verify`], which returns the bundle or a
//!   [`VerifyError`](signing::VerifyError) to branch on. Key sets rotate through
//!   signed [`KeySetUpdate`](signing::KeySetUpdate)s.
//! - [`message`]: every message the hub and agent exchange.
//! - [`frame`]: a `u32` big-endian length and a bincode body, decoded with a hard
//!   limit checked before anything is allocated.
//! - [`protocol`]: the sans-IO state machines, [`HubSession`](protocol::HubSession)
//!   and [`AgentSession`](protocol::AgentSession). Feed them input with
//!   `handle_*(now, …)`, take output with `poll_*()`.
//!
//! Every decoder of untrusted bytes here returns a typed error on garbage; none
//! panics, and none allocates more than twice the bytes it was given. Property
//! tests (proptest) check this beside each module, and `common/fuzz` holds
//! cargo-fuzz targets for frame decoding and envelope verification. It is not a
//! workspace member; on stable Rust run it as
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run frame_decode -s none -- -max_total_time=300`
//! after seeding it with
//! `cargo test -p flotilla-common -- --ignored write_fuzz_seed_corpus`.
//!
//! `cargo bench -p flotilla-common` measures signing and verifying a 1 MiB bundle
//! and framing a 1,000-resource status report.

pub mod bundle;
pub mod codec;
pub mod error;
#[cfg(test)]
mod fixture;
pub mod frame;
pub mod jq;
#[cfg(feature = "logging")]
pub mod logging;
pub mod message;
pub mod model;
pub mod project;
pub mod protocol;
pub mod signing;
#[cfg(feature = "sled")]
pub mod sled_open;
#[cfg(feature = "tls")]
pub mod tls;

/// The version of Flotilla that built this crate, as reported by both binaries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
