//! Operations on an app that run on its clusters' agents: a sync (of the current
//! generation, or of a revision rendered first), a rollback to a history entry,
//! and the diff and refresh queries, each waiting for the agents' results.
//!
//! The API's handlers parse, authorize, audit and shape the answer; the work is
//! here, and what refuses it is a typed [`Error`] that the API maps to an HTTP
//! status. [`sync`] starts and waits for syncs; [`rollback`] re-issues a history
//! entry's bundle as a new generation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_common::message::{Command, CommandKind, CommandResult};
use flotilla_common::model::AppRef;

use crate::clock::epoch_ms;
use crate::link::Link;
use crate::refresh::{self, Refresher};
use crate::store::{self, AppRecord, Store};

pub mod rollback;
pub mod sync;

pub use rollback::Rollback;
pub use sync::{ClusterSync, SyncPlan, SyncReport, SyncRequest};

/// How long a diff or refresh may take on an agent.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an operation was refused or could not start (the refresh errors are boxed:
/// they are large, and rare here). Once an operation runs, how
/// it went on each cluster is its result ([`ClusterSync`]), not an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The app is not in the store.
    #[error("application {0} not found")]
    AppNotFound(AppRef),
    /// This hub runs without an agent link, so nothing reaches an agent.
    #[error("this hub runs without an agent link")]
    NoLink,
    /// No registered cluster matches the app's destination.
    #[error("application {0}: no registered cluster matches its destination")]
    NoDestination(AppRef),
    /// The project's sync windows do not allow a manual sync now.
    #[error("application {app}: a manual sync on cluster {cluster} is not allowed now: {reason}")]
    SyncWindowClosed {
        app: AppRef,
        cluster: String,
        reason: String,
    },
    /// A sync of the app is still running on the cluster; one operation at a time,
    /// as Argo CD allows.
    #[error(
        "another operation is already in progress on cluster {cluster}: a sync of \
         generation {generation} started by {initiated_by}"
    )]
    Busy {
        cluster: String,
        generation: u64,
        initiated_by: String,
    },
    /// A dry run must change nothing, and rendering a revision stores a generation.
    #[error(
        "sync request: dryRun with revision {revision} is not supported: rendering a \
         revision stores it as the app's next generation, and a dry run must change \
         nothing; dry-run the current generation, or sync to the revision without dryRun"
    )]
    DryRunWithRevision { revision: String },
    /// Automated sync would undo a sync to another revision at once.
    #[error(
        "application {app} has automated sync; syncing to revision {revision} \
         would be undone at once (Argo CD refuses this too): switch automation off first"
    )]
    RevisionUnderAutomation { app: AppRef, revision: String },
    /// This hub has no refresher, so it cannot render a revision.
    #[error("this hub cannot render: sync --revision is unavailable")]
    NoRenderer,
    /// The app's source cannot be rendered at another revision.
    #[error(transparent)]
    RevisionUnsupported(Box<refresh::Error>),
    /// The revision was rendered, and rendering failed.
    #[error("rendering {app} at {revision}: {message}")]
    RenderFailed {
        app: AppRef,
        revision: String,
        message: String,
    },
    /// Rendering the revision could not be done.
    #[error("rendering {app} at {revision}: {source}")]
    Render {
        app: AppRef,
        revision: String,
        #[source]
        source: Box<refresh::Error>,
    },
    /// A `--resource` is not `GROUP:KIND:NAME` or `GROUP:KIND:NAMESPACE/NAME`.
    #[error("resource {spec:?} is not GROUP:KIND:NAME or GROUP:KIND:NAMESPACE/NAME")]
    ResourceMalformed { spec: String },
    /// A `--resource` names no object of the bundle being synced.
    #[error("resource {spec:?} is not in the bundle of {app} for cluster {cluster}")]
    ResourceNotInBundle {
        spec: String,
        app: String,
        cluster: String,
    },
    /// The app has no history entry with this id.
    #[error("application {app} has no history entry {id}")]
    HistoryEntryNotFound { app: AppRef, id: u64 },
    /// The entry is known, but its bundle has been pruned from the store.
    #[error("the bundle of history entry {id} of {app} is no longer kept")]
    HistoryBundleGone { app: AppRef, id: u64 },
    /// The kept bundle of the entry does not decode.
    #[error("the kept bundle of history entry {id} of {app} does not decode")]
    HistoryBundleUndecodable { app: AppRef, id: u64 },
    /// The kept bundle no longer passes the app's AppProject as it is now.
    #[error("rolling {app} back to history entry {id} on cluster {cluster}: {source}")]
    RollbackRefused {
        app: AppRef,
        id: u64,
        cluster: String,
        #[source]
        source: Box<refresh::Error>,
    },
    /// Issuing the rolled-back bundle failed.
    #[error(transparent)]
    Issue(Box<refresh::Error>),
    /// Reading or writing the store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Runs operations on apps through the store and the agent link.
#[derive(Clone)]
pub struct Operations {
    store: Store,
    link: Option<Arc<Link>>,
    refresher: Option<Arc<Refresher>>,
    command_timeout: Duration,
}

impl Operations {
    /// `link` reaches the agents; `refresher` renders revisions and issues
    /// bundles; a sync command may run for `command_timeout` on an agent.
    pub fn new(
        store: Store,
        link: Option<Arc<Link>>,
        refresher: Option<Arc<Refresher>>,
        command_timeout: Duration,
    ) -> Self {
        Self {
            store,
            link,
            refresher,
            command_timeout,
        }
    }

    /// The app's record.
    pub fn app(&self, app: &AppRef) -> Result<AppRecord> {
        self.store
            .app(&app.project, &app.name)?
            .ok_or_else(|| Error::AppNotFound(app.clone()))
    }

    /// The agent link.
    pub fn link(&self) -> Result<&Link> {
        self.link.as_deref().ok_or(Error::NoLink)
    }

    /// The registered clusters the app's destination names; at least one.
    pub fn destinations(&self, record: &AppRecord) -> Result<Vec<String>> {
        let names: Vec<String> = self
            .store
            .clusters()?
            .into_iter()
            .filter(|c| c.is_destination(&record.application.spec.destination))
            .map(|c| c.name)
            .collect();
        if names.is_empty() {
            return Err(Error::NoDestination(AppRef::new(
                record.project(),
                record.name(),
            )));
        }
        Ok(names)
    }

    /// Refuses when a sync of the app is still running on `cluster`. A Running
    /// record older than the command timeout is a hub that stopped mid-sync, and
    /// does not count.
    fn refuse_if_busy(&self, app: &AppRef, cluster: &str) -> Result<()> {
        let running = self
            .store
            .operation(&app.project, &app.name, cluster)?
            .filter(|op| op.is_running())
            .filter(|op| {
                let age = epoch_ms(SystemTime::now()).saturating_sub(op.started_at_ms);
                u128::from(age) < self.command_timeout.as_millis()
            });
        match running {
            Some(op) => Err(Error::Busy {
                cluster: cluster.to_owned(),
                generation: op.generation,
                initiated_by: op.initiated_by,
            }),
            None => Ok(()),
        }
    }

    /// Sends a Diff or Refresh command to each of `clusters` in turn, and gives
    /// each cluster's answer or why there was none.
    pub async fn ask_every_cluster(
        &self,
        app: &AppRef,
        clusters: &[String],
        kind: CommandKind,
    ) -> Result<Vec<(String, Result<CommandResult, String>)>> {
        let link = self.link()?;
        let mut out = Vec::with_capacity(clusters.len());
        for cluster in clusters {
            let answer = async {
                let request_id = link.new_request_id().map_err(|e| e.to_string())?;
                let command = Command {
                    request_id,
                    app: app.clone(),
                    kind: kind.clone(),
                };
                link.command(cluster, command, QUERY_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            out.push((cluster.clone(), answer));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
