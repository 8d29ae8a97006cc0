//! What each generator produces: its parameter sets, read from the hub's
//! clusters and repositories, before the template is applied. Parameter names
//! follow Argo CD's default (fasttemplate) mode, where every value is a string
//! and nested keys are joined with dots.
//!
//! Every string here comes from a manifest or a repository and is treated as
//! such: values only ever land in JSON strings of the template (never in text
//! that is parsed again), and paths are the repository's own, matched, never
//! opened.

use serde_json::{Map, Value};

use super::glob::{self, Dialect};
use super::{
    ClustersGenerator, Generator, GeneratorInput, GitGenerator, GitPattern, ListGenerator,
    MatrixGenerator, MergeGenerator, Params, normalize, selects, substitute, substitute_str,
};

/// Where generation failed (a field path) and why.
pub(super) type Failure = (String, String);

/// The parameter sets `g`, at field path `at`, generates, after its selector.
pub(super) fn params(
    g: &Generator,
    at: &str,
    input: &dyn GeneratorInput,
) -> Result<Vec<Params>, Failure> {
    let mut out = if let Some(list) = &g.list {
        list_params(list, &format!("{at}.list"))?
    } else if let Some(c) = &g.clusters {
        cluster_params(c, input)
    } else if let Some(git) = &g.git {
        git_params(git, &format!("{at}.git"), input)?
    } else if let Some(m) = &g.matrix {
        matrix_params(m, &format!("{at}.matrix"), input)?
    } else if let Some(m) = &g.merge {
        merge_params(m, &format!("{at}.merge"), input)?
    } else {
        Vec::new()
    };
    if let Some(selector) = &g.selector {
        out.retain(|p| selects(selector, p));
    }
    Ok(out)
}

fn list_params(list: &ListGenerator, at: &str) -> Result<Vec<Params>, Failure> {
    let mut elements = list.elements.clone();
    if let Some(text) = list
        .elements_yaml
        .as_deref()
        .filter(|t| !t.trim().is_empty())
    {
        let more: Vec<std::collections::BTreeMap<String, Value>> = serde_saphyr::from_str(text)
            .map_err(|e| {
                (
                    format!("{at}.elementsYaml"),
                    format!("is not a YAML list of mappings: {e}"),
                )
            })?;
        elements.extend(more);
    }
    Ok(elements
        .iter()
        .map(|element| {
            let mut p = Params::new();
            for (k, v) in element {
                match v {
                    Value::Object(values) if k == "values" => {
                        for (vk, vv) in values {
                            p.insert(format!("values.{vk}"), scalar(vv));
                        }
                    }
                    _ => {
                        p.insert(k.clone(), scalar(v));
                    }
                }
            }
            p
        })
        .collect())
}

/// A list element's value as text: strings as they are, anything else as JSON.
fn scalar(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn cluster_params(c: &ClustersGenerator, input: &dyn GeneratorInput) -> Vec<Params> {
    input
        .clusters()
        .into_iter()
        .filter(|cluster| selects(&c.selector, &cluster.labels))
        .map(|cluster| {
            let mut p = Params::from([
                ("nameNormalized".to_owned(), normalize(&cluster.name)),
                ("name".to_owned(), cluster.name),
                ("server".to_owned(), cluster.server),
                ("project".to_owned(), cluster.project),
            ]);
            for (k, v) in cluster.labels {
                p.insert(format!("metadata.labels.{k}"), v);
            }
            for (k, v) in cluster.annotations {
                p.insert(format!("metadata.annotations.{k}"), v);
            }
            add_values(&mut p, &c.values);
            p
        })
        .collect()
}

/// `values.KEY` for each of `values`, with the other parameters substituted in.
fn add_values(p: &mut Params, values: &std::collections::BTreeMap<String, String>) {
    for (k, v) in values {
        let value = substitute_str(v, p);
        p.insert(format!("values.{k}"), value);
    }
}

fn git_params(
    git: &GitGenerator,
    at: &str,
    input: &dyn GeneratorInput,
) -> Result<Vec<Params>, Failure> {
    let mut out = Vec::new();
    if git.files.is_empty() {
        let dirs = input
            .directories(&git.repo_url, &git.revision)
            .map_err(|m| (at.to_owned(), m))?;
        for dir in dirs {
            // Argo CD's repo server never lists hidden directories.
            if dir.split('/').any(|segment| segment.starts_with('.')) {
                continue;
            }
            if chosen(
                &git.directories,
                &dir,
                Dialect::Path,
                &format!("{at}.directories"),
            )? {
                let mut p = Params::new();
                path_params(&mut p, &git.path_param_prefix, &dir);
                out.push(p);
            }
        }
    } else {
        let files = input
            .files(&git.repo_url, &git.revision)
            .map_err(|m| (at.to_owned(), m))?;
        for (path, contents) in files.iter() {
            if !chosen(&git.files, path, Dialect::Pathspec, &format!("{at}.files"))? {
                continue;
            }
            let objects = objects(path, contents)
                .map_err(|m| (format!("{at}.files"), format!("{path}: {m}")))?;
            let (dir, file) = path.rsplit_once('/').unwrap_or((".", path.as_str()));
            for object in objects {
                let mut p = Params::new();
                flatten("", &Value::Object(object), &mut p);
                let name = path_name(&git.path_param_prefix);
                path_params(&mut p, &git.path_param_prefix, dir);
                p.insert(format!("{name}.filename"), file.to_owned());
                p.insert(format!("{name}.filenameNormalized"), normalize(file));
                out.push(p);
            }
        }
    }
    for p in &mut out {
        add_values(p, &git.values);
    }
    Ok(out)
}

/// Whether an include entry matches `path` and no exclude entry does.
fn chosen(
    patterns: &[GitPattern],
    path: &str,
    dialect: Dialect,
    at: &str,
) -> Result<bool, Failure> {
    let mut included = false;
    for (j, pattern) in patterns.iter().enumerate() {
        let hit = glob::matches(&pattern.path, path, dialect)
            .map_err(|e| (format!("{at}[{j}].path"), e.to_string()))?;
        if hit && pattern.exclude {
            return Ok(false);
        }
        included |= hit;
    }
    Ok(included)
}

/// The parameter sets a git file holds: one mapping, or a list of them. JSON
/// files are read as JSON, anything else as YAML; an empty file is one empty set.
fn objects(path: &str, contents: &[u8]) -> Result<Vec<Map<String, Value>>, String> {
    let text = std::str::from_utf8(contents).map_err(|_| "is not UTF-8 text".to_owned())?;
    if text.trim().is_empty() {
        return Ok(vec![Map::new()]);
    }
    let doc: Value = if path.ends_with(".json") {
        serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?
    } else {
        serde_saphyr::from_str(text).map_err(|e| format!("is not valid YAML: {e}"))?
    };
    match doc {
        Value::Null => Ok(vec![Map::new()]),
        Value::Object(map) => Ok(vec![map]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(map) => Ok(map),
                _ => Err(format!("item {i} of the list is not a mapping")),
            })
            .collect(),
        _ => Err("holds neither a mapping nor a list of mappings".to_owned()),
    }
}

/// Nested keys joined with dots (`cluster.name`, list items by index:
/// `cluster.zones.0`), and every leaf as Go's `%v` prints it.
fn flatten(prefix: &str, value: &Value, out: &mut Params) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Object(map) if !map.is_empty() || prefix.is_empty() => {
            for (k, v) in map {
                flatten(&key(k), v, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                flatten(&key(&i.to_string()), v, out);
            }
        }
        Value::Object(_) => {
            out.insert(prefix.to_owned(), "map[]".to_owned());
        }
        Value::Array(_) => {
            out.insert(prefix.to_owned(), "[]".to_owned());
        }
        Value::Null => {
            out.insert(prefix.to_owned(), "<nil>".to_owned());
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Bool(_) | Value::Number(_) => {
            out.insert(prefix.to_owned(), value.to_string());
        }
    }
}

/// `path`, or `PREFIX.path` with a `pathParamPrefix`.
fn path_name(prefix: &str) -> String {
    if prefix.is_empty() {
        "path".to_owned()
    } else {
        format!("{prefix}.path")
    }
}

/// Argo CD's path parameters for a directory: `path`, `path.basename`,
/// `path.basenameNormalized` and `path[N]` for each segment (all under
/// `PREFIX.` with a `pathParamPrefix`).
fn path_params(p: &mut Params, prefix: &str, dir: &str) {
    let name = path_name(prefix);
    let basename = dir.rsplit('/').next().unwrap_or(dir);
    p.insert(name.clone(), dir.to_owned());
    p.insert(format!("{name}.path"), dir.to_owned());
    p.insert(format!("{name}.basename"), basename.to_owned());
    p.insert(format!("{name}.basenameNormalized"), normalize(basename));
    for (i, segment) in dir.split('/').enumerate() {
        if !segment.is_empty() {
            p.insert(format!("{name}[{i}]"), segment.to_owned());
        }
    }
}

/// Every set of the first generator with every set the second makes from it:
/// the second's fields may use the first's parameters. A parameter both set to
/// different values is an error, as in Argo CD.
fn matrix_params(
    m: &MatrixGenerator,
    at: &str,
    input: &dyn GeneratorInput,
) -> Result<Vec<Params>, Failure> {
    let second_at = format!("{at}.generators[1]");
    let mut out = Vec::new();
    for a in params(&m.generators[0], &format!("{at}.generators[0]"), input)? {
        let second = interpolate(&m.generators[1], &a).map_err(|e| (second_at.clone(), e))?;
        for b in params(&second, &second_at, input)? {
            let mut combined = a.clone();
            for (k, v) in b {
                if let Some(existing) = combined.get(&k)
                    && *existing != v
                {
                    return Err((
                        at.to_owned(),
                        format!(
                            "both generators set the parameter {k:?}, to {existing:?} and to {v:?}"
                        ),
                    ));
                }
                combined.insert(k, v);
            }
            out.push(combined);
        }
    }
    Ok(out)
}

/// A generator with `{{param}}` in its string fields replaced from `p`.
fn interpolate(g: &Generator, p: &Params) -> Result<Generator, String> {
    let mut value = serde_json::to_value(g).map_err(|e| e.to_string())?;
    substitute(&mut value, p);
    serde_json::from_value(value).map_err(|e| format!("after substituting parameters: {e}"))
}

/// The first generator's sets, in order, each with the parameters of the later
/// generators' sets that agree with it on every merge key (later ones win). Two
/// sets of one generator with the same merge key values are an error, as in
/// Argo CD.
fn merge_params(
    m: &MergeGenerator,
    at: &str,
    input: &dyn GeneratorInput,
) -> Result<Vec<Params>, Failure> {
    let key_of = |p: &Params| -> Vec<Option<String>> {
        m.merge_keys.iter().map(|k| p.get(k).cloned()).collect()
    };
    let mut base: Vec<(Vec<Option<String>>, Params)> = Vec::new();
    for (j, g) in m.generators.iter().enumerate() {
        let here = format!("{at}.generators[{j}]");
        let sets = params(g, &here, input)?;
        let mut by_key = std::collections::BTreeMap::new();
        for p in sets {
            let key = key_of(&p);
            if by_key.contains_key(&key) {
                return Err((
                    here,
                    format!(
                        "two parameter sets have the same values {key:?} for the merge keys {:?}",
                        m.merge_keys
                    ),
                ));
            }
            if j == 0 {
                base.push((key.clone(), p.clone()));
            }
            by_key.insert(key, p);
        }
        if j > 0 {
            for (key, set) in &mut base {
                if let Some(over) = by_key.remove(key) {
                    set.extend(over);
                }
            }
        }
    }
    Ok(base.into_iter().map(|(_, p)| p).collect())
}
