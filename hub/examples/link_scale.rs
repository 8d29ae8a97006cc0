//! Scale benchmark of the agent link (issue 5): one hub, N load agents, real QUIC,
//! real mutual TLS and real signature checks; only the Kubernetes apply is skipped
//! (the agents use the `AckOnly` stand-in).
//!
//! ```text
//! cargo run --release -p flotilla-hub --example link_scale -- 1000
//! ```
//!
//! The hub runs in this process and the agents in a child process (this binary,
//! `agents` mode), so the hub's RSS and CPU are measured alone. It reports: time
//! until all N are connected, time to push a 100 KiB bundle to all N and collect
//! every ack (p50, p99, max per agent, and the whole fan-out), idle hub RSS and
//! CPU per agent, and time until all N are back after a hub restart.

#![allow(clippy::unwrap_used)]

#[path = "../tests/link/fixture.rs"]
mod fixture;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use flotilla_agent::identity::{self, Identity};
use flotilla_agent::link::{AckOnly, Agent, AgentConfig};
use flotilla_common::message::Register;
use flotilla_common::signing::KeySet;
use flotilla_hub::ca::Ca;
use flotilla_hub::cluster;
use flotilla_hub::link::{Link, LinkConfig};
use flotilla_hub::store::Store;

const BUNDLE_BYTES: usize = 100 * 1024;

fn main() {
    fixture::crypto();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if args.get(1).map(String::as_str) == Some("agents") {
        runtime.block_on(agents(
            &args[2],
            &args[3],
            Path::new(&args[4]),
            args[5].parse().unwrap(),
        ));
    } else {
        let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
        runtime.block_on(hub(n));
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn connected_count(link: &Link) -> usize {
    link.clusters()
        .unwrap()
        .iter()
        .filter(|c| c.connected)
        .count()
}

async fn wait_connected(link: &Link, n: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let connected = connected_count(link).await;
        if connected >= n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "only {connected} of {n} connected after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hub(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let hub_dir = dir.path().join("hub");
    let agents_dir = dir.path().join("agents");
    let store = Store::open(&hub_dir.join("db")).unwrap();
    let ca = Ca::load_or_create(&store, SystemTime::now()).await.unwrap();
    let signer = store.bundle_signer().await.unwrap();
    let key_set = KeySet::new(1, &[signer.public_key()]).unwrap();
    println!("registering {n} clusters (library calls, not timed)");
    let started = Instant::now();
    for i in 0..n {
        let name = format!("c{i}");
        let added = cluster::add(
            &store,
            &name,
            Default::default(),
            cluster::DEFAULT_TOKEN_TTL,
            SystemTime::now(),
        )
        .await
        .unwrap();
        let key = identity::new_key().unwrap();
        let registration = cluster::register(
            &store,
            &ca,
            &Register {
                token: added.token,
                public_key: key.public_key,
                facts: fixture::facts(&format!("uid-{i}")),
            },
            SystemTime::now(),
            cluster::DEFAULT_CERT_LIFETIME,
        )
        .await
        .unwrap();
        Identity {
            cluster: name.clone(),
            ca_fingerprint: ca.fingerprint(),
            key_pkcs8: key.pkcs8,
            certificate: registration.certificate,
            key_set: key_set.clone(),
        }
        .save(&agents_dir.join(&name))
        .unwrap();
    }
    println!("  registered in {:?}", started.elapsed());
    drop(store);

    let store = Store::open(&hub_dir.join("db")).unwrap();
    let link = Link::start(
        store.clone(),
        LinkConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let addr = link.local_addr().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib();

    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "agents",
            &addr.to_string(),
            &ca.fingerprint(),
            agents_dir.to_str().unwrap(),
            &n.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let child_out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in child_out.lines().map_while(Result::ok) {
            println!("  [agents] {line}");
        }
    });

    let connect = wait_connected(&link, n, Duration::from_secs(600)).await;
    println!("all {n} connected in {connect:?}");

    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_idle = rss_kib();
    let cpu_start = cpu_time();
    let idle_window = Duration::from_secs(10);
    tokio::time::sleep(idle_window).await;
    let cpu_idle = cpu_time() - cpu_start;
    println!(
        "idle hub: RSS {} KiB before agents, {} KiB with {n} connected: {:.1} KiB per agent; CPU {:.2}% of one core over {idle_window:?} ({:.4}% per agent)",
        rss_before,
        rss_idle,
        (rss_idle.saturating_sub(rss_before)) as f64 / n as f64,
        cpu_idle.as_secs_f64() / idle_window.as_secs_f64() * 100.0,
        cpu_idle.as_secs_f64() / idle_window.as_secs_f64() * 100.0 / n as f64,
    );

    // Fan-out: sign all N bundles first (hub::refresh's work, not the link's),
    // then store them; the link pushes each as it lands.
    let mut envelopes = Vec::with_capacity(n);
    let sign_start = Instant::now();
    for i in 0..n {
        let bundle = fixture::bundle(&format!("c{i}"), "web", 1, 1, BUNDLE_BYTES);
        envelopes.push(signer.sign(&bundle).unwrap().encode().unwrap());
    }
    println!(
        "signed {n} bundles of {} bytes in {:?}",
        envelopes[0].len(),
        sign_start.elapsed()
    );
    let fanout_start = Instant::now();
    let mut stored_at = Vec::with_capacity(n);
    for (i, bytes) in envelopes.iter().enumerate() {
        store
            .put_bundle("default", "web", &format!("c{i}"), 1, bytes)
            .await
            .unwrap();
        stored_at.push(cluster::epoch_ms(SystemTime::now()));
    }
    let stored = fanout_start.elapsed();
    let mut latencies = vec![None; n];
    loop {
        for (i, slot) in latencies.iter_mut().enumerate() {
            if slot.is_none()
                && let Some(ack) = store
                    .link(&format!("c{i}"))
                    .unwrap()
                    .and_then(|l| l.acks.get("default/web").cloned())
            {
                *slot = Some(Duration::from_millis(
                    ack.at_ms.saturating_sub(stored_at[i]),
                ));
            }
        }
        if latencies.iter().all(Option::is_some) {
            break;
        }
        assert!(
            fanout_start.elapsed() < Duration::from_secs(900),
            "fan-out did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = fanout_start.elapsed();
    let mut sorted: Vec<Duration> = latencies.into_iter().map(Option::unwrap).collect();
    sorted.sort();
    println!(
        "fan-out of a {} KiB bundle to {n}: all acked {total:?} after the first was stored (storing took {stored:?}); per agent store→ack p50 {:?} p99 {:?} max {:?}",
        BUNDLE_BYTES / 1024,
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted[n - 1]
    );

    // Restart the hub on the same data and port.
    drop(envelopes);
    link.stop().await;
    drop(store);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let store = Store::open(&hub_dir.join("db")).unwrap();
    let restart = Instant::now();
    let mut config = LinkConfig::new(addr);
    config.listen = addr;
    let link = Link::start(store.clone(), config).await.unwrap();
    let back = wait_connected(&link, n, Duration::from_secs(600)).await;
    println!(
        "all {n} back {:?} after the hub restarted ({back:?} waiting)",
        restart.elapsed()
    );
    let resent: u64 = link
        .clusters()
        .unwrap()
        .iter()
        .map(|c| c.bundles_sent)
        .sum();
    println!("bundles resent after the restart: {resent}");

    let _ = child.kill();
    let _ = child.wait();
    link.stop().await;
    let _ = std::io::stdout().flush();
}

/// The agents' process: N agents sharing one sled database and a few UDP sockets.
async fn agents(hub: &str, fingerprint: &str, dir: &Path, n: usize) {
    let addr: SocketAddr = hub.parse().unwrap();
    let db = sled::Config::new()
        .path(dir.join("agent-db"))
        .cache_capacity(64 * 1024 * 1024)
        .open()
        .unwrap();
    let endpoints: Vec<quinn::Endpoint> = (0..4)
        .map(|_| flotilla_agent::link::client_endpoint(addr).unwrap())
        .collect();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut states = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("c{i}");
        let state_dir: PathBuf = dir.join(&name);
        let mut config = AgentConfig::new(addr, fingerprint.to_owned(), name.clone(), state_dir);
        config.backoff_initial = Duration::from_millis(500);
        let store = flotilla_agent::journal::Store::in_shared(db.clone(), &name);
        let agent = Agent::with_parts(
            config,
            store,
            AckOnly,
            endpoints[i % endpoints.len()].clone(),
        );
        states.push(agent.state());
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = agent.run(stop).await {
                eprintln!("agent {name}: {e}");
            }
        });
    }
    let start = Instant::now();
    let mut reported = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connected = states.iter().filter(|s| s.borrow().connected).count();
        let applied = states
            .iter()
            .filter(|s| !s.borrow().applied.is_empty())
            .count();
        if connected != reported {
            println!(
                "{connected} connected, {applied} applied, at {:?}",
                start.elapsed()
            );
            reported = connected;
        }
    }
}
