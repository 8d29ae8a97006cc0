//! The apply engine behind the link: what the agent does with a verified bundle.
//!
//! Under automated sync the bundle is synced at once ([`Applier::sync`]); under
//! manual sync it is only diffed, and the status says OutOfSync until the hub sends
//! a sync command. Either way the acknowledgement says the agent took the
//! generation, and the status says whether the cluster matches it.

use std::sync::Arc;
use std::time::SystemTime;

use flotilla_common::bundle::Bundle;
use flotilla_common::message::{BundleOutcome, Status};
use flotilla_common::model::{Health, SyncStatus, Timestamp};

use crate::apply::{Applier, Outcome};
use crate::link::{self, ApplyReport};

/// The engine as the link drives it.
#[derive(Clone)]
pub struct Engine {
    applier: Arc<Applier>,
}

impl Engine {
    pub fn new(applier: Applier) -> Self {
        Self {
            applier: Arc::new(applier),
        }
    }

    /// Runs `f` on the engine to completion on a blocking thread. The sync's future
    /// holds closures over borrowed state that the compiler cannot prove `Send`
    /// for every lifetime, which the link's `Send` bound needs; driving it with
    /// `block_on` there needs no `Send` at all.
    async fn run<T: Send + 'static>(
        &self,
        bundle: &Bundle,
        f: impl AsyncFnOnce(&Applier, &Bundle) -> T + Send + 'static,
    ) -> Option<T> {
        let applier = self.applier.clone();
        let bundle = bundle.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || handle.block_on(f(&applier, &bundle)))
            .await
            .ok()
    }
}

impl link::Applier for Engine {
    async fn apply(&self, bundle: &Bundle) -> ApplyReport {
        if bundle.policy.automated.is_none() {
            let diff = self
                .run(bundle, async |a, b| {
                    a.diff(b).await.map_err(|e| e.to_string())
                })
                .await;
            return match diff.unwrap_or_else(|| Err("the diff task died".to_owned())) {
                Ok(resources) => {
                    let sync = if resources.iter().all(|r| r.sync == SyncStatus::Synced) {
                        SyncStatus::Synced
                    } else {
                        SyncStatus::OutOfSync
                    };
                    let health = Health::worst(resources.iter().map(|r| r.health));
                    ApplyReport {
                        outcome: BundleOutcome::Applied,
                        status: Some(Status {
                            sequence: 0,
                            app: bundle.app.clone(),
                            generation: bundle.generation,
                            sync,
                            health,
                            resources,
                            drift: Vec::new(),
                            events: Vec::new(),
                            operation: None,
                        }),
                    }
                }
                Err(e) => ApplyReport {
                    outcome: BundleOutcome::Failed {
                        message: format!("computing the diff: {e}"),
                    },
                    status: None,
                },
            };
        }
        let Some(report) = self.run(bundle, async |a, b| a.sync(b).await).await else {
            return ApplyReport {
                outcome: BundleOutcome::Failed {
                    message: "the sync task died".to_owned(),
                },
                status: None,
            };
        };
        let now = Timestamp::from_system_time(SystemTime::now());
        let outcome = match &report.outcome {
            Outcome::Succeeded => BundleOutcome::Applied,
            failed => BundleOutcome::Failed {
                message: format!("{failed:?}"),
            },
        };
        ApplyReport {
            outcome,
            status: Some(report.to_status(now, Vec::new())),
        }
    }
}
