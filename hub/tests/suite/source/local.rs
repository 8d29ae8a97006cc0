//! Fetching from local paths and file:// urls, and reading what was fetched.

use flotilla_hub::source::{CommitId, Error, Limits, RepoSpec};

use crate::support::source::{cache, fleet_repo};

fn commit(hex: &str) -> CommitId {
    CommitId::parse(hex).expect("commit id")
}

fn paths(files: &[flotilla_hub::source::RepoFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn a_local_path_and_a_file_url_fetch_the_same_commit_into_bare_clones() {
    let work = fleet_repo();
    let (_dir, cache) = cache();
    let by_path = cache
        .fetch(&RepoSpec::new(work.path().to_str().expect("utf-8")))
        .expect("fetch by path");
    let url = format!("file://{}", work.path().display());
    let by_url = cache
        .fetch(&RepoSpec::new(url.clone()))
        .expect("fetch by url");

    assert_eq!(by_path.resolve("main").expect("main").as_str(), work.head());
    assert_eq!(by_url.resolve("main").expect("main").as_str(), work.head());
    assert_ne!(by_path.git_dir(), by_url.git_dir(), "one clone per url");
    for repo in [&by_path, &by_url] {
        assert!(repo.git_dir().join("HEAD").is_file());
        assert!(!repo.git_dir().join(".git").exists(), "bare: no worktree");
        assert!(!repo.git_dir().join("README.md").exists(), "no checkout");
        assert!(repo.git_dir().starts_with(cache.root()));
    }
}

#[test]
fn a_tag_a_branch_a_short_sha_and_head_all_resolve() {
    let work = fleet_repo();
    let first = work.head();
    work.git(&["tag", "v1.0.0"]);
    work.git(&["tag", "-a", "-m", "annotated", "v1.0.1"]);
    work.git(&["checkout", "-q", "-b", "feature"]);
    work.write("apps/other/cm.yaml", "kind: ConfigMap\ndata: {}\n");
    let feature = work.commit("feature work");
    work.git(&["checkout", "-q", "main"]);

    let (_dir, cache) = cache();
    let repo = cache
        .fetch(&RepoSpec::new(work.path().to_str().expect("utf-8")))
        .expect("fetch");
    let resolve = |revision: &str| repo.resolve(revision).expect(revision).to_string();
    assert_eq!(resolve("main"), first);
    assert_eq!(
        resolve("HEAD"),
        first,
        "HEAD is the remote's default branch"
    );
    assert_eq!(resolve("feature"), feature);
    assert_eq!(resolve("refs/heads/feature"), feature);
    assert_eq!(resolve("v1.0.0"), first);
    assert_eq!(
        resolve("v1.0.1"),
        first,
        "annotated tags peel to their commit"
    );
    assert_eq!(resolve(&feature), feature);
    assert_eq!(resolve(&feature[..7]), feature);
    assert_eq!(resolve(&feature[..10].to_uppercase()), feature);
}

#[test]
fn an_unknown_revision_names_the_revision_and_repo() {
    let work = fleet_repo();
    let (_dir, cache) = cache();
    let url = work.path().to_str().expect("utf-8").to_owned();
    let repo = cache.fetch(&RepoSpec::new(url.clone())).expect("fetch");
    for revision in ["no-such-branch", "deadbeef", "v9"] {
        let err = repo.resolve(revision).expect_err(revision);
        assert!(
            matches!(&err, Error::UnknownRevision { revision: r, url: u } if r == revision && *u == url),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(revision) && message.contains(&url),
            "{message}"
        );
    }
}

#[test]
fn a_second_fetch_sees_new_commits_new_tags_and_deleted_branches() {
    let work = fleet_repo();
    work.git(&["branch", "short-lived"]);
    let (_dir, cache) = cache();
    let spec = RepoSpec::new(work.path().to_str().expect("utf-8"));
    let repo = cache.fetch(&spec).expect("first fetch");
    assert!(repo.resolve("short-lived").is_ok());

    work.write("apps/other/cm.yaml", "kind: ConfigMap\ndata:\n  a: b\n");
    let second = work.commit("second");
    work.git(&["tag", "v2"]);
    work.git(&["branch", "-D", "short-lived"]);

    let repo = cache.fetch(&spec).expect("second fetch");
    assert_eq!(repo.resolve("main").expect("main").as_str(), second);
    assert_eq!(repo.resolve("v2").expect("v2").as_str(), second);
    assert!(matches!(
        repo.resolve("short-lived"),
        Err(Error::UnknownRevision { .. })
    ));
}

#[test]
fn files_under_a_path_are_read_recursively_from_the_tree() {
    let work = fleet_repo();
    let (_dir, cache) = cache();
    let repo = cache
        .fetch(&RepoSpec::new(work.path().to_str().expect("utf-8")))
        .expect("fetch");
    let head = repo.resolve("HEAD").expect("head");
    let files = repo
        .files(&head, "apps/guestbook", &Limits::default())
        .expect("files");
    assert_eq!(
        paths(&files),
        [
            "apps/guestbook/base/deployment.yaml",
            "apps/guestbook/base/kustomization.yaml",
            "apps/guestbook/overlays/prod/kustomization.yaml",
        ]
    );
    assert_eq!(files[1].contents, b"resources:\n- deployment.yaml\n");

    for spelling in ["./apps/guestbook/", "apps//guestbook/."] {
        let again = repo
            .files(&head, spelling, &Limits::default())
            .expect(spelling);
        assert_eq!(again, files);
    }
    let one = repo
        .files(&head, "README.md", &Limits::default())
        .expect("a single file");
    assert_eq!(paths(&one), ["README.md"]);
    let all = repo.files(&head, "", &Limits::default()).expect("root");
    assert_eq!(all.len(), 5);
}

#[test]
fn a_missing_path_names_the_path_commit_and_repo() {
    let work = fleet_repo();
    let (_dir, cache) = cache();
    let url = work.path().to_str().expect("utf-8").to_owned();
    let repo = cache.fetch(&RepoSpec::new(url.clone())).expect("fetch");
    let head = repo.resolve("main").expect("main");
    for path in ["apps/missing", "README.md/inside"] {
        let err = repo.files(&head, path, &Limits::default()).expect_err(path);
        assert!(
            matches!(&err, Error::PathNotFound { path: p, commit, url: u }
                if p == path && commit == head.as_str() && *u == url),
            "{err:?}"
        );
    }
    let err = repo
        .files(&head, "../elsewhere", &Limits::default())
        .expect_err("climbs out");
    assert!(matches!(err, Error::PathOutsideRepo { .. }), "{err:?}");
    let unknown = commit("0123456789012345678901234567890123456789");
    let err = repo
        .files(&unknown, "apps", &Limits::default())
        .expect_err("unknown commit");
    assert!(matches!(err, Error::CommitNotFound { .. }), "{err:?}");
}

#[test]
fn symlinks_inside_the_repo_are_followed() {
    let work = fleet_repo();
    work.symlink(
        "apps/linked/kustomization.yaml",
        "../guestbook/base/kustomization.yaml",
    )
    .symlink("apps/linked/base", "../guestbook/base")
    .symlink("apps/linked/chain", "base/deployment.yaml")
    .symlink("apps/linked/dangling", "nowhere.yaml");
    let head = work.commit("links");
    let (_dir, cache) = cache();
    let repo = cache
        .fetch(&RepoSpec::new(work.path().to_str().expect("utf-8")))
        .expect("fetch");
    let files = repo
        .files(&commit(&head), "apps/linked", &Limits::default())
        .expect("files");
    assert_eq!(
        paths(&files),
        [
            "apps/linked/base/deployment.yaml",
            "apps/linked/base/kustomization.yaml",
            "apps/linked/chain",
            "apps/linked/kustomization.yaml",
        ],
        "a dangling symlink is skipped"
    );
    assert_eq!(files[3].contents, b"resources:\n- deployment.yaml\n");
    assert!(files[2].contents.starts_with(b"apiVersion: apps/v1"));
}

#[test]
fn a_symlink_escaping_the_repo_is_refused() {
    let work = fleet_repo();
    work.symlink("apps/evil/passwd", "../../../etc/passwd")
        .symlink("apps/absolute/passwd", "/etc/passwd")
        .symlink("apps/sneaky/up", "..")
        .symlink("apps/sneaky/out", "up/../../..");
    let head = commit(&work.commit("escapes"));
    let (_dir, cache) = cache();
    let repo = cache
        .fetch(&RepoSpec::new(work.path().to_str().expect("utf-8")))
        .expect("fetch");
    for (path, link) in [
        ("apps/evil", "apps/evil/passwd"),
        ("apps/absolute", "apps/absolute/passwd"),
    ] {
        let err = repo.files(&head, path, &Limits::default()).expect_err(path);
        assert!(
            matches!(&err, Error::SymlinkEscapes { link: l, .. } if l == link),
            "{err:?}"
        );
        assert!(err.to_string().contains(link), "{err}");
    }
    let err = repo
        .files(&head, "apps/sneaky/out", &Limits::default())
        .expect_err("escapes through another link");
    assert!(matches!(err, Error::SymlinkEscapes { .. }), "{err:?}");
    // Paths beside the bad links still read.
    assert!(
        repo.files(&head, "apps/guestbook", &Limits::default())
            .is_ok()
    );
    let export = tempfile::tempdir().expect("tempdir");
    let err = repo
        .export(&head, export.path(), &Limits::default())
        .expect_err("export walks everything");
    assert!(matches!(err, Error::SymlinkEscapes { .. }), "{err:?}");
}

#[test]
fn a_symlink_loop_is_refused() {
    let work = fleet_repo();
    work.symlink("apps/loop/a", "b")
        .symlink("apps/loop/b", "a")
        .symlink("apps/cycle/parent", "..");
    let head = commit(&work.commit("loops"));
    let (_dir, cache) = cache();
    let repo = cache
        .fetch(&RepoSpec::new(work.path().to_str().expect("utf-8")))
        .expect("fetch");
    for path in ["apps/loop", "apps/cycle"] {
        let err = repo.files(&head, path, &Limits::default()).expect_err(path);
        assert!(matches!(err, Error::SymlinkLoop { .. }), "{path}: {err:?}");
    }
}

/// The peak resident set of this process since the last reset, in bytes.
fn peak_rss_reset() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_reading() {
    let _alone = crate::support::alone_blocking();
    let work = fleet_repo();
    let big = work.path().join("apps/big/blob.bin");
    std::fs::create_dir_all(big.parent().expect("parent")).expect("mkdir");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(100 * 1024 * 1024))
        .expect("a sparse 100 MiB file");
    work.write("apps/big/small.yaml", "kind: ConfigMap\n");
    let head = commit(&work.commit("a 100 MiB file"));
    let (_dir, cache) = cache();
    let repo = cache
        .fetch(&RepoSpec::new(work.path().to_str().expect("utf-8")))
        .expect("fetch");

    let measured = peak_rss_reset();
    let before = peak_rss();
    let err = repo
        .files(&head, "apps/big", &Limits::default())
        .expect_err("over the limit");
    let after = peak_rss();
    assert!(
        matches!(&err, Error::FileTooLarge { path, size, limit, .. }
            if path == "apps/big/blob.bin" && *size == 100 * 1024 * 1024 && *limit == 16 * 1024 * 1024),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("apps/big/blob.bin") && message.contains("16777216"),
        "{message}"
    );
    if let (true, Some(before), Some(after)) = (measured, before, after) {
        assert!(
            after.saturating_sub(before) < 32 * 1024 * 1024,
            "the peak resident set grew by {} bytes: the file was read",
            after - before
        );
    }

    let export = tempfile::tempdir().expect("tempdir");
    let err = repo
        .export(&head, export.path(), &Limits::default())
        .expect_err("export has the same limit");
    assert!(matches!(err, Error::FileTooLarge { .. }), "{err:?}");
    assert!(!export.path().join("apps/big/blob.bin").exists());
}

#[test]
fn the_total_size_and_file_count_limits_are_enforced() {
    let work = fleet_repo();
    for i in 0..10 {
        work.write(&format!("apps/many/{i}.yaml"), &"x".repeat(1000));
    }
    let head = commit(&work.commit("many files"));
    let (_dir, cache) = cache();
    let repo = cache
        .fetch(&RepoSpec::new(work.path().to_str().expect("utf-8")))
        .expect("fetch");
    let total = Limits {
        max_total_bytes: 5_000,
        ..Limits::default()
    };
    let err = repo.files(&head, "apps/many", &total).expect_err("total");
    assert!(
        matches!(&err, Error::TotalTooLarge { path, limit: 5_000, .. } if path == "apps/many"),
        "{err:?}"
    );
    let count = Limits {
        max_files: 9,
        ..Limits::default()
    };
    let err = repo.files(&head, "apps/many", &count).expect_err("count");
    assert!(
        matches!(err, Error::TooManyFiles { limit: 9, .. }),
        "{err:?}"
    );
    assert_eq!(
        repo.files(&head, "apps/many", &Limits::default())
            .expect("within limits")
            .len(),
        10
    );
}

#[test]
fn export_writes_the_whole_tree_so_overlays_reach_their_base() {
    let work = fleet_repo();
    work.symlink("apps/linked/base", "../guestbook/base");
    work.write("scripts/render.sh", "#!/bin/sh\n");
    std::fs::set_permissions(
        work.path().join("scripts/render.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let head = commit(&work.commit("export me"));
    let (_dir, cache) = cache();
    let repo = cache
        .fetch(&RepoSpec::new(work.path().to_str().expect("utf-8")))
        .expect("fetch");
    let dest = tempfile::tempdir().expect("tempdir");
    repo.export(&head, dest.path(), &Limits::default())
        .expect("export");

    let overlay = dest.path().join("apps/guestbook/overlays/prod");
    let base = overlay.join("../../base/deployment.yaml");
    assert!(
        std::fs::read_to_string(base)
            .expect("the overlay reaches its base")
            .contains("guestbook")
    );
    let linked = dest.path().join("apps/linked/base/kustomization.yaml");
    let meta = std::fs::symlink_metadata(dest.path().join("apps/linked/base")).expect("meta");
    assert!(meta.is_dir(), "symlinks are written as what they point to");
    assert!(linked.is_file());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dest.path().join("scripts/render.sh"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executables stay executable");
    assert!(!dest.path().join(".git").exists());
}

#[test]
fn only_paths_changed_between_commits_are_reported() {
    let work = fleet_repo();
    let first = commit(&work.head());
    work.write("apps/guestbook/base/deployment.yaml", "kind: Deployment\n")
        .write("apps/new/cm.yaml", "kind: ConfigMap\n");
    work.remove("apps/other/cm.yaml");
    std::fs::create_dir(work.path().join("docs")).expect("mkdir");
    work.git(&["mv", "README.md", "docs/README.md"]);
    let second = commit(&work.commit("change some apps"));
    let (_dir, cache) = cache();
    let repo = cache
        .fetch(&RepoSpec::new(work.path().to_str().expect("utf-8")))
        .expect("fetch");
    assert_eq!(
        repo.changed_paths(&first, &second).expect("diff"),
        [
            "README.md",
            "apps/guestbook/base/deployment.yaml",
            "apps/new/cm.yaml",
            "apps/other/cm.yaml",
            "docs/README.md",
        ]
    );
    assert!(
        repo.changed_paths(&second, &second)
            .expect("same")
            .is_empty()
    );
}

#[test]
fn concurrent_fetches_of_one_repo_share_one_clone() {
    let work = fleet_repo();
    let (_dir, cache) = cache();
    let spec = RepoSpec::new(work.path().to_str().expect("utf-8"));
    let dirs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| cache.fetch(&spec).expect("fetch").git_dir().to_owned()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    assert!(dirs.windows(2).all(|w| w[0] == w[1]));
    let entries = std::fs::read_dir(cache.root()).expect("ls").count();
    assert_eq!(entries, 1, "no staging folder is left behind");
}

#[test]
fn a_url_that_is_not_a_repository_is_a_fetch_error() {
    let (dir, cache) = cache();
    let missing = dir.path().join("not-a-repo");
    let err = cache
        .fetch(&RepoSpec::new(missing.to_str().expect("utf-8")))
        .expect_err("no repo there");
    assert!(matches!(err, Error::Fetch { .. }), "{err:?}");
    let err = cache
        .fetch(&RepoSpec::new("http://git.example/plain.git"))
        .expect_err("plain http");
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
}
