//! Kustomize apps: the Application's `kustomize` fields become `kustomize edit` runs on
//! a private copy of the repo, as Argo CD does, then `kustomize build` renders it.
//! Remote bases are refused before kustomize could try to fetch them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::argument;
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
///
/// The Application's options are checked, then applied with `kustomize edit` (every
/// value after `--`), then every kustomization the build reaches is checked for
/// remote references and paths out of the checkout before kustomize runs.
pub async fn build(
    tools: &Tools,
    root: &Path,
    app_dir: &Path,
    options: Option<&Kustomize>,
) -> Result<Vec<u8>> {
    let home = root.parent().unwrap_or(root).join("home");
    let env = [("HOME", home.as_path())];
    refuse_remote_bases(root, app_dir, &mut Vec::new())?;
    if let Some(options) = options {
        edit(tools, root, app_dir, options, &env).await?;
        // The edits (components, patches) can name new paths: check again.
        refuse_remote_bases(root, app_dir, &mut Vec::new())?;
    }
    let mut args: Vec<OsString> = vec!["build".into()];
    if let Some(k) = options {
        // Argo CD passes these through to Helm charts that kustomize inflates.
        if let Some(v) = &k.kube_version {
            argument::token("spec.source.kustomize.kubeVersion", v)?;
            args.push(format!("--helm-kube-version={v}").into());
        }
        for v in &k.api_versions {
            argument::token("spec.source.kustomize.apiVersions", v)?;
            args.push(format!("--helm-api-versions={v}").into());
        }
    }
    args.extend(["--".into(), ".".into()]);
    run(&tools.kustomize, args, app_dir, &env, tools.timeout).await
}

/// The `kustomize edit` runs for the Application's options, each value checked and
/// passed after `--` so none can be read as an option or split into more.
fn edit_runs(root: &Path, dir: &Path, k: &Kustomize) -> Result<Vec<Vec<String>>> {
    const FIELD: &str = "spec.source.kustomize";
    let mut runs: Vec<Vec<String>> = Vec::new();
    let edit = |verb: &str, what: &str, flags: &[&str], values: Vec<String>| {
        let mut run: Vec<String> = vec!["edit".into(), verb.into(), what.into()];
        run.extend(flags.iter().map(|f| (*f).to_owned()));
        run.push("--".into());
        run.extend(values);
        run
    };
    if let Some(prefix) = &k.name_prefix {
        argument::printable(&format!("{FIELD}.namePrefix"), prefix)?;
        runs.push(edit("set", "nameprefix", &[], vec![prefix.clone()]));
    }
    if let Some(suffix) = &k.name_suffix {
        argument::printable(&format!("{FIELD}.nameSuffix"), suffix)?;
        runs.push(edit("set", "namesuffix", &[], vec![suffix.clone()]));
    }
    if let Some(ns) = &k.namespace {
        argument::namespace(&format!("{FIELD}.namespace"), ns)?;
        runs.push(edit("set", "namespace", &[], vec![ns.clone()]));
    }
    if !k.images.is_empty() {
        for image in &k.images {
            let field = format!("{FIELD}.images");
            argument::printable(&field, image)?;
            if image.is_empty() || image.starts_with('-') || image.contains(char::is_whitespace) {
                return Err(argument::refuse(&field, image, "is not an image reference"));
            }
        }
        runs.push(edit("set", "image", &[], k.images.clone()));
    }
    if !k.replicas.is_empty() {
        let mut values = Vec::new();
        for r in &k.replicas {
            let field = format!("{FIELD}.replicas[].name");
            argument::printable(&field, &r.name)?;
            if r.name.is_empty() || r.name.contains('=') {
                return Err(argument::refuse(&field, &r.name, "is not an object name"));
            }
            let count = match &r.count {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => other.to_string(),
            };
            if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
                return Err(argument::refuse(
                    &format!("{FIELD}.replicas[].count"),
                    &count,
                    "is not a whole number",
                ));
            }
            values.push(format!("{}={count}", r.name));
        }
        runs.push(edit("set", "replicas", &[], values));
    }
    // One `key:"value"` word per entry: kustomize splits each word at its first ':'
    // and strips one pair of surrounding quotes, so the value arrives exactly.
    let pairs = |what: &str, map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(key, value)| {
                let field = format!("{FIELD}.{what}");
                argument::printable(&field, key)?;
                if key.is_empty() || key.contains(':') {
                    return Err(argument::refuse(
                        &field,
                        key,
                        "is not a label or annotation key",
                    ));
                }
                if value.contains('\0') {
                    return Err(argument::refuse(&field, value, "holds a NUL character"));
                }
                Ok(format!("{key}:\"{value}\""))
            })
            .collect::<Result<Vec<_>>>()
    };
    if !k.common_labels.is_empty() {
        let mut flags = Vec::new();
        if k.force_common_labels {
            flags.push("--force");
        }
        if k.label_without_selector {
            flags.push("--without-selector");
        }
        runs.push(edit(
            "add",
            "label",
            &flags,
            pairs("commonLabels", &k.common_labels)?,
        ));
    }
    if !k.common_annotations.is_empty() {
        let flags: &[&str] = if k.force_common_annotations {
            &["--force"]
        } else {
            &[]
        };
        runs.push(edit(
            "add",
            "annotation",
            flags,
            pairs("commonAnnotations", &k.common_annotations)?,
        ));
    }
    for component in &k.components {
        let field = format!("{FIELD}.components");
        // `kustomize edit add component` expands globs and fetches what is remote;
        // only a plain path inside the checkout gets that far.
        if component.contains(['*', '?', '[', ']', '{', '}']) {
            return Err(argument::refuse(
                &field,
                component,
                "globs are not supported; name the component's folder",
            ));
        }
        argument::inside(&field, root, dir, component)?;
        runs.push(edit("add", "component", &[], vec![component.clone()]));
    }
    Ok(runs)
}

async fn edit(
    tools: &Tools,
    root: &Path,
    dir: &Path,
    k: &Kustomize,
    env: &[(&str, &Path)],
) -> Result<()> {
    for args in edit_runs(root, dir, k)? {
        run(
            &tools.kustomize,
            args.into_iter().map(OsString::from).collect(),
            dir,
            env,
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

/// Walks the kustomizations `dir` reaches through resources, bases, components,
/// generators, transformers and validators, and refuses any entry that is a URL or a
/// remote Git reference (a render must come from the commit alone, and the hub
/// fetches nothing a user did not register) or a path out of the checkout. Files
/// kustomize reads for patches, generators, CRDs and replacements are checked too;
/// kustomize itself keeps those below each kustomization's folder.
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
    let check = |field: &str, entry: &str| -> Result<PathBuf> {
        if argument::is_remote(entry) {
            return Err(Error::RemoteBase {
                file: shown.clone(),
                entry: entry.to_owned(),
            });
        }
        argument::inside(&format!("{shown}: {field}"), root, dir, entry)
    };
    let strings = |value: Option<&Value>| -> Vec<String> {
        match value {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        }
    };
    // Entries that may be folders holding kustomizations: followed.
    for field in [
        "resources",
        "bases",
        "components",
        "generators",
        "transformers",
        "validators",
    ] {
        for entry in strings(doc.get(field)) {
            // An inline plugin configuration is YAML, not a path.
            if field_may_be_inline(field) && entry.contains('\n') {
                continue;
            }
            let target = check(field, &entry)?;
            if target.is_dir() {
                refuse_remote_bases(root, &target, visited)?;
            }
        }
    }
    // Entries that are files (or inline patches).
    for field in ["crds", "configurations", "patchesStrategicMerge"] {
        for entry in strings(doc.get(field)) {
            if !entry.contains('\n') {
                check(field, &entry)?;
            }
        }
    }
    for field in ["patches", "patchesJson6902", "replacements"] {
        for item in doc
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for entry in strings(item.get("path")) {
                check(&format!("{field}[].path"), &entry)?;
            }
        }
    }
    for entry in strings(doc.get("openapi").and_then(|o| o.get("path"))) {
        check("openapi.path", &entry)?;
    }
    for field in ["configMapGenerator", "secretGenerator"] {
        for item in doc
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for entry in strings(item.get("files")) {
                // `key=path` names the key; the path is what is read.
                let path = entry.split_once('=').map_or(entry.as_str(), |(_, p)| p);
                check(&format!("{field}[].files"), path)?;
            }
            for sub in ["envs", "env"] {
                for entry in strings(item.get(sub)) {
                    check(&format!("{field}[].{sub}"), &entry)?;
                }
            }
        }
    }
    Ok(())
}

fn field_may_be_inline(field: &str) -> bool {
    matches!(field, "generators" | "transformers" | "validators")
}
