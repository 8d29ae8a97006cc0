//! Helm apps: `helm template`, from a chart in Git or in a chart repository, with the
//! Application's release name, values and parameters, and the target cluster's
//! version and APIs, as Argo CD runs it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use flotilla_common::model::ClusterFacts;
use serde_json::Value;

use super::argument;
use super::tool::{Tools, run};
use super::{Error, Result};
use crate::app::{Application, Helm, Source};
use crate::source::Credentials;
use crate::store::Store;

/// Where the chart comes from.
pub enum Chart<'a> {
    /// A chart folder in the exported repo; `root` bounds the value files.
    Dir { root: &'a Path, dir: &'a Path },
    /// A chart archive fetched from a Helm repository or an OCI registry.
    Archive { path: &'a Path },
    /// A chart in a Helm repository (`https://…`) or an OCI registry (`oci://…`),
    /// fetched by helm itself (`flotilla render`, without credentials).
    Repo {
        url: &'a str,
        name: &'a str,
        version: &'a str,
    },
}

/// What a render passes helm besides the chart.
#[derive(Default)]
pub struct Context<'a> {
    /// The checkouts of the app's `ref` sources by name, for `$ref/…` value files.
    pub refs: BTreeMap<String, PathBuf>,
    /// Where the hub keeps repository credentials, for dependency repositories.
    pub store: Option<&'a Store>,
    /// Extra certificate authorities for dependency repositories, PEM.
    pub extra_roots: &'a [Vec<u8>],
}

/// Runs `helm template` for `source` of `app`; `scratch` is a private folder for
/// Helm's own state and the values file.
///
/// Every string from the Application is checked before it reaches helm's argv:
/// options are passed as `--flag=value`, the release name and chart come after
/// `--`, values Helm splits are escaped, and every path is resolved inside the
/// checkout.
pub async fn template(
    tools: &Tools,
    app: &Application,
    source: &Source,
    chart: Chart<'_>,
    facts: Option<&ClusterFacts>,
    scratch: &Path,
    context: &Context<'_>,
) -> Result<Vec<u8>> {
    let default = Helm::default();
    let helm = source.helm.as_ref().unwrap_or(&default);
    let (release, release_field) = match helm.release_name.as_deref() {
        Some(name) => (name, "spec.source.helm.releaseName"),
        None => (app.name(), "metadata.name (the default Helm release name)"),
    };
    argument::release_name(release_field, release)?;
    let namespace = match (&helm.namespace, &app.spec.destination.namespace) {
        (Some(ns), _) => Some((ns.as_str(), "spec.source.helm.namespace")),
        (None, Some(ns)) => Some((ns.as_str(), "spec.destination.namespace")),
        (None, None) => None,
    };

    let mut options: Vec<OsString> = Vec::new();
    let mut positionals: Vec<OsString> = vec![release.into()];
    let mut dir = scratch.to_owned();
    match &chart {
        Chart::Dir {
            root,
            dir: chart_dir,
        } => {
            positionals.push(chart_dir.as_os_str().to_owned());
            dir = chart_dir.to_path_buf();
            let dependencies = chart_dependencies(chart_dir)?;
            refuse_dependencies_outside(root, chart_dir, &dependencies)?;
            dependency_build(tools, chart_dir, scratch, &dependencies, context).await?;
            for file in &helm.value_files {
                let field = "spec.source.helm.valueFiles";
                if file.starts_with('$') {
                    options.extend(ref_value_file(helm, file, context)?);
                    continue;
                }
                let path = argument::inside(field, root, chart_dir, file)?;
                if path.is_file() {
                    options.push(flag("--values", &argument::csv_field(&path_text(&path)?)));
                } else if !helm.ignore_missing_value_files {
                    return Err(Error::ValueFile {
                        file: file.clone(),
                        message: "does not exist in the chart's folder at this revision".to_owned(),
                    });
                }
            }
        }
        Chart::Archive { path } => {
            positionals.push(path.as_os_str().to_owned());
            for file in &helm.value_files {
                if !file.starts_with('$') {
                    return Err(Error::ValueFile {
                        file: file.clone(),
                        message: "a value file of a chart from a repository comes from another \
                                  source ($ref/...); use values or valuesObject otherwise"
                            .to_owned(),
                    });
                }
                options.extend(ref_value_file(helm, file, context)?);
            }
        }
        Chart::Repo { url, name, version } => {
            argument::chart_name("spec.source.chart", name)?;
            argument::printable("spec.source.repoURL", url)?;
            if let Some(registry) = url.strip_prefix("oci://") {
                positionals.push(format!("oci://{}/{name}", registry.trim_end_matches('/')).into());
            } else if url.starts_with("https://") || url.starts_with("http://") {
                positionals.push((*name).into());
                options.push(flag("--repo", url));
            } else {
                return Err(argument::refuse(
                    "spec.source.repoURL",
                    url,
                    "a chart repository is an https://, http:// or oci:// URL",
                ));
            }
            if !version.is_empty() && *version != "HEAD" {
                argument::printable("spec.source.targetRevision", version)?;
                options.push(flag("--version", version));
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
    if let Some((ns, field)) = namespace {
        argument::namespace(field, ns)?;
        options.push(flag("--namespace", ns));
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
        options.push(flag("--values", &argument::csv_field(&path_text(&file)?)));
    }
    for p in &helm.parameters {
        argument::helm_key("spec.source.helm.parameters[].name", &p.name)?;
        let name = if p.force_string {
            "--set-string"
        } else {
            "--set"
        };
        options.push(flag(
            name,
            &format!("{}={}", p.name, argument::helm_set_value(&p.value)),
        ));
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
        argument::helm_key("spec.source.helm.fileParameters[].name", &p.name)?;
        let path = argument::inside(
            "spec.source.helm.fileParameters[].path",
            root,
            chart_dir,
            &p.path,
        )?;
        if !path.is_file() {
            return Err(Error::ValueFile {
                file: p.path.clone(),
                message: "does not exist inside the repository".to_owned(),
            });
        }
        options.push(flag(
            "--set-file",
            &format!("{}={}", p.name, argument::helm_literal(&path_text(&path)?)),
        ));
    }

    let kube_version = match &helm.kube_version {
        Some(v) => Some((v.clone(), "spec.source.helm.kubeVersion")),
        None => facts
            .map(|f| f.kubernetes_version.clone())
            .filter(|v| !v.is_empty())
            .map(|v| (v, "the cluster's Kubernetes version")),
    };
    if let Some((v, field)) = kube_version {
        argument::token(field, &v)?;
        options.push(flag("--kube-version", &v));
    }
    for v in api_versions(helm, facts) {
        argument::token("spec.source.helm.apiVersions (or the cluster's APIs)", &v)?;
        options.push(flag("--api-versions", &argument::csv_field(&v)));
    }
    if !helm.skip_crds {
        options.push("--include-crds".into());
    }
    if helm.skip_tests {
        options.push("--skip-tests".into());
    }
    if helm.skip_schema_validation {
        options.push("--skip-schema-validation".into());
    }

    let mut args: Vec<OsString> = vec!["template".into()];
    args.extend(options);
    args.push("--".into());
    args.extend(positionals);
    run_helm(tools, args, &dir, scratch).await
}

/// `--values=…` for a `$ref/path` value file: the path resolved inside that ref's
/// checkout, none when it is missing and missing files are ignored.
fn ref_value_file(helm: &Helm, file: &str, context: &Context<'_>) -> Result<Option<OsString>> {
    let field = "spec.sources[].helm.valueFiles";
    let rest = &file[1..];
    let (name, rel) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(root) = context.refs.get(name) else {
        return Err(argument::refuse(
            field,
            file,
            "names a ref that no source of the app has",
        ));
    };
    let path = argument::inside(field, root, root, rel)?;
    if path.is_file() {
        Ok(Some(flag(
            "--values",
            &argument::csv_field(&path_text(&path)?),
        )))
    } else if helm.ignore_missing_value_files {
        Ok(None)
    } else {
        Err(Error::ValueFile {
            file: file.to_owned(),
            message: format!("does not exist in the checkout of ref {name:?} at its revision"),
        })
    }
}

/// `--name=value`, one argv word, so a value can never be read as another option.
fn flag(name: &str, value: &str) -> OsString {
    format!("{name}={value}").into()
}

/// A path as text for a flag value; scratch paths are always UTF-8 in practice,
/// and one that is not is refused rather than mangled.
fn path_text(path: &Path) -> Result<String> {
    path.to_str().map(str::to_owned).ok_or_else(|| Error::Io {
        what: "a render path is not UTF-8".to_owned(),
        path: path.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    })
}

/// The `dependencies` of the chart's Chart.yaml, read once for both the path check
/// and the dependency build; none when it has no Chart.yaml.
fn chart_dependencies(chart_dir: &Path) -> Result<Vec<Value>> {
    let chart_yaml = chart_dir.join("Chart.yaml");
    let Ok(text) = std::fs::read_to_string(&chart_yaml) else {
        return Ok(Vec::new());
    };
    let chart: Value = serde_saphyr::from_str(&text).map_err(|e| Error::Manifest {
        file: chart_yaml.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(chart
        .get("dependencies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// Chart.yaml dependencies with a `file://` repository are read by helm from that
/// path: it must stay inside the checkout.
fn refuse_dependencies_outside(
    root: &Path,
    chart_dir: &Path,
    dependencies: &[Value],
) -> Result<()> {
    for dependency in dependencies {
        let Some(repository) = dependency.get("repository").and_then(Value::as_str) else {
            continue;
        };
        if let Some(path) = repository.strip_prefix("file://") {
            argument::inside(
                "Chart.yaml dependencies[].repository",
                root,
                chart_dir,
                path,
            )?;
        }
    }
    Ok(())
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
///
/// Each dependency repository gets the credentials the hub holds for it (its
/// repository Secret, or the longest matching credential template), written to
/// helm's repositories file and registry config inside `scratch`, never to argv.
/// A failure names the dependencies it may concern and their repositories.
async fn dependency_build(
    tools: &Tools,
    chart_dir: &Path,
    scratch: &Path,
    dependencies: &[Value],
    context: &Context<'_>,
) -> Result<()> {
    if dependencies.is_empty() || chart_dir.join("charts").is_dir() {
        return Ok(());
    }
    write_helm_credentials(scratch, dependencies, context)?;
    let built = run_helm(
        tools,
        vec!["dependency".into(), "build".into(), ".".into()],
        chart_dir,
        scratch,
    )
    .await;
    match built {
        Ok(_) => Ok(()),
        Err(Error::ToolFailed { stderr, .. }) => {
            let remote: Vec<(String, String)> = dependencies
                .iter()
                .filter_map(|d| {
                    let name = d.get("name")?.as_str()?.to_owned();
                    let repository = d.get("repository")?.as_str()?.to_owned();
                    (!repository.starts_with("file://") && !repository.is_empty())
                        .then_some((name, repository))
                })
                .collect();
            // Name the dependency helm's message is about, else every remote one.
            let named: Vec<&(String, String)> = remote
                .iter()
                .filter(|(name, repository)| {
                    stderr.contains(repository.trim_end_matches('/'))
                        || stderr.contains(&format!("/{name}-"))
                        || stderr.contains(&format!("\"{name}\""))
                })
                .collect();
            let named = if named.is_empty() {
                remote.iter().collect()
            } else {
                named
            };
            Err(Error::Dependency {
                dependencies: named
                    .iter()
                    .map(|(name, repository)| {
                        format!("{name} from {}", argument::redact_urls(repository))
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                message: argument::redact_urls(stderr.trim()),
            })
        }
        Err(other) => Err(other),
    }
}

/// Helm's repositories file and registry config in `scratch`, with an entry for
/// each dependency repository the hub holds credentials for, and the extra
/// certificate authorities; key material goes in private files beside them.
fn write_helm_credentials(
    scratch: &Path,
    dependencies: &[Value],
    context: &Context<'_>,
) -> Result<()> {
    let config = scratch.join("helm/config");
    let private = scratch.join("credentials");
    for dir in [&config, &config.join("registry"), &private] {
        create_private_dir(dir)?;
    }
    let ca_file = if context.extra_roots.is_empty() {
        None
    } else {
        let path = private.join("ca.pem");
        write_private(&path, &context.extra_roots.concat())?;
        Some(path_text(&path)?)
    };
    let mut repositories = Vec::new();
    let mut auths = serde_json::Map::new();
    let mut seen = std::collections::BTreeSet::new();
    for dependency in dependencies {
        let Some(url) = dependency.get("repository").and_then(Value::as_str) else {
            continue;
        };
        if !seen.insert(url.to_owned()) {
            continue;
        }
        let access = context
            .store
            .and_then(|store| store.repo_access(url).ok().flatten());
        let basic = match access.as_ref().and_then(|a| a.credentials.as_ref()) {
            Some(Credentials::Https { username, token }) => Some((username.clone(), token.clone())),
            _ => None,
        };
        if let Some(registry) = url.strip_prefix("oci://") {
            if let Some((user, password)) = basic {
                use base64::Engine as _;
                let host = registry.split('/').next().unwrap_or(registry);
                let auth =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                auths.insert(host.to_owned(), serde_json::json!({ "auth": auth }));
            }
            continue;
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            continue;
        }
        let index = repositories.len();
        let mut entry = serde_json::json!({
            "name": format!("flotilla-dependency-{index}"),
            "url": url,
        });
        if let Some((user, password)) = basic {
            entry["username"] = user.into();
            entry["password"] = password.into();
        }
        if let Some(tls) = access.as_ref().and_then(|a| a.tls_client.as_ref()) {
            let cert = private.join(format!("client-{index}.crt"));
            let key = private.join(format!("client-{index}.key"));
            write_private(&cert, tls.cert.as_bytes())?;
            write_private(&key, tls.key.as_bytes())?;
            entry["certFile"] = path_text(&cert)?.into();
            entry["keyFile"] = path_text(&key)?.into();
        }
        if let Some(ca) = &ca_file {
            entry["caFile"] = ca.clone().into();
        }
        repositories.push(entry);
    }
    let file = serde_json::json!({ "apiVersion": "", "generated": "0001-01-01T00:00:00Z", "repositories": repositories });
    write_private(
        &config.join("repositories.yaml"),
        &serde_json::to_vec(&file).unwrap_or_default(),
    )?;
    let registry = serde_json::json!({ "auths": auths });
    write_private(
        &config.join("registry/config.json"),
        &serde_json::to_vec(&registry).unwrap_or_default(),
    )?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Io {
            what: "creating a private folder for helm".to_owned(),
            path: dir.to_owned(),
            source,
        })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|source| Error::Io {
            what: "writing helm's credentials".to_owned(),
            path: path.to_owned(),
            source,
        })
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
        ("HOME", "home"),
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
