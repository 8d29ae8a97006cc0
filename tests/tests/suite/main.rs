//! Flotilla's end-to-end tests, built into one test binary so that two cores link
//! the hub, the agent and the Kubernetes client once rather than once per area.
//! Each module is one area; `support` holds what they share.
//!
//! Tests that time themselves, start real hub and agent processes or a control
//! plane of their own, or kill processes take [`support::alone`] first, so that
//! they run one at a time: as separate binaries they never met a test of another
//! area, and now they never meet each other.

mod charts;
mod cluster_faults;
mod clusters;
mod fault_suite;
mod hub_process;
mod identity_secret;
mod install;
mod least_privilege;
mod link;
mod rollouts;
mod support;
