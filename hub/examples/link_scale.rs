//! Scale benchmark of the agent link (issue 5): one hub, N load agents, real QUIC,
//! real mutual TLS and real signature checks; only the Kubernetes apply is skipped
//! (the agents use the `AckOnly` stand-in).
//!
//! ```text
//! cargo build --release -p flotilla-hub --example link_scale
//! ./target/release/examples/link_scale N [AGENT_PROCESSES]
//! ```
//!
//! Three kinds of process, all this binary:
//! - `setup` registers the N clusters through the library (as `flotilla cluster
//!   add` and a first agent connection would) and writes each agent's identity.
//!   It runs alone, so the hub's heap does not start out with its garbage;
//! - the hub, measured: its own RSS and CPU come from `/proc/self`;
//! - `agents` (AGENT_PROCESSES of them, 2 by default), each with a slice of the
//!   agents, its own sled database, and one UDP socket per 250 agents, each on
//!   its own loopback source address (127.0.P.K), as separate machines would be.
//!
//! It reports: time until all N are connected, time to push a 100 KiB bundle to
//! all N and collect every ack (p50, p99, max per agent, and the whole fan-out),
//! idle hub RSS and CPU per agent, time until all N are back after a hub restart,
//! the hub's CPU in each phase, and the load average (other work on the machine
//! shares its cores).

#![allow(clippy::unwrap_used)]

#[path = "../tests/suite/support/link.rs"]
mod fixture;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
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
/// Agents per UDP socket in the load processes.
const AGENTS_PER_SOCKET: usize = 250;
/// Socket buffers asked for in the load processes (the kernel caps them at
/// net.core.rmem_max / wmem_max).
const AGENT_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

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
    match args.get(1).map(String::as_str) {
        Some("setup") => runtime.block_on(setup(
            Path::new(&args[2]),
            Path::new(&args[3]),
            args[4].parse().unwrap(),
        )),
        Some("agents") => runtime.block_on(agents(
            &args[2],
            &args[3],
            Path::new(&args[4]),
            args[5].parse().unwrap(),
            args[6].parse().unwrap(),
            args[7].parse().unwrap(),
        )),
        _ => {
            let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
            let procs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2);
            runtime.block_on(hub(n, procs.max(1)));
        }
    }
}

/// The link's settings: the defaults, except that LINK_SCALE_IN_FLIGHT=MIB
/// sets the push budget (`none` for no bound, as before it existed), for a
/// comparison in the same session.
fn link_config(listen: SocketAddr) -> LinkConfig {
    let mut config = LinkConfig::new(listen);
    match std::env::var("LINK_SCALE_IN_FLIGHT").as_deref() {
        Ok("none") => config.bundle_bytes_in_flight = usize::MAX,
        Ok(mib) => config.bundle_bytes_in_flight = mib.parse::<usize>().unwrap() << 20,
        Err(_) => {}
    }
    println!(
        "push budget: {} bytes in flight",
        config.bundle_bytes_in_flight
    );
    config
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// User plus system CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// CPU use of this process over a phase, as a share of one core.
struct Phase {
    wall: Instant,
    cpu: Duration,
}

impl Phase {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_time(),
        }
    }

    fn report(&self) -> String {
        self.report_without(Duration::ZERO)
    }

    /// Leaves out CPU time the benchmark itself spent in this process.
    fn report_without(&self, harness: Duration) -> String {
        let cpu = (cpu_time() - self.cpu).saturating_sub(harness);
        format!(
            "hub CPU {:.1} s over {:.1} s ({:.0}% of one core); loadavg {}",
            cpu.as_secs_f64(),
            self.wall.elapsed().as_secs_f64(),
            cpu.as_secs_f64() / self.wall.elapsed().as_secs_f64().max(1e-9) * 100.0,
            loadavg()
        )
    }
}

async fn wait_connected(link: &Link, n: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut next_report = Duration::from_secs(5);
    loop {
        let connected = link.connected_count();
        if connected >= n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "only {connected} of {n} connected after {limit:?}"
        );
        if start.elapsed() >= next_report {
            println!(
                "  {connected} of {n} connected at {:?}; loadavg {}",
                start.elapsed(),
                loadavg()
            );
            next_report += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Registers `n` clusters in the hub's store and writes each agent's identity
/// under `agents_dir`.
async fn setup(hub_dir: &Path, agents_dir: &Path, n: usize) {
    let store = Store::open(&hub_dir.join("db")).unwrap();
    let ca = Arc::new(Ca::load_or_create(&store, SystemTime::now()).await.unwrap());
    let signer = store.bundle_signer().await.unwrap();
    let key_set = KeySet::new(1, &[signer.public_key()]).unwrap();
    // Many at once, so one sled flush covers many registrations.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        if tasks.len() >= 64 {
            tasks.join_next().await.unwrap().unwrap();
        }
        let (store, ca, key_set) = (store.clone(), ca.clone(), key_set.clone());
        let dir = agents_dir.to_owned();
        tasks.spawn(async move {
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
                key_set,
            }
            .save(&dir.join(&name))
            .unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let status = Command::new("cp")
        .arg("-rT")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "copying {} failed", from.display());
}

/// The load processes; killed when dropped, also when the benchmark panics.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_agents(
    addr: SocketAddr,
    fingerprint: &str,
    dir: &Path,
    n: usize,
    procs: usize,
) -> Children {
    let exe = std::env::current_exe().unwrap();
    let per = n.div_ceil(procs);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let children = (0..procs)
        .filter(|p| p * per < n)
        .map(|p| {
            let first = p * per;
            let count = per.min(n - first);
            let mut child = Command::new(&exe)
                .args([
                    "agents",
                    &addr.to_string(),
                    fingerprint,
                    dir.to_str().unwrap(),
                    &first.to_string(),
                    &count.to_string(),
                    &p.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let out = BufReader::new(child.stdout.take().unwrap());
            let ready = ready_tx.clone();
            std::thread::spawn(move || {
                for line in out.lines().map_while(Result::ok) {
                    if line == READY {
                        let _ = ready.send(());
                    }
                    println!("  [agents {p}] {line}");
                }
            });
            child
        })
        .collect::<Vec<_>>();
    let children = Children(children);
    for _ in 0..children.0.len() {
        ready_rx.recv().unwrap();
    }
    children
}

impl Children {
    /// Lets every load process start its agents.
    fn go(&mut self) {
        for child in &mut self.0 {
            let stdin = child.stdin.as_mut().unwrap();
            stdin.write_all(b"go\n").unwrap();
            stdin.flush().unwrap();
        }
    }
}

/// What a load process prints once its agents are built and waiting for `go`.
const READY: &str = "ready";

async fn hub(n: usize, procs: usize) {
    // The hub's store is on disk, as in production. The load agents stand in for
    // N machines with a disk each; N agents flushing to this machine's one disk
    // would measure that disk, so their state is on tmpfs where there is one.
    let dir = tempfile::tempdir().unwrap();
    let hub_dir = dir.path().join("hub");
    let agents_tmp = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let agents_dir = agents_tmp.path().to_owned();
    println!(
        "N = {n}, {procs} agent processes, hub store in {}, agents' in {}; loadavg {}",
        hub_dir.display(),
        agents_dir.display(),
        loadavg()
    );
    let started = Instant::now();
    // LINK_SCALE_CACHE=DIR keeps a pristine copy of the registrations, so
    // repeated runs skip registering N clusters again.
    let cache = std::env::var_os("LINK_SCALE_CACHE").map(|c| PathBuf::from(c).join(n.to_string()));
    if let Some(cache) = cache.as_ref().filter(|c| c.join("done").exists()) {
        copy_dir(&cache.join("hub"), &hub_dir);
        copy_dir(&cache.join("agents"), &agents_dir);
        println!(
            "  copied {n} registrations from {} in {:?}",
            cache.display(),
            started.elapsed()
        );
    } else {
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "setup",
                hub_dir.to_str().unwrap(),
                agents_dir.to_str().unwrap(),
                &n.to_string(),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "setup failed");
        println!(
            "  registered {n} clusters in {:?} (setup process, not timed)",
            started.elapsed()
        );
        if let Some(cache) = &cache {
            copy_dir(&hub_dir, &cache.join("hub"));
            copy_dir(&agents_dir, &cache.join("agents"));
            std::fs::write(cache.join("done"), b"").unwrap();
        }
    }

    let store = Store::open(&hub_dir.join("db")).unwrap();
    let signer = store.bundle_signer().await.unwrap();
    let link = Link::start(store.clone(), link_config("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = link.local_addr().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib();

    let mut children = spawn_agents(addr, &link.ca_fingerprint(), &agents_dir, n, procs);
    let phase = Phase::start();
    children.go();
    let connect = wait_connected(&link, n, Duration::from_secs(600)).await;
    println!("all {n} connected in {connect:?}; {}", phase.report());

    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_idle = rss_kib();
    let anon_idle = status_kib("RssAnon:");
    let idle = Phase::start();
    let idle_window = Duration::from_secs(10);
    tokio::time::sleep(idle_window).await;
    let cpu_idle = cpu_time() - idle.cpu;
    println!(
        "idle hub: RSS {rss_before} KiB before agents, {rss_idle} KiB (anon {anon_idle} KiB) with {n} connected: {:.1} KiB per agent; CPU {:.2}% of one core over {idle_window:?} ({:.5}% per agent); loadavg {}",
        (rss_idle.saturating_sub(rss_before)) as f64 / n as f64,
        cpu_idle.as_secs_f64() / idle_window.as_secs_f64() * 100.0,
        cpu_idle.as_secs_f64() / idle_window.as_secs_f64() * 100.0 / n as f64,
        loadavg(),
    );

    if std::env::var_os("LINK_SCALE_EXIT_IDLE").is_some() {
        // For heap profilers: what is still allocated at exit is what the idle
        // hub held.
        drop(children);
        let _ = std::io::stdout().flush();
        std::process::exit(0);
    }

    // Fan-out: one thread signs the N bundles (hub::refresh's work, not the
    // link's) a few ahead of the loop that writes them and commits every
    // COMMIT_EVERY (one flush each), as a refresh's batch does; the link pushes
    // each chunk once it is flushed. Signing all of them first
    // would leave 1 GB of freed envelopes in this process's heap at N = 10,000;
    // the signing thread's own CPU time is taken out of the hub's.
    let (signed_tx, mut signed_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let signing = std::thread::spawn(move || {
        for i in 0..n {
            let bundle = fixture::bundle(&format!("c{i}"), "web", 1, 1, BUNDLE_BYTES);
            let bytes = signer.sign(&bundle).unwrap().encode().unwrap();
            if signed_tx.blocking_send(bytes).is_err() {
                break;
            }
        }
        thread_cpu_time()
    });
    let phase = Phase::start();
    let first_stored_ms = cluster::epoch_ms(SystemTime::now());
    let mut envelope_len = 0;
    let mut written = Vec::with_capacity(n);
    // LINK_SCALE_STORE=each stores and flushes them one by one instead, as the
    // hub did before batches, for a comparison in the same run.
    // LINK_SCALE_STORE=all commits all of them with one flush at the end.
    let each = std::env::var("LINK_SCALE_STORE").is_ok_and(|v| v == "each");
    let commit_every = match std::env::var("LINK_SCALE_STORE").as_deref() {
        Ok("all") => usize::MAX,
        _ => flotilla_hub::bundles::COMMIT_EVERY,
    };
    let mut stored_at = Vec::with_capacity(n);
    for i in 0..n {
        let bytes = signed_rx.recv().await.unwrap();
        envelope_len = bytes.len();
        let cluster = format!("c{i}");
        if each {
            store
                .put_bundle("default", "web", &cluster, 1, &bytes)
                .await
                .unwrap();
            stored_at.push(cluster::epoch_ms(SystemTime::now()));
        } else {
            written.push(
                store
                    .write_bundle("default", "web", &cluster, 1, None, &bytes)
                    .unwrap(),
            );
            if written.len() >= commit_every || i + 1 == n {
                let chunk = written.len();
                store
                    .commit_bundles(std::mem::take(&mut written))
                    .await
                    .unwrap();
                stored_at.extend(std::iter::repeat_n(
                    cluster::epoch_ms(SystemTime::now()),
                    chunk,
                ));
            }
        }
    }
    let stored = phase.wall.elapsed();
    let signing_cpu = signing.join().unwrap();
    let mut acked_at: Vec<Option<u64>> = vec![None; n];
    let mut pending: Vec<usize> = (0..n).collect();
    while !pending.is_empty() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pending.retain(|&i| {
            let ack = store
                .link(&format!("c{i}"))
                .unwrap()
                .and_then(|l| l.acks.get("default/web").map(|a| a.at_ms));
            acked_at[i] = ack;
            ack.is_none()
        });
        assert!(
            phase.wall.elapsed() < Duration::from_secs(900),
            "fan-out did not finish: {} not acked",
            pending.len()
        );
    }
    let acked_at: Vec<u64> = acked_at.into_iter().map(Option::unwrap).collect();
    let not_applied = (0..n)
        .filter(|i| {
            store
                .link(&format!("c{i}"))
                .unwrap()
                .and_then(|l| {
                    l.acks
                        .get("default/web")
                        .map(|a| a.outcome != flotilla_common::message::BundleOutcome::Applied)
                })
                .unwrap_or(true)
        })
        .count();
    assert_eq!(not_applied, 0, "some agents did not apply the bundle");
    let last_ack = acked_at.iter().copied().max().unwrap();
    let mut sorted: Vec<Duration> = acked_at
        .iter()
        .zip(&stored_at)
        .map(|(ack, stored)| Duration::from_millis(ack.saturating_sub(*stored)))
        .collect();
    sorted.sort();
    println!(
        "fan-out of a {envelope_len}-byte signed bundle to {n}, every ack Applied: last ack {:.2} s after the first store began (storing all took {stored:.2?}); per agent store→ack p50 {:?} p99 {:?} max {:?}; {} (the signing thread's {:.1} s not counted)",
        last_ack.saturating_sub(first_stored_ms) as f64 / 1000.0,
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted[n - 1],
        phase.report_without(signing_cpu),
        signing_cpu.as_secs_f64(),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = Phase::start();
    tokio::time::sleep(idle_window).await;
    let cpu_after = cpu_time() - after.cpu;
    println!(
        "idle hub after the fan-out: RSS {} KiB (anon {} KiB), CPU {:.2}% of one core",
        rss_kib(),
        status_kib("RssAnon:"),
        cpu_after.as_secs_f64() / idle_window.as_secs_f64() * 100.0,
    );

    if std::env::var_os("LINK_SCALE_EXIT_AFTER_FANOUT").is_some() {
        drop(children);
        let _ = std::io::stdout().flush();
        std::process::exit(0);
    }

    // Restart the hub on the same data and port.
    link.stop().await;
    drop(store);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let store = Store::open(&hub_dir.join("db")).unwrap();
    let phase = Phase::start();
    let link = Link::start(store.clone(), link_config(addr)).await.unwrap();
    let back = wait_connected(&link, n, Duration::from_secs(600)).await;
    println!(
        "all {n} back {back:?} after the hub restarted (its link was down 1 s before); {}",
        phase.report()
    );
    let resent: u64 = link
        .clusters()
        .unwrap()
        .iter()
        .map(|c| c.bundles_sent)
        .sum();
    println!("bundles resent after the restart: {resent}");

    drop(children);
    link.stop().await;
    let _ = std::io::stdout().flush();
}

/// A UDP socket for load agents on `ip`, with large buffers so the load side
/// does not drop the hub's bursts.
fn agent_socket(ip: Ipv4Addr) -> quinn::Endpoint {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    let _ = socket.set_recv_buffer_size(AGENT_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(AGENT_SOCKET_BUFFER);
    socket.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap()
}

/// One load process: agents c{first}..c{first+count}, sharing one sled database
/// and one socket per [`AGENTS_PER_SOCKET`].
async fn agents(hub: &str, fingerprint: &str, dir: &Path, first: usize, count: usize, proc: u8) {
    let addr: SocketAddr = hub.parse().unwrap();
    let db = sled::Config::new()
        .path(dir.join(format!("agent-db-{proc}")))
        .cache_capacity(64 * 1024 * 1024)
        .open()
        .unwrap();
    let sockets = count.div_ceil(AGENTS_PER_SOCKET).max(1);
    let endpoints: Vec<quinn::Endpoint> = (0..sockets)
        .map(|k| {
            agent_socket(Ipv4Addr::new(
                127,
                proc.wrapping_add(1),
                0,
                (k % 250) as u8 + 2,
            ))
        })
        .collect();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut states = Vec::with_capacity(count);
    let mut agents = Vec::with_capacity(count);
    let warm = Instant::now();
    for (k, i) in (first..first + count).enumerate() {
        let name = format!("c{i}");
        let state_dir: PathBuf = dir.join(&name);
        let config = AgentConfig::new(addr, fingerprint.to_owned(), name.clone(), state_dir);
        let store = flotilla_agent::journal::Store::in_shared(db.clone(), &name);
        // Creating thousands of sled trees takes a while and blocks the thread
        // doing it; do it before the clock starts, not in the agents' tasks.
        store.applied().unwrap();
        store.outbox().unwrap();
        store.next_status_sequence().unwrap();
        store
            .bundle(&flotilla_common::model::AppRef::new("default", "web"))
            .unwrap();
        let agent = Agent::with_parts(
            config,
            store,
            AckOnly,
            endpoints[k / AGENTS_PER_SOCKET].clone(),
        );
        states.push(agent.state());
        agents.push((name, agent));
    }
    eprintln!("{count} agents built in {:?}", warm.elapsed());
    println!("{READY}");
    let mut go = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut go))
        .await
        .unwrap()
        .unwrap();
    for (name, agent) in agents {
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = agent.run(stop).await {
                eprintln!("agent {name}: {e}");
            }
        });
    }
    let start = Instant::now();
    let mut reported = (usize::MAX, usize::MAX);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connected = states.iter().filter(|s| s.borrow().connected).count();
        let applied = states
            .iter()
            .filter(|s| !s.borrow().applied.is_empty())
            .count();
        if (connected, applied) != reported {
            // Why the rest are not connected: the last error of each.
            let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
            for state in states.iter().map(|s| s.borrow()).filter(|s| !s.connected) {
                let error = state.last_error.as_deref().unwrap_or("not tried yet");
                *errors.entry(error.chars().take(90).collect()).or_default() += 1;
            }
            println!(
                "{connected} connected, {applied} applied, at {:?}; not connected: {errors:?}",
                start.elapsed()
            );
            reported = (connected, applied);
        }
    }
}
