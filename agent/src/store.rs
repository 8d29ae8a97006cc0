//! The agent's one sled database, and the apply engine's trees in it: what each
//! app owns (`inventory`) and which hooks have already run for a generation
//! (`hooks`), so a restarted agent neither prunes what it still owns nor runs a
//! hook twice. The link's journal ([`crate::journal`]) keeps its trees in the
//! same database.
//!
//! On disk the database is `<state dir>/db` ([`open_database`]). Agents before
//! this layout kept the inventory and hooks in a second database,
//! `<state dir>/inventory`; [`open_database`] copies its trees into `db`,
//! flushes, and only then removes the old folder.
//!
//! Keys are `project \0 name` (plus `\0 generation \0 hook` for hooks), so a prefix
//! scan finds everything of one app. Values are JSON: small, and readable with
//! `sled`'s own tools when debugging a cluster.

use std::path::{Path, PathBuf};

use flotilla_common::model::{AppRef, ResourceRef};
use serde::{Deserialize, Serialize};

/// sled's cache; its default is 1 GiB.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// The database's folder in the state directory.
const DATABASE_DIR: &str = "db";
/// The second database older agents kept the inventory and hooks in.
const OLD_INVENTORY_DIR: &str = "inventory";
/// The tree sled has in every database; the store never writes it.
const SLED_DEFAULT_TREE: &[u8] = b"__sled__default";

/// Errors from the agent's store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened.
    #[error("failed to open the agent store at {path} (is another agent using it?)")]
    Open {
        /// Its folder.
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// The old inventory database was moved into the one database, but its
    /// folder could not be removed.
    #[error("failed to remove the agent's old inventory database {path} after moving it")]
    RemoveOld {
        /// The old database's folder.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// sled failed to open, read, write or flush.
    #[error("agent store failed")]
    Sled(#[from] sled::Error),
    /// The store's folder could not be created or made private (mode 0700).
    #[error("failed to make the agent store folder {path} private (mode 0700)")]
    Private {
        /// The folder.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored value is not what this version writes.
    #[error("agent store holds a corrupt value for app {app}")]
    Corrupt {
        /// The app whose value is unreadable.
        app: String,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One object an app owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// Which object.
    pub resource: ResourceRef,
    /// `Prune=false`: never pruned.
    pub prune: bool,
    /// `Delete=false`: kept when the app is deleted.
    pub delete: bool,
    /// `Prune=confirm`: pruned only when a user confirms it.
    #[serde(default)]
    pub prune_confirm: bool,
    /// `Delete=confirm`: deleted with the app only when a user confirms it.
    #[serde(default)]
    pub delete_confirm: bool,
    /// `PruneLast=true` on the object: pruned after the PostSync hooks.
    #[serde(default)]
    pub prune_last: bool,
    /// `argocd.argoproj.io/compare-options: IgnoreExtraneous`: once it has left
    /// the bundle and is kept, it does not make the app OutOfSync.
    #[serde(default)]
    pub ignore_extraneous: bool,
}

/// The agent's database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    inventory: sled::Tree,
    hooks: sled::Tree,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn app_key(app: &AppRef) -> Vec<u8> {
    let mut key = Vec::with_capacity(app.project.len() + app.name.len() + 1);
    key.extend_from_slice(app.project.as_bytes());
    key.push(0);
    key.extend_from_slice(app.name.as_bytes());
    key
}

fn hook_key(app: &AppRef, generation: u64, hook: &ResourceRef) -> Vec<u8> {
    let mut key = app_key(app);
    key.push(0);
    key.extend_from_slice(&generation.to_be_bytes());
    key.push(0);
    key.extend_from_slice(
        format!(
            "{}/{}/{}/{}",
            hook.gvk.group,
            hook.gvk.kind,
            hook.namespace.as_deref().unwrap_or(""),
            hook.name
        )
        .as_bytes(),
    );
    key
}

/// Opens (or creates) the agent's one database in `state_dir/db`, and first
/// moves into it the trees of the second database older agents kept in
/// `state_dir/inventory`. Both the engine's [`Store`] and the link's
/// [`journal`](crate::journal::Store) are views of what this returns.
pub fn open_database(state_dir: &Path) -> Result<sled::Db> {
    let db = open_sled(&state_dir.join(DATABASE_DIR))?;
    let old = state_dir.join(OLD_INVENTORY_DIR);
    if old.is_dir() {
        move_trees(&old, &db)?;
    }
    Ok(db)
}

/// Copies every tree of the database in `old` into `db`, flushes `db`, and then
/// removes `old`. Run again after a crash, it copies the same entries again.
fn move_trees(old: &Path, db: &sled::Db) -> Result<()> {
    let previous = open_sled(old)?;
    for name in previous.tree_names() {
        if name == SLED_DEFAULT_TREE {
            continue;
        }
        let from = previous.open_tree(&name)?;
        let into = db.open_tree(&name)?;
        for entry in from.iter() {
            let (key, value) = entry?;
            into.insert(key, value)?;
        }
    }
    db.flush()?;
    drop(previous);
    std::fs::remove_dir_all(old).map_err(|source| Error::RemoveOld {
        path: old.to_owned(),
        source,
    })
}

/// Opens (or creates) a sled database in `dir`, made private to this user first.
pub(crate) fn open_sled(dir: &Path) -> Result<sled::Db> {
    make_private(dir).map_err(|source| Error::Private {
        path: dir.to_owned(),
        source,
    })?;
    // A database just closed (a restart in the same process, a test reopening
    // it) can still be locked for a moment: wait for the lock a little, as the
    // hub does.
    let config = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES);
    flotilla_common::sled_open::open_waiting_for_lock(&config, LOCK_WAIT).map_err(|source| {
        Error::Open {
            path: dir.to_owned(),
            source,
        }
    })
}

/// How long opening waits for a lock a closing database still holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Store {
    /// Opens (or creates) a database of its own in `dir` holding only the
    /// store's trees; the agent itself uses [`open_database`] and
    /// [`Store::in_database`].
    pub fn open(dir: &Path) -> Result<Self> {
        Self::in_database(open_sled(dir)?)
    }

    /// A store that lives only in memory, for tests and dry runs.
    pub fn temporary() -> Result<Self> {
        let db = sled::Config::new().temporary(true).open()?;
        Self::in_database(db)
    }

    /// The store's trees in `db`, the agent's one database.
    pub fn in_database(db: sled::Db) -> Result<Self> {
        Ok(Self {
            inventory: db.open_tree("inventory")?,
            hooks: db.open_tree("hooks")?,
            db,
        })
    }

    /// What `app` owns; empty when it owns nothing yet.
    pub fn inventory(&self, app: &AppRef) -> Result<Vec<Owned>> {
        match self.inventory.get(app_key(app))? {
            None => Ok(Vec::new()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt {
                app: format!("{}/{}", app.project, app.name),
                source,
            }),
        }
    }

    /// Replaces what `app` owns, and flushes so a crash cannot forget an object.
    pub async fn set_inventory(&self, app: &AppRef, owned: &[Owned]) -> Result<()> {
        let bytes = serde_json::to_vec(owned).map_err(|source| Error::Corrupt {
            app: format!("{}/{}", app.project, app.name),
            source,
        })?;
        self.inventory.insert(app_key(app), bytes)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Whether `hook` already finished for this generation of `app`.
    pub fn hook_done(&self, app: &AppRef, generation: u64, hook: &ResourceRef) -> Result<bool> {
        Ok(self.hooks.contains_key(hook_key(app, generation, hook))?)
    }

    /// Records that `hook` finished for this generation of `app`.
    pub async fn set_hook_done(
        &self,
        app: &AppRef,
        generation: u64,
        hook: &ResourceRef,
    ) -> Result<()> {
        self.hooks.insert(hook_key(app, generation, hook), &[])?;
        self.db.flush_async().await?;
        Ok(())
    }
}

/// Creates `dir` (and its parents) if needed and makes it readable by its owner
/// only, whatever the umask: sled writes its files with the default mode, and the
/// agent's folders hold what it owns in the cluster and what it applied.
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests;
