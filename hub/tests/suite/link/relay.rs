//! A UDP relay on loopback between an agent and the hub that can be told to drop
//! every datagram, as a network that goes silent without closing anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::UdpSocket;

/// Forwards datagrams between one client and `upstream` until dropped.
pub struct Relay {
    /// Where the agent dials instead of the hub.
    pub addr: SocketAddr,
    dropping: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let dropping = Arc::new(AtomicBool::new(false));
        let silent = dropping.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut from_client = vec![0u8; 65_536];
            let mut from_hub = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    received = front.recv_from(&mut from_client) => {
                        let Ok((n, from)) = received else { continue };
                        client = Some(from);
                        if !silent.load(Ordering::SeqCst) {
                            let _ = back.send_to(&from_client[..n], upstream).await;
                        }
                    }
                    received = back.recv_from(&mut from_hub) => {
                        let Ok((n, from)) = received else { continue };
                        if let (Some(client), false) = (client, silent.load(Ordering::SeqCst))
                            && from == upstream
                        {
                            let _ = front.send_to(&from_hub[..n], client).await;
                        }
                    }
                }
            }
        });
        Relay {
            addr,
            dropping,
            task,
        }
    }

    /// Drops every datagram both ways while `on`.
    pub fn set_dropping(&self, on: bool) {
        self.dropping.store(on, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
