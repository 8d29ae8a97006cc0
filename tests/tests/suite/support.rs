//! What the end-to-end tests share: real hub and agent processes (`processes`), a
//! lossy UDP relay (`lossy`), the hub's in-process link fixture (`link`), and a
//! turn for the tests that must run alone.

/// The hub's chart repository and OCI registry fixtures, shared with the hub's
/// tests like `link`.
#[path = "../../../hub/tests/suite/support/charts.rs"]
pub mod charts;
pub mod lossy;
pub mod processes;

/// The hub's own fixture for a real link with real agents on loopback, shared
/// with the hub's tests (a dev-dependency cannot export test code, so the file
/// is compiled here too).
#[path = "../../../hub/tests/suite/support/link.rs"]
pub mod link;

use tokio::sync::{Mutex, MutexGuard};

/// Held by the tests that must not share the machine with each other: those that
/// assert on how long something took, run real hub and agent processes or a
/// control plane of their own, kill processes, or mount filesystems and make
/// network namespaces. When each area was its own test binary they never met a
/// test of another area; in one binary they would, so they take turns instead.
/// Tests that take it hold the guard to their end.
static ALONE: Mutex<()> = Mutex::const_new(());

/// Waits for the other tests that run alone to finish, from an async test.
pub async fn alone() -> MutexGuard<'static, ()> {
    ALONE.lock().await
}

/// [`alone`], from a test that runs outside any runtime.
pub fn alone_blocking() -> MutexGuard<'static, ()> {
    ALONE.blocking_lock()
}
