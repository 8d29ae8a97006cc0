//! Helpers shared by the hub's unit tests.

use flotilla_common::bundle::{Bundle, Object, Source, SyncPolicy};
use flotilla_common::model::{AppRef, Timestamp};

/// An unsigned bundle of `objects` for `default/APP` on `cluster`, rendered from
/// `revision`, valid for as long as a test runs.
pub fn bundle(
    app: &str,
    cluster: &str,
    generation: u64,
    revision: &str,
    objects: Vec<Object>,
) -> Bundle {
    Bundle {
        app: AppRef::new("default", app),
        cluster: cluster.to_owned(),
        source: Source {
            repo: "https://git.example/fleet.git".to_owned(),
            revision: revision.to_owned(),
            path: format!("apps/{app}"),
        },
        generation,
        created_at: Timestamp(1),
        not_after: Timestamp(u64::MAX / 2),
        policy: SyncPolicy::default(),
        ignore_differences: Vec::new(),
        objects,
        project: flotilla_common::project::ProjectRules::allow_all("default", cluster),
    }
}
