//! The two glob dialects an ApplicationSet's git generator uses, as Argo CD
//! matches them.
//!
//! Directories are matched with Go's `path.Match` ([`Dialect::Path`]): `*` and
//! `?` never match `/`, `**` is two stars and nothing more, `[...]`/`[^...]`
//! classes and `\` escapes. Files are matched as Argo CD's default file listing
//! does, with a git pathspec ([`Dialect::Pathspec`]): `*` and `?` do match `/`,
//! `[!...]` also negates, and a pattern without wildcards also names everything
//! under it as a directory. A malformed pattern is an error in both, checked
//! whole even when the name stops matching early, so a typo is never read as
//! "matches nothing".

/// Which of the two dialects a pattern is read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Go's `path.Match`: git directory generators.
    Path,
    /// git's default pathspec matching: git files generators.
    Pathspec,
}

/// Why a pattern is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid glob: {1}")]
pub struct BadPattern(pub String, pub &'static str);

/// Checks `pattern` is well formed, without matching anything.
pub fn check(pattern: &str, dialect: Dialect) -> Result<(), BadPattern> {
    matches(pattern, "", dialect).map(|_| ())
}

/// Whether `name` matches `pattern` as a whole.
pub fn matches(pattern: &str, name: &str, dialect: Dialect) -> Result<bool, BadPattern> {
    let bad = |why| BadPattern(pattern.to_owned(), why);
    let chars: Vec<char> = pattern.chars().collect();
    let name_chars: Vec<char> = name.chars().collect();
    let matcher = Matcher { dialect };
    let matched = matcher.whole(&chars, &name_chars).map_err(bad)?;
    if matched || dialect == Dialect::Path {
        return Ok(matched);
    }
    // A pathspec without wildcards names a directory too: `apps` lists
    // `apps/a/config.json`.
    let literal = !chars.iter().any(|c| matches!(c, '*' | '?' | '[' | '\\'));
    Ok(literal
        && !pattern.is_empty()
        && name
            .strip_prefix(pattern.trim_end_matches('/'))
            .is_some_and(|rest| rest.starts_with('/')))
}

struct Matcher {
    dialect: Dialect,
}

type Step<'a> = Result<Option<&'a [char]>, &'static str>;

impl Matcher {
    /// Whether `c` is a character a wildcard may not consume.
    fn stops(&self, c: char) -> bool {
        self.dialect == Dialect::Path && c == '/'
    }

    /// Go's algorithm: the pattern is a sequence of chunks, each a run of stars
    /// then a star-free run; a star chunk is tried at each offset the star may
    /// consume, leftmost first, which is exact because a chunk has a fixed length.
    fn whole(&self, mut pattern: &[char], mut name: &[char]) -> Result<bool, &'static str> {
        'chunks: while !pattern.is_empty() {
            let (star, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            if star && chunk.is_empty() {
                // A trailing star takes the rest of the name, up to a '/'.
                let rest_ok = !name.iter().any(|c| self.stops(*c));
                return Ok(rest_ok);
            }
            let first = self.chunk(chunk, name)?;
            if let Some(t) = first
                && (t.is_empty() || !pattern.is_empty())
            {
                name = t;
                continue;
            }
            if star {
                let mut i = 0;
                while i < name.len() && !self.stops(name[i]) {
                    if let Some(t) = self.chunk(chunk, &name[i + 1..])? {
                        // The last chunk must use up the name.
                        if pattern.is_empty() && !t.is_empty() {
                            i += 1;
                            continue;
                        }
                        name = t;
                        continue 'chunks;
                    }
                    i += 1;
                }
            }
            // No match: the rest of the pattern must still be well formed.
            while !pattern.is_empty() {
                let (_, chunk, rest) = scan_chunk(pattern);
                pattern = rest;
                self.chunk(chunk, &[])?;
            }
            return Ok(false);
        }
        Ok(name.is_empty())
    }

    /// Matches one star-free chunk against the start of `s`: the rest of `s` when
    /// it matches. The whole chunk is read even after a mismatch, so a malformed
    /// one is always reported.
    fn chunk<'a>(&self, mut chunk: &[char], mut s: &'a [char]) -> Step<'a> {
        let mut failed = false;
        while let Some(&c) = chunk.first() {
            if !failed && s.is_empty() {
                failed = true;
            }
            match c {
                '[' => {
                    let r = if failed { None } else { Some(s[0]) };
                    if !failed {
                        s = &s[1..];
                    }
                    chunk = &chunk[1..];
                    let negated = matches!(chunk.first(), Some('^'))
                        || (self.dialect == Dialect::Pathspec
                            && matches!(chunk.first(), Some('!')));
                    if negated {
                        chunk = &chunk[1..];
                    }
                    let mut matched = false;
                    let mut ranges = 0;
                    loop {
                        if chunk.first() == Some(&']') && ranges > 0 {
                            chunk = &chunk[1..];
                            break;
                        }
                        let (lo, rest) = escaped(chunk)?;
                        chunk = rest;
                        let mut hi = lo;
                        if chunk.first() == Some(&'-') {
                            let (h, rest) = escaped(&chunk[1..])?;
                            hi = h;
                            chunk = rest;
                        }
                        if r.is_some_and(|r| lo <= r && r <= hi) {
                            matched = true;
                        }
                        ranges += 1;
                    }
                    if matched == negated {
                        failed = true;
                    }
                }
                '?' => {
                    if !failed {
                        if self.stops(s[0]) {
                            failed = true;
                        }
                        s = &s[1..];
                    }
                    chunk = &chunk[1..];
                }
                _ => {
                    let literal = if c == '\\' {
                        chunk = &chunk[1..];
                        *chunk.first().ok_or("it ends with a lone '\\'")?
                    } else {
                        c
                    };
                    if !failed {
                        if s[0] != literal {
                            failed = true;
                        }
                        s = &s[1..];
                    }
                    chunk = &chunk[1..];
                }
            }
        }
        Ok((!failed).then_some(s))
    }
}

/// Splits off the next chunk: whether stars lead it, the star-free run, and the
/// rest of the pattern.
fn scan_chunk(mut pattern: &[char]) -> (bool, &[char], &[char]) {
    let mut star = false;
    while pattern.first() == Some(&'*') {
        pattern = &pattern[1..];
        star = true;
    }
    let mut in_class = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            '\\' if i + 1 < pattern.len() => i += 1,
            '[' => in_class = true,
            ']' => in_class = false,
            '*' if !in_class => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// One possibly escaped character of a class, and what follows it.
fn escaped(chunk: &[char]) -> Result<(char, &[char]), &'static str> {
    let unclosed = "a '[' class is not closed";
    let mut chunk = chunk;
    match chunk.first() {
        None => return Err(unclosed),
        Some('-' | ']') => return Err("a '[' class has an empty range"),
        Some('\\') => chunk = &chunk[1..],
        Some(_) => {}
    }
    let (&c, rest) = chunk.split_first().ok_or(unclosed)?;
    if rest.is_empty() {
        return Err(unclosed);
    }
    Ok((c, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(pattern: &str, name: &str) -> bool {
        matches(pattern, name, Dialect::Path).unwrap()
    }

    fn spec(pattern: &str, name: &str) -> bool {
        matches(pattern, name, Dialect::Pathspec).unwrap()
    }

    /// The cases Go documents and tests for `path.Match`, written out here.
    #[test]
    fn directories_match_as_go_path_match() {
        for (pattern, name, want) in [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abe", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("*x", "xxx", true),
            ("addons/**", "addons/a/b", false),
            ("addons/**", "addons/a", true),
            ("addons/**/x", "addons/a/x", true),
            ("addons/**/x", "addons/a/b/x", false),
            ("*/*", "addons/cert-manager", true),
            ("*/*", "addons", false),
        ] {
            assert_eq!(path(pattern, name), want, "{pattern} on {name}");
        }
    }

    #[test]
    fn malformed_patterns_are_errors_even_after_a_mismatch() {
        for pattern in [
            "[", "[^", "[^bc", "a[", "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "a[", "*x[",
            "zz[",
        ] {
            assert!(
                matches(pattern, "abc", Dialect::Path).is_err(),
                "{pattern} should be malformed"
            );
            assert!(check(pattern, Dialect::Path).is_err(), "{pattern}");
        }
    }

    #[test]
    fn files_match_as_a_git_pathspec() {
        for (pattern, name, want) in [
            (
                "cluster-config/**/config.json",
                "cluster-config/a/b/config.json",
                true,
            ),
            (
                "cluster-config/**/config.json",
                "cluster-config/a/config.json",
                true,
            ),
            (
                "cluster-config/**/config.json",
                "cluster-config/config.json",
                false,
            ),
            (
                "cluster-config/*/config.json",
                "cluster-config/a/b/config.json",
                true,
            ),
            ("*.json", "a/b.json", true),
            ("a/[!x]", "a/y", true),
            ("apps", "apps/a/config.json", true),
            ("apps", "appsx/config.json", false),
            ("apps/config.yaml", "apps/config.yaml", true),
        ] {
            assert_eq!(spec(pattern, name), want, "{pattern} on {name}");
        }
    }
}
