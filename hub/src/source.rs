//! Git sources: bare clones and fetches with gix, revisions, trees read at a commit
//! without a worktree, and which paths changed between two commits.
//!
//! Start at [`RepoCache::fetch`], which turns a [`RepoSpec`] into a [`Repo`]; then
//! [`Repo::resolve`], [`Repo::files`], [`Repo::export`] and [`Repo::changed_paths`].
//! [`webhook::parse`] reads forge push payloads, and [`RepoSpec::from_argocd_secret`]
//! reads Argo CD's repository Secrets.
//!
//! Everything here is blocking (gix's async client speaks only git://): async callers
//! wrap calls in `tokio::task::spawn_blocking`.

mod cache;
mod repo;
mod spec;
mod tree;
pub mod webhook;

use std::time::Duration;

pub use cache::RepoCache;
pub use repo::{CommitId, Limits, Repo, RepoFile};
pub use spec::{Credentials, RepoSpec, RepoType, RepositorySecret, TlsClientCert};
pub use webhook::{PushEvent, PushedRef};

/// How often a repository is polled when no webhook arrives: 180 s, as in Argo CD.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(180);

/// The polling interval of one repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollInterval(pub Duration);

impl Default for PollInterval {
    fn default() -> Self {
        Self(DEFAULT_POLL_INTERVAL)
    }
}

/// What can fail while fetching a repository or reading from it.
///
/// Urls in messages never carry credentials: they are redacted with
/// [`RepoSpec::redacted_url`] before they reach an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository url is neither an https, ssh, file:// url nor a local path.
    #[error("invalid repository url {url:?}: {reason}")]
    InvalidUrl {
        /// The url, redacted.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The cache directory could not be created or written.
    #[error("failed to prepare the repository cache at {path}")]
    CacheDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A cached bare clone could not be created or opened.
    #[error("failed to open the bare clone of {url} at {path}")]
    Open {
        /// The repository url, redacted.
        url: String,
        /// The bare clone's directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: gix::Error,
    },
    /// The server refused the credentials, or asked for credentials that were not given.
    #[error("authentication failed for {url}")]
    Authentication {
        /// The repository url, redacted.
        url: String,
        /// The cause, which never carries the credentials.
        #[source]
        source: gix::Error,
    },
    /// Cloning or fetching failed for another reason than authentication.
    #[error("failed to fetch {url}")]
    Fetch {
        /// The repository url, redacted.
        url: String,
        /// The cause.
        #[source]
        source: gix::Error,
    },
    /// The ssh private key or known_hosts could not be written to a private temporary file.
    #[error("failed to write the ssh key or known_hosts for {url} to a temporary file")]
    SshFiles {
        /// The repository url, redacted.
        url: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No branch, tag, commit or HEAD in the repository matches the revision.
    #[error("unknown revision {revision:?} in {url}")]
    UnknownRevision {
        /// The revision as asked for.
        revision: String,
        /// The repository url, redacted.
        url: String,
    },
    /// The revision names an object that is not a commit and does not peel to one.
    #[error("revision {revision:?} in {url} is not a commit")]
    NotACommit {
        /// The revision as asked for.
        revision: String,
        /// The repository url, redacted.
        url: String,
    },
    /// A commit id is not a full hexadecimal object id.
    #[error("{commit:?} is not a full commit id")]
    InvalidCommitId {
        /// The text that was given.
        commit: String,
    },
    /// The commit is not in the bare clone.
    #[error("commit {commit} is not in {url}")]
    CommitNotFound {
        /// The commit id.
        commit: String,
        /// The repository url, redacted.
        url: String,
    },
    /// The path does not exist in the tree of the commit.
    #[error("path {path:?} does not exist at commit {commit} in {url}")]
    PathNotFound {
        /// The path as asked for.
        path: String,
        /// The commit id.
        commit: String,
        /// The repository url, redacted.
        url: String,
    },
    /// The path is absolute or climbs out of the repository with `..`.
    #[error("path {path:?} leaves the repository root of {url}")]
    PathOutsideRepo {
        /// The path as asked for.
        path: String,
        /// The repository url, redacted.
        url: String,
    },
    /// A symlink points outside the repository root.
    #[error(
        "symlink {link:?} -> {target:?} escapes the repository root at commit {commit} in {url}"
    )]
    SymlinkEscapes {
        /// The symlink's path from the repository root.
        link: String,
        /// The symlink's target, as stored.
        target: String,
        /// The commit id.
        commit: String,
        /// The repository url, redacted.
        url: String,
    },
    /// Symlinks point at each other, or at a directory that contains them.
    #[error("symlink {link:?} loops at commit {commit} in {url}")]
    SymlinkLoop {
        /// The symlink's path from the repository root.
        link: String,
        /// The commit id.
        commit: String,
        /// The repository url, redacted.
        url: String,
    },
    /// A file is larger than [`Limits::max_file_bytes`]; its contents were not read.
    #[error(
        "file {path:?} is {size} bytes, over the limit of {limit} bytes, at commit {commit} in {url}"
    )]
    FileTooLarge {
        /// The file's path from the repository root.
        path: String,
        /// The file's size.
        size: u64,
        /// The limit.
        limit: u64,
        /// The commit id.
        commit: String,
        /// The repository url, redacted.
        url: String,
    },
    /// The files under a path add up to more than [`Limits::max_total_bytes`].
    #[error("files under {path:?} add up to more than {limit} bytes at commit {commit} in {url}")]
    TotalTooLarge {
        /// The path as asked for.
        path: String,
        /// The limit.
        limit: u64,
        /// The commit id.
        commit: String,
        /// The repository url, redacted.
        url: String,
    },
    /// There are more files under a path than [`Limits::max_files`].
    #[error("more than {limit} files under {path:?} at commit {commit} in {url}")]
    TooManyFiles {
        /// The path as asked for.
        path: String,
        /// The limit.
        limit: usize,
        /// The commit id.
        commit: String,
        /// The repository url, redacted.
        url: String,
    },
    /// A tree entry has a name that cannot be a file name (`..`, `.git`, a `/`, ...).
    #[error("tree entry {name:?} under {path:?} has an unsafe name at commit {commit} in {url}")]
    UnsafeName {
        /// The entry's name.
        name: String,
        /// The directory holding it.
        path: String,
        /// The commit id.
        commit: String,
        /// The repository url, redacted.
        url: String,
    },
    /// An object could not be read from the bare clone.
    #[error("failed to read {what} from {url}")]
    Read {
        /// What was being read.
        what: String,
        /// The repository url, redacted.
        url: String,
        /// The cause.
        #[source]
        source: gix::Error,
    },
    /// A file or directory could not be written while exporting a tree.
    #[error("failed to write {path}")]
    Write {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Two trees could not be compared.
    #[error("failed to diff {from} against {to} in {url}")]
    Diff {
        /// The older commit.
        from: String,
        /// The newer commit.
        to: String,
        /// The repository url, redacted.
        url: String,
        /// The cause.
        #[source]
        source: gix::Error,
    },
    /// An Argo CD repository Secret could not be read.
    #[error("invalid Argo CD repository secret {name:?}: {reason}")]
    InvalidRepositorySecret {
        /// The Secret's metadata.name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An Argo CD repository Secret sets a field that Flotilla does not support.
    #[error("Argo CD repository secret {name:?} sets {field:?}, which Flotilla does not support")]
    UnsupportedSecretField {
        /// The Secret's metadata.name.
        name: String,
        /// The field.
        field: String,
    },
}

/// The result of the operations in [`source`](self).
pub type Result<T, E = Error> = std::result::Result<T, E>;
