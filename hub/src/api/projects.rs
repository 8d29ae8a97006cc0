//! `/api/v1/projects`: AppProjects as Argo CD writes them, listed, shown and
//! created through the API (the ones in Git arrive through the refresher).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serde_json::{Value, json};

use super::{ApiState, Reply, error, failed, ok};
use crate::app::project::built_in_default;
use crate::app::{AppProject, Manifest, parse_manifests};
use crate::rbac::check_project_roles;
use crate::store::Key;

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/api/v1/projects", get(list).post(create))
        .route("/api/v1/projects/{name}", get(show))
        .route("/api/v1/projects/{name}/windows", get(windows))
}

/// `GET /api/v1/projects/{name}/windows`: the project's sync windows and whether
/// each is open now, as `argocd proj windows list` shows them.
async fn windows(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Reply {
    if let Err(reply) = state.allow(&headers, "projects", "get", &name) {
        return reply;
    }
    let project = match state.store.project(&name) {
        Ok(Some(project)) => project,
        Ok(None) if name == "default" => built_in_default(),
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("project {name:?} not found")),
        Err(e) => return failed(&e),
    };
    let items = crate::app::project::windows::states(
        &project.spec.sync_windows,
        std::time::SystemTime::now(),
    );
    ok(json!({ "project": name, "items": items }))
}

fn stored(state: &ApiState) -> Vec<AppProject> {
    state
        .store
        .scan::<AppProject>("projects", &Key::new())
        .map(|found| found.into_iter().map(|(_, p)| p).collect())
        .unwrap_or_default()
}

fn summary(project: &AppProject) -> Value {
    json!({
        "name": project.name(),
        "description": project.spec.description,
        "sourceRepos": project.spec.source_repos,
        "destinations": project.spec.destinations,
        "roles": project.spec.roles.iter().map(|r| json!({
            "name": r.name,
            "description": r.description,
            "policies": r.policies,
            "groups": r.groups,
        })).collect::<Vec<_>>(),
    })
}

async fn list(State(state): State<ApiState>, headers: HeaderMap) -> Reply {
    let who = match state.principal(&headers) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    let mut projects = stored(&state);
    if !projects.iter().any(|p| p.name() == "default") {
        projects.push(built_in_default());
    }
    projects.sort_by(|a, b| a.name().cmp(b.name()));
    let policy = state.effective_policy();
    let items: Vec<Value> = projects
        .iter()
        .filter(|p| policy.enforce(&who.user, &who.groups, "projects", "get", p.name()))
        .map(summary)
        .collect();
    ok(json!({ "items": items }))
}

async fn show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Reply {
    if let Err(reply) = state.allow(&headers, "projects", "get", &name) {
        return reply;
    }
    match state.store.project(&name) {
        Ok(Some(project)) => ok(json!({ "summary": summary(&project), "manifest": project })),
        Ok(None) if name == "default" => {
            let project = built_in_default();
            ok(json!({ "summary": summary(&project), "manifest": project }))
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("project {name:?} not found")),
        Err(e) => failed(&e),
    }
}

/// `POST /api/v1/projects` with one AppProject as YAML or JSON.
async fn create(State(state): State<ApiState>, headers: HeaderMap, body: String) -> Reply {
    let manifests = match parse_manifests(&body, "request body") {
        Ok(manifests) => manifests,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut projects: Vec<AppProject> = Vec::new();
    for manifest in manifests {
        match manifest {
            Manifest::AppProject(project) => projects.push(*project),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "request body: only AppProject documents are accepted here",
                );
            }
        }
    }
    let [project] = &projects[..] else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "request body: expected one AppProject, found {}",
                projects.len()
            ),
        );
    };
    let name = project.name().to_owned();
    let who = match state.allow(&headers, "projects", "create", &name) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    // Role policies must hold before the project is stored, or its tokens would
    // silently grant nothing.
    if let Err(e) = check_project_roles(project) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    match state.store.project(&name) {
        Ok(Some(_)) => return error(StatusCode::CONFLICT, format!("project {name:?} exists")),
        Ok(None) => {}
        Err(e) => return failed(&e),
    }
    if let Err(e) = state.store.put_project(project).await {
        return failed(&e);
    }
    state.audit(&who, "create", format!("project/{name}")).await;
    (StatusCode::CREATED, Json(summary(project)))
}
