//! The Flotilla agent: runs in one cluster, dials the hub, verifies the bundles it
//! is sent, applies them the way Argo CD would, keeps the cluster there, and
//! explains every difference.
//!
//! Start reading at [`link`] (the QUIC connection to the hub and the [`link::Applier`]
//! seam where the apply engine plugs in), [`identity`] (key pair, client certificate,
//! pinned CA) and [`journal`] (applied bundles and the status outbox); [`facts`]
//! reads what registration tells the hub about the cluster.
//!
//! [`engine::Engine`] is what the link drives: it syncs (automated) or diffs
//! (manual) each bundle, runs the hub's Sync, Refresh and Diff commands one
//! operation per app at a time, and keeps watching every app it holds, turning
//! drift, self-heal and health changes into coalesced status reports.
//!
//! Underneath: [`apply::Applier::sync`] runs one bundle through its phases and waves
//! and returns a [`apply::SyncReport`]; [`apply::Applier::diff`] reports what a sync
//! would change for apps with a manual sync policy. [`health`] judges live objects
//! from watch events, [`drift::Monitor`] watches an app's objects and reports (and
//! with selfHeal reverts) drift, [`compare`] (a leaf both use) compares desired
//! with live state, and [`store`] keeps what each app owns and which
//! hooks ran, so prune only ever deletes Flotilla's own objects and a restarted agent
//! runs no hook twice.

#![forbid(unsafe_code)]

pub mod apply;
pub mod backoff;
pub mod compare;
pub mod drift;
pub mod engine;
pub mod facts;
pub mod health;
pub mod identity;
pub mod journal;
pub mod link;
pub mod store;
