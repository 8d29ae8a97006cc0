//! The hub service: polling at each repository's interval, and refreshing at once on
//! a signed push webhook, over real HTTP on loopback.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

#[path = "source/fixture.rs"]
#[allow(dead_code)]
mod fixture;

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

const SECRET: &str = "push-secret";

struct Running {
    _dir: tempfile::TempDir,
    store: Store,
    server: Server,
    repo: WorkRepo,
}

async fn start(poll_interval_secs: u64) -> Running {
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
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        webhook_secret: None,
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

    /// Sends a GitHub push webhook for the repo, signed with `secret`; returns the status.
    async fn push_webhook(&self, after: &str, secret: &str) -> u16 {
        let body = serde_json::json!({
            "ref": "refs/heads/main",
            "after": after,
            "repository": {"clone_url": self.repo.path().display().to_string()},
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
        response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap()
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
