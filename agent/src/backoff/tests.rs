use std::time::Duration;

use super::Backoff;

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay(1.0)).collect();
    assert_eq!(delays[0], Duration::from_secs(1));
    assert_eq!(delays[1], Duration::from_secs(2));
    assert_eq!(delays[7], Duration::from_secs(30));
    let low = backoff.next_delay(0.0);
    assert_eq!(low, Duration::from_secs(15));
    backoff.reset();
    assert_eq!(backoff.next_delay(1.0), Duration::from_secs(1));
}
