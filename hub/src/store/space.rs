//! The free space the store keeps on its disk. sled 0.34 treats a failed write
//! to its log as fatal: after one "No space left on device" every later
//! operation fails until the database is opened again. So the store refuses new
//! writes, with an error that says why, while the data folder's filesystem has
//! less than a margin free, and takes them again once space returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Error, Result, Store};

/// The free space kept by default, in MiB.
pub const DEFAULT_MIN_FREE_MIB: u64 = 64;

/// How long one look at the free space is trusted, in milliseconds: a burst of
/// writes costs one `statvfs`, not one each.
const LOOK_EVERY_MS: u64 = 500;

/// The margin and the last look at the filesystem.
#[derive(Debug)]
pub(super) struct Space {
    min_free_bytes: AtomicU64,
    /// When the filesystem was last looked at, and the free bytes seen.
    looked_at_ms: AtomicU64,
    free_bytes: AtomicU64,
}

impl Space {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            min_free_bytes: AtomicU64::new(DEFAULT_MIN_FREE_MIB << 20),
            looked_at_ms: AtomicU64::new(0),
            free_bytes: AtomicU64::new(u64::MAX),
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Keeps `mib` MiB free on the data folder's filesystem (0 turns the check off).
    pub fn set_min_free_mib(&self, mib: u64) {
        self.space
            .min_free_bytes
            .store(mib.saturating_mul(1 << 20), Ordering::Relaxed);
        self.space.looked_at_ms.store(0, Ordering::Relaxed);
    }

    /// Fails with [`Error::DiskFull`] while the data folder's filesystem has less
    /// free than the margin. Called before every write of new state.
    pub(super) fn ensure_space(&self) -> Result<()> {
        let min = self.space.min_free_bytes.load(Ordering::Relaxed);
        if min == 0 {
            return Ok(());
        }
        let now = now_ms();
        let free = if now.saturating_sub(self.space.looked_at_ms.load(Ordering::Relaxed))
            < LOOK_EVERY_MS
        {
            self.space.free_bytes.load(Ordering::Relaxed)
        } else {
            // A filesystem that cannot be asked is not refused for it: the write
            // itself will say what is wrong.
            let free = rustix::fs::statvfs(&self.path)
                .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
                .unwrap_or(u64::MAX);
            self.space.free_bytes.store(free, Ordering::Relaxed);
            self.space.looked_at_ms.store(now, Ordering::Relaxed);
            free
        };
        if free < min {
            return Err(Error::DiskFull {
                path: self.path.clone(),
                free_mib: free >> 20,
                min_free_mib: min >> 20,
            });
        }
        Ok(())
    }
}
