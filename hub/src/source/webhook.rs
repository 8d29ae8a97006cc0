//! Forge push webhooks: GitHub, GitLab and Gitea push payloads, with their secrets
//! checked in constant time, turned into a [`PushEvent`] that names the repository.

use hmac::{KeyInit as _, Mac as _};
use http::HeaderMap;
use subtle::ConstantTimeEq as _;

use super::CommitId;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The forge that sent a webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    /// GitHub or GitHub Enterprise (`X-GitHub-Event`).
    GitHub,
    /// GitLab (`X-Gitlab-Event`).
    GitLab,
    /// Gitea or Forgejo (`X-Gitea-Event`).
    Gitea,
}

impl std::fmt::Display for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::GitHub => "GitHub",
            Self::GitLab => "GitLab",
            Self::Gitea => "Gitea",
        })
    }
}

/// The ref a push moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushedRef {
    /// `refs/heads/NAME`.
    Branch(String),
    /// `refs/tags/NAME`.
    Tag(String),
    /// Any other ref, in full.
    Other(String),
}

/// A push, as a forge reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushEvent {
    /// Who sent it.
    pub forge: Forge,
    /// Every clone url the payload names for the repository, https and ssh forms.
    /// Match them against configured repositories with [`same_repository`].
    pub repo_urls: Vec<String>,
    /// The branch or tag that moved.
    pub pushed_ref: PushedRef,
    /// The commit the ref points to now; `None` when the ref was deleted.
    pub after: Option<CommitId>,
}

/// What is wrong with a webhook request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `X-GitHub-Event`, `X-Gitlab-Event` or `X-Gitea-Event` header.
    #[error("the webhook request names no known forge event header")]
    UnknownForge,
    /// A secret is configured and the request carries no signature or token.
    #[error("the {forge} webhook carries no {header} header, and a secret is configured")]
    MissingSignature {
        /// Who sent it.
        forge: Forge,
        /// The header that was expected.
        header: &'static str,
    },
    /// The signature or token does not match the configured secret.
    #[error("the {forge} webhook's {header} does not match the configured secret")]
    BadSignature {
        /// Who sent it.
        forge: Forge,
        /// The header that was checked.
        header: &'static str,
    },
    /// A valid event that is not a push, such as GitHub's `ping`.
    #[error("the {forge} webhook event {event:?} is not a push")]
    NotAPush {
        /// Who sent it.
        forge: Forge,
        /// The event name from its header.
        event: String,
    },
    /// The body is not the JSON push payload the forge documents.
    #[error("the {forge} push payload is invalid: {reason}")]
    InvalidPayload {
        /// Who sent it.
        forge: Forge,
        /// What is wrong.
        reason: String,
    },
}

/// Checks a webhook's signature when `secret` is set, then reads its push payload.
///
/// - GitHub: `X-GitHub-Event: push`, `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
/// - GitLab: `X-Gitlab-Event: Push Hook` or `Tag Push Hook`, `X-Gitlab-Token: <secret>`.
/// - Gitea: `X-Gitea-Event: push`, `X-Gitea-Signature: <hex HMAC-SHA256 of the body>`.
///
/// Without a secret, signatures are not checked. Comparisons run in constant time.
pub fn parse(headers: &HeaderMap, body: &[u8], secret: Option<&[u8]>) -> Result<PushEvent, Error> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let (forge, event) = if let Some(event) = header("x-github-event") {
        (Forge::GitHub, event)
    } else if let Some(event) = header("x-gitlab-event") {
        (Forge::GitLab, event)
    } else if let Some(event) = header("x-gitea-event") {
        (Forge::Gitea, event)
    } else {
        return Err(Error::UnknownForge);
    };
    let _span = tracing::debug_span!("webhook", forge = %forge, event).entered();

    if let Some(secret) = secret {
        match forge {
            Forge::GitHub => {
                const NAME: &str = "X-Hub-Signature-256";
                let signature = header(NAME).ok_or(Error::MissingSignature {
                    forge,
                    header: NAME,
                })?;
                let hex = signature
                    .strip_prefix("sha256=")
                    .ok_or(Error::BadSignature {
                        forge,
                        header: NAME,
                    })?;
                verify_hmac(secret, body, hex).map_err(|()| Error::BadSignature {
                    forge,
                    header: NAME,
                })?;
            }
            Forge::Gitea => {
                const NAME: &str = "X-Gitea-Signature";
                let signature = header(NAME).ok_or(Error::MissingSignature {
                    forge,
                    header: NAME,
                })?;
                verify_hmac(secret, body, signature).map_err(|()| Error::BadSignature {
                    forge,
                    header: NAME,
                })?;
            }
            Forge::GitLab => {
                const NAME: &str = "X-Gitlab-Token";
                let token = headers
                    .get(NAME)
                    .ok_or(Error::MissingSignature {
                        forge,
                        header: NAME,
                    })?
                    .as_bytes();
                // Hashing first makes the comparison independent of the lengths too.
                let given = <sha2::Sha256 as sha2::Digest>::digest(token);
                let wanted = <sha2::Sha256 as sha2::Digest>::digest(secret);
                if !bool::from(given.as_slice().ct_eq(wanted.as_slice())) {
                    return Err(Error::BadSignature {
                        forge,
                        header: NAME,
                    });
                }
            }
        }
    }

    let is_push = match forge {
        Forge::GitHub | Forge::Gitea => event == "push",
        Forge::GitLab => event == "Push Hook" || event == "Tag Push Hook",
    };
    if !is_push {
        return Err(Error::NotAPush {
            forge,
            event: event.to_owned(),
        });
    }
    read_push(forge, body)
}

fn verify_hmac(secret: &[u8], body: &[u8], hex: &str) -> Result<(), ()> {
    let signature = decode_hex(hex.trim()).ok_or(())?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| ())?;
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| ())
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

fn read_push(forge: Forge, body: &[u8]) -> Result<PushEvent, Error> {
    let invalid = |reason: String| Error::InvalidPayload { forge, reason };
    let payload: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let full_ref = payload
        .get("ref")
        .and_then(|v| v.as_str())
        .ok_or_else(|| invalid("ref is missing".into()))?;
    let pushed_ref = if let Some(branch) = full_ref.strip_prefix("refs/heads/") {
        PushedRef::Branch(branch.to_owned())
    } else if let Some(tag) = full_ref.strip_prefix("refs/tags/") {
        PushedRef::Tag(tag.to_owned())
    } else {
        PushedRef::Other(full_ref.to_owned())
    };
    let after = payload
        .get("after")
        .and_then(|v| v.as_str())
        .ok_or_else(|| invalid("after is missing".into()))?;
    let after = if after.bytes().all(|b| b == b'0') {
        None
    } else {
        Some(
            CommitId::parse(after)
                .map_err(|_| invalid(format!("after {after:?} is not a commit id")))?,
        )
    };

    let url_fields: &[&str] = match forge {
        Forge::GitHub => &[
            "/repository/clone_url",
            "/repository/ssh_url",
            "/repository/git_url",
            "/repository/html_url",
        ],
        Forge::GitLab => &[
            "/project/git_http_url",
            "/project/git_ssh_url",
            "/project/web_url",
            "/repository/git_http_url",
            "/repository/git_ssh_url",
            "/repository/homepage",
        ],
        Forge::Gitea => &[
            "/repository/clone_url",
            "/repository/ssh_url",
            "/repository/html_url",
        ],
    };
    let mut repo_urls: Vec<String> = Vec::new();
    for pointer in url_fields {
        if let Some(url) = payload.pointer(pointer).and_then(|v| v.as_str())
            && !url.is_empty()
            && !repo_urls.iter().any(|u| u == url)
        {
            repo_urls.push(url.to_owned());
        }
    }
    if repo_urls.is_empty() {
        return Err(invalid("it names no repository url".into()));
    }
    Ok(PushEvent {
        forge,
        repo_urls,
        pushed_ref,
        after,
    })
}

/// Whether two repository urls name the same repository, whatever the transport:
/// `https://Git.Example/team/fleet.git`, `git@git.example:team/fleet` and
/// `ssh://git@git.example:22/team/fleet/` all do. Hosts compare case-insensitively,
/// paths exactly, and a trailing `.git` or `/` is ignored.
pub fn same_repository(a: &str, b: &str) -> bool {
    match (repository_key(a), repository_key(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// `host/path` of a remote url, or `None` for a local one.
fn repository_key(url: &str) -> Option<String> {
    let url = url.trim();
    let (host, path) = if let Some((_, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = host_port.split_once(':').map_or(host_port, |(h, _)| h);
        (host, path)
    } else {
        // scp-like: [user@]host:path
        let (authority, path) = url.split_once(':')?;
        if authority.contains('/') {
            return None;
        }
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        (host, path)
    };
    if host.is_empty() {
        return None;
    }
    let path = path.trim_matches('/');
    let path = path
        .strip_suffix(".git")
        .unwrap_or(path)
        .trim_end_matches('/');
    Some(format!("{}/{}", host.to_ascii_lowercase(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: &str = "6b1f3c2d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c";

    fn github_body() -> Vec<u8> {
        serde_json::json!({
            "ref": "refs/heads/main",
            "before": "0000000000000000000000000000000000000001",
            "after": AFTER,
            "repository": {
                "full_name": "team/fleet",
                "clone_url": "https://github.example/team/fleet.git",
                "ssh_url": "git@github.example:team/fleet.git",
                "html_url": "https://github.example/team/fleet",
            },
            "pusher": { "name": "someone" },
        })
        .to_string()
        .into_bytes()
    }

    fn gitlab_body(reference: &str) -> Vec<u8> {
        serde_json::json!({
            "object_kind": "push",
            "ref": reference,
            "after": AFTER,
            "checkout_sha": AFTER,
            "project": {
                "path_with_namespace": "team/fleet",
                "git_http_url": "https://gitlab.example/team/fleet.git",
                "git_ssh_url": "git@gitlab.example:team/fleet.git",
                "web_url": "https://gitlab.example/team/fleet",
            },
        })
        .to_string()
        .into_bytes()
    }

    fn gitea_body() -> Vec<u8> {
        serde_json::json!({
            "ref": "refs/heads/release",
            "after": AFTER,
            "repository": {
                "clone_url": "https://gitea.example/team/fleet.git",
                "ssh_url": "ssh://git@gitea.example:2222/team/fleet.git",
            },
        })
        .to_string()
        .into_bytes()
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret).expect("any key length");
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn a_github_push_with_a_valid_signature_names_the_repo_branch_and_commit() {
        let body = github_body();
        let signature = format!("sha256={}", sign(b"hook-secret", &body));
        let event = parse(
            &headers(&[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &signature),
            ]),
            &body,
            Some(b"hook-secret"),
        )
        .expect("valid push");
        assert_eq!(event.forge, Forge::GitHub);
        assert_eq!(event.pushed_ref, PushedRef::Branch("main".into()));
        assert_eq!(event.after.as_ref().map(CommitId::as_str), Some(AFTER));
        assert_eq!(
            event.repo_urls,
            [
                "https://github.example/team/fleet.git",
                "git@github.example:team/fleet.git",
                "https://github.example/team/fleet",
            ]
        );
    }

    #[test]
    fn a_github_push_with_a_bad_or_missing_signature_is_refused() {
        let body = github_body();
        let wrong = format!("sha256={}", sign(b"other-secret", &body));
        let err = parse(
            &headers(&[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &wrong)]),
            &body,
            Some(b"hook-secret"),
        )
        .expect_err("wrong key");
        assert!(
            matches!(
                err,
                Error::BadSignature {
                    forge: Forge::GitHub,
                    ..
                }
            ),
            "{err}"
        );

        let mut tampered = body.clone();
        tampered.extend_from_slice(b" ");
        let right = format!("sha256={}", sign(b"hook-secret", &body));
        let err = parse(
            &headers(&[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &right)]),
            &tampered,
            Some(b"hook-secret"),
        )
        .expect_err("tampered body");
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");

        let err = parse(
            &headers(&[("X-GitHub-Event", "push")]),
            &body,
            Some(b"hook-secret"),
        )
        .expect_err("unsigned");
        assert!(
            matches!(
                err,
                Error::MissingSignature {
                    forge: Forge::GitHub,
                    header: "X-Hub-Signature-256"
                }
            ),
            "{err}"
        );
        let err = parse(
            &headers(&[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", "sha256=zz"),
            ]),
            &body,
            Some(b"hook-secret"),
        )
        .expect_err("not hex");
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    }

    #[test]
    fn without_a_secret_signatures_are_not_required() {
        let body = github_body();
        assert!(parse(&headers(&[("X-GitHub-Event", "push")]), &body, None).is_ok());
    }

    #[test]
    fn a_github_ping_is_not_a_push() {
        let body = br#"{"zen":"hi","hook_id":1}"#;
        let signature = format!("sha256={}", sign(b"s", body));
        let err = parse(
            &headers(&[
                ("X-GitHub-Event", "ping"),
                ("X-Hub-Signature-256", &signature),
            ]),
            body,
            Some(b"s"),
        )
        .expect_err("ping");
        assert!(
            matches!(err, Error::NotAPush { ref event, .. } if event == "ping"),
            "{err}"
        );
    }

    #[test]
    fn a_gitlab_push_and_tag_push_check_the_token() {
        let body = gitlab_body("refs/heads/main");
        let event = parse(
            &headers(&[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "tok")]),
            &body,
            Some(b"tok"),
        )
        .expect("valid push");
        assert_eq!(event.forge, Forge::GitLab);
        assert_eq!(event.pushed_ref, PushedRef::Branch("main".into()));
        assert!(
            event
                .repo_urls
                .contains(&"git@gitlab.example:team/fleet.git".to_owned())
        );

        let tag = gitlab_body("refs/tags/v1.2.0");
        let event = parse(
            &headers(&[
                ("X-Gitlab-Event", "Tag Push Hook"),
                ("X-Gitlab-Token", "tok"),
            ]),
            &tag,
            Some(b"tok"),
        )
        .expect("valid tag push");
        assert_eq!(event.pushed_ref, PushedRef::Tag("v1.2.0".into()));

        for token in ["tok2", "to", ""] {
            let err = parse(
                &headers(&[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", token)]),
                &body,
                Some(b"tok"),
            )
            .expect_err(token);
            assert!(
                matches!(
                    err,
                    Error::BadSignature {
                        forge: Forge::GitLab,
                        ..
                    }
                ),
                "{err}"
            );
        }
        let err = parse(
            &headers(&[("X-Gitlab-Event", "Push Hook")]),
            &body,
            Some(b"tok"),
        )
        .expect_err("no token");
        assert!(matches!(err, Error::MissingSignature { .. }), "{err}");
    }

    #[test]
    fn a_gitea_push_checks_the_hex_signature() {
        let body = gitea_body();
        let signature = sign(b"gitea-secret", &body);
        let event = parse(
            &headers(&[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &signature)]),
            &body,
            Some(b"gitea-secret"),
        )
        .expect("valid push");
        assert_eq!(event.forge, Forge::Gitea);
        assert_eq!(event.pushed_ref, PushedRef::Branch("release".into()));
        let err = parse(
            &headers(&[
                ("X-Gitea-Event", "push"),
                ("X-Gitea-Signature", &sign(b"x", &body)),
            ]),
            &body,
            Some(b"gitea-secret"),
        )
        .expect_err("wrong key");
        assert!(
            matches!(
                err,
                Error::BadSignature {
                    forge: Forge::Gitea,
                    ..
                }
            ),
            "{err}"
        );
        let err = parse(
            &headers(&[("X-Gitea-Event", "push")]),
            &body,
            Some(b"gitea-secret"),
        )
        .expect_err("unsigned");
        assert!(
            matches!(
                err,
                Error::MissingSignature {
                    forge: Forge::Gitea,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_deleted_branch_has_no_after_commit() {
        let body = serde_json::json!({
            "ref": "refs/heads/gone",
            "after": "0000000000000000000000000000000000000000",
            "repository": { "clone_url": "https://github.example/team/fleet.git" },
        })
        .to_string();
        let event = parse(
            &headers(&[("X-GitHub-Event", "push")]),
            body.as_bytes(),
            None,
        )
        .expect("deletion");
        assert_eq!(event.after, None);
    }

    #[test]
    fn malformed_or_unknown_requests_are_typed_errors() {
        let err = parse(&HeaderMap::new(), b"{}", None).expect_err("no forge");
        assert!(matches!(err, Error::UnknownForge));
        let err = parse(&headers(&[("X-GitHub-Event", "push")]), b"not json", None)
            .expect_err("not json");
        assert!(matches!(err, Error::InvalidPayload { .. }), "{err}");
        let err = parse(
            &headers(&[("X-GitHub-Event", "push")]),
            br#"{"ref":"refs/heads/a","after":"xyz","repository":{"clone_url":"u"}}"#,
            None,
        )
        .expect_err("bad after");
        assert!(matches!(err, Error::InvalidPayload { .. }), "{err}");
    }

    #[test]
    fn https_and_ssh_urls_of_one_repository_are_the_same_repository() {
        let https = "https://Git.Example/team/fleet.git";
        for other in [
            "git@git.example:team/fleet",
            "ssh://git@git.example:22/team/fleet/",
            "https://token@git.example/team/fleet",
        ] {
            assert!(same_repository(https, other), "{other}");
        }
        assert!(!same_repository(
            https,
            "https://git.example/team/other.git"
        ));
        assert!(!same_repository(
            https,
            "https://git.example/other/fleet.git"
        ));
        assert!(same_repository("/srv/git/fleet", "/srv/git/fleet"));
    }
}
