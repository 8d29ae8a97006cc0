//! The hub's Prometheus metrics, in the text exposition format (version 0.0.4).
//!
//! A small in-house registry rather than a crate: the hub has a handful of
//! metrics, most of them computed from the store when scraped, so counters and
//! histograms the code bumps are a few atomics, and the encoder is one function.
//!
//! What the hub bumps lives in [`Metrics`], shared by the refresher (render
//! durations and errors), the link (bundle pushes, sync durations from the
//! operations agents report) and the API. What is read from the store at scrape
//! time is a [`FleetSnapshot`]; [`app_status_counts`] is the one function that
//! decides an app's sync and health status, so a richer derivation can replace it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::link::Link;
use crate::store::Store;

/// Bucket bounds for render durations, in seconds (helm and kustomize run up to
/// their 90 s timeout).
pub const RENDER_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 90.0];
/// Bucket bounds for sync durations, in seconds.
pub const SYNC_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Bucket bounds for rollout step durations, in seconds: a step lasts at least
/// its soak time, so these reach into hours.
pub const ROLLOUT_STEP_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
];

/// A histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug, Default)]
struct HistogramState {
    /// Observations per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// A histogram with `bounds` (ascending) as its buckets' upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len() + 1],
                sum: 0.0,
            }),
        }
    }

    /// Records one observation of `value` seconds.
    pub fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = state.counts.get_mut(bucket) {
            *count += 1;
        }
        state.sum += value;
    }

    fn encode(&self, out: &mut String, name: &str, help: &str) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&state.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += state.counts.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", state.sum);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// What the hub's tasks count as they go.
#[derive(Debug)]
pub struct Metrics {
    /// Seconds each render (one app for one cluster) took.
    pub render_duration: Histogram,
    /// Renders that failed.
    pub render_errors: AtomicU64,
    /// Seconds each sync operation an agent reported took.
    pub sync_duration: Histogram,
    /// Bundles the link pushed to agents.
    pub bundle_pushes: AtomicU64,
    /// Seconds from a rollout step's first app starting to the step passing.
    pub rollout_step_duration: Histogram,
    /// Messages agents sent about what is not their cluster's, refused, by kind.
    pub agent_messages_refused: [AtomicU64; RefusedMessage::ALL.len()],
    /// The last reading of the store for `/metrics`, and when it was taken.
    fleet: tokio::sync::Mutex<Option<(std::time::Instant, FleetSnapshot)>>,
}

/// How long one reading of the store serves `/metrics`: it needs no token, so
/// however often it is scraped the store is walked at most once per this.
pub const FLEET_SNAPSHOT_TTL: Duration = Duration::from_secs(2);

/// A message from an agent that spoke about something its cluster was not
/// assigned, and which the hub therefore refused without storing anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedMessage {
    /// A status report about an app the hub never sent that cluster.
    Status,
    /// An acknowledgement (or a `Hello`'s applied entry) about such an app.
    BundleAck,
    /// A command result answering a command sent to another cluster.
    CommandResult,
}

impl RefusedMessage {
    /// Every kind, in the order the counters hold them.
    pub const ALL: [RefusedMessage; 3] = [
        RefusedMessage::Status,
        RefusedMessage::BundleAck,
        RefusedMessage::CommandResult,
    ];

    /// The `kind` label.
    pub fn name(self) -> &'static str {
        match self {
            RefusedMessage::Status => "status",
            RefusedMessage::BundleAck => "bundle_ack",
            RefusedMessage::CommandResult => "command_result",
        }
    }

    fn index(self) -> usize {
        match self {
            RefusedMessage::Status => 0,
            RefusedMessage::BundleAck => 1,
            RefusedMessage::CommandResult => 2,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            render_duration: Histogram::new(RENDER_BUCKETS),
            render_errors: AtomicU64::new(0),
            sync_duration: Histogram::new(SYNC_BUCKETS),
            bundle_pushes: AtomicU64::new(0),
            rollout_step_duration: Histogram::new(ROLLOUT_STEP_BUCKETS),
            agent_messages_refused: Default::default(),
            fleet: tokio::sync::Mutex::new(None),
        }
    }
}

impl Metrics {
    /// The fleet snapshot `read` takes (on the blocking pool: it walks the store),
    /// or the one taken less than [`FLEET_SNAPSHOT_TTL`] ago. Scrapes that come
    /// while a reading is under way wait for it instead of starting their own.
    pub async fn fleet_snapshot(
        &self,
        read: impl FnOnce() -> FleetSnapshot + Send + 'static,
    ) -> FleetSnapshot {
        let mut cached = self.fleet.lock().await;
        if let Some((at, snapshot)) = &*cached
            && at.elapsed() < FLEET_SNAPSHOT_TTL
        {
            return snapshot.clone();
        }
        let snapshot = tokio::task::spawn_blocking(read).await.unwrap_or_default();
        *cached = Some((std::time::Instant::now(), snapshot.clone()));
        snapshot
    }

    /// Records one render's time and whether it failed.
    pub fn observe_render(&self, took: Duration, failed: bool) {
        self.render_duration.observe(took.as_secs_f64());
        if failed {
            self.render_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a sync operation's duration as the agent reported it.
    pub fn observe_sync(&self, duration_ms: u64) {
        // Milliseconds fit an f64 exactly far beyond any real duration.
        #[allow(clippy::cast_precision_loss)]
        self.sync_duration.observe(duration_ms as f64 / 1000.0);
    }

    /// Counts one bundle pushed to an agent.
    pub fn count_push(&self) {
        self.bundle_pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one message refused because its agent spoke beyond its cluster.
    pub fn count_refused(&self, kind: RefusedMessage) {
        if let Some(counter) = self.agent_messages_refused.get(kind.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many messages of `kind` were refused since the hub started.
    pub fn refused(&self, kind: RefusedMessage) -> u64 {
        self.agent_messages_refused
            .get(kind.index())
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }
}

/// What the store holds when scraped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetSnapshot {
    /// (sync status, health status) to the number of (app, cluster) pairs in it.
    pub apps: BTreeMap<(String, String), u64>,
    /// Registered clusters.
    pub clusters: u64,
    /// Clusters whose agent is connected.
    pub agents_connected: u64,
    /// Rollouts by phase (`Idle`, `Progressing`, ...).
    pub rollouts: BTreeMap<String, u64>,
}

/// Each app's sync and health status on each of its destination clusters, counted,
/// as [`crate::status::derive`] shows them in the API (so `Unknown` while a cluster
/// is disconnected or has not reported the newest bundle).
pub fn app_status_counts(store: &Store, link: Option<&Link>) -> BTreeMap<(String, String), u64> {
    let mut counts = BTreeMap::new();
    for app in store.apps().unwrap_or_default() {
        let Ok(state) = crate::status::derive(
            store,
            link.map(|l| l as &dyn crate::status::Connections),
            &app,
        ) else {
            continue;
        };
        for cluster in state.clusters {
            let key = (
                format!("{:?}", cluster.sync),
                format!("{:?}", cluster.health),
            );
            *counts.entry(key).or_insert(0) += 1;
        }
    }
    counts
}

/// Rollouts counted by phase; every phase is present, so a gauge that drops to
/// zero says so rather than vanishing.
pub fn rollout_phase_counts(store: &Store) -> BTreeMap<String, u64> {
    use crate::store::RolloutPhase;
    let mut counts: BTreeMap<String, u64> = [
        RolloutPhase::Idle,
        RolloutPhase::Progressing,
        RolloutPhase::Completed,
        RolloutPhase::RolledBack,
        RolloutPhase::Aborted,
    ]
    .iter()
    .map(|phase| (format!("{phase:?}"), 0))
    .collect();
    for rollout in store.rollouts().unwrap_or_default() {
        *counts.entry(format!("{:?}", rollout.phase)).or_insert(0) += 1;
    }
    counts
}

/// The snapshot of `store`, with the connected-agent count from the link's view
/// when a link runs (`None`: read the store's connection flags).
pub fn snapshot(store: &Store, link: Option<&Link>, connected: Option<u64>) -> FleetSnapshot {
    let links = store.links().unwrap_or_default();
    FleetSnapshot {
        apps: app_status_counts(store, link),
        clusters: store.clusters().map(|c| c.len() as u64).unwrap_or(0),
        agents_connected: connected
            .unwrap_or_else(|| links.iter().filter(|l| l.connected).count() as u64),
        rollouts: rollout_phase_counts(store),
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped, as the format wants.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text: everything counted plus the snapshot.
pub fn encode(metrics: &Metrics, fleet: &FleetSnapshot) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "flotilla_apps",
        "Applications per destination cluster, by sync and health status.",
        "gauge",
    );
    for ((sync, health), count) in &fleet.apps {
        let _ = writeln!(
            out,
            "flotilla_apps{{sync_status=\"{}\",health_status=\"{}\"}} {count}",
            label_value(sync),
            label_value(health)
        );
    }
    header(
        &mut out,
        "flotilla_clusters",
        "Registered clusters.",
        "gauge",
    );
    let _ = writeln!(out, "flotilla_clusters {}", fleet.clusters);
    header(
        &mut out,
        "flotilla_agents_connected",
        "Clusters whose agent is connected now.",
        "gauge",
    );
    let _ = writeln!(out, "flotilla_agents_connected {}", fleet.agents_connected);
    header(
        &mut out,
        "flotilla_bundle_pushes_total",
        "Bundles pushed to agents since the hub started.",
        "counter",
    );
    let _ = writeln!(
        out,
        "flotilla_bundle_pushes_total {}",
        metrics.bundle_pushes.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "flotilla_agent_messages_refused_total",
        "Messages agents sent about apps or commands not assigned to their cluster, refused.",
        "counter",
    );
    for kind in RefusedMessage::ALL {
        let _ = writeln!(
            out,
            "flotilla_agent_messages_refused_total{{kind=\"{}\"}} {}",
            kind.name(),
            metrics.refused(kind)
        );
    }
    metrics.sync_duration.encode(
        &mut out,
        "flotilla_sync_duration_seconds",
        "How long sync operations took, as agents report them.",
    );
    metrics.render_duration.encode(
        &mut out,
        "flotilla_render_duration_seconds",
        "How long rendering one app for one cluster took.",
    );
    metrics.rollout_step_duration.encode(
        &mut out,
        "flotilla_rollout_step_duration_seconds",
        "How long rollout steps took, from their first app starting to the step passing.",
    );
    header(
        &mut out,
        "flotilla_rollouts",
        "Rollouts of RollingSync ApplicationSets, by phase.",
        "gauge",
    );
    for (phase, count) in &fleet.rollouts {
        let _ = writeln!(
            out,
            "flotilla_rollouts{{phase=\"{}\"}} {count}",
            label_value(phase)
        );
    }
    header(
        &mut out,
        "flotilla_render_errors_total",
        "Renders that failed.",
        "counter",
    );
    let _ = writeln!(
        out,
        "flotilla_render_errors_total {}",
        metrics.render_errors.load(Ordering::Relaxed)
    );
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_scrapes_reads_the_store_once_per_interval() {
        let metrics = Arc::new(Metrics::default());
        let reads = Arc::new(AtomicU64::new(0));
        let scrape = |metrics: Arc<Metrics>, reads: Arc<AtomicU64>| async move {
            metrics
                .fleet_snapshot(move || {
                    reads.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                    FleetSnapshot {
                        clusters: 3,
                        ..Default::default()
                    }
                })
                .await
        };
        let scrapes: Vec<_> = (0..200)
            .map(|_| tokio::spawn(scrape(metrics.clone(), reads.clone())))
            .collect();
        for scrape in scrapes {
            assert_eq!(scrape.await.unwrap().clusters, 3);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);

        // Once the interval has passed, the next scrape reads again.
        tokio::time::sleep(FLEET_SNAPSHOT_TTL).await;
        scrape(metrics.clone(), reads.clone()).await;
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let metrics = Metrics::default();
        metrics.observe_sync(200);
        metrics.observe_sync(3_000);
        metrics.observe_sync(1_000_000);
        let text = encode(&metrics, &FleetSnapshot::default());
        assert!(text.contains("flotilla_sync_duration_seconds_bucket{le=\"0.25\"} 1\n"));
        assert!(text.contains("flotilla_sync_duration_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("flotilla_sync_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("flotilla_sync_duration_seconds_count 3\n"));
        assert!(text.contains("flotilla_sync_duration_seconds_sum 1003.2\n"));
    }

    #[test]
    fn refused_agent_messages_are_counted_by_kind() {
        let metrics = Metrics::default();
        metrics.count_refused(RefusedMessage::Status);
        metrics.count_refused(RefusedMessage::Status);
        metrics.count_refused(RefusedMessage::CommandResult);
        let text = encode(&metrics, &FleetSnapshot::default());
        assert!(text.contains("flotilla_agent_messages_refused_total{kind=\"status\"} 2\n"));
        assert!(text.contains("flotilla_agent_messages_refused_total{kind=\"bundle_ack\"} 0\n"));
        assert!(
            text.contains("flotilla_agent_messages_refused_total{kind=\"command_result\"} 1\n")
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
