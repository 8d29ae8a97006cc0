//! Helm apps: `helm template`, from a chart in Git or in a chart repository, with the
//! Application's release name, values and parameters, and the target cluster's
//! version and APIs, as Argo CD runs it.

use std::ffi::OsString;
use std::path::Path;

use flotilla_common::model::ClusterFacts;
use serde_json::Value;

use super::tool::{Tools, run};
use super::{Error, Result};
use crate::app::{Application, Helm};

/// Where the chart comes from.
pub enum Chart<'a> {
    /// A chart folder in the exported repo; `root` bounds the value files.
    Dir { root: &'a Path, dir: &'a Path },
    /// A chart in a Helm repository (`https://…`) or an OCI registry (`oci://…`).
    Repo {
        url: &'a str,
        name: &'a str,
        version: &'a str,
    },
}

/// Runs `helm template`; `scratch` is a private folder for Helm's own state and the
/// values file.
pub async fn template(
    tools: &Tools,
    app: &Application,
    chart: Chart<'_>,
    facts: Option<&ClusterFacts>,
    scratch: &Path,
) -> Result<Vec<u8>> {
    let default = Helm::default();
    let helm = app.source().helm.as_ref().unwrap_or(&default);
    let release = helm.release_name.as_deref().unwrap_or(app.name());
    let namespace = helm
        .namespace
        .as_deref()
        .or(app.spec.destination.namespace.as_deref());

    let mut args: Vec<OsString> = vec!["template".into(), release.into()];
    let mut dir = scratch.to_owned();
    match &chart {
        Chart::Dir {
            root,
            dir: chart_dir,
        } => {
            args.push(chart_dir.as_os_str().to_owned());
            dir = chart_dir.to_path_buf();
            dependency_build(tools, chart_dir, scratch).await?;
            for file in &helm.value_files {
                let path = chart_dir.join(file);
                let inside = path
                    .canonicalize()
                    .ok()
                    .zip(root.canonicalize().ok())
                    .map(|(p, r)| p.starts_with(r));
                match inside {
                    Some(true) => args.extend(["--values".into(), path.into_os_string()]),
                    Some(false) => {
                        return Err(Error::ValueFile {
                            file: file.clone(),
                            message: "is outside the repository".to_owned(),
                        });
                    }
                    None if helm.ignore_missing_value_files => {}
                    None => {
                        return Err(Error::ValueFile {
                            file: file.clone(),
                            message: "does not exist in the chart's folder at this revision"
                                .to_owned(),
                        });
                    }
                }
            }
        }
        Chart::Repo { url, name, version } => {
            if let Some(registry) = url.strip_prefix("oci://") {
                args.push(format!("oci://{}/{name}", registry.trim_end_matches('/')).into());
            } else {
                args.extend([(*name).into(), "--repo".into(), (*url).into()]);
            }
            if !version.is_empty() && *version != "HEAD" {
                args.extend(["--version".into(), (*version).into()]);
            }
            if !helm.value_files.is_empty() {
                return Err(Error::ValueFile {
                    file: helm.value_files.join(", "),
                    message: "value files need a chart in Git; use values or valuesObject for a chart repository"
                        .to_owned(),
                });
            }
        }
    }
    if let Some(ns) = namespace {
        args.extend(["--namespace".into(), ns.into()]);
    }

    // Inline values: `values` then `valuesObject`, the object winning, as in Argo CD.
    let inline = inline_values(helm)?;
    if let Some(values) = inline {
        let file = scratch.join("flotilla-values.json");
        std::fs::write(&file, values).map_err(|source| Error::Io {
            what: "writing inline Helm values".to_owned(),
            path: file.clone(),
            source,
        })?;
        args.extend(["--values".into(), file.into_os_string()]);
    }
    for p in &helm.parameters {
        let flag = if p.force_string {
            "--set-string"
        } else {
            "--set"
        };
        args.extend([flag.into(), format!("{}={}", p.name, p.value).into()]);
    }
    for p in &helm.file_parameters {
        let Chart::Dir {
            root,
            dir: chart_dir,
        } = &chart
        else {
            return Err(Error::ValueFile {
                file: p.path.clone(),
                message: "file parameters need a chart in Git".to_owned(),
            });
        };
        let path = chart_dir.join(&p.path);
        if !path
            .canonicalize()
            .is_ok_and(|c| root.canonicalize().is_ok_and(|r| c.starts_with(r)))
        {
            return Err(Error::ValueFile {
                file: p.path.clone(),
                message: "does not exist inside the repository".to_owned(),
            });
        }
        args.extend([
            "--set-file".into(),
            format!("{}={}", p.name, path.display()).into(),
        ]);
    }

    let kube_version = helm.kube_version.clone().or_else(|| {
        facts
            .map(|f| f.kubernetes_version.clone())
            .filter(|v| !v.is_empty())
    });
    if let Some(v) = kube_version {
        args.extend(["--kube-version".into(), v.into()]);
    }
    for v in api_versions(helm, facts) {
        args.extend(["--api-versions".into(), v.into()]);
    }
    if !helm.skip_crds {
        args.push("--include-crds".into());
    }
    if helm.skip_tests {
        args.push("--skip-tests".into());
    }
    if helm.skip_schema_validation {
        args.push("--skip-schema-validation".into());
    }

    run_helm(tools, args, &dir, scratch).await
}

fn inline_values(helm: &Helm) -> Result<Option<Vec<u8>>> {
    let mut merged = match &helm.values {
        Some(text) if !text.trim().is_empty() => {
            serde_saphyr::from_str::<Value>(text).map_err(|e| Error::ValueFile {
                file: "spec.source.helm.values".to_owned(),
                message: e.to_string(),
            })?
        }
        _ => Value::Null,
    };
    if let Some(object) = &helm.values_object {
        merge(&mut merged, object);
    }
    if merged.is_null() {
        return Ok(None);
    }
    Ok(Some(serde_json::to_vec(&merged).unwrap_or_default()))
}

/// Deep-merges `over` into `base`, mappings key by key, anything else replaced.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// `--api-versions` values: the app's own list, else every `group/version` and
/// `group/version/Kind` the cluster serves, as Argo CD passes them.
fn api_versions(helm: &Helm, facts: Option<&ClusterFacts>) -> Vec<String> {
    if !helm.api_versions.is_empty() {
        return helm.api_versions.clone();
    }
    let mut out: Vec<String> = facts
        .into_iter()
        .flat_map(|f| &f.api_resources)
        .flat_map(|r| {
            let with_kind = (!r.kind.is_empty()).then(|| format!("{}/{}", r.group_version, r.kind));
            std::iter::once(r.group_version.clone()).chain(with_kind)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Builds `charts/` from Chart.yaml's dependencies when the repo does not carry it.
async fn dependency_build(tools: &Tools, chart_dir: &Path, scratch: &Path) -> Result<()> {
    let chart_yaml = chart_dir.join("Chart.yaml");
    let Ok(text) = std::fs::read_to_string(&chart_yaml) else {
        return Ok(());
    };
    let chart: Value = serde_saphyr::from_str(&text).map_err(|e| Error::Manifest {
        file: chart_yaml.display().to_string(),
        message: e.to_string(),
    })?;
    let has_deps = chart
        .get("dependencies")
        .and_then(Value::as_array)
        .is_some_and(|d| !d.is_empty());
    if !has_deps || chart_dir.join("charts").is_dir() {
        return Ok(());
    }
    run_helm(
        tools,
        vec!["dependency".into(), "build".into(), ".".into()],
        chart_dir,
        scratch,
    )
    .await
    .map(|_| ())
}

/// Runs helm with its cache, config and data homes inside `scratch`, so nothing
/// leaks between renders or into the hub's own home.
async fn run_helm(
    tools: &Tools,
    args: Vec<OsString>,
    dir: &Path,
    scratch: &Path,
) -> Result<Vec<u8>> {
    let homes = [
        ("HELM_CACHE_HOME", "helm/cache"),
        ("HELM_CONFIG_HOME", "helm/config"),
        ("HELM_DATA_HOME", "helm/data"),
    ]
    .map(|(var, sub)| (var, scratch.join(sub)));
    let env: Vec<(&str, &Path)> = homes
        .iter()
        .map(|(var, path)| (*var, path.as_path()))
        .collect();
    run(&tools.helm, args, dir, &env, tools.timeout).await
}
