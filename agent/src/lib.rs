//! The Flotilla agent's engine: it applies a verified [`Bundle`] to one cluster the
//! way Argo CD would, keeps the cluster there, and explains every difference.
//!
//! Start reading at [`apply`]: [`apply::Applier::sync`] runs one bundle through its
//! phases and waves and returns a [`apply::SyncReport`]; [`apply::Applier::diff`]
//! reports what a sync would change for apps with a manual sync policy.
//! [`health`] judges live objects from watch events, [`drift::Monitor`] watches an
//! app's objects and reports (and with selfHeal reverts) drift, and [`store`] keeps
//! what each app owns and which hooks ran, so prune only ever deletes Flotilla's own
//! objects and a restarted agent runs no hook twice.
//!
//! Until the link to the hub exists, reports are returned as values
//! ([`apply::SyncReport`], [`drift::Report`]) that the tests in `agent/tests/` read.
//!
//! [`Bundle`]: flotilla_common::bundle::Bundle

#![forbid(unsafe_code)]

pub mod apply;
pub mod drift;
pub mod health;
pub mod store;
