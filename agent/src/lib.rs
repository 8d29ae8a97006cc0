//! The Flotilla agent: runs in one cluster, dials the hub, verifies and applies
//! the bundles it is sent, and reports status.
//!
//! Start reading at [`link`] (the QUIC connection to the hub and the [`link::Applier`]
//! seam where the apply engine plugs in), then [`identity`] (key pair, client
//! certificate, pinned CA) and [`store`] (applied bundles and the status outbox).
//! [`facts`] reads what registration tells the hub about the cluster.

pub mod facts;
pub mod identity;
pub mod link;
pub mod store;
