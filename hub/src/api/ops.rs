//! The API's operations on an app: sync, history, rollback, diff and refresh, each
//! sent to the agents of the app's destination clusters over the link. The
//! handlers parse, authorize, audit and shape the answer; [`crate::operation`]
//! does the work.
//!
//! - `POST …/sync` `{prune, dryRun, revision, resources}`: RBAC `sync`. A revision
//!   is rendered first (refused under automated sync, as Argo CD refuses it). The
//!   answer comes when every cluster's agent has finished, with the operation's
//!   per-resource outcome.
//! - `GET …/history`: RBAC `get`.
//! - `POST …/rollback` `{id}`: RBAC `sync`. The entry's bundle is checked against
//!   the app's AppProject as it is now (409 when it no longer passes), signed again
//!   under a new generation (agents refuse an old one) with the current project
//!   rules, automated sync is switched off, and the new generation is synced.
//! - `GET …/diff`: RBAC `get`; desired against live per cluster.
//! - `POST …/refresh`: RBAC `get`; the repository is polled and every agent
//!   compares again.
//!
//! Every write is recorded in the audit log with its user.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use flotilla_common::message::{
    CommandKind, CommandOutcome, CommandResult, ResourceDiff, SyncOptions,
};
use flotilla_common::model::AppRef;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiState, Reply, error, failed, ok};
use crate::operation::{self, Operations, SyncRequest};
use crate::secret_mask;
use crate::status;
use crate::store::AppRecord;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/applications/{project}/{name}/sync", post(sync))
        .route(
            "/api/v1/applications/{project}/{name}/history",
            get(history),
        )
        .route(
            "/api/v1/applications/{project}/{name}/rollback",
            post(rollback),
        )
        .route("/api/v1/applications/{project}/{name}/diff", get(diff))
        .route(
            "/api/v1/applications/{project}/{name}/refresh",
            post(refresh),
        )
}

/// The derived state of an app, for the app summaries.
pub(super) fn derived_state(state: &ApiState, record: &AppRecord) -> Value {
    match status::derive(
        &state.store,
        state.link.as_deref().map(|l| l as &dyn status::Connections),
        record,
    ) {
        Ok(derived) => serde_json::to_value(derived).unwrap_or(Value::Null),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

impl ApiState {
    /// The operations service over this API's store, link and refresher.
    fn operations(&self) -> Operations {
        Operations::new(
            self.store.clone(),
            self.link.clone(),
            self.refresher.clone(),
            self.command_timeout,
        )
    }
}

/// The answer to an operation that was refused or could not start.
fn refused(e: operation::Error) -> Reply {
    use operation::Error as E;
    let status = match &e {
        E::AppNotFound(_) | E::HistoryEntryNotFound { .. } => StatusCode::NOT_FOUND,
        E::NoLink | E::NoRenderer => StatusCode::SERVICE_UNAVAILABLE,
        E::NoDestination(_)
        | E::Busy { .. }
        | E::RollbackRefused { .. }
        | E::SyncWindowClosed { .. } => StatusCode::CONFLICT,
        E::DryRunWithRevision { .. }
        | E::RevisionUnderAutomation { .. }
        | E::RevisionUnsupported(_)
        | E::ResourceMalformed { .. }
        | E::ResourceNotInBundle { .. } => StatusCode::BAD_REQUEST,
        E::RenderFailed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        E::HistoryBundleGone { .. } => StatusCode::GONE,
        E::Render { .. } | E::HistoryBundleUndecodable { .. } | E::Issue(_) | E::Store(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    error(status, e)
}

macro_rules! try_reply {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reply) => return reply,
        }
    };
}

/// Like `try_reply!`, for the operations service's errors.
macro_rules! try_operation {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return refused(e),
        }
    };
}

async fn sync(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
    body: String,
) -> Reply {
    let object = format!("{project}/{name}");
    let who = try_reply!(state.allow(&headers, "applications", "sync", &object));
    let request: SyncRequest = if body.trim().is_empty() {
        SyncRequest::default()
    } else {
        match serde_json::from_str(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("sync request: {e}")),
        }
    };
    let operations = state.operations();
    let app = AppRef::new(project, name);
    let plan = try_operation!(operations.plan_sync(&app, &request).await);
    let detail = format!(
        "prune={} confirm={} dryRun={} revision={} resources=[{}]",
        request.prune,
        request.confirm,
        request.dry_run,
        request.revision.as_deref().unwrap_or("-"),
        request.resources.join(",")
    );
    state
        .audit_detail(&who, "sync", format!("application/{object}"), &detail)
        .await;
    let report = operations.run_sync(plan, &who.user).await;
    ok(json!({
        "app": object,
        "phase": report.phase,
        "dryRun": request.dry_run,
        "clusters": report.clusters,
    }))
}

async fn history(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
) -> Reply {
    let object = format!("{project}/{name}");
    try_reply!(state.allow(&headers, "applications", "get", &object));
    try_operation!(state.operations().app(&AppRef::new(&project, &name)));
    match state.store.history(&project, &name) {
        Ok(entries) => ok(json!({ "app": object, "items": entries })),
        Err(e) => failed(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RollbackRequest {
    id: u64,
    #[serde(default)]
    prune: bool,
}

async fn rollback(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
    Json(request): Json<RollbackRequest>,
) -> Reply {
    let object = format!("{project}/{name}");
    let who = try_reply!(state.allow(&headers, "applications", "sync", &object));
    let operations = state.operations();
    let app = AppRef::new(project, name);
    let rollback = try_operation!(operations.roll_back(&app, request.id).await);
    state
        .audit_detail(
            &who,
            "rollback",
            format!("application/{object}"),
            &rollback.message,
        )
        .await;
    let options = SyncOptions {
        generation: rollback.generation,
        prune: request.prune,
        dry_run: false,
        resources: Vec::new(),
        confirm: false,
    };
    let result = operations
        .sync_cluster(&app, &rollback.cluster, options, &who.user)
        .await;
    ok(json!({
        "app": object,
        "id": request.id,
        "generation": rollback.generation,
        "automatedSwitchedOff": rollback.automated_switched_off,
        "message": rollback.message,
        "phase": result.phase,
        "clusters": [result],
    }))
}

/// One resource's diff as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DiffItem {
    group: String,
    version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    desired: Option<String>,
    live: Option<String>,
}

impl From<ResourceDiff> for DiffItem {
    /// A Secret's values are masked on both sides: `applications get` shows that
    /// they differ, never what they are.
    fn from(mut d: ResourceDiff) -> Self {
        if secret_mask::is_secret(&d.resource.gvk.group, &d.resource.gvk.kind) {
            (d.desired, d.live) = secret_mask::mask_pair(d.desired.as_deref(), d.live.as_deref());
        }
        Self {
            group: d.resource.gvk.group,
            version: d.resource.gvk.version,
            kind: d.resource.gvk.kind,
            namespace: d.resource.namespace,
            name: d.resource.name,
            desired: d.desired,
            live: d.live,
        }
    }
}

async fn diff(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
) -> Reply {
    let object = format!("{project}/{name}");
    try_reply!(state.allow(&headers, "applications", "get", &object));
    let operations = state.operations();
    let app = AppRef::new(project, name);
    let record = try_operation!(operations.app(&app));
    try_operation!(operations.link());
    let clusters = try_operation!(operations.destinations(&record));
    let answers = try_operation!(
        operations
            .ask_every_cluster(&app, &clusters, CommandKind::Diff)
            .await
    );
    let items: Vec<Value> = answers
        .into_iter()
        .map(|(cluster, answer)| match answer {
            Ok(CommandResult {
                outcome: CommandOutcome::Done { .. },
                diffs,
                drift,
                ..
            }) => {
                let diffs: Vec<DiffItem> = diffs.into_iter().map(DiffItem::from).collect();
                json!({ "cluster": cluster, "diffs": diffs, "driftedFields": drift.len() })
            }
            Ok(CommandResult {
                outcome: CommandOutcome::Failed { message },
                ..
            }) => json!({ "cluster": cluster, "error": message }),
            Err(message) => json!({ "cluster": cluster, "error": message }),
        })
        .collect();
    ok(json!({ "app": object, "clusters": items }))
}

async fn refresh(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
) -> Reply {
    let object = format!("{project}/{name}");
    let who = try_reply!(state.allow(&headers, "applications", "get", &object));
    let operations = state.operations();
    let app = AppRef::new(project, name);
    let record = try_operation!(operations.app(&app));
    try_operation!(operations.link());
    let clusters = try_operation!(operations.destinations(&record));
    // Every source is resolved again: a new commit or chart version in any of
    // them renders the app.
    for source in record.application.sources() {
        let _ = state.refresh_now.try_send(source.repo_url.clone());
    }
    state
        .audit_detail(&who, "refresh", format!("application/{object}"), "")
        .await;
    let answers = try_operation!(
        operations
            .ask_every_cluster(&app, &clusters, CommandKind::Refresh)
            .await
    );
    let items: Vec<Value> = answers
        .into_iter()
        .map(|(cluster, answer)| match answer {
            Ok(CommandResult {
                outcome: CommandOutcome::Done { message },
                ..
            }) => json!({ "cluster": cluster, "message": message }),
            Ok(CommandResult {
                outcome: CommandOutcome::Failed { message },
                ..
            }) => json!({ "cluster": cluster, "error": message }),
            Err(message) => json!({ "cluster": cluster, "error": message }),
        })
        .collect();
    ok(json!({ "app": object, "clusters": items }))
}
