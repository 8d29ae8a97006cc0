//! The agent's integration tests against the local clusters, built into one test
//! binary so that two cores link the agent and the Kubernetes client once rather
//! than once per area. Each module is one area; `support` holds what they share.
//!
//! Tests that time themselves or start a control plane of their own take
//! [`support::alone`] first, so that they run one at a time: as separate binaries they
//! never met a test of another area, and now they never meet each other.

mod bench;
mod drift;
mod faults;
mod ops;
mod support;
mod sync;
