//! The compatibility table (`docs/argocd-compatibility.md`) against the types the
//! hub reads: every field serde accepts in an Application, AppProject or
//! ApplicationSet must have a row saying it is supported, refused or not
//! applicable, so no field can be added and then silently ignored. The types
//! are walked by a deserializer that answers every request with an empty value
//! and records each struct field it is asked for.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::de::value::Error as TraceError;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::app::{AppProject, Application, ApplicationSet};

/// Walks a type's `Deserialize`, recording `prefix.field` for every struct field.
struct Tracer<'a> {
    path: String,
    found: &'a RefCell<BTreeSet<String>>,
    depth: usize,
}

impl<'a> Tracer<'a> {
    fn at(&self, path: String) -> Self {
        Tracer {
            path,
            found: self.found,
            depth: self.depth + 1,
        }
    }
}

macro_rules! leaf {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    leaf! {
        // A number fits `serde_json::Value` and the usual untagged int-or-string enums.
        deserialize_any => visit_u64(0),
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(0),
        deserialize_i16 => visit_i64(0),
        deserialize_i32 => visit_i64(0),
        deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u64(0),
        deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0),
        deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0),
        deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str(""),
        deserialize_string => visit_str(""),
        deserialize_bytes => visit_bytes(&[]),
        deserialize_byte_buf => visit_bytes(&[]),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_str(""),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        if self.depth > 12 {
            return visitor.visit_none();
        }
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let element = self.at(format!("{}[]", self.path));
        visitor.visit_seq(One {
            tracer: Some(element),
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        // A free-form mapping (labels, annotations): one entry, its values traced
        // under `.*`.
        let value = self.at(format!("{}.*", self.path));
        visitor.visit_map(Fields {
            keys: ["x"].iter().copied(),
            parent: value,
            free: true,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        for field in fields {
            let path = if self.path.is_empty() {
                (*field).to_owned()
            } else {
                format!("{}.{field}", self.path)
            };
            self.found.borrow_mut().insert(path);
        }
        visitor.visit_map(Fields {
            keys: fields.iter().copied(),
            parent: self,
            free: false,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, TraceError> {
        Err(de::Error::custom(format!(
            "{}: enum {name} is not traced; give it a row by hand",
            self.path
        )))
    }
}

/// A sequence of one element.
struct One<'a> {
    tracer: Option<Tracer<'a>>,
}

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        match self.tracer.take() {
            Some(t) if t.depth <= 12 => seed.deserialize(t).map(Some),
            _ => Ok(None),
        }
    }
}

/// A struct's fields, each with a traced value; or one entry of a free mapping.
struct Fields<'a> {
    keys: std::iter::Copied<std::slice::Iter<'static, &'static str>>,
    parent: Tracer<'a>,
    free: bool,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        match self.keys.clone().next() {
            Some(key) => seed
                .deserialize(de::value::StrDeserializer::<TraceError>::new(key))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        let key = self.keys.next().unwrap_or_default();
        let path = if self.free {
            self.parent.path.clone()
        } else if self.parent.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.parent.path)
        };
        seed.deserialize(self.parent.at(path))
    }
}

/// Every field path serde accepts in `T`, with `kind` as the first segment.
fn accepted<T: for<'de> Deserialize<'de>>(kind: &str) -> BTreeSet<String> {
    let found = RefCell::new(BTreeSet::new());
    let tracer = Tracer {
        path: String::new(),
        found: &found,
        depth: 0,
    };
    if let Err(e) = T::deserialize(tracer) {
        panic!("tracing {kind}: {e}");
    }
    found
        .into_inner()
        .into_iter()
        .map(|p| format!("{kind}.{p}"))
        .collect()
}

/// The table's rows: (path, status), from lines `| \`Kind.path\` | status | ...`.
fn table_rows(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let path = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let status = cells.next()?.to_lowercase();
            Some((path.to_owned(), status))
        })
        .collect()
}

const STATUSES: &[&str] = &["supported", "refused", "not applicable"];

fn table() -> Vec<(String, String)> {
    let text = include_str!("../../../../docs/argocd-compatibility.md");
    table_rows(text)
}

/// Whether a row covers `path`: the same path, or a `prefix.*` row above it
/// (`a.*` covers `a`, `a.b` and `a[].b`).
fn covered(rows: &[(String, String)], path: &str) -> bool {
    rows.iter().any(|(row, _)| {
        row == path
            || row.strip_suffix(".*").is_some_and(|prefix| {
                path.strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
    })
}

/// A generator inside a `matrix` or `merge` is the same type as one in
/// `spec.generators`, read the same way: its fields are the top-level rows, so
/// `…matrix.generators[].git.files` is checked as `spec.generators[].git.files`.
/// The nested list's element itself (`…matrix.generators[]`) has no row.
fn nested_generator_as_top_level(path: &str) -> Option<String> {
    const TOP: &str = "ApplicationSet.spec.generators[]";
    let end = [".matrix.generators[]", ".merge.generators[]"]
        .iter()
        .filter_map(|nested| path.rfind(nested).map(|at| at + nested.len()))
        .max();
    match end {
        None => Some(path.to_owned()),
        Some(end) if end == path.len() => None,
        Some(end) => Some(format!("{TOP}{}", &path[end..])),
    }
}

#[test]
fn every_field_the_hub_accepts_has_a_row_in_the_compatibility_table() {
    let rows = table();
    for (path, status) in &rows {
        assert!(
            STATUSES.iter().any(|s| status.starts_with(s)),
            "row {path}: status {status:?} is none of {STATUSES:?}"
        );
    }
    let mut accepted_paths = accepted::<Application>("Application");
    accepted_paths.extend(accepted::<AppProject>("AppProject"));
    accepted_paths.extend(
        accepted::<ApplicationSet>("ApplicationSet")
            .iter()
            .filter_map(|p| nested_generator_as_top_level(p)),
    );
    let missing: Vec<&String> = accepted_paths
        .iter()
        .filter(|p| !covered(&rows, p))
        .collect();
    assert!(
        missing.is_empty(),
        "fields the hub accepts but docs/argocd-compatibility.md lists as neither supported \
         nor refused nor not applicable:\n{}",
        missing
            .iter()
            .map(|p| format!("| `{p}` | |"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // And the table names no field the hub does not read (a typo, or a field
    // that was removed).
    let unknown: Vec<&String> = rows
        .iter()
        .map(|(row, _)| row)
        .filter(|row| {
            ["Application.", "AppProject.", "ApplicationSet."]
                .iter()
                .any(|k| row.starts_with(k))
        })
        .filter(|row| {
            let plain = row.strip_suffix(".*").unwrap_or(row);
            !accepted_paths
                .iter()
                .any(|p| p == plain || p.starts_with(&format!("{plain}.")))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "rows for fields the hub does not read: {unknown:?}"
    );
}

#[test]
fn every_application_annotation_flotilla_knows_has_a_row() {
    let rows = table();
    for (key, _) in crate::app::APPLICATION_ANNOTATIONS {
        assert!(
            covered(&rows, &format!("annotation {key}")) || rows.iter().any(|(r, _)| r == key),
            "{key} has no row in docs/argocd-compatibility.md"
        );
    }
}

#[test]
fn a_nested_generators_fields_are_checked_as_a_top_level_ones() {
    assert_eq!(
        nested_generator_as_top_level(
            "ApplicationSet.spec.generators[].matrix.generators[].merge.generators[].git.files"
        )
        .as_deref(),
        Some("ApplicationSet.spec.generators[].git.files")
    );
    assert_eq!(
        nested_generator_as_top_level("ApplicationSet.spec.generators[].merge.mergeKeys")
            .as_deref(),
        Some("ApplicationSet.spec.generators[].merge.mergeKeys")
    );
    assert_eq!(
        nested_generator_as_top_level("ApplicationSet.spec.generators[].matrix.generators[]"),
        None
    );
}
