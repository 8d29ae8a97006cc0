//! The Flotilla agent's engine: it applies a verified [`Bundle`] to one cluster the
//! way Argo CD would, keeps the cluster there, and explains every difference.
//!
//! Start reading at [`apply`]: [`apply::Applier::sync`] runs one bundle through its
//! phases and waves and returns a [`apply::SyncReport`]. [`health`] judges live
//! objects, [`drift`] compares them with their desired state, and [`store`] keeps
//! what each app owns so prune only ever deletes Flotilla's own objects.
//!
//! [`Bundle`]: flotilla_common::bundle::Bundle

#![forbid(unsafe_code)]

pub mod apply;
pub mod drift;
pub mod health;
pub mod store;
