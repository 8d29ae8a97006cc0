//! A bare clone: revisions, trees at a commit, and what changed between commits.

use std::{fmt, path::Path};

use gix::bstr::ByteSlice as _;

use super::{
    Error, Result,
    cache::REMOTE_HEAD,
    tree::{Context, Walk, normalize_path},
};

/// A full commit id, as lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(String);

impl CommitId {
    /// Parses a full commit id (40 hex digits for SHA-1).
    pub fn parse(hex: &str) -> Result<Self> {
        gix::ObjectId::from_hex(hex.as_bytes())
            .map(Self::from)
            .map_err(|_| Error::InvalidCommitId {
                commit: hex.to_owned(),
            })
    }

    /// The id as hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn object_id(&self) -> Result<gix::ObjectId> {
        gix::ObjectId::from_hex(self.0.as_bytes()).map_err(|_| Error::InvalidCommitId {
            commit: self.0.clone(),
        })
    }
}

impl From<gix::ObjectId> for CommitId {
    fn from(id: gix::ObjectId) -> Self {
        Self(id.to_string())
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for CommitId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Bounds on what is read from a tree, so a hostile or careless repository cannot
/// exhaust the hub's memory or disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest single file, in bytes. 16 MiB by default.
    pub max_file_bytes: u64,
    /// The largest sum of all files read or exported at once. 256 MiB by default.
    pub max_total_bytes: u64,
    /// The most files read or exported at once. 100,000 by default.
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 16 * 1024 * 1024,
            max_total_bytes: 256 * 1024 * 1024,
            max_files: 100_000,
        }
    }
}

/// A file read from a tree.
#[derive(Clone, PartialEq, Eq)]
pub struct RepoFile {
    /// The path from the repository root, `/`-separated. A file reached through a
    /// symlink has the symlink's path.
    pub path: String,
    /// The file's contents.
    pub contents: Vec<u8>,
}

impl fmt::Debug for RepoFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoFile")
            .field("path", &self.path)
            .field("len", &self.contents.len())
            .finish()
    }
}

/// A bare clone in a [`RepoCache`](super::RepoCache).
pub struct Repo {
    // Thread-safe, so a `Repo` can be held across awaits on any runtime thread; each
    // operation takes a cheap thread-local handle.
    repo: gix::ThreadSafeRepository,
    url: String,
}

impl fmt::Debug for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repo")
            .field("url", &self.url)
            .field("git_dir", &self.repo.git_dir())
            .finish()
    }
}

impl Repo {
    pub(super) fn open(dir: &Path, url: String) -> Result<Self> {
        let repo =
            gix::open_opts(dir, gix::open::Options::isolated()).map_err(|source| Error::Open {
                url: url.clone(),
                path: dir.to_owned(),
                source,
            })?;
        Ok(Self {
            repo: repo.into_sync(),
            url,
        })
    }

    fn local(&self) -> gix::Repository {
        self.repo.to_thread_local()
    }

    /// The repository url, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bare clone's directory.
    pub fn git_dir(&self) -> &Path {
        self.repo.git_dir()
    }

    /// Resolves a branch, a tag, a full or abbreviated commit id, a full ref name or
    /// `HEAD` (the remote's default branch) to a commit.
    ///
    /// Branches win over tags of the same name, as in Argo CD.
    pub fn resolve(&self, revision: &str) -> Result<CommitId> {
        let repo = self.local();
        let _span = tracing::debug_span!("resolve", repo = %self.url, revision).entered();
        let unknown = || Error::UnknownRevision {
            revision: revision.to_owned(),
            url: self.url.clone(),
        };
        let revision_trimmed = revision.trim();
        if revision_trimmed.is_empty() {
            return Err(unknown());
        }
        let mut candidates: Vec<String> = Vec::new();
        if revision_trimmed == "HEAD" {
            candidates.push(REMOTE_HEAD.to_owned());
        } else if revision_trimmed.starts_with("refs/") {
            candidates.push(revision_trimmed.to_owned());
        } else {
            candidates.push(format!("refs/heads/{revision_trimmed}"));
            candidates.push(format!("refs/tags/{revision_trimmed}"));
        }
        for name in &candidates {
            let found = repo
                .try_find_reference(name.as_str())
                .map_err(|source| self.read_error(format!("reference {name}"), source))?;
            if let Some(mut reference) = found {
                let id = reference
                    .peel_to_id()
                    .map_err(|source| self.read_error(format!("reference {name}"), source))?;
                return self.peel_to_commit(id.detach(), revision);
            }
        }
        let is_hex = revision_trimmed.len() >= 4
            && revision_trimmed.len() <= 64
            && revision_trimmed.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex {
            return Err(unknown());
        }
        // Not found and ambiguous are alike: an abbreviation must name exactly one object.
        let lowercase = revision_trimmed.to_ascii_lowercase();
        let prefix = gix::hash::Prefix::from_hex(&lowercase).map_err(|_| unknown())?;
        match repo.objects.lookup_prefix(prefix, None) {
            Ok(Some(Ok(id))) => self.peel_to_commit(id, revision),
            Ok(_) => Err(unknown()),
            Err(source) => Err(self.read_error(
                format!("objects with prefix {lowercase}"),
                gix::Error::from_error(source),
            )),
        }
    }

    fn peel_to_commit(&self, id: gix::ObjectId, revision: &str) -> Result<CommitId> {
        let repo = self.local();
        let object = repo
            .find_object(id)
            .map_err(|source| self.read_error(format!("object {id}"), source))?;
        let commit = object.peel_to_commit().map_err(|_| Error::NotACommit {
            revision: revision.to_owned(),
            url: self.url.clone(),
        })?;
        Ok(commit.id.into())
    }

    /// Every file under `path` at `commit`, recursively, read from the object
    /// database without a worktree. `path` may name a single file; `""` or `"."` is
    /// the whole tree.
    ///
    /// Symlinks inside the repository are followed; one escaping it is an
    /// [`Error::SymlinkEscapes`]. Sizes are checked from object headers before any
    /// contents are read.
    pub fn files(&self, commit: &CommitId, path: &str, limits: &Limits) -> Result<Vec<RepoFile>> {
        let repo = self.local();
        let _span =
            tracing::debug_span!("files", repo = %self.url, commit = %commit, path).entered();
        let context = self.context(commit);
        let tree = self.commit_tree(commit)?;
        let mut walk = Walk::new(&repo, tree, &context, limits, path);
        walk.collect(path)?;
        walk.entries
            .iter()
            .map(|entry| {
                Ok(RepoFile {
                    path: entry.path.clone(),
                    contents: walk.read(entry)?,
                })
            })
            .collect()
    }

    /// Writes the whole tree at `commit` into `dest` as plain files, for tools such as
    /// kustomize and helm that need a directory. Symlinks are written as the files or
    /// directories they point to, so nothing in `dest` points outside it.
    pub fn export(&self, commit: &CommitId, dest: &Path, limits: &Limits) -> Result<()> {
        let repo = self.local();
        let _span = tracing::debug_span!("export", repo = %self.url, commit = %commit, dest = %dest.display()).entered();
        let context = self.context(commit);
        let tree = self.commit_tree(commit)?;
        let mut walk = Walk::new(&repo, tree, &context, limits, "");
        walk.collect("")?;
        let write_error = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Write { path, source }
        };
        std::fs::create_dir_all(dest).map_err(write_error(dest))?;
        for entry in &walk.entries {
            let target = dest.join(&entry.path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(write_error(parent))?;
            }
            let contents = walk.read(entry)?;
            std::fs::write(&target, &contents).map_err(write_error(&target))?;
            #[cfg(unix)]
            if entry.executable {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                    .map_err(write_error(&target))?;
            }
        }
        Ok(())
    }

    /// The paths of files added, removed or changed between two commits, sorted.
    /// A rename shows as its old and its new path.
    pub fn changed_paths(&self, from: &CommitId, to: &CommitId) -> Result<Vec<String>> {
        let repo = self.local();
        let _span = tracing::debug_span!("changed_paths", repo = %self.url, from = %from, to = %to)
            .entered();
        let old = self.commit_tree(from)?;
        let new = self.commit_tree(to)?;
        let old = repo
            .find_tree(old)
            .map_err(|source| self.read_error(format!("the tree of {from}"), source))?;
        let new = repo
            .find_tree(new)
            .map_err(|source| self.read_error(format!("the tree of {to}"), source))?;
        let changes = repo
            .diff_tree_to_tree(&old, &new, gix::diff::Options::default())
            .map_err(|source| Error::Diff {
                from: from.to_string(),
                to: to.to_string(),
                url: self.url.clone(),
                source,
            })?;
        let mut paths: Vec<String> = changes
            .iter()
            .filter(|change| !change.entry_mode().is_tree())
            .flat_map(|change| {
                let source = change.source_location();
                let location = change.location();
                if source == location {
                    vec![location.to_str_lossy().into_owned()]
                } else {
                    vec![
                        source.to_str_lossy().into_owned(),
                        location.to_str_lossy().into_owned(),
                    ]
                }
            })
            .collect();
        paths.sort();
        paths.dedup();
        Ok(paths)
    }

    /// `path` as [`Repo::files`] reads it: `/`-separated, without `./`, empty for
    /// the root. Fails for a path that leaves the repository.
    pub fn normalize_path(&self, path: &str) -> Result<String> {
        normalize_path(path).ok_or_else(|| Error::PathOutsideRepo {
            path: path.to_owned(),
            url: self.url.clone(),
        })
    }

    fn context(&self, commit: &CommitId) -> Context {
        Context {
            url: self.url.clone(),
            commit: commit.to_string(),
        }
    }

    fn commit_tree(&self, commit: &CommitId) -> Result<gix::ObjectId> {
        let repo = self.local();
        let id = commit.object_id()?;
        let not_found = || Error::CommitNotFound {
            commit: commit.to_string(),
            url: self.url.clone(),
        };
        let object = repo
            .try_find_object(id)
            .map_err(|source| self.read_error(format!("commit {commit}"), source))?
            .ok_or_else(not_found)?;
        let commit = object.try_into_commit().map_err(|_| not_found())?;
        commit
            .tree_id()
            .map(|id| id.detach())
            .map_err(|source| self.read_error(format!("the tree of commit {}", commit.id), source))
    }

    fn read_error(&self, what: String, source: gix::Error) -> Error {
        Error::Read {
            what,
            url: self.url.clone(),
            source,
        }
    }
}
