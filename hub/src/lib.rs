//! The Flotilla hub: reads desired state from Git, renders it for every cluster,
//! signs it, and pushes it to the agents.
//!
//! Start reading at [`source`] (Git), then [`app`] (Argo CD Applications), [`render`]
//! (directory, kustomize and helm) and [`store`] (the sled database).

pub mod account;
pub mod api;
pub mod app;
pub mod bundles;
pub mod ca;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod diff;
pub mod history;
pub mod link;
pub mod metrics;
pub mod operation;
pub mod rbac;
pub mod refresh;
pub mod render;
pub mod secret_mask;
pub mod server;
pub mod source;
pub mod status;
pub mod store;
#[cfg(test)]
mod testing;
pub mod token;
