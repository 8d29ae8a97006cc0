//! API tokens over HTTP, in Argo CD's paths:
//! `/api/v1/projects/{project}/roles/{role}/token[/{id}]` and
//! `/api/v1/account/{name}/token[/{id}]`. A token is in the answer that issues it
//! and nowhere else; lists show ids, owners and expiry only.

use std::time::SystemTime;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::json;

use super::{ApiState, Reply, error, failed, ok};
use crate::account::Principal;
use crate::token::{self, Owner};

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route(
            "/api/v1/projects/{project}/roles/{role}/token",
            get(list_project).post(create_project),
        )
        .route(
            "/api/v1/projects/{project}/roles/{role}/token/{id}",
            delete(delete_project),
        )
        .route(
            "/api/v1/account/{name}/token",
            get(list_account).post(create_account),
        )
        .route("/api/v1/account/{name}/token/{id}", delete(delete_account))
        .route("/api/v1/session/userinfo", get(userinfo))
        .route("/api/v1/session", delete(logout))
}

/// `GET /api/v1/session/userinfo`: who the bearer is, as Argo CD answers it.
async fn userinfo(State(state): State<ApiState>, headers: HeaderMap) -> Reply {
    match state.principal(&headers) {
        Ok(who) => ok(json!({ "loggedIn": true, "username": who.user, "groups": who.groups })),
        Err(reply) => reply,
    }
}

/// `DELETE /api/v1/session`: ends the bearer's login session (API tokens are
/// revoked by id instead).
async fn logout(State(state): State<ApiState>, headers: HeaderMap) -> Reply {
    let who = match state.principal(&headers) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim();
    match crate::account::logout(&state.store, token).await {
        Ok(_) => ok(json!({ "loggedOut": who.user })),
        Err(e) => failed(&e),
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRequest {
    /// Seconds until the token stops working; 0 or absent: never.
    #[serde(default)]
    expires_in: Option<u64>,
}

fn body_request(body: &str) -> Result<CreateRequest, Reply> {
    if body.trim().is_empty() {
        return Ok(CreateRequest::default());
    }
    serde_json::from_str(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

/// Managing a role's tokens is updating its project, as in Argo CD.
fn project_owner(
    state: &ApiState,
    headers: &HeaderMap,
    project: String,
    role: String,
) -> Result<(Principal, Owner), Reply> {
    let who = state.allow(headers, "projects", "update", &project)?;
    Ok((who, Owner::Project { project, role }))
}

/// Anyone may manage their own account's tokens; someone else's takes
/// `accounts, update`. A project token is no account and manages none.
fn account_owner(
    state: &ApiState,
    headers: &HeaderMap,
    name: String,
) -> Result<(Principal, Owner), Reply> {
    let who = state.principal(headers)?;
    let own = who.user == name && !who.user.starts_with("proj:");
    if !own && !state.may(&who, "accounts", "update", &name) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "permission denied: {} may not update accounts {name}",
                who.user
            ),
        ));
    }
    Ok((who, Owner::Account { name }))
}

async fn issue(state: &ApiState, who: Principal, owner: Owner, body: &str) -> Reply {
    let request = match body_request(body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let ttl = request
        .expires_in
        .filter(|secs| *secs > 0)
        .map(std::time::Duration::from_secs);
    match token::issue(&state.store, owner, ttl, &who.user, SystemTime::now()).await {
        Ok((secret, info)) => {
            state
                .audit(
                    &who,
                    "create",
                    format!("token/{}/{}", info.owner.subject(), info.id),
                )
                .await;
            (
                StatusCode::CREATED,
                Json(json!({
                    "token": secret,
                    "id": info.id,
                    "subject": info.owner.subject(),
                    "issuedAtMs": info.issued_at_ms,
                    "expiresAtMs": info.expires_at_ms,
                })),
            )
        }
        Err(e @ (token::Error::NoSuchRole { .. } | token::Error::NoSuchAccount(_))) => {
            error(StatusCode::NOT_FOUND, e)
        }
        Err(e @ token::Error::TtlTooLong(_)) => error(
            StatusCode::BAD_REQUEST,
            format!("request body: expiresIn: {e}"),
        ),
        Err(e) => failed(&e),
    }
}

fn listing(state: &ApiState, owner: &Owner) -> Reply {
    match token::list(&state.store, owner) {
        Ok(tokens) => ok(json!({ "items": tokens })),
        Err(e) => failed(&e),
    }
}

async fn revoke(state: &ApiState, who: Principal, owner: Owner, id: &str) -> Reply {
    match token::revoke(&state.store, &owner, id).await {
        Ok(Some(info)) => {
            state
                .audit(
                    &who,
                    "delete",
                    format!("token/{}/{}", info.owner.subject(), info.id),
                )
                .await;
            ok(json!({ "deleted": info.id }))
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("{} has no token {id:?}", owner.subject()),
        ),
        Err(e) => failed(&e),
    }
}

async fn create_project(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, role)): Path<(String, String)>,
    body: String,
) -> Reply {
    match project_owner(&state, &headers, project, role) {
        Ok((who, owner)) => issue(&state, who, owner, &body).await,
        Err(reply) => reply,
    }
}

async fn list_project(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, role)): Path<(String, String)>,
) -> Reply {
    let project_get = state.allow(&headers, "projects", "get", &project);
    if let Err(reply) = project_get {
        return reply;
    }
    listing(&state, &Owner::Project { project, role })
}

async fn delete_project(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, role, id)): Path<(String, String, String)>,
) -> Reply {
    match project_owner(&state, &headers, project, role) {
        Ok((who, owner)) => revoke(&state, who, owner, &id).await,
        Err(reply) => reply,
    }
}

async fn create_account(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: String,
) -> Reply {
    match account_owner(&state, &headers, name) {
        Ok((who, owner)) => issue(&state, who, owner, &body).await,
        Err(reply) => reply,
    }
}

async fn list_account(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Reply {
    match account_owner(&state, &headers, name) {
        Ok((_, owner)) => listing(&state, &owner),
        Err(reply) => reply,
    }
}

async fn delete_account(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Reply {
    match account_owner(&state, &headers, name) {
        Ok((who, owner)) => revoke(&state, who, owner, &id).await,
        Err(reply) => reply,
    }
}
