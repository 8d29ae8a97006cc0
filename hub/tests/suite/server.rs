//! The hub service: polling at each repository's interval, and refreshing at once on
//! a signed push webhook, over real HTTP on loopback.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use flotilla_hub::app::Application;
use flotilla_hub::refresh::Refresher;
use flotilla_hub::render::{Renderer, Tools};
use flotilla_hub::server::{Config, Server, WEBHOOK_PATH};
use flotilla_hub::source::{RepoCache, RepoSpec};
use flotilla_hub::store::{AppOrigin, AppRecord, ClusterRecord, RepoRecord, Store};
use hmac::{KeyInit as _, Mac as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use fixture::WorkRepo;

use crate::support::source as fixture;

const SECRET: &str = "push-secret";
const ADMIN_PASSWORD: &str = "correct horse battery staple";

struct Running {
    _dir: tempfile::TempDir,
    store: Store,
    server: Server,
    repo: WorkRepo,
}

async fn start(poll_interval_secs: u64) -> Running {
    start_with_secret(poll_interval_secs, None).await
}

/// As [`start`], with a hub-wide webhook secret besides the repository's own.
async fn start_with_secret(poll_interval_secs: u64, hub_secret: Option<&str>) -> Running {
    let repo = WorkRepo::new();
    repo.write(
        "apps/a/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {v: \"1\"}\n",
    );
    repo.commit("first");
    let url = repo.path().display().to_string();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    store
        .put_cluster(&ClusterRecord {
            name: "east".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut record = RepoRecord::new(RepoSpec::new(url.clone()));
    record.poll_interval_secs = poll_interval_secs;
    record.webhook_secret = Some(SECRET.to_owned());
    store.put_repo(&record).await.unwrap();
    let app = Application::from_yaml(
        &format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: a}}\nspec:\n  source: {{repoURL: '{url}', path: apps/a, targetRevision: main}}\n  destination: {{name: east, namespace: a}}\n"
        ),
        "test",
    )
    .unwrap();
    store
        .put_app(&AppRecord::new(app, AppOrigin::Store))
        .await
        .unwrap();

    let cache = RepoCache::new(dir.path().join("repos")).unwrap();
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env()))
        .await
        .unwrap();
    let mut policy =
        flotilla_hub::rbac::Policy::parse("g, viewer, role:readonly", None, "test policy").unwrap();
    policy.add_grouping("admin", "role:admin");
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        webhook_secret: hub_secret.map(str::to_owned),
        policy,
        admin_password: Some(ADMIN_PASSWORD.to_owned()),
        tls: flotilla_hub::server::ApiTls::Plain,
        link: None,
        agent_address: None,
    };
    let server = Server::start(config, store.clone(), refresher)
        .await
        .unwrap();
    Running {
        _dir: dir,
        store,
        server,
        repo,
    }
}

impl Running {
    fn generation(&self) -> Option<u64> {
        self.store
            .latest_bundle("default", "a", "east")
            .unwrap()
            .map(|(g, _)| g)
    }

    async fn wait_for_generation(&self, want: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.generation() == Some(want) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn change(&self, value: &str) -> String {
        self.repo.write(
            "apps/a/cm.yaml",
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\ndata: {{v: \"{value}\"}}\n"
            ),
        );
        self.repo.commit(value)
    }

    /// One HTTP/1.1 request to the API; returns the status and the JSON body.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: hub\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(self.server.local_addr())
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
        let json = response
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    async fn login(&self, user: &str, password: &str) -> Option<String> {
        let body = serde_json::json!({"username": user, "password": password}).to_string();
        let (status, json) = self.call("POST", "/api/v1/session", None, &body).await;
        (status == 200).then(|| json["token"].as_str().unwrap().to_owned())
    }

    /// Sends a GitHub push webhook for the repo, signed with `secret`; returns the status.
    async fn push_webhook(&self, after: &str, secret: &str) -> u16 {
        let url = self.repo.path().display().to_string();
        self.push_webhook_for(&url, after, secret).await.0
    }

    /// Sends a GitHub push webhook for `url`, signed with `secret`; returns the
    /// status and the body.
    async fn push_webhook_for(&self, url: &str, after: &str, secret: &str) -> (u16, String) {
        let body = serde_json::json!({
            "ref": "refs/heads/main",
            "after": after,
            "repository": {"clone_url": url},
        })
        .to_string();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let signature: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let request = format!(
            "POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: sha256={signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(self.server.local_addr())
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_push_webhook_refreshes_at_once() {
    let hub = start(3600).await;
    assert!(
        hub.wait_for_generation(1, Duration::from_secs(20)).await,
        "the first refresh at start"
    );

    let commit = hub.change("2");
    assert_eq!(hub.push_webhook(&commit, SECRET).await, 202);
    assert!(
        hub.wait_for_generation(2, Duration::from_secs(20)).await,
        "the webhook triggered a refresh long before the hour-long poll"
    );
    hub.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_with_a_bad_signature_is_refused_and_changes_nothing() {
    let hub = start(3600).await;
    assert!(hub.wait_for_generation(1, Duration::from_secs(20)).await);

    let commit = hub.change("2");
    assert_eq!(hub.push_webhook(&commit, "not-the-secret").await, 401);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hub.generation(), Some(1));
    hub.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_answer_does_not_tell_which_repositories_are_watched() {
    let unwatched = "https://git.example/not-watched.git";
    let commit = "0123456789abcdef0123456789abcdef01234567";

    // With only the repository's own secret, a push is answered alike whether
    // it names the watched repository or not.
    let hub = start(3600).await;
    let url = hub.repo.path().display().to_string();
    let watched = hub.push_webhook_for(&url, commit, SECRET).await;
    let other = hub.push_webhook_for(unwatched, commit, SECRET).await;
    assert_eq!(watched.0, 202, "{watched:?}");
    assert_eq!(watched, other);
    hub.server.stop().await;

    // With a hub-wide secret, a bad signature is refused alike for both.
    let hub = start_with_secret(3600, Some("hub-wide-secret")).await;
    let url = hub.repo.path().display().to_string();
    let watched = hub.push_webhook_for(&url, commit, "forged").await;
    let other = hub.push_webhook_for(unwatched, commit, "forged").await;
    assert_eq!(watched.0, 401, "{watched:?}");
    assert_eq!(other.0, 401, "{other:?}");
    let signed = hub
        .push_webhook_for(unwatched, commit, "hub-wide-secret")
        .await;
    assert_eq!(signed.0, 202, "{signed:?}");
    hub.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_webhook_secret_is_refused_and_signs_nothing() {
    let hub = start(3600).await;
    assert!(hub.wait_for_generation(1, Duration::from_secs(20)).await);

    // Through the API: refused, nothing stored.
    let admin = hub.login("admin", ADMIN_PASSWORD).await.unwrap();
    let elsewhere = "/nonexistent-flotilla-test/repo.git";
    for secret in ["", "  "] {
        let body = serde_json::json!({"url": elsewhere, "webhookSecret": secret}).to_string();
        let (status, json) = hub
            .call("POST", "/api/v1/repositories", Some(&admin), &body)
            .await;
        assert_eq!(status, 400, "{json}");
        assert!(
            json["error"].as_str().unwrap().contains("webhookSecret"),
            "{json}"
        );
    }
    assert!(hub.store.repo(elsewhere).unwrap().is_none());

    // One stored before the rule: a webhook signed with it changes nothing.
    let url = hub.repo.path().display().to_string();
    let mut record = hub.store.repo(&url).unwrap().unwrap();
    record.webhook_secret = Some(String::new());
    hub.store.put_repo(&record).await.unwrap();
    let commit = hub.change("2");
    assert_eq!(hub.push_webhook(&commit, "").await, 401);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hub.generation(), Some(1));
    hub.server.stop().await;

    // As the hub-wide secret: the hub does not start.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    let cache = RepoCache::new(dir.path().join("repos")).unwrap();
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env()))
        .await
        .unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        webhook_secret: Some(String::new()),
        policy: flotilla_hub::server::default_policy(),
        admin_password: Some(ADMIN_PASSWORD.to_owned()),
        tls: flotilla_hub::server::ApiTls::Plain,
        link: None,
        agent_address: None,
    };
    match Server::start(config, store, refresher).await {
        Err(e) => assert!(e.to_string().contains("webhook secret is empty"), "{e}"),
        Ok(server) => {
            server.stop().await;
            panic!("a hub started with an empty webhook secret");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_webhook_the_repo_is_polled_at_its_interval() {
    let hub = start(1).await;
    assert!(hub.wait_for_generation(1, Duration::from_secs(20)).await);
    hub.change("2");
    assert!(
        hub.wait_for_generation(2, Duration::from_secs(20)).await,
        "a one-second poll picks the commit up"
    );
    hub.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_logs_in_creates_an_app_and_the_hub_renders_it() {
    let hub = start(3600).await;
    assert_eq!(hub.login("admin", "wrong").await, None);
    assert_eq!(
        hub.call("GET", "/api/v1/applications", None, "").await.0,
        401
    );
    let admin = hub.login("admin", ADMIN_PASSWORD).await.unwrap();

    let url = hub.repo.path().display().to_string();
    let app = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: b}}\nspec:\n  source: {{repoURL: '{url}', path: apps/a, targetRevision: main}}\n  destination: {{name: east, namespace: b}}\n"
    );
    let (status, created) = hub
        .call("POST", "/api/v1/applications", Some(&admin), &app)
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, _) = hub
        .call("POST", "/api/v1/applications", Some(&admin), &app)
        .await;
    assert_eq!(status, 409, "a second create of the same app conflicts");
    let invalid = app.replace("targetRevision", "targetRevison");
    let (status, body) = hub
        .call("POST", "/api/v1/applications", Some(&admin), &invalid)
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("targetRevison"),
        "{body}"
    );

    // The create triggered a refresh: the new app gets its first bundle.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, app) = hub
            .call("GET", "/api/v1/applications/default/b", Some(&admin), "")
            .await;
        if app["clusters"][0]["generation"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no bundle for the created app: {app}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = hub.store.events().unwrap();
    assert!(events.iter().any(|e| e.actor == "admin"
        && e.action == "create"
        && e.target == "application/default/b"));
    hub.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rbac_lets_a_readonly_user_look_but_not_touch() {
    let hub = start(3600).await;
    let admin = hub.login("admin", ADMIN_PASSWORD).await.unwrap();
    let account = serde_json::json!({"name": "viewer", "password": "viewer-pass"}).to_string();
    assert_eq!(
        hub.call("POST", "/api/v1/accounts", Some(&admin), &account)
            .await
            .0,
        201
    );
    let viewer = hub.login("viewer", "viewer-pass").await.unwrap();

    let (status, list) = hub
        .call("GET", "/api/v1/applications", Some(&viewer), "")
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["name"], "a");
    let (status, body) = hub
        .call(
            "DELETE",
            "/api/v1/applications/default/a",
            Some(&viewer),
            "",
        )
        .await;
    assert_eq!(status, 403);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("viewer may not delete applications default/a"),
        "{body}"
    );
    let again = serde_json::json!({"name": "x", "password": "y"}).to_string();
    assert_eq!(
        hub.call("POST", "/api/v1/accounts", Some(&viewer), &again)
            .await
            .0,
        403
    );
    assert!(
        hub.store.app("default", "a").unwrap().is_some(),
        "nothing was deleted"
    );
    hub.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn repository_credentials_go_in_and_never_come_out() {
    let hub = start(3600).await;
    let admin = hub.login("admin", ADMIN_PASSWORD).await.unwrap();
    let repo = serde_json::json!({
        "url": "https://git.example/private.git",
        "username": "ci",
        "password": "tok-3f9a-secret",
        "webhookSecret": "hook-9c1d-secret",
    })
    .to_string();
    let (status, _) = hub
        .call("POST", "/api/v1/repositories", Some(&admin), &repo)
        .await;
    assert_eq!(status, 201);
    let (status, list) = hub
        .call("GET", "/api/v1/repositories", Some(&admin), "")
        .await;
    assert_eq!(status, 200);
    let text = list.to_string();
    assert!(
        text.contains("https://git.example/private.git") && text.contains("\"https\""),
        "{text}"
    );
    assert!(
        !text.contains("tok-3f9a-secret") && !text.contains("hook-9c1d-secret"),
        "{text}"
    );
    let stored = hub
        .store
        .repo("https://git.example/private.git")
        .unwrap()
        .unwrap();
    assert!(matches!(
        stored.credentials,
        Some(flotilla_hub::source::Credentials::Https { .. })
    ));
    hub.server.stop().await;
}

/// Runs the `flotilla` CLI with its session kept in `config`.
fn cli(config: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_works_through_the_api_and_reports_rbac_denials() {
    let hub = start(3600).await;
    let config = tempfile::tempdir().unwrap();
    let server = format!("http://{}", hub.server.local_addr());
    let c = config.path();

    let (ok, out) = cli(c, &["app", "list"], &[]);
    assert!(!ok && out.contains("not logged in"), "{out}");
    let (ok, out) = cli(
        c,
        &["login", "--server", &server, "--username", "admin"],
        &[("FLOTILLA_PASSWORD", "wrong")],
    );
    assert!(!ok && out.contains("unauthorized"), "{out}");
    let (ok, out) = cli(
        c,
        &["login", "--server", &server, "--username", "admin"],
        &[("FLOTILLA_PASSWORD", ADMIN_PASSWORD)],
    );
    assert!(ok, "{out}");

    let app_file = c.join("app.yaml");
    std::fs::write(
        &app_file,
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: c}}\nspec:\n  source: {{repoURL: '{}', path: apps/a, targetRevision: main}}\n  destination: {{name: east, namespace: c}}\n",
            hub.repo.path().display()
        ),
    )
    .unwrap();
    let (ok, out) = cli(c, &["app", "create", "-f", app_file.to_str().unwrap()], &[]);
    assert!(ok && out.contains("application default/c created"), "{out}");
    let (ok, out) = cli(c, &["app", "list"], &[]);
    assert!(ok && out.contains("apps/a@main"), "{out}");

    let (ok, out) = cli(
        c,
        &[
            "repo",
            "add",
            "https://git.example/p.git",
            "--username",
            "ci",
        ],
        &[("FLOTILLA_REPO_PASSWORD", "tok-77-secret")],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(c, &["repo", "list"], &[]);
    assert!(
        ok && out.contains("https://git.example/p.git") && !out.contains("tok-77-secret"),
        "{out}"
    );

    let (ok, out) = cli(
        c,
        &["account", "create", "viewer"],
        &[("FLOTILLA_ACCOUNT_PASSWORD", "viewer-pass")],
    );
    assert!(ok, "{out}");
    let (ok, _) = cli(
        c,
        &["login", "--server", &server, "--username", "viewer"],
        &[("FLOTILLA_PASSWORD", "viewer-pass")],
    );
    assert!(ok);
    let (ok, out) = cli(c, &["app", "delete", "c"], &[]);
    assert!(
        !ok && out.contains("permission denied: viewer may not delete applications default/c"),
        "{out}"
    );
    assert!(hub.store.app("default", "c").unwrap().is_some());
    hub.server.stop().await;
}

/// A Git remote on loopback that accepts connections and never answers.
async fn stalling_remote() -> String {
    // As the hub's main does: fetching over https needs a crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/fleet.git", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalling_repository_does_not_hold_up_another() {
    let hub = start(1).await;
    assert!(hub.wait_for_generation(1, Duration::from_secs(20)).await);
    let stalling = stalling_remote().await;
    let mut record = RepoRecord::new(RepoSpec::new(stalling.clone()));
    record.poll_interval_secs = 1;
    hub.store.put_repo(&record).await.unwrap();
    let app = Application::from_yaml(
        &format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: stalled}}\nspec:\n  source: {{repoURL: '{stalling}', path: apps/a, targetRevision: main}}\n  destination: {{name: east, namespace: stalled}}\n"
        ),
        "test",
    )
    .unwrap();
    hub.store
        .put_app(&AppRecord::new(app, AppOrigin::Store))
        .await
        .unwrap();
    // Let the poll loop start the fetch that never ends.
    tokio::time::sleep(Duration::from_secs(3)).await;
    hub.change("2");
    assert!(
        hub.wait_for_generation(2, Duration::from_secs(10)).await,
        "the stalled fetch of {stalling} held up the other repository's refresh"
    );
    hub.server.stop().await;
}
