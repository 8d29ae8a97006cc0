//! The link's journal: the last applied bundle per app, and the outbox of status
//! reports the hub has not acknowledged. Its trees sit in the agent's one
//! database, beside the apply engine's inventory (see [`crate::store`]).
//!
//! A bundle is flushed here before it is acknowledged, and a status report before
//! it is sent, so neither is lost to a crash.

use std::path::Path;

use flotilla_common::message::{Applied, Status};
use flotilla_common::model::AppRef;

const NEXT_STATUS: &[u8] = b"next_status_sequence";

/// Errors from the agent's store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened, or its folder made private.
    #[error(transparent)]
    Open(#[from] crate::store::Error),
    /// A read, write or flush failed.
    #[error("agent store {tree}: failed {what}")]
    Db {
        /// The tree.
        tree: &'static str,
        /// What was being done.
        what: &'static str,
        #[source]
        source: sled::Error,
    },
    /// A stored value does not decode.
    #[error("agent store {tree}: a stored value does not decode")]
    Decode {
        /// The tree.
        tree: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The agent's database.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    /// Prefixes tree names, so many load-test agents can share one database.
    namespace: String,
}

fn db(tree: &'static str, what: &'static str) -> impl FnOnce(sled::Error) -> Error {
    move |source| Error::Db { tree, what, source }
}

fn app_key(app: &AppRef) -> Vec<u8> {
    let mut key = Vec::new();
    for part in [&app.project, &app.name] {
        key.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

impl Store {
    /// Opens (or creates) the database in `dir`, made private to this user
    /// first; the agent itself uses [`crate::store::open_database`] and
    /// [`Store::in_database`].
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self::in_database(crate::store::open_sled(dir)?))
    }

    /// The journal's trees in `db`, the agent's one database.
    pub fn in_database(db: sled::Db) -> Self {
        Self {
            db,
            namespace: String::new(),
        }
    }

    /// A store in its own namespace of a shared database: how a benchmark runs
    /// thousands of agents in one process without a sled database (and flusher
    /// thread) each.
    pub fn in_shared(db: sled::Db, namespace: &str) -> Self {
        Self {
            db,
            namespace: format!("{namespace}/"),
        }
    }

    fn tree(&self, name: &'static str) -> Result<sled::Tree> {
        if self.namespace.is_empty() {
            return self
                .db
                .open_tree(name)
                .map_err(db(name, "opening the tree"));
        }
        self.db
            .open_tree(format!("{}{name}", self.namespace))
            .map_err(db(name, "opening the tree"))
    }

    async fn flush(&self, tree: &'static str) -> Result<()> {
        // A blocking flush on the blocking pool: sled 0.34's flush_async future
        // was seen never to wake under load.
        let handle = self.db.clone();
        match tokio::task::spawn_blocking(move || handle.flush()).await {
            Ok(flushed) => flushed.map(|_| ()).map_err(db(tree, "flushing")),
            Err(_) => Err(Error::Db {
                tree,
                what: "flushing (the flush task panicked)",
                source: sled::Error::ReportableBug("flush task panicked".to_owned()),
            }),
        }
    }

    /// Records a verified bundle as its app's last applied one, flushed.
    pub async fn put_bundle(&self, applied: &Applied, envelope: &[u8]) -> Result<()> {
        let key = app_key(&applied.app);
        let record = serde_json::to_vec(applied).map_err(|source| Error::Decode {
            tree: "applied",
            source,
        })?;
        self.tree("bundles")?
            .insert(&key, envelope)
            .map_err(db("bundles", "writing"))?;
        self.tree("applied")?
            .insert(&key, record)
            .map_err(db("applied", "writing"))?;
        self.flush("bundles").await
    }

    /// The generation of the newest bundle stored for `app`: accepted, and applied
    /// or queued to be. Bundles travel on streams of their own, so a newer one can
    /// be stored before an older one arrives; this, not what the applier has
    /// finished, is what an arriving bundle must be newer than.
    pub fn generation(&self, app: &AppRef) -> Result<Option<u64>> {
        let Some(record) = self
            .tree("applied")?
            .get(app_key(app))
            .map_err(db("applied", "reading"))?
        else {
            return Ok(None);
        };
        let record: Applied = serde_json::from_slice(&record).map_err(|source| Error::Decode {
            tree: "applied",
            source,
        })?;
        Ok(Some(record.generation))
    }

    /// The last applied bundle per app, sorted by app.
    pub fn applied(&self) -> Result<Vec<Applied>> {
        let mut applied: Vec<Applied> = self
            .tree("applied")?
            .iter()
            .values()
            .map(|v| {
                let v = v.map_err(db("applied", "scanning"))?;
                serde_json::from_slice(&v).map_err(|source| Error::Decode {
                    tree: "applied",
                    source,
                })
            })
            .collect::<Result<_>>()?;
        applied.sort_by(|a, b| a.app.cmp(&b.app));
        Ok(applied)
    }

    /// The stored envelope of an app's last applied bundle.
    pub fn bundle(&self, app: &AppRef) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree("bundles")?
            .get(app_key(app))
            .map_err(db("bundles", "reading"))?
            .map(|v| v.to_vec()))
    }

    /// Puts a numbered status report in the outbox and raises the next sequence
    /// number past it, flushed, before it is sent.
    pub async fn push_outbox(&self, status: &Status) -> Result<()> {
        let value = serde_json::to_vec(status).map_err(|source| Error::Decode {
            tree: "outbox",
            source,
        })?;
        self.tree("outbox")?
            .insert(status.sequence.to_be_bytes(), value)
            .map_err(db("outbox", "writing"))?;
        self.tree("meta")?
            .insert(
                NEXT_STATUS,
                &status.sequence.saturating_add(1).to_be_bytes(),
            )
            .map_err(db("meta", "writing"))?;
        self.flush("outbox").await
    }

    /// Drops an acknowledged report from the outbox.
    pub async fn remove_outbox(&self, sequence: u64) -> Result<()> {
        self.tree("outbox")?
            .remove(sequence.to_be_bytes())
            .map_err(db("outbox", "removing"))?;
        self.flush("outbox").await
    }

    /// Reports the hub has not acknowledged, oldest first.
    pub fn outbox(&self) -> Result<Vec<Status>> {
        self.tree("outbox")?
            .iter()
            .values()
            .map(|v| {
                let v = v.map_err(db("outbox", "scanning"))?;
                serde_json::from_slice(&v).map_err(|source| Error::Decode {
                    tree: "outbox",
                    source,
                })
            })
            .collect()
    }

    /// The number the next status report gets, so numbers keep rising across
    /// restarts.
    pub fn next_status_sequence(&self) -> Result<u64> {
        Ok(self
            .tree("meta")?
            .get(NEXT_STATUS)
            .map_err(db("meta", "reading"))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(1, u64::from_be_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_common::bundle::Digest;
    use flotilla_common::model::{Health, SyncStatus};

    fn status(sequence: u64) -> Status {
        Status {
            sequence,
            app: AppRef::new("default", "web"),
            generation: 1,
            sync: SyncStatus::Synced,
            health: Health::Healthy,
            resources: Vec::new(),
            drift: Vec::new(),
            events: Vec::new(),
            operation: None,
        }
    }

    #[tokio::test]
    async fn applied_bundles_and_the_outbox_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let applied = Applied {
                app: AppRef::new("default", "web"),
                generation: 3,
                digest: Digest([7; 32]),
            };
            store.put_bundle(&applied, b"envelope").await.unwrap();
            store.push_outbox(&status(4)).await.unwrap();
            store.push_outbox(&status(5)).await.unwrap();
            store.remove_outbox(4).await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.applied().unwrap()[0].generation, 3);
        let outbox: Vec<u64> = store.outbox().unwrap().iter().map(|s| s.sequence).collect();
        assert_eq!(outbox, vec![5]);
        assert_eq!(store.next_status_sequence().unwrap(), 6);
    }
}
