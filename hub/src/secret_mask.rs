//! Secret values hidden from what the API shows, as Argo CD hides them.
//!
//! A Secret's desired and live forms leave the hub only with every value of
//! `data` (and of `stringData`, which is folded into `data` first, as the API
//! server does) replaced by a run of `+`. Within one key the same value gets the
//! same run on both sides and a different value a longer one, so a diff still
//! shows that a value changed, and never what it was or became. The
//! `kubectl.kubernetes.io/last-applied-configuration` annotation, which holds a
//! copy of the Secret, is masked the same way. Anything that cannot be read as a
//! Secret is hidden whole.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value};

/// The annotation `kubectl apply` keeps a copy of the whole object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What stands for a text that could not be read, and so could not be masked.
pub const HIDDEN: &str = "(a Secret that could not be read; hidden)";

/// The first mask, as Argo CD writes it; each further value of a key gets four
/// more `+`.
const FIRST_MASK: &str = "++++++++";

/// Whether objects of this group and kind are Secrets.
pub fn is_secret(group: &str, kind: &str) -> bool {
    group.is_empty() && kind == "Secret"
}

/// Masks a desired and a live Secret, given as YAML (or JSON) texts, together so
/// equal values get equal masks. A text that is not a YAML mapping is replaced by
/// [`HIDDEN`].
pub fn mask_pair(desired: Option<&str>, live: Option<&str>) -> (Option<String>, Option<String>) {
    let parse = |text: &str| match serde_saphyr::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Some(value),
        _ => None,
    };
    let mut desired_doc = desired.map(parse);
    let mut live_doc = live.map(parse);
    let mut docs: Vec<&mut Value> = Vec::new();
    for doc in [desired_doc.as_mut(), live_doc.as_mut()]
        .into_iter()
        .flatten()
        .flatten()
    {
        docs.push(doc);
    }
    mask_values(&mut docs);
    let show = |doc: Option<Option<Value>>| {
        doc.map(|parsed| match parsed {
            Some(value) => serde_saphyr::to_string(&value).unwrap_or_else(|_| HIDDEN.to_owned()),
            None => HIDDEN.to_owned(),
        })
    };
    (show(desired_doc), show(live_doc))
}

/// Masks every Secret value in `docs` (and in the last-applied copies they
/// hold), with one replacement table per key across all of them.
pub fn mask_values(docs: &mut [&mut Value]) {
    // The last-applied copies take part in the same table, as Argo CD has it.
    let mut copies: Vec<Option<Value>> = docs.iter().map(|d| last_applied(d)).collect();
    for doc in docs.iter_mut() {
        fold_string_data(doc);
    }
    for copy in copies.iter_mut().flatten() {
        fold_string_data(copy);
    }
    let mut tables: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut mask_one = |data: &mut Map<String, Value>| {
        for (key, value) in data.iter_mut() {
            if value.is_null() {
                continue;
            }
            let table = tables.entry(key.clone()).or_default();
            let text = match &*value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let next = format!("{FIRST_MASK}{}", "++++".repeat(table.len()));
            let mask = table.entry(text).or_insert(next).clone();
            *value = Value::String(mask);
        }
    };
    for doc in docs.iter_mut() {
        mask_data(doc, &mut mask_one);
    }
    for copy in copies.iter_mut().flatten() {
        mask_data(copy, &mut mask_one);
    }
    for (doc, copy) in docs.iter_mut().zip(copies) {
        set_last_applied(doc, copy);
    }
}

/// The last-applied copy a document holds, parsed; a copy that is not JSON is
/// dropped by [`set_last_applied`] (it is replaced by a mask).
fn last_applied(doc: &Value) -> Option<Value> {
    let text = doc
        .pointer("/metadata/annotations")?
        .get(LAST_APPLIED)?
        .as_str()?;
    Some(serde_json::from_str::<Value>(text).unwrap_or(Value::Null))
}

fn set_last_applied(doc: &mut Value, copy: Option<Value>) {
    let Some(annotations) = doc
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if let Some(slot) = annotations.get_mut(LAST_APPLIED) {
        *slot = Value::String(match copy {
            Some(copy @ Value::Object(_)) => copy.to_string(),
            _ => FIRST_MASK.to_owned(),
        });
    }
}

/// Moves `stringData` into `data`, base64-encoded, as the API server does, so a
/// value written either way masks the same.
fn fold_string_data(doc: &mut Value) {
    let Some(object) = doc.as_object_mut() else {
        return;
    };
    let Some(string_data) = object.remove("stringData") else {
        return;
    };
    let data = object
        .entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    let Some(data) = data.as_object_mut() else {
        return;
    };
    // Not a map: nothing to fold, and, removed, nothing of it is shown.
    if let Value::Object(entries) = string_data {
        for (key, value) in entries {
            let text = match value {
                Value::String(s) => s,
                Value::Null => continue,
                other => other.to_string(),
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            data.insert(key, Value::String(encoded));
        }
    }
}

fn mask_data(doc: &mut Value, mask_one: &mut impl FnMut(&mut Map<String, Value>)) {
    let Some(data) = doc.get_mut("data") else {
        return;
    };
    match data {
        Value::Object(map) => mask_one(map),
        Value::Null => {}
        other => *other = Value::String(FIRST_MASK.to_owned()),
    }
}

#[cfg(test)]
mod tests;
