//! The agent's sled database: what each app owns (`inventory`) and which hooks have
//! already run for a generation (`hooks`), so a restarted agent neither prunes
//! what it still owns nor runs a hook twice.
//!
//! Keys are `project \0 name` (plus `\0 generation \0 hook` for hooks), so a prefix
//! scan finds everything of one app. Values are JSON: small, and readable with
//! `sled`'s own tools when debugging a cluster.

use std::path::Path;

use flotilla_common::model::{AppRef, ResourceRef};
use serde::{Deserialize, Serialize};

/// Errors from the agent's store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sled failed to open, read, write or flush.
    #[error("agent store failed")]
    Sled(#[from] sled::Error),
    /// The store's folder could not be created or made private (mode 0700).
    #[error("failed to make the agent store folder {path} private (mode 0700)")]
    Private {
        /// The folder.
        path: std::path::PathBuf,
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

impl Store {
    /// Opens (or creates) the store in `dir`, made private to this user first.
    pub fn open(dir: &Path) -> Result<Self> {
        make_private(dir).map_err(|source| Error::Private {
            path: dir.to_owned(),
            source,
        })?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(8 << 20)
            .open()?;
        Self::from_db(db)
    }

    /// A store that lives only in memory, for tests and dry runs.
    pub fn temporary() -> Result<Self> {
        let db = sled::Config::new().temporary(true).open()?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Self> {
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
pub(crate) fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
