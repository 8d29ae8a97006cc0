//! What the link keeps: bootstrap tokens, issued certificates, each cluster's
//! connection state and acks, and status reports with a bounded history.

use std::collections::BTreeMap;

use flotilla_common::message::{BundleOutcome, Status};
use serde::{Deserialize, Serialize};
use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{Error, Key, Result, Store, app_key, db};

/// How many status reports per (app, cluster) the history keeps.
pub const STATUS_HISTORY: usize = 50;

/// A bootstrap token, stored by the SHA-256 of the token so the database never
/// holds one a thief could use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The cluster name the token registers.
    pub cluster: String,
    /// Labels given to `flotilla cluster add`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The API server URL given to `flotilla cluster add --api-server`, which the
    /// cluster gets when it registers.
    #[serde(default)]
    pub server: Option<String>,
    /// When it stops working, in ms since the epoch.
    pub expires_at_ms: u64,
}

/// A bootstrap token that has been used, kept until it would have expired: an
/// agent whose registration reply never arrived tries again with the same token
/// (see `cluster::register`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsedTokenRecord {
    /// The cluster it registered.
    pub cluster: String,
    /// The `kube-system` namespace uid the registering agent reported.
    pub kube_system_uid: String,
    /// When the token would have stopped working, in ms since the epoch.
    pub expires_at_ms: u64,
}

/// The acknowledgement of one bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRecord {
    /// The generation acknowledged.
    pub generation: u64,
    /// The digest the agent acknowledged, lowercase hex.
    pub digest: String,
    /// What became of the bundle, as the agent said (a record written before the
    /// outcome was kept typed reads back as `Failed` with its text).
    #[serde(deserialize_with = "outcome_or_legacy_text")]
    pub outcome: BundleOutcome,
    /// When, in ms since the epoch.
    pub at_ms: u64,
}

/// A stored outcome: typed, or the text `Applied`, `Rejected: …` or `Failed: …`
/// that earlier versions wrote, which keeps its words but not its type.
fn outcome_or_legacy_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<BundleOutcome, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Typed(BundleOutcome),
        Text(String),
    }
    Ok(match Stored::deserialize(deserializer)? {
        Stored::Typed(outcome) => outcome,
        Stored::Text(text) if text == "Applied" => BundleOutcome::Applied,
        Stored::Text(text) => BundleOutcome::Failed { message: text },
    })
}

/// A registered cluster's link: its certificate and how it is connected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// The cluster.
    pub cluster: String,
    /// SHA-256 of its current client certificate, lowercase hex.
    pub cert_sha256: String,
    /// When that certificate expires, in ms since the epoch.
    pub cert_not_after_ms: u64,
    /// SHA-256 of the certificate a renewal replaced, still accepted until the
    /// agent first connects with the new one (or it expires), so an agent that
    /// died before persisting the new certificate is not locked out.
    #[serde(default)]
    pub previous_cert_sha256: Option<String>,
    /// When that previous certificate expires, in ms since the epoch.
    #[serde(default)]
    pub previous_cert_not_after_ms: u64,
    /// The agent's version, from its last connection.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// When the hub last heard from it, in ms since the epoch.
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    /// Whether a connection is up.
    #[serde(default)]
    pub connected: bool,
    /// The highest status sequence stored, so a report resent after a lost ack is
    /// stored once.
    #[serde(default)]
    pub last_status_sequence: u64,
    /// The last acknowledgement per app, keyed `project/name`.
    #[serde(default)]
    pub acks: BTreeMap<String, AckRecord>,
}

/// A status report as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// When the hub stored it, in ms since the epoch.
    pub at_ms: u64,
    /// The report.
    pub status: Status,
}

impl Store {
    /// Raw bytes from the `keys` tree.
    pub fn key_bytes(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree("keys")?
            .get(name)
            .map_err(|source| db("keys", "reading", source))?
            .map(|v| v.to_vec()))
    }

    /// Writes raw bytes to the `keys` tree, flushed.
    pub async fn put_key_bytes(&self, name: &[u8], value: &[u8]) -> Result<()> {
        self.tree("keys")?
            .insert(name, value)
            .map_err(|source| db("keys", "writing", source))?;
        self.flush("keys").await
    }

    /// The key QUIC stateless resets are made with, made once and kept, so a
    /// restarted hub can tell agents at once that their old connection is gone
    /// instead of leaving them to wait out the idle timeout.
    pub async fn stateless_reset_key(&self) -> Result<[u8; 32]> {
        const NAME: &[u8] = b"quic-stateless-reset-key";
        if let Some(key) = self
            .key_bytes(NAME)?
            .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
        {
            return Ok(key);
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| Error::Random(e.to_string()))?;
        self.put_key_bytes(NAME, &key).await?;
        Ok(key)
    }

    /// Stores a token under its hash.
    pub async fn put_token(&self, token_sha256: &str, token: &TokenRecord) -> Result<()> {
        self.put("tokens", &Key::new().str(token_sha256), token)
            .await
    }

    /// The token stored under this hash, if any.
    pub fn token(&self, token_sha256: &str) -> Result<Option<TokenRecord>> {
        self.get("tokens", &Key::new().str(token_sha256))
    }

    /// Removes a token, flushed: a token is used once. Returns whether this call
    /// removed it, so two racing registrations cannot both use it.
    pub async fn take_token(&self, token_sha256: &str) -> Result<bool> {
        self.remove("tokens", &Key::new().str(token_sha256)).await
    }

    /// Records a token as used, flushed.
    pub async fn put_used_token(&self, token_sha256: &str, used: &UsedTokenRecord) -> Result<()> {
        self.put("used_tokens", &Key::new().str(token_sha256), used)
            .await
    }

    /// The used token stored under this hash, if any.
    pub fn used_token(&self, token_sha256: &str) -> Result<Option<UsedTokenRecord>> {
        self.get("used_tokens", &Key::new().str(token_sha256))
    }

    /// Sets the server URL of every pending token of `cluster`, flushed;
    /// returns whether it had one.
    pub async fn set_pending_server(&self, cluster: &str, server: Option<&str>) -> Result<bool> {
        let mut found = false;
        for (key, mut token) in self.scan::<TokenRecord>("tokens", &Key::new())? {
            if token.cluster == cluster {
                token.server = server.map(str::to_owned);
                self.put("tokens", &key, &token).await?;
                found = true;
            }
        }
        Ok(found)
    }

    /// Every token's cluster name, to refuse a second token for a pending name.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        Ok(self
            .scan("tokens", &Key::new())?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    /// Writes a cluster's link record and its certificate index entry.
    pub async fn put_link(&self, link: &LinkRecord) -> Result<()> {
        let certs = self.tree("certs")?;
        certs
            .insert(link.cert_sha256.as_bytes(), link.cluster.as_bytes())
            .map_err(|source| db("certs", "writing", source))?;
        self.put("links", &Key::new().str(&link.cluster), link)
            .await
    }

    /// Writes a cluster's link record without waiting for a flush: connection
    /// state and last-seen times are not something an acknowledgement depends on,
    /// and a flush per connecting agent made a hub restart with 10,000 agents
    /// crawl at about 25 connections a second. sled flushes it within 500 ms.
    pub fn put_link_lazily(&self, link: &LinkRecord) -> Result<()> {
        let bytes = serde_json::to_vec(link).map_err(|source| Error::Decode {
            tree: "links",
            source,
        })?;
        self.tree("links")?
            .insert(Key::new().str(&link.cluster).as_bytes(), bytes)
            .map_err(|source| db("links", "writing", source))?;
        Ok(())
    }

    /// Changes a cluster's link record in place, without waiting for a flush
    /// (see [`Store::put_link_lazily`]). A record that is not there stays absent:
    /// a cluster removed while its connection was still reporting is not written
    /// back. Returns whether the record was there.
    pub fn update_link_lazily(
        &self,
        cluster: &str,
        change: impl Fn(&mut LinkRecord),
    ) -> Result<bool> {
        self.update_existing("links", &Key::new().str(cluster), change)
    }

    /// A cluster's link record.
    pub fn link(&self, cluster: &str) -> Result<Option<LinkRecord>> {
        self.get("links", &Key::new().str(cluster))
    }

    /// Every link record.
    pub fn links(&self) -> Result<Vec<LinkRecord>> {
        Ok(self
            .scan("links", &Key::new())?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    /// The cluster a client certificate belongs to, if it is current.
    pub fn cluster_by_cert(&self, cert_sha256: &str) -> Result<Option<String>> {
        let Some(name) = self
            .tree("certs")?
            .get(cert_sha256.as_bytes())
            .map_err(|source| db("certs", "reading", source))?
        else {
            return Ok(None);
        };
        let name = String::from_utf8_lossy(&name).into_owned();
        // Only the certificates the link record names count: the current one and
        // the one a renewal replaced, until the agent has used the new one.
        Ok(self
            .link(&name)?
            .filter(|link| {
                link.cert_sha256 == cert_sha256
                    || link.previous_cert_sha256.as_deref() == Some(cert_sha256)
            })
            .map(|_| name))
    }

    /// Records a renewed certificate: gives the stored link record the
    /// certificates of `link` (its current and previous ones indexed) and drops
    /// `superseded` from the index, flushed; the record's other fields (acks,
    /// last seen) stay as stored. It is one transaction, and only if the stored
    /// record still has the certificates of `before`, the record the renewal was
    /// decided on: a cluster removed meanwhile stays removed, and of two racing
    /// renewals one loses. Returns whether it was written.
    pub async fn put_renewed_link(
        &self,
        before: &LinkRecord,
        link: &LinkRecord,
        superseded: &[String],
    ) -> Result<bool> {
        let links = self.tree("links")?;
        let certs = self.tree("certs")?;
        let key = Key::new().str(&link.cluster);
        let written = (&links, &certs)
            .transaction(|(links, certs)| {
                let Some(stored) = links.get(key.as_bytes())? else {
                    return Ok(false);
                };
                let mut stored: LinkRecord =
                    serde_json::from_slice(&stored).map_err(ConflictableTransactionError::Abort)?;
                if stored.cert_sha256 != before.cert_sha256
                    || stored.previous_cert_sha256 != before.previous_cert_sha256
                {
                    return Ok(false);
                }
                for cert in superseded {
                    if *cert != link.cert_sha256 && link.previous_cert_sha256.as_ref() != Some(cert)
                    {
                        certs.remove(cert.as_bytes())?;
                    }
                }
                certs.insert(link.cert_sha256.as_bytes(), link.cluster.as_bytes())?;
                if let Some(previous) = &link.previous_cert_sha256 {
                    certs.insert(previous.as_bytes(), link.cluster.as_bytes())?;
                }
                stored.cert_sha256.clone_from(&link.cert_sha256);
                stored.cert_not_after_ms = link.cert_not_after_ms;
                stored
                    .previous_cert_sha256
                    .clone_from(&link.previous_cert_sha256);
                stored.previous_cert_not_after_ms = link.previous_cert_not_after_ms;
                let bytes =
                    serde_json::to_vec(&stored).map_err(ConflictableTransactionError::Abort)?;
                links.insert(key.as_bytes(), bytes)?;
                Ok(true)
            })
            .map_err(|e| transaction_error("links", "renewing a certificate", e))?;
        if written {
            self.flush("links").await?;
        }
        Ok(written)
    }

    /// Forgets a cluster: its record, link and certificates in one transaction
    /// (so a renewal racing it cannot write the link back), and its pending
    /// tokens and used ones. Returns whether it was registered or pending.
    pub async fn remove_cluster(&self, cluster: &str) -> Result<bool> {
        let links = self.tree("links")?;
        let certs = self.tree("certs")?;
        let clusters = self.tree("clusters")?;
        let key = Key::new().str(cluster);
        let mut found = (&links, &certs, &clusters)
            .transaction(|(links, certs, clusters)| {
                let mut found = clusters.remove(key.as_bytes())?.is_some();
                if let Some(link) = links.remove(key.as_bytes())? {
                    found = true;
                    let link: LinkRecord = serde_json::from_slice(&link)
                        .map_err(ConflictableTransactionError::Abort)?;
                    for cert in std::iter::once(&link.cert_sha256).chain(&link.previous_cert_sha256)
                    {
                        certs.remove(cert.as_bytes())?;
                    }
                }
                Ok(found)
            })
            .map_err(|e| transaction_error("links", "removing a cluster", e))?;
        for (key, token) in self.scan::<TokenRecord>("tokens", &Key::new())? {
            if token.cluster == cluster {
                self.tree("tokens")?
                    .remove(key.as_bytes())
                    .map_err(|source| db("tokens", "removing", source))?;
                found = true;
            }
        }
        self.flush("tokens").await?;
        // A used token must not register a cluster of the same name added again.
        for (key, used) in self.scan::<UsedTokenRecord>("used_tokens", &Key::new())? {
            if used.cluster == cluster {
                self.tree("used_tokens")?
                    .remove(key.as_bytes())
                    .map_err(|source| db("used_tokens", "removing", source))?;
            }
        }
        self.flush("used_tokens").await?;
        Ok(found)
    }

    /// Stores a status report as the latest for its (app, cluster) and appends it
    /// to the history, dropping the oldest beyond [`STATUS_HISTORY`]; flushed.
    pub async fn put_status(&self, cluster: &str, record: &StatusRecord) -> Result<()> {
        let app = &record.status.app;
        let key = app_key(&app.project, &app.name).str(cluster);
        let bytes = serde_json::to_vec(record).map_err(|source| Error::Decode {
            tree: "status",
            source,
        })?;
        self.tree("status")?
            .insert(key.as_bytes(), bytes.clone())
            .map_err(|source| db("status", "writing", source))?;
        let history = self.tree("status_history")?;
        history
            .insert(key.clone().u64(self.next_id()?).as_bytes(), bytes)
            .map_err(|source| db("status_history", "writing", source))?;
        let held = history.scan_prefix(key.as_bytes()).count();
        if held > STATUS_HISTORY {
            let old: Vec<_> = history
                .scan_prefix(key.as_bytes())
                .keys()
                .take(held - STATUS_HISTORY)
                .collect::<std::result::Result<_, _>>()
                .map_err(|source| db("status_history", "scanning", source))?;
            for k in old {
                history
                    .remove(k)
                    .map_err(|source| db("status_history", "removing", source))?;
            }
        }
        self.flush("status").await
    }

    /// The latest status of (app, cluster).
    pub fn status(&self, project: &str, app: &str, cluster: &str) -> Result<Option<StatusRecord>> {
        self.get("status", &app_key(project, app).str(cluster))
    }

    /// The status history of (app, cluster), oldest first.
    pub fn status_history(
        &self,
        project: &str,
        app: &str,
        cluster: &str,
    ) -> Result<Vec<StatusRecord>> {
        Ok(self
            .scan("status_history", &app_key(project, app).str(cluster))?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// Every stored bundle's newest generation for `cluster`: (project, app,
    /// envelope bytes).
    pub fn latest_bundles_for(&self, cluster: &str) -> Result<Vec<(String, String, Vec<u8>)>> {
        let mut out = Vec::new();
        let prefix = Key::new().str(cluster);
        for item in self
            .tree("cluster_bundles")?
            .scan_prefix(prefix.as_bytes())
            .keys()
        {
            let key = item.map_err(|source| db("cluster_bundles", "scanning", source))?;
            let Some((project, app)) = parse_strings(&key[prefix.as_bytes().len()..]) else {
                continue;
            };
            if let Some((_, bytes)) = self.latest_bundle(&project, &app, cluster)? {
                out.push((project, app, bytes));
            }
        }
        Ok(out)
    }

    /// Every bundle this process stores from now on, so the link can push it at
    /// once. (sled's own watch_prefix was tried first: its async Subscriber lost
    /// wake-ups and stalled writers under a burst of large values.)
    pub fn subscribe_bundles(&self) -> tokio::sync::broadcast::Receiver<super::BundleStored> {
        self.bundles_stored.subscribe()
    }
}

/// A failed transaction as a store error: an abort is a record that does not
/// decode.
pub(super) fn transaction_error(
    tree: &'static str,
    what: &'static str,
    error: TransactionError<serde_json::Error>,
) -> Error {
    match error {
        TransactionError::Abort(source) => Error::Decode { tree, source },
        TransactionError::Storage(source) => db(tree, what, source),
    }
}

/// Splits two length-prefixed strings.
fn parse_strings(key: &[u8]) -> Option<(String, String)> {
    let mut rest = key;
    let mut part = || -> Option<String> {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let (s, tail) = (tail.get(..len)?, tail.get(len..)?);
        rest = tail;
        Some(String::from_utf8_lossy(s).into_owned())
    };
    Some((part()?, part()?))
}

/// Splits a `bundles` key into (project, app, cluster, generation).
pub fn parse_bundle_key(key: &[u8]) -> Option<(String, String, String, u64)> {
    let mut rest = key;
    let mut part = || -> Option<String> {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let (s, tail) = (tail.get(..len)?, tail.get(len..)?);
        rest = tail;
        Some(String::from_utf8_lossy(s).into_owned())
    };
    let (project, app, cluster) = (part()?, part()?, part()?);
    let generation = u64::from_be_bytes(*rest.first_chunk::<8>()?);
    Some((project, app, cluster, generation))
}
