//! Real repositories made with the `git` CLI.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Runs `git` isolated from the machine's configuration.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let home = std::env::temp_dir();
    let output = Command::new("git")
        .args(["-c", "init.defaultBranch=main", "-c", "core.symlinks=true"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", home)
        .env("GIT_AUTHOR_NAME", "Fleet Author")
        .env("GIT_AUTHOR_EMAIL", "author@fleet.test")
        .env("GIT_COMMITTER_NAME", "Fleet Author")
        .env("GIT_COMMITTER_EMAIL", "author@fleet.test")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A repository with a worktree, where tests write files and commit.
pub struct WorkRepo {
    pub dir: tempfile::TempDir,
}

impl WorkRepo {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        git(dir.path(), &["init", "-q"]);
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, path: &str, contents: &str) -> &Self {
        let full = self.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, contents).expect("write");
        self
    }

    pub fn symlink(&self, path: &str, target: &str) -> &Self {
        let full = self.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, full).expect("symlink");
        self
    }

    pub fn remove(&self, path: &str) -> &Self {
        git(self.path(), &["rm", "-rq", path]);
        self
    }

    /// Commits everything and returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        git(self.path(), &["add", "-A"]);
        git(
            self.path(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    pub fn head(&self) -> String {
        git(self.path(), &["rev-parse", "HEAD"])
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(self.path(), args)
    }

    /// A bare copy under `root`, as a Git server would hold it.
    pub fn bare_copy(&self, root: &Path, name: &str) -> PathBuf {
        let target = root.join(name);
        git(
            root,
            &[
                "clone",
                "-q",
                "--bare",
                self.path().to_str().expect("utf-8"),
                target.to_str().expect("utf-8"),
            ],
        );
        target
    }
}

/// The repository most tests read: an app with a base and overlays, a tag, a branch.
pub fn fleet_repo() -> WorkRepo {
    let repo = WorkRepo::new();
    repo.write(
        "apps/guestbook/base/kustomization.yaml",
        "resources:\n- deployment.yaml\n",
    )
    .write(
        "apps/guestbook/base/deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: guestbook\n",
    )
    .write(
        "apps/guestbook/overlays/prod/kustomization.yaml",
        "resources:\n- ../../base\nnamePrefix: prod-\n",
    )
    .write("apps/other/cm.yaml", "kind: ConfigMap\n")
    .write("README.md", "fleet\n");
    repo.commit("first");
    repo
}

pub fn cache() -> (tempfile::TempDir, flotilla_hub::source::RepoCache) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = flotilla_hub::source::RepoCache::new(dir.path().join("cache")).expect("cache");
    (dir, cache)
}
