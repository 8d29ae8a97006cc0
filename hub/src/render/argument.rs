//! Checks and escapes for strings from a manifest on their way into helm's or
//! kustomize's argv. Every such string is hostile: it must not become an option, must
//! not be split by the tool into more than it says, and a path must not leave the
//! repository checkout.

use std::path::{Component, Path, PathBuf};

use flotilla_common::model::{is_dns_label, is_dns_subdomain};

use super::{Error, Result};

/// Refuses `value` of `field` for `reason`.
pub fn refuse(field: &str, value: &str, reason: &str) -> Error {
    Error::Refused {
        field: field.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Helm's rule for release names: a lowercase RFC 1123 subdomain of at most 53
/// characters (the room Helm keeps for its own suffixes).
pub fn release_name(field: &str, name: &str) -> Result<()> {
    if name.len() <= 53 && is_dns_subdomain(name) {
        Ok(())
    } else {
        Err(refuse(
            field,
            name,
            "is not a Helm release name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 53 characters)",
        ))
    }
}

/// A Kubernetes namespace: an RFC 1123 label.
pub fn namespace(field: &str, name: &str) -> Result<()> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(refuse(
            field,
            name,
            "is not a namespace name (lowercase letters, digits and '-', at most 63 characters)",
        ))
    }
}

/// A chart name as Helm allows it, optionally below a path in an OCI registry:
/// segments of letters, digits, `_`, `.` and `-`, never `.`/`..`, never starting
/// with `-`.
pub fn chart_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 250
        && name.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && !segment.starts_with('-')
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(refuse(
            field,
            name,
            "is not a chart name (letters, digits, '_', '.' and '-', not starting with '-')",
        ))
    }
}

/// A short token for a flag value that the tool does not split further
/// (versions, API versions): printable ASCII without spaces, quotes, commas,
/// backslashes or `=`, and not starting with `-`.
pub fn token(field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && !value.starts_with('-')
        && value.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b',' | b'"' | b'\'' | b'\\' | b'=' | b'`')
        });
    if ok {
        Ok(())
    } else {
        Err(refuse(
            field,
            value,
            "must be a single word of printable characters without commas, quotes, '=' or '\\'",
        ))
    }
}

/// No control characters (newlines, NUL, escapes): nothing a tool's parser or a log
/// reader could take for structure.
pub fn printable(field: &str, value: &str) -> Result<()> {
    if value.chars().any(char::is_control) {
        Err(refuse(field, value, "holds control characters"))
    } else {
        Ok(())
    }
}

/// The key of a Helm `--set`, `--set-string` or `--set-file` parameter: Helm splits
/// `name=value,name=value` and honours `\` escapes in keys, so a bare `,` or `=`, or
/// a trailing `\` that would escape the `=` Flotilla adds, would let one parameter
/// become several (and `--set-file` read any file on the hub).
pub fn helm_key(field: &str, name: &str) -> Result<()> {
    printable(field, name)?;
    if name.is_empty() {
        return Err(refuse(field, name, "is empty"));
    }
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match c {
            // The guard consumes the escaped character, so an escaped ',' or '='
            // never reaches the arm below.
            '\\' if chars.next().is_none() => {
                return Err(refuse(field, name, "ends with an unpaired '\\'"));
            }
            ',' | '=' => {
                return Err(refuse(
                    field,
                    name,
                    "holds an unescaped ',' or '=', which Helm would split into more parameters",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A `--set`/`--set-string` value as Argo CD passes it: commas not already escaped
/// are escaped, and a `{a,b}` list is kept as a list. The key before it is checked
/// by [`helm_key`], so the value can only ever set that key.
pub fn helm_set_value(value: &str) -> String {
    let is_list = value.len() >= 2
        && value.starts_with('{')
        && value.ends_with('}')
        && !value[1..value.len() - 1].contains(['{', '}', '=']);
    if is_list {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut escaped = false;
    for c in value.chars() {
        if c == ',' && !escaped {
            out.push('\\');
        }
        escaped = c == '\\' && !escaped;
        out.push(c);
    }
    out
}

/// A literal for Helm's strvals parser: every `\` and `,` escaped, so it is read
/// back exactly (used for file paths, which must stay one path).
pub fn helm_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One element of a flag Helm reads as a comma-separated list (`--values`,
/// `--api-versions`): quoted as CSV so commas and quotes stay inside it.
pub fn csv_field(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// Whether a reference names something to fetch rather than a path in the
/// repository: a URL, a Git remote, or a go-getter style reference.
pub fn is_remote(entry: &str) -> bool {
    let lower = entry.to_ascii_lowercase();
    lower.contains("://")
        || lower.starts_with("git@")
        || lower.starts_with("git::")
        || lower.starts_with("github.com/")
        || lower.starts_with("gitlab.com/")
        || lower.starts_with("bitbucket.org/")
        || lower.starts_with("ssh:")
        || lower.contains("?ref=")
        || lower.contains("?version=")
        || lower.contains(".git//")
        || lower.contains(".git?")
        || lower.ends_with(".git")
}

/// `rel`, a path from a manifest, resolved against the folder `base` inside the
/// checkout at `root`: the resolved path when it stays inside `root`, else a
/// refusal naming `field`. Absolute paths and remote references are refused by
/// name. The export has no symlinks (they are resolved inside the repository when
/// it is written), and an existing path is also checked after canonicalizing, so a
/// link the check did not know about still cannot lead out.
pub fn inside(field: &str, root: &Path, base: &Path, rel: &str) -> Result<PathBuf> {
    printable(field, rel)?;
    if is_remote(rel) {
        return Err(refuse(
            field,
            rel,
            "is a remote reference; renders come from the repository alone",
        ));
    }
    if rel.starts_with('/') || rel.starts_with('\\') || Path::new(rel).is_absolute() {
        return Err(refuse(
            field,
            rel,
            "is an absolute path; use a path inside the repository",
        ));
    }
    let mut resolved = PathBuf::new();
    for component in base.join(rel).components() {
        match component {
            Component::ParentDir => {
                if !resolved.pop() {
                    return Err(refuse(field, rel, "leaves the repository"));
                }
            }
            Component::CurDir => {}
            other => resolved.push(other.as_os_str()),
        }
    }
    if !resolved.starts_with(root) {
        return Err(refuse(field, rel, "leaves the repository"));
    }
    if let (Ok(real), Ok(real_root)) = (resolved.canonicalize(), root.canonicalize())
        && !real.starts_with(&real_root)
    {
        return Err(refuse(field, rel, "leaves the repository"));
    }
    Ok(resolved)
}

/// `text` with the password of every `scheme://user:password@host` in it replaced,
/// for messages that show a tool's argv or output.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                // A lone user part may itself be a token: it goes too.
                match authority[..userinfo_end].split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":<redacted>");
                    }
                    None => out.push_str("<redacted>"),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_urls(
                "helm --repo=https://bob:tok@charts.example/x failed: GET https://bob:tok@charts.example/index.yaml"
            ),
            "helm --repo=https://bob:<redacted>@charts.example/x failed: GET https://bob:<redacted>@charts.example/index.yaml"
        );
        assert_eq!(
            redact_urls("oci://registry/x and plain"),
            "oci://registry/x and plain"
        );
        assert_eq!(
            redact_urls("https://ghp_tok@host/x"),
            "https://<redacted>@host/x"
        );
    }

    use super::*;

    #[test]
    fn release_names_follow_helms_rule() {
        for good in ["web", "shop-1", "a.b-c", "x"] {
            assert!(release_name("r", good).is_ok(), "{good}");
        }
        let long = "a".repeat(54);
        for bad in [
            "--post-renderer=/bin/sh",
            "-x",
            "Web",
            "a_b",
            "",
            "a..b",
            "a-",
            long.as_str(),
            "a b",
        ] {
            assert!(release_name("r", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chart_names_refuse_flags_and_paths() {
        for good in ["web", "bitnami/nginx", "my_chart.v2"] {
            assert!(chart_name("c", good).is_ok(), "{good}");
        }
        for bad in ["--repo=x", "-v", "../x", "a//b", "a b", "", "./x", "a,b"] {
            assert!(chart_name("c", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn helm_keys_refuse_what_helm_would_split() {
        for good in [
            "image",
            "a.b[0].c",
            "ingress.annotations.kubernetes\\.io/class",
        ] {
            assert!(helm_key("k", good).is_ok(), "{good}");
        }
        for bad in ["x=/etc/hostname,y", "a,b", "a=b", "a\\", "", "a\nb"] {
            assert!(helm_key("k", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn set_values_escape_commas_as_argo_cd_does_and_keep_lists() {
        assert_eq!(helm_set_value("a,b"), "a\\,b");
        assert_eq!(helm_set_value("a\\,b"), "a\\,b");
        assert_eq!(helm_set_value("{a,b}"), "{a,b}");
        assert_eq!(
            helm_set_value("{a},x=/etc/passwd,{b}"),
            "{a}\\,x=/etc/passwd\\,{b}"
        );
    }

    #[test]
    fn literals_escape_every_separator() {
        assert_eq!(helm_literal("/tmp/a,b\\c"), "/tmp/a\\,b\\\\c");
        assert_eq!(csv_field("a,\"b"), "\"a,\"\"b\"");
    }

    #[test]
    fn paths_stay_inside_the_checkout() {
        let root = Path::new("/scratch/repo");
        let base = Path::new("/scratch/repo/apps/web");
        assert_eq!(
            inside("f", root, base, "../base/x.yaml").unwrap(),
            Path::new("/scratch/repo/apps/base/x.yaml")
        );
        for bad in [
            "../../../etc/passwd",
            "/etc/passwd",
            "https://example.com/x.yaml",
            "github.com/a/b//c?ref=v1",
            "../../../repo2",
        ] {
            assert!(inside("f", root, base, bad).is_err(), "{bad}");
        }
    }
}
