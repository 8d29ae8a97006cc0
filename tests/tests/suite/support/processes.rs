//! Real `flotilla` and `flotilla-agent` processes for end-to-end tests: started
//! from the workspace's debug binaries, logged to files, killed with SIGKILL (a
//! crash, no shutdown code) when a test asks or when it ends, pass or fail. Only
//! the pids these helpers started are ever signalled.

// Test support: a panic is the failure report.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use flotilla_tests::LocalCluster;

/// The admin password every hub started here has.
pub const PASSWORD: &str = "fault-suite-admin-password";

/// A child process that is SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: std::process::Child,
}

impl Child {
    /// Starts `command`, its output appended to `logs/NAME.log`.
    pub fn spawn(name: &str, command: &mut Command, logs: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{name}.log")))
            .unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Child {
            name: name.to_owned(),
            child,
        }
    }

    /// SIGKILL, as a crash: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Panics, naming the process, if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early with {status}", self.name);
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A process that may be running, and can be started again after a kill.
#[derive(Debug, Default)]
struct Slot(Option<Child>);

impl Slot {
    fn start(&mut self, name: &str, command: &mut Command, logs: &Path) {
        self.0 = Some(Child::spawn(name, command, logs));
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill();
        }
    }

    fn assert_running(&mut self) {
        if let Some(child) = &mut self.0 {
            child.assert_running();
        }
    }
}

/// The workspace's debug binary `name`, next to the running test's own folder.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is missing; build it first with `cargo build -p flotilla-hub -p flotilla-agent`",
        path.display()
    );
    path
}

/// A port on `ip` free for both TCP (the API) and UDP (the agents' QUIC).
pub fn free_port(ip: &str) -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// Runs `command` to its end and returns its standard output; panics with both
/// outputs if it fails.
pub fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The value after `--name` in a command line.
pub fn flag(command: &str, name: &str) -> String {
    let mut words = command.split_whitespace();
    words.find(|w| *w == format!("--{name}"));
    words.next().unwrap().to_owned()
}

/// The last lines of every log in `logs`, for a failure message.
pub fn log_tails(logs: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        out.push_str(&format!(
            "\n--- {} ---\n{tail}",
            entry.file_name().to_string_lossy()
        ));
    }
    out
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The time of the first log line in `log` (tracing's `2026-12-07T19:45:01.123456Z`
/// prefix), in milliseconds since the Unix epoch: the clock the process saw.
pub fn first_log_time_ms(log: &str) -> Option<u64> {
    let stamp = log.lines().find_map(|line| {
        // Past a colour code before the time, if any.
        let line = line.strip_prefix("\u{1b}[2m").unwrap_or(line);
        let stamp = line.get(..19)?;
        (stamp.as_bytes().get(10) == Some(&b'T')).then_some(stamp)
    })?;
    let field = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (field(0..4)?, field(5..7)?, field(8..10)?);
    let (hh, mm, ss) = (field(11..13)?, field(14..16)?, field(17..19)?);
    // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's notes.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000).ok()
}

/// A hub process on a data folder, restartable on the same folder and ports.
#[derive(Debug)]
pub struct Hub {
    /// The address the API and QUIC listen on.
    pub ip: String,
    /// The API's port (plain HTTP).
    pub api: u16,
    /// The agents' QUIC port.
    pub quic: u16,
    /// The data folder.
    pub data: PathBuf,
    /// Where every process's log goes.
    pub logs: PathBuf,
    /// The network namespace the hub runs in, if not this one. Its API is then
    /// served over HTTPS (plain HTTP is for loopback only), trusted through the
    /// hub's CA fingerprint.
    pub netns: Option<String>,
    ca_fingerprint: std::sync::Mutex<Option<String>>,
    /// The admin session, kept across polls and restarts (the hub stores it).
    token: Option<String>,
    starts: u32,
    process: Slot,
    /// More environment for the hub process (`FLOTILLA_REPO_CA_FILE`, say).
    env: Vec<(String, String)>,
}

impl Hub {
    /// Runs the hub with `key=value` in its environment from its next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// A hub, not yet started, on `ip` (an address of `netns` when given).
    pub fn new(dir: &Path, ip: &str, netns: Option<&str>) -> Hub {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let port = |ip: &str| match netns {
            // Ports inside a fresh namespace are all free.
            Some(_) => 20_000 + (std::process::id() % 20_000) as u16,
            None => free_port(ip),
        };
        let api = port(ip);
        let quic = if netns.is_some() { api + 1 } else { port(ip) };
        Hub {
            ip: ip.to_owned(),
            api,
            quic,
            data: dir.join("hub"),
            logs,
            netns: netns.map(str::to_owned),
            ca_fingerprint: std::sync::Mutex::new(None),
            token: None,
            starts: 0,
            process: Slot::default(),
            env: Vec::new(),
        }
    }

    /// The API's base URL.
    pub fn server(&self) -> String {
        let scheme = if self.netns.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}:{}", self.ip, self.api)
    }

    fn trust(&self) -> flotilla_hub::client::Trust {
        match (&self.netns, self.ca_fingerprint.lock().unwrap().as_deref()) {
            (Some(_), Some(fingerprint)) => {
                flotilla_hub::client::Trust::pinned(fingerprint).unwrap()
            }
            _ => flotilla_hub::client::Trust::default(),
        }
    }

    /// Registers `cluster` on the data folder (the hub need not run) and returns
    /// the agent's join command line.
    pub fn add_cluster(&self, cluster: &str) -> String {
        self.add_cluster_labelled(cluster, &[])
    }

    /// As [`Hub::add_cluster`], with labels (`key=value`).
    pub fn add_cluster_labelled(&self, cluster: &str, labels: &[&str]) -> String {
        let join = run(Command::new(binary("flotilla"))
            .args(["cluster", "add", cluster])
            .args(labels.iter().flat_map(|l| ["--label", l]))
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--hub-address", &format!("{}:{}", self.ip, self.quic)])
            .arg("--print-command"));
        *self.ca_fingerprint.lock().unwrap() = Some(flag(&join, "ca-fingerprint"));
        join
    }

    /// Starts the hub, or starts it again after [`Hub::kill`].
    pub fn start(&mut self) {
        self.starts += 1;
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", netns])
                    .arg(binary("flotilla"));
                command
            }
            None => Command::new(binary("flotilla")),
        };
        command
            .args(["serve", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &format!("{}:{}", self.ip, self.api)])
            .args(["--agent-listen", &format!("{}:{}", self.ip, self.quic)])
            .args(["--keep-alive-secs", "1", "--idle-timeout-secs", "10"])
            .env("FLOTILLA_ADMIN_PASSWORD", PASSWORD)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.netns.is_some() {
            command.args(["--tls-san", &self.ip]);
        } else {
            command.arg("--plain-http");
        }
        let name = format!("hub-{}", self.starts);
        self.process.start(&name, &mut command, &self.logs);
    }

    /// SIGKILLs the hub.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Panics if the hub exited.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// An API client logged in as admin, once the API answers; the session is
    /// kept, so polling logs in once.
    pub async fn client(&mut self, timeout: Duration) -> flotilla_hub::client::Client {
        let start = Instant::now();
        let trust = self.trust();
        if let Some(token) = &self.token {
            return flotilla_hub::client::Client::new(&self.server(), Some(token.clone()), &trust)
                .unwrap();
        }
        loop {
            self.assert_running();
            if let Ok(session) = flotilla_hub::client::Client::login(
                &self.server(),
                "admin",
                PASSWORD,
                trust.clone(),
            )
            .await
            {
                self.token = Some(session.token.clone());
                return flotilla_hub::client::Client::new(
                    &self.server(),
                    Some(session.token),
                    &trust,
                )
                .unwrap();
            }
            assert!(
                start.elapsed() < timeout,
                "the hub's API never answered at {}{}",
                self.server(),
                log_tails(&self.logs)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// GETs `path` until `ready` holds for the answer, or fails after `timeout`
    /// with the last answer and every log's tail.
    pub async fn wait_for(
        &mut self,
        what: &str,
        path: &str,
        timeout: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        let mut last = None;
        loop {
            self.assert_running();
            let client = self.client(timeout).await;
            match client.get(path).await {
                Ok(answer) if ready(&answer) => return answer,
                Ok(answer) => last = Some(answer),
                // Logged in again next time: the hub may have restarted on a
                // new data folder, or not be up yet.
                Err(_) => self.token = None,
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; last answer of {path}: {last:#?}{}",
                log_tails(&self.logs)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// An agent process for one local cluster.
#[derive(Debug)]
pub struct Agent {
    /// The cluster it runs for.
    pub cluster: LocalCluster,
    join: String,
    hub: Option<String>,
    state: PathBuf,
    logs: PathBuf,
    env: Vec<(String, String)>,
    starts: u32,
    /// When each start happened, by this machine's clock.
    pub started_ms: Vec<u64>,
    process: Slot,
}

impl Agent {
    /// An agent for `cluster`, not yet started, from the join command line the
    /// hub printed.
    pub fn new(cluster: &LocalCluster, join: &str, dir: &Path) -> Agent {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        Agent {
            cluster: cluster.clone(),
            join: join.to_owned(),
            hub: None,
            state: dir.join(format!("agent-{}", cluster.name())),
            logs,
            env: Vec::new(),
            starts: 0,
            started_ms: Vec::new(),
            process: Slot::default(),
        }
    }

    /// Dials `address` instead of the hub address in the join line (a relay).
    pub fn via(mut self, address: &str) -> Agent {
        self.hub = Some(address.to_owned());
        self
    }

    /// Runs the agent with `key=value` in its environment.
    pub fn env(mut self, key: &str, value: &str) -> Agent {
        self.set_env(key, value);
        self
    }

    /// Sets `key=value` for the agent's next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts the agent, or starts it again after [`Agent::kill`].
    pub fn start(&mut self) {
        self.starts += 1;
        let hub = self.hub.clone().unwrap_or_else(|| flag(&self.join, "hub"));
        let mut command = Command::new(binary("flotilla-agent"));
        command
            .args(["--cluster", &flag(&self.join, "cluster")])
            .args(["--hub", &hub])
            .args(["--ca-fingerprint", &flag(&self.join, "ca-fingerprint")])
            .args(["--token", &flag(&self.join, "token")])
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--kubeconfig")
            .arg(self.cluster.kubeconfig_path())
            .args(["--backoff-max-secs", "1"])
            .args(["--keep-alive-secs", "1", "--idle-timeout-secs", "10"])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let name = format!("agent-{}-{}", self.cluster.name(), self.starts);
        self.started_ms.push(now_ms());
        self.process.start(&name, &mut command, &self.logs);
    }

    /// SIGKILLs the agent.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Panics if the agent exited.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// Everything this agent logged, over all its starts.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(
                    self.logs
                        .join(format!("agent-{}-{n}.log", self.cluster.name())),
                )
                .unwrap_or_default()
            })
            .collect()
    }
}
