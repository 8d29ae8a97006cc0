//! `/api/v1/rollouts`: the rollouts of ApplicationSets with a RollingSync
//! strategy, named after the set. RBAC is Argo CD's `applicationsets` resource
//! on `PROJECT/SET` (the project of the app whose render holds the set):
//!
//! - `GET /api/v1/rollouts`, `GET …/{name}`: `get`.
//! - `POST …/{name}/pause`, `…/resume`: `update`; no app starts while paused.
//! - `POST …/{name}/promote`, `…/abort`, `…/retry`: `sync`, since each moves
//!   clusters: promote lets the current step go past its `maxUpdate` and soak,
//!   abort rolls back every cluster the rollout moved, retry rolls a failed
//!   revision out again from step one.
//!
//! Every write is recorded in the audit log with its user.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{ApiState, Reply, error, ok};
use crate::rollout::{self, Rollouts};
use crate::store::RolloutRecord;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/rollouts", get(list))
        .route("/api/v1/rollouts/{name}", get(show))
        .route("/api/v1/rollouts/{name}/{action}", post(act))
}

/// The RBAC object of a rollout: `PROJECT/SET`.
fn object(rollout: &RolloutRecord) -> String {
    let project = rollout.parent.split('/').next().unwrap_or_default();
    format!("{project}/{}", rollout.name)
}

fn shown(rollout: &RolloutRecord) -> Value {
    let mut value = serde_json::to_value(rollout).unwrap_or(Value::Null);
    value["stepCount"] = rollout.step_count().into();
    value
}

fn refused(e: &rollout::Error) -> Reply {
    let status = match e {
        rollout::Error::NotFound(_) => StatusCode::NOT_FOUND,
        rollout::Error::Conflict { .. } => StatusCode::CONFLICT,
        rollout::Error::Issue(_) | rollout::Error::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, flotilla_common::error::describe(e))
}

fn engine(state: &ApiState) -> Result<&Rollouts, Reply> {
    state.rollouts.as_deref().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this hub runs no rollouts (it has no bundle issuer)",
        )
    })
}

async fn list(State(state): State<ApiState>, headers: HeaderMap) -> Reply {
    let who = match state.principal(&headers) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    let rollouts = match engine(&state).map(|e| e.list()) {
        Ok(Ok(rollouts)) => rollouts,
        Ok(Err(e)) => return refused(&e),
        Err(reply) => return reply,
    };
    let items: Vec<Value> = rollouts
        .iter()
        .filter(|r| state.may(&who, "applicationsets", "get", &object(r)))
        .map(shown)
        .collect();
    ok(json!({ "items": items }))
}

/// The rollout, if `action` on it is allowed; a rollout the caller may not see
/// is not found, so its name gives nothing away.
fn authorized(
    state: &ApiState,
    headers: &HeaderMap,
    name: &str,
    action: &str,
) -> Result<(crate::account::Principal, RolloutRecord), Reply> {
    let who = state.principal(headers)?;
    let rollout = engine(state)?.get(name).map_err(|e| refused(&e))?;
    if !state.may(&who, "applicationsets", "get", &object(&rollout)) {
        return Err(refused(&rollout::Error::NotFound(name.to_owned())));
    }
    if !state.may(&who, "applicationsets", action, &object(&rollout)) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "permission denied: {} may not {action} applicationsets {}",
                who.user,
                object(&rollout)
            ),
        ));
    }
    Ok((who, rollout))
}

async fn show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Reply {
    match authorized(&state, &headers, &name, "get") {
        Ok((_, rollout)) => ok(shown(&rollout)),
        Err(reply) => reply,
    }
}

async fn act(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Reply {
    let rbac_action = match action.as_str() {
        "pause" | "resume" => "update",
        "promote" | "abort" | "retry" => "sync",
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("{other:?} is not pause, resume, promote, abort or retry"),
            );
        }
    };
    let (who, _) = match authorized(&state, &headers, &name, rbac_action) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let engine = match engine(&state) {
        Ok(engine) => engine,
        Err(reply) => return reply,
    };
    let done = match action.as_str() {
        "pause" => engine.pause(&name).await,
        "resume" => engine.resume(&name).await,
        "promote" => engine.promote(&name).await,
        "abort" => {
            engine
                .abort(&name, &who.user, std::time::SystemTime::now())
                .await
        }
        _ => engine.retry(&name).await,
    };
    state
        .audit(
            &who,
            &format!("rollout-{action}"),
            format!("rollout/{name}"),
        )
        .await;
    match done {
        Ok(rollout) => ok(shown(&rollout)),
        Err(e) => refused(&e),
    }
}
