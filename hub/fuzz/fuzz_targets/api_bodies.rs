//! Feeds arbitrary bodies to what the API does with them beyond a plain derived
//! `Deserialize`: an Application (`POST /api/v1/applications`, YAML or JSON), an
//! AppProject and its roles (`POST /api/v1/projects`), an Argo CD repository
//! Secret (`POST /api/v1/repositories`) and an RBAC policy. The first byte picks
//! which. Any panic is a bug.
#![no_main]

use flotilla_hub::app::{Application, Manifest, parse_manifests};
use flotilla_hub::rbac::Policy;
use flotilla_hub::source::RepoSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            if let Ok(text) = std::str::from_utf8(body)
                && let Ok(app) = Application::from_yaml(text, "request body")
            {
                let _ = app.source().clone();
                let _ = RepoSpec::new(app.source().repo_url.clone()).redacted_url();
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(body)
                && let Ok(manifests) = parse_manifests(text, "request body")
            {
                for manifest in manifests {
                    if let Manifest::AppProject(project) = manifest
                        && let Ok(mut policy) = Policy::parse("", None, "fuzz")
                    {
                        let _ = policy.add_project_roles(&project);
                        let _ = policy.enforce("someone", &[], "applications", "get", "p/a");
                    }
                }
            }
        }
        2 => {
            if let Ok(spec) = RepoSpec::from_argocd_secret_yaml(body) {
                let _ = spec.redacted_url();
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(body) {
                if let Ok(policy) = Policy::parse(text, Some("role:readonly"), "fuzz") {
                    let _ = policy.enforce(
                        "alice",
                        &["team".to_owned()],
                        "applications",
                        "sync",
                        "p/a",
                    );
                }
                let _ = Policy::from_configmap_yaml(text, "fuzz");
            }
        }
    }
});
