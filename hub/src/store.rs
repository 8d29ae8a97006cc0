//! The hub's sled database: the one place the hub keeps state.
//!
//! Each concept has its own tree (`repos`, `apps`, `projects`, `clusters`,
//! `bundles`, `history`, `events`, ...). Keys are big-endian tuples, so a prefix scan
//! lists one app's bundles or one cluster's history in order. Values are JSON:
//! readable with any sled tool, and tolerant of fields added later. Every write a
//! caller relies on is flushed before it returns. The database records its schema
//! version and refuses one written by a newer Flotilla.

use std::path::{Path, PathBuf};

use flotilla_common::model::ClusterFacts;
use flotilla_common::signing::BundleSigner;
use serde::Serialize;
use serde::de::DeserializeOwned;

mod bundles;
mod key;
mod link;
mod ops;
mod records;
mod renders;
mod rollouts;
mod space;
#[cfg(test)]
mod tests;

pub use bundles::{Indexed, Unflushed};
pub use key::Key;
pub use link::{
    AckRecord, LinkRecord, STATUS_HISTORY, StatusRecord, TokenRecord, UsedTokenRecord,
    parse_bundle_key,
};
pub use ops::{DEFAULT_HISTORY_LIMIT, OperationRecord, Phase};
pub use records::{
    AppOrigin, AppRecord, ClusterRecord, Event, HistoryEntry, RepoRecord, ResourceOutcome,
    same_source_repository,
};
pub use rollouts::{AppPhase, AppProgress, ClusterProgress, Member, RolloutPhase, RolloutRecord};
pub use space::DEFAULT_MIN_FREE_MIB;

/// The schema this build writes. Bump it when a stored layout changes.
pub const SCHEMA_VERSION: u32 = 1;

/// sled's own cache; its default is 1 GiB, far more than the hub needs.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// How long opening the store waits for a lock that the hub before this one still
/// holds while it shuts down.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

const META: &str = "meta";
const SCHEMA_KEY: &[u8] = b"schema_version";
const BUNDLE_KEY: &[u8] = b"bundle-signing-seed";

/// The trees DESIGN.md lists, opened once.
pub const TREES: &[&str] = &[
    "clusters",
    "tokens",
    "repos",
    "projects",
    "apps",
    "bundles",
    "status",
    "history",
    "events",
    "keys",
    "links",
    "certs",
    "status_history",
    "api_tokens",
    "history_bundles",
    "operations",
    "project_origins",
    "rollouts",
    "rollout_members",
    "held_bundles",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened (missing permissions, or another process holds it).
    #[error("failed to open the store at {path} (is another flotilla hub using it?)")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// The store's folder could not be created or made private to this user.
    #[error("failed to make the store folder {path} private (mode 0700)")]
    Private {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer Flotilla; this one must not touch it.
    #[error(
        "the store at {path} has schema version {found}, newer than this flotilla's {supported}; \
         upgrade flotilla or point it at another --data-dir"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A read, write or flush failed.
    #[error("store {tree}: {what}")]
    Db {
        tree: &'static str,
        what: &'static str,
        #[source]
        source: sled::Error,
    },
    /// The blocking flush task did not finish (it panicked or was cancelled).
    #[error("store {tree}: the flush task did not finish")]
    FlushTask { tree: &'static str },
    /// The system's random source failed.
    #[error("failed to draw a new key from the system's random source: {0}")]
    Random(String),
    /// A bundle's generation is not newer than the one already stored for its
    /// (app, cluster): another writer took it first. Nothing was written.
    #[error(
        "store bundles: generation {generation} of {project}/{app} for cluster {cluster} is not newer than the stored generation {stored}"
    )]
    GenerationTaken {
        project: String,
        app: String,
        cluster: String,
        generation: u64,
        stored: u64,
    },
    /// A stored value does not decode: corruption, or a bug.
    #[error("store {tree}: a stored value does not decode")]
    Decode {
        tree: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The data folder's disk has less free than the store keeps; nothing was
    /// written.
    #[error(
        "store {path}: only {free_mib} MiB free on its disk, under the {min_free_mib} MiB it keeps \
         free; new work is refused until space returns"
    )]
    DiskFull {
        path: PathBuf,
        free_mib: u64,
        min_free_mib: u64,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The hub's database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    /// One flush at a time: concurrent `flush_async` calls with large values
    /// deadlocked sled 0.34's io buffers (every sled-io thread waiting in
    /// make_stable) in the link scale benchmark.
    flush_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Told of every bundle stored, so the link pushes it at once.
    bundles_stored: tokio::sync::broadcast::Sender<BundleStored>,
    /// Counts writes to the apps and repos trees, so what is derived from them
    /// (the repositories to watch) is worked out again only when they changed.
    sources_changed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The free space kept on the data folder's disk.
    space: std::sync::Arc<space::Space>,
    /// How many renders the `renders` tree holds, counted on first use.
    renders: std::sync::Arc<std::sync::OnceLock<std::sync::atomic::AtomicUsize>>,
}

/// Trees still written while the disk is under the free space the store keeps:
/// operations and links record work under way, and accounts (login sessions),
/// tokens and events let a user log in and watch. They are small, and the free
/// space kept is their room.
const WRITTEN_WHEN_LOW: &[&str] = &["operations", "links", "accounts", "tokens", "events"];

/// The trees whose writes [`Store::sources_version`] counts.
fn is_source_tree(tree: &str) -> bool {
    matches!(tree, "apps" | "repos")
}

/// A bundle was stored for (app, cluster) at this generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleStored {
    pub project: String,
    pub app: String,
    pub cluster: String,
    pub generation: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. The folder holds the signing seed and
    /// the CA key, so it is created, or narrowed to, mode 0700 first.
    pub fn open(dir: &Path) -> Result<Self> {
        make_private(dir).map_err(|source| Error::Private {
            path: dir.to_owned(),
            source,
        })?;
        // A hub restarted at once can find the folder still locked by the one
        // before it while that one lets go of the database (its last handles are
        // dropped by tasks that are ending). Wait for the lock a little, then fail
        // clearly: two live hubs on one folder must never both open it.
        let config = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES);
        let db = flotilla_common::sled_open::open_waiting_for_lock(&config, LOCK_WAIT).map_err(
            |source| Error::Open {
                path: dir.to_owned(),
                source,
            },
        )?;
        let store = Self {
            db,
            path: dir.to_owned(),
            bundles_stored: tokio::sync::broadcast::channel(4096).0,
            flush_lock: std::sync::Arc::default(),
            sources_changed: std::sync::Arc::default(),
            space: space::Space::new(),
            renders: std::sync::Arc::default(),
        };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<()> {
        let meta = self.tree(META)?;
        let found = meta
            .get(SCHEMA_KEY)
            .map_err(|source| db(META, "reading the schema version", source))?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes);
        match found {
            Some(found) if found > SCHEMA_VERSION => Err(Error::NewerSchema {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            }),
            Some(_) => Ok(()),
            None => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(|source| db(META, "writing the schema version", source))?;
                self.db
                    .flush()
                    .map_err(|source| db(META, "flushing the schema version", source))?;
                Ok(())
            }
        }
    }

    fn tree(&self, name: &'static str) -> Result<sled::Tree> {
        self.db
            .open_tree(name)
            .map_err(|source| db(name, "opening the tree", source))
    }

    /// Writes `value` under `key` in `tree`, and flushes before returning.
    /// While the disk is nearly full it refuses new state ([`Error::DiskFull`]),
    /// but not the small writes that let work under way finish and be watched
    /// ([`WRITTEN_WHEN_LOW`]).
    pub async fn put<T: Serialize>(&self, tree: &'static str, key: &Key, value: &T) -> Result<()> {
        if !WRITTEN_WHEN_LOW.contains(&tree) {
            self.ensure_space()?;
        }
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Decode { tree, source })?;
        self.tree(tree)?
            .insert(key.as_bytes(), bytes)
            .map_err(|source| db(tree, "writing", source))?;
        self.changed(tree);
        self.flush(tree).await
    }

    /// Notes a write to `tree` (after it is made, so that whoever read the
    /// version before reading the tree sees a newer version next time).
    fn changed(&self, tree: &str) {
        if is_source_tree(tree) {
            self.sources_changed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A number that changes whenever an app or a repository is written or
    /// removed in this process: read it before reading those, and what was
    /// derived from them holds for as long as it does not change.
    pub fn sources_version(&self) -> u64 {
        self.sources_changed
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Changes the value under `key` in `tree` in place, atomically, without a
    /// flush: a value that is not there stays absent (a record removed meanwhile
    /// is never written back). Returns whether it was there.
    pub(crate) fn update_existing<T: Serialize + DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &Key,
        change: impl Fn(&mut T),
    ) -> Result<bool> {
        let mut decode_error = None;
        let before = self
            .tree(tree)?
            .fetch_and_update(key.as_bytes(), |old| {
                let old = old?;
                let changed = serde_json::from_slice(old).and_then(|mut value: T| {
                    change(&mut value);
                    serde_json::to_vec(&value)
                });
                match changed {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        decode_error = Some(e);
                        Some(old.to_vec())
                    }
                }
            })
            .map_err(|source| db(tree, "writing", source))?;
        self.changed(tree);
        if let Some(source) = decode_error {
            return Err(Error::Decode { tree, source });
        }
        Ok(before.is_some())
    }

    /// Records what a cluster's agent reports about it now (its version and the
    /// kinds it serves, with their scope), flushed; a cluster removed meanwhile
    /// stays removed. The kube-system UID stays the one checked at registration:
    /// it is what tells clusters apart, and an agent that claimed another
    /// cluster's would keep that cluster from registering. Returns whether the
    /// cluster was there.
    pub async fn update_cluster_facts(&self, cluster: &str, facts: &ClusterFacts) -> Result<bool> {
        let found = self.update_existing(
            "clusters",
            &Key::new().str(cluster),
            |record: &mut ClusterRecord| {
                let mut facts = facts.clone();
                if let Some(registered) = &record.facts {
                    facts.kube_system_uid = registered.kube_system_uid.clone();
                }
                record.facts = Some(facts);
            },
        )?;
        self.flush("clusters").await?;
        Ok(found)
    }

    /// Reads the value under `key` in `tree`.
    pub fn get<T: DeserializeOwned>(&self, tree: &'static str, key: &Key) -> Result<Option<T>> {
        self.tree(tree)?
            .get(key.as_bytes())
            .map_err(|source| db(tree, "reading", source))?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|source| Error::Decode { tree, source })
            })
            .transpose()
    }

    /// Removes `key` from `tree`, flushed; says whether it was there.
    pub async fn remove(&self, tree: &'static str, key: &Key) -> Result<bool> {
        let old = self
            .tree(tree)?
            .remove(key.as_bytes())
            .map_err(|source| db(tree, "removing", source))?;
        self.changed(tree);
        self.flush(tree).await?;
        Ok(old.is_some())
    }

    /// Every value whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        prefix: &Key,
    ) -> Result<Vec<(Key, T)>> {
        self.tree(tree)?
            .scan_prefix(prefix.as_bytes())
            .map(|item| {
                let (k, v) = item.map_err(|source| db(tree, "scanning", source))?;
                let value =
                    serde_json::from_slice(&v).map_err(|source| Error::Decode { tree, source })?;
                Ok((Key::from_bytes(k.to_vec()), value))
            })
            .collect()
    }

    /// The last value under `prefix`: with a big-endian counter as the last key
    /// part, the newest entry.
    pub fn last<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        prefix: &Key,
    ) -> Result<Option<(Key, T)>> {
        let item = self
            .tree(tree)?
            .scan_prefix(prefix.as_bytes())
            .next_back()
            .transpose()
            .map_err(|source| db(tree, "scanning", source))?;
        item.map(|(k, v)| {
            let value =
                serde_json::from_slice(&v).map_err(|source| Error::Decode { tree, source })?;
            Ok((Key::from_bytes(k.to_vec()), value))
        })
        .transpose()
    }

    /// A fresh id from sled's monotonic counter, for history and event keys.
    pub fn next_id(&self) -> Result<u64> {
        self.db
            .generate_id()
            .map_err(|source| db(META, "generating an id", source))
    }

    async fn flush(&self, tree: &'static str) -> Result<()> {
        let one_at_a_time = self.flush_lock.clone().lock_owned().await;
        // A blocking flush on the blocking pool: sled 0.34's flush_async future
        // was seen never to wake under load (the link scale benchmark at 1,000).
        // The flush goes on when the task that asked for it is aborted (tokio
        // cannot stop blocking work), holding the database open: it keeps the
        // lock until it has let go of its handle, so [`Store::flushes_done`]
        // tells when none is left.
        let db_handle = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let flushed = db_handle.flush();
            drop(db_handle);
            drop(one_at_a_time);
            flushed
        })
        .await
        .map_err(|_| Error::FlushTask { tree })?
        .map(|_| ())
        .map_err(|source| db(tree, "flushing", source))
    }

    /// Waits until no flush is under way, including one whose caller was aborted
    /// and that still holds the database open: a hub stopping waits for this, so
    /// the folder can be opened again at once.
    pub async fn flushes_done(&self) {
        let _ = self.flush_lock.lock().await;
    }

    // --- typed access -----------------------------------------------------------

    /// Stores a repository, or a credential template (which may share its URL
    /// with a repository without replacing it).
    pub async fn put_repo(&self, repo: &RepoRecord) -> Result<()> {
        self.put("repos", &repo_key(repo), repo).await
    }

    /// Forgets a repository or credential template.
    pub async fn remove_repo(&self, repo: &RepoRecord) -> Result<bool> {
        self.remove("repos", &repo_key(repo)).await
    }

    /// The repository registered at exactly `url` (never a credential template).
    pub fn repo(&self, url: &str) -> Result<Option<RepoRecord>> {
        self.get("repos", &Key::new().str(url))
    }

    /// How to reach the repository at `url`, as Argo CD works it out: its own
    /// record (`oci://` and a trailing `/` aside), whose missing credentials come
    /// from the credential template with the longest URL prefix of it; without a
    /// record, that template's credentials for `url`. `None` when neither exists.
    pub fn repo_access(&self, url: &str) -> Result<Option<RepoRecord>> {
        let wanted = comparable_url(url);
        let repos = self.repos()?;
        let own = repos
            .iter()
            .find(|r| !r.template && comparable_url(&r.url) == wanted)
            .cloned();
        let template = repos
            .iter()
            .filter(|r| r.template && url_covers(comparable_url(&r.url), wanted))
            .max_by_key(|r| comparable_url(&r.url).len());
        Ok(match (own, template) {
            (Some(mut own), Some(template)) => {
                if own.credentials.is_none() && own.tls_client.is_none() {
                    own.credentials = template.credentials.clone();
                    own.tls_client = template.tls_client.clone();
                }
                own.enable_oci |= template.enable_oci;
                Some(own)
            }
            (Some(own), None) => Some(own),
            (None, Some(template)) => Some(RepoRecord {
                url: url.to_owned(),
                template: false,
                ..template.clone()
            }),
            (None, None) => None,
        })
    }

    pub fn repos(&self) -> Result<Vec<RepoRecord>> {
        Ok(self
            .scan("repos", &Key::new())?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    pub async fn put_app(&self, app: &AppRecord) -> Result<()> {
        self.put("apps", &app_key(&app.project(), &app.name()), app)
            .await
    }

    pub fn app(&self, project: &str, name: &str) -> Result<Option<AppRecord>> {
        self.get("apps", &app_key(project, name))
    }

    pub fn apps(&self) -> Result<Vec<AppRecord>> {
        Ok(self
            .scan("apps", &Key::new())?
            .into_iter()
            .map(|(_, a)| a)
            .collect())
    }

    pub async fn remove_app(&self, project: &str, name: &str) -> Result<bool> {
        self.remove("apps", &app_key(project, name)).await
    }

    pub async fn put_project(&self, project: &crate::app::AppProject) -> Result<()> {
        self.put("projects", &Key::new().str(project.name()), project)
            .await
    }

    pub fn project(&self, name: &str) -> Result<Option<crate::app::AppProject>> {
        self.get("projects", &Key::new().str(name))
    }

    /// Stores an AppProject an app rendered, with the app it was adopted from, so
    /// only that app may change it later.
    pub async fn put_adopted_project(
        &self,
        project: &crate::app::AppProject,
        origin: &AppOrigin,
    ) -> Result<()> {
        self.put("project_origins", &Key::new().str(project.name()), origin)
            .await?;
        self.put_project(project).await
    }

    /// Where a stored AppProject came from: `None` for one an admin created.
    pub fn project_origin(&self, name: &str) -> Result<Option<AppOrigin>> {
        self.get("project_origins", &Key::new().str(name))
    }

    pub async fn put_cluster(&self, cluster: &ClusterRecord) -> Result<()> {
        self.put("clusters", &Key::new().str(&cluster.name), cluster)
            .await
    }

    pub fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>> {
        self.get("clusters", &Key::new().str(name))
    }

    pub fn clusters(&self) -> Result<Vec<ClusterRecord>> {
        Ok(self
            .scan("clusters", &Key::new())?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// Records an audit event.
    pub async fn push_event(&self, event: &Event) -> Result<()> {
        let key = Key::new().u64(event.at_ms).u64(self.next_id()?);
        self.put("events", &key, event).await
    }

    /// The hub's bundle-signing key, made on first use and kept from then on.
    pub async fn bundle_signer(&self) -> Result<BundleSigner> {
        let keys = self.tree("keys")?;
        let stored = keys
            .get(BUNDLE_KEY)
            .map_err(|source| db("keys", "reading the bundle key", source))?
            .and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok());
        if let Some(seed) = stored {
            return Ok(BundleSigner::from_seed(&seed));
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
        // Another task may have made one meanwhile: keep whichever landed first.
        let _ = keys
            .compare_and_swap(BUNDLE_KEY, None as Option<&[u8]>, Some(&seed[..]))
            .map_err(|source| db("keys", "writing the bundle key", source))?;
        self.flush("keys").await?;
        let seed = keys
            .get(BUNDLE_KEY)
            .map_err(|source| db("keys", "reading the bundle key", source))?
            .and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok())
            .ok_or_else(|| Error::Random("the bundle key did not persist".to_owned()))?;
        Ok(BundleSigner::from_seed(&seed))
    }

    pub fn events(&self) -> Result<Vec<Event>> {
        Ok(self
            .scan("events", &Key::new())?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }
}

fn repo_key(repo: &RepoRecord) -> Key {
    if repo.template {
        Key::new().str(&repo.url).str("repo-creds")
    } else {
        Key::new().str(&repo.url)
    }
}

/// A repository URL as credentials are matched against it: without `oci://`
/// (Argo CD's OCI Secrets often leave it out) and without a trailing `/`.
/// Whether a credential template for `prefix` covers `url`: the same URL, or one
/// below it at a `/`. A plain string prefix would hand the template's credentials
/// to `https://charts.example.evil.com` for a template of `https://charts.example`.
fn url_covers(prefix: &str, url: &str) -> bool {
    url.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn comparable_url(url: &str) -> &str {
    url.trim()
        .strip_prefix("oci://")
        .unwrap_or(url.trim())
        .trim_end_matches('/')
}

fn app_key(project: &str, name: &str) -> Key {
    Key::new().str(project).str(name)
}

fn db(tree: &'static str, what: &'static str, source: sled::Error) -> Error {
    Error::Db { tree, what, source }
}

/// Creates `dir` (and its parents) if needed and makes it readable by its owner
/// only, whatever the umask: sled writes its files with the default mode.
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
