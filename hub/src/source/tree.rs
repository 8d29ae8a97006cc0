//! Walking a tree at a commit: symlinks resolved inside the repository, sizes checked
//! from object headers before any contents are read.

use std::collections::VecDeque;

use gix::{ObjectId, bstr::ByteSlice as _, objs::tree::EntryKind};

use super::{Error, Limits, Result};

/// How many symlinks one path may pass through, as Linux's ELOOP limit.
const MAX_SYMLINK_HOPS: u32 = 40;
/// A symlink's target is a path; anything longer is not one.
const MAX_SYMLINK_TARGET_BYTES: u64 = 4096;

/// What errors name: the repository and the commit.
pub(super) struct Context {
    pub url: String,
    pub commit: String,
}

/// A file found by a [`Walk`], not yet read.
pub(super) struct Entry {
    /// Where the file appears, from the repository root.
    pub path: String,
    pub blob: ObjectId,
    pub executable: bool,
}

/// A node reached by resolving a path.
enum Node {
    Tree(ObjectId),
    Blob { id: ObjectId, executable: bool },
}

pub(super) struct Walk<'a> {
    repo: &'a gix::Repository,
    root: ObjectId,
    context: &'a Context,
    limits: &'a Limits,
    /// The path the caller asked for, named by limit errors.
    requested: String,
    total_bytes: u64,
    pub entries: Vec<Entry>,
}

/// `path` as `/`-separated components without `.` or empty ones, joined; `None`
/// when it is absolute or climbs out with `..`.
pub(super) fn normalize_path(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            name => parts.push(name),
        }
    }
    Some(parts.join("/"))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

impl<'a> Walk<'a> {
    pub fn new(
        repo: &'a gix::Repository,
        root: ObjectId,
        context: &'a Context,
        limits: &'a Limits,
        requested: &str,
    ) -> Self {
        Self {
            repo,
            root,
            context,
            limits,
            requested: requested.to_owned(),
            total_bytes: 0,
            entries: Vec::new(),
        }
    }

    /// Finds every file under `path`, checking each one's size from its header.
    pub fn collect(&mut self, path: &str) -> Result<()> {
        let normalized = normalize_path(path).ok_or_else(|| Error::PathOutsideRepo {
            path: path.to_owned(),
            url: self.context.url.clone(),
        })?;
        let components = if normalized.is_empty() {
            Vec::new()
        } else {
            normalized.split('/').map(str::to_owned).collect()
        };
        let not_found = || Error::PathNotFound {
            path: path.to_owned(),
            commit: self.context.commit.clone(),
            url: self.context.url.clone(),
        };
        match self.resolve(&components)?.ok_or_else(not_found)? {
            (_, Node::Blob { id, executable }) => self.add(normalized, id, executable),
            (canonical, Node::Tree(tree)) => {
                let mut expanding = vec![canonical.clone()];
                self.walk_dir(tree, &canonical, &normalized, &mut expanding)
            }
        }
    }

    /// Reads a file found by [`Walk::collect`].
    pub fn read(&self, entry: &Entry) -> Result<Vec<u8>> {
        let blob = self
            .repo
            .find_blob(entry.blob)
            .map_err(|source| self.read_error(&entry.path, source))?;
        Ok(blob.detach().data)
    }

    /// `dir` is the directory's real path; `shown` is where its files appear, which
    /// differs when the directory was reached through a symlink. `expanding` holds the
    /// real paths of the directories being walked, to find symlink loops.
    fn walk_dir(
        &mut self,
        tree: ObjectId,
        dir: &[String],
        shown: &str,
        expanding: &mut Vec<Vec<String>>,
    ) -> Result<()> {
        for (name, kind, id) in self.entries_of(tree, shown)? {
            let shown_path = join(shown, &name);
            match kind {
                EntryKind::Tree => {
                    let mut real = dir.to_vec();
                    real.push(name);
                    expanding.push(real.clone());
                    self.walk_dir(id, &real, &shown_path, expanding)?;
                    expanding.pop();
                }
                EntryKind::Blob => self.add(shown_path, id, false)?,
                EntryKind::BlobExecutable => self.add(shown_path, id, true)?,
                EntryKind::Link => {
                    let mut link = dir.to_vec();
                    link.push(name);
                    match self.resolve(&link)? {
                        None => {
                            tracing::warn!(link = %shown_path, "skipping a symlink whose target does not exist");
                        }
                        Some((_, Node::Blob { id, executable })) => {
                            self.add(shown_path, id, executable)?;
                        }
                        Some((target, Node::Tree(id))) => {
                            // A symlink to a directory that is being walked already would
                            // expand forever.
                            if expanding.iter().any(|d| d.starts_with(&target)) {
                                return Err(Error::SymlinkLoop {
                                    link: shown_path,
                                    commit: self.context.commit.clone(),
                                    url: self.context.url.clone(),
                                });
                            }
                            expanding.push(target.clone());
                            self.walk_dir(id, &target, &shown_path, expanding)?;
                            expanding.pop();
                        }
                    }
                }
                EntryKind::Commit => {
                    tracing::warn!(path = %shown_path, "skipping a submodule; submodules are not fetched");
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, path: String, blob: ObjectId, executable: bool) -> Result<()> {
        if self.entries.len() >= self.limits.max_files {
            return Err(Error::TooManyFiles {
                path: self.requested.clone(),
                limit: self.limits.max_files,
                commit: self.context.commit.clone(),
                url: self.context.url.clone(),
            });
        }
        let size = self.size_of(blob, &path)?;
        if size > self.limits.max_file_bytes {
            return Err(Error::FileTooLarge {
                path,
                size,
                limit: self.limits.max_file_bytes,
                commit: self.context.commit.clone(),
                url: self.context.url.clone(),
            });
        }
        self.total_bytes = self.total_bytes.saturating_add(size);
        if self.total_bytes > self.limits.max_total_bytes {
            return Err(Error::TotalTooLarge {
                path: self.requested.clone(),
                limit: self.limits.max_total_bytes,
                commit: self.context.commit.clone(),
                url: self.context.url.clone(),
            });
        }
        self.entries.push(Entry {
            path,
            blob,
            executable,
        });
        Ok(())
    }

    /// The size from the object's header: a packed or loose object's header is read
    /// without inflating its contents.
    fn size_of(&self, blob: ObjectId, path: &str) -> Result<u64> {
        self.repo
            .find_header(blob)
            .map(|header| header.size())
            .map_err(|source| self.read_error(path, source))
    }

    /// Follows `path` from the root, through symlinks, like a kernel would but never
    /// leaving the tree. Returns the real path and what is there, or `None` when
    /// nothing is.
    fn resolve(&self, path: &[String]) -> Result<Option<(Vec<String>, Node)>> {
        let mut pending: VecDeque<String> = path.iter().cloned().collect();
        let mut real: Vec<String> = Vec::new();
        let mut trees: Vec<ObjectId> = vec![self.root];
        let mut hops = 0;
        // The symlink being followed, for errors: (its path, its target).
        let mut following: Option<(String, String)> = None;
        while let Some(part) = pending.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    if real.pop().is_none() {
                        let (link, target) = following.clone().unwrap_or_default();
                        return Err(self.escapes(link, target));
                    }
                    trees.pop();
                    continue;
                }
                _ => {}
            }
            let Some(&current) = trees.last() else {
                return Ok(None);
            };
            let tree = self
                .repo
                .find_tree(current)
                .map_err(|source| self.read_error(&real.join("/"), source))?;
            let Some(entry) = tree.find_entry(part.as_bytes()) else {
                return Ok(None);
            };
            let (kind, id) = (entry.kind(), entry.object_id());
            match kind {
                EntryKind::Tree => {
                    real.push(part);
                    trees.push(id);
                }
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    if pending.iter().any(|p| !p.is_empty() && p != ".") {
                        // A file used as a directory.
                        return Ok(None);
                    }
                    real.push(part);
                    let executable = kind == EntryKind::BlobExecutable;
                    return Ok(Some((real, Node::Blob { id, executable })));
                }
                EntryKind::Link => {
                    let link = join(&real.join("/"), &part);
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(Error::SymlinkLoop {
                            link,
                            commit: self.context.commit.clone(),
                            url: self.context.url.clone(),
                        });
                    }
                    let target = self.link_target(id, &link)?;
                    if target.starts_with('/') {
                        return Err(self.escapes(link, target));
                    }
                    for component in target.split('/').rev() {
                        pending.push_front(component.to_owned());
                    }
                    following = Some((link, target));
                }
                EntryKind::Commit => return Ok(None),
            }
        }
        let Some(&tree) = trees.last() else {
            return Ok(None);
        };
        Ok(Some((real, Node::Tree(tree))))
    }

    fn link_target(&self, blob: ObjectId, link: &str) -> Result<String> {
        let size = self.size_of(blob, link)?;
        if size > MAX_SYMLINK_TARGET_BYTES {
            return Err(Error::FileTooLarge {
                path: link.to_owned(),
                size,
                limit: MAX_SYMLINK_TARGET_BYTES,
                commit: self.context.commit.clone(),
                url: self.context.url.clone(),
            });
        }
        let blob = self
            .repo
            .find_blob(blob)
            .map_err(|source| self.read_error(link, source))?;
        Ok(blob.data.to_str_lossy().into_owned())
    }

    /// A tree's entries, with names checked to be safe as file names.
    fn entries_of(
        &self,
        tree: ObjectId,
        shown: &str,
    ) -> Result<Vec<(String, EntryKind, ObjectId)>> {
        let tree = self
            .repo
            .find_tree(tree)
            .map_err(|source| self.read_error(shown, source))?;
        let decoded = tree
            .decode()
            .map_err(|source| self.read_error(shown, source))?;
        decoded
            .entries
            .iter()
            .map(|entry| {
                let unsafe_name = || Error::UnsafeName {
                    name: entry.filename.to_str_lossy().into_owned(),
                    path: shown.to_owned(),
                    commit: self.context.commit.clone(),
                    url: self.context.url.clone(),
                };
                let name = entry.filename.to_str().map_err(|_| unsafe_name())?;
                if name.is_empty()
                    || name == "."
                    || name == ".."
                    || name.eq_ignore_ascii_case(".git")
                    || name.contains(['/', '\\', '\0'])
                {
                    return Err(unsafe_name());
                }
                Ok((name.to_owned(), entry.mode.kind(), entry.oid.to_owned()))
            })
            .collect()
    }

    fn escapes(&self, link: String, target: String) -> Error {
        Error::SymlinkEscapes {
            link,
            target,
            commit: self.context.commit.clone(),
            url: self.context.url.clone(),
        }
    }

    fn read_error(&self, path: &str, source: gix::Error) -> Error {
        Error::Read {
            what: format!("{path:?} at commit {}", self.context.commit),
            url: self.context.url.clone(),
            source,
        }
    }
}
