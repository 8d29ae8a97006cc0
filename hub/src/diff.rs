//! Unified diffs of text, line by line, for `flotilla app diff` (live against
//! desired, as `argocd app diff` shows them).
//!
//! The edit script is a longest common subsequence of the lines. Kubernetes objects
//! are short, so the quadratic table is cheap; past [`MAX_CELLS`] the diff gives up
//! on alignment and shows the whole old text removed and the new one added, which
//! is still correct, only less helpful.

use std::fmt::Write as _;

/// Lines of context around each change.
pub const CONTEXT: usize = 3;

/// The largest old × new line table computed.
pub const MAX_CELLS: usize = 4_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    Same(usize, usize),
    Removed(usize),
    Added(usize),
}

fn edits(old: &[&str], new: &[&str]) -> Vec<Edit> {
    let (n, m) = (old.len(), new.len());
    if n.saturating_mul(m) > MAX_CELLS {
        return (0..n)
            .map(Edit::Removed)
            .chain((0..m).map(Edit::Added))
            .collect();
    }
    // lcs[i][j]: the longest common subsequence of old[i..] and new[j..].
    let width = m + 1;
    let mut lcs = vec![0u32; (n + 1) * width];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * width + j] = if old[i] == new[j] {
                lcs[(i + 1) * width + j + 1] + 1
            } else {
                lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(n + m);
    while i < n && j < m {
        if old[i] == new[j] {
            out.push(Edit::Same(i, j));
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * width + j] >= lcs[i * width + j + 1] {
            out.push(Edit::Removed(i));
            i += 1;
        } else {
            out.push(Edit::Added(j));
            j += 1;
        }
    }
    out.extend((i..n).map(Edit::Removed));
    out.extend((j..m).map(Edit::Added));
    out
}

/// The unified diff from `old` to `new` under the two labels, empty when they are
/// the same. With `colour`, removed lines are red, added green, hunk headers cyan.
pub fn unified(old: &str, new: &str, old_label: &str, new_label: &str, colour: bool) -> String {
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let script = edits(&old_lines, &new_lines);
    let changed: Vec<usize> = script
        .iter()
        .enumerate()
        .filter(|(_, e)| !matches!(e, Edit::Same(..)))
        .map(|(k, _)| k)
        .collect();
    if changed.is_empty() {
        return String::new();
    }
    let paint = |code: &str, text: &str| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", paint("1", &format!("--- {old_label}")));
    let _ = writeln!(out, "{}", paint("1", &format!("+++ {new_label}")));
    // Group changes whose contexts touch into hunks of script positions.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &k in &changed {
        let start = k.saturating_sub(CONTEXT);
        let end = (k + CONTEXT + 1).min(script.len());
        match hunks.last_mut() {
            Some((_, last_end)) if start <= *last_end => *last_end = end,
            _ => hunks.push((start, end)),
        }
    }
    for (start, end) in hunks {
        let part = &script[start..end];
        // Where the hunk starts in each text: the first line of that side in or
        // after it.
        let old_start = script[start..]
            .iter()
            .find_map(|e| match e {
                Edit::Same(i, _) | Edit::Removed(i) => Some(*i),
                Edit::Added(_) => None,
            })
            .unwrap_or(old_lines.len());
        let new_start = script[start..]
            .iter()
            .find_map(|e| match e {
                Edit::Same(_, j) | Edit::Added(j) => Some(*j),
                Edit::Removed(_) => None,
            })
            .unwrap_or(new_lines.len());
        let old_count = part.iter().filter(|e| !matches!(e, Edit::Added(_))).count();
        let new_count = part
            .iter()
            .filter(|e| !matches!(e, Edit::Removed(_)))
            .count();
        // Unified diffs number lines from 1; an empty side is `0,0`.
        let range = |start: usize, count: usize| {
            let first = if count == 0 { start } else { start + 1 };
            format!("{first},{count}")
        };
        let header = format!(
            "@@ -{} +{} @@",
            range(old_start, old_count),
            range(new_start, new_count)
        );
        let _ = writeln!(out, "{}", paint("36", &header));
        for edit in part {
            match *edit {
                Edit::Same(i, _) => {
                    let _ = writeln!(out, " {}", old_lines[i]);
                }
                Edit::Removed(i) => {
                    let _ = writeln!(out, "{}", paint("31", &format!("-{}", old_lines[i])));
                }
                Edit::Added(j) => {
                    let _ = writeln!(out, "{}", paint("32", &format!("+{}", new_lines[j])));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "live", "desired", false), "");
    }

    #[test]
    fn a_changed_line_shows_with_its_context_and_line_numbers() {
        let old = "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 1\n  paused: false\n";
        let new = "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 3\n  paused: false\n";
        let diff = unified(old, new, "live", "desired", false);
        assert_eq!(
            diff,
            "--- live\n+++ desired\n@@ -1,5 +1,5 @@\n apiVersion: apps/v1\n kind: Deployment\n spec:\n-  replicas: 1\n+  replicas: 3\n   paused: false\n"
        );
    }

    #[test]
    fn a_missing_object_is_all_added_from_line_zero() {
        let diff = unified("", "a: 1\nb: 2\n", "live", "desired", false);
        assert_eq!(
            diff,
            "--- live\n+++ desired\n@@ -0,0 +1,2 @@\n+a: 1\n+b: 2\n"
        );
    }

    #[test]
    fn distant_changes_make_separate_hunks() {
        let old: String = (0..20).map(|i| format!("l{i}\n")).collect();
        let new = old.replace("l2\n", "x2\n").replace("l17\n", "x17\n");
        let diff = unified(&old, &new, "a", "b", false);
        assert_eq!(diff.matches("@@ -").count(), 2, "{diff}");
        assert!(diff.contains("@@ -15,6 +15,6 @@"), "{diff}");
    }

    #[test]
    fn colour_marks_removed_red_and_added_green() {
        let diff = unified("a\n", "b\n", "live", "desired", true);
        assert!(diff.contains("\x1b[31m-a\x1b[0m"), "{diff:?}");
        assert!(diff.contains("\x1b[32m+b\x1b[0m"), "{diff:?}");
    }
}
