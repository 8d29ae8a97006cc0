//! The Flotilla hub: reads desired state from Git, renders it for every cluster,
//! signs it, and pushes it to the agents.
//!
//! Read it in the order the data flows, from a Git commit to what the API shows:
//!
//! 1. [`source`]: Git repositories, fetched with gix, and the trees at a commit;
//!    [`chart`]: charts from Helm repositories and OCI registries, by digest.
//! 2. [`app`]: Argo CD Applications, ApplicationSets and AppProjects, as written.
//! 3. [`render`]: an Application at a commit, for one cluster, becomes objects.
//! 4. [`refresh`]: a repository's new commit (or chart version) becomes rendered,
//!    signed bundles; apps with a chart or several sources resolve each source.
//! 5. [`bundles`]: the one writer of bundles, which allocates each generation
//!    and holds the new bundles of apps a RollingSync [`rollout`] drives until
//!    their step starts.
//! 6. [`link`]: the QUIC link that registers agents, sends bundles and commands,
//!    and takes their acknowledgements and Status reports.
//! 7. [`status`]: an app's sync and health state, derived from what the hub holds.
//! 8. [`api`]: the JSON API, with [`operation`] (sync, rollback, diff) behind its
//!    handlers, and [`server`], which runs it with the pollers and webhooks.
//!
//! Beside that flow: [`store`] (the sled database every step writes to),
//! [`history`] (sync history from the agents' reports), [`cluster`] and [`ca`]
//! (clusters joining, and the transport CA), [`account`], [`token`] and [`rbac`]
//! (who may do what), [`client`] (the CLI's client of the API), and the small
//! leaves [`clock`], [`diff`], [`metrics`] and [`secret_mask`].

pub mod source;

pub mod chart;

pub mod app;

pub mod render;

pub mod refresh;

pub mod bundles;

pub mod rollout;

pub mod link;

pub mod status;

pub mod api;
pub mod operation;
pub mod server;

pub mod store;

pub mod history;

pub mod ca;
pub mod cluster;

pub mod account;
pub mod rbac;
pub mod token;

pub mod client;

pub mod clock;
pub mod diff;
pub mod metrics;
pub mod secret_mask;

#[cfg(test)]
mod testing;
