//! Fleet rollouts: the apps of an ApplicationSet with Argo CD's `RollingSync`
//! strategy take a new revision step by step, each step gated on its apps'
//! health, and a failed step rolls every cluster the rollout moved back.
//!
//! A refresh never sends such an app's new bundle: the issuer holds it
//! ([`crate::bundles::Batch::propose`]). [`Rollouts::tick`] reads each rollout
//! record (`store::RolloutRecord`), starts a rollout when a newer revision is
//! held (a rollout under way is superseded and starts again from step one, as
//! Argo CD does), releases the held bundles of the current step's apps (at most
//! `maxUpdate` at once) through the issuer, and moves on once they are Synced
//! and Healthy for the soak time. An app that turns Degraded, fails its sync or
//! passes the progress deadline ends the rollout `RolledBack`: every cluster it
//! moved is given its bundle from before as a new signed generation, and the
//! failed revision waits for a newer commit or [`Rollouts::retry`]. Everything
//! is in the record, so a restarted hub carries on where it was.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_common::bundle::{self, Bundle, Envelope};
use flotilla_common::message::OperationPhase;
use flotilla_common::model::{AppRef, Health, SyncStatus, Timestamp};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::bundles::Issuer;
use crate::clock::epoch_ms;
use crate::refresh::{self, DEFAULT_BUNDLE_TTL, issue_error, recheck_bundle, same_desired_state};
use crate::store::{
    self, AppPhase, AppProgress, ClusterProgress, Event, RolloutPhase, RolloutRecord, Store,
};

/// How often rollouts are looked at.
pub const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No ApplicationSet of this name has a RollingSync strategy.
    #[error("rollout {0:?} not found")]
    NotFound(String),
    /// The action does not apply to the rollout as it is.
    #[error("rollout {name}: cannot {action} a rollout that is {phase:?}")]
    Conflict {
        name: String,
        action: &'static str,
        phase: RolloutPhase,
    },
    /// Issuing a released or rolled-back bundle failed.
    #[error(transparent)]
    Issue(Box<refresh::Error>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Drives every rollout; one tick or command at a time.
pub struct Rollouts {
    store: Store,
    issuer: Arc<Issuer>,
    bundle_ttl: Duration,
    one_at_a_time: tokio::sync::Mutex<()>,
    /// Where step durations are observed, when the hub serves metrics.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// What one app's gate says now.
enum Gate {
    Waiting,
    Healthy,
    Failed(String),
}

impl Rollouts {
    /// Rollouts over `store`, issuing through the hub's one `issuer`.
    pub fn new(store: Store, issuer: Arc<Issuer>) -> Self {
        Self {
            store,
            issuer,
            bundle_ttl: DEFAULT_BUNDLE_TTL,
            one_at_a_time: tokio::sync::Mutex::new(()),
            metrics: None,
        }
    }

    /// Observes each passed step's duration in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Ticks until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.tick(SystemTime::now()).await {
                warn!(error = %e, "a rollout tick failed; trying again");
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// Moves every rollout on as far as it can go now.
    pub async fn tick(&self, now: SystemTime) -> Result<()> {
        let _one = self.one_at_a_time.lock().await;
        for rollout in self.store.rollouts()? {
            let name = rollout.name.clone();
            let mut next = rollout.clone();
            let advanced = self.advance(&mut next, now).await;
            if next != rollout {
                self.store.put_rollout(&next).await?;
            }
            if let Err(e) = advanced {
                warn!(rollout = %name, error = %e, "the rollout could not move on");
            }
        }
        Ok(())
    }

    /// Every rollout.
    pub fn list(&self) -> Result<Vec<RolloutRecord>> {
        Ok(self.store.rollouts()?)
    }

    /// One rollout.
    pub fn get(&self, name: &str) -> Result<RolloutRecord> {
        self.store
            .rollout(name)?
            .ok_or_else(|| Error::NotFound(name.to_owned()))
    }

    /// Starts no more apps until resumed; apps already updating carry on.
    pub async fn pause(&self, name: &str) -> Result<RolloutRecord> {
        self.command(name, "pause", |r| {
            (r.phase == RolloutPhase::Progressing).then(|| r.paused = true)
        })
        .await
    }

    /// Lifts a pause.
    pub async fn resume(&self, name: &str) -> Result<RolloutRecord> {
        self.command(name, "resume", |r| {
            (r.phase == RolloutPhase::Progressing).then(|| r.paused = false)
        })
        .await
    }

    /// Lifts a pause and lets the current step go: its `maxUpdate` (0 included)
    /// and its soak time no longer hold it.
    pub async fn promote(&self, name: &str) -> Result<RolloutRecord> {
        self.command(name, "promote", |r| {
            (r.phase == RolloutPhase::Progressing).then(|| {
                r.paused = false;
                r.promoted_step = Some(r.step);
            })
        })
        .await
    }

    /// Rolls a rollout under way back, as a failed step would, and ends it
    /// `Aborted`; its revision waits for a newer commit or a retry.
    pub async fn abort(&self, name: &str, who: &str, now: SystemTime) -> Result<RolloutRecord> {
        let _one = self.one_at_a_time.lock().await;
        let mut rollout = self.get(name)?;
        if rollout.phase != RolloutPhase::Progressing {
            return Err(Error::Conflict {
                name: name.to_owned(),
                action: "abort",
                phase: rollout.phase,
            });
        }
        let rolled = self
            .roll_back(&mut rollout, None, format!("aborted by {who}"), now)
            .await;
        rollout.phase = RolloutPhase::Aborted;
        self.store.put_rollout(&rollout).await?;
        rolled?;
        Ok(rollout)
    }

    /// Rolls a failed or aborted revision out again, from step one.
    pub async fn retry(&self, name: &str) -> Result<RolloutRecord> {
        self.command(name, "retry", |r| {
            matches!(r.phase, RolloutPhase::RolledBack | RolloutPhase::Aborted).then(|| {
                r.failed_revision = None;
                r.to_revision = None;
                r.phase = RolloutPhase::Idle;
            })
        })
        .await
    }

    async fn command(
        &self,
        name: &str,
        action: &'static str,
        change: impl FnOnce(&mut RolloutRecord) -> Option<()>,
    ) -> Result<RolloutRecord> {
        let _one = self.one_at_a_time.lock().await;
        let mut rollout = self.get(name)?;
        let phase = rollout.phase;
        if change(&mut rollout).is_none() {
            return Err(Error::Conflict {
                name: name.to_owned(),
                action,
                phase,
            });
        }
        self.store.put_rollout(&rollout).await?;
        self.event(&rollout, action, "").await?;
        Ok(rollout)
    }

    async fn advance(&self, rollout: &mut RolloutRecord, now: SystemTime) -> Result<()> {
        let now_ms = epoch_ms(now);
        if let Some(revision) = self.held_revision(rollout)? {
            let new = rollout.to_revision.as_deref() != Some(revision.as_str());
            let failed = rollout.failed_revision.as_deref() == Some(revision.as_str());
            if new && !failed {
                self.start(rollout, revision, now_ms).await?;
            }
        }
        if rollout.phase != RolloutPhase::Progressing {
            return Ok(());
        }
        // Every app under way is checked, whatever its step.
        for i in 0..rollout.apps.len() {
            if rollout.apps[i].phase != AppPhase::Updating {
                continue;
            }
            match self.gate(rollout, &rollout.apps[i], now_ms)? {
                Gate::Waiting => {
                    rollout.apps[i].healthy_since_ms = None;
                }
                Gate::Healthy => {
                    let promoted = rollout.promoted_step == Some(rollout.apps[i].step);
                    let app = &mut rollout.apps[i];
                    let since = *app.healthy_since_ms.get_or_insert(now_ms);
                    if promoted || now_ms.saturating_sub(since) >= rollout.soak_ms {
                        app.phase = AppPhase::Passed;
                        app.finished_ms = Some(now_ms);
                        app.message = None;
                        info!(rollout = %rollout.name, app = %app.name, "the app passed its step");
                    }
                }
                Gate::Failed(reason) => {
                    rollout.apps[i].phase = AppPhase::Failed;
                    rollout.apps[i].message = Some(reason.clone());
                    let culprit = format!("{}/{}", rollout.apps[i].project, rollout.apps[i].name);
                    // Within the budget, the app alone goes back and the step
                    // goes on without it.
                    let failed = rollout
                        .apps
                        .iter()
                        .filter(|a| {
                            a.phase == AppPhase::Failed
                                || (a.phase == AppPhase::RolledBack && a.message.is_some())
                        })
                        .count();
                    let allowed = rollout
                        .failure_budget
                        .map_or(0, |b| b.allowed(rollout.apps.len()));
                    if failed <= allowed {
                        warn!(rollout = %rollout.name, app = %culprit, %reason, failed, allowed, "the app failed within the rollout's failure budget; rolling it back alone");
                        let result = self.roll_back_app(&rollout.apps[i], now).await;
                        rollout.apps[i].phase = AppPhase::RolledBack;
                        rollout.apps[i].finished_ms = Some(now_ms);
                        self.event(
                            rollout,
                            "rollout-app-rolled-back",
                            &format!(
                                "{reason} (app {culprit}; {failed} of {allowed} failures allowed)"
                            ),
                        )
                        .await?;
                        result?;
                        continue;
                    }
                    self.roll_back(rollout, Some(culprit), reason, now).await?;
                    rollout.phase = RolloutPhase::RolledBack;
                    return Ok(());
                }
            }
        }
        // The current step is passed once every one of its apps is, or went back
        // alone within the failure budget.
        while rollout
            .apps
            .iter()
            .filter(|a| a.step == rollout.step)
            .all(|a| matches!(a.phase, AppPhase::Passed | AppPhase::RolledBack))
        {
            self.observe_step(rollout, now_ms);
            rollout.step += 1;
            if rollout.step >= rollout.step_count() {
                self.complete(rollout, now_ms).await?;
                return Ok(());
            }
            info!(rollout = %rollout.name, step = rollout.step, "the rollout moves to its next step");
            if rollout.pause_before.contains(&rollout.step) {
                rollout.paused = true;
                info!(rollout = %rollout.name, step = rollout.step, "paused before the step, as the set asks; resume or promote to go on");
            }
        }
        if rollout.paused {
            return Ok(());
        }
        let step = rollout.step;
        let in_step = rollout.apps.iter().filter(|a| a.step == step).count();
        let allowed = match (rollout.promoted_step == Some(step), rollout.steps.get(step)) {
            (true, _) | (_, None) => in_step,
            (false, Some(s)) => s
                .max_update
                .as_ref()
                .map_or(Ok(in_step), |m| m.of(in_step))
                .unwrap_or(in_step),
        };
        let mut updating = rollout
            .apps
            .iter()
            .filter(|a| a.step == step && a.phase == AppPhase::Updating)
            .count();
        for i in 0..rollout.apps.len() {
            if updating >= allowed {
                break;
            }
            if rollout.apps[i].step == step && rollout.apps[i].phase == AppPhase::Waiting {
                self.release(&mut rollout.apps[i], now).await?;
                updating += 1;
            }
        }
        Ok(())
    }

    /// The newest revision held for any app of the rollout.
    fn held_revision(&self, rollout: &RolloutRecord) -> Result<Option<String>> {
        let mut newest: Option<(Timestamp, String)> = None;
        let clusters = self.store.clusters()?;
        for member in &rollout.members {
            for cluster in &clusters {
                let Some(bytes) =
                    self.store
                        .held_bundle(&member.project, &member.name, &cluster.name)?
                else {
                    continue;
                };
                let Ok(held) = Bundle::decode(&bytes) else {
                    continue;
                };
                if newest.as_ref().is_none_or(|(at, _)| held.created_at > *at) {
                    newest = Some((held.created_at, held.source.revision));
                }
            }
        }
        Ok(newest.map(|(_, revision)| revision))
    }

    /// Records how long the current step took, from its first app's start to
    /// now; a step with no app (the implicit last one, often) is not a step anyone
    /// waited for and is not counted.
    fn observe_step(&self, rollout: &RolloutRecord, now_ms: u64) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let started = rollout
            .apps
            .iter()
            .filter(|a| a.step == rollout.step)
            .filter_map(|a| a.started_ms)
            .min();
        if let Some(started) = started {
            metrics
                .rollout_step_duration
                .observe(now_ms.saturating_sub(started) as f64 / 1000.0);
        }
    }

    /// Starts rolling `revision` out from step one. A rollout under way is
    /// superseded; the generation each cluster had before it is kept, so a
    /// rollback returns to what ran before either.
    async fn start(
        &self,
        rollout: &mut RolloutRecord,
        revision: String,
        now_ms: u64,
    ) -> Result<()> {
        let superseded = if rollout.phase == RolloutPhase::Progressing {
            std::mem::take(&mut rollout.apps)
        } else {
            Vec::new()
        };
        let mut apps = Vec::new();
        let mut from = None;
        let registered = self.store.clusters()?;
        for member in &rollout.members {
            let Some(record) = self.store.app(&member.project, &member.name)? else {
                continue;
            };
            let app = AppRef::new(member.project.clone(), member.name.clone());
            let step = rollout
                .steps
                .iter()
                .position(|s| s.matches(&member.labels))
                .unwrap_or(rollout.steps.len());
            let mut clusters = Vec::new();
            for cluster in &registered {
                if !cluster.is_destination(&record.application.spec.destination) {
                    continue;
                }
                let carried = superseded
                    .iter()
                    .find(|a| a.project == member.project && a.name == member.name)
                    .and_then(|a| a.clusters.iter().find(|c| c.cluster == cluster.name));
                let latest = self.issuer.latest(&app, &cluster.name)?;
                if from.is_none() {
                    from = latest
                        .as_ref()
                        .and_then(|l| l.bundle.as_ref())
                        .map(|b| b.source.revision.clone());
                }
                clusters.push(ClusterProgress {
                    cluster: cluster.name.clone(),
                    before: match carried {
                        Some(c) if c.released.is_some() => c.before,
                        _ => latest.map(|l| l.generation),
                    },
                    released: None,
                });
            }
            apps.push(AppProgress {
                project: member.project.clone(),
                name: member.name.clone(),
                step,
                clusters,
                ..AppProgress::default()
            });
        }
        if !superseded.is_empty() {
            info!(rollout = %rollout.name, %revision, "a newer revision supersedes the rollout under way; starting again from step one");
        }
        info!(rollout = %rollout.name, %revision, apps = apps.len(), "rollout started");
        *rollout = RolloutRecord {
            phase: RolloutPhase::Progressing,
            // Paused before the first step when the set asks for it.
            paused: rollout.pause_before.contains(&0),
            promoted_step: None,
            from_revision: if superseded.is_empty() {
                from
            } else {
                rollout.from_revision.take()
            },
            to_revision: Some(revision.clone()),
            step: 0,
            apps,
            reason: None,
            failed_app: None,
            failed_revision: None,
            started_ms: Some(now_ms),
            finished_ms: None,
            ..std::mem::take(rollout)
        };
        self.event(rollout, "rollout-started", &format!("revision {revision}"))
            .await
    }

    /// Issues the app's held bundles, its step having reached it.
    async fn release(&self, progress: &mut AppProgress, now: SystemTime) -> Result<()> {
        let app = AppRef::new(progress.project.clone(), progress.name.clone());
        let record = self.store.app(&app.project, &app.name)?;
        for cluster in &mut progress.clusters {
            let held = self
                .store
                .held_bundle(&app.project, &app.name, &cluster.cluster)?
                .and_then(|bytes| Bundle::decode(&bytes).ok());
            let issued = match (held, &record) {
                (Some(held), Some(record)) => self
                    .issuer
                    .issue(&app, &cluster.cluster, |generation, latest| {
                        if latest
                            .and_then(|l| l.bundle.as_ref())
                            .is_some_and(|previous| same_desired_state(previous, &held))
                        {
                            return Ok(None);
                        }
                        let mut bundle = self.redated(held.clone(), generation, now);
                        recheck_bundle(&self.store, &record.application, &mut bundle)?;
                        Ok::<_, refresh::Error>(Some(bundle))
                    })
                    .await
                    .map_err(|e| Error::Issue(Box::new(issue_error(e))))?,
                _ => None,
            };
            let latest = self
                .issuer
                .latest(&app, &cluster.cluster)?
                .map(|l| l.generation);
            cluster.released = issued.or(latest);
            info!(app = %app, cluster = %cluster.cluster, generation = ?cluster.released, "released the held bundle: its step started");
        }
        progress.phase = AppPhase::Updating;
        progress.started_ms = Some(epoch_ms(now));
        Ok(())
    }

    fn redated(&self, bundle: Bundle, generation: u64, now: SystemTime) -> Bundle {
        Bundle {
            generation,
            created_at: Timestamp::from_system_time(now),
            not_after: Timestamp::from_system_time(now).saturating_add(self.bundle_ttl),
            ..bundle
        }
    }

    /// Whether an updating app is Synced and Healthy at its released
    /// generations on every cluster, or has failed.
    fn gate(&self, rollout: &RolloutRecord, progress: &AppProgress, now_ms: u64) -> Result<Gate> {
        let mut all_healthy = true;
        for cluster in &progress.clusters {
            let expected = cluster.released.unwrap_or(0);
            let status = self
                .store
                .status(&progress.project, &progress.name, &cluster.cluster)?
                .map(|s| s.status)
                .filter(|s| s.generation >= expected);
            let Some(status) = status else {
                all_healthy = false;
                continue;
            };
            if status.health == Health::Degraded {
                let why = status
                    .resources
                    .iter()
                    .find(|r| r.health == Health::Degraded)
                    .map(|r| {
                        format!(
                            ": {} {}: {}",
                            r.resource.gvk.kind,
                            r.resource.name,
                            r.message.as_deref().unwrap_or("")
                        )
                    })
                    .unwrap_or_default();
                return Ok(Gate::Failed(format!(
                    "{}/{} is Degraded on cluster {}{why}",
                    progress.project, progress.name, cluster.cluster
                )));
            }
            if let Some(op) = status
                .operation
                .as_ref()
                .filter(|op| op.phase == OperationPhase::Failed)
            {
                return Ok(Gate::Failed(format!(
                    "the sync of {}/{} failed on cluster {}: {}",
                    progress.project, progress.name, cluster.cluster, op.message
                )));
            }
            all_healthy &= status.sync == SyncStatus::Synced && status.health == Health::Healthy;
        }
        if all_healthy {
            return Ok(Gate::Healthy);
        }
        let started = progress.started_ms.unwrap_or(now_ms);
        if now_ms.saturating_sub(started) > rollout.progress_deadline_ms {
            return Ok(Gate::Failed(format!(
                "{}/{} did not become Synced and Healthy within the progress deadline of {}s",
                progress.project,
                progress.name,
                rollout.progress_deadline_ms / 1000
            )));
        }
        Ok(Gate::Waiting)
    }

    /// Gives each cluster the rollout moved for `progress`'s app the bundle it had
    /// before, signed again as a new generation (an app new with the rollout gets
    /// an empty bundle that prunes what Flotilla made). Every cluster is tried; the
    /// last error is returned.
    async fn roll_back_app(&self, progress: &AppProgress, now: SystemTime) -> Result<()> {
        let mut result = Ok(());
        let app = AppRef::new(progress.project.clone(), progress.name.clone());
        let Some(record) = self.store.app(&app.project, &app.name)? else {
            return Ok(());
        };
        for cluster in &progress.clusters {
            if cluster.released.is_none() || cluster.released == cluster.before {
                continue;
            }
            let before = match cluster.before {
                Some(generation) => self
                    .store
                    .bundle_at(&app.project, &app.name, &cluster.cluster, generation)?
                    .and_then(|bytes| Envelope::decode(&bytes).ok())
                    .and_then(|envelope| Bundle::decode(&envelope.payload).ok()),
                None => None,
            };
            let issued = self
                .issuer
                .issue(&app, &cluster.cluster, |generation, latest| {
                    let bundle = match (&before, latest.and_then(|l| l.bundle.clone())) {
                        (Some(before), _) => before.clone(),
                        // New with this rollout: what it had before is nothing.
                        (None, Some(latest)) => Bundle {
                            policy: bundle::SyncPolicy {
                                automated: Some(bundle::Automated {
                                    prune: true,
                                    self_heal: false,
                                    allow_empty: true,
                                }),
                                sync_options: latest.policy.sync_options.clone(),
                                // Undoing a placement is a prune, not an app
                                // deletion: Prune=false objects stay.
                                deletion: None,
                                retry: None,
                                managed_namespace_metadata: latest
                                    .policy
                                    .managed_namespace_metadata
                                    .clone(),
                            },
                            objects: Vec::new(),
                            ..latest
                        },
                        (None, None) => return Ok(None),
                    };
                    let mut bundle = self.redated(bundle, generation, now);
                    recheck_bundle(&self.store, &record.application, &mut bundle)?;
                    Ok::<_, refresh::Error>(Some(bundle))
                })
                .await;
            match issued {
                Ok(generation) => {
                    info!(app = %app, cluster = %cluster.cluster, ?generation, before = ?cluster.before, "rolled back");
                }
                Err(e) => {
                    warn!(app = %app, cluster = %cluster.cluster, error = %e, "rolling back failed");
                    result = Err(Error::Issue(Box::new(issue_error(e))));
                }
            }
        }
        result
    }

    /// Gives every cluster this rollout moved its generation from before, as a
    /// new signed generation; no step starts after this.
    async fn roll_back(
        &self,
        rollout: &mut RolloutRecord,
        culprit: Option<String>,
        reason: String,
        now: SystemTime,
    ) -> Result<()> {
        warn!(rollout = %rollout.name, %reason, "rolling back every cluster the rollout moved");
        let mut result = Ok(());
        for progress in &mut rollout.apps {
            if !matches!(
                progress.phase,
                AppPhase::Updating | AppPhase::Passed | AppPhase::Failed
            ) {
                continue;
            }
            if let Err(e) = self.roll_back_app(progress, now).await {
                result = Err(e);
            }
            if progress.phase != AppPhase::Failed {
                progress.phase = AppPhase::RolledBack;
            }
        }
        rollout.reason = Some(reason.clone());
        rollout.failed_app = culprit.clone();
        rollout.failed_revision = rollout.to_revision.clone();
        rollout.finished_ms = Some(epoch_ms(now));
        let detail = match &culprit {
            Some(app) => format!("{reason} (app {app})"),
            None => reason,
        };
        self.event(rollout, "rollout-rolled-back", &detail).await?;
        result
    }

    /// Every step passed: what was held for this revision is now what runs.
    async fn complete(&self, rollout: &mut RolloutRecord, now_ms: u64) -> Result<()> {
        for progress in &rollout.apps {
            let app = AppRef::new(progress.project.clone(), progress.name.clone());
            for cluster in &progress.clusters {
                let held = self
                    .store
                    .held_bundle(&app.project, &app.name, &cluster.cluster)?
                    .and_then(|bytes| Bundle::decode(&bytes).ok());
                let latest = self.issuer.latest(&app, &cluster.cluster)?;
                if let (Some(held), Some(bundle)) = (held, latest.and_then(|l| l.bundle))
                    && same_desired_state(&held, &bundle)
                {
                    self.store
                        .remove_held_bundle(&app.project, &app.name, &cluster.cluster)
                        .await?;
                }
            }
        }
        rollout.phase = RolloutPhase::Completed;
        rollout.finished_ms = Some(now_ms);
        info!(rollout = %rollout.name, revision = ?rollout.to_revision, "rollout completed");
        let detail = format!("revision {}", rollout.to_revision.as_deref().unwrap_or(""));
        self.event(rollout, "rollout-completed", &detail).await
    }

    async fn event(&self, rollout: &RolloutRecord, action: &str, detail: &str) -> Result<()> {
        self.store
            .push_event(&Event::now(
                "hub",
                action,
                format!("rollout/{}", rollout.name),
                detail,
            ))
            .await?;
        Ok(())
    }
}
