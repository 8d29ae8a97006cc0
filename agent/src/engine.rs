//! The apply engine behind the link: what the agent does with a verified bundle,
//! with a command from the hub, and in between.
//!
//! Under automated sync a new bundle is synced at once ([`Applier::sync`]); under
//! manual sync it is only diffed, and the status says OutOfSync until the hub sends
//! a [`CommandKind::Sync`]. After either, the app's objects are watched by a
//! [`Monitor`]: drift (with the field manager that made it) and health changes
//! become [`Status`] reports on [`Engine::reports`], coalesced over
//! [`Options::coalesce`] and sent only when something the hub shows changed. With
//! selfHeal the monitor re-applies drifted objects, and each re-apply is reported
//! as an operation.
//!
//! Only one operation runs per app at a time: a bundle waits for a running
//! commanded sync, and a sync command that arrives while another operation runs
//! is refused with a message saying so. Refresh and Diff only read, so they run
//! at any time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, SystemTime};

use flotilla_common::bundle::Bundle;
use flotilla_common::message::{
    BundleOutcome, Command, CommandKind, CommandOutcome, CommandResult, DriftEntry, Event,
    EventKind, Operation, OperationPhase, Rejection, ResourceAction, ResourceResult,
    ResourceStatus, Status, SyncOptions,
};
use flotilla_common::model::{AppRef, ClusterFacts, Health, ResourceRef, SyncStatus, Timestamp};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument as _, info, info_span, warn};

use crate::apply::{Action, Applier, ObjectResult, SyncRequest};
use crate::drift::{self, Change, Monitor};
use crate::link::{self, ApplyReport, CommandReport};

/// Knobs of the engine.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long watch events are gathered into one status report, so a rollout
    /// that changes health many times sends a few reports, not one per event.
    pub coalesce: Duration,
    /// How long a sync command for a generation the agent does not hold yet
    /// waits for that bundle. The hub sends the bundle first, but it travels on
    /// its own stream and can arrive after the command.
    pub bundle_wait: Duration,
    /// The apiserver URL the agent's client was configured with: when set, the
    /// engine reads the cluster's facts afresh for every connection to the hub.
    pub api_server_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            coalesce: Duration::from_millis(500),
            bundle_wait: Duration::from_secs(10),
            api_server_url: None,
        }
    }
}

/// The engine as the link drives it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

struct Inner {
    applier: Arc<Applier>,
    options: Options,
    apps: SyncMutex<HashMap<AppRef, Arc<Slot>>>,
    reports: mpsc::UnboundedSender<Status>,
    receiver: SyncMutex<Option<mpsc::UnboundedReceiver<Status>>>,
}

/// What the hub sees of a status; a report equal to the last one is not sent.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shown {
    generation: u64,
    sync: SyncStatus,
    health: Health,
    resources: Vec<(ResourceRef, SyncStatus, Health)>,
    drift: Vec<DriftEntry>,
}

impl Shown {
    fn of(status: &Status) -> Self {
        Self {
            generation: status.generation,
            sync: status.sync,
            health: status.health,
            resources: status
                .resources
                .iter()
                .map(|r| (r.resource.clone(), r.sync, r.health))
                .collect(),
            drift: status.drift.clone(),
        }
    }
}

/// One app the engine holds.
struct Slot {
    /// The generation of the bundle held, set as soon as one is taken.
    generation: AtomicU64,
    /// Held for the whole of a sync.
    operation: Mutex<()>,
    watch: Mutex<Watch>,
    shown: Arc<SyncMutex<Option<Shown>>>,
}

#[derive(Default)]
struct Watch {
    bundle: Option<Arc<Bundle>>,
    monitor: Option<Arc<Monitor>>,
    forwarder: Option<JoinHandle<()>>,
}

impl Watch {
    fn stop(&mut self) {
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.abort();
        }
        self.monitor = None;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop();
    }
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

fn failed(request_id: u64, message: String) -> CommandReport {
    CommandReport {
        result: CommandResult {
            request_id,
            outcome: CommandOutcome::Failed { message },
            drift: Vec::new(),
            diffs: Vec::new(),
        },
        status: None,
    }
}

impl Engine {
    /// An engine with the default options.
    pub fn new(applier: Applier) -> Self {
        Self::with_options(applier, Options::default())
    }

    /// An engine with these options.
    pub fn with_options(applier: Applier, options: Options) -> Self {
        let (reports, receiver) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                applier: Arc::new(applier),
                options,
                apps: SyncMutex::new(HashMap::new()),
                reports,
                receiver: SyncMutex::new(Some(receiver)),
            }),
        }
    }

    /// The applier underneath.
    pub fn applier(&self) -> &Arc<Applier> {
        &self.inner.applier
    }

    /// The status reports the engine makes on its own (drift, health changes,
    /// self-heal); the first caller gets them.
    pub fn take_reports(&self) -> Option<mpsc::UnboundedReceiver<Status>> {
        self.inner
            .receiver
            .lock()
            .ok()
            .and_then(|mut receiver| receiver.take())
    }

    /// Takes a verified bundle: syncs it (automated) or diffs it (manual), then
    /// watches the app's objects.
    pub async fn take(&self, bundle: Bundle) -> ApplyReport {
        let inner = self.inner.clone();
        self.blocking(async move |handle| inner.take(bundle, handle).await)
            .await
            .unwrap_or_else(|| ApplyReport {
                outcome: BundleOutcome::Failed {
                    message: "the sync task died".to_owned(),
                },
                status: None,
            })
    }

    /// Runs a command from the hub.
    pub async fn command(&self, command: Command) -> CommandReport {
        let request_id = command.request_id;
        let inner = self.inner.clone();
        self.blocking(async move |handle| inner.command(command, handle).await)
            .await
            .unwrap_or_else(|| failed(request_id, "the command task died".to_owned()))
    }

    /// Watches the apps of bundles the agent already holds (after a restart),
    /// without syncing them.
    pub async fn resume(&self, bundles: Vec<Bundle>) {
        let inner = self.inner.clone();
        self.blocking(async move |handle| {
            for bundle in bundles {
                let slot = inner.slot(&bundle.app);
                slot.generation
                    .fetch_max(bundle.generation, Ordering::SeqCst);
                let mut watch = slot.watch.lock().await;
                inner
                    .watch(&slot, &mut watch, Arc::new(bundle), &handle)
                    .await;
            }
        })
        .await;
    }

    /// Runs `f` to completion on a blocking thread. The sync's future holds
    /// closures over borrowed state that the compiler cannot prove `Send` for
    /// every lifetime, which the link's `Send` bound needs; driving it with
    /// `block_on` there needs no `Send` at all.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl AsyncFnOnce(tokio::runtime::Handle) -> T + Send + 'static,
    ) -> Option<T> {
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || handle.block_on(f(handle.clone())))
            .await
            .ok()
    }
}

impl Inner {
    fn slot(&self, app: &AppRef) -> Arc<Slot> {
        let mut apps = match self.apps.lock() {
            Ok(apps) => apps,
            Err(poisoned) => poisoned.into_inner(),
        };
        apps.entry(app.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    generation: AtomicU64::new(0),
                    operation: Mutex::new(()),
                    watch: Mutex::new(Watch::default()),
                    shown: Arc::new(SyncMutex::new(None)),
                })
            })
            .clone()
    }

    fn existing(&self, app: &AppRef) -> Option<Arc<Slot>> {
        let apps = match self.apps.lock() {
            Ok(apps) => apps,
            Err(poisoned) => poisoned.into_inner(),
        };
        apps.get(app).cloned()
    }

    fn span(&self, app: &AppRef, generation: u64) -> tracing::Span {
        info_span!("engine", cluster = %self.applier.cluster(), app = %app, generation)
    }

    async fn take(self: Arc<Self>, bundle: Bundle, handle: tokio::runtime::Handle) -> ApplyReport {
        let span = self.span(&bundle.app, bundle.generation);
        async {
            // The link checks this before storing the bundle; an engine driven
            // on its own must not apply a bundle its project forbids either.
            if let Err(violation) = bundle.permitted() {
                warn!(%violation, "refused a bundle its project does not permit");
                return ApplyReport {
                    outcome: BundleOutcome::Rejected(Rejection::NotPermitted {
                        message: violation.to_string(),
                    }),
                    status: None,
                };
            }
            // An agent limited to some namespaces applies nothing outside them.
            if let Err(error) = self.applier.check_reach(&bundle) {
                warn!(%error, "refused a bundle outside the namespaces this agent may act in");
                return ApplyReport {
                    outcome: BundleOutcome::Rejected(Rejection::NotPermitted {
                        message: error.to_string(),
                    }),
                    status: None,
                };
            }
            // The hub decided each kind's scope when it checked the project; the
            // cluster's own discovery decides here.
            if let Err(mismatch) = self.applier.check_scopes(&bundle).await {
                warn!(error = %mismatch, "refused a bundle whose scopes this cluster contradicts");
                return ApplyReport {
                    outcome: BundleOutcome::Rejected(Rejection::NotPermitted {
                        message: mismatch.to_string(),
                    }),
                    status: None,
                };
            }
            let slot = self.slot(&bundle.app);
            let generation = bundle.generation;
            let operation = slot.operation.lock().await;
            let mut watch = slot.watch.lock().await;
            watch.stop();
            let bundle = Arc::new(bundle);
            watch.bundle = Some(bundle.clone());
            let report = if bundle.policy.automated.is_none() {
                match self.diff_status(&bundle, Vec::new()).await {
                    Ok(status) => ApplyReport {
                        outcome: BundleOutcome::Applied,
                        status: Some(status),
                    },
                    Err(e) => ApplyReport {
                        outcome: BundleOutcome::Failed {
                            message: format!("computing the diff: {e}"),
                        },
                        status: None,
                    },
                }
            } else {
                let mut report = self.applier.sync(&bundle).await;
                // syncPolicy.retry: the same bundle again after each backoff.
                // A newer bundle waits for the retries to end, as a new revision
                // waits for a retrying operation in Argo CD.
                let waits = bundle.policy.retry.iter().flat_map(|r| r.waits());
                for (attempt, wait) in waits.enumerate() {
                    if report.succeeded() {
                        break;
                    }
                    warn!(
                        attempt = attempt + 1,
                        wait_secs = wait.as_secs(),
                        failure = %report.summary(),
                        "sync failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    report = self.applier.sync(&bundle).await;
                }
                let outcome = if report.succeeded() {
                    BundleOutcome::Applied
                } else {
                    BundleOutcome::Failed {
                        message: report.summary(),
                    }
                };
                ApplyReport {
                    outcome,
                    status: Some(report.to_status(now(), Vec::new())),
                }
            };
            if let Some(status) = &report.status
                && let Ok(mut shown) = slot.shown.lock()
            {
                *shown = Some(Shown::of(status));
            }
            self.watch(&slot, &mut watch, bundle, &handle).await;
            drop(watch);
            drop(operation);
            // Only now may a sync command waiting for this generation start.
            slot.generation.fetch_max(generation, Ordering::SeqCst);
            report
        }
        .instrument(span)
        .await
    }

    async fn command(
        self: Arc<Self>,
        command: Command,
        handle: tokio::runtime::Handle,
    ) -> CommandReport {
        let span = info_span!(
            "command",
            cluster = %self.applier.cluster(),
            app = %command.app,
            request_id = command.request_id
        );
        async {
            let id = command.request_id;
            if let CommandKind::Sync(options) = &command.kind
                && options.generation != 0
            {
                self.await_generation(&command.app, options.generation)
                    .await;
            }
            let Some(slot) = self.existing(&command.app) else {
                return failed(
                    id,
                    format!("the agent holds no bundle for app {}", command.app),
                );
            };
            match command.kind {
                CommandKind::Sync(options) => {
                    self.commanded_sync(&slot, id, &command.app, options, &handle)
                        .await
                }
                CommandKind::Refresh => self.refresh(&slot, id).await,
                CommandKind::Diff => self.diff(&slot, id).await,
            }
        }
        .instrument(span)
        .await
    }

    /// Waits, up to [`Options::bundle_wait`], until a bundle of `generation` (or a
    /// newer one) of `app` has been taken.
    async fn await_generation(&self, app: &AppRef, generation: u64) {
        let deadline = tokio::time::Instant::now() + self.options.bundle_wait;
        loop {
            let held = self
                .existing(app)
                .map_or(0, |slot| slot.generation.load(Ordering::SeqCst));
            if held >= generation || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn commanded_sync(
        &self,
        slot: &Arc<Slot>,
        id: u64,
        app: &AppRef,
        options: SyncOptions,
        handle: &tokio::runtime::Handle,
    ) -> CommandReport {
        let Ok(_operation) = slot.operation.try_lock() else {
            return failed(
                id,
                format!(
                    "app {app} is already running a sync on this cluster; try again when it ends"
                ),
            );
        };
        let mut watch = slot.watch.lock().await;
        let Some(bundle) = watch.bundle.clone() else {
            return failed(id, format!("the agent holds no bundle for app {app}"));
        };
        if options.generation != 0 && options.generation != bundle.generation {
            return failed(
                id,
                format!(
                    "the agent holds generation {} of app {app}, not the requested generation {}",
                    bundle.generation, options.generation
                ),
            );
        }
        let owned = self.applier.store().inventory(app).unwrap_or_default();
        if let Some(unknown) = options.resources.iter().find(|r| {
            !bundle
                .objects
                .iter()
                .any(|o| o.hook.is_none() && o.resource() == **r)
                && !owned.iter().any(|o| o.resource == **r)
        }) {
            return failed(
                id,
                format!(
                    "{} is neither in generation {} of app {app} nor owned by it",
                    crate::apply::describe(unknown),
                    bundle.generation
                ),
            );
        }
        let request = SyncRequest {
            prune: options.prune,
            dry_run: options.dry_run,
            resources: options.resources,
            confirm: options.confirm,
        };
        if !request.dry_run {
            // No self-heal while the sync runs; the monitor starts afresh after.
            watch.stop();
        }
        info!(
            prune = request.prune,
            confirm = request.confirm,
            dry_run = request.dry_run,
            resources = request.resources.len(),
            "sync commanded"
        );
        let report = self.applier.sync_with(&bundle, &request).await;
        let drift = match &watch.monitor {
            Some(monitor) => monitor.drift().await,
            None => Vec::new(),
        };
        let mut status = match self.diff_status(&bundle, drift).await {
            Ok(status) => status,
            Err(e) => {
                warn!(error = %e, "the status after the sync could not be computed");
                report.to_status(now(), Vec::new())
            }
        };
        status.operation = Some(Box::new(report.operation(Some(id))));
        if let Ok(mut shown) = slot.shown.lock() {
            *shown = Some(Shown::of(&status));
        }
        if watch.monitor.is_none() {
            self.watch(slot, &mut watch, bundle, handle).await;
        }
        let summary = report.summary();
        let outcome = if report.succeeded() {
            CommandOutcome::Done { message: summary }
        } else {
            CommandOutcome::Failed { message: summary }
        };
        CommandReport {
            result: CommandResult {
                request_id: id,
                outcome,
                drift: Vec::new(),
                diffs: Vec::new(),
            },
            status: Some(status),
        }
    }

    async fn held(&self, slot: &Slot) -> (Option<Arc<Bundle>>, Vec<DriftEntry>) {
        let watch = slot.watch.lock().await;
        let drift = match &watch.monitor {
            Some(monitor) => monitor.drift().await,
            None => Vec::new(),
        };
        (watch.bundle.clone(), drift)
    }

    async fn refresh(&self, slot: &Slot, id: u64) -> CommandReport {
        let (Some(bundle), drift) = self.held(slot).await else {
            return failed(id, "the agent holds no bundle for this app".to_owned());
        };
        match self.diff_status(&bundle, drift.clone()).await {
            Ok(status) => {
                if let Ok(mut shown) = slot.shown.lock() {
                    *shown = Some(Shown::of(&status));
                }
                CommandReport {
                    result: CommandResult {
                        request_id: id,
                        outcome: CommandOutcome::Done {
                            message: format!(
                                "generation {}: {:?} and {:?}",
                                bundle.generation, status.sync, status.health
                            ),
                        },
                        drift,
                        diffs: Vec::new(),
                    },
                    status: Some(status),
                }
            }
            Err(e) => failed(id, format!("comparing live and desired state: {e}")),
        }
    }

    async fn diff(&self, slot: &Slot, id: u64) -> CommandReport {
        let (Some(bundle), drift) = self.held(slot).await else {
            return failed(id, "the agent holds no bundle for this app".to_owned());
        };
        match self.applier.resource_diffs(&bundle).await {
            Ok(diffs) => CommandReport {
                result: CommandResult {
                    request_id: id,
                    outcome: CommandOutcome::Done {
                        message: format!(
                            "generation {}: {} resources differ",
                            bundle.generation,
                            diffs.len()
                        ),
                    },
                    drift,
                    diffs,
                },
                status: None,
            },
            Err(e) => failed(id, format!("computing the diff: {e}")),
        }
    }

    /// The app's state from a fresh comparison of live and desired state.
    async fn diff_status(
        &self,
        bundle: &Bundle,
        drift: Vec<DriftEntry>,
    ) -> crate::apply::Result<Status> {
        let resources = self.applier.diff(bundle).await?;
        Ok(status_of(bundle, resources, drift))
    }

    /// Starts watching the app's objects and forwarding what the watch sees.
    async fn watch(
        &self,
        slot: &Arc<Slot>,
        watch: &mut Watch,
        bundle: Arc<Bundle>,
        handle: &tokio::runtime::Handle,
    ) {
        watch.stop();
        watch.bundle = Some(bundle.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let options = drift::Options::for_bundle(&bundle);
        let monitor = match Monitor::start(self.applier.clone(), bundle.clone(), options, tx).await
        {
            Ok(monitor) => Arc::new(monitor),
            Err(e) => {
                warn!(error = %e, "watching the app's objects failed; drift is not reported");
                return;
            }
        };
        let forward = Forwarder {
            applier: self.applier.clone(),
            bundle,
            monitor: monitor.clone(),
            shown: slot.shown.clone(),
            reports: self.reports.clone(),
            coalesce: self.options.coalesce,
        };
        watch.monitor = Some(monitor);
        watch.forwarder = Some(handle.spawn(forward.run(rx).in_current_span()));
    }
}

/// A status from per-resource states: Synced only when every resource is.
fn status_of(bundle: &Bundle, resources: Vec<ResourceStatus>, drift: Vec<DriftEntry>) -> Status {
    let sync = if !drift.is_empty() || resources.iter().any(|r| r.sync == SyncStatus::OutOfSync) {
        SyncStatus::OutOfSync
    } else if resources.iter().all(|r| r.sync == SyncStatus::Synced) {
        SyncStatus::Synced
    } else {
        SyncStatus::Unknown
    };
    Status {
        sequence: 0,
        app: bundle.app.clone(),
        generation: bundle.generation,
        sync,
        health: Health::worst(resources.iter().map(|r| r.health)),
        resources,
        drift,
        events: Vec::new(),
        operation: None,
    }
}

/// Turns one app's watch reports into coalesced status reports.
struct Forwarder {
    applier: Arc<Applier>,
    bundle: Arc<Bundle>,
    monitor: Arc<Monitor>,
    shown: Arc<SyncMutex<Option<Shown>>>,
    reports: mpsc::UnboundedSender<Status>,
    coalesce: Duration,
}

impl Forwarder {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<drift::Report>) {
        while let Some(first) = rx.recv().await {
            let started = (now(), std::time::Instant::now());
            tokio::time::sleep(self.coalesce).await;
            let mut batch = vec![first];
            while let Ok(report) = rx.try_recv() {
                batch.push(report);
            }
            let at = now();
            let mut events = Vec::new();
            let mut heals: Vec<ObjectResult> = Vec::new();
            for report in batch {
                let (kind, reason, message) = match report.change {
                    Change::Drifted(entries) => (
                        EventKind::Warning,
                        "Drifted",
                        entries
                            .iter()
                            .map(drift::describe_entry)
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                    Change::Deleted => (
                        EventKind::Warning,
                        "Deleted",
                        "deleted behind Flotilla's back".to_owned(),
                    ),
                    Change::InSync => (
                        EventKind::Normal,
                        "InSync",
                        "matches the bundle again".to_owned(),
                    ),
                    Change::Healed(result) => {
                        let message = match &result.error {
                            Some(e) => format!("self-heal failed: {e}"),
                            None => "self-heal re-applied it".to_owned(),
                        };
                        heals.push(result);
                        (EventKind::Normal, "SelfHealed", message)
                    }
                    Change::Health => continue,
                };
                events.push(Event {
                    at,
                    kind,
                    reason: reason.to_owned(),
                    message,
                    resource: Some(report.resource),
                });
            }
            let mut status = self.status().await;
            status.events = events;
            if !heals.is_empty() {
                status.operation = Some(Box::new(heal_operation(started, &heals)));
            }
            let shown = Shown::of(&status);
            let Ok(mut last) = self.shown.lock() else {
                return;
            };
            if status.operation.is_none() && last.as_ref() == Some(&shown) {
                continue;
            }
            *last = Some(shown);
            drop(last);
            info!(sync = ?status.sync, health = ?status.health, drift = status.drift.len(), healed = heals.len(), "reporting a status change");
            if self.reports.send(status).is_err() {
                return;
            }
        }
    }

    /// The app's state as the watch sees it.
    async fn status(&self) -> Status {
        let (health, drift) = self.monitor.snapshot().await;
        let mut resources = Vec::new();
        let mut entries = Vec::new();
        for object in self.bundle.objects.iter().filter(|o| o.hook.is_none()) {
            let resource = object.resource();
            let assessed = health.get(&resource);
            let drifted = drift.get(&resource);
            let sync = match (drifted, assessed) {
                (Some(_), _) => SyncStatus::OutOfSync,
                (None, Some(_)) => SyncStatus::Synced,
                (None, None) => SyncStatus::Unknown,
            };
            let message = match drifted {
                Some(found) if found.is_empty() => Some("deleted".to_owned()),
                Some(found) => Some(
                    found
                        .iter()
                        .map(drift::describe_entry)
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                None => assessed
                    .map(|a| a.message.clone())
                    .filter(|m| !m.is_empty()),
            };
            if let Some(found) = drifted {
                entries.extend(found.iter().cloned());
            }
            resources.push(ResourceStatus {
                resource,
                sync,
                health: assessed.map_or(Health::Unknown, |a| a.health),
                message,
            });
        }
        let desired: Vec<ResourceRef> = resources.iter().map(|r| r.resource.clone()).collect();
        resources.extend(
            self.applier
                .requiring_pruning(&self.bundle.app, |r| desired.contains(r))
                .unwrap_or_default(),
        );
        entries.sort_by(|a, b| (&a.resource, &a.path).cmp(&(&b.resource, &b.path)));
        status_of(&self.bundle, resources, entries)
    }
}

/// selfHeal's re-applies as the operation the hub records.
fn heal_operation(
    (started_at, started): (Timestamp, std::time::Instant),
    heals: &[ObjectResult],
) -> Operation {
    let failed = heals.iter().any(|h| h.action == Action::Failed);
    Operation {
        request_id: None,
        started_at,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        phase: if failed {
            OperationPhase::Failed
        } else {
            OperationPhase::Succeeded
        },
        message: format!(
            "self-heal re-applied {} drifted object{}{}",
            heals.len(),
            if heals.len() == 1 { "" } else { "s" },
            if failed { "; some failed" } else { "" }
        ),
        dry_run: false,
        resources: heals
            .iter()
            .map(|h| ResourceResult {
                resource: h.resource.clone(),
                action: if h.action == Action::Failed {
                    ResourceAction::Failed
                } else {
                    ResourceAction::Configured
                },
                message: h.error.as_ref().map(|e| e.to_string()),
            })
            .collect(),
    }
}

impl link::Applier for Engine {
    async fn apply(&self, bundle: &Bundle) -> ApplyReport {
        self.take(bundle.clone()).await
    }

    async fn facts(&self) -> Option<ClusterFacts> {
        let url = self.inner.options.api_server_url.clone()?;
        let client = self.inner.applier.client().clone();
        match crate::facts::read(client, url).await {
            Ok(facts) => Some(facts),
            Err(e) => {
                warn!(error = %e, "reading the cluster's facts failed; the hub keeps the last ones");
                None
            }
        }
    }

    fn admits(&self, bundle: &Bundle) -> Result<(), String> {
        self.inner
            .applier
            .check_reach(bundle)
            .map_err(|e| e.to_string())
    }

    async fn resume(&self, bundles: Vec<Bundle>) {
        Engine::resume(self, bundles).await;
    }

    fn command(
        &self,
        command: Command,
    ) -> impl std::future::Future<Output = CommandReport> + Send + 'static {
        let engine = self.clone();
        async move { engine.command(command).await }
    }

    fn reports(&self) -> Option<mpsc::UnboundedReceiver<Status>> {
        self.take_reports()
    }
}
