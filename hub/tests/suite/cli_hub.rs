//! `flotilla hub` and the CLI against it, as separate processes over HTTPS on
//! loopback: login pinned to the hub's CA, tokens, projects, clusters, repos,
//! output formats, completion, logout and exit codes.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const ADMIN_PASSWORD: &str = "cli-admin-pw-61f0";

/// A `flotilla hub` process; killed (by its own pid) when dropped.
struct HubProcess {
    child: Child,
    api: String,
    fingerprint: String,
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_hub(data: &Path, alias: &str) -> HubProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            alias,
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
        ])
        .env("FLOTILLA_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("XDG_CACHE_HOME", data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut api = String::new();
    let mut fingerprint = String::new();
    while api.is_empty() || fingerprint.is_empty() {
        let line = lines.next().expect("the hub printed its address").unwrap();
        if let Some(url) = line.strip_prefix("hub API: ") {
            api = url.to_owned();
        }
        if let Some((_, f)) = line.split_once("--ca-fingerprint): ") {
            fingerprint = f.to_owned();
        }
    }
    HubProcess {
        child,
        api,
        fingerprint,
    }
}

fn flotilla(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env_remove("FLOTILLA_SERVER")
        .env_remove("FLOTILLA_DATA_DIR")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn the_cli_drives_a_running_hub_over_pinned_https() {
    let data = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    let hub = start_hub(data.path(), "hub");
    assert!(hub.api.starts_with("https://127.0.0.1:"), "{}", hub.api);

    // A wrong pin is refused; the right one logs in and is saved.
    let wrong = "00".repeat(32);
    let refused = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["login", "--server", &hub.api, "--ca-fingerprint", &wrong])
        .env("XDG_CONFIG_HOME", cfg)
        .env("FLOTILLA_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    // Without a pin the system's roots do not know the hub's CA; the error says
    // what to do.
    let unpinned = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["login", "--server", &hub.api])
        .env("XDG_CONFIG_HOME", cfg)
        .env("FLOTILLA_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert_eq!(unpinned.status.code(), Some(1));
    assert!(
        text(&unpinned.stderr).contains("--ca-fingerprint"),
        "{}",
        text(&unpinned.stderr)
    );
    // `login HOST:PORT` as argocd takes it, https implied.
    let login = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "login",
            hub.api.trim_start_matches("https://"),
            "--ca-fingerprint",
            &hub.fingerprint,
        ])
        .env("XDG_CONFIG_HOME", cfg)
        .env("FLOTILLA_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    ok(&login);
    let session = std::fs::read_to_string(cfg.join("flotilla/session.json")).unwrap();
    assert!(session.contains(&hub.fingerprint), "{session}");

    // Projects from flags, listed as a table, JSON and YAML.
    ok(&flotilla(
        cfg,
        &[
            "proj",
            "create",
            "shop",
            "--description",
            "the shop",
            "--src",
            "*",
            "--dest",
            "*,shop",
        ],
    ));
    let table = ok(&flotilla(cfg, &["proj", "list"]));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("shop ")), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&flotilla(cfg, &["proj", "list", "-o", "json"]))).unwrap();
    assert!(
        json["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "shop")
    );
    let yaml = ok(&flotilla(cfg, &["proj", "get", "shop", "-o", "yaml"]));
    assert!(yaml.contains("the shop"), "{yaml}");

    // A project with a role, from a manifest, and a token for the role.
    let manifest = data.path().join("ci.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {name: ci}\nspec:\n  sourceRepos: ['*']\n  destinations: [{server: '*', namespace: '*'}]\n  roles:\n    - name: deployer\n      policies: ['p, proj:ci:deployer, applications, get, ci/*, allow']\n",
    )
    .unwrap();
    ok(&flotilla(
        cfg,
        &["proj", "create", "-f", manifest.to_str().unwrap()],
    ));
    let token = ok(&flotilla(
        cfg,
        &[
            "proj",
            "role",
            "create-token",
            "ci",
            "deployer",
            "--expires-in",
            "1h",
        ],
    ));
    let token = token.trim();
    assert!(token.starts_with("flt_api_"), "{token}");
    let listed = ok(&flotilla(
        cfg,
        &["proj", "role", "list-tokens", "ci", "deployer"],
    ));
    assert!(!listed.contains(token));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    // The role token works with --auth-token and is denied what the role lacks.
    let apps = ok(&flotilla(cfg, &["app", "list", "--auth-token", token]));
    assert!(apps.starts_with("NAME"), "{apps}");
    let denied = flotilla(
        cfg,
        &[
            "repo",
            "add",
            "https://git.example/x.git",
            "--auth-token",
            token,
        ],
    );
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        text(&denied.stderr).contains("permission denied"),
        "{}",
        text(&denied.stderr)
    );

    // An account token for yourself.
    let own = ok(&flotilla(cfg, &["account", "generate-token"]));
    assert!(own.trim().starts_with("flt_api_"));
    let mine = ok(&flotilla(cfg, &["account", "list-tokens", "-o", "json"]));
    assert!(!mine.contains(own.trim()));

    // Clusters through the API while the hub runs.
    let command = ok(&flotilla(
        cfg,
        &[
            "cluster",
            "add",
            "east",
            "--label",
            "env=prod",
            "--print-command",
        ],
    ));
    assert!(
        command.starts_with("flotilla-agent --cluster east --hub 127.0.0.1:"),
        "{command}"
    );
    assert!(command.contains(&hub.fingerprint), "{command}");
    let clusters = ok(&flotilla(cfg, &["cluster", "list"]));
    assert!(
        clusters
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["east", "Pending"])),
        "{clusters}"
    );
    let wide = ok(&flotilla(cfg, &["cluster", "list", "-o", "wide"]));
    assert!(wide.contains("env=prod"), "{wide}");
    let east: serde_json::Value = serde_json::from_str(&ok(&flotilla(
        cfg,
        &["cluster", "get", "east", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(east["state"], "Pending");
    ok(&flotilla(cfg, &["cluster", "rm", "east"]));
    let gone = flotilla(cfg, &["cluster", "get", "east"]);
    assert_eq!(gone.status.code(), Some(1));

    // Repositories: add, list, remove.
    ok(&flotilla(
        cfg,
        &["repo", "add", "https://git.example/shop.git"],
    ));
    let repos = ok(&flotilla(cfg, &["repo", "list", "-o", "yaml"]));
    assert!(repos.contains("https://git.example/shop.git"), "{repos}");
    ok(&flotilla(
        cfg,
        &["repo", "rm", "https://git.example/shop.git"],
    ));
    let repos = ok(&flotilla(cfg, &["repo", "list"]));
    assert!(!repos.contains("git.example/shop.git"), "{repos}");

    // Bad usage exits 2.
    let bad = flotilla(
        cfg,
        &[
            "proj",
            "role",
            "create-token",
            "ci",
            "deployer",
            "-e",
            "5 fortnights",
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    let bad = flotilla(cfg, &["cluster", "add", "Not_A_Name"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    let bad = flotilla(cfg, &["app", "list", "-o", "xml"]);
    assert_eq!(bad.status.code(), Some(2));

    // Logout ends the session on the hub too.
    let saved: serde_json::Value = serde_json::from_str(&session).unwrap();
    let old_token = saved["token"].as_str().unwrap().to_owned();
    ok(&flotilla(cfg, &["logout"]));
    assert!(!cfg.join("flotilla/session.json").exists());
    let after = flotilla(cfg, &["app", "list"]);
    assert_eq!(after.status.code(), Some(1));
    assert!(
        text(&after.stderr).contains("not logged in"),
        "{}",
        text(&after.stderr)
    );
    let stale = flotilla(
        cfg,
        &[
            "app",
            "list",
            "--server",
            &hub.api,
            "--ca-fingerprint",
            &hub.fingerprint,
            "--auth-token",
            &old_token,
        ],
    );
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        text(&stale.stderr).contains("unauthorized"),
        "{}",
        text(&stale.stderr)
    );
}

#[test]
fn serve_is_an_alias_and_plain_http_off_loopback_exits_64() {
    let data = tempfile::tempdir().unwrap();
    let hub = start_hub(data.path(), "serve");
    assert!(hub.api.starts_with("https://"));
    drop(hub);

    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "hub",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--plain-http",
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--plain-http"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn completion_scripts_are_printed_for_each_shell() {
    let config = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&flotilla(config.path(), &["completion", shell]));
        assert!(script.contains("flotilla"), "{shell}");
        assert!(
            script.contains("generate-token"),
            "{shell}: subcommands are completed"
        );
    }
    let bad = flotilla(config.path(), &["completion", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}
