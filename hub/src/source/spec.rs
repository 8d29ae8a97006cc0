//! Where a repository is and how to log in to it.

use std::fmt;

use base64::Engine as _;

use super::{Error, Result};

/// A repository to fetch: its url and, when it needs them, credentials.
///
/// The url is an https url, an ssh url (`ssh://git@host/path` or scp-like
/// `git@host:path`), a `file://` url or a local path.
#[derive(Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// Where the repository is.
    pub url: String,
    /// How to log in, if the server asks.
    pub credentials: Option<Credentials>,
}

/// How to log in to a repository. Never shown: its `Debug` output is redacted. It
/// serializes in full, for the hub's store only.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Credentials {
    /// HTTP Basic authentication, as forges take personal access tokens.
    Https {
        /// The user name; forges often accept any non-empty name with a token.
        username: String,
        /// The token or password.
        token: String,
    },
    /// An ssh private key.
    Ssh {
        /// The private key, as PEM or OpenSSH text.
        private_key: String,
        /// known_hosts lines for the server. Without them, the system's known_hosts
        /// files decide, and an unknown host is refused.
        known_hosts: Option<String>,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Https { username, .. } => f
                .debug_struct("Https")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
            Self::Ssh { known_hosts, .. } => f
                .debug_struct("Ssh")
                .field("private_key", &"<redacted>")
                .field("known_hosts", &known_hosts.as_ref().map(|_| "<set>"))
                .finish(),
        }
    }
}

impl fmt::Debug for RepoSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoSpec")
            .field("url", &self.redacted_url())
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl RepoSpec {
    /// A repository that needs no credentials.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            credentials: None,
        }
    }

    /// A repository reached with `credentials`.
    pub fn with_credentials(url: impl Into<String>, credentials: Credentials) -> Self {
        Self {
            url: url.into(),
            credentials: Some(credentials),
        }
    }

    /// The url without any password or token written into it, fit for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Reads an Argo CD repository Secret (`argocd.argoproj.io/secret-type: repository`)
    /// of a Git repository, given as YAML or JSON bytes.
    pub fn from_argocd_secret_yaml(yaml: &[u8]) -> Result<Self> {
        Self::from_argocd_secret(&secret_value(yaml)?)
    }

    /// Reads an Argo CD repository Secret of a Git repository: [`RepositorySecret`]
    /// for every kind, and refuses a credential template or a Helm or OCI
    /// repository, which are not Git.
    pub fn from_argocd_secret(secret: &serde_json::Value) -> Result<Self> {
        let read = RepositorySecret::from_value(secret)?;
        if read.template {
            return Err(Error::InvalidRepositorySecret {
                name: read.name,
                reason:
                    "label argocd.argoproj.io/secret-type is \"repo-creds\", not \"repository\""
                        .into(),
            });
        }
        if read.repo_type != RepoType::Git {
            return Err(Error::InvalidRepositorySecret {
                name: read.name,
                reason: format!(
                    "type is {:?}; only \"git\" repositories are read here",
                    read.repo_type
                ),
            });
        }
        Ok(read.spec)
    }
}

/// What kind of repository a Secret describes (its `type`), as Argo CD names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepoType {
    /// A Git repository (the default).
    #[default]
    Git,
    /// A Helm chart repository with an `index.yaml` (or, with `enableOCI`, a registry).
    Helm,
    /// An OCI registry holding charts.
    Oci,
}

/// A TLS client certificate and its key, as PEM. Never shown: `Debug` redacts it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsClientCert {
    /// `tlsClientCertData`: the certificate (chain), PEM.
    pub cert: String,
    /// `tlsClientCertKey`: its private key, PEM.
    pub key: String,
}

impl fmt::Debug for TlsClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsClientCert(<redacted>)")
    }
}

/// An Argo CD repository Secret (`argocd.argoproj.io/secret-type: repository`) or
/// credential template (`repo-creds`, whose `url` is a prefix), as read.
#[derive(Clone, Debug)]
pub struct RepositorySecret {
    /// The Secret's `metadata.name`, for messages.
    pub name: String,
    /// The URL (a prefix for a template) and basic or ssh credentials.
    pub spec: RepoSpec,
    /// `type`.
    pub repo_type: RepoType,
    /// Whether this is a `repo-creds` template rather than one repository.
    pub template: bool,
    /// `tlsClientCertData` and `tlsClientCertKey`.
    pub tls_client: Option<TlsClientCert>,
    /// `enableOCI`: a `helm` repository that is really an OCI registry.
    pub enable_oci: bool,
}

fn secret_value(yaml: &[u8]) -> Result<serde_json::Value> {
    let text = std::str::from_utf8(yaml).map_err(|_| Error::InvalidRepositorySecret {
        name: String::new(),
        reason: "the secret is not UTF-8 text".into(),
    })?;
    serde_saphyr::from_str(text).map_err(|e| Error::InvalidRepositorySecret {
        name: String::new(),
        reason: format!("not a YAML document: {e}"),
    })
}

impl RepositorySecret {
    /// Reads a repository Secret or credential template given as YAML or JSON bytes.
    pub fn from_yaml(yaml: &[u8]) -> Result<Self> {
        Self::from_value(&secret_value(yaml)?)
    }

    /// Reads a repository Secret or credential template.
    ///
    /// Fields come from `stringData` or base64 `data` (`stringData` wins, as in
    /// Kubernetes). `url` is required; `username` and `password` give https
    /// credentials, `sshPrivateKey` gives ssh credentials (Git only). `type` is
    /// `git` (the default), `helm` or `oci`; `enableOCI`, `tlsClientCertData` and
    /// `tlsClientCertKey` are read for Helm and OCI repositories. `name` and
    /// `project` are accepted and not needed here. Any other field that Flotilla
    /// cannot honour (GitHub App, proxies, `insecure`, TLS client certificates for
    /// Git, ...) is an [`Error::UnsupportedSecretField`], never dropped.
    pub fn from_value(secret: &serde_json::Value) -> Result<Self> {
        let name = secret
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let invalid = |reason: String| Error::InvalidRepositorySecret {
            name: name.clone(),
            reason,
        };
        if secret.get("kind").and_then(|v| v.as_str()) != Some("Secret") {
            return Err(invalid("kind is not Secret".into()));
        }
        let secret_type = secret
            .pointer("/metadata/labels/argocd.argoproj.io~1secret-type")
            .and_then(|v| v.as_str());
        let template = match secret_type {
            Some("repository") => false,
            Some("repo-creds") => true,
            other => {
                return Err(invalid(format!(
                    "label argocd.argoproj.io/secret-type is {}, not \"repository\" or \"repo-creds\"",
                    other.map_or_else(|| "missing".to_owned(), |t| format!("{t:?}"))
                )));
            }
        };

        let mut fields = std::collections::BTreeMap::<String, String>::new();
        if let Some(data) = secret.get("data") {
            let data = data
                .as_object()
                .ok_or_else(|| invalid("data is not a map".into()))?;
            for (key, value) in data {
                let encoded = value
                    .as_str()
                    .ok_or_else(|| invalid(format!("data.{key} is not a string")))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| invalid(format!("data.{key} is not base64")))?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| invalid(format!("data.{key} is not UTF-8 text")))?;
                fields.insert(key.clone(), text);
            }
        }
        if let Some(data) = secret.get("stringData") {
            let data = data
                .as_object()
                .ok_or_else(|| invalid("stringData is not a map".into()))?;
            for (key, value) in data {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return Err(invalid(format!("stringData.{key} is not a string"))),
                };
                fields.insert(key.clone(), text);
            }
        }

        let repo_type = match fields.get("type").map(String::as_str) {
            None | Some("" | "git") => RepoType::Git,
            Some("helm") => RepoType::Helm,
            Some("oci") => RepoType::Oci,
            Some(other) => {
                return Err(invalid(format!(
                    "type is {other:?}; Flotilla reads \"git\", \"helm\" and \"oci\" repositories"
                )));
            }
        };
        let charts = repo_type != RepoType::Git;
        let is_true = |value: &str| value == "true";
        let mut url = None;
        let mut username = None;
        let mut password = None;
        let mut ssh_key = None;
        let mut cert = None;
        let mut cert_key = None;
        let mut enable_oci = repo_type == RepoType::Oci;
        for (key, value) in fields {
            match key.as_str() {
                "url" => url = Some(value),
                "username" => username = Some(value),
                "password" => password = Some(value),
                "sshPrivateKey" if !charts => ssh_key = Some(value),
                "tlsClientCertData" if charts => cert = Some(value),
                "tlsClientCertKey" if charts => cert_key = Some(value),
                "enableOCI" if charts => enable_oci |= is_true(&value),
                // Helm and registries get basic credentials with every request anyway.
                "forceHttpBasicAuth" if charts => {}
                "type" => {}
                // Names and projects scope the secret in Argo CD's UI; they change nothing here.
                "name" | "project" => {}
                // Explicitly off is the same as absent.
                "insecure" | "enableLfs" | "enableOCI" | "forceHttpBasicAuth"
                    if value.is_empty() || value == "false" => {}
                other => {
                    return Err(Error::UnsupportedSecretField {
                        name,
                        field: other.to_owned(),
                    });
                }
            }
        }
        let url = url
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| invalid("url is missing".into()))?;
        let credentials = match (username, password, ssh_key) {
            (_, _, Some(key)) if !key.trim().is_empty() => Some(Credentials::Ssh {
                private_key: key,
                known_hosts: None,
            }),
            (username, Some(token), _) if !token.is_empty() => Some(Credentials::Https {
                username: username
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| "git".into()),
                token,
            }),
            (Some(u), None, _) if !u.is_empty() => {
                return Err(invalid("username is set without a password".into()));
            }
            _ => None,
        };
        let tls_client = match (cert, cert_key) {
            (Some(cert), Some(key)) if !cert.trim().is_empty() && !key.trim().is_empty() => {
                Some(TlsClientCert { cert, key })
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "tlsClientCertData and tlsClientCertKey go together; set both".into(),
                ));
            }
        };
        Ok(Self {
            name,
            spec: RepoSpec { url, credentials },
            repo_type,
            template,
            tls_client,
            enable_oci,
        })
    }
}

/// Removes a password or token from the user-info part of `url`
/// (`https://user:token@host/x` becomes `https://user:<redacted>@host/x`).
pub(super) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let user_info = &authority[..at];
    let Some(colon) = user_info.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:<redacted>{}",
        &url[..authority_start],
        &user_info[..colon],
        &url[authority_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(yaml: &str) -> Result<RepoSpec> {
        RepoSpec::from_argocd_secret_yaml(yaml.as_bytes())
    }

    #[test]
    fn debug_output_never_shows_a_token_or_a_key() {
        let https = RepoSpec::with_credentials(
            "https://bob:urltoken@git.example/fleet.git",
            Credentials::Https {
                username: "bob".into(),
                token: "s3cr3t-token".into(),
            },
        );
        let ssh = RepoSpec::with_credentials(
            "git@git.example:fleet.git",
            Credentials::Ssh {
                private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA".into(),
                known_hosts: Some("git.example ssh-ed25519 AAAA".into()),
            },
        );
        let shown = format!("{https:?} {ssh:?} {https:#?}");
        assert!(!shown.contains("s3cr3t-token"), "{shown}");
        assert!(!shown.contains("urltoken"), "{shown}");
        assert!(!shown.contains("OPENSSH"), "{shown}");
        assert!(shown.contains("bob"), "{shown}");
    }

    #[test]
    fn a_password_in_the_url_is_redacted() {
        assert_eq!(
            redact_url("https://bob:tok@git.example:8443/a/b.git"),
            "https://bob:<redacted>@git.example:8443/a/b.git"
        );
        assert_eq!(
            redact_url("https://bob@git.example/a.git"),
            "https://bob@git.example/a.git"
        );
        assert_eq!(
            redact_url("git@git.example:a/b.git"),
            "git@git.example:a/b.git"
        );
        assert_eq!(redact_url("/srv/git/a"), "/srv/git/a");
    }

    #[test]
    fn an_argocd_https_secret_with_string_data_becomes_https_credentials() {
        let spec = secret(
            r#"
apiVersion: v1
kind: Secret
metadata:
  name: fleet-repo
  namespace: argocd
  labels:
    argocd.argoproj.io/secret-type: repository
stringData:
  type: git
  url: https://git.example/team/fleet.git
  username: deploy-bot
  password: tok-123
"#,
        )
        .expect("valid secret");
        assert_eq!(spec.url, "https://git.example/team/fleet.git");
        assert_eq!(
            spec.credentials,
            Some(Credentials::Https {
                username: "deploy-bot".into(),
                token: "tok-123".into()
            })
        );
    }

    #[test]
    fn an_argocd_ssh_secret_in_base64_data_becomes_an_ssh_key() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let yaml = format!(
            "kind: Secret\napiVersion: v1\nmetadata:\n  name: ssh-repo\n  labels:\n    argocd.argoproj.io/secret-type: repository\ndata:\n  url: {}\n  sshPrivateKey: {}\n",
            b64("git@git.example:team/fleet.git"),
            b64("-----BEGIN OPENSSH PRIVATE KEY-----\nkey\n-----END OPENSSH PRIVATE KEY-----\n"),
        );
        let spec = secret(&yaml).expect("valid secret");
        assert_eq!(spec.url, "git@git.example:team/fleet.git");
        assert!(matches!(
            spec.credentials,
            Some(Credentials::Ssh { ref private_key, known_hosts: None }) if private_key.contains("key")
        ));
    }

    #[test]
    fn an_argocd_secret_field_flotilla_cannot_honour_is_named() {
        let err = secret(
            r#"
kind: Secret
metadata:
  name: app-repo
  labels:
    argocd.argoproj.io/secret-type: repository
stringData:
  url: https://github.com/team/fleet
  githubAppID: "1234"
"#,
        )
        .expect_err("unsupported field");
        assert!(
            matches!(&err, Error::UnsupportedSecretField { name, field } if name == "app-repo" && field == "githubAppID"),
            "{err}"
        );
    }

    #[test]
    fn a_secret_that_is_not_a_repository_secret_is_refused() {
        let err = secret(
            r#"
kind: Secret
metadata:
  name: creds
  labels:
    argocd.argoproj.io/secret-type: repo-creds
stringData:
  url: https://github.com/team
"#,
        )
        .expect_err("repo-creds is not a repository");
        assert!(err.to_string().contains("repo-creds"), "{err}");
        let err = secret("kind: Secret\nmetadata:\n  name: x\n  labels:\n    argocd.argoproj.io/secret-type: repository\nstringData:\n  username: a\n")
            .expect_err("no url");
        assert!(err.to_string().contains("url is missing"), "{err}");
    }
}
