//! What one sync did: every object, hook, wave and prune, and how that reads as
//! the status, operation and one-line summary the hub shows.

use std::time::Duration;

use flotilla_common::bundle::HookPhase;
use flotilla_common::message::{
    DriftEntry, Event as StatusEvent, EventKind, Operation, OperationPhase, ResourceAction,
    ResourceResult, ResourceStatus, Status,
};
use flotilla_common::model::{AppRef, Gvk, Health, ResourceRef, SyncStatus, Timestamp};

use super::{Action, ObjectResult};

#[cfg(test)]
mod tests;

/// How a hook ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookOutcome {
    /// It finished healthy.
    Succeeded,
    /// It failed, with the reason.
    Failed(String),
    /// It had already run for this generation (agent restart), so it was not rerun.
    AlreadyRan,
}

/// The result of one hook.
#[derive(Clone, Debug)]
pub struct HookResult {
    /// Which hook object.
    pub resource: ResourceRef,
    /// Its phase.
    pub phase: HookPhase,
    /// How it ended.
    pub outcome: HookOutcome,
    /// Whether its delete policy removed it afterwards.
    pub deleted: bool,
}

/// How the sync ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step succeeded.
    Succeeded,
    /// A step failed; `resource` is the first failing object when there is one.
    Failed {
        /// The failing object.
        resource: Option<ResourceRef>,
        /// What went wrong, with the apiserver's message.
        message: String,
    },
}

/// Everything one sync did, in a form tests and the status reporter read.
#[derive(Clone, Debug)]
pub struct SyncReport {
    /// The app.
    pub app: AppRef,
    /// The bundle generation synced.
    pub generation: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Every Sync-phase object, in apply order.
    pub resources: Vec<ObjectResult>,
    /// Every hook that ran, in the order they ran.
    pub hooks: Vec<HookResult>,
    /// Objects deleted because they left the bundle.
    pub pruned: Vec<ResourceRef>,
    /// Objects that left the bundle but were kept, and why.
    pub kept: Vec<(ResourceRef, String)>,
    /// Write calls (apply, replace, create, delete) this sync made.
    pub writes: u64,
    /// How long each Sync-phase wave took, in order.
    pub waves: Vec<WaveTiming>,
    /// Options Flotilla read but treats differently from Argo CD, said out loud.
    pub warnings: Vec<String>,
    /// Kinds the cluster served only after a wait for the CRD or APIService that
    /// provides them, and how long that took.
    pub kind_waits: Vec<(Gvk, Duration)>,
    /// When the sync started.
    pub started_at: Timestamp,
    /// How long it took.
    pub duration: Duration,
    /// Whether it was a dry run: `pruned` then lists what would be pruned.
    pub dry_run: bool,
}

/// How long one wave took to apply and then to become healthy.
#[derive(Clone, Debug)]
pub struct WaveTiming {
    /// The wave number.
    pub wave: i32,
    /// How many objects it holds.
    pub objects: usize,
    /// From the first request to the last apply response.
    pub applied: Duration,
    /// From the last apply response until every object was healthy.
    pub healthy: Duration,
}

impl SyncReport {
    /// Whether every step succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Succeeded
    }

    /// The app's health: the worst of its resources'.
    pub fn health(&self) -> Health {
        Health::worst(self.resources.iter().map(|r| r.health.health))
    }

    /// The result for the object called `name`, if it is in the report.
    pub fn resource(&self, name: &str) -> Option<&ObjectResult> {
        self.resources.iter().find(|r| r.resource.name == name)
    }

    /// The result for the hook called `name`, if it ran.
    pub fn hook(&self, name: &str) -> Option<&HookResult> {
        self.hooks.iter().find(|h| h.resource.name == name)
    }

    /// The report as the [`Status`] the link sends to the hub: per-resource sync
    /// and health, `drift` as given, and one event for the sync result (with the
    /// failing object and the apiserver's message) and one per hook. `sequence`
    /// is left 0 for the agent session to set.
    pub fn to_status(&self, now: Timestamp, drift: Vec<DriftEntry>) -> Status {
        let resources = self.statuses();
        let sync = if self.succeeded()
            && drift.is_empty()
            && resources.iter().all(|r| r.sync == SyncStatus::Synced)
        {
            SyncStatus::Synced
        } else {
            SyncStatus::OutOfSync
        };
        let mut events: Vec<StatusEvent> = self
            .hooks
            .iter()
            .map(|h| {
                let (kind, reason, message) = match &h.outcome {
                    HookOutcome::Succeeded => (EventKind::Normal, "HookSucceeded", String::new()),
                    HookOutcome::AlreadyRan => (
                        EventKind::Normal,
                        "HookAlreadyRan",
                        "already ran for this generation".to_owned(),
                    ),
                    HookOutcome::Failed(m) => (EventKind::Warning, "HookFailed", m.clone()),
                };
                StatusEvent {
                    at: now,
                    kind,
                    reason: reason.to_owned(),
                    message: format!("{:?} hook: {message}", h.phase),
                    resource: Some(h.resource.clone()),
                }
            })
            .collect();
        events.extend(self.kind_waits.iter().map(|(gvk, waited)| StatusEvent {
            at: now,
            kind: EventKind::Normal,
            reason: "KindServed".to_owned(),
            message: format!(
                "waited {:.1} s for the cluster to serve {}/{}/{} after its provider was applied",
                waited.as_secs_f64(),
                gvk.group,
                gvk.version,
                gvk.kind
            ),
            resource: None,
        }));
        events.extend(self.warnings.iter().map(|w| StatusEvent {
            at: now,
            kind: EventKind::Warning,
            reason: "SyncOptionDiffers".to_owned(),
            message: w.clone(),
            resource: None,
        }));
        events.push(match &self.outcome {
            Outcome::Succeeded => StatusEvent {
                at: now,
                kind: EventKind::Normal,
                reason: "SyncSucceeded".to_owned(),
                message: format!("{} writes", self.writes),
                resource: None,
            },
            Outcome::Failed { resource, message } => StatusEvent {
                at: now,
                kind: EventKind::Warning,
                reason: "SyncFailed".to_owned(),
                message: message.clone(),
                resource: resource.clone(),
            },
        });
        Status {
            sequence: 0,
            app: self.app.clone(),
            generation: self.generation,
            sync,
            health: self.health(),
            resources,
            drift,
            events,
            operation: Some(Box::new(self.operation(None))),
        }
    }

    /// The one-line summary of the sync, as `argocd app sync` ends with.
    pub fn summary(&self) -> String {
        let count = |action: Action| self.resources.iter().filter(|r| r.action == action).count();
        let verb = if self.dry_run { "dry run" } else { "sync" };
        match &self.outcome {
            Outcome::Succeeded if self.dry_run => format!(
                "{verb} of generation {}: {} would change, {} unchanged, {} would be pruned",
                self.generation,
                count(Action::WouldChange),
                count(Action::Unchanged),
                self.pruned.len()
            ),
            Outcome::Succeeded => format!(
                "{verb} of generation {} succeeded: {} created, {} configured, {} unchanged, {} pruned, {} hooks",
                self.generation,
                count(Action::Created),
                count(Action::Configured) + count(Action::Replaced),
                count(Action::Unchanged),
                self.pruned.len(),
                self.hooks.len()
            ),
            Outcome::Failed { message, .. } => {
                format!("{verb} of generation {} failed: {message}", self.generation)
            }
        }
    }

    /// The sync as the operation the hub records in the app's history: every hook,
    /// object, pruned and kept object, in the order they were handled.
    pub fn operation(&self, request_id: Option<u64>) -> Operation {
        let hook = |h: &HookResult| {
            let (action, message) = match &h.outcome {
                HookOutcome::Succeeded => (ResourceAction::HookSucceeded, None),
                HookOutcome::AlreadyRan => (
                    ResourceAction::HookSucceeded,
                    Some("already ran for this generation".to_owned()),
                ),
                HookOutcome::Failed(m) => (ResourceAction::HookFailed, Some(m.clone())),
            };
            ResourceResult {
                resource: h.resource.clone(),
                action,
                message: Some(format!("{:?} hook", h.phase))
                    .into_iter()
                    .chain(message)
                    .reduce(|a, b| format!("{a}: {b}")),
            }
        };
        let before = |h: &&HookResult| matches!(h.phase, HookPhase::PreSync);
        let mut resources: Vec<ResourceResult> =
            self.hooks.iter().filter(before).map(hook).collect();
        resources.extend(self.resources.iter().map(|r| ResourceResult {
            resource: r.resource.clone(),
            action: match r.action {
                Action::Created => ResourceAction::Created,
                Action::Configured => ResourceAction::Configured,
                Action::Unchanged => ResourceAction::Unchanged,
                Action::Replaced => ResourceAction::Replaced,
                Action::Failed => ResourceAction::Failed,
                Action::Skipped => ResourceAction::Skipped,
                Action::WouldChange => ResourceAction::WouldChange,
            },
            message: r.error.as_ref().map(|e| e.to_string()),
        }));
        resources.extend(self.pruned.iter().map(|p| ResourceResult {
            resource: p.clone(),
            action: if self.dry_run {
                ResourceAction::WouldChange
            } else {
                ResourceAction::Pruned
            },
            message: self.dry_run.then(|| "would be pruned".to_owned()),
        }));
        resources.extend(self.kept.iter().map(|(k, why)| ResourceResult {
            resource: k.clone(),
            action: ResourceAction::PruneSkipped,
            message: Some(why.clone()),
        }));
        resources.extend(self.hooks.iter().filter(|h| !before(h)).map(hook));
        Operation {
            request_id,
            started_at: self.started_at,
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            phase: match self.outcome {
                Outcome::Succeeded => OperationPhase::Succeeded,
                Outcome::Failed { .. } => OperationPhase::Failed,
            },
            message: self.summary(),
            dry_run: self.dry_run,
            resources,
        }
    }

    /// Per-resource status as the link sends it to the hub.
    pub fn statuses(&self) -> Vec<ResourceStatus> {
        self.resources
            .iter()
            .map(|r| ResourceStatus {
                resource: r.resource.clone(),
                sync: match r.action {
                    Action::Failed | Action::Skipped | Action::WouldChange => SyncStatus::OutOfSync,
                    _ => SyncStatus::Synced,
                },
                health: r.health.health,
                message: r
                    .error
                    .as_ref()
                    .map(|e| e.to_string())
                    .or_else(|| Some(r.health.message.clone()).filter(|m| !m.is_empty())),
            })
            .collect()
    }
}
