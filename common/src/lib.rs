//! Shared by the Flotilla hub and agent: the model, bundles, signing and the sans-IO
//! wire protocol.
//!
//! This crate does no I/O and depends on no async runtime, QUIC stack or Kubernetes
//! client. Time and randomness are passed in, so everything here is deterministic
//! under test.

/// The version of Flotilla that built this crate, as reported by both binaries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
