//! How the desired state of an object compares with its live state: whether the
//! live object already holds every desired field (a sync skips the write), which
//! fields differ and which field manager changed them (drift, diff, dry run),
//! what an app's `ignoreDifferences` hides, and which fields the server sets.
//!
//! A leaf: [`crate::apply`], [`crate::drift`] and the diff and dry run in
//! [`crate::apply`] all compare through here, and it imports neither.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use flotilla_common::bundle::{Bundle, IgnoreDifference};
use flotilla_common::jq;
use flotilla_common::message::DriftEntry;
use flotilla_common::model::ResourceRef;
use serde_json::Value;
use tracing::warn;

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
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
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
    let ignored = ignored_paths(&bundle.ignore_differences, resource, &[dry_run, live]);
    compare(dry_run, live)
        .into_iter()
        .filter(|(path, _, _)| !ignored.iter().any(|prefix| path.starts_with(prefix)))
        .map(|(path, desired, actual)| DriftEntry {
            resource: resource.clone(),
            field_manager: manager_of(live, &path).filter(|m| m != ours),
            path: render_path(&path),
            old: desired.map(|v| v.to_string()),
            new: actual.map(|v| v.to_string()),
        })
        .filter(|e| !ignored_manager(&bundle.ignore_differences, resource, e))
        .collect()
}

/// `object` without the fields the app's `ignoreDifferences` covers (JSON
/// pointers, and what its jq path expressions select), so a diff does not show
/// them.
pub fn without_ignored(bundle: &Bundle, resource: &ResourceRef, mut object: Value) -> Value {
    let mut paths = ignored_paths(&bundle.ignore_differences, resource, &[&object]);
    // Later list positions first, so removing one does not shift the next.
    paths.sort();
    for path in paths.iter().rev() {
        remove_path(&mut object, path);
    }
    object
}

/// `desired` with every field the app's `ignoreDifferences` covers taken from
/// `live` (or left out when `live` lacks it), for `RespectIgnoreDifferences=true`:
/// a sync then leaves those fields as they are, such as the replicas an
/// autoscaler set.
pub fn respecting_ignored(
    bundle: &Bundle,
    resource: &ResourceRef,
    mut desired: Value,
    live: &Value,
) -> Value {
    let mut paths = ignored_paths(&bundle.ignore_differences, resource, &[&desired, live]);
    paths.sort();
    paths.dedup();
    for path in paths.iter().rev() {
        match lookup(live, path) {
            Some(value) => set_path(&mut desired, path, value.clone()),
            None => remove_path(&mut desired, path),
        }
    }
    desired
}

/// Every path the rules that apply to `resource` cover in any of `objects`.
fn ignored_paths(
    rules: &[IgnoreDifference],
    resource: &ResourceRef,
    objects: &[&Value],
) -> Vec<Vec<Segment>> {
    let mut out = Vec::new();
    for rule in rules.iter().filter(|rule| rule_applies(rule, resource)) {
        for object in objects {
            for pointer in &rule.json_pointers {
                out.push(pointer_path(object, pointer));
            }
            for expr in &rule.jq_path_expressions {
                // The hub compiled every expression when it loaded the app.
                let found = compiled(expr).and_then(|e| e.paths(object));
                match found {
                    Ok(paths) => out.extend(paths.into_iter().map(|p| {
                        p.into_iter()
                            .map(|step| match step {
                                jq::Step::Key(k) => Segment::Key(k),
                                jq::Step::Index(i) => Segment::Index(i),
                            })
                            .collect()
                    })),
                    Err(e) => warn!(error = %e, "an ignoreDifferences jq expression failed"),
                }
            }
        }
    }
    out
}

thread_local! {
    /// Compiled jq expressions: compiling one costs about 2 ms, and drift is
    /// compared often, for every object a rule applies to.
    static COMPILED: RefCell<HashMap<String, Rc<jq::PathExpr>>> = RefCell::new(HashMap::new());
}

/// `expr` compiled, from this thread's cache when it was compiled before.
fn compiled(expr: &str) -> jq::Result<Rc<jq::PathExpr>> {
    if let Some(hit) = COMPILED.with(|c| c.borrow().get(expr).cloned()) {
        return Ok(hit);
    }
    let compiled = Rc::new(jq::PathExpr::compile(expr)?);
    COMPILED.with(|c| {
        let mut cache = c.borrow_mut();
        // Expressions come from apps; a bound keeps a churn of them from growing it.
        if cache.len() >= 256 {
            cache.clear();
        }
        cache.insert(expr.to_owned(), compiled.clone());
    });
    Ok(compiled)
}

/// A JSON pointer as a path through `object`: a number is a list position where
/// the object holds a list there, and a key otherwise.
fn pointer_path(object: &Value, pointer: &str) -> Vec<Segment> {
    let mut node = Some(object);
    let mut path = Vec::new();
    for raw in pointer.trim_start_matches('/').split('/') {
        // JSON pointer escapes: ~1 is '/', ~0 is '~'.
        let key = raw.replace("~1", "/").replace("~0", "~");
        let segment = match (node, key.parse::<usize>()) {
            (Some(Value::Array(_)), Ok(i)) => Segment::Index(i),
            _ => Segment::Key(key),
        };
        node = node.and_then(|n| step(n, &segment));
        path.push(segment);
    }
    path
}

fn step<'v>(node: &'v Value, segment: &Segment) -> Option<&'v Value> {
    match (node, segment) {
        (Value::Object(map), Segment::Key(k)) => map.get(k),
        (Value::Array(items), Segment::Index(i)) => items.get(*i),
        _ => None,
    }
}

fn lookup<'v>(object: &'v Value, path: &[Segment]) -> Option<&'v Value> {
    path.iter().try_fold(object, step)
}

fn remove_path(object: &mut Value, path: &[Segment]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = object;
    for segment in parents {
        node = match (node, segment) {
            (Value::Object(map), Segment::Key(k)) => match map.get_mut(k) {
                Some(next) => next,
                None => return,
            },
            (Value::Array(items), Segment::Index(i)) => match items.get_mut(*i) {
                Some(next) => next,
                None => return,
            },
            _ => return,
        };
    }
    match (node, last) {
        (Value::Object(map), Segment::Key(k)) => {
            map.remove(k);
        }
        (Value::Array(items), Segment::Index(i)) if *i < items.len() => {
            items.remove(*i);
        }
        _ => {}
    }
}

/// Sets the value at `path`, making missing objects on the way; a list position
/// that is not there is left alone.
fn set_path(object: &mut Value, path: &[Segment], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = object;
    for segment in parents {
        node = match (node, segment) {
            (Value::Object(map), Segment::Key(k)) => map
                .entry(k.clone())
                .or_insert_with(|| Value::Object(Default::default())),
            (Value::Array(items), Segment::Index(i)) => match items.get_mut(*i) {
                Some(next) => next,
                None => return,
            },
            _ => return,
        };
    }
    match (node, last) {
        (Value::Object(map), Segment::Key(k)) => {
            map.insert(k.clone(), value);
        }
        (Value::Array(items), Segment::Index(i)) => {
            if let Some(slot) = items.get_mut(*i) {
                *slot = value;
            }
        }
        _ => {}
    }
}

fn rule_applies(rule: &IgnoreDifference, resource: &ResourceRef) -> bool {
    (rule.group == resource.gvk.group || rule.group == "*")
        && (rule.kind == resource.gvk.kind || rule.kind == "*")
        && rule.name.as_ref().is_none_or(|n| *n == resource.name)
        && rule
            .namespace
            .as_ref()
            .is_none_or(|n| Some(n) == resource.namespace.as_ref())
}

/// Whether an app's `ignoreDifferences` covers this entry by its field manager
/// (`managedFieldsManagers`).
fn ignored_manager(rules: &[IgnoreDifference], resource: &ResourceRef, entry: &DriftEntry) -> bool {
    rules.iter().any(|rule| {
        rule_applies(rule, resource)
            && entry
                .field_manager
                .as_ref()
                .is_some_and(|m| rule.managed_fields_managers.contains(m))
    })
}
