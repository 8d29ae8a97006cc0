//! Canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant
//! whitespace. Written by hand rather than relying on `serde_json::Value`'s map
//! order, which changes when any crate in the build enables `preserve_order`.

use serde_json::Value;

/// Writes `value` as canonical JSON bytes.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::String(text) => write_string(text, out),
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(flag) => out.extend_from_slice(if *flag { b"true" } else { b"false" }),
        Value::Number(number) => out.extend_from_slice(number.to_string().as_bytes()),
    }
}

/// Escapes only what JSON requires: `"`, `\\` and control characters, the latter
/// always as `\u00XX`, so every string has exactly one spelling.
fn write_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for ch in text.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth_and_whitespace_is_dropped() {
        let value = json!({"b": 1, "a": {"z": [true, null], "m": "x\"y"}});
        assert_eq!(
            String::from_utf8(canonical_json(&value)).unwrap(),
            r#"{"a":{"m":"x\"y","z":[true,null]},"b":1}"#
        );
    }

    #[test]
    fn canonical_json_round_trips_through_serde_json() {
        let value = json!({"kind": "ConfigMap", "data": {"k": "é\n\u{0001}"}, "n": -1.5});
        let bytes = canonical_json(&value);
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, value);
        assert_eq!(canonical_json(&back), bytes);
    }
}
