//! Does the live object already hold every desired field? Used to skip writes on a
//! re-sync; a false "no" only costs one apply, so the rules err on that side.

use serde_json::Value;

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
