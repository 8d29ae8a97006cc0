//! Opening a sled database, for the hub's store and the agent's.

use std::time::{Duration, Instant};

/// Opens `config`'s database, waiting up to `wait` for its lock. A database
/// just closed (a restart in the same process, a test reopening it) can stay
/// locked for a moment while sled's flusher thread lets go of it; two live
/// processes on one folder must still never both open it, so after `wait` the
/// lock error is returned.
pub fn open_waiting_for_lock(config: &sled::Config, wait: Duration) -> sled::Result<sled::Db> {
    let until = Instant::now() + wait;
    loop {
        match config.open() {
            // sled reports a held lock only as an I/O error with this text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            opened => return opened,
        }
    }
}
