//! Charts from Helm repositories (`https://…`, read through their `index.yaml`) and
//! OCI registries (`oci://…`, or a registry host marked `enableOCI`): which version
//! a `targetRevision` picks, and the chart archive itself, fetched in Rust with the
//! repository's credentials and kept on disk by its sha256 digest.
//!
//! Start at [`ChartCache::resolve`] (cheap: the index or the registry's tags and
//! manifest, what polling needs) and [`ChartCache::pull`] (the archive, from the
//! cache when its digest is there). Credentials travel only in request headers and
//! the TLS handshake: never in a URL, a message or a log line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::source::{Credentials, TlsClientCert};

mod index;
mod oci;
pub mod version;

pub use version::Constraint;

/// The largest `index.yaml` read (large public repositories publish tens of MiB).
const MAX_INDEX_BYTES: usize = 128 << 20;
/// The largest chart archive or registry manifest read.
const MAX_CHART_BYTES: usize = 64 << 20;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// What can fail while resolving or fetching a chart. Every message names the
/// repository (without credentials) and the chart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository URL is not one a chart can come from.
    #[error("chart {chart:?}: repository {url}: {reason}")]
    InvalidUrl {
        /// The repository URL, redacted.
        url: String,
        /// The chart.
        chart: String,
        /// Why it was refused.
        reason: String,
    },
    /// The targetRevision is neither a version nor a semver constraint.
    #[error(
        "chart {chart:?} from {url}: targetRevision {revision:?} is not a version or a semver constraint"
    )]
    InvalidConstraint {
        /// The repository URL, redacted.
        url: String,
        /// The chart.
        chart: String,
        /// The targetRevision.
        revision: String,
    },
    /// The HTTP client could not be built (a bad client certificate, for instance).
    #[error("repository {url}: {reason}")]
    Client {
        /// The repository URL, redacted.
        url: String,
        /// Why, without any credential.
        reason: String,
    },
    /// A request failed or the server answered with an error status.
    #[error("chart {chart:?} from {url}: fetching {what} failed: {reason}")]
    Fetch {
        /// The repository URL, redacted.
        url: String,
        /// The chart.
        chart: String,
        /// What was fetched (`index.yaml`, `the chart archive`, `tags`, ...).
        what: String,
        /// The status or the transport's error, without credentials.
        reason: String,
    },
    /// The server refused the credentials, or wants some and none are stored.
    #[error(
        "chart {chart:?} from {url}: the repository refused access to {what} ({status}); check the repository's credentials"
    )]
    Unauthorized {
        /// The repository URL, redacted.
        url: String,
        /// The chart.
        chart: String,
        /// What was fetched.
        what: String,
        /// The HTTP status.
        status: u16,
    },
    /// What the server sent is not what a chart repository or registry sends.
    #[error("chart {chart:?} from {url}: {what} is invalid: {reason}")]
    Invalid {
        /// The repository URL, redacted.
        url: String,
        /// The chart.
        chart: String,
        /// What was read.
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// The repository has no such chart.
    #[error("chart {chart:?} is not in repository {url}")]
    NoSuchChart {
        /// The repository URL, redacted.
        url: String,
        /// The chart.
        chart: String,
    },
    /// No version of the chart matches the targetRevision.
    #[error(
        "chart {chart:?} from {url}: no version matches targetRevision {revision:?} (newest: {newest})"
    )]
    NoMatchingVersion {
        /// The repository URL, redacted.
        url: String,
        /// The chart.
        chart: String,
        /// The targetRevision.
        revision: String,
        /// The newest version there is, or `none`.
        newest: String,
    },
    /// The archive fetched does not have the digest the repository promised.
    #[error("chart {chart:?} {version} from {url}: the archive's digest is {got}, not {want}")]
    DigestMismatch {
        /// The repository URL, redacted.
        url: String,
        /// The chart.
        chart: String,
        /// The version.
        version: String,
        /// What the repository promised.
        want: String,
        /// What arrived.
        got: String,
    },
    /// The cache folder could not be written.
    #[error("chart cache {path}")]
    Cache {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The result of the operations in [`chart`](self).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach one chart repository: its URL and what to log in with.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ChartRepo {
    /// `https://…` (a Helm repository), `oci://…`, or a registry host with `oci`.
    pub url: String,
    /// Whether the URL is an OCI registry though it has no `oci://` (Argo CD's
    /// `enableOCI`).
    pub oci: bool,
    /// HTTP basic credentials (`username`/`password` of the repository Secret).
    pub credentials: Option<Credentials>,
    /// A TLS client certificate and key.
    pub tls_client: Option<TlsClientCert>,
    /// Send the credentials to a chart archive on another host too (the
    /// Application's `helm.passCredentials`); by default, as in Helm, only the
    /// repository's own host gets them.
    pub pass_credentials: bool,
}

impl std::fmt::Debug for ChartRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChartRepo")
            .field("url", &self.redacted_url())
            .field("oci", &self.oci)
            .field("credentials", &self.credentials)
            .field("tls_client", &self.tls_client.as_ref().map(|_| "<set>"))
            .field("pass_credentials", &self.pass_credentials)
            .finish()
    }
}

impl ChartRepo {
    /// A repository reached without credentials.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The URL without any password written into it.
    pub fn redacted_url(&self) -> String {
        crate::render::redact_urls(&self.url)
    }

    /// Whether the chart comes from an OCI registry.
    pub fn is_oci(&self) -> bool {
        self.oci || self.url.starts_with("oci://")
    }

    fn basic(&self) -> Option<(&str, &str)> {
        match &self.credentials {
            Some(Credentials::Https { username, token }) => Some((username, token)),
            _ => None,
        }
    }
}

/// A chart version that a `targetRevision` picked, and where its archive is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The chart's name.
    pub chart: String,
    /// The version picked.
    pub version: String,
    /// `sha256:<hex>` of the archive, when the repository says it up front (an
    /// index entry's `digest`, a registry's layer digest).
    pub digest: Option<String>,
    /// Where the archive is downloaded from (no credentials in it).
    location: String,
}

impl Resolved {
    /// The revision shown for the app: `version (sha256:…)`.
    pub fn revision(&self) -> String {
        match &self.digest {
            Some(d) => format!("{} ({d})", self.version),
            None => self.version.clone(),
        }
    }
}

/// A chart archive on disk, named by its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The chart's name.
    pub chart: String,
    /// Its version.
    pub version: String,
    /// `sha256:<hex>` of the archive.
    pub digest: String,
    /// The `.tgz` in the cache.
    pub archive: PathBuf,
}

impl Pulled {
    /// The revision shown for the app: `version (sha256:…)`.
    pub fn revision(&self) -> String {
        format!("{} ({})", self.version, self.digest)
    }
}

/// Chart archives kept by digest under one folder, and the extra certificate
/// authorities chart repositories are trusted with.
pub struct ChartCache {
    root: PathBuf,
    extra_roots: Vec<Vec<u8>>,
    /// Archives served from the folder rather than fetched, for metrics and tests.
    hits: std::sync::atomic::AtomicU64,
}

impl ChartCache {
    /// A cache under `root`, created when the first archive is kept (a hub that
    /// renders no chart from a repository leaves no trace of one).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        // reqwest is built without a default provider; the hub's main installs
        // ring too, and a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Self {
            root,
            extra_roots: Vec::new(),
            hits: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Also trusts this PEM certificate authority for chart repositories.
    #[must_use]
    pub fn trust_root_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.extra_roots.push(pem.into());
        self
    }

    /// The extra certificate authorities, for helm's own fetches (dependencies).
    pub fn extra_roots(&self) -> &[Vec<u8>] {
        &self.extra_roots
    }

    /// How many archives were found in the cache instead of fetched.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Picks the version of `chart` in `repo` that `revision` asks for, reading
    /// only the index (or the registry's tags and manifest).
    pub async fn resolve(&self, repo: &ChartRepo, chart: &str, revision: &str) -> Result<Resolved> {
        let url = repo.redacted_url();
        let constraint = Constraint::parse(revision).ok_or_else(|| Error::InvalidConstraint {
            url: url.clone(),
            chart: chart.to_owned(),
            revision: revision.to_owned(),
        })?;
        let client = self.client(repo)?;
        if repo.is_oci() {
            oci::resolve(&client, repo, chart, revision, &constraint).await
        } else {
            index::resolve(&client, repo, chart, revision, &constraint).await
        }
    }

    /// The archive of `resolved`: from the cache when this repository's archive
    /// of that digest is there, else fetched, checked against the digest, and kept.
    pub async fn pull(&self, repo: &ChartRepo, resolved: &Resolved) -> Result<Pulled> {
        if let Some(digest) = &resolved.digest {
            let path = self.path_of(repo, digest);
            if path.is_file() {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(Pulled {
                    chart: resolved.chart.clone(),
                    version: resolved.version.clone(),
                    digest: digest.clone(),
                    archive: path,
                });
            }
        }
        let client = self.client(repo)?;
        let bytes = if repo.is_oci() {
            oci::fetch_blob(&client, repo, resolved).await?
        } else {
            index::fetch_archive(&client, repo, resolved).await?
        };
        let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        if let Some(want) = &resolved.digest
            && *want != digest
        {
            return Err(Error::DigestMismatch {
                url: repo.redacted_url(),
                chart: resolved.chart.clone(),
                version: resolved.version.clone(),
                want: want.clone(),
                got: digest,
            });
        }
        let path = self.path_of(repo, &digest);
        write_atomically(&self.root, &path, &bytes)?;
        Ok(Pulled {
            chart: resolved.chart.clone(),
            version: resolved.version.clone(),
            digest,
            archive: path,
        })
    }

    /// Where the archive of `digest` from `repo` is kept. The repository is part
    /// of the name: a digest alone would let one repository's index name another
    /// tenant's private chart by its digest and be served it from the cache.
    fn path_of(&self, repo: &ChartRepo, digest: &str) -> PathBuf {
        let hex_digest = digest.strip_prefix("sha256:").unwrap_or(digest);
        let origin = hex(&Sha256::digest(repo.url.as_bytes()));
        self.root
            .join(format!("{}-{hex_digest}.tgz", &origin[..16]))
    }

    /// A client for `repo`: the system's and the extra roots, the repository's
    /// client certificate, a time limit, and no redirects to plain HTTP.
    fn client(&self, repo: &ChartRepo) -> Result<reqwest::Client> {
        let failed = |reason: String| Error::Client {
            url: repo.redacted_url(),
            reason,
        };
        let mut certificates = Vec::new();
        for pem in &self.extra_roots {
            certificates.push(
                reqwest::Certificate::from_pem(pem)
                    .map_err(|e| failed(format!("invalid root certificate: {e}")))?,
            );
        }
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(15))
            .tls_certs_merge(certificates)
            .https_only(
                repo.url.starts_with("https://")
                    || (repo.is_oci() && !repo.url.starts_with("http://")),
            );
        if let Some(tls) = &repo.tls_client {
            let mut pem = tls.cert.clone().into_bytes();
            pem.push(b'\n');
            pem.extend_from_slice(tls.key.as_bytes());
            // The key's text never reaches the message: only that it did not load.
            let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
                failed(
                    "tlsClientCertData/tlsClientCertKey do not form a PEM certificate and key"
                        .to_owned(),
                )
            })?;
            builder = builder.identity(identity);
        }
        builder
            .build()
            .map_err(|e| failed(format!("building an HTTP client: {e}")))
    }
}

/// Reads a response body up to `limit` bytes.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A transport error as text, without the URL (which the caller names, redacted).
/// reqwest's own message carries the URL; its causes do not.
fn transport(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    crate::render::redact_urls(&text)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_atomically(root: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let cache = |source| Error::Cache {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(root).map_err(|source| Error::Cache {
        path: root.to_owned(),
        source,
    })?;
    let mut file = tempfile::NamedTempFile::new_in(root).map_err(cache)?;
    std::io::Write::write_all(&mut file, bytes).map_err(cache)?;
    file.persist(path).map_err(|e| cache(e.error))?;
    Ok(())
}

/// Whether `a` and `b` have the same scheme, host and port: Helm sends a
/// repository's credentials to a chart archive only then, unless told to pass them.
fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}
