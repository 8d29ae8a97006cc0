//! Rollouts of ApplicationSets with a `RollingSync` strategy: the record of each
//! rollout (`rollouts`), which apps a rollout drives (`rollout_members`), and the
//! bundles held back for them until their step starts (`held_bundles`).

use serde::{Deserialize, Serialize};

use super::{Key, Result, Store, app_key};
use crate::app::appset::RollingStep;

/// Where a rollout is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutPhase {
    /// Nothing to roll out: every app has what its set last rendered.
    #[default]
    Idle,
    /// Steps are being worked through.
    Progressing,
    /// Every step passed.
    Completed,
    /// A step failed; every cluster the rollout had moved went back.
    RolledBack,
    /// Stopped by a user; every cluster the rollout had moved went back.
    Aborted,
}

/// Where one app of a rollout is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppPhase {
    /// Its step has not reached it; its clusters have the bundle they had.
    #[default]
    Waiting,
    /// Its new bundles were released; waiting for Synced and Healthy (and the soak).
    Updating,
    /// Synced and Healthy for the soak time.
    Passed,
    /// It failed its gate.
    Failed,
    /// It was moved and has been given back its bundle from before.
    RolledBack,
}

/// One cluster of an app in a rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterProgress {
    pub cluster: String,
    /// The generation it had when the rollout first reached this app (`None`:
    /// the app was new there).
    pub before: Option<u64>,
    /// The generation this rollout released to it.
    pub released: Option<u64>,
}

/// One app of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppProgress {
    pub project: String,
    pub name: String,
    /// The index of its step; `steps.len()` is the implicit last step of apps
    /// that match no step.
    pub step: usize,
    pub phase: AppPhase,
    pub clusters: Vec<ClusterProgress>,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub healthy_since_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Why it failed, or what it waits for.
    #[serde(default)]
    pub message: Option<String>,
}

/// An app a rollout drives, with the labels its steps select on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub project: String,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A rollout: one per ApplicationSet with a RollingSync strategy, named after it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    /// The ApplicationSet's name.
    pub name: String,
    /// The app whose render holds the set: `project/name`.
    pub parent: String,
    pub steps: Vec<RollingStep>,
    /// How long an app must stay Synced and Healthy before it passes.
    pub soak_ms: u64,
    /// How long an app may take to become Synced and Healthy.
    pub progress_deadline_ms: u64,
    pub members: Vec<Member>,
    pub phase: RolloutPhase,
    /// No app starts while set (apps already updating carry on).
    #[serde(default)]
    pub paused: bool,
    /// The steps (indexes) the rollout pauses before, for manual promotion.
    #[serde(default)]
    pub pause_before: Vec<usize>,
    /// How many apps may fail, each rolled back alone, before the rollout does.
    #[serde(default)]
    pub failure_budget: Option<crate::app::appset::FailureBudget>,
    /// The step a user promoted: its maxUpdate and soak no longer hold it.
    #[serde(default)]
    pub promoted_step: Option<usize>,
    /// The revision the rolled-out apps had before, as far as known.
    #[serde(default)]
    pub from_revision: Option<String>,
    /// The revision being rolled out.
    #[serde(default)]
    pub to_revision: Option<String>,
    /// The current step.
    #[serde(default)]
    pub step: usize,
    #[serde(default)]
    pub apps: Vec<AppProgress>,
    /// Why it rolled back or was aborted.
    #[serde(default)]
    pub reason: Option<String>,
    /// The app that caused the rollback, `project/name`.
    #[serde(default)]
    pub failed_app: Option<String>,
    /// A revision that failed: it is not rolled out again until a newer commit
    /// or `flotilla rollout retry`.
    #[serde(default)]
    pub failed_revision: Option<String>,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
}

impl RolloutRecord {
    /// How many steps there are, counting the implicit last one.
    pub fn step_count(&self) -> usize {
        self.steps.len() + 1
    }
}

fn held_key(project: &str, app: &str, cluster: &str) -> Key {
    app_key(project, app).str(cluster)
}

impl Store {
    /// Stores a rollout, flushed.
    pub async fn put_rollout(&self, rollout: &RolloutRecord) -> Result<()> {
        self.put("rollouts", &Key::new().str(&rollout.name), rollout)
            .await
    }

    /// The rollout of the ApplicationSet `name`.
    pub fn rollout(&self, name: &str) -> Result<Option<RolloutRecord>> {
        self.get("rollouts", &Key::new().str(name))
    }

    /// Every rollout, by name.
    pub fn rollouts(&self) -> Result<Vec<RolloutRecord>> {
        Ok(self
            .scan("rollouts", &Key::new())?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Removes a rollout, its members and their held bundles.
    pub async fn remove_rollout(&self, rollout: &RolloutRecord) -> Result<()> {
        for member in &rollout.members {
            self.remove_rollout_member(&member.project, &member.name)
                .await?;
        }
        self.remove("rollouts", &Key::new().str(&rollout.name))
            .await?;
        Ok(())
    }

    /// Marks `project/app` as driven by the rollout `rollout`, flushed: from now
    /// on its new bundles are held for the rollout.
    pub async fn put_rollout_member(&self, project: &str, app: &str, rollout: &str) -> Result<()> {
        self.put("rollout_members", &app_key(project, app), &rollout)
            .await
    }

    /// The rollout that drives `project/app`, if one does.
    pub fn rollout_member(&self, project: &str, app: &str) -> Result<Option<String>> {
        self.get("rollout_members", &app_key(project, app))
    }

    /// Stops a rollout driving `project/app`, and drops the bundles held for it.
    pub async fn remove_rollout_member(&self, project: &str, app: &str) -> Result<()> {
        self.remove("rollout_members", &app_key(project, app))
            .await?;
        for (key, _) in self.scan::<Vec<u8>>("held_bundles", &app_key(project, app))? {
            self.remove("held_bundles", &key).await?;
        }
        Ok(())
    }

    /// The bundle held for `project/app` on `cluster`.
    pub fn held_bundle(&self, project: &str, app: &str, cluster: &str) -> Result<Option<Vec<u8>>> {
        self.get("held_bundles", &held_key(project, app, cluster))
    }

    /// Drops the bundle held for `project/app` on `cluster`.
    pub async fn remove_held_bundle(
        &self,
        project: &str,
        app: &str,
        cluster: &str,
    ) -> Result<bool> {
        self.remove("held_bundles", &held_key(project, app, cluster))
            .await
    }
}

impl Store {
    /// A bundle held back until its app's step starts, not yet flushed: a refresh holds a bundle
    /// per cluster and flushes them together ([`Store::flush_held_bundles`]).
    pub fn write_held_bundle(
        &self,
        project: &str,
        app: &str,
        cluster: &str,
        bundle: &[u8],
    ) -> Result<()> {
        let bytes = serde_json::to_vec(&bundle).map_err(|source| super::Error::Decode {
            tree: "held_bundles",
            source,
        })?;
        self.tree("held_bundles")?
            .insert(held_key(project, app, cluster).as_bytes(), bytes)
            .map_err(|source| super::db("held_bundles", "writing", source))?;
        Ok(())
    }

    /// As [`Store::remove_held_bundle`], not yet flushed.
    pub fn forget_held_bundle(&self, project: &str, app: &str, cluster: &str) -> Result<()> {
        self.tree("held_bundles")?
            .remove(held_key(project, app, cluster).as_bytes())
            .map_err(|source| super::db("held_bundles", "removing", source))?;
        Ok(())
    }

    /// Makes held bundles written or forgotten durable.
    pub async fn flush_held_bundles(&self) -> Result<()> {
        self.flush("held_bundles").await
    }
}
