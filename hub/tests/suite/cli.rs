//! The `flotilla` binary, run as a user runs it.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use fixture::WorkRepo;

use crate::support::source as fixture;

fn flotilla(args: &[&str], cache: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env("FLOTILLA_REPO_CACHE", cache)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repo_with_app() -> (WorkRepo, tempfile::TempDir) {
    let work = WorkRepo::new();
    work.write(
        "apps/web/all.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    );
    work.commit("v1");
    work.git(&["tag", "v1"]);
    work.write(
        "apps/web/all.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 4}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    );
    work.commit("v2");
    let dir = tempfile::tempdir().unwrap();
    let app = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: web, namespace: argocd}}\nspec:\n  source: {{repoURL: 'file://{}', targetRevision: main, path: apps/web}}\n  destination: {{server: 'https://kubernetes.default.svc', namespace: shop}}\n",
        work.path().display()
    );
    std::fs::write(dir.path().join("app.yaml"), app).unwrap();
    (work, dir)
}

#[test]
fn render_prints_the_objects_in_apply_order_as_yaml() {
    let (_work, dir) = repo_with_app();
    let app = dir.path().join("app.yaml");
    let out = flotilla(
        &["render", "-f", app.to_str().unwrap()],
        &dir.path().join("cache"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let ns = stdout.find("kind: Namespace").unwrap();
    let deploy = stdout.find("kind: Deployment").unwrap();
    assert!(ns < deploy, "the Namespace is applied first:\n{stdout}");
    assert!(stdout.contains("replicas: 4"), "{stdout}");
    assert!(stdout.contains("namespace: shop"), "{stdout}");
    assert_eq!(stdout.matches("---\n").count(), 2, "{stdout}");
}

#[test]
fn render_takes_another_revision() {
    let (_work, dir) = repo_with_app();
    let app = dir.path().join("app.yaml");
    let out = flotilla(
        &["render", "-f", app.to_str().unwrap(), "--revision", "v1"],
        &dir.path().join("cache"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("replicas: 1"));
}

#[test]
fn an_invalid_application_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.yaml");
    std::fs::write(
        &app,
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: web}\nspec:\n  source: {repoURL: /x, path: a, targetRevison: main}\n  destination: {name: east}\n",
    )
    .unwrap();
    let out = flotilla(&["render", "-f", app.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("targetRevison"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_unknown_revision_fails_naming_it_and_prints_nothing() {
    let (_work, dir) = repo_with_app();
    let app = dir.path().join("app.yaml");
    let out = flotilla(
        &[
            "render",
            "-f",
            app.to_str().unwrap(),
            "--revision",
            "no-such-branch",
        ],
        &dir.path().join("cache"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no-such-branch"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn cluster_add_prints_a_manifest_or_a_command_and_cluster_rm_revokes() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let added = flotilla(
        &[
            "cluster",
            "add",
            "east",
            "--label",
            "env=prod",
            "--data-dir",
            data_dir,
            "--hub-address",
            "hub.example:7443",
        ],
        data.path(),
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let manifest = text(&added.stdout);
    for kind in [
        "kind: Namespace",
        "kind: ServiceAccount",
        "kind: ClusterRole",
        "kind: Secret",
        "kind: Deployment",
    ] {
        assert!(manifest.contains(kind), "{kind} missing:\n{manifest}");
    }
    assert!(manifest.contains("hub.example:7443"));
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&manifest).unwrap();
    let secret = documents.iter().find(|d| d["kind"] == "Secret").unwrap();
    assert!(
        secret["stringData"]["FLOTILLA_TOKEN"]
            .as_str()
            .is_some_and(|token| token.starts_with("flt_")),
        "{manifest}"
    );

    // The same name again is a usage error; a new name with --print-command
    // prints the local command line with the same CA fingerprint.
    let again = flotilla(
        &["cluster", "add", "east", "--data-dir", data_dir],
        data.path(),
    );
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("already exists"));
    let west = flotilla(
        &[
            "cluster",
            "add",
            "west",
            "--print-command",
            "--data-dir",
            data_dir,
        ],
        data.path(),
    );
    assert!(west.status.success(), "{}", text(&west.stderr));
    let command = text(&west.stdout);
    assert!(
        command.starts_with("flotilla-agent --cluster west --hub 127.0.0.1:7443 --ca-fingerprint "),
        "{command}"
    );
    let fingerprint = command.split_whitespace().nth(6).unwrap();
    assert!(manifest.contains(fingerprint), "one CA for both");

    let bad = flotilla(
        &["cluster", "add", "Not_A_Name", "--data-dir", data_dir],
        data.path(),
    );
    assert_eq!(bad.status.code(), Some(2));

    let list = flotilla(&["cluster", "list", "--data-dir", data_dir], data.path());
    assert!(
        text(&list.stdout)
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["east", "Pending"])),
        "{}",
        text(&list.stdout)
    );
    let removed = flotilla(
        &["cluster", "rm", "east", "--data-dir", data_dir],
        data.path(),
    );
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let missing = flotilla(
        &["cluster", "rm", "east", "--data-dir", data_dir],
        data.path(),
    );
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn cluster_add_and_set_take_the_api_server_url_from_the_admin() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", data_dir]);
        flotilla(&all, data.path())
    };
    let added = run(&[
        "cluster",
        "add",
        "east",
        "--api-server",
        "https://east.example:6443",
    ]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    let added = run(&["cluster", "add", "west"]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    let wide = |name: &str| {
        let list = run(&["cluster", "list", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["server"]
            .clone()
    };
    assert_eq!(wide("east"), "https://east.example:6443");
    assert_eq!(wide("west"), serde_json::Value::Null);

    // West cannot be given east's URL; a URL it gets later is its own.
    let stolen = run(&[
        "cluster",
        "set",
        "west",
        "--api-server",
        "https://east.example:6443",
    ]);
    assert_eq!(stolen.status.code(), Some(2), "{}", text(&stolen.stderr));
    assert!(text(&stolen.stderr).contains("already belongs to cluster \"east\""));
    let set = run(&[
        "cluster",
        "set",
        "west",
        "--api-server",
        "https://west.example:6443",
    ]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert_eq!(wide("west"), "https://west.example:6443");
    let unset = run(&["cluster", "set", "west", "--unset-api-server"]);
    assert!(unset.status.success(), "{}", text(&unset.stderr));
    assert_eq!(wide("west"), serde_json::Value::Null);
    let neither = run(&["cluster", "set", "west"]);
    assert_eq!(neither.status.code(), Some(2));
    let bad = run(&["cluster", "set", "west", "--api-server", "west:6443"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
}

#[test]
fn bad_configuration_exits_64_naming_the_flag_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_dir = data.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &["hub", "--data-dir", data_dir, "--cert-days", "0"],
            "--cert-days",
        ),
        (
            &["hub", "--data-dir", data_dir, "--webhook-secret", " "],
            "--webhook-secret",
        ),
        (
            &[
                "hub",
                "--data-dir",
                data_dir,
                "--keep-alive-secs",
                "60",
                "--idle-timeout-secs",
                "60",
            ],
            "--keep-alive-secs",
        ),
        (
            &[
                "cluster",
                "add",
                "east",
                "--token-ttl-minutes",
                "0",
                "--data-dir",
                data_dir,
            ],
            "--token-ttl-minutes",
        ),
        (
            &[
                "cluster",
                "add",
                "east",
                "--hub-address",
                "no port",
                "--data-dir",
                data_dir,
            ],
            "--hub-address",
        ),
        (
            &[
                "app",
                "list",
                "--server",
                "https://127.0.0.1:1",
                "--insecure",
                "--ca-fingerprint",
                "00",
            ],
            "--ca-fingerprint",
        ),
    ];
    for (args, flag) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .env("XDG_CONFIG_HOME", dir.path())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(flag),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains("panicked"), "{args:?}");
    }
    // Refused before anything was opened or written.
    assert!(!data.exists());
}
