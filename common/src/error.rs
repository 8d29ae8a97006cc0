//! Errors as people read them.

/// An error and its causes, outermost first: "failed to fetch URL: ...: No space
/// left on device". A message that stops at the outermost error hides what the
/// reader must fix. A cause whose text the message already holds is not repeated.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = inner.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to fetch the repository")]
    struct Fetch(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("store apps: {0}")]
    struct Echoes(#[source] std::io::Error);

    #[test]
    fn causes_follow_the_message_once_each() {
        let full = std::io::Error::other("No space left on device");
        assert_eq!(
            describe(&Fetch(full)),
            "failed to fetch the repository: No space left on device"
        );
        let echoed = std::io::Error::other("disk full");
        assert_eq!(describe(&Echoes(echoed)), "store apps: disk full");
    }
}
