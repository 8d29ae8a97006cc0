//! `tests/cluster` fails clearly: a taken port, a crashed component and a cluster that
//! is not ready in time are each reported with the component's name and its log.

// Integration-test helpers are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flotilla_tests::{LocalCluster, clusters_dir};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster")
}

/// A cluster that a test starts, stopped again when the test ends, pass or fail.
struct Started(String);

impl Started {
    fn up(name: &str, env: &[(&str, &str)]) -> (Self, Output) {
        let name = format!("{name}-{}", std::process::id());
        let output = Command::new(script())
            .args(["up", &name])
            .envs(env.iter().copied())
            .output()
            .expect("running tests/cluster up");
        (Self(name), output)
    }

    fn dir(&self) -> PathBuf {
        clusters_dir().join(&self.0)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", &self.0]).output();
        // `down` keeps a cluster's logs for whoever debugs it; these clusters are
        // named per test process, so unless the test failed nobody will, and they
        // would pile up run after run.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.dir());
        }
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_cluster_asked_for_a_port_in_use_starts_on_another_port() {
    let _alone = crate::support::alone().await;
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();

    let (cluster, output) = Started::up(
        "fault-port",
        &[("FLOTILLA_CLUSTER_PORT", &port.to_string())],
    );
    let err = stderr(&output);
    assert!(output.status.success(), "up failed: {err}");
    assert!(
        err.contains(&format!("port {port} is already in use")),
        "the script did not say it moved off port {port}: {err}"
    );

    let ports = std::fs::read_to_string(cluster.dir().join("ports")).unwrap();
    assert!(!ports.contains(&format!("apiserver={port}\n")), "{ports}");

    let client = LocalCluster::named(&cluster.0)
        .unwrap()
        .client()
        .await
        .unwrap();
    Api::<Namespace>::all(client)
        .get("kube-system")
        .await
        .unwrap();
}

#[test]
fn a_crashed_component_is_reported_by_status_with_its_log() {
    let _alone = crate::support::alone_blocking();
    let (cluster, output) = Started::up("fault-crash", &[]);
    assert!(output.status.success(), "up failed: {}", stderr(&output));

    let pid = std::fs::read_to_string(cluster.dir().join("pids/kube-scheduler")).unwrap();
    let killed = Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The process is gone once its parent (init) reaps it; status must not wait on it.
    std::thread::sleep(std::time::Duration::from_millis(500));

    let status = Command::new(script())
        .args(["status", &cluster.0])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(!status.status.success(), "status should fail: {stdout}");
    assert!(stdout.contains("kube-scheduler: NOT RUNNING"), "{stdout}");
    assert!(stdout.contains("logs/kube-scheduler.log"), "{stdout}");
    assert!(stdout.contains("kube-apiserver: running"), "{stdout}");
}

#[test]
fn a_component_that_dies_on_start_is_named_with_its_log_and_nothing_is_left_running() {
    let _alone = crate::support::alone_blocking();
    let (cluster, output) = Started::up(
        "fault-start",
        &[("FLOTILLA_APISERVER_ARGS", "--no-such-flag")],
    );
    let err = stderr(&output);
    assert!(!output.status.success(), "up should fail: {err}");
    assert!(
        err.contains("kube-apiserver exited before it was ready"),
        "the failing component is not named: {err}"
    );
    assert!(
        err.contains("logs/kube-apiserver.log"),
        "no log path: {err}"
    );
    assert!(
        err.contains("unknown flag: --no-such-flag"),
        "no log tail: {err}"
    );
    assert_etcd_stopped(&cluster);
}

#[test]
fn a_cluster_not_ready_in_time_fails_naming_the_component() {
    let _alone = crate::support::alone_blocking();
    let (cluster, output) = Started::up("fault-slow", &[("FLOTILLA_CLUSTER_READY_TIMEOUT", "1")]);
    let err = stderr(&output);
    assert!(!output.status.success(), "up should fail: {err}");
    assert!(err.contains("within 1 s; its log is"), "{err}");
    assert!(
        ["etcd", "kube-apiserver"]
            .iter()
            .any(|c| err.contains(&format!("FAILED: {c} was not"))),
        "{err}"
    );
    assert!(!cluster.dir().join("kubeconfig").exists());
    assert_etcd_stopped(&cluster);
}

/// A failed `up` stops what it started: etcd's port no longer answers.
fn assert_etcd_stopped(cluster: &Started) {
    let ports = std::fs::read_to_string(cluster.dir().join("ports")).unwrap();
    let etcd: u16 = ports
        .lines()
        .find_map(|l| l.strip_prefix("etcd="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        TcpStream::connect(("127.0.0.1", etcd)).is_err(),
        "etcd still listens on {etcd} after a failed up"
    );
    assert!(!cluster.dir().join("pids/etcd").exists());
}
