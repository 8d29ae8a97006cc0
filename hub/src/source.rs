//! Git sources: bare clones and fetches with gix, revisions, trees read at a commit
//! without a worktree, and which paths changed between two commits.
