//! The hub's JSON API under `/api/v1`, behind bearer tokens and Argo CD RBAC.
//!
//! Every request but login carries `Authorization: Bearer TOKEN`; every decision is
//! [`rbac::Policy::enforce`] on (resource, action, object) as Argo CD names them,
//! with application objects written `PROJECT/NAME`; every write is recorded in the
//! audit log with its user. Repository credentials go in and never come out.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod ops;

use crate::account::throttle::LoginThrottle;
use crate::account::{self, Principal};
use crate::app::{AppProject, Application};
use crate::link::Link;
use crate::metrics::Metrics;
use crate::rbac::Policy;
use crate::refresh::Refresher;
use crate::source::{Credentials, RepoSpec, RepositorySecret};
use crate::store::{AppOrigin, AppRecord, Event, RepoRecord, Store};

mod clusters;
pub mod error;
mod health;
mod projects;
mod repos;
mod rollouts;
mod tokens;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub policy: Arc<Policy>,
    /// Repositories to refresh at once (a new app's repo).
    /// Bounded: when it is full, the request is dropped and the poll catches up.
    pub refresh_now: mpsc::Sender<String>,
    /// The agent link, when this hub runs one: cluster removal closes connections
    /// through it, and readiness waits for it.
    pub link: Option<Arc<Link>>,
    /// What the hub counts, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The QUIC address agents dial, for install manifests; a request may name
    /// another.
    pub agent_address: Option<String>,
    /// Renders an app at another revision, for `sync --revision`.
    pub refresher: Option<Arc<Refresher>>,
    /// How long a sync command may run on an agent.
    pub command_timeout: Duration,
    /// What logins may cost: attempts per client and hashes at once.
    pub logins: Arc<LoginThrottle>,
    /// The rollouts of RollingSync ApplicationSets.
    pub rollouts: Option<Arc<crate::rollout::Rollouts>>,
}

/// The longest poll interval a repository may have: a week. Longer ones are
/// refused (and a far larger one would overflow the poller's clock).
pub const MAX_POLL_INTERVAL_SECS: u64 = 7 * 24 * 3600;

/// How long the API waits for an agent to finish a sync by default.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

type Reply = (StatusCode, Json<Value>);

fn error(status: StatusCode, message: impl std::fmt::Display) -> Reply {
    (status, Json(error::body(status, &message.to_string())))
}

/// A 500 that names the failure with its causes: "store apps: writing" alone
/// does not tell an operator that the disk is full. A cause may quote a
/// repository URL, so credentials in one are taken out.
fn failed(e: &dyn std::error::Error) -> Reply {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        crate::render::redact_urls(&flotilla_common::error::describe(e)),
    )
}

fn ok(value: Value) -> Reply {
    (StatusCode::OK, Json(value))
}

/// The routes, to be nested in the hub's router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/api/v1/session",
            post(login).layer(axum::extract::DefaultBodyLimit::max(LOGIN_BODY_LIMIT)),
        )
        .route("/api/v1/applications", get(list_apps).post(create_app))
        .route(
            "/api/v1/applications/{project}/{name}",
            get(get_app).delete(delete_app),
        )
        .merge(ops::routes())
        .route("/api/v1/repositories", get(list_repos).post(create_repo))
        .route("/api/v1/accounts", post(create_account))
        .merge(clusters::routes())
        .merge(projects::routes())
        .merge(repos::routes())
        .merge(rollouts::routes())
        .merge(tokens::routes())
        .merge(health::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticated,
        ))
        .with_state(state)
        .layer(axum::middleware::map_response(error::to_json))
}

/// Routes anyone may call: logging in, probes and the scraper.
fn is_public(method: &axum::http::Method, path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
        || (method == axum::http::Method::POST && path == "/api/v1/session")
}

/// Answers 401 before anything reads the request, so an unauthenticated caller
/// learns nothing from how a body would have been judged.
async fn authenticated(
    State(state): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if !is_public(request.method(), request.uri().path())
        && let Err(reply) = state.principal(request.headers())
    {
        return reply.into_response();
    }
    next.run(request).await
}

impl ApiState {
    fn principal(&self, headers: &HeaderMap) -> Result<Principal, Reply> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "missing bearer token"))?
            .trim();
        if token.starts_with(crate::token::PREFIX) {
            return crate::token::authenticate(&self.store, token, std::time::SystemTime::now())
                .map_err(|e| match e {
                    crate::token::Error::Invalid => error(StatusCode::UNAUTHORIZED, e),
                    e => failed(&e),
                });
        }
        account::authenticate(&self.store, token).map_err(|e| match e {
            account::Error::BadToken => error(StatusCode::UNAUTHORIZED, e),
            e => failed(&e),
        })
    }

    /// The configured policy plus the roles every stored AppProject defines, so
    /// project role tokens and role `groups` take effect as projects change. A
    /// project whose roles do not parse is left out, with a warning.
    fn effective_policy(&self) -> Arc<Policy> {
        let projects: Vec<AppProject> = self
            .store
            .scan::<AppProject>("projects", &crate::store::Key::new())
            .map(|found| found.into_iter().map(|(_, p)| p).collect())
            .unwrap_or_default();
        if projects.iter().all(|p| p.spec.roles.is_empty()) {
            return self.policy.clone();
        }
        let mut policy = (*self.policy).clone();
        for project in &projects {
            let mut with_project = policy.clone();
            match with_project.add_project_roles(project) {
                Ok(()) => policy = with_project,
                Err(e) => {
                    tracing::warn!(project = %project.name(), error = %e, "project roles ignored")
                }
            }
        }
        Arc::new(policy)
    }

    /// Whether `who` may do `action` on `object` of `resource`.
    fn may(&self, who: &Principal, resource: &str, action: &str, object: &str) -> bool {
        self.effective_policy()
            .enforce(&who.user, &who.groups, resource, action, object)
    }

    /// The principal, if it may do `action` on `object` of `resource`.
    fn allow(
        &self,
        headers: &HeaderMap,
        resource: &str,
        action: &str,
        object: &str,
    ) -> Result<Principal, Reply> {
        let who = self.principal(headers)?;
        if self.may(&who, resource, action, object) {
            Ok(who)
        } else {
            Err(error(
                StatusCode::FORBIDDEN,
                format!(
                    "permission denied: {} may not {action} {resource} {object}",
                    who.user
                ),
            ))
        }
    }

    async fn audit(&self, who: &Principal, action: &str, target: String) {
        self.audit_detail(who, action, target, "").await;
    }

    /// Records a write in the audit log, with a detail such as its options.
    async fn audit_detail(&self, who: &Principal, action: &str, target: String, detail: &str) {
        let event = Event::now(&who.user, action, target, detail);
        if let Err(e) = self.store.push_event(&event).await {
            tracing::warn!(error = %e, "failed to record an audit event");
        }
    }
}

#[derive(Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
}

/// The largest login request read: a user name and a password, generously.
const LOGIN_BODY_LIMIT: usize = 16 * 1024;

/// `POST /api/v1/session`. Anyone may call it, so before any password is hashed
/// the client's attempts are counted and a hashing slot is taken; see
/// [`crate::account::throttle`].
async fn login(
    State(state): State<ApiState>,
    client: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Json(req): Json<LoginRequest>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let client = client.map(|axum::Extension(info)| info.0.ip());
    let slot = match state.logins.admit(client, std::time::Instant::now()) {
        Ok(()) => state.logins.hashing_slot().await,
        Err(refused) => Err(refused),
    };
    let _slot = match slot {
        Ok(slot) => slot,
        Err(refused) => {
            tracing::debug!(client = ?client, reason = %refused, "login refused before checking");
            let retry_after = refused.retry_after().as_secs().max(1).to_string();
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, &refused).into_response();
            if let Ok(value) = axum::http::HeaderValue::from_str(&retry_after) {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, value);
            }
            return response;
        }
    };
    let reply = match account::login(&state.store, &req.username, &req.password).await {
        Ok(token) => ok(json!({ "token": token })),
        Err(account::Error::BadLogin) => error(StatusCode::UNAUTHORIZED, account::Error::BadLogin),
        Err(e) => failed(&e),
    };
    reply.into_response()
}

/// A source with any password in its repoURL replaced.
fn redacted(source: &crate::app::Source) -> Value {
    let mut value = serde_json::to_value(source).unwrap_or(Value::Null);
    if let Some(url) = value.get_mut("repoURL") {
        *url = Value::String(crate::render::redact_urls(&source.repo_url));
    }
    value
}

/// The app's source with any password in its repoURL replaced.
fn redacted_source(app: &Application) -> Value {
    redacted(app.source())
}

/// Every source of the app with the revision it was last rendered at, when known.
fn sources_with_revisions(record: &AppRecord) -> Value {
    let revisions = &record.rendered_revisions;
    Value::Array(
        record
            .application
            .sources()
            .iter()
            .enumerate()
            .map(|(i, source)| {
                let mut value = redacted(source);
                if let (Some(map), Some(revision)) = (value.as_object_mut(), revisions.get(i)) {
                    map.insert("revision".to_owned(), Value::String(revision.clone()));
                }
                value
            })
            .collect(),
    )
}

fn app_summary(state: &ApiState, record: &AppRecord) -> Value {
    let app = &record.application;
    let clusters: Vec<Value> = state
        .store
        .clusters()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.is_destination(&app.spec.destination))
        .map(|c| {
            let generation = state
                .store
                .latest_bundle(&record.project(), &record.name(), &c.name)
                .ok()
                .flatten()
                .map(|(g, _)| g);
            let windows = match state.store.project(&app.spec.project) {
                Ok(Some(project)) => Some(crate::refresh::sync_window_verdict(
                    app,
                    &project,
                    &c,
                    std::time::SystemTime::now(),
                )),
                _ => None,
            }
            .filter(|v| !v.windows.is_empty());
            json!({ "cluster": c.name, "generation": generation, "syncWindows": windows })
        })
        .collect();
    json!({
        "project": record.project(),
        "name": record.name(),
        "source": redacted_source(app),
        "destination": app.spec.destination,
        "automated": app.automated().is_some(),
        "origin": record.origin,
        "sources": sources_with_revisions(record),
        "renderedCommit": record.rendered_commit,
        "renderError": record.render_error,
        "clusters": clusters,
        "status": ops::derived_state(state, record),
        "info": app.spec.info,
    })
}

async fn list_apps(State(state): State<ApiState>, headers: HeaderMap) -> Reply {
    let who = match state.principal(&headers) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    let apps = match state.store.apps() {
        Ok(apps) => apps,
        Err(e) => return failed(&e),
    };
    // A list shows only what the caller may get, as Argo CD's does.
    let policy = state.effective_policy();
    let visible: Vec<Value> = apps
        .iter()
        .filter(|a| {
            let object = format!("{}/{}", a.project(), a.name());
            policy.enforce(&who.user, &who.groups, "applications", "get", &object)
        })
        .map(|a| app_summary(&state, a))
        .collect();
    ok(json!({ "items": visible }))
}

async fn get_app(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
) -> Reply {
    if let Err(reply) = state.allow(
        &headers,
        "applications",
        "get",
        &format!("{project}/{name}"),
    ) {
        return reply;
    }
    match state.store.app(&project, &name) {
        Ok(Some(record)) => ok(app_summary(&state, &record)),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("application {project}/{name} not found"),
        ),
        Err(e) => failed(&e),
    }
}

/// `POST /api/v1/applications` with an Application as YAML or JSON.
async fn create_app(State(state): State<ApiState>, headers: HeaderMap, body: String) -> Reply {
    let app = match Application::from_yaml(&body, "request body") {
        Ok(app) => app,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let object = format!("{}/{}", app.spec.project, app.name());
    let who = match state.allow(&headers, "applications", "create", &object) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    match state.store.app(&app.spec.project, app.name()) {
        Ok(Some(_)) => return error(StatusCode::CONFLICT, format!("application {object} exists")),
        Ok(None) => {}
        Err(e) => return failed(&e),
    }
    // The project decides at once: an app whose repository or destination its
    // project does not allow is never stored, fetched or rendered. An app may
    // name a project that is created later; until then the refresh refuses it
    // before fetching anything.
    let project = match state.store.project(&app.spec.project) {
        Ok(Some(project)) => Some(project),
        Ok(None) if app.spec.project == "default" => Some(crate::app::project::built_in_default()),
        Ok(None) => None,
        Err(e) => return failed(&e),
    };
    if let Some(Err(violation)) = project.map(|p| p.permits(&app, &[])) {
        return error(
            StatusCode::BAD_REQUEST,
            crate::render::redact_urls(&violation.to_string()),
        );
    }
    let repos: Vec<String> = app.sources().iter().map(|s| s.repo_url.clone()).collect();
    let record = AppRecord::new(app, AppOrigin::Store);
    if let Err(e) = state.store.put_app(&record).await {
        return failed(&e);
    }
    state
        .audit(&who, "create", format!("application/{object}"))
        .await;
    // Every source's repository, charts included: the app renders at once.
    for repo in repos {
        let _ = state.refresh_now.try_send(repo);
    }
    (StatusCode::CREATED, Json(app_summary(&state, &record)))
}

/// `DELETE /api/v1/applications/{project}/{name}[?cascade=false]`: forgets the
/// app. With cascade (the default, as `argocd app delete` has it) each cluster's
/// agent is first sent an empty, prune-everything bundle, so what the app deployed
/// is deleted; without it the objects stay in the clusters, unmanaged.
async fn delete_app(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
    Query(options): Query<DeleteOptions>,
) -> Reply {
    let object = format!("{project}/{name}");
    let who = match state.allow(&headers, "applications", "delete", &object) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    let record = match state.store.app(&project, &name) {
        Ok(Some(record)) => record,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("application {object} not found"),
            );
        }
        Err(e) => return failed(&e),
    };
    let cascade = options.cascade.unwrap_or(true);
    if cascade {
        let Some(refresher) = &state.refresher else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this hub cannot delete an app's resources; delete with cascade=false",
            );
        };
        let confirmed = options.confirm.unwrap_or(false);
        if !confirmed {
            match crate::refresh::awaiting_delete_confirmation(&state.store, &record) {
                Ok(waiting) if !waiting.is_empty() => {
                    let names: Vec<String> = waiting
                        .iter()
                        .map(|(cluster, r)| {
                            let what = crate::render::objects::describe(
                                &r.gvk,
                                r.namespace.as_deref(),
                                &r.name,
                            );
                            format!("{what} on {cluster}")
                        })
                        .collect();
                    return error(
                        StatusCode::CONFLICT,
                        format!(
                            "deleting {object} waits for confirmation: Delete=confirm is set on {}; \
                             delete again with confirm=true (flotilla app delete --confirm)",
                            names.join(", ")
                        ),
                    );
                }
                Ok(_) => {}
                Err(e) => return failed(&e),
            }
        }
        if let Err(e) = refresher
            .prune_everywhere(&record, std::time::SystemTime::now(), confirmed)
            .await
        {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("sending {object}'s clusters the deletion of its resources: {e}"),
            );
        }
    }
    match state.store.remove_app(&project, &name).await {
        Ok(true) => {
            if let Err(e) = state.store.remove_history(&project, &name).await {
                tracing::warn!(error = %e, "failed to forget the history of a deleted app");
            }
            let detail = if cascade && options.confirm == Some(true) {
                "cascade, confirmed: its resources are deleted"
            } else if cascade {
                "cascade: its resources are deleted"
            } else {
                "resources kept"
            };
            state
                .audit_detail(&who, "delete", format!("application/{object}"), detail)
                .await;
            ok(json!({ "deleted": object, "cascade": cascade }))
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("application {object} not found"),
        ),
        Err(e) => failed(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteOptions {
    cascade: Option<bool>,
    /// Confirms the deletion of objects marked `Delete=confirm`.
    confirm: Option<bool>,
}

async fn list_repos(State(state): State<ApiState>, headers: HeaderMap) -> Reply {
    let who = match state.principal(&headers) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    let policy = state.effective_policy();
    let repos: Vec<Value> = state
        .store
        .repos()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| policy.enforce(&who.user, &who.groups, "repositories", "get", &r.url))
        .map(|r| {
            let kind = match &r.credentials {
                None => "none",
                Some(Credentials::Https { .. }) => "https",
                Some(Credentials::Ssh { .. }) => "ssh",
            };
            let kind = if r.tls_client.is_some() {
                format!("{kind}+tls-client-cert")
            } else {
                kind.to_owned()
            };
            json!({
                "url": r.spec().redacted_url(),
                "type": r.repo_type,
                "template": r.template,
                "enableOCI": r.enable_oci,
                "credentials": kind,
                "pollIntervalSeconds": r.poll_interval_secs,
                "webhookSecret": r.webhook_secret.is_some(),
            })
        })
        .collect();
    ok(json!({ "items": repos }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RepoRequest {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    ssh_private_key: Option<String>,
    /// An Argo CD repository Secret, as YAML, instead of the fields above.
    #[serde(default)]
    argocd_secret: Option<String>,
    #[serde(default)]
    poll_interval_seconds: Option<u64>,
    #[serde(default)]
    webhook_secret: Option<String>,
}

async fn create_repo(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<RepoRequest>,
) -> Reply {
    let mut from_secret = None;
    let spec = match (&req.argocd_secret, &req.url) {
        (Some(secret), _) => match RepositorySecret::from_yaml(secret.as_bytes()) {
            Ok(read) => {
                let spec = read.spec.clone();
                from_secret = Some(read);
                spec
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
        (None, Some(url)) => {
            let credentials = match (&req.password, &req.ssh_private_key) {
                (Some(token), None) => Some(Credentials::Https {
                    username: req.username.clone().unwrap_or_else(|| "git".to_owned()),
                    token: token.clone(),
                }),
                (None, Some(key)) => Some(Credentials::Ssh {
                    private_key: key.clone(),
                    known_hosts: None,
                }),
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "give a password or an ssh key, not both",
                    );
                }
            };
            RepoSpec {
                url: url.clone(),
                credentials,
            }
        }
        (None, None) => return error(StatusCode::BAD_REQUEST, "url or argocdSecret is required"),
    };
    let who = match state.allow(&headers, "repositories", "create", &spec.url) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    if let Some(secs) = req
        .poll_interval_seconds
        .filter(|secs| *secs > MAX_POLL_INTERVAL_SECS)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "request body: pollIntervalSeconds must be at most {MAX_POLL_INTERVAL_SECS} (a \
                 week), not {secs}"
            ),
        );
    }
    if req
        .webhook_secret
        .as_deref()
        .is_some_and(|s| s.trim().is_empty())
    {
        return error(
            StatusCode::BAD_REQUEST,
            "request body: webhookSecret is empty; anyone could sign with it: give a real one, \
             or none",
        );
    }
    let shown = spec.redacted_url();
    let mut record = match from_secret {
        Some(read) => RepoRecord::from_secret(read),
        None => RepoRecord::new(spec),
    };
    if let Some(secs) = req.poll_interval_seconds {
        record.poll_interval_secs = secs.max(1);
    }
    record.webhook_secret = req.webhook_secret;
    if let Err(e) = state.store.put_repo(&record).await {
        return failed(&e);
    }
    state
        .audit(&who, "create", format!("repository/{shown}"))
        .await;
    (StatusCode::CREATED, Json(json!({ "url": shown })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountRequest {
    name: String,
    password: String,
    #[serde(default)]
    groups: Vec<String>,
}

async fn create_account(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<AccountRequest>,
) -> Reply {
    let who = match state.allow(&headers, "accounts", "create", &req.name) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    if let Err(e) = account::check_new(&req.name, &req.password, &req.groups) {
        return error(StatusCode::BAD_REQUEST, format!("request body: {e}"));
    }
    // Groups are grants, and so is a name the policy names: making the account
    // must not give anyone more than its creator holds (Argo CD leaves accounts
    // and their roles to whoever edits argocd-cm and argocd-rbac-cm: admins).
    if let Some(beyond) =
        state
            .effective_policy()
            .beyond_grantor(&who.user, &who.groups, &req.name, &req.groups)
    {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "permission denied: {} may not create account {:?} holding {beyond:?}, which \
                 {} does not hold",
                who.user, req.name, who.user
            ),
        );
    }
    match account::create(&state.store, &req.name, &req.password, req.groups).await {
        Ok(()) => {
            state
                .audit(&who, "create", format!("account/{}", req.name))
                .await;
            (StatusCode::CREATED, Json(json!({ "name": req.name })))
        }
        Err(account::Error::Exists(name)) => {
            error(StatusCode::CONFLICT, format!("account {name:?} exists"))
        }
        Err(e) => failed(&e),
    }
}
