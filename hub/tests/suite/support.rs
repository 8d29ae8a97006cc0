//! Fixtures the hub's test modules share: real Git repositories (`source`), a
//! real hub link with real agents on loopback (`link`, also used by the
//! end-to-end tests and the `link_scale` example), and a whole hub with an agent
//! per local cluster (`ops`).

pub mod charts;
pub mod link;
pub mod ops;
pub mod source;

use tokio::sync::{Mutex, MutexGuard};

/// Held by the tests that must not share the machine with each other: those that
/// assert on how long something took, read this process's memory, flood a
/// listener or start a fleet of real processes. When each area was its own test
/// binary they never met a test of another area; in one binary they would, so
/// they take turns instead. Tests that take it hold the guard to their end.
static ALONE: Mutex<()> = Mutex::const_new(());

/// Waits for the other tests that run alone to finish, from an async test.
pub async fn alone() -> MutexGuard<'static, ()> {
    ALONE.lock().await
}

/// [`alone`], from a test that runs outside any runtime.
pub fn alone_blocking() -> MutexGuard<'static, ()> {
    ALONE.blocking_lock()
}
