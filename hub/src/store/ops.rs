//! What sync operations leave behind: each app's history (bounded, with the bundle
//! each entry needs for a rollback) and the current or last operation per
//! (app, cluster), which also remembers who asked for a commanded sync.

use serde::{Deserialize, Serialize};

use super::{Error, HistoryEntry, Key, ResourceOutcome, Result, Store, app_key, db};

/// How many history entries an app keeps unless its Application sets
/// `revisionHistoryLimit`, as in Argo CD.
pub const DEFAULT_HISTORY_LIMIT: usize = 10;

/// The current or last sync operation of an app on one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationRecord {
    /// The command's request id; `None` for a sync the agent started itself.
    #[serde(default)]
    pub request_id: Option<u64>,
    /// The API user, `automated` or `selfHeal`.
    pub initiated_by: String,
    /// The bundle generation synced.
    pub generation: u64,
    /// Where it stands.
    pub phase: Phase,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub prune: bool,
    pub started_at_ms: u64,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    #[serde(default)]
    pub resources: Vec<ResourceOutcome>,
    /// The history entry it became, if it was recorded.
    #[serde(default)]
    pub history_id: Option<u64>,
}

impl OperationRecord {
    /// Whether the operation has not ended yet.
    pub fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }
}

/// Where a sync operation stands, named as Argo CD names it (and stored and
/// shown by those names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Sent to the agent; no result yet.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed, the agent refused, or the hub gave up waiting.
    Failed,
}

impl From<flotilla_common::message::OperationPhase> for Phase {
    fn from(phase: flotilla_common::message::OperationPhase) -> Self {
        match phase {
            flotilla_common::message::OperationPhase::Succeeded => Phase::Succeeded,
            flotilla_common::message::OperationPhase::Failed => Phase::Failed,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        })
    }
}

impl Store {
    /// Appends an entry to an app's history under the next id for the app (the id
    /// in `entry` is replaced), keeps `bundle` (the envelope bytes the entry was
    /// synced from) beside it for a rollback, and drops the oldest entries beyond
    /// `limit`; flushed. Returns the entry as stored.
    pub async fn push_history(
        &self,
        project: &str,
        app: &str,
        mut entry: HistoryEntry,
        bundle: Option<&[u8]>,
        limit: usize,
    ) -> Result<HistoryEntry> {
        let prefix = app_key(project, app);
        // Two clusters' reports are stored by two connection tasks at once; an
        // atomic counter per app keeps the ids apart and increasing.
        let counter = self
            .tree("history_ids")?
            .update_and_fetch(prefix.as_bytes(), |old| {
                let next = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(1, |b| u64::from_be_bytes(b) + 1);
                Some(next.to_be_bytes().to_vec())
            })
            .map_err(|source| db("history_ids", "writing", source))?;
        entry.id = counter
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(1, u64::from_be_bytes);
        let key = prefix.clone().u64(entry.id);
        let bytes = serde_json::to_vec(&entry).map_err(|source| Error::Decode {
            tree: "history",
            source,
        })?;
        let history = self.tree("history")?;
        let bundles = self.tree("history_bundles")?;
        history
            .insert(key.as_bytes(), bytes)
            .map_err(|source| db("history", "writing", source))?;
        if let Some(bundle) = bundle {
            bundles
                .insert(key.as_bytes(), bundle)
                .map_err(|source| db("history_bundles", "writing", source))?;
        }
        let held: Vec<sled::IVec> = history
            .scan_prefix(prefix.as_bytes())
            .keys()
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| db("history", "scanning", source))?;
        let limit = limit.max(1);
        if held.len() > limit {
            for old in &held[..held.len() - limit] {
                history
                    .remove(old)
                    .map_err(|source| db("history", "removing", source))?;
                bundles
                    .remove(old)
                    .map_err(|source| db("history_bundles", "removing", source))?;
            }
        }
        self.flush("history").await?;
        Ok(entry)
    }

    /// An app's history, oldest first.
    pub fn history(&self, project: &str, app: &str) -> Result<Vec<HistoryEntry>> {
        Ok(self
            .scan("history", &app_key(project, app))?
            .into_iter()
            .map(|(_, h)| h)
            .collect())
    }

    /// One history entry.
    pub fn history_entry(&self, project: &str, app: &str, id: u64) -> Result<Option<HistoryEntry>> {
        self.get("history", &app_key(project, app).u64(id))
    }

    /// The envelope bytes a history entry was synced from.
    pub fn history_bundle(&self, project: &str, app: &str, id: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree("history_bundles")?
            .get(app_key(project, app).u64(id).as_bytes())
            .map_err(|source| db("history_bundles", "reading", source))?
            .map(|v| v.to_vec()))
    }

    /// The stored bundle of (app, cluster) at exactly `generation`.
    pub fn bundle_at(
        &self,
        project: &str,
        app: &str,
        cluster: &str,
        generation: u64,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree("bundles")?
            .get(
                app_key(project, app)
                    .str(cluster)
                    .u64(generation)
                    .as_bytes(),
            )
            .map_err(|source| db("bundles", "reading", source))?
            .map(|v| v.to_vec()))
    }

    /// Records the current operation of (app, cluster), flushed.
    pub async fn put_operation(
        &self,
        project: &str,
        app: &str,
        cluster: &str,
        operation: &OperationRecord,
    ) -> Result<()> {
        self.put("operations", &app_key(project, app).str(cluster), operation)
            .await
    }

    /// The current or last operation of (app, cluster).
    pub fn operation(
        &self,
        project: &str,
        app: &str,
        cluster: &str,
    ) -> Result<Option<OperationRecord>> {
        self.get("operations", &app_key(project, app).str(cluster))
    }

    /// Marks every operation still Running as Failed with `message`, flushed; for a
    /// hub starting again, whose commands died with the process before. Returns how
    /// many there were.
    pub async fn fail_running_operations(&self, message: &str, now_ms: u64) -> Result<usize> {
        let mut failed = 0;
        for (key, mut op) in self.scan::<OperationRecord>("operations", &Key::new())? {
            if !op.is_running() {
                continue;
            }
            op.phase = Phase::Failed;
            op.message = message.to_owned();
            op.finished_at_ms = Some(now_ms);
            let bytes = serde_json::to_vec(&op).map_err(|source| Error::Decode {
                tree: "operations",
                source,
            })?;
            self.tree("operations")?
                .insert(key.as_bytes(), bytes)
                .map_err(|source| db("operations", "writing", source))?;
            failed += 1;
        }
        if failed > 0 {
            self.flush("operations").await?;
        }
        Ok(failed)
    }

    /// Forgets an app's history and operations, when the app is deleted.
    pub async fn remove_history(&self, project: &str, app: &str) -> Result<()> {
        let prefix = app_key(project, app);
        for tree in ["history", "history_bundles", "operations"] {
            let tree_handle = self.tree(tree)?;
            let keys: Vec<sled::IVec> = tree_handle
                .scan_prefix(prefix.as_bytes())
                .keys()
                .collect::<std::result::Result<_, _>>()
                .map_err(|source| db(tree, "scanning", source))?;
            for key in keys {
                tree_handle
                    .remove(key)
                    .map_err(|source| db(tree, "removing", source))?;
            }
        }
        self.flush("history").await
    }
}
