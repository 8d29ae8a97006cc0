//! The API's operations on an app: sync, history, rollback, diff and refresh, each
//! sent to the agents of the app's destination clusters over the link.
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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use flotilla_common::bundle::{Bundle, Envelope};
use flotilla_common::message::{
    Command, CommandKind, CommandOutcome, CommandResult, ResourceDiff, SyncOptions,
};
use flotilla_common::model::{AppRef, ResourceRef, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{Instrument as _, info, info_span, warn};

use super::{ApiState, Reply, error, ok};
use crate::bundles::Issuer;
use crate::cluster::epoch_ms;
use crate::link::Link;
use crate::refresh::{self, Outcome};
use crate::secret_mask;
use crate::status;
use crate::store::{AppRecord, OperationRecord, Phase, ResourceOutcome};

/// How long a diff or refresh may take on an agent.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a sync waits for the agent to hold the bundle it is about to sync.
const ACK_WAIT: Duration = Duration::from_secs(15);
/// How long after the command's result the operation's Status may still arrive:
/// it travels on its own stream.
const STATUS_GRACE: Duration = Duration::from_secs(5);

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
    /// The app, or a 404 naming it.
    fn app_record(&self, project: &str, name: &str) -> Result<AppRecord, Reply> {
        match self.store.app(project, name) {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(error(
                StatusCode::NOT_FOUND,
                format!("application {project}/{name} not found"),
            )),
            Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        }
    }

    fn agent_link(&self) -> Result<&Link, Reply> {
        self.link.as_deref().ok_or_else(|| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this hub runs without an agent link",
            )
        })
    }

    /// The registered clusters the app's destination names.
    fn destinations(&self, record: &AppRecord) -> Result<Vec<String>, Reply> {
        let clusters = self
            .store
            .clusters()
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let names: Vec<String> = clusters
            .into_iter()
            .filter(|c| c.is_destination(&record.application.spec.destination))
            .map(|c| c.name)
            .collect();
        if names.is_empty() {
            return Err(error(
                StatusCode::CONFLICT,
                format!(
                    "application {}/{}: no registered cluster matches its destination",
                    record.project(),
                    record.name()
                ),
            ));
        }
        Ok(names)
    }

    /// A 409 when a sync of the app is still running on `cluster`, as Argo CD
    /// allows one operation at a time. A Running record older than the command
    /// timeout is a hub that stopped mid-sync, and does not count.
    fn refuse_if_busy(&self, app: &AppRef, cluster: &str) -> Result<(), Reply> {
        let running = self
            .store
            .operation(&app.project, &app.name, cluster)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?
            .filter(|op| op.is_running())
            .filter(|op| {
                let age = epoch_ms(SystemTime::now()).saturating_sub(op.started_at_ms);
                u128::from(age) < self.command_timeout.as_millis()
            });
        match running {
            Some(op) => Err(error(
                StatusCode::CONFLICT,
                format!(
                    "another operation is already in progress on cluster {cluster}: a sync of \
                     generation {} started by {}",
                    op.generation, op.initiated_by
                ),
            )),
            None => Ok(()),
        }
    }
}

macro_rules! try_reply {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reply) => return reply,
        }
    };
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SyncRequest {
    #[serde(default)]
    prune: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    revision: Option<String>,
    /// `GROUP:KIND:NAME` or `GROUP:KIND:NAMESPACE/NAME`, as `argocd app sync
    /// --resource` takes them.
    #[serde(default)]
    resources: Vec<String>,
}

/// How a sync went on one cluster.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSync {
    pub cluster: String,
    pub generation: Option<u64>,
    pub request_id: Option<u64>,
    /// `Succeeded` or `Failed`.
    pub phase: Phase,
    pub message: String,
    pub dry_run: bool,
    pub resources: Vec<ResourceOutcome>,
    pub history_id: Option<u64>,
}

impl ClusterSync {
    fn failed(cluster: &str, generation: Option<u64>, message: impl Into<String>) -> Self {
        Self {
            cluster: cluster.to_owned(),
            generation,
            request_id: None,
            phase: Phase::Failed,
            message: message.into(),
            dry_run: false,
            resources: Vec::new(),
            history_id: None,
        }
    }
}

/// The overall phase of several clusters' syncs.
fn overall(results: &[ClusterSync]) -> Phase {
    if results.iter().all(|r| r.phase == Phase::Succeeded) {
        Phase::Succeeded
    } else {
        Phase::Failed
    }
}

/// Parses `GROUP:KIND:NAME` or `GROUP:KIND:NAMESPACE/NAME` and finds the object
/// in the bundle, which supplies its version.
fn resolve_resource(spec: &str, bundle: &Bundle) -> Result<ResourceRef, String> {
    let parts: Vec<&str> = spec.splitn(3, ':').collect();
    let [group, kind, name] = parts[..] else {
        return Err(format!(
            "resource {spec:?} is not GROUP:KIND:NAME or GROUP:KIND:NAMESPACE/NAME"
        ));
    };
    let (namespace, name) = match name.split_once('/') {
        Some((ns, n)) => (Some(ns), n),
        None => (None, name),
    };
    bundle
        .objects
        .iter()
        .find(|o| {
            o.gvk.group == group
                && o.gvk.kind == kind
                && o.name == name
                && namespace.is_none_or(|ns| o.namespace.as_deref() == Some(ns))
        })
        .map(|o| ResourceRef {
            gvk: o.gvk.clone(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
        })
        .ok_or_else(|| {
            format!(
                "resource {spec:?} is not in the bundle of {} for cluster {}",
                bundle.app, bundle.cluster
            )
        })
}

fn latest_bundle(
    state: &ApiState,
    app: &AppRef,
    cluster: &str,
) -> Result<Option<(u64, Bundle)>, Reply> {
    let latest = state
        .store
        .latest_bundle(&app.project, &app.name, cluster)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(latest.and_then(|(generation, bytes)| {
        let envelope = Envelope::decode(&bytes).ok()?;
        Some((generation, Bundle::decode(&envelope.payload).ok()?))
    }))
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
    // A dry run changes nothing. Syncing to a revision renders it as a new
    // generation (and adopts or removes child apps), so the two cannot go together.
    if request.dry_run
        && let Some(revision) = &request.revision
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "sync request: dryRun with revision {revision} is not supported: rendering a \
                 revision stores it as the app's next generation, and a dry run must change \
                 nothing; dry-run the current generation, or sync to the revision without dryRun"
            ),
        );
    }
    let record = try_reply!(state.app_record(&project, &name));
    try_reply!(state.agent_link());
    let app = AppRef::new(project.clone(), name.clone());
    let clusters = try_reply!(state.destinations(&record));
    for cluster in &clusters {
        try_reply!(state.refuse_if_busy(&app, cluster));
    }

    if let Some(revision) = &request.revision {
        if record.application.automated().is_some() {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "application {object} has automated sync; syncing to revision {revision} \
                     would be undone at once (Argo CD refuses this too): switch automation off first"
                ),
            );
        }
        let Some(refresher) = state.refresher.as_deref() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this hub cannot render: sync --revision is unavailable",
            );
        };
        match refresher
            .render_revision(&project, &name, revision, SystemTime::now())
            .await
        {
            Ok(Outcome::Failed { error: message }) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("rendering {object} at {revision}: {message}"),
                );
            }
            Ok(outcome) => info!(app = %object, %revision, ?outcome, "rendered for a sync"),
            Err(e @ refresh::Error::RevisionUnsupported { .. }) => {
                return error(StatusCode::BAD_REQUEST, e);
            }
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("rendering {object} at {revision}: {e}"),
                );
            }
        }
    }

    let mut results = Vec::with_capacity(clusters.len());
    let mut plans = Vec::with_capacity(clusters.len());
    for cluster in &clusters {
        let Some((generation, bundle)) = try_reply!(latest_bundle(&state, &app, cluster)) else {
            results.push(ClusterSync::failed(
                cluster,
                None,
                format!("no bundle for cluster {cluster} yet"),
            ));
            continue;
        };
        let mut resources = Vec::with_capacity(request.resources.len());
        for spec in &request.resources {
            match resolve_resource(spec, &bundle) {
                Ok(r) => resources.push(r),
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            }
        }
        plans.push((
            cluster.clone(),
            SyncOptions {
                generation,
                prune: request.prune,
                dry_run: request.dry_run,
                resources,
            },
        ));
    }
    let detail = format!(
        "prune={} dryRun={} revision={} resources=[{}]",
        request.prune,
        request.dry_run,
        request.revision.as_deref().unwrap_or("-"),
        request.resources.join(",")
    );
    state
        .audit_detail(&who, "sync", format!("application/{object}"), &detail)
        .await;

    let mut running = tokio::task::JoinSet::new();
    for (cluster, options) in plans {
        let state = state.clone();
        let app = app.clone();
        let user = who.user.clone();
        running.spawn(async move { sync_cluster(&state, &app, &cluster, options, &user).await });
    }
    while let Some(done) = running.join_next().await {
        match done {
            Ok(result) => results.push(result),
            Err(e) => results.push(ClusterSync::failed("?", None, e.to_string())),
        }
    }
    results.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    ok(json!({
        "app": object,
        "phase": overall(&results),
        "dryRun": request.dry_run,
        "clusters": results,
    }))
}

/// Runs one commanded sync on one cluster and waits for its outcome.
async fn sync_cluster(
    state: &ApiState,
    app: &AppRef,
    cluster: &str,
    options: SyncOptions,
    user: &str,
) -> ClusterSync {
    let generation = options.generation;
    let span = info_span!("sync", cluster = %cluster, app = %app, generation);
    async {
        let Some(link) = state.link.as_deref() else {
            return ClusterSync::failed(cluster, Some(generation), "no agent link");
        };
        if !link.is_connected(cluster) {
            return ClusterSync::failed(
                cluster,
                Some(generation),
                format!("cluster {cluster} is not connected"),
            );
        }
        // The bundle and the command travel on different streams; the agent
        // refuses to sync a generation it does not hold yet.
        if link
            .wait_for_ack(cluster, app, generation, ACK_WAIT)
            .await
            .is_none()
        {
            info!("no acknowledgement of the generation yet; syncing anyway");
        }
        let request_id = match link.new_request_id() {
            Ok(id) => id,
            Err(e) => return ClusterSync::failed(cluster, Some(generation), e.to_string()),
        };
        let started_at_ms = epoch_ms(SystemTime::now());
        let running = OperationRecord {
            request_id: Some(request_id),
            initiated_by: user.to_owned(),
            generation,
            phase: Phase::Running,
            message: "waiting for the agent".to_owned(),
            dry_run: options.dry_run,
            prune: options.prune,
            started_at_ms,
            finished_at_ms: None,
            resources: Vec::new(),
            history_id: None,
        };
        if let Err(e) = state
            .store
            .put_operation(&app.project, &app.name, cluster, &running)
            .await
        {
            return ClusterSync::failed(cluster, Some(generation), e.to_string());
        }
        let dry_run = options.dry_run;
        let command = Command {
            request_id,
            app: app.clone(),
            kind: CommandKind::Sync(options),
        };
        let answer = link.command(cluster, command, state.command_timeout).await;
        let failure = match answer {
            Ok(CommandResult {
                outcome: CommandOutcome::Done { message },
                ..
            }) => {
                let reported = wait_for_operation(state, app, cluster, request_id).await;
                return match reported {
                    Some(op) => ClusterSync {
                        cluster: cluster.to_owned(),
                        generation: Some(generation),
                        request_id: Some(request_id),
                        message: if op.message.is_empty() {
                            message
                        } else {
                            op.message
                        },
                        phase: op.phase,
                        dry_run,
                        resources: op.resources,
                        history_id: op.history_id,
                    },
                    None => {
                        // The result is in; its Status is late. Say what is known.
                        ClusterSync {
                            cluster: cluster.to_owned(),
                            generation: Some(generation),
                            request_id: Some(request_id),
                            phase: Phase::Succeeded,
                            message,
                            dry_run,
                            resources: Vec::new(),
                            history_id: None,
                        }
                    }
                };
            }
            Ok(CommandResult {
                outcome: CommandOutcome::Failed { message },
                ..
            }) => message,
            Err(e) => e.to_string(),
        };
        // Mark the operation failed, unless its Status already ended it.
        let current = state
            .store
            .operation(&app.project, &app.name, cluster)
            .ok()
            .flatten();
        if let Some(op) = current.filter(|o| o.request_id == Some(request_id) && o.is_running()) {
            let failed = OperationRecord {
                phase: Phase::Failed,
                message: failure.clone(),
                finished_at_ms: Some(epoch_ms(SystemTime::now())),
                ..op
            };
            if let Err(e) = state
                .store
                .put_operation(&app.project, &app.name, cluster, &failed)
                .await
            {
                warn!(error = %e, "recording the failed operation failed");
            }
        }
        let mut result = ClusterSync::failed(cluster, Some(generation), failure);
        result.request_id = Some(request_id);
        result.dry_run = dry_run;
        result
    }
    .instrument(span)
    .await
}

/// The operation of (app, cluster) once the agent's Status for `request_id` has
/// ended it.
async fn wait_for_operation(
    state: &ApiState,
    app: &AppRef,
    cluster: &str,
    request_id: u64,
) -> Option<OperationRecord> {
    let deadline = tokio::time::Instant::now() + STATUS_GRACE;
    loop {
        let op = state
            .store
            .operation(&app.project, &app.name, cluster)
            .ok()
            .flatten()
            .filter(|o| o.request_id == Some(request_id) && !o.is_running());
        if op.is_some() || tokio::time::Instant::now() >= deadline {
            return op;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn history(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
) -> Reply {
    let object = format!("{project}/{name}");
    try_reply!(state.allow(&headers, "applications", "get", &object));
    try_reply!(state.app_record(&project, &name));
    match state.store.history(&project, &name) {
        Ok(entries) => ok(json!({ "app": object, "items": entries })),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
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
    let mut record = try_reply!(state.app_record(&project, &name));
    try_reply!(state.agent_link());
    let id = request.id;
    let entry = match state.store.history_entry(&project, &name, id) {
        Ok(Some(entry)) => entry,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("application {object} has no history entry {id}"),
            );
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let kept = match state.store.history_bundle(&project, &name, id) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return error(
                StatusCode::GONE,
                format!("the bundle of history entry {id} of {object} is no longer kept"),
            );
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let Some(kept) = Envelope::decode(&kept)
        .ok()
        .and_then(|e| Bundle::decode(&e.payload).ok())
    else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the kept bundle of history entry {id} of {object} does not decode"),
        );
    };
    let cluster = entry.cluster.clone();
    let app = AppRef::new(project.clone(), name.clone());
    try_reply!(state.refuse_if_busy(&app, &cluster));
    let issuer = match &state.refresher {
        Some(refresher) => refresher.issuer().clone(),
        None => match Issuer::new(state.store.clone()).await {
            Ok(issuer) => Arc::new(issuer),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
    };
    // The kept bundle passed the project as it was then; it is signed again only
    // if it passes the project as it is now. Checked before anything changes, so a
    // refused rollback leaves the app as it was.
    let refused = |e: refresh::Error| match e {
        e @ refresh::Error::Refused { .. } => error(
            StatusCode::CONFLICT,
            format!("rolling {object} back to history entry {id} on cluster {cluster}: {e}"),
        ),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if let Err(e) = refresh::recheck_bundle(&state.store, &record.application, &mut kept.clone()) {
        return refused(e);
    }
    let was_automated = record.application.automated().is_some();
    if was_automated {
        if let Some(policy) = record.application.spec.sync_policy.as_mut() {
            policy.automated = None;
        }
        if let Err(e) = state.store.put_app(&record).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
    }
    // A new generation, or the agent refuses it as stale; no automation, or the
    // agent would not wait for the sync command (nor stay rolled back). The
    // issuer allocates it, so a refresh storing a bundle at the same moment
    // takes another generation, never this one.
    let now = SystemTime::now();
    let issued = issuer
        .issue(&app, &cluster, |generation, _| {
            let mut bundle = Bundle {
                generation,
                created_at: Timestamp::from_system_time(now),
                not_after: Timestamp::from_system_time(now)
                    .saturating_add(refresh::DEFAULT_BUNDLE_TTL),
                ..kept.clone()
            };
            bundle.policy.automated = None;
            // Again, in case the project changed meanwhile: the bundle carries
            // the rules in force when it is signed.
            refresh::recheck_bundle(&state.store, &record.application, &mut bundle)?;
            Ok::<_, refresh::Error>(Some(bundle))
        })
        .await;
    let generation = match issued {
        Ok(Some(generation)) => generation,
        Ok(None) => unreachable!("a rollback always drafts a bundle"),
        Err(e) => return refused(refresh::issue_error(e)),
    };
    let mut message = format!(
        "rolling {object} back to history entry {id} (revision {}) on cluster {cluster} as generation {generation}",
        entry.revision
    );
    if was_automated {
        message.push_str("; automated sync is now off for this app, as Argo CD does on rollback");
    }
    state
        .audit_detail(&who, "rollback", format!("application/{object}"), &message)
        .await;
    info!(app = %object, %cluster, generation, id, "rollback");
    let options = SyncOptions {
        generation,
        prune: request.prune,
        dry_run: false,
        resources: Vec::new(),
    };
    let result = sync_cluster(&state, &app, &cluster, options, &who.user).await;
    ok(json!({
        "app": object,
        "id": id,
        "generation": generation,
        "automatedSwitchedOff": was_automated,
        "message": message,
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

/// Sends a Diff or Refresh command to every destination cluster.
async fn ask_every_cluster(
    link: &Link,
    app: &AppRef,
    clusters: &[String],
    kind: CommandKind,
) -> Vec<(String, Result<CommandResult, String>)> {
    let mut out = Vec::with_capacity(clusters.len());
    for cluster in clusters {
        let answer = async {
            let request_id = link.new_request_id().map_err(|e| e.to_string())?;
            let command = Command {
                request_id,
                app: app.clone(),
                kind: kind.clone(),
            };
            link.command(cluster, command, QUERY_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        out.push((cluster.clone(), answer));
    }
    out
}

async fn diff(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
) -> Reply {
    let object = format!("{project}/{name}");
    try_reply!(state.allow(&headers, "applications", "get", &object));
    let record = try_reply!(state.app_record(&project, &name));
    let link = try_reply!(state.agent_link());
    let clusters = try_reply!(state.destinations(&record));
    let app = AppRef::new(project, name);
    let answers = ask_every_cluster(link, &app, &clusters, CommandKind::Diff).await;
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
    let record = try_reply!(state.app_record(&project, &name));
    let link = try_reply!(state.agent_link());
    let clusters = try_reply!(state.destinations(&record));
    if record.application.source().chart.is_none() {
        let _ = state
            .refresh_now
            .try_send(record.application.source().repo_url.clone());
    }
    state
        .audit_detail(&who, "refresh", format!("application/{object}"), "")
        .await;
    let app = AppRef::new(project, name);
    let answers = ask_every_cluster(link, &app, &clusters, CommandKind::Refresh).await;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use flotilla_common::bundle::Object;
    use flotilla_common::model::Gvk;

    use super::*;

    fn bundle() -> Bundle {
        let object = |gvk: Gvk, ns: Option<&str>, name: &str| {
            Object::new(
                gvk,
                ns.map(str::to_owned),
                name,
                &json!({"metadata": {"name": name}}),
            )
        };
        crate::testing::bundle(
            "shop",
            "east",
            1,
            "abc",
            vec![
                object(Gvk::new("apps", "v1", "Deployment"), Some("shop"), "web"),
                object(Gvk::new("", "v1", "ConfigMap"), Some("shop"), "web"),
                object(Gvk::new("", "v1", "ConfigMap"), Some("other"), "web"),
            ],
        )
    }

    #[test]
    fn resources_are_named_as_argocd_names_them_and_take_the_bundle_version() {
        let b = bundle();
        let deploy = resolve_resource("apps:Deployment:web", &b).unwrap();
        assert_eq!(deploy.gvk.version, "v1");
        assert_eq!(deploy.namespace.as_deref(), Some("shop"));
        let other = resolve_resource(":ConfigMap:other/web", &b).unwrap();
        assert_eq!(other.namespace.as_deref(), Some("other"));
    }

    #[test]
    fn an_unknown_or_malformed_resource_is_an_error_naming_it() {
        let b = bundle();
        let missing = resolve_resource("apps:StatefulSet:db", &b).unwrap_err();
        assert!(missing.contains("apps:StatefulSet:db"), "{missing}");
        assert!(missing.contains("east"), "{missing}");
        let malformed = resolve_resource("Deployment/web", &b).unwrap_err();
        assert!(malformed.contains("GROUP:KIND:NAME"), "{malformed}");
    }
}
