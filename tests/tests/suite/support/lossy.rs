//! A UDP relay on loopback between one agent and the hub that loses and delays
//! datagrams, in both directions: a bad network under QUIC, made in user space
//! because this machine's kernel has no `netem` queueing discipline.

#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;

/// Forwards datagrams between one client and `upstream` until dropped.
pub struct Lossy {
    /// Where the agent dials instead of the hub.
    pub addr: SocketAddr,
    /// Datagrams forwarded and lost, both directions.
    pub forwarded: Arc<AtomicU64>,
    pub lost: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// A small xorshift generator: the loss pattern need not be unpredictable, only
/// spread evenly, and the same seed gives the same pattern.
struct Dice(u64);

impl Dice {
    fn roll(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Lossy {
    /// Loses each datagram with probability `loss` and delays the rest by `delay`.
    pub async fn start(upstream: SocketAddr, loss: f64, delay: Duration, seed: u64) -> Lossy {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let forwarded = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let (counted, dropped) = (forwarded.clone(), lost.clone());
        let task = tokio::spawn(async move {
            let mut dice = Dice(seed | 1);
            let mut client: Option<SocketAddr> = None;
            let mut from_client = vec![0u8; 65_536];
            let mut from_hub = vec![0u8; 65_536];
            loop {
                let (socket, datagram, to) = tokio::select! {
                    received = front.recv_from(&mut from_client) => {
                        let Ok((n, from)) = received else { continue };
                        client = Some(from);
                        (back.clone(), from_client[..n].to_vec(), upstream)
                    }
                    received = back.recv_from(&mut from_hub) => {
                        let Ok((n, _)) = received else { continue };
                        let Some(client) = client else { continue };
                        (front.clone(), from_hub[..n].to_vec(), client)
                    }
                };
                if dice.roll() < loss {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.send_to(&datagram, to).await;
                });
            }
        });
        Lossy {
            addr,
            forwarded,
            lost,
            task,
        }
    }
}

impl Drop for Lossy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
