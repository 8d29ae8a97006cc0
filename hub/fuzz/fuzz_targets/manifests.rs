//! Feeds arbitrary text to the reader of Application, AppProject and
//! ApplicationSet YAML (what an app of apps renders, what a repository holds),
//! then uses what it accepts as the hub would: an ApplicationSet generates its
//! Applications, an AppProject's roles join the RBAC policy. Any panic, or an
//! allocation libFuzzer flags as too large, is a bug.
#![no_main]

use std::collections::BTreeMap;

use flotilla_hub::app::appset::{ClusterParams, GeneratorInput};
use flotilla_hub::app::{Application, Manifest, parse_manifests};
use flotilla_hub::rbac::Policy;
use libfuzzer_sys::fuzz_target;

/// Two clusters and a few directories, so generators have something to match.
struct Fleet;

impl GeneratorInput for Fleet {
    fn clusters(&self) -> Vec<ClusterParams> {
        ["east", "west"]
            .into_iter()
            .map(|name| ClusterParams {
                name: name.to_owned(),
                server: format!("https://{name}.example:6443"),
                labels: BTreeMap::from([("env".to_owned(), name.to_owned())]),
            })
            .collect()
    }

    fn directories(&self, _repo: &str, _revision: &str) -> Result<Vec<String>, String> {
        Ok(vec![
            "apps".to_owned(),
            "apps/web".to_owned(),
            "apps/db".to_owned(),
        ])
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Application::from_yaml(text, "fuzz");
    let Ok(manifests) = parse_manifests(text, "fuzz") else {
        return;
    };
    for manifest in manifests {
        match manifest {
            Manifest::Application(app) => {
                let _ = app.source_kind();
                let _ = serde_json::to_vec(&app);
            }
            Manifest::AppProject(project) => {
                if let Ok(mut policy) = Policy::parse("g, admin, role:admin", None, "fuzz") {
                    let _ = policy.add_project_roles(&project);
                }
            }
            Manifest::ApplicationSet(set) => {
                if let Ok(apps) = set.generate(&Fleet) {
                    for app in apps {
                        let _ = serde_json::to_vec(&app);
                    }
                }
            }
        }
    }
});
