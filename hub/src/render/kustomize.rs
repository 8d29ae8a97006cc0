//! Kustomize apps: the Application's `kustomize` fields become `kustomize edit` runs on
//! a private copy of the repo, as Argo CD does, then `kustomize build` renders it.
//! Remote bases are refused before kustomize could try to fetch them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::tool::{Tools, run};
use super::{Error, Result};
use crate::app::Kustomize;

/// The names kustomize accepts for its file, in the order it looks for them.
pub const KUSTOMIZATION_FILES: &[&str] =
    &["kustomization.yaml", "kustomization.yml", "Kustomization"];

pub fn kustomization_file(dir: &Path) -> Option<PathBuf> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Renders the kustomization in `app_dir` (inside the exported repo at `root`).
pub async fn build(
    tools: &Tools,
    root: &Path,
    app_dir: &Path,
    options: Option<&Kustomize>,
) -> Result<Vec<u8>> {
    refuse_remote_bases(root, app_dir, &mut Vec::new())?;
    if let Some(options) = options {
        edit(tools, app_dir, options).await?;
    }
    let mut args: Vec<OsString> = vec!["build".into(), ".".into()];
    if let Some(k) = options {
        // Argo CD passes these through to Helm charts that kustomize inflates.
        if let Some(v) = &k.kube_version {
            args.extend(["--helm-kube-version".into(), v.into()]);
        }
        for v in &k.api_versions {
            args.extend(["--helm-api-versions".into(), v.into()]);
        }
    }
    run(&tools.kustomize, args, app_dir, &[], tools.timeout).await
}

async fn edit(tools: &Tools, dir: &Path, k: &Kustomize) -> Result<()> {
    let mut runs: Vec<Vec<String>> = Vec::new();
    let set = |what: &str, value: &str| {
        vec![
            "edit".into(),
            "set".into(),
            what.into(),
            "--".into(),
            value.into(),
        ]
    };
    if let Some(prefix) = &k.name_prefix {
        runs.push(set("nameprefix", prefix));
    }
    if let Some(suffix) = &k.name_suffix {
        runs.push(set("namesuffix", suffix));
    }
    if let Some(ns) = &k.namespace {
        runs.push(set("namespace", ns));
    }
    if !k.images.is_empty() {
        let mut run = vec!["edit".into(), "set".into(), "image".into()];
        run.extend(k.images.iter().cloned());
        runs.push(run);
    }
    if !k.replicas.is_empty() {
        let mut run = vec!["edit".into(), "set".into(), "replicas".into()];
        for r in &k.replicas {
            let count = match &r.count {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            run.push(format!("{}={count}", r.name));
        }
        runs.push(run);
    }
    let pairs = |map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    if !k.common_labels.is_empty() {
        let mut run = vec!["edit".into(), "add".into(), "label".into()];
        if k.force_common_labels {
            run.push("--force".into());
        }
        if k.label_without_selector {
            run.push("--without-selector".into());
        }
        run.push(pairs(&k.common_labels));
        runs.push(run);
    }
    if !k.common_annotations.is_empty() {
        let mut run = vec!["edit".into(), "add".into(), "annotation".into()];
        if k.force_common_annotations {
            run.push("--force".into());
        }
        run.push(pairs(&k.common_annotations));
        runs.push(run);
    }
    for component in &k.components {
        runs.push(vec![
            "edit".into(),
            "add".into(),
            "component".into(),
            component.clone(),
        ]);
    }
    for args in runs {
        run(
            &tools.kustomize,
            args.into_iter().map(OsString::from).collect(),
            dir,
            &[],
            tools.timeout,
        )
        .await?;
    }
    if !k.patches.is_empty() {
        add_patches(dir, &k.patches)?;
    }
    Ok(())
}

/// Appends the Application's patches to the kustomization's `patches`.
fn add_patches(dir: &Path, patches: &[Value]) -> Result<()> {
    let file = kustomization_file(dir).ok_or_else(|| Error::Manifest {
        file: dir.display().to_string(),
        message: "no kustomization file to add patches to".to_owned(),
    })?;
    let mut doc = read_yaml(&file)?;
    let map = doc.as_object_mut().ok_or_else(|| Error::Manifest {
        file: file.display().to_string(),
        message: "is not a mapping".to_owned(),
    })?;
    let list = map
        .entry("patches")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(items) = list {
        items.extend(patches.iter().cloned());
    }
    // JSON is YAML: kustomize reads it back as it is.
    let text = serde_json::to_vec_pretty(&doc).map_err(|e| Error::Manifest {
        file: file.display().to_string(),
        message: e.to_string(),
    })?;
    std::fs::write(&file, text).map_err(|source| Error::Io {
        what: "writing the patched kustomization".to_owned(),
        path: file.clone(),
        source,
    })
}

fn read_yaml(file: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(file).map_err(|source| Error::Io {
        what: "reading a kustomization".to_owned(),
        path: file.to_owned(),
        source,
    })?;
    serde_saphyr::from_str(&text).map_err(|e| Error::Manifest {
        file: file.display().to_string(),
        message: e.to_string(),
    })
}

/// Walks the kustomizations `dir` reaches through resources, bases and components,
/// and refuses any entry that is a URL or a remote Git reference: a render must come
/// from the commit alone, and the hub fetches nothing a user did not register.
fn refuse_remote_bases(root: &Path, dir: &Path, visited: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(canonical) = dir.canonicalize() else {
        return Ok(());
    };
    if visited.contains(&canonical) {
        return Ok(());
    }
    visited.push(canonical);
    let Some(file) = kustomization_file(dir) else {
        return Ok(());
    };
    let doc = read_yaml(&file)?;
    let shown = file
        .strip_prefix(root)
        .unwrap_or(&file)
        .display()
        .to_string();
    for field in ["resources", "bases", "components"] {
        let Some(entries) = doc.get(field).and_then(Value::as_array) else {
            continue;
        };
        for entry in entries.iter().filter_map(Value::as_str) {
            if is_remote(entry) {
                return Err(Error::RemoteBase {
                    file: shown.clone(),
                    entry: entry.to_owned(),
                });
            }
            let target = dir.join(entry);
            if target.is_dir() {
                refuse_remote_bases(root, &target, visited)?;
            }
        }
    }
    Ok(())
}

fn is_remote(entry: &str) -> bool {
    entry.contains("://")
        || entry.starts_with("git@")
        || entry.starts_with("github.com/")
        || entry.starts_with("gitlab.com/")
        || entry.starts_with("bitbucket.org/")
        || entry.contains("?ref=")
        || entry.contains(".git//")
}
