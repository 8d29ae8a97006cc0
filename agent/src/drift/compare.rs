//! Field-level comparison of a dry-run result with the live object, and which
//! field manager owns a field according to `metadata.managedFields`.

use serde_json::Value;

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// An object key.
    Key(String),
    /// A list position.
    Index(usize),
}

/// Metadata the server maintains; a change there is never drift.
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
