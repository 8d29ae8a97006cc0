//! The hub's integration tests, built into one test binary so that two cores link
//! the hub, the agent and the Kubernetes client once rather than once per area.
//! Each module is one area; `support` holds the fixtures they share.
//!
//! Tests that time themselves, measure the process or start heavy work take
//! [`support::alone`] first, so that they run one at a time: as separate binaries they
//! never met a test of another area, and now they never meet each other.

mod api;
mod charts;
mod cli;
mod cli_hub;
mod commands;
mod fleet;
mod link;
mod ops;
mod refresh;
mod render;
mod rollouts;
mod server;
mod source;
mod support;
mod sync_latency;
