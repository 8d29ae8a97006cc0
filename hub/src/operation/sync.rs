//! Syncing an app: checked and planned first ([`Operations::plan_sync`]: no
//! cluster busy, the revision rendered, the resources found in each bundle),
//! then run on every destination cluster at once ([`Operations::run_sync`]),
//! each waiting for its agent's result and the Status that ends the operation.

use std::time::{Duration, SystemTime};

use flotilla_common::bundle::{Bundle, Envelope};
use flotilla_common::message::{Command, CommandKind, CommandOutcome, CommandResult, SyncOptions};
use flotilla_common::model::{AppRef, ResourceRef};
use serde::{Deserialize, Serialize};
use tracing::{Instrument as _, info, info_span, warn};

use super::{Error, Operations, Result};
use crate::clock::epoch_ms;
use crate::refresh::{self, Outcome};
use crate::store::{AppRecord, OperationRecord, Phase, ResourceOutcome};

/// How long a sync waits for the agent to hold the bundle it is about to sync.
const ACK_WAIT: Duration = Duration::from_secs(15);
/// How long after the command's result the operation's Status may still arrive:
/// it travels on its own stream.
const STATUS_GRACE: Duration = Duration::from_secs(5);

/// What a sync asks for, as `POST …/sync` takes it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncRequest {
    #[serde(default)]
    pub prune: bool,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub revision: Option<String>,
    /// `GROUP:KIND:NAME` or `GROUP:KIND:NAMESPACE/NAME`, as `argocd app sync
    /// --resource` takes them.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Confirms pruning: objects marked `Prune=confirm` are pruned too.
    #[serde(default)]
    pub confirm: bool,
}

/// A sync that passed its checks: what to send to each cluster, and the
/// clusters that have no bundle to sync.
#[derive(Debug)]
pub struct SyncPlan {
    app: AppRef,
    commands: Vec<(String, SyncOptions)>,
    without_bundle: Vec<ClusterSync>,
}

/// How a sync went on every cluster.
#[derive(Debug)]
pub struct SyncReport {
    /// `Succeeded` when every cluster succeeded.
    pub phase: Phase,
    /// By cluster name.
    pub clusters: Vec<ClusterSync>,
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
fn resolve_resource(spec: &str, bundle: &Bundle) -> Result<ResourceRef> {
    let parts: Vec<&str> = spec.splitn(3, ':').collect();
    let [group, kind, name] = parts[..] else {
        return Err(Error::ResourceMalformed {
            spec: spec.to_owned(),
        });
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
        .ok_or_else(|| Error::ResourceNotInBundle {
            spec: spec.to_owned(),
            app: bundle.app.to_string(),
            cluster: bundle.cluster.clone(),
        })
}

impl Operations {
    /// Refuses a manual sync that the app's project's sync windows block on one
    /// of `clusters` at `now` (a deny window without `manualSync`, or only closed
    /// allow windows none of which sets it).
    pub fn refuse_outside_sync_windows(
        &self,
        record: &AppRecord,
        clusters: &[String],
        now: SystemTime,
    ) -> Result<()> {
        let app = &record.application;
        let project = match self.store.project(&app.spec.project)? {
            Some(project) => project,
            None => crate::app::project::built_in_default(),
        };
        if project.spec.sync_windows.is_empty() {
            return Ok(());
        }
        for cluster in self.store.clusters()? {
            if !clusters.contains(&cluster.name) {
                continue;
            }
            let verdict = refresh::sync_window_verdict(app, &project, &cluster, now);
            if !verdict.manual {
                return Err(Error::SyncWindowClosed {
                    app: AppRef::new(record.project(), record.name()),
                    cluster: cluster.name,
                    reason: verdict.reason.unwrap_or_default(),
                });
            }
        }
        Ok(())
    }

    /// Checks a sync of `app` and plans it: no destination cluster is busy, a
    /// revision is rendered as the next generation first (refused under
    /// automated sync, as Argo CD refuses it), and every resource named is in
    /// each cluster's bundle. Nothing is sent yet.
    pub async fn plan_sync(&self, app: &AppRef, request: &SyncRequest) -> Result<SyncPlan> {
        // A dry run changes nothing. Syncing to a revision renders it as a new
        // generation (and adopts or removes child apps), so the two cannot go
        // together.
        if request.dry_run
            && let Some(revision) = &request.revision
        {
            return Err(Error::DryRunWithRevision {
                revision: revision.clone(),
            });
        }
        let record = self.app(app)?;
        self.link()?;
        let clusters = self.destinations(&record)?;
        for cluster in &clusters {
            self.refuse_if_busy(app, cluster)?;
        }
        if !request.dry_run {
            self.refuse_outside_sync_windows(&record, &clusters, SystemTime::now())?;
        }
        if let Some(revision) = &request.revision {
            if record.application.automated().is_some() {
                return Err(Error::RevisionUnderAutomation {
                    app: app.clone(),
                    revision: revision.clone(),
                });
            }
            self.render_revision(app, revision).await?;
        }

        let mut commands = Vec::with_capacity(clusters.len());
        let mut without_bundle = Vec::new();
        for cluster in &clusters {
            let Some((generation, bundle)) = self.latest_bundle(app, cluster)? else {
                without_bundle.push(ClusterSync::failed(
                    cluster,
                    None,
                    format!("no bundle for cluster {cluster} yet"),
                ));
                continue;
            };
            let resources = request
                .resources
                .iter()
                .map(|spec| resolve_resource(spec, &bundle))
                .collect::<Result<Vec<_>>>()?;
            commands.push((
                cluster.clone(),
                SyncOptions {
                    generation,
                    prune: request.prune,
                    dry_run: request.dry_run,
                    resources,
                    confirm: request.confirm,
                },
            ));
        }
        Ok(SyncPlan {
            app: app.clone(),
            commands,
            without_bundle,
        })
    }

    /// Renders `revision` of the app and stores it as the next generation.
    async fn render_revision(&self, app: &AppRef, revision: &str) -> Result<()> {
        let Some(refresher) = self.refresher.as_deref() else {
            return Err(Error::NoRenderer);
        };
        match refresher
            .render_revision(&app.project, &app.name, revision, SystemTime::now())
            .await
        {
            Ok(Outcome::Failed { error: message }) => Err(Error::RenderFailed {
                app: app.clone(),
                revision: revision.to_owned(),
                message,
            }),
            Ok(outcome) => {
                info!(app = %app, %revision, ?outcome, "rendered for a sync");
                Ok(())
            }
            Err(e @ refresh::Error::RevisionUnsupported { .. }) => {
                Err(Error::RevisionUnsupported(Box::new(e)))
            }
            Err(source) => Err(Error::Render {
                app: app.clone(),
                revision: revision.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    /// The newest generation stored for (app, cluster) and its bundle, if it
    /// decodes.
    fn latest_bundle(&self, app: &AppRef, cluster: &str) -> Result<Option<(u64, Bundle)>> {
        let latest = self.store.latest_bundle(&app.project, &app.name, cluster)?;
        Ok(latest.and_then(|(generation, bytes)| {
            let envelope = Envelope::decode(&bytes).ok()?;
            Some((generation, Bundle::decode(&envelope.payload).ok()?))
        }))
    }

    /// Runs a planned sync on every cluster at once, as `user`, and waits for
    /// all of them.
    pub async fn run_sync(&self, plan: SyncPlan, user: &str) -> SyncReport {
        let mut results = plan.without_bundle;
        let mut running = tokio::task::JoinSet::new();
        for (cluster, options) in plan.commands {
            let operations = self.clone();
            let app = plan.app.clone();
            let user = user.to_owned();
            running.spawn(async move {
                operations
                    .sync_cluster(&app, &cluster, options, &user)
                    .await
            });
        }
        while let Some(done) = running.join_next().await {
            match done {
                Ok(result) => results.push(result),
                Err(e) => results.push(ClusterSync::failed("?", None, e.to_string())),
            }
        }
        results.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        SyncReport {
            phase: overall(&results),
            clusters: results,
        }
    }

    /// Runs one commanded sync on one cluster and waits for its outcome.
    pub async fn sync_cluster(
        &self,
        app: &AppRef,
        cluster: &str,
        options: SyncOptions,
        user: &str,
    ) -> ClusterSync {
        let generation = options.generation;
        let span = info_span!("sync", cluster = %cluster, app = %app, generation);
        async {
            let Some(link) = self.link.as_deref() else {
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
            if let Err(e) = self
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
            let answer = link.command(cluster, command, self.command_timeout).await;
            let failure = match answer {
                Ok(CommandResult {
                    outcome: CommandOutcome::Done { message },
                    ..
                }) => {
                    let reported = self.wait_for_operation(app, cluster, request_id).await;
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
            let current = self
                .store
                .operation(&app.project, &app.name, cluster)
                .ok()
                .flatten();
            if let Some(op) = current.filter(|o| o.request_id == Some(request_id) && o.is_running())
            {
                let failed = OperationRecord {
                    phase: Phase::Failed,
                    message: failure.clone(),
                    finished_at_ms: Some(epoch_ms(SystemTime::now())),
                    ..op
                };
                if let Err(e) = self
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

    /// The operation of (app, cluster) once the agent's Status for `request_id`
    /// has ended it.
    async fn wait_for_operation(
        &self,
        app: &AppRef,
        cluster: &str,
        request_id: u64,
    ) -> Option<OperationRecord> {
        let deadline = tokio::time::Instant::now() + STATUS_GRACE;
        loop {
            let op = self
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use flotilla_common::bundle::Object;
    use flotilla_common::model::Gvk;
    use serde_json::json;

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
        assert!(
            matches!(&missing, Error::ResourceNotInBundle { spec, cluster, .. } if spec == "apps:StatefulSet:db" && cluster == "east"),
            "{missing:?}"
        );
        let missing = missing.to_string();
        assert!(missing.contains("apps:StatefulSet:db"), "{missing}");
        assert!(missing.contains("east"), "{missing}");
        let malformed = resolve_resource("Deployment/web", &b).unwrap_err();
        assert!(
            matches!(malformed, Error::ResourceMalformed { .. }),
            "{malformed:?}"
        );
        assert!(
            malformed.to_string().contains("GROUP:KIND:NAME"),
            "{malformed}"
        );
    }

    #[test]
    fn a_sync_fails_only_when_a_cluster_failed() {
        let on = |cluster: &str, phase: Phase| ClusterSync {
            phase,
            ..ClusterSync::failed(cluster, Some(1), "")
        };
        assert_eq!(overall(&[]), Phase::Succeeded);
        assert_eq!(
            overall(&[on("east", Phase::Succeeded), on("west", Phase::Succeeded)]),
            Phase::Succeeded
        );
        assert_eq!(
            overall(&[on("east", Phase::Succeeded), on("west", Phase::Failed)]),
            Phase::Failed
        );
    }
}
