//! What a login may cost the hub. Anyone can call login, and each attempt is an
//! Argon2 hash: about 20 ms of a core and 19 MiB of memory by design. So every
//! attempt first takes a token from its client's bucket (a small token bucket per
//! address, IPv6 per /64), then waits a short while for one of a few hashing
//! slots; the hash itself runs on the blocking pool (see
//! [`super::login`]), never on the runtime the agent link shares. A client out of
//! tokens, or a hub whose slots stay taken, is answered at once with "try again
//! in N s" instead of queueing without bound.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many logins the hub serves, and how fast.
#[derive(Clone, Debug)]
pub struct LoginLimits {
    /// Attempts a client may make at once, after a quiet spell.
    pub burst: u32,
    /// How often a client earns one more attempt.
    pub refill_every: Duration,
    /// Clients remembered at most; beyond that, new clients share one bucket,
    /// so a spray of addresses cannot grow memory.
    pub max_clients: usize,
    /// Passwords hashed at once.
    pub concurrent_hashes: usize,
    /// How long an attempt waits for a hashing slot before it is refused.
    pub queue_wait: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        // Half the cores hash at most, so a flood leaves the rest to the runtime.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            burst: 10,
            refill_every: Duration::from_secs(1),
            max_clients: 4096,
            concurrent_hashes: (cores / 2).clamp(1, 8),
            queue_wait: Duration::from_secs(2),
        }
    }
}

/// Why a login was not even tried.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// This client has used its attempts.
    #[error(
        "too many login attempts from this address; try again in {}s",
        retry_after.as_secs().max(1)
    )]
    TooManyAttempts {
        /// When the client has an attempt again.
        retry_after: Duration,
    },
    /// Every hashing slot stayed taken for the whole wait.
    #[error(
        "the hub is busy checking other logins; try again in {}s",
        retry_after.as_secs().max(1)
    )]
    Busy {
        /// A hint for when to retry.
        retry_after: Duration,
    },
}

impl Refused {
    /// When the client may try again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refused::TooManyAttempts { retry_after } | Refused::Busy { retry_after } => {
                *retry_after
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            updated: now,
        }
    }

    fn refill(&mut self, limits: &LoginLimits, now: Instant) {
        let earned = now.saturating_duration_since(self.updated).as_secs_f64()
            / limits.refill_every.as_secs_f64().max(f64::MIN_POSITIVE);
        self.tokens = (self.tokens + earned).min(f64::from(limits.burst));
        self.updated = now;
    }

    fn is_full(&self, limits: &LoginLimits, now: Instant) -> bool {
        let mut refilled = *self;
        refilled.refill(limits, now);
        refilled.tokens >= f64::from(limits.burst)
    }

    fn take(&mut self, limits: &LoginLimits, now: Instant) -> Result<(), Refused> {
        self.refill(limits, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(Refused::TooManyAttempts {
            retry_after: limits.refill_every.mul_f64(missing),
        })
    }
}

struct Buckets {
    clients: HashMap<IpAddr, Bucket>,
    /// Shared by the clients that arrive while `clients` is full of active ones.
    overflow: Bucket,
}

/// The login limits in force, shared by every login request.
pub struct LoginThrottle {
    limits: LoginLimits,
    buckets: Mutex<Buckets>,
    hashing: Arc<Semaphore>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new(LoginLimits::default())
    }
}

/// The key an address is counted under: an IPv6 client usually holds a whole /64,
/// so it gets one bucket, not 2^64.
fn client_key(addr: Option<IpAddr>) -> IpAddr {
    match addr {
        None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        Some(IpAddr::V4(v4)) => IpAddr::V4(v4),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

impl LoginThrottle {
    /// A throttle with these limits.
    pub fn new(limits: LoginLimits) -> Self {
        let now = Instant::now();
        Self {
            hashing: Arc::new(Semaphore::new(limits.concurrent_hashes.max(1))),
            buckets: Mutex::new(Buckets {
                clients: HashMap::new(),
                overflow: Bucket::full(limits.burst, now),
            }),
            limits,
        }
    }

    /// Takes one attempt from `client`'s bucket (`None`: a client whose address
    /// is unknown, counted together).
    pub fn admit(&self, client: Option<IpAddr>, now: Instant) -> Result<(), Refused> {
        let key = client_key(client);
        let limits = &self.limits;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Buckets { clients, overflow } = &mut *buckets;
        if !clients.contains_key(&key) && clients.len() >= limits.max_clients {
            // A full bucket is the same as none: forget those.
            clients.retain(|_, bucket| !bucket.is_full(limits, now));
        }
        let bucket = if clients.contains_key(&key) || clients.len() < limits.max_clients {
            clients
                .entry(key)
                .or_insert_with(|| Bucket::full(limits.burst, now))
        } else {
            overflow
        };
        bucket.take(limits, now)
    }

    /// How many clients have a bucket now.
    pub fn tracked_clients(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clients
            .len()
    }

    /// A hashing slot, waiting at most [`LoginLimits::queue_wait`] for one.
    pub async fn hashing_slot(&self) -> Result<OwnedSemaphorePermit, Refused> {
        let busy = Refused::Busy {
            retry_after: self.limits.queue_wait,
        };
        match tokio::time::timeout(self.limits.queue_wait, self.hashing.clone().acquire_owned())
            .await
        {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it as busy all the same.
            Ok(Err(_)) | Err(_) => Err(busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits {
            burst: 3,
            refill_every: Duration::from_secs(1),
            max_clients: 4,
            concurrent_hashes: 1,
            queue_wait: Duration::from_millis(50),
        }
    }

    fn v4(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn a_client_gets_its_burst_then_one_attempt_per_refill() {
        let throttle = LoginThrottle::new(limits());
        let start = Instant::now();
        for _ in 0..3 {
            throttle.admit(v4(1), start).unwrap();
        }
        let refused = throttle.admit(v4(1), start).unwrap_err();
        assert!(matches!(refused, Refused::TooManyAttempts { .. }));
        assert_eq!(refused.retry_after(), Duration::from_secs(1));
        assert!(refused.to_string().contains("try again in 1s"), "{refused}");
        // Another client is not affected.
        throttle.admit(v4(2), start).unwrap();
        // A second later, one more attempt.
        let later = start + Duration::from_secs(1);
        throttle.admit(v4(1), later).unwrap();
        assert!(throttle.admit(v4(1), later).is_err());
    }

    #[test]
    fn an_ipv6_client_is_counted_per_64_and_a_mapped_ipv4_as_ipv4() {
        let throttle = LoginThrottle::new(limits());
        let now = Instant::now();
        for last in 1..=3u16 {
            let addr: Ipv6Addr = format!("2001:db8:1:2::{last}").parse().unwrap();
            throttle.admit(Some(IpAddr::V6(addr)), now).unwrap();
        }
        let same_64: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(throttle.admit(Some(IpAddr::V6(same_64)), now).is_err());
        for _ in 0..3 {
            throttle.admit(v4(7), now).unwrap();
        }
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        assert!(throttle.admit(Some(mapped), now).is_err());
    }

    use std::net::Ipv4Addr;

    #[test]
    fn a_spray_of_addresses_cannot_grow_memory_and_shares_one_bucket() {
        let throttle = LoginThrottle::new(limits());
        let now = Instant::now();
        for last in 0..=255u8 {
            // The first four get buckets; the rest share the overflow bucket,
            // which runs dry after its burst.
            let admitted = throttle.admit(v4(last), now).is_ok();
            assert_eq!(admitted, last < 4 + 3, "address {last}");
            assert!(throttle.tracked_clients() <= 4);
        }
        // Once the remembered clients are idle long enough to be full again,
        // they are forgotten and new clients get their own buckets.
        let later = now + Duration::from_secs(5);
        throttle.admit(v4(200), later).unwrap();
        assert_eq!(throttle.tracked_clients(), 1);
    }

    #[tokio::test]
    async fn a_login_that_finds_every_hashing_slot_taken_is_refused_as_busy() {
        let throttle = LoginThrottle::new(limits());
        let held = throttle.hashing_slot().await.unwrap();
        let refused = throttle.hashing_slot().await.unwrap_err();
        assert!(matches!(refused, Refused::Busy { .. }));
        assert!(refused.to_string().contains("busy"), "{refused}");
        drop(held);
        let _slot = throttle.hashing_slot().await.unwrap();
    }
}
