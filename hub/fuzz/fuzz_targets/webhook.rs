//! Feeds arbitrary bodies, under each forge's push headers, to the webhook
//! parser, with and without a secret, and compares every repository URL it
//! names as the hub does. Any panic is a bug.
#![no_main]

use flotilla_hub::source::{RepoSpec, webhook};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    let (event_header, event, signature_header) = match selector % 4 {
        0 => ("x-github-event", "push", "x-hub-signature-256"),
        1 => ("x-gitlab-event", "Push Hook", "x-gitlab-token"),
        2 => ("x-gitlab-event", "Tag Push Hook", "x-gitlab-token"),
        _ => ("x-gitea-event", "push", "x-gitea-signature"),
    };
    headers.insert(event_header, HeaderValue::from_static(event));
    // Some inputs carry a (wrong or malformed) signature too.
    if selector & 0x10 != 0 {
        headers.insert(
            signature_header,
            HeaderValue::from_static(
                "sha256=00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff",
            ),
        );
    }
    let _ = webhook::parse(&headers, body, Some(b"secret"));
    if let Ok(event) = webhook::parse(&headers, body, None) {
        for url in &event.repo_urls {
            let _ = webhook::same_repository(url, "https://github.com/org/repo.git");
            let _ = webhook::same_repository(url, url);
            let _ = RepoSpec::new(url.clone()).redacted_url();
        }
    }
});
