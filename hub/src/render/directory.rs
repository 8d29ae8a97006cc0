//! Plain directories of manifests, rendered in Rust as Argo CD renders them: YAML and
//! JSON files, optionally recursive, filtered by include and exclude globs matched
//! against the path below the app's folder.

use globset::{Glob, GlobMatcher};
use serde_json::Value;

use super::{Error, Result};
use crate::app::Directory;
use crate::source::RepoFile;

/// Parses every manifest under `base` (a repo-relative folder, `""` or `"."` for the
/// root). Files come in path order, and documents in file order.
pub fn render(files: &[RepoFile], base: &str, options: &Directory) -> Result<Vec<Value>> {
    let include = options.include.as_deref().map(glob).transpose()?;
    let exclude = options.exclude.as_deref().map(glob).transpose()?;
    let base = base.trim_matches('/');
    let base = if base == "." { "" } else { base };

    let mut selected: Vec<&RepoFile> = files
        .iter()
        .filter(|f| {
            let Some(rel) = relative(&f.path, base) else {
                return false;
            };
            (options.recurse || !rel.contains('/'))
                && is_manifest_file(rel)
                && !exclude.as_ref().is_some_and(|g| g.is_match(rel))
                && include.as_ref().is_none_or(|g| g.is_match(rel))
        })
        .collect();
    selected.sort_by(|a, b| a.path.cmp(&b.path));

    let mut out = Vec::new();
    for file in selected {
        parse_file(&file.path, &file.contents, &mut out)?;
    }
    Ok(out)
}

fn relative<'a>(path: &'a str, base: &str) -> Option<&'a str> {
    if base.is_empty() {
        return Some(path);
    }
    path.strip_prefix(base)?.strip_prefix('/')
}

fn is_manifest_file(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    [".yaml", ".yml", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

fn glob(pattern: &str) -> Result<GlobMatcher> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| Error::Glob {
            pattern: pattern.to_owned(),
            message: e.to_string(),
        })
}

/// Parses one file's documents into `out`: multi-document YAML or JSON, skipping empty
/// documents and expanding `List` kinds. Errors name the file (and, for YAML, the line).
pub fn parse_file(path: &str, contents: &[u8], out: &mut Vec<Value>) -> Result<()> {
    let text = std::str::from_utf8(contents).map_err(|e| Error::Manifest {
        file: path.to_owned(),
        message: format!("not UTF-8 text: {e}"),
    })?;
    let docs: Vec<Value> = if path.ends_with(".json") {
        match serde_json::from_str(text) {
            Ok(Value::Array(items)) => items,
            Ok(doc) => vec![doc],
            Err(e) => {
                return Err(Error::Manifest {
                    file: path.to_owned(),
                    message: e.to_string(),
                });
            }
        }
    } else {
        serde_saphyr::from_multiple(text).map_err(|e| Error::Manifest {
            file: path.to_owned(),
            message: e.to_string(),
        })?
    };
    for (index, doc) in docs.into_iter().enumerate() {
        push_document(path, index, doc, out)?;
    }
    Ok(())
}

fn push_document(path: &str, index: usize, doc: Value, out: &mut Vec<Value>) -> Result<()> {
    match doc {
        Value::Null => Ok(()),
        Value::Object(map) if map.is_empty() => Ok(()),
        Value::Object(mut map)
            if map
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"))
                && map.contains_key("items") =>
        {
            if let Some(Value::Array(items)) = map.remove("items") {
                for item in items {
                    push_document(path, index, item, out)?;
                }
            }
            Ok(())
        }
        Value::Object(map) => {
            for field in ["apiVersion", "kind"] {
                if !map.get(field).is_some_and(Value::is_string) {
                    return Err(Error::Manifest {
                        file: path.to_owned(),
                        message: format!("document {} has no {field}", index + 1),
                    });
                }
            }
            if !map
                .get("metadata")
                .and_then(|m| m.get("name"))
                .is_some_and(Value::is_string)
            {
                return Err(Error::Manifest {
                    file: path.to_owned(),
                    message: format!("document {} has no metadata.name", index + 1),
                });
            }
            out.push(Value::Object(map));
            Ok(())
        }
        other => Err(Error::Manifest {
            file: path.to_owned(),
            message: format!(
                "document {} is a {}, not a Kubernetes object",
                index + 1,
                match other {
                    Value::Array(_) => "list",
                    Value::String(_) => "string",
                    _ => "scalar",
                }
            ),
        }),
    }
}
