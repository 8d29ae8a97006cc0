//! Handshake slots under a flood of QUIC Initials from clients that never answer,
//! as spoofed source addresses look to the hub.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_hub::link::LinkConfig;

use super::fixture::{Hub, RunningAgent, agent_config};

/// A real client Initial (a TLS ClientHello under a fresh connection id), from a
/// sans-IO endpoint nobody drives further.
fn initial(hub: &Hub, endpoint: &mut quinn_proto::Endpoint) -> Vec<u8> {
    let config = flotilla_agent::link::client_config(
        &hub.fingerprint,
        None,
        Duration::from_secs(15),
        Duration::from_secs(60),
    )
    .unwrap();
    let (_, mut connection) = endpoint
        .connect(
            Instant::now(),
            config,
            hub.addr,
            flotilla_agent::link::HUB_SERVER_NAME,
        )
        .unwrap();
    let mut datagram = Vec::new();
    let transmit = connection
        .poll_transmit(Instant::now(), 1, &mut datagram)
        .expect("a new connection sends its Initial");
    datagram.truncate(transmit.size);
    datagram
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initials_that_never_complete_take_no_handshake_slot_and_agents_still_connect() {
    let _alone = crate::support::alone().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let mut config = LinkConfig::new("127.0.0.1:0".parse().unwrap());
    // Few slots, held long: what a flood would need to lock agents out.
    config.max_handshakes = 4;
    config.handshake_timeout = Duration::from_secs(10);
    let hub = Hub::start_with(hub_dir.path(), config).await;
    let token = hub.add("east").await;

    // The flood: Initials from a socket that reads nothing back, 300 at once
    // and then 100 a second for the rest of the test.
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let burst: Vec<Vec<u8>> = (0..300).map(|_| initial(&hub, &mut endpoint)).collect();
    let steady: Vec<Vec<u8>> = (0..2000).map(|_| initial(&hub, &mut endpoint)).collect();
    let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    for datagram in &burst {
        socket.send_to(datagram, hub.addr).await.unwrap();
    }
    let flooding = {
        let socket = socket.clone();
        let addr = hub.addr;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for datagram in steady {
                tick.tick().await;
                let _ = socket.send_to(&datagram, addr).await;
            }
        })
    };

    // What the hub answers an unproved client is a stateless Retry (long
    // header, type 3), not the start of a handshake.
    let mut reply = vec![0u8; 2048];
    let (size, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut reply))
        .await
        .expect("the hub answers an Initial")
        .unwrap();
    assert!(size > 0);
    assert_eq!(
        reply[0] & 0xf0,
        0xf0,
        "the answer to an Initial is a Retry packet, first byte {:#04x}",
        reply[0]
    );

    // A real agent registers and connects during the flood, promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let agent_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut agent = RunningAgent::start(agent_config(&hub, "east", Some(token), agent_dir.path()));
    agent
        .wait("connected during the flood", |s| s.connected)
        .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the agent took {took:?} to connect"
    );
    println!("agent connected during the Initial flood in {took:?}");

    // And it reconnects during the flood too, with its certificate.
    agent.stop().await.unwrap();
    let started = Instant::now();
    let mut agent = RunningAgent::start(agent_config(&hub, "east", None, agent_dir.path()));
    agent
        .wait("reconnected during the flood", |s| s.connected)
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    hub.publish("east", "web", 1, 1).await;
    agent
        .wait("a bundle during the flood", |s| {
            s.applied.iter().any(|a| a.generation == 1)
        })
        .await;

    flooding.abort();
    agent.stop().await.unwrap();
    hub.stop().await;
}
