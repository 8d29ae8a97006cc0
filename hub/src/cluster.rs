//! Clusters joining and leaving: bootstrap tokens, the agent's install (in
//! `install`: manifest, `helm install`, cleanup), registration, and removal.
//!
//! `flotilla cluster add` makes a single-use token and prints what installs an
//! agent holding it. The agent presents the token once, in `Register`, over a
//! connection that has no client certificate yet; [`register`] checks it, refuses
//! a cluster already registered under another name (same kube-system UID), and
//! issues the client certificate every later connection uses.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use flotilla_common::message::Register;
use sha2::{Digest as _, Sha256};

use crate::ca::{self, Ca};
// Kept for the modules that still name it here: link, token, store::records,
// the link_scale example and the ops tests.
pub use crate::clock::epoch_ms;
use crate::store::{self, ClusterRecord, LinkRecord, Store, TokenRecord};

mod install;
pub use install::{AGENT_NAMESPACE, helm_command, helm_values, manifest, uninstall_commands};

/// How long a bootstrap token works by default.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The longest a bootstrap token may work, in minutes: a year.
pub const MAX_TOKEN_TTL_MINUTES: u64 = 365 * 24 * 60;

/// How long a client certificate lasts by default.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// The agent image the manifest names by default.
pub const DEFAULT_AGENT_IMAGE: &str = "localhost/flotilla-agent";

/// Errors from adding and removing clusters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is not a DNS label, as Kubernetes names are.
    #[error(
        "cluster name {0:?} is not valid: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    InvalidName(String),
    /// A cluster of that name is registered or has a pending token.
    #[error("cluster {0:?} already exists (remove it first with `flotilla cluster rm {0}`)")]
    Exists(String),
    /// A label is not `key=value`.
    #[error("label {0:?} is not key=value")]
    InvalidLabel(String),
    /// A namespace of `--namespaces` is not a DNS label.
    #[error(
        "namespace {0:?} is not valid: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    InvalidNamespace(String),
    /// A server URL is not an `https://` or `http://` URL with a host.
    #[error(
        "server URL {0:?} is not valid: give the cluster's API server URL as Applications name it in destination.server, such as https://10.0.0.1:6443"
    )]
    InvalidServer(String),
    /// Another cluster already has that server URL: an Application naming it
    /// would not know which cluster it means.
    #[error("server URL {server:?} already belongs to cluster {cluster:?}")]
    ServerTaken {
        /// The URL.
        server: String,
        /// The cluster that has it.
        cluster: String,
    },
    /// No cluster of that name is registered or pending.
    #[error("no cluster named {0:?}")]
    NotFound(String),
    /// The system's random source failed.
    #[error("failed to draw a token from the system's random source")]
    Random,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a registration was refused. The agent is told the message; nothing is
/// stored.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// No pending token matches: never issued, already used, or the cluster was
    /// removed.
    #[error(
        "bootstrap token is unknown or already used; make a new one with `flotilla cluster add`"
    )]
    UnknownToken,
    /// The token's hour (or `--token-ttl`) has passed.
    #[error(
        "bootstrap token for cluster {cluster:?} expired; make a new one with `flotilla cluster add`"
    )]
    ExpiredToken {
        /// The cluster it was for.
        cluster: String,
    },
    /// The agent reported no kube-system UID, the one fact that tells two
    /// clusters apart.
    #[error(
        "the agent reported no kube-system namespace UID; it must be able to read the kube-system namespace to register"
    )]
    MissingClusterUid,
    /// The same cluster (by kube-system UID) is registered under another name.
    #[error(
        "this cluster (kube-system uid {uid}) is already registered as {existing:?}; it cannot also register as {requested:?} (remove {existing:?} first)"
    )]
    DuplicateCluster {
        /// The kube-system UID.
        uid: String,
        /// The name it is registered as.
        existing: String,
        /// The name it asked for.
        requested: String,
    },
    /// Issuing the certificate failed.
    #[error("failed to issue a client certificate")]
    Certificate(#[from] ca::Error),
    /// The store failed.
    #[error("failed to record the registration")]
    Store(#[from] store::Error),
}

/// Why a certificate renewal was refused.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The cluster was removed, or the certificate presented is no longer one the
    /// hub accepts for it: the agent must stop, not retry.
    #[error("cluster {cluster:?} was removed from the hub; its certificate cannot be renewed")]
    Revoked {
        /// The cluster.
        cluster: String,
    },
    /// The certificate presented is current and not yet half through its life:
    /// a well-behaved agent asks at two thirds, so this one is refused rather
    /// than let it make the CA sign in a loop.
    #[error(
        "certificate renewal for cluster {cluster:?} is not due: {remaining_s} s of its certificate's life remain, more than half"
    )]
    NotDue {
        /// The cluster.
        cluster: String,
        /// Seconds until the presented certificate expires.
        remaining_s: u64,
    },
    /// The cluster's certificates changed while the renewal was being made (the
    /// agent renewed on another connection); nothing was recorded, and the agent
    /// may ask again.
    #[error("certificate renewal for cluster {cluster:?} raced another renewal; try again")]
    Raced {
        /// The cluster.
        cluster: String,
    },
    /// Issuing the certificate failed.
    #[error("failed to issue a renewed client certificate")]
    Certificate(#[from] ca::Error),
    /// The store failed.
    #[error("failed to record the renewed certificate")]
    Store(#[from] store::Error),
}

/// A new cluster's token, shown once.
#[derive(Clone)]
pub struct Added {
    /// The cluster name.
    pub cluster: String,
    /// The bootstrap token. Print it once; never log it.
    pub token: String,
    /// When it expires, ms since the epoch.
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for Added {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Added")
            .field("cluster", &self.cluster)
            .field("token", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// What a successful registration made.
#[derive(Debug)]
pub struct Registration {
    /// The cluster registered.
    pub cluster: String,
    /// Its client certificate, DER.
    pub certificate: Vec<u8>,
}

/// The hash under which a token is stored.
pub fn token_hash(token: &str) -> String {
    ca::hex(&Sha256::digest(token.as_bytes()))
}

/// Cluster names, like namespaces, are DNS labels.
fn valid_name(name: &str) -> bool {
    flotilla_common::model::is_dns_label(name)
}

/// Parses `key=value` labels.
pub fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|label| match label.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Error::InvalidLabel(label.clone())),
        })
        .collect()
}

/// Checks an admin-given API server URL and returns it without a trailing `/`.
pub fn parse_server(server: &str) -> Result<String> {
    let invalid = || Error::InvalidServer(server.to_owned());
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .ok_or_else(invalid)?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let clean = |c: char| !c.is_whitespace() && !c.is_control();
    if host.is_empty() || host.contains('@') || !server.chars().all(clean) || server.len() > 2048 {
        return Err(invalid());
    }
    Ok(server.trim_end_matches('/').to_owned())
}

/// Refuses `server` if a cluster other than `name`, registered or pending, has it.
fn check_server_free(store: &Store, name: &str, server: &str) -> Result<()> {
    let registered = store.clusters()?.into_iter().map(|c| (c.name, c.server));
    let pending = store.tokens()?.into_iter().map(|t| (t.cluster, t.server));
    match registered
        .chain(pending)
        .find(|(other, taken)| other != name && taken.as_deref() == Some(server))
    {
        Some((cluster, _)) => Err(Error::ServerTaken {
            server: server.to_owned(),
            cluster,
        }),
        None => Ok(()),
    }
}

/// Makes a single-use bootstrap token for a new cluster, reachable from
/// Applications by name only until an admin sets its server URL.
pub async fn add(
    store: &Store,
    name: &str,
    labels: BTreeMap<String, String>,
    ttl: Duration,
    now: SystemTime,
) -> Result<Added> {
    add_with_server(store, name, labels, None, ttl, now).await
}

/// Makes a single-use bootstrap token for a new cluster whose API server URL,
/// which Applications' `destination.server` is matched against, is `server`.
pub async fn add_with_server(
    store: &Store,
    name: &str,
    labels: BTreeMap<String, String>,
    server: Option<&str>,
    ttl: Duration,
    now: SystemTime,
) -> Result<Added> {
    if !valid_name(name) {
        return Err(Error::InvalidName(name.to_owned()));
    }
    if store.cluster(name)?.is_some() || store.tokens()?.iter().any(|t| t.cluster == name) {
        return Err(Error::Exists(name.to_owned()));
    }
    let server = server.map(parse_server).transpose()?;
    if let Some(server) = &server {
        check_server_free(store, name, server)?;
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|_| Error::Random)?;
    let token = format!("flt_{}", ca::hex(&secret));
    let expires_at_ms = epoch_ms(now + ttl);
    store
        .put_token(
            &token_hash(&token),
            &TokenRecord {
                cluster: name.to_owned(),
                labels,
                server,
                expires_at_ms,
            },
        )
        .await?;
    Ok(Added {
        cluster: name.to_owned(),
        token,
        expires_at_ms,
    })
}

/// Sets (or, with `None`, clears) the API server URL of cluster `name`,
/// registered or pending. Returns the URL as stored.
pub async fn set_server(store: &Store, name: &str, server: Option<&str>) -> Result<Option<String>> {
    let registered = store.cluster(name)?;
    if registered.is_none() && !store.tokens()?.iter().any(|t| t.cluster == name) {
        return Err(Error::NotFound(name.to_owned()));
    }
    let server = server.map(parse_server).transpose()?;
    if let Some(server) = &server {
        check_server_free(store, name, server)?;
    }
    if let Some(mut record) = registered {
        record.server.clone_from(&server);
        store.put_cluster(&record).await?;
        return Ok(server);
    }
    if !store.set_pending_server(name, server.as_deref()).await? {
        return Err(Error::NotFound(name.to_owned()));
    }
    Ok(server)
}

/// Checks a `Register` and, if it passes, records the cluster and issues its
/// client certificate. A refusal changes nothing.
pub async fn register(
    store: &Store,
    ca: &Ca,
    register: &Register,
    now: SystemTime,
    cert_lifetime: Duration,
) -> Result<Registration, RegisterError> {
    let hash = token_hash(&register.token);
    let Some(token) = store.token(&hash)? else {
        return Box::pin(register_again(
            store,
            ca,
            register,
            &hash,
            now,
            cert_lifetime,
        ))
        .await;
    };
    if token.expires_at_ms <= epoch_ms(now) {
        return Err(RegisterError::ExpiredToken {
            cluster: token.cluster,
        });
    }
    let uid = &register.facts.kube_system_uid;
    if uid.trim().is_empty() {
        return Err(RegisterError::MissingClusterUid);
    }
    if let Some(existing) = store.clusters()?.into_iter().find(|c| {
        c.name != token.cluster && c.facts.as_ref().is_some_and(|f| f.kube_system_uid == *uid)
    }) {
        return Err(RegisterError::DuplicateCluster {
            uid: uid.clone(),
            existing: existing.name,
            requested: token.cluster,
        });
    }
    let certificate =
        ca.issue_client_cert(&token.cluster, &register.public_key, now, cert_lifetime)?;
    // Taking the token is the commit point: of two racing registrations only one
    // removes it.
    if !store.take_token(&hash).await? {
        return Err(RegisterError::UnknownToken);
    }
    store
        .put_cluster(&ClusterRecord {
            name: token.cluster.clone(),
            labels: token.labels,
            server: token.server,
            facts: Some(register.facts.clone()),
        })
        .await?;
    store
        .put_link(&LinkRecord {
            cluster: token.cluster.clone(),
            cert_sha256: ca::fingerprint(&certificate),
            cert_not_after_ms: epoch_ms(now + cert_lifetime),
            ..LinkRecord::default()
        })
        .await?;
    store
        .put_used_token(
            &hash,
            &store::UsedTokenRecord {
                cluster: token.cluster.clone(),
                kube_system_uid: uid.clone(),
                expires_at_ms: token.expires_at_ms,
            },
        )
        .await?;
    Ok(Registration {
        cluster: token.cluster,
        certificate,
    })
}

/// A `Register` with a token that was used already. The agent that used it may
/// never have had its certificate (the reply was lost on the way, or it died
/// before saving it) and tries again, with a new key. It gets a new certificate
/// and the one issued before stops working, but only from the same cluster (the
/// same `kube-system` uid), while the token would still be valid, and until the
/// cluster first connects: from then on the token is spent for good. Anyone else
/// hears that the token is unknown, as before.
async fn register_again(
    store: &Store,
    ca: &Ca,
    register: &Register,
    hash: &str,
    now: SystemTime,
    cert_lifetime: Duration,
) -> Result<Registration, RegisterError> {
    let used = store.used_token(hash)?.ok_or(RegisterError::UnknownToken)?;
    if used.expires_at_ms <= epoch_ms(now)
        || register.facts.kube_system_uid.trim().is_empty()
        || used.kube_system_uid != register.facts.kube_system_uid
        || store.cluster(&used.cluster)?.is_none()
    {
        return Err(RegisterError::UnknownToken);
    }
    // A removed cluster has no link record, and stays removed.
    let before = store
        .link(&used.cluster)?
        .ok_or(RegisterError::UnknownToken)?;
    if before.connected || before.last_seen_ms.is_some() {
        return Err(RegisterError::UnknownToken);
    }
    let certificate =
        ca.issue_client_cert(&used.cluster, &register.public_key, now, cert_lifetime)?;
    let mut link = before.clone();
    let superseded: Vec<String> = std::iter::once(link.cert_sha256.clone())
        .chain(link.previous_cert_sha256.take())
        .collect();
    link.previous_cert_not_after_ms = 0;
    link.cert_sha256 = ca::fingerprint(&certificate);
    link.cert_not_after_ms = epoch_ms(now + cert_lifetime);
    // Of two racing retries one wins; a removal meanwhile wins over both.
    if !store.put_renewed_link(&before, &link, &superseded).await? {
        return Err(RegisterError::UnknownToken);
    }
    Ok(Registration {
        cluster: used.cluster,
        certificate,
    })
}

/// Issues `cluster` a new client certificate for `public_key` and makes it the
/// current one. The certificate the agent presented on this connection
/// (`presented_sha256`) stays accepted as the previous one until the agent first
/// connects with the new certificate ([`confirm_certificate`]) or it expires, so
/// an agent that dies before persisting the new certificate can still come back;
/// any other older certificate stops working. The current certificate may only
/// be renewed once half its life has passed; the previous one at any time (its
/// agent lost the renewed one).
pub async fn renew(
    store: &Store,
    ca: &Ca,
    cluster: &str,
    presented_sha256: &str,
    public_key: &[u8; 32],
    now: SystemTime,
    cert_lifetime: Duration,
) -> Result<Registration, RenewError> {
    let revoked = || RenewError::Revoked {
        cluster: cluster.to_owned(),
    };
    let before = store.link(cluster)?.ok_or_else(revoked)?;
    let mut link = before.clone();
    let presented_not_after_ms = if link.cert_sha256 == presented_sha256 {
        let remaining_ms = link.cert_not_after_ms.saturating_sub(epoch_ms(now));
        let half_life_ms = u64::try_from(cert_lifetime.as_millis() / 2).unwrap_or(u64::MAX);
        if remaining_ms > half_life_ms {
            return Err(RenewError::NotDue {
                cluster: cluster.to_owned(),
                remaining_s: remaining_ms / 1000,
            });
        }
        link.cert_not_after_ms
    } else if link.previous_cert_sha256.as_deref() == Some(presented_sha256) {
        link.previous_cert_not_after_ms
    } else {
        return Err(revoked());
    };
    let certificate = ca.issue_client_cert(cluster, public_key, now, cert_lifetime)?;
    let superseded: Vec<String> = std::iter::once(link.cert_sha256.clone())
        .chain(link.previous_cert_sha256.clone())
        .collect();
    link.previous_cert_sha256 = Some(presented_sha256.to_owned());
    link.previous_cert_not_after_ms = presented_not_after_ms;
    link.cert_sha256 = ca::fingerprint(&certificate);
    link.cert_not_after_ms = epoch_ms(now + cert_lifetime);
    if !store.put_renewed_link(&before, &link, &superseded).await? {
        // Removed (or renewed by another connection) since it was read: the
        // certificate just issued is never recorded, so it never works.
        return Err(match store.link(cluster)? {
            None => revoked(),
            Some(_) => RenewError::Raced {
                cluster: cluster.to_owned(),
            },
        });
    }
    Ok(Registration {
        cluster: cluster.to_owned(),
        certificate,
    })
}

/// The agent of `cluster` connected with `presented_sha256`: if that is the
/// current certificate, the previous one has served its purpose and stops
/// working. Returns whether anything changed.
pub async fn confirm_certificate(
    store: &Store,
    cluster: &str,
    presented_sha256: &str,
) -> Result<bool, store::Error> {
    let Some(before) = store.link(cluster)? else {
        return Ok(false);
    };
    if before.cert_sha256 != presented_sha256 || before.previous_cert_sha256.is_none() {
        return Ok(false);
    }
    let mut link = before.clone();
    let superseded: Vec<String> = link.previous_cert_sha256.take().into_iter().collect();
    link.previous_cert_not_after_ms = 0;
    store.put_renewed_link(&before, &link, &superseded).await
}

/// The newest generation of `app` the hub has signed for `cluster`, if any.
///
/// An agent speaks only for its own cluster: a status report, acknowledgement or
/// applied entry about an app the hub never sent that cluster a bundle of is not
/// its to make, and neither is one about a generation newer than any the hub
/// signed for it. Bundles stay in the store after their app leaves the cluster
/// (a deleted app's last bundle prunes everything), so the agent can still report
/// on what it removes.
pub fn assigned_generation(
    store: &Store,
    cluster: &str,
    app: &flotilla_common::model::AppRef,
) -> Result<Option<u64>, store::Error> {
    Ok(store
        .latest_bundle(&app.project, &app.name, cluster)?
        .map(|(generation, _)| generation))
}

/// Whether the agent of `cluster` may speak about `generation` of `app`: see
/// [`assigned_generation`].
pub fn speaks_for(
    store: &Store,
    cluster: &str,
    app: &flotilla_common::model::AppRef,
    generation: u64,
) -> Result<bool, store::Error> {
    Ok(assigned_generation(store, cluster, app)?.is_some_and(|latest| generation <= latest))
}

/// What the agent needs to join, for the manifest and the command line.
#[derive(Clone)]
pub struct JoinInfo<'a> {
    /// The cluster name.
    pub cluster: &'a str,
    /// The hub's QUIC address as the agent dials it, `host:port`.
    pub hub_address: &'a str,
    /// The CA fingerprint to pin.
    pub ca_fingerprint: &'a str,
    /// The bootstrap token.
    pub token: &'a str,
    /// The agent image.
    pub image: &'a str,
    /// The namespaces the agent may act in (see [`parse_namespaces`]); empty for
    /// the whole cluster.
    pub namespaces: &'a [String],
    /// The storage class of the agent's state claim (see [`is_storage_class`]);
    /// `None` for the cluster's default.
    pub storage_class: Option<&'a str>,
}

/// The namespaces of `cluster add --namespaces` (comma-separated lists, repeatable):
/// DNS labels, sorted and without repeats. An empty result means the whole cluster.
pub fn parse_namespaces(lists: &[String]) -> Result<Vec<String>> {
    let mut namespaces = std::collections::BTreeSet::new();
    for namespace in lists
        .iter()
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        if !valid_name(namespace) {
            return Err(Error::InvalidNamespace(namespace.to_owned()));
        }
        namespaces.insert(namespace.to_owned());
    }
    Ok(namespaces.into_iter().collect())
}

/// `HOST:PORT` with a DNS name, an IPv4 address or a bracketed IPv6 address.
pub fn is_host_port(address: &str) -> bool {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok()
        && !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        })
}

/// A storage class name: a DNS subdomain, as Kubernetes names the class.
pub fn is_storage_class(name: &str) -> bool {
    flotilla_common::model::is_dns_subdomain(name)
}

/// An image name as the manifest writes it before `:VERSION`: a registry host
/// (with a port) and a path, in the characters Docker references allow.
pub fn is_image_name(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= 255
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'))
        && image
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// An equivalent command line for running the agent locally.
pub fn command_line(join: &JoinInfo<'_>) -> String {
    let namespaces = if join.namespaces.is_empty() {
        String::new()
    } else {
        format!(" --namespaces {}", join.namespaces.join(","))
    };
    format!(
        "flotilla-agent --cluster {} --hub {} --ca-fingerprint {} --token {} --state-dir ./flotilla-agent-{}{namespaces}\n",
        join.cluster, join.hub_address, join.ca_fingerprint, join.token, join.cluster
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_dns_labels() {
        assert!(valid_name("east-1"));
        assert!(!valid_name("East"));
        assert!(!valid_name("-east"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(64)));
    }

    #[test]
    fn server_urls_must_be_http_urls_with_a_host() {
        assert_eq!(
            parse_server("https://10.0.0.1:6443/").unwrap(),
            "https://10.0.0.1:6443"
        );
        for bad in [
            "10.0.0.1:6443",
            "https://",
            "https:///path",
            "https://user@host",
            "https://host/a b",
            "file:///etc/hostname",
        ] {
            assert!(
                matches!(parse_server(bad), Err(Error::InvalidServer(_))),
                "{bad}"
            );
        }
    }

    fn register_message(token: String, uid: &str, reported: &str) -> Register {
        Register {
            token,
            public_key: [7; 32],
            facts: flotilla_common::model::ClusterFacts {
                api_server_url: reported.to_owned(),
                kube_system_uid: uid.to_owned(),
                ..Default::default()
            },
        }
    }

    /// An agent whose registration reply was lost tries again with the same
    /// token and a new key: it gets a new certificate and the first stops
    /// working. Another cluster, a connected cluster and a removed one cannot.
    #[tokio::test]
    async fn a_registration_retried_before_the_first_connection_gets_a_new_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ca = Ca::load_or_create(&store, SystemTime::now()).await.unwrap();
        let now = SystemTime::now();
        let lifetime = DEFAULT_CERT_LIFETIME;
        let east = add(&store, "east", BTreeMap::new(), DEFAULT_TOKEN_TTL, now)
            .await
            .unwrap();
        let first_message = register_message(east.token.clone(), "uid-east", "https://10.0.0.1");
        let first = register(&store, &ca, &first_message, now, lifetime)
            .await
            .unwrap();
        let mut retry = first_message.clone();
        retry.public_key = [8; 32];
        let second = register(&store, &ca, &retry, now, lifetime).await.unwrap();
        assert_eq!(second.cluster, "east");
        assert_ne!(second.certificate, first.certificate);
        assert_eq!(
            store
                .cluster_by_cert(&ca::fingerprint(&second.certificate))
                .unwrap()
                .as_deref(),
            Some("east")
        );
        assert_eq!(
            store
                .cluster_by_cert(&ca::fingerprint(&first.certificate))
                .unwrap(),
            None,
            "the certificate issued first stops working"
        );
        // Another cluster's agent holding the same token is refused.
        let mut other = retry.clone();
        other.facts.kube_system_uid = "uid-other".to_owned();
        assert!(matches!(
            register(&store, &ca, &other, now, lifetime).await,
            Err(RegisterError::UnknownToken)
        ));
        // Past the token's life it is spent.
        let later = now + DEFAULT_TOKEN_TTL + Duration::from_secs(1);
        assert!(matches!(
            register(&store, &ca, &retry, later, lifetime).await,
            Err(RegisterError::UnknownToken)
        ));
        // Once the cluster has connected, it is spent for good.
        store
            .update_link_lazily("east", |link| link.last_seen_ms = Some(1))
            .unwrap();
        assert!(matches!(
            register(&store, &ca, &retry, now, lifetime).await,
            Err(RegisterError::UnknownToken)
        ));
        // A removed cluster stays removed.
        let west = add(&store, "west", BTreeMap::new(), DEFAULT_TOKEN_TTL, now)
            .await
            .unwrap();
        let west_message = register_message(west.token, "uid-west", "https://10.0.0.2");
        register(&store, &ca, &west_message, now, lifetime)
            .await
            .unwrap();
        assert!(store.remove_cluster("west").await.unwrap());
        assert!(matches!(
            register(&store, &ca, &west_message, now, lifetime).await,
            Err(RegisterError::UnknownToken)
        ));
        assert!(store.cluster("west").unwrap().is_none());
        // Nor does the old token register again a cluster of the same name
        // added and registered anew, before it first connects.
        let again = add(&store, "west", BTreeMap::new(), DEFAULT_TOKEN_TTL, now)
            .await
            .unwrap();
        let mut again_message = register_message(again.token, "uid-west", "https://10.0.0.2");
        again_message.public_key = [9; 32];
        register(&store, &ca, &again_message, now, lifetime)
            .await
            .unwrap();
        assert!(matches!(
            register(&store, &ca, &west_message, now, lifetime).await,
            Err(RegisterError::UnknownToken)
        ));
    }

    #[tokio::test]
    async fn the_server_url_is_the_admins_and_an_agent_cannot_claim_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ca = Ca::load_or_create(&store, SystemTime::now()).await.unwrap();
        let ttl = DEFAULT_TOKEN_TTL;
        let now = SystemTime::now();
        let east = add_with_server(
            &store,
            "east",
            BTreeMap::new(),
            Some("https://east.example:6443/"),
            ttl,
            now,
        )
        .await
        .unwrap();
        let west = add(&store, "west", BTreeMap::new(), ttl, now)
            .await
            .unwrap();
        // A second cluster may not take east's URL.
        let taken = add_with_server(
            &store,
            "north",
            BTreeMap::new(),
            Some("https://east.example:6443"),
            ttl,
            now,
        )
        .await;
        assert!(matches!(taken, Err(Error::ServerTaken { .. })), "{taken:?}");
        let lifetime = DEFAULT_CERT_LIFETIME;
        // West's agent reports east's URL about itself.
        let reported = "https://east.example:6443";
        register(
            &store,
            &ca,
            &register_message(east.token, "uid-east", "https://10.0.0.1"),
            now,
            lifetime,
        )
        .await
        .unwrap();
        register(
            &store,
            &ca,
            &register_message(west.token, "uid-west", reported),
            now,
            lifetime,
        )
        .await
        .unwrap();
        let dest = crate::app::Destination {
            name: None,
            server: Some(reported.to_owned()),
            namespace: None,
        };
        let matched: Vec<String> = store
            .clusters()
            .unwrap()
            .into_iter()
            .filter(|c| c.is_destination(&dest))
            .map(|c| c.name)
            .collect();
        assert_eq!(matched, vec!["east".to_owned()]);
        // The admin can change it later; another cluster's URL stays refused.
        let set = set_server(&store, "west", Some("https://west.example:6443")).await;
        assert_eq!(set.unwrap().as_deref(), Some("https://west.example:6443"));
        let stolen = set_server(&store, "west", Some(reported)).await;
        assert!(
            matches!(stolen, Err(Error::ServerTaken { .. })),
            "{stolen:?}"
        );
        assert!(matches!(
            set_server(&store, "nowhere", None).await,
            Err(Error::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_pending_clusters_server_url_can_be_set_before_it_registers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ca = Ca::load_or_create(&store, SystemTime::now()).await.unwrap();
        let now = SystemTime::now();
        let added = add(&store, "east", BTreeMap::new(), DEFAULT_TOKEN_TTL, now)
            .await
            .unwrap();
        set_server(&store, "east", Some("https://east.example:6443"))
            .await
            .unwrap();
        register(
            &store,
            &ca,
            &register_message(added.token, "uid-east", "https://elsewhere"),
            now,
            DEFAULT_CERT_LIFETIME,
        )
        .await
        .unwrap();
        let record = store.cluster("east").unwrap().unwrap();
        assert_eq!(record.server.as_deref(), Some("https://east.example:6443"));
    }

    #[tokio::test]
    async fn a_registration_without_a_kube_system_uid_is_refused_and_keeps_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ca = Ca::load_or_create(&store, SystemTime::now()).await.unwrap();
        let now = SystemTime::now();
        let added = add(&store, "east", BTreeMap::new(), DEFAULT_TOKEN_TTL, now)
            .await
            .unwrap();
        let refused = register(
            &store,
            &ca,
            &register_message(added.token, " ", "https://east"),
            now,
            DEFAULT_CERT_LIFETIME,
        )
        .await;
        assert!(
            matches!(refused, Err(RegisterError::MissingClusterUid)),
            "{refused:?}"
        );
        assert!(store.cluster("east").unwrap().is_none());
        assert_eq!(store.tokens().unwrap().len(), 1);
    }

    #[test]
    fn labels_parse_as_key_value() {
        let labels = parse_labels(&["env=prod".to_owned()]).unwrap();
        assert_eq!(labels.get("env").map(String::as_str), Some("prod"));
        assert!(parse_labels(&["novalue".to_owned()]).is_err());
    }
}
