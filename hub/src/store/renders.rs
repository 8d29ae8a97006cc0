//! Rendered objects by render key, so a restarted hub does not render again what
//! it rendered before. The tree is a cache: its writes are not flushed (losing
//! the newest entries in a crash costs a render), and a value that does not
//! decode is a miss, not an error.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::debug;

use super::{Error, Result, Store, db};

const TREE: &str = "renders";

impl Store {
    /// The render cached under `key`, if there is one that decodes.
    pub fn cached_render<T: DeserializeOwned>(&self, key: &[u8; 32]) -> Result<Option<T>> {
        let Some(bytes) = self
            .tree(TREE)?
            .get(key)
            .map_err(|source| db(TREE, "reading", source))?
        else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(Some(value)),
            Err(error) => {
                debug!(%error, "a cached render does not decode; rendering again");
                Ok(None)
            }
        }
    }

    /// Caches a render under `key`, unflushed. When the cache holds `keep`
    /// entries it starts over, so it never outgrows that.
    pub fn cache_render<T: Serialize>(&self, key: &[u8; 32], value: &T, keep: usize) -> Result<()> {
        let bytes =
            serde_json::to_vec(value).map_err(|source| Error::Decode { tree: TREE, source })?;
        let tree = self.tree(TREE)?;
        // Counted once per process (sled's len() reads every key), then kept.
        let count = self.renders.get_or_init(|| AtomicUsize::new(tree.len()));
        if count.load(Ordering::Relaxed) >= keep {
            tree.clear()
                .map_err(|source| db(TREE, "clearing", source))?;
            count.store(0, Ordering::Relaxed);
        }
        let replaced = tree
            .insert(key, bytes)
            .map_err(|source| db(TREE, "writing", source))?;
        if replaced.is_none() {
            count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}
