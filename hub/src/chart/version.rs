//! Which chart version a `targetRevision` picks, as Helm picks it: an exact version,
//! or the highest version that a constraint (`58.*`, `>=1.2 <2`, `^1.2 || ~2.0`)
//! matches. Pre-releases are picked only when asked for, as Helm does.

use semver::{Version, VersionReq};

/// A parsed `targetRevision` for a chart.
#[derive(Clone, Debug)]
pub struct Constraint {
    text: String,
    /// Alternatives (`||`), each a set of comparators that must all hold.
    any_of: Vec<VersionReq>,
}

impl Constraint {
    /// Reads a `targetRevision`; empty, `HEAD` and `*` mean the latest release.
    /// `None` when it is neither a version nor a constraint Helm would read.
    pub fn parse(text: &str) -> Option<Self> {
        let trimmed = text.trim();
        let trimmed = if trimmed.is_empty() || trimmed == "HEAD" {
            "*"
        } else {
            trimmed
        };
        let mut any_of = Vec::new();
        for alternative in trimmed.split("||") {
            any_of.push(alternative_req(alternative)?);
        }
        Some(Self {
            text: text.to_owned(),
            any_of,
        })
    }

    /// Whether `version` (as a chart's `version` field writes it) satisfies this.
    pub fn matches(&self, version: &str) -> bool {
        if version == self.text.trim() {
            return true;
        }
        let Some(parsed) = parse_version(version) else {
            return false;
        };
        self.any_of.iter().any(|req| req.matches(&parsed))
    }

    /// The highest of `versions` that matches, an exact match winning outright.
    pub fn pick<'a>(&self, versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        let versions: Vec<&str> = versions.into_iter().collect();
        if let Some(exact) = versions.iter().find(|v| **v == self.text.trim()) {
            return Some(exact);
        }
        versions
            .into_iter()
            .filter(|v| self.matches(v))
            .filter_map(|v| parse_version(v).map(|p| (p, v)))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, v)| v)
    }
}

/// A version as charts write it: `1.2.3`, `v1.2.3`, or short `1.2` / `1`.
fn parse_version(text: &str) -> Option<Version> {
    let text = text.trim().trim_start_matches('v');
    if let Ok(v) = Version::parse(text) {
        return Some(v);
    }
    let (core, rest) = match text.find(['-', '+']) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let parts = core.split('.').count();
    let padded = match parts {
        1 => format!("{core}.0.0{rest}"),
        2 => format!("{core}.0{rest}"),
        _ => return None,
    };
    Version::parse(&padded).ok()
}

/// One `||` alternative in Masterminds' syntax (comparators separated by spaces or
/// commas, an operator may stand apart from its version) as a `VersionReq`. A bare
/// version is exact, as in Helm, not a caret range as in Cargo.
fn alternative_req(text: &str) -> Option<VersionReq> {
    let mut comparators: Vec<String> = Vec::new();
    let mut pending_op: Option<String> = None;
    for token in text.split([' ', ',']).filter(|t| !t.is_empty()) {
        let is_op_only = token.chars().all(|c| "<>=!~^".contains(c));
        if is_op_only {
            pending_op = Some(token.to_owned());
            continue;
        }
        let op_len = token
            .find(|c: char| !"<>=!~^".contains(c))
            .unwrap_or(token.len());
        let (op, version) = token.split_at(op_len);
        let op = match (pending_op.take(), op) {
            (Some(p), "") => p,
            (_, op) => op.to_owned(),
        };
        let version = version.trim_start_matches('v');
        if op == "!=" {
            // semver has no "not equal"; Helm users rarely write it.
            return None;
        }
        let op = match op.as_str() {
            "" if version.contains(['*', 'x', 'X']) => String::new(),
            "" => "=".to_owned(),
            "=>" => ">=".to_owned(),
            "=<" => "<=".to_owned(),
            other => other.to_owned(),
        };
        let version = version.replace(['x', 'X'], "*");
        comparators.push(format!("{op}{version}"));
    }
    if pending_op.is_some() || comparators.is_empty() {
        return None;
    }
    VersionReq::parse(&comparators.join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick<'a>(constraint: &str, versions: &[&'a str]) -> Option<&'a str> {
        Constraint::parse(constraint)
            .expect("parses")
            .pick(versions.iter().copied())
    }

    #[test]
    fn a_wildcard_picks_the_highest_release_of_its_major() {
        let versions = [
            "57.2.0",
            "58.0.0",
            "58.3.1",
            "58.10.0",
            "59.0.0",
            "58.11.0-rc.1",
        ];
        assert_eq!(pick("58.*", &versions), Some("58.10.0"));
        assert_eq!(pick("58.x", &versions), Some("58.10.0"));
    }

    #[test]
    fn a_range_with_spaces_is_all_of_its_comparators() {
        let versions = ["1.1.0", "1.2.0", "1.9.4", "2.0.0"];
        assert_eq!(pick(">=1.2 <2", &versions), Some("1.9.4"));
        assert_eq!(pick(">= 1.2, < 1.9", &versions), Some("1.2.0"));
        assert_eq!(pick("<1.0 || >=2", &versions), Some("2.0.0"));
        assert_eq!(pick("^1.2", &versions), Some("1.9.4"));
        assert_eq!(pick("~1.1", &versions), Some("1.1.0"));
    }

    #[test]
    fn a_bare_version_is_exact_not_a_caret_range() {
        let versions = ["1.2.0", "1.3.0"];
        assert_eq!(pick("1.2.0", &versions), Some("1.2.0"));
        assert_eq!(pick("1.2.5", &versions), None);
        assert_eq!(pick("v1.3.0", &["v1.3.0", "1.4.0"]), Some("v1.3.0"));
    }

    #[test]
    fn head_and_empty_pick_the_latest_release_and_skip_pre_releases() {
        let versions = ["0.1.0", "0.2.0", "0.3.0-beta.1"];
        assert_eq!(pick("HEAD", &versions), Some("0.2.0"));
        assert_eq!(pick("", &versions), Some("0.2.0"));
        assert_eq!(pick("*", &versions), Some("0.2.0"));
        assert_eq!(pick("0.3.0-beta.1", &versions), Some("0.3.0-beta.1"));
    }

    #[test]
    fn nonsense_is_not_a_constraint() {
        assert!(Constraint::parse(">=").is_none());
        assert!(Constraint::parse("main").is_none());
        assert!(Constraint::parse("!=1.0").is_none());
    }
}
