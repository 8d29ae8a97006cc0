//! Helm repositories over HTTP(S): `index.yaml` for versions and digests, then the
//! archive its entry points at.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    ChartRepo, Constraint, Error, MAX_CHART_BYTES, MAX_INDEX_BYTES, Resolved, Result, read_limited,
    same_origin, transport,
};

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    entries: BTreeMap<String, Vec<Entry>>,
}

#[derive(Deserialize)]
struct Entry {
    version: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
}

fn base_url(repo: &ChartRepo, chart: &str) -> Result<reqwest::Url> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: repo.redacted_url(),
        chart: chart.to_owned(),
        reason: reason.to_owned(),
    };
    if !(repo.url.starts_with("https://") || repo.url.starts_with("http://")) {
        return Err(invalid(
            "a Helm repository is an https:// or http:// URL (or oci:// for a registry)",
        ));
    }
    let mut url = reqwest::Url::parse(&format!("{}/", repo.url.trim_end_matches('/')))
        .map_err(|e| invalid(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials written into the URL are not used; put them in a repository Secret",
        ));
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

fn with_auth(
    request: reqwest::RequestBuilder,
    repo: &ChartRepo,
    send: bool,
) -> reqwest::RequestBuilder {
    match repo.basic() {
        Some((user, password)) if send => request.basic_auth(user, Some(password)),
        _ => request,
    }
}

async fn get(
    client: &reqwest::Client,
    repo: &ChartRepo,
    chart: &str,
    url: reqwest::Url,
    send_credentials: bool,
    what: &str,
    limit: usize,
) -> Result<Vec<u8>> {
    let fetch = |reason: String| Error::Fetch {
        url: repo.redacted_url(),
        chart: chart.to_owned(),
        what: what.to_owned(),
        reason,
    };
    let response = with_auth(client.get(url), repo, send_credentials)
        .send()
        .await
        .map_err(|e| fetch(transport(&e)))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(Error::Unauthorized {
            url: repo.redacted_url(),
            chart: chart.to_owned(),
            what: what.to_owned(),
            status: status.as_u16(),
        });
    }
    if !status.is_success() {
        return Err(fetch(format!("the server answered {status}")));
    }
    read_limited(response, limit).await.map_err(fetch)
}

pub(super) async fn resolve(
    client: &reqwest::Client,
    repo: &ChartRepo,
    chart: &str,
    revision: &str,
    constraint: &Constraint,
) -> Result<Resolved> {
    let base = base_url(repo, chart)?;
    let index_url = base.join("index.yaml").map_err(|e| Error::InvalidUrl {
        url: repo.redacted_url(),
        chart: chart.to_owned(),
        reason: e.to_string(),
    })?;
    let body = get(
        client,
        repo,
        chart,
        index_url,
        true,
        "index.yaml",
        MAX_INDEX_BYTES,
    )
    .await?;
    let invalid = |reason: String| Error::Invalid {
        url: repo.redacted_url(),
        chart: chart.to_owned(),
        what: "index.yaml".to_owned(),
        reason,
    };
    let text = std::str::from_utf8(&body).map_err(|_| invalid("not UTF-8 text".to_owned()))?;
    let index: Index = serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let entries = index
        .entries
        .get(chart)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Error::NoSuchChart {
            url: repo.redacted_url(),
            chart: chart.to_owned(),
        })?;
    let picked = constraint
        .pick(entries.iter().map(|e| e.version.as_str()))
        .ok_or_else(|| Error::NoMatchingVersion {
            url: repo.redacted_url(),
            chart: chart.to_owned(),
            revision: revision.to_owned(),
            newest: Constraint::parse("*")
                .and_then(|c| c.pick(entries.iter().map(|e| e.version.as_str())))
                .unwrap_or("none")
                .to_owned(),
        })?;
    let entry = entries
        .iter()
        .find(|e| e.version == picked)
        .ok_or_else(|| invalid(format!("version {picked} vanished")))?;
    let first = entry
        .urls
        .first()
        .ok_or_else(|| invalid(format!("{chart} {picked} has no urls")))?;
    let location = base
        .join(first)
        .map_err(|e| invalid(format!("{chart} {picked}: url {first:?}: {e}")))?;
    if !matches!(location.scheme(), "https" | "http") {
        return Err(invalid(format!(
            "{chart} {picked}: url {first:?} is not http(s)"
        )));
    }
    let digest = entry
        .digest
        .as_deref()
        .map(str::trim)
        .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|d| format!("sha256:{}", d.to_ascii_lowercase()));
    Ok(Resolved {
        chart: chart.to_owned(),
        version: picked.to_owned(),
        digest,
        location: location.to_string(),
    })
}

pub(super) async fn fetch_archive(
    client: &reqwest::Client,
    repo: &ChartRepo,
    resolved: &Resolved,
) -> Result<Vec<u8>> {
    let base = base_url(repo, &resolved.chart)?;
    let location = reqwest::Url::parse(&resolved.location).map_err(|e| Error::Invalid {
        url: repo.redacted_url(),
        chart: resolved.chart.clone(),
        what: "the archive's url".to_owned(),
        reason: e.to_string(),
    })?;
    let send = repo.pass_credentials || same_origin(&base, &location);
    get(
        client,
        repo,
        &resolved.chart,
        location,
        send,
        &format!("the archive of version {}", resolved.version),
        MAX_CHART_BYTES,
    )
    .await
}
