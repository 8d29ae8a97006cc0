//! Charts in OCI registries, as `helm push` stores them: the tags are the versions
//! (`+` written `_`), a tag's manifest names the chart layer by digest, and the
//! layer is the archive. Registries answer 401 with a `WWW-Authenticate`
//! challenge: `Basic`, or `Bearer` with a token service that takes the stored
//! credentials in exchange for a pull token.

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, LINK, WWW_AUTHENTICATE};

use super::{
    ChartRepo, Constraint, Error, MAX_CHART_BYTES, Resolved, Result, read_limited, transport,
};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
const CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
/// Pages of tags read at most; a registry lists a hundred or more a page.
const MAX_TAG_PAGES: usize = 100;

/// One conversation with a registry about one chart.
struct Session<'a> {
    client: &'a reqwest::Client,
    repo: &'a ChartRepo,
    chart: &'a str,
    /// `https://host[:port]/`.
    base: reqwest::Url,
    /// The repository in the registry: the URL's path, then the chart.
    name: String,
    authorization: Option<HeaderValue>,
}

impl<'a> Session<'a> {
    fn new(client: &'a reqwest::Client, repo: &'a ChartRepo, chart: &'a str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: repo.redacted_url(),
            chart: chart.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = repo
            .url
            .strip_prefix("oci://")
            .unwrap_or(&repo.url)
            .trim_end_matches('/');
        if rest.contains("://") {
            return Err(invalid(
                "an OCI registry is written oci://host/path, or host/path with enableOCI",
            ));
        }
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() || host.contains('@') {
            return Err(invalid(
                "names no registry host (credentials belong in a repository Secret, not the URL)",
            ));
        }
        let base = reqwest::Url::parse(&format!("https://{host}/"))
            .map_err(|e| invalid(&e.to_string()))?;
        let name = if path.is_empty() {
            chart.to_owned()
        } else {
            format!("{path}/{chart}")
        };
        // Each component starts and ends with a letter or digit, as the OCI
        // distribution spec has it: so never `.` or `..`, which would walk the
        // request (and its Authorization header) out of `/v2/NAME/`.
        let valid_name = name.split('/').all(|part| {
            let alphanumeric =
                |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            alphanumeric(part.as_bytes().first())
                && alphanumeric(part.as_bytes().last())
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
        if !valid_name {
            return Err(invalid(&format!(
                "{name:?} is not an OCI repository name (lowercase letters, digits, '.', '_', '-', '/'; each part starting and ending with a letter or digit)"
            )));
        }
        Ok(Self {
            client,
            repo,
            chart,
            base,
            name,
            authorization: None,
        })
    }

    fn fetch_error(&self, what: &str, reason: String) -> Error {
        Error::Fetch {
            url: self.repo.redacted_url(),
            chart: self.chart.to_owned(),
            what: what.to_owned(),
            reason,
        }
    }

    /// GETs `path` (from the registry's root), answering one auth challenge.
    async fn get(&mut self, path: &str, accept: &str, what: &str) -> Result<reqwest::Response> {
        let url = self
            .base
            .join(path)
            .map_err(|e| self.fetch_error(what, e.to_string()))?;
        for attempt in 0..2 {
            let mut request = self.client.get(url.clone()).header(ACCEPT, accept);
            if let Some(auth) = &self.authorization {
                request = request.header(AUTHORIZATION, auth.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.fetch_error(what, transport(&e)))?;
            let status = response.status();
            // Only the registry's own challenge is answered: one from a host a
            // redirect led to would get the repository's credentials.
            if status == reqwest::StatusCode::UNAUTHORIZED
                && attempt == 0
                && super::same_origin(response.url(), &self.base)
            {
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                if self.answer(&challenge, what).await? {
                    continue;
                }
            }
            if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::FORBIDDEN
            {
                return Err(self.unauthorized(what, status.as_u16()));
            }
            if status == reqwest::StatusCode::NOT_FOUND && what == "tags" {
                return Err(Error::NoSuchChart {
                    url: self.repo.redacted_url(),
                    chart: self.chart.to_owned(),
                });
            }
            if !status.is_success() {
                return Err(self.fetch_error(what, format!("the registry answered {status}")));
            }
            return Ok(response);
        }
        Err(self.unauthorized(what, 401))
    }

    fn unauthorized(&self, what: &str, status: u16) -> Error {
        Error::Unauthorized {
            url: self.repo.redacted_url(),
            chart: self.chart.to_owned(),
            what: what.to_owned(),
            status,
        }
    }

    /// Sets the authorization a challenge asks for; false when there is nothing to
    /// answer with.
    async fn answer(&mut self, challenge: &str, what: &str) -> Result<bool> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let basic = self.repo.basic();
        if scheme.eq_ignore_ascii_case("basic") {
            let Some((user, password)) = basic else {
                return Ok(false);
            };
            self.authorization = Some(basic_header(user, password));
            return Ok(true);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Ok(false);
        }
        let params = challenge_params(params);
        let Some(realm) = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v) else {
            return Ok(false);
        };
        let mut token_url = reqwest::Url::parse(realm)
            .map_err(|e| self.fetch_error(what, format!("the token realm is not a URL: {e}")))?;
        if token_url.scheme() != "https" && self.base.scheme() == "https" {
            return Err(self.fetch_error(
                what,
                "the registry sends its token service over plain http; refused".to_owned(),
            ));
        }
        {
            let mut query = token_url.query_pairs_mut();
            if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &format!("repository:{}:pull", self.name));
        }
        let mut request = self.client.get(token_url);
        if let Some((user, password)) = basic {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.fetch_error("a pull token", transport(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.unauthorized("a pull token", status.as_u16()));
        }
        let body = read_limited(response, 1 << 20)
            .await
            .map_err(|r| self.fetch_error("a pull token", r))?;
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let token = parsed
            .get("token")
            .or_else(|| parsed.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                self.fetch_error("a pull token", "the answer has no token".to_owned())
            })?;
        self.authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        Ok(self.authorization.is_some())
    }

    async fn tags(&mut self) -> Result<Vec<String>> {
        let mut tags = Vec::new();
        let mut path = format!("v2/{}/tags/list", self.name);
        for _ in 0..MAX_TAG_PAGES {
            let response = self.get(&path, "application/json", "tags").await?;
            let next = response
                .headers()
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let body = read_limited(response, 16 << 20)
                .await
                .map_err(|r| self.fetch_error("tags", r))?;
            let page: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| self.fetch_error("tags", format!("not JSON: {e}")))?;
            tags.extend(
                page.get("tags")
                    .and_then(|t| t.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned)),
            );
            match next {
                Some(link) => path = link.trim_start_matches('/').to_owned(),
                None => return Ok(tags),
            }
        }
        Ok(tags)
    }
}

fn basic_header(user: &str, password: &str) -> HeaderValue {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// `realm="…",service="…",scope="…"` as pairs.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.push((key, value.to_owned()));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The path of a `Link: </v2/…?last=…>; rel="next"` header, if it is one on the
/// same registry.
fn next_link(header: &str) -> Option<String> {
    let start = header.find('<')? + 1;
    let end = header[start..].find('>')? + start;
    let target = &header[start..end];
    (header[end..].contains("rel=\"next\"") && target.starts_with('/')).then(|| target.to_owned())
}

pub(super) async fn resolve(
    client: &reqwest::Client,
    repo: &ChartRepo,
    chart: &str,
    revision: &str,
    constraint: &Constraint,
) -> Result<Resolved> {
    let mut session = Session::new(client, repo, chart)?;
    let tags = session.tags().await?;
    // Helm writes `+` (not allowed in tags) as `_`.
    let versions: Vec<String> = tags.iter().map(|t| t.replace('_', "+")).collect();
    let picked = constraint
        .pick(versions.iter().map(String::as_str))
        .ok_or_else(|| Error::NoMatchingVersion {
            url: repo.redacted_url(),
            chart: chart.to_owned(),
            revision: revision.to_owned(),
            newest: Constraint::parse("*")
                .and_then(|c| c.pick(versions.iter().map(String::as_str)))
                .unwrap_or("none")
                .to_owned(),
        })?
        .to_owned();
    let tag = picked.replace('+', "_");
    let what = format!("the manifest of version {picked}");
    let response = session
        .get(
            &format!("v2/{}/manifests/{tag}", session.name),
            MANIFEST_TYPES,
            &what,
        )
        .await?;
    let body = read_limited(response, 4 << 20)
        .await
        .map_err(|r| session.fetch_error(&what, r))?;
    let invalid = |reason: String| Error::Invalid {
        url: repo.redacted_url(),
        chart: chart.to_owned(),
        what: what.clone(),
        reason,
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let digest = manifest
        .get("layers")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
        .find(|l| l.get("mediaType").and_then(|m| m.as_str()) == Some(CHART_LAYER))
        .and_then(|l| l.get("digest").and_then(|d| d.as_str()))
        .ok_or_else(|| invalid(format!("it has no Helm chart layer ({CHART_LAYER})")))?;
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid(format!("chart layer digest {digest:?} is not sha256")))?;
    let digest = format!("sha256:{}", hex.to_ascii_lowercase());
    Ok(Resolved {
        chart: chart.to_owned(),
        version: picked,
        location: digest.clone(),
        digest: Some(digest),
    })
}

pub(super) async fn fetch_blob(
    client: &reqwest::Client,
    repo: &ChartRepo,
    resolved: &Resolved,
) -> Result<Vec<u8>> {
    let mut session = Session::new(client, repo, &resolved.chart)?;
    let what = format!("the chart layer of version {}", resolved.version);
    let response = session
        .get(
            &format!("v2/{}/blobs/{}", session.name, resolved.location),
            "application/octet-stream",
            &what,
        )
        .await?;
    read_limited(response, MAX_CHART_BYTES)
        .await
        .map_err(|r| session.fetch_error(&what, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_challenge_reads_as_its_parameters() {
        let params = challenge_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            params,
            vec![
                ("realm".to_owned(), "https://auth.example/token".to_owned()),
                ("service".to_owned(), "registry.example".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull".to_owned()),
            ]
        );
    }

    #[test]
    fn only_a_next_link_on_the_same_registry_is_followed() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=x&n=100>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=100")
        );
        assert_eq!(next_link(r#"<https://elsewhere/v2>; rel="next""#), None);
        assert_eq!(next_link(r#"</v2/a>; rel="prev""#), None);
    }

    #[test]
    fn a_registry_url_becomes_a_host_and_a_repository_name() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let repo = ChartRepo::new("oci://127.0.0.1:5000/charts/");
        let session = Session::new(&client, &repo, "web").expect("valid");
        assert_eq!(session.base.as_str(), "https://127.0.0.1:5000/");
        assert_eq!(session.name, "charts/web");
        let bad = ChartRepo::new("oci://user:pw@host/charts");
        let e = Session::new(&client, &bad, "web").err().expect("refused");
        assert!(!e.to_string().contains("pw"), "{e}");
        let e = Session::new(&client, &repo, "Web").err().expect("refused");
        assert!(e.to_string().contains("charts/Web"), "{e}");
        for walk in ["..", "../admin", "web/..", ".", "-web", "web_"] {
            assert!(
                Session::new(&client, &repo, walk).is_err(),
                "{walk} is not a repository name"
            );
        }
    }
}
