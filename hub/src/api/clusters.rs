//! `/api/v1/clusters`: adding a cluster (a bootstrap token, the agent's install
//! manifest and command line), listing and showing clusters with their link
//! state, and removing one, which revokes it at once, while the hub runs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiState, Reply, error, failed, ok};
use crate::ca::Ca;
use crate::cluster::{self, JoinInfo};
use crate::store::{ClusterRecord, TokenRecord};

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/api/v1/clusters", get(list).post(add))
        .route(
            "/api/v1/clusters/{name}",
            get(show).delete(remove).patch(update),
        )
}

/// A cluster, registered or waiting for its agent, as the API shows it.
fn view(
    state: &ApiState,
    name: &str,
    record: Option<&ClusterRecord>,
    pending: Option<&TokenRecord>,
    detail: bool,
) -> Value {
    let link = state.store.link(name).ok().flatten();
    let live = state.link.as_ref().and_then(|l| {
        l.clusters()
            .ok()
            .and_then(|views| views.into_iter().find(|v| v.cluster == name))
    });
    let connected = live
        .as_ref()
        .map(|v| v.connected)
        .unwrap_or_else(|| link.as_ref().is_some_and(|l| l.connected));
    let state_name = match (record, connected) {
        (None, _) => "Pending",
        (Some(_), true) => "Connected",
        (Some(_), false) => "Disconnected",
    };
    let facts = record.and_then(|r| r.facts.as_ref());
    let mut value = json!({
        "name": name,
        "state": state_name,
        "connected": connected,
        "labels": record.map(|r| &r.labels).or(pending.map(|t| &t.labels)).cloned().unwrap_or_default(),
        // The admin's URL, which destination.server matches; the agent's own
        // report is under facts.
        "server": record.map(|r| &r.server).or(pending.map(|t| &t.server)).cloned().flatten(),
        "kubernetesVersion": facts.map(|f| f.kubernetes_version.clone()),
        "lastSeenMs": link.as_ref().and_then(|l| l.last_seen_ms),
        "agentVersion": link.as_ref().and_then(|l| l.agent_version.clone()),
        // This hub process's view of the connection: state, last seen, version,
        // bundles pushed since it started and the last ack per app.
        "link": live.as_ref().map(crate::link::ClusterView::to_json),
    });
    if detail {
        value["facts"] = json!({
            "apiServerUrl": facts.map(|f| f.api_server_url.clone()),
            "kubeSystemUid": facts.map(|f| f.kube_system_uid.clone()),
            "apiResources": facts.map_or(0, |f| f.api_resources.len()),
        });
        value["certificateNotAfterMs"] = json!(link.as_ref().map(|l| l.cert_not_after_ms));
        value["acks"] = json!(link.map(|l| l.acks).unwrap_or_default());
    }
    value
}

async fn list(State(state): State<ApiState>, headers: HeaderMap) -> Reply {
    let who = match state.principal(&headers) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    let records = match state.store.clusters() {
        Ok(records) => records,
        Err(e) => return failed(&e),
    };
    let pending = state.store.tokens().unwrap_or_default();
    let policy = state.effective_policy();
    let mut items: Vec<Value> = records
        .iter()
        .map(|r| (r.name.as_str(), Some(r), None))
        .chain(pending.iter().map(|t| (t.cluster.as_str(), None, Some(t))))
        .filter(|(name, _, _)| policy.enforce(&who.user, &who.groups, "clusters", "get", name))
        .map(|(name, record, token)| view(&state, name, record, token, false))
        .collect();
    items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    ok(json!({ "items": items }))
}

async fn show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Reply {
    if let Err(reply) = state.allow(&headers, "clusters", "get", &name) {
        return reply;
    }
    match state.store.cluster(&name) {
        Ok(Some(record)) => ok(view(&state, &name, Some(&record), None, true)),
        Ok(None) => match pending_token(&state, &name) {
            Some(token) => ok(view(&state, &name, None, Some(&token), true)),
            None => error(StatusCode::NOT_FOUND, format!("cluster {name:?} not found")),
        },
        Err(e) => failed(&e),
    }
}

/// The token of a cluster whose agent has not registered yet.
fn pending_token(state: &ApiState, name: &str) -> Option<TokenRecord> {
    state
        .store
        .tokens()
        .unwrap_or_default()
        .into_iter()
        .find(|t| t.cluster == name)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddRequest {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// The cluster's API server URL, which Applications' destination.server
    /// matches; without it the cluster is reached by name only.
    #[serde(default)]
    server: Option<String>,
    /// The hub's QUIC address as the agent dials it; the hub's own by default.
    #[serde(default)]
    hub_address: Option<String>,
    #[serde(default)]
    token_ttl_minutes: Option<u64>,
    #[serde(default)]
    image: Option<String>,
    /// Least privilege: the namespaces the agent may act in; none for the whole
    /// cluster.
    #[serde(default)]
    namespaces: Vec<String>,
    /// The storage class of the agent's state claim; the cluster's default
    /// when not given.
    #[serde(default)]
    storage_class: Option<String>,
}

/// `POST /api/v1/clusters`: a bootstrap token, shown once inside the manifest and
/// the command line it returns.
async fn add(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<AddRequest>,
) -> Reply {
    let who = match state.allow(&headers, "clusters", "create", &req.name) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    let Some(hub_address) = req
        .hub_address
        .clone()
        .or_else(|| state.agent_address.clone())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "hubAddress is required: this hub does not know the address agents dial",
        );
    };
    // Both are written into the install manifest and the command line the admin
    // runs: plain words only, never YAML or shell syntax.
    if !cluster::is_host_port(&hub_address) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("hubAddress {hub_address:?} must be HOST:PORT (a DNS name or an IP address)"),
        );
    }
    if let Some(image) = req.image.as_deref().filter(|i| !cluster::is_image_name(i)) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "image {image:?} must be an image name without a tag (letters, digits, '.', \
                 '_', '-', '/', and a registry's ':PORT')"
            ),
        );
    }
    if let Some(class) = req
        .storage_class
        .as_deref()
        .filter(|c| !cluster::is_storage_class(c))
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("storageClass {class:?} must be a storage class name (a DNS subdomain)"),
        );
    }
    let namespaces = match cluster::parse_namespaces(&req.namespaces) {
        Ok(namespaces) => namespaces,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let ttl = match req.token_ttl_minutes {
        Some(0) => {
            return error(
                StatusCode::BAD_REQUEST,
                "tokenTtlMinutes must be at least 1",
            );
        }
        Some(minutes) if minutes > cluster::MAX_TOKEN_TTL_MINUTES => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "tokenTtlMinutes must be at most {} (a year), not {minutes}",
                    cluster::MAX_TOKEN_TTL_MINUTES
                ),
            );
        }
        Some(minutes) => Duration::from_secs(minutes * 60),
        None => cluster::DEFAULT_TOKEN_TTL,
    };
    let fingerprint = match &state.link {
        Some(link) => link.ca_fingerprint(),
        None => match Ca::load_or_create(&state.store, SystemTime::now()).await {
            Ok(ca) => ca.fingerprint(),
            Err(e) => return failed(&e),
        },
    };
    let added = cluster::add_with_server(
        &state.store,
        &req.name,
        req.labels,
        req.server.as_deref(),
        ttl,
        SystemTime::now(),
    )
    .await;
    let added = match added {
        Ok(added) => added,
        Err(e) => return cluster_error(e),
    };
    state
        .audit(&who, "create", format!("cluster/{}", added.cluster))
        .await;
    let image = req
        .image
        .unwrap_or_else(|| cluster::DEFAULT_AGENT_IMAGE.to_owned());
    let join = JoinInfo {
        cluster: &added.cluster,
        hub_address: &hub_address,
        ca_fingerprint: &fingerprint,
        token: &added.token,
        image: &image,
        namespaces: &namespaces,
        storage_class: req.storage_class.as_deref(),
    };
    (
        StatusCode::CREATED,
        Json(json!({
            "name": added.cluster,
            "hubAddress": hub_address,
            "caFingerprint": fingerprint,
            "tokenExpiresAtMs": added.expires_at_ms,
            "manifest": cluster::manifest(&join),
            "command": cluster::command_line(&join),
            "helm": cluster::helm_command(&join),
        })),
    )
}

/// A cluster error as the API answers it.
fn cluster_error(e: cluster::Error) -> Reply {
    match e {
        e @ (cluster::Error::InvalidName(_)
        | cluster::Error::InvalidLabel(_)
        | cluster::Error::InvalidServer(_)
        | cluster::Error::InvalidNamespace(_)) => error(StatusCode::BAD_REQUEST, e),
        e @ (cluster::Error::Exists(_) | cluster::Error::ServerTaken { .. }) => {
            error(StatusCode::CONFLICT, e)
        }
        e @ cluster::Error::NotFound(_) => error(StatusCode::NOT_FOUND, e),
        e => failed(&e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateRequest {
    /// The cluster's API server URL; `null` clears it, so the cluster is
    /// reached by name only.
    server: Option<String>,
}

/// `PATCH /api/v1/clusters/NAME`: sets what only an admin decides about a
/// cluster, its API server URL.
async fn update(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(req): Json<UpdateRequest>,
) -> Reply {
    let who = match state.allow(&headers, "clusters", "update", &name) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    match cluster::set_server(&state.store, &name, req.server.as_deref()).await {
        Ok(server) => {
            state
                .audit_detail(
                    &who,
                    "update",
                    format!("cluster/{name}"),
                    &format!("server {}", server.as_deref().unwrap_or("unset")),
                )
                .await;
            ok(json!({ "name": name, "server": server }))
        }
        Err(e) => cluster_error(e),
    }
}

/// `DELETE /api/v1/clusters/NAME`: forgets the cluster and revokes its
/// certificate; an open connection is closed at once.
async fn remove(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Reply {
    let who = match state.allow(&headers, "clusters", "delete", &name) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    let removed = match &state.link {
        Some(link) => link.remove_cluster(&name).await.map_err(|e| e.to_string()),
        None => state
            .store
            .remove_cluster(&name)
            .await
            .map_err(|e| e.to_string()),
    };
    match removed {
        Ok(true) => {
            state.audit(&who, "delete", format!("cluster/{name}")).await;
            ok(json!({ "deleted": name }))
        }
        Ok(false) => error(StatusCode::NOT_FOUND, format!("cluster {name:?} not found")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
