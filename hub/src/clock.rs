//! Wall-clock time as the hub stores it: milliseconds since the Unix epoch.

use std::time::SystemTime;

/// Milliseconds since the epoch; 0 for a time before it, `u64::MAX` for one past
/// what fits.
pub fn epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_before_the_epoch_are_zero_and_after_it_count_milliseconds() {
        assert_eq!(epoch_ms(SystemTime::UNIX_EPOCH), 0);
        assert_eq!(
            epoch_ms(SystemTime::UNIX_EPOCH + Duration::from_millis(1_234)),
            1_234
        );
        assert_eq!(epoch_ms(SystemTime::UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
