//! A real hub (store, link, API server and refresher on loopback) with one real
//! agent and its apply engine per local cluster, for tests and benchmarks that
//! drive it through the API and the `flotilla` binary as a user does.

// Test support: a panic is the failure report.
#![allow(clippy::unwrap_used, dead_code)]

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use flotilla_hub::account;
use flotilla_hub::link::{Link, LinkConfig};
use flotilla_hub::rbac::Policy;
use flotilla_hub::refresh::Refresher;
use flotilla_hub::render::{Renderer, Tools};
use flotilla_hub::server::{Config, Server};
use flotilla_hub::source::RepoCache;
use flotilla_hub::store::Store;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::{Value, json};

use super::link::RunningAgent;
use super::source::WorkRepo;

pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
pub const VIEWER_PASSWORD: &str = "viewer-password-for-tests";
/// The hub-wide secret push webhooks are signed with.
pub const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";

/// A hub with one real agent per local cluster (`FLOTILLA_TEST_CLUSTERS`).
pub struct Fleet {
    pub _hub_dir: tempfile::TempDir,
    pub cli_home: tempfile::TempDir,
    pub store: Store,
    pub link: Arc<Link>,
    pub server: Server,
    /// Every cluster with its agent, in `FLOTILLA_TEST_CLUSTERS` order.
    pub members: Vec<Member>,
    /// The first cluster's name, for tests that use one cluster.
    pub cluster: String,
    pub http: reqwest::Client,
    pub admin: String,
    pub viewer: String,
}

/// One local cluster and the agent that runs for it.
pub struct Member {
    pub name: String,
    pub kube: kube::Client,
    pub agent: RunningAgent,
    pub _dir: tempfile::TempDir,
}

impl Fleet {
    /// A hub and an agent on the first local cluster only.
    pub async fn start() -> Fleet {
        Self::start_on(1).await
    }

    /// A hub and agents on the first `clusters` local clusters.
    pub async fn start_on(clusters: usize) -> Fleet {
        let locals: Vec<_> = flotilla_tests::fleet()
            .expect("the local fleet is running")
            .into_iter()
            .take(clusters)
            .collect();
        assert!(
            clusters > 0 && locals.len() == clusters,
            "this test needs {clusters} local clusters in FLOTILLA_TEST_CLUSTERS"
        );
        let mut fleet = Self::hub(locals[0].name()).await;
        for local in &locals {
            let member = Member::start(&fleet.store, &fleet.link, local).await;
            fleet.members.push(member);
        }
        fleet
    }

    /// A hub with `cluster` registered in its store and no agent connected, for
    /// the hub's side of what ends at the link.
    pub async fn start_unconnected(cluster: &str) -> Fleet {
        let fleet = Self::hub(cluster).await;
        fleet
            .store
            .put_cluster(&flotilla_hub::store::ClusterRecord {
                name: cluster.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        fleet
    }

    /// The hub alone: store, link, API server and refresher, with `admin` and a
    /// read-only `viewer` logged in.
    async fn hub(cluster: &str) -> Fleet {
        super::link::crypto();
        let hub_dir = tempfile::tempdir().unwrap();
        let store = Store::open(&hub_dir.path().join("db")).unwrap();
        let link = Arc::new(
            Link::start(
                store.clone(),
                LinkConfig::new("127.0.0.1:0".parse().unwrap()),
            )
            .await
            .unwrap(),
        );
        let refresher = Refresher::new(
            store.clone(),
            RepoCache::new(hub_dir.path().join("repos")).unwrap(),
            Renderer::new(Tools::from_env()),
        )
        .await
        .unwrap();
        let mut policy = Policy::parse("g, viewer, role:readonly", None, "test policy").unwrap();
        policy.add_grouping("admin", "role:admin");
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            webhook_secret: Some(WEBHOOK_SECRET.to_owned()),
            policy,
            admin_password: Some(ADMIN_PASSWORD.to_owned()),
            tls: flotilla_hub::server::ApiTls::Plain,
            link: None,
            agent_address: None,
        };
        let server = Server::start_with_link(config, store.clone(), refresher, Some(link.clone()))
            .await
            .unwrap();
        account::create(&store, "viewer", VIEWER_PASSWORD, Vec::new())
            .await
            .unwrap();

        let http = reqwest::Client::new();
        let mut fleet = Fleet {
            _hub_dir: hub_dir,
            cli_home: tempfile::tempdir().unwrap(),
            store,
            link,
            server,
            cluster: cluster.to_owned(),
            members: Vec::new(),
            http,
            admin: String::new(),
            viewer: String::new(),
        };
        fleet.admin = fleet.login("admin", ADMIN_PASSWORD).await;
        fleet.viewer = fleet.login("viewer", VIEWER_PASSWORD).await;
        fleet
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    pub async fn login(&self, user: &str, password: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/api/v1/session",
                None,
                json!({"username": user, "password": password}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// One API call; the status and the JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if !body.is_null() {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn create_app(&self, repo: &WorkRepo, name: &str, automated: bool) {
        let policy = if automated {
            "\n  syncPolicy: {automated: {prune: true}}"
        } else {
            ""
        };
        let manifest = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  project: default\n  source: {{repoURL: 'file://{}', path: app, targetRevision: main}}\n  destination: {{name: {}, namespace: default}}{policy}\n",
            repo.path().display(),
            self.cluster
        );
        let response = self
            .http
            .post(format!("{}/api/v1/applications", self.url()))
            .bearer_auth(&self.admin)
            .body(manifest)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }

    pub async fn app(&self, name: &str) -> Value {
        let (status, body) = self
            .call(
                "GET",
                &format!("/api/v1/applications/default/{name}"),
                Some(&self.admin),
                Value::Null,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls the app until `f` holds for its derived status.
    pub async fn wait_status(&self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let app = self.app(name).await;
            if f(&app["status"]) {
                return app;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {name}: {what}; last: {}",
                serde_json::to_string_pretty(&app["status"]).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Tells the hub that `repo` was pushed to, as GitHub does: a signed push
    /// webhook naming the commit. Answers the HTTP status.
    pub async fn push_webhook(&self, repo: &WorkRepo) -> u16 {
        use hmac::Mac as _;
        use hmac::digest::KeyInit as _;
        let body = json!({
            "ref": "refs/heads/main",
            "after": repo.head(),
            "repository": {"clone_url": format!("file://{}", repo.path().display())},
        })
        .to_string();
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let signature: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.http
            .post(format!("{}/api/webhook", self.url()))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-hub-signature-256", format!("sha256={signature}"))
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Creates an Application from its manifest, as `flotilla app create -f` does.
    pub async fn create_manifest(&self, manifest: &str) -> (u16, Value) {
        self.post_text("/api/v1/applications", manifest).await
    }

    /// POSTs `text` (a YAML manifest) as the admin.
    pub async fn post_text(&self, path: &str, text: &str) -> (u16, Value) {
        let manifest = text;
        let response = self
            .http
            .post(format!("{}{path}", self.url()))
            .bearer_auth(&self.admin)
            .body(manifest.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Runs the `flotilla` binary logged in as `user`.
    pub fn cli(&self, user: &str, args: &[&str]) -> Output {
        let home = self.cli_home.path().join(user);
        std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .env("XDG_CONFIG_HOME", &home)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    pub fn cli_login(&self, user: &str, password: &str) {
        let out = self.cli(
            user,
            &[
                "login",
                "--server",
                &self.url(),
                "--username",
                user,
                "--password",
                password,
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// The first cluster's client.
    pub fn kube(&self) -> &kube::Client {
        &self.members[0].kube
    }

    pub async fn config_map(&self, name: &str) -> Option<ConfigMap> {
        Api::<ConfigMap>::namespaced(self.kube().clone(), "default")
            .get_opt(name)
            .await
            .unwrap()
    }

    pub async fn stop(self, config_maps: &[&str]) {
        if let Some(first) = self.members.first() {
            let api = Api::<ConfigMap>::namespaced(first.kube.clone(), "default");
            for name in config_maps {
                let _ = api.delete(name, &Default::default()).await;
            }
        }
        for member in self.members {
            member.agent.stop().await.unwrap();
        }
        self.server.stop().await;
        assert!(
            Link::stop_shared(self.link, Duration::from_secs(10)).await,
            "the link is still shared 10 s after the server stopped"
        );
        drop(self.store);
    }
}

impl Member {
    /// Registers `local` with the hub and starts its agent with the real engine.
    pub async fn start(store: &Store, link: &Link, local: &flotilla_tests::LocalCluster) -> Member {
        let name = local.name().to_owned();
        let kube = local.client().await.unwrap();
        let url = local.server_url().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token = flotilla_hub::cluster::add(
            store,
            &name,
            Default::default(),
            flotilla_hub::cluster::DEFAULT_TOKEN_TTL,
            std::time::SystemTime::now(),
        )
        .await
        .unwrap()
        .token;
        let mut config = flotilla_agent::link::AgentConfig::new(
            link.local_addr().unwrap(),
            link.ca_fingerprint(),
            name.clone(),
            dir.path().to_owned(),
        );
        config.token = Some(token);
        config.facts = flotilla_agent::facts::read(kube.clone(), url)
            .await
            .unwrap();
        config.backoff_initial = Duration::from_millis(100);
        let inventory = flotilla_agent::store::Store::open(&dir.path().join("inventory")).unwrap();
        let applier = flotilla_agent::apply::Applier::new(
            kube.clone(),
            name.clone(),
            inventory,
            flotilla_agent::apply::Options::default(),
        );
        let mut agent =
            RunningAgent::start_with(config, flotilla_agent::engine::Engine::new(applier));
        agent.wait("connected", |s| s.connected).await;
        Member {
            name,
            kube,
            agent,
            _dir: dir,
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A repository whose `app/` holds one ConfigMap with `value`.
pub fn repo_with_config_map(cm: &str, value: &str) -> WorkRepo {
    let repo = WorkRepo::new();
    write_config_map(&repo, cm, value);
    repo.commit(value);
    repo
}

pub fn write_config_map(repo: &WorkRepo, cm: &str, value: &str) {
    repo.write(
        "app/cm.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {cm}, namespace: default}}\ndata: {{value: \"{value}\"}}\n"
        ),
    );
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}
