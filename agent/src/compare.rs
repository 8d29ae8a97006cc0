//! How the desired state of an object compares with its live state: whether the
//! live object already holds every desired field (a sync skips the write), which
//! fields differ and which field manager changed them (drift, diff, dry run),
//! what an app's `ignoreDifferences` hides, and which fields the server sets.
//!
//! A leaf: [`crate::apply`], [`crate::drift`] and the diff and dry run in
//! [`crate::apply`] all compare through here, and it imports neither.

use flotilla_common::bundle::{Bundle, IgnoreDifference};
use flotilla_common::message::DriftEntry;
use flotilla_common::model::ResourceRef;
use serde_json::Value;

#[cfg(test)]
mod tests;

/// Whether every field of `desired` is present in `live` with an equal value.
/// Fields only in `live` (defaults, status, other managers' fields) are ignored.
/// Lists must have the same length and match element by element.
pub fn contains(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| {
            l.get(k).is_some_and(|lv| contains(dv, lv)) || (dv.is_null() && !l.contains_key(k))
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| contains(dv, lv))
        }
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        // The apiserver keeps int-or-string fields as written, but be lenient.
        (Value::Number(d), Value::String(l)) | (Value::String(l), Value::Number(d)) => {
            d.to_string() == *l
        }
        (d, l) => d == l,
    }
}

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// An object key.
    Key(String),
    /// A list position.
    Index(usize),
}

/// Metadata the server maintains: a change there is never drift, and a diff
/// never shows it.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "uid",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// The fields where `desired` (a server-side-apply dry run of the desired
/// manifest, so defaults are already filled in) and `live` differ, as (path,
/// desired value, live value). `status` and server-maintained metadata are
/// ignored.
pub fn compare(desired: &Value, live: &Value) -> Vec<(Vec<Segment>, Option<Value>, Option<Value>)> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    walk(desired, live, &mut path, &mut out);
    out
}

fn skipped(path: &[Segment], key: &str) -> bool {
    match path {
        [] => key == "status",
        [Segment::Key(m)] if m == "metadata" => SERVER_METADATA.contains(&key),
        _ => false,
    }
}

type Found = Vec<(Vec<Segment>, Option<Value>, Option<Value>)>;

fn walk(desired: &Value, live: &Value, path: &mut Vec<Segment>, out: &mut Found) {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            let mut keys: Vec<&String> = d.keys().chain(l.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                if skipped(path, key) {
                    continue;
                }
                path.push(Segment::Key(key.clone()));
                match (d.get(key), l.get(key)) {
                    (Some(dv), Some(lv)) => walk(dv, lv, path, out),
                    (dv, lv) => out.push((path.clone(), dv.cloned(), lv.cloned())),
                }
                path.pop();
            }
        }
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => {
            for (i, (dv, lv)) in d.iter().zip(l).enumerate() {
                path.push(Segment::Index(i));
                walk(dv, lv, path, out);
                path.pop();
            }
        }
        (d, l) if d != l => out.push((path.clone(), Some(d.clone()), Some(l.clone()))),
        _ => {}
    }
}

/// The field manager that owns `path` in the live object, preferring the most
/// recent writer when several own it (list items are matched at the list).
pub fn manager_of(live: &Value, path: &[Segment]) -> Option<String> {
    let entries = live.pointer("/metadata/managedFields")?.as_array()?;
    let mut best: Option<(usize, &str, &str)> = None;
    for entry in entries {
        let Some(fields) = entry.get("fieldsV1") else {
            continue;
        };
        let manager = entry.get("manager").and_then(Value::as_str).unwrap_or("");
        let time = entry.get("time").and_then(Value::as_str).unwrap_or("");
        let depth = owned_depth(fields, path);
        if depth == 0 {
            continue;
        }
        let better = match best {
            None => true,
            Some((d, _, t)) => depth > d || (depth == d && time > t),
        };
        if better {
            best = Some((depth, manager, time));
        }
    }
    best.map(|(_, m, _)| m.to_owned())
}

/// How many leading segments of `path` the fieldsV1 set covers; `path.len()` when
/// it owns the field itself, 0 when it owns nothing on the way.
fn owned_depth(fields: &Value, path: &[Segment]) -> usize {
    let mut node = fields;
    for (depth, segment) in path.iter().enumerate() {
        match segment {
            Segment::Key(k) => match node.get(format!("f:{k}")) {
                Some(next) => node = next,
                // An empty set at a field means the whole value is owned.
                None if depth > 0 && node.as_object().is_some_and(|m| m.is_empty()) => {
                    return depth;
                }
                None => return 0,
            },
            // List items are keyed by their content (k:/v:/i:), which the path
            // does not carry: owning the list counts.
            Segment::Index(_) => return depth,
        }
    }
    path.len()
}

/// The object without `status` and server-set metadata, for a diff.
pub fn without_server_fields(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in SERVER_METADATA {
                meta.remove(*key);
            }
        }
    }
    object
}

fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The fields where `dry_run` (a server-side apply dry run of the desired
/// object) and `live` differ, each with the field manager that last wrote it,
/// leaving out what the app's `ignoreDifferences` covers. Fields that `ours` (the
/// field manager Flotilla applies as) wrote last are not blamed on anyone.
pub fn differences(
    bundle: &Bundle,
    resource: &ResourceRef,
    dry_run: &Value,
    live: &Value,
    ours: &str,
) -> Vec<DriftEntry> {
    compare(dry_run, live)
        .into_iter()
        .map(|(path, desired, actual)| DriftEntry {
            resource: resource.clone(),
            field_manager: manager_of(live, &path).filter(|m| m != ours),
            path: render_path(&path),
            old: desired.map(|v| v.to_string()),
            new: actual.map(|v| v.to_string()),
        })
        .filter(|e| !ignored(&bundle.ignore_differences, resource, e))
        .collect()
}

/// `object` without the fields the app's `ignoreDifferences` names by JSON
/// pointer or plain jq path, so a diff does not show them.
pub fn without_ignored(bundle: &Bundle, resource: &ResourceRef, mut object: Value) -> Value {
    for rule in bundle
        .ignore_differences
        .iter()
        .filter(|rule| rule_applies(rule, resource))
    {
        let pointers = rule
            .json_pointers
            .iter()
            .map(|p| {
                p.trim_start_matches('/')
                    .split('/')
                    .map(str::to_owned)
                    .collect()
            })
            .chain(rule.jq_path_expressions.iter().map(|p| {
                p.trim_start_matches('.')
                    .split('.')
                    .map(str::to_owned)
                    .collect::<Vec<String>>()
            }));
        for path in pointers {
            remove_path(&mut object, &path);
        }
    }
    object
}

fn remove_path(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = object;
    for key in parents {
        // JSON pointer escapes: ~1 is '/', ~0 is '~'.
        let key = key.replace("~1", "/").replace("~0", "~");
        node = match node {
            Value::Object(map) => match map.get_mut(&key) {
                Some(next) => next,
                None => return,
            },
            Value::Array(items) => match key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(next) => next,
                None => return,
            },
            _ => return,
        };
    }
    if let Value::Object(map) = node {
        map.remove(&last.replace("~1", "/").replace("~0", "~"));
    }
}

fn rule_applies(rule: &IgnoreDifference, resource: &ResourceRef) -> bool {
    rule.group == resource.gvk.group
        && (rule.kind == resource.gvk.kind || rule.kind == "*")
        && rule.name.as_ref().is_none_or(|n| *n == resource.name)
        && rule
            .namespace
            .as_ref()
            .is_none_or(|n| Some(n) == resource.namespace.as_ref())
}

/// Whether an app's `ignoreDifferences` covers this entry: JSON pointers and
/// jq paths that are plain field paths match the field and everything under it;
/// managedFieldsManagers match the entry's manager.
fn ignored(rules: &[IgnoreDifference], resource: &ResourceRef, entry: &DriftEntry) -> bool {
    rules.iter().any(|rule| {
        if !rule_applies(rule, resource) {
            return false;
        }
        let under = |prefix: &str| {
            entry.path == prefix
                || entry.path.starts_with(&format!("{prefix}."))
                || entry.path.starts_with(&format!("{prefix}["))
        };
        rule.json_pointers
            .iter()
            .any(|p| under(&p.trim_start_matches('/').replace('/', ".")))
            || rule
                .jq_path_expressions
                .iter()
                .any(|p| under(p.trim_start_matches('.')))
            || entry
                .field_manager
                .as_ref()
                .is_some_and(|m| rule.managed_fields_managers.contains(m))
    })
}
