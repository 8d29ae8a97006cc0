//! One bare clone per repository url, fetched on demand.

use std::{
    collections::{HashMap, HashSet},
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::AtomicBool},
};

use gix::bstr::ByteSlice as _;
use sha2::Digest as _;

use super::{Credentials, Error, Repo, RepoSpec, Result};

/// What is fetched: every branch and tag, and the remote's HEAD, which is kept under
/// `refs/remotes/origin/HEAD` because a bare clone's own HEAD is not the remote's.
const REFSPECS: [&str; 3] = [
    "+refs/heads/*:refs/heads/*",
    "+refs/tags/*:refs/tags/*",
    "+HEAD:refs/remotes/origin/HEAD",
];

/// Where the remote's HEAD is kept in a bare clone.
pub(super) const REMOTE_HEAD: &str = "refs/remotes/origin/HEAD";

/// Keeps one bare clone per repository url under a directory. No worktree is ever
/// checked out: trees are read straight from the object database.
#[derive(Debug)]
pub struct RepoCache {
    root: PathBuf,
    extra_root_certificates: Vec<Vec<u8>>,
    // Two fetches of one repository at once would fight over its ref locks.
    locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

impl RepoCache {
    /// A cache rooted at `root`, which is created when missing.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| Error::CacheDir {
            path: root.clone(),
            source,
        })?;
        Ok(Self {
            root,
            extra_root_certificates: Vec::new(),
            locks: Mutex::default(),
        })
    }

    /// Also trusts this PEM certificate authority for https repositories, on top of
    /// the system's roots: for Git servers with a private CA.
    #[must_use]
    pub fn trust_root_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.extra_root_certificates.push(pem.into());
        self
    }

    /// The directory holding every bare clone.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the bare clone of `spec` lives: a folder named by a hash of the url
    /// (without any password written into it).
    pub fn clone_dir(&self, spec: &RepoSpec) -> PathBuf {
        let digest = sha2::Sha256::digest(spec.redacted_url().trim().as_bytes());
        let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.root.join(format!("{name}.git"))
    }

    /// Clones `spec` bare on first use and fetches every branch and tag afterwards.
    /// Branches and tags deleted on the remote are deleted here too.
    pub fn fetch(&self, spec: &RepoSpec) -> Result<Repo> {
        self.fetch_interruptible(spec, &AtomicBool::new(false))
    }

    /// [`RepoCache::fetch`], giving up while receiving once `interrupt` is set (by a
    /// caller whose deadline passed).
    pub fn fetch_interruptible(&self, spec: &RepoSpec, interrupt: &AtomicBool) -> Result<Repo> {
        let url = spec.redacted_url();
        let _span = tracing::info_span!("fetch", repo = %url).entered();
        validate_url(spec, &url)?;
        let dir = self.clone_dir(spec);

        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(dir.clone()).or_default())
        };
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());

        if dir.join("HEAD").is_file() {
            tracing::debug!(path = %dir.display(), "fetching into the existing bare clone");
            self.fetch_into(&dir, spec, &url, interrupt)?;
        } else {
            // Clone into a temporary folder and rename it, so a clone that failed half
            // way never looks like a complete one.
            let staging = tempfile::Builder::new()
                .prefix(".clone-")
                .tempdir_in(&self.root)
                .map_err(|source| Error::CacheDir {
                    path: self.root.clone(),
                    source,
                })?;
            tracing::info!(path = %dir.display(), "cloning bare");
            gix::ThreadSafeRepository::init_opts(
                staging.path(),
                gix::create::Kind::Bare,
                gix::create::Options::default(),
                open_options(),
            )
            .map_err(|source| Error::Open {
                url: url.clone(),
                path: staging.path().to_owned(),
                source,
            })?;
            self.fetch_into(staging.path(), spec, &url, interrupt)?;
            let staged = staging.keep();
            if let Err(source) = std::fs::rename(&staged, &dir) {
                let _ = std::fs::remove_dir_all(&staged);
                return Err(Error::CacheDir { path: dir, source });
            }
        }
        Repo::open(&dir, url)
    }

    fn fetch_into(
        &self,
        dir: &Path,
        spec: &RepoSpec,
        url: &str,
        interrupt: &AtomicBool,
    ) -> Result<()> {
        let ssh_files = match &spec.credentials {
            Some(Credentials::Ssh {
                private_key,
                known_hosts,
            }) => Some(
                SshFiles::write(&self.root, private_key, known_hosts.as_deref()).map_err(
                    |source| Error::SshFiles {
                        url: url.to_owned(),
                        source,
                    },
                )?,
            ),
            _ => None,
        };
        let mut options = open_options();
        if let Some(files) = &ssh_files {
            options = options.config_overrides([
                format!("core.sshCommand={}", files.command()),
                "ssh.variant=ssh".to_owned(),
            ]);
        }
        let repo = gix::open_opts(dir, options).map_err(|source| Error::Open {
            url: url.to_owned(),
            path: dir.to_owned(),
            source,
        })?;
        let fetch_error = |source: gix::Error| classify_fetch_error(url, source);

        let remote = repo
            .remote_at(spec.url.as_str())
            .map_err(fetch_error)?
            .with_refspecs(REFSPECS, gix::remote::Direction::Fetch)
            .map_err(fetch_error)?
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let mut connection = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(fetch_error)?;
        if is_http(&spec.url) && !self.extra_root_certificates.is_empty() {
            let options = http_options(&repo, &spec.url, &self.extra_root_certificates)
                .map_err(fetch_error)?;
            connection.set_transport_options(options);
        }
        let https_identity = match &spec.credentials {
            Some(Credentials::Https { username, token }) => Some(gix::sec::identity::Account {
                username: username.clone(),
                password: token.clone(),
                oauth_refresh_token: None,
            }),
            _ => None,
        };
        // Only the given credentials are ever offered: never the host's helpers or a prompt.
        let connection = connection.with_credentials(move |action| match action {
            gix::credentials::helper::Action::Get(context) => {
                Ok(https_identity
                    .clone()
                    .map(|identity| gix::credentials::protocol::Outcome {
                        identity,
                        next: context.into(),
                    }))
            }
            _ => Ok(None),
        });
        let outcome = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(fetch_error)?
            .receive(gix::progress::Discard, interrupt)
            .map_err(fetch_error)?;

        let kept: HashSet<Vec<u8>> = outcome
            .ref_map
            .mappings
            .iter()
            .filter_map(|m| m.local.as_ref().map(|l| l.to_vec()))
            .collect();
        prune(&repo, &kept, url)?;
        drop(ssh_files);
        Ok(())
    }
}

/// Deletes branches and tags that the remote no longer has.
fn prune(repo: &gix::Repository, kept: &HashSet<Vec<u8>>, url: &str) -> Result<()> {
    let read_error = |source: gix::Error| Error::Read {
        what: "references".into(),
        url: url.to_owned(),
        source,
    };
    let platform = repo.references().map_err(read_error)?;
    let mut stale = Vec::new();
    for prefix in ["refs/heads/", "refs/tags/"] {
        for reference in platform.prefixed(prefix).map_err(read_error)? {
            let reference = reference.map_err(read_error)?;
            let name = reference.name().as_bstr().to_vec();
            if !kept.contains(&name) {
                stale.push(reference.name().to_owned());
            }
        }
    }
    for name in stale {
        tracing::info!(reference = %name.as_bstr(), "deleting a reference the remote no longer has");
        repo.find_reference(&name)
            .and_then(|reference| reference.delete())
            .map_err(read_error)?;
    }
    Ok(())
}

/// Repositories are opened without the host's git configuration or environment, so
/// what a fetch does depends only on the [`RepoSpec`].
fn open_options() -> gix::open::Options {
    gix::open::Options::isolated()
}

fn is_http(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

fn validate_url(spec: &RepoSpec, redacted: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redacted.to_owned(),
        reason,
    };
    let parsed = gix::url::parse(spec.url.trim().as_bytes().as_bstr())
        .map_err(|e| invalid(redact_in(&e.to_string(), spec)))?;
    use gix::url::Scheme;
    match (&parsed.scheme, &spec.credentials) {
        (Scheme::Http, _) => Err(invalid(
            "plain http is refused; use https, ssh or a local path".into(),
        )),
        (Scheme::Https | Scheme::File, Some(Credentials::Ssh { .. })) => Err(invalid(
            "an ssh private key is given for a url that is not ssh".into(),
        )),
        (Scheme::Ssh | Scheme::File, Some(Credentials::Https { .. })) => Err(invalid(
            "a username and token are given for a url that is not https".into(),
        )),
        (Scheme::Https | Scheme::Ssh | Scheme::File, _) => Ok(()),
        (other, _) => Err(invalid(format!("the {other} scheme is not supported"))),
    }
}

/// Removes any credential in `spec` from a message that might quote the url.
fn redact_in(message: &str, spec: &RepoSpec) -> String {
    let mut message = message.replace(&spec.url, &spec.redacted_url());
    if let Some(Credentials::Https { token, .. }) = &spec.credentials
        && !token.is_empty()
    {
        message = message.replace(token.as_str(), "<redacted>");
    }
    message
}

fn classify_fetch_error(url: &str, source: gix::Error) -> Error {
    let classes = source.classify();
    let auth = source.classify().is_unauthenticated()
        || classes.is_permission_denied()
        || source.iter_errors().any(|e| {
            e.downcast_ref::<gix::protocol::transport::client::Error>()
                .is_some_and(|e| {
                    matches!(
                        e,
                        gix::protocol::transport::client::Error::AuthenticationRefused(_)
                    )
                })
                || e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
        });
    let url = url.to_owned();
    if auth {
        Error::Authentication { url, source }
    } else {
        Error::Fetch { url, source }
    }
}

/// gix's reqwest transport ignores `http.sslCAInfo`; extra roots go in through its
/// client hook instead.
fn http_options(
    repo: &gix::Repository,
    url: &str,
    roots: &[Vec<u8>],
) -> gix::Result<Box<dyn std::any::Any>> {
    use gix::protocol::transport::client::blocking_io::http;
    let mut certificates = Vec::new();
    for pem in roots {
        certificates.push(reqwest::Certificate::from_pem(pem).map_err(|e| {
            gix::error::ErrorExt::raise(gix::error::message!("invalid root certificate: {e}"))
        })?);
    }
    let mut options = repo
        .transport_options(url, None)?
        .and_then(|o| o.downcast::<http::Options>().ok())
        .map(|o| *o)
        .unwrap_or_default();
    let backend = http::reqwest::Options {
        configure_client: Some(Box::new(move |builder| {
            Ok(builder.tls_certs_merge(certificates.clone()))
        })),
        configure_request: None,
    };
    options.backend = Some(Arc::new(Mutex::new(backend)));
    Ok(Box::new(options))
}

/// The ssh key and known_hosts, in private temporary files for the `ssh` binary that
/// gix runs. They are removed when this is dropped.
struct SshFiles {
    dir: tempfile::TempDir,
    known_hosts: bool,
}

impl SshFiles {
    fn write(root: &Path, private_key: &str, known_hosts: Option<&str>) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix(".ssh-").tempdir_in(root)?;
        write_private(&dir.path().join("key"), private_key)?;
        if let Some(hosts) = known_hosts {
            write_private(&dir.path().join("known_hosts"), hosts)?;
        }
        Ok(Self {
            dir,
            known_hosts: known_hosts.is_some(),
        })
    }

    fn command(&self) -> String {
        let dir = self.dir.path();
        let mut command = format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes",
            shell_quote(&dir.join("key"))
        );
        if self.known_hosts {
            command.push_str(&format!(
                " -o UserKnownHostsFile={}",
                shell_quote(&dir.join("known_hosts"))
            ));
        }
        command
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    // ssh refuses a key without a final newline.
    if !contents.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    file.sync_all()
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
