//! jq path expressions, as Argo CD's `ignoreDifferences.jqPathExpressions` are
//! written: a real jq (jaq) evaluates `path(EXPR)` on one object and says which of
//! its fields the expression selects. The hub compiles each expression when it
//! loads an Application, so a bad one is refused there; the agent evaluates them
//! against live and desired objects.

use jaq_core::data::JustLut;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Native, Vars, unwrap_valr};
use jaq_json::Val;

/// One step of a path: an object key or an array index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Why a jq expression was not usable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The expression does not parse or compile.
    #[error("jq expression {expr:?} is not valid jq: {message}")]
    Invalid {
        /// The expression.
        expr: String,
        /// What the parser or compiler said.
        message: String,
    },
    /// Evaluating it on an object failed.
    #[error("jq expression {expr:?} failed: {message}")]
    Failed {
        /// The expression.
        expr: String,
        /// What jq said.
        message: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

type Filter = jaq_core::compile::Filter<Native<JustLut<Val>>>;

/// The most paths one expression may select in one object.
pub const MAX_PATHS: usize = 10_000;

/// A compiled `path(EXPR)`.
pub struct PathExpr {
    text: String,
    filter: Filter,
}

impl std::fmt::Debug for PathExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PathExpr").field(&self.text).finish()
    }
}

impl PathExpr {
    /// Compiles `expr` as the argument of jq's `path(…)`.
    pub fn compile(expr: &str) -> Result<Self> {
        let invalid = |message: String| Error::Invalid {
            expr: expr.to_owned(),
            message,
        };
        let code = format!("path({expr})");
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(
                &arena,
                File {
                    code: code.as_str(),
                    path: (),
                },
            )
            .map_err(|errors| invalid(format!("{errors:?}")))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| invalid(format!("{errors:?}")))?;
        Ok(Self {
            text: expr.to_owned(),
            filter,
        })
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The paths of the fields of `value` the expression selects (at most
    /// [`MAX_PATHS`]).
    pub fn paths(&self, value: &serde_json::Value) -> Result<Vec<Vec<Step>>> {
        let failed = |message: String| Error::Failed {
            expr: self.text.clone(),
            message,
        };
        let bytes = serde_json::to_vec(value).map_err(|e| failed(e.to_string()))?;
        let input = jaq_json::read::parse_single(&bytes).map_err(|e| failed(format!("{e:?}")))?;
        let ctx = Ctx::<JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = Vec::new();
        for result in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            // An expression from an Application must not grow without end
            // (`path(repeat(.))`): no object has this many fields to ignore.
            if out.len() >= MAX_PATHS {
                return Err(failed(format!("selects more than {MAX_PATHS} paths")));
            }
            let path = result.map_err(|e| failed(e.to_string()))?;
            out.push(steps(&path).ok_or_else(|| failed(format!("{path} is not a path")))?);
        }
        Ok(out)
    }
}

fn steps(path: &Val) -> Option<Vec<Step>> {
    let Val::Arr(items) = path else {
        return None;
    };
    items
        .iter()
        .map(|item| match item {
            Val::TStr(bytes) => Some(Step::Key(String::from_utf8_lossy(bytes).into_owned())),
            Val::Num(n) => n
                .as_isize()
                .and_then(|i| usize::try_from(i).ok())
                .map(Step::Index),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn paths_come_from_a_real_jq() {
        let pod = json!({"spec": {"containers": [
            {"name": "app", "image": "app:1"},
            {"name": "sidecar", "image": "proxy:2"}
        ]}});
        let expr = PathExpr::compile(r#".spec.containers[] | select(.name == "sidecar") | .image"#)
            .unwrap();
        assert_eq!(
            expr.paths(&pod).unwrap(),
            [vec![
                Step::Key("spec".into()),
                Step::Key("containers".into()),
                Step::Index(1),
                Step::Key("image".into())
            ]]
        );
        let plain = PathExpr::compile(".spec.replicas").unwrap();
        assert_eq!(
            plain.paths(&json!({"spec": {}})).unwrap(),
            [vec![Step::Key("spec".into()), Step::Key("replicas".into())]]
        );
    }

    #[test]
    fn an_expression_that_selects_without_end_is_stopped() {
        let expr = PathExpr::compile("repeat(.)").unwrap();
        let e = expr.paths(&json!({"a": 1})).unwrap_err().to_string();
        assert!(e.contains("repeat(.)") && e.contains("10000"), "{e}");
    }

    #[test]
    fn an_invalid_expression_is_refused_naming_it() {
        let e = PathExpr::compile(".spec | select(").unwrap_err();
        assert!(e.to_string().contains(".spec | select("), "{e}");
        let e = PathExpr::compile("nosuchfunction").unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
    }
}
