//! Deterministic bundles and keys for tests.

use serde_json::json;

use crate::bundle::{Automated, Bundle, Object, Source, SyncPolicy};
use crate::model::{AppRef, Gvk, Timestamp};
use crate::project::ProjectRules;
use crate::signing::{BundleSigner, KeySet};

/// The cluster the fixtures address.
pub const CLUSTER: &str = "east";

/// A fixed "now" for signing tests.
pub const NOW: Timestamp = Timestamp(1_800_000_000);

pub fn signer(seed: u8) -> BundleSigner {
    BundleSigner::from_seed(&[seed; 32])
}

pub fn trusting(signers: &[&BundleSigner]) -> KeySet {
    let keys: Vec<[u8; 32]> = signers.iter().map(|s| s.public_key()).collect();
    KeySet::new(1, &keys).unwrap()
}

pub fn config_map(name: &str, value: &str) -> Object {
    Object::new(
        Gvk::new("", "v1", "ConfigMap"),
        Some("default".to_owned()),
        name,
        &json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"},
            "data": {"value": value},
        }),
    )
}

pub fn bundle(app: &str, generation: u64, objects: usize) -> Bundle {
    Bundle {
        app: AppRef::new("default", app),
        cluster: CLUSTER.to_owned(),
        source: Source {
            repo: "https://git.example/fleet.git".to_owned(),
            revision: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            path: format!("apps/{app}"),
        },
        generation,
        created_at: NOW,
        not_after: Timestamp(NOW.0 + 3600),
        policy: SyncPolicy {
            automated: Some(Automated {
                prune: true,
                self_heal: true,
                allow_empty: false,
            }),
            sync_options: vec!["CreateNamespace=true".to_owned()],
            deletion: None,
            retry: None,
            managed_namespace_metadata: None,
        },
        ignore_differences: Vec::new(),
        project: ProjectRules::allow_all("default", CLUSTER),
        objects: (0..objects)
            .map(|i| config_map(&format!("cm-{i}"), &format!("v{i}")))
            .collect(),
    }
}
