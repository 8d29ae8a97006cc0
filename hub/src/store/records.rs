//! What the store keeps, one type per tree.

use std::collections::BTreeMap;
use std::fmt;

use flotilla_common::model::ClusterFacts;
use serde::{Deserialize, Serialize};

use crate::app::adoption::Refusal;
use crate::app::{Application, Destination, IN_CLUSTER_NAME, IN_CLUSTER_SERVER, SourceKind};
use crate::source::{Credentials, RepoSpec, RepoType, TlsClientCert};

/// A registered repository (Git, Helm or OCI), or a credential template whose
/// URL is a prefix (Argo CD's `repo-creds`). Its credentials are stored, never
/// shown: `Debug` leaves them out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    pub url: String,
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// Git, Helm or OCI.
    #[serde(default)]
    pub repo_type: RepoType,
    /// A credential template: its credentials serve every repository whose URL
    /// starts with `url` and that has none of its own; it is never polled.
    #[serde(default)]
    pub template: bool,
    /// A TLS client certificate (Helm and OCI repositories).
    #[serde(default)]
    pub tls_client: Option<TlsClientCert>,
    /// A Helm repository that is an OCI registry though its URL has no `oci://`.
    #[serde(default)]
    pub enable_oci: bool,
    /// Seconds between polls; 180 by default, as in Argo CD.
    pub poll_interval_secs: u64,
    /// The secret webhook payloads for this repo must be signed with, if any.
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

impl fmt::Debug for RepoRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoRecord")
            .field("url", &self.spec().redacted_url())
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .field("repo_type", &self.repo_type)
            .field("template", &self.template)
            .field(
                "tls_client",
                &self.tls_client.as_ref().map(|_| "<redacted>"),
            )
            .field("enable_oci", &self.enable_oci)
            .field("poll_interval_secs", &self.poll_interval_secs)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl RepoRecord {
    pub fn new(spec: RepoSpec) -> Self {
        Self {
            url: spec.url,
            credentials: spec.credentials,
            repo_type: RepoType::Git,
            template: false,
            tls_client: None,
            enable_oci: false,
            poll_interval_secs: crate::source::DEFAULT_POLL_INTERVAL.as_secs(),
            webhook_secret: None,
        }
    }

    /// A record of what an Argo CD repository Secret or credential template says.
    pub fn from_secret(secret: crate::source::RepositorySecret) -> Self {
        Self {
            repo_type: secret.repo_type,
            template: secret.template,
            tls_client: secret.tls_client,
            enable_oci: secret.enable_oci,
            ..Self::new(secret.spec)
        }
    }

    /// How to reach the chart repository at `url` with what this record holds
    /// (from [`crate::store::Store::repo_access`]; `None` for no credentials).
    /// `pass_credentials` is the app's `helm.passCredentials`.
    pub fn chart_repo(
        access: Option<Self>,
        url: &str,
        pass_credentials: bool,
    ) -> crate::chart::ChartRepo {
        crate::chart::ChartRepo {
            url: url.to_owned(),
            oci: access
                .as_ref()
                .is_some_and(|a| a.enable_oci || a.repo_type == RepoType::Oci),
            credentials: access.as_ref().and_then(|a| a.credentials.clone()),
            tls_client: access.and_then(|a| a.tls_client),
            pass_credentials,
        }
    }

    /// Whether it holds charts (a Helm repository or an OCI registry).
    pub fn holds_charts(&self) -> bool {
        self.repo_type != RepoType::Git || self.enable_oci
    }

    /// What the Git layer needs to fetch it.
    pub fn spec(&self) -> RepoSpec {
        RepoSpec {
            url: self.url.clone(),
            credentials: self.credentials.clone(),
        }
    }
}

/// Where an app was declared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AppOrigin {
    /// Through the CLI or API.
    Store,
    /// Rendered by another app (app of apps), which owns it.
    Parent { project: String, name: String },
}

/// An app the hub manages, and what came of rendering it last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub application: Application,
    pub origin: AppOrigin,
    /// The commit last rendered, if any.
    #[serde(default)]
    pub rendered_commit: Option<String>,
    /// What each source was resolved to in the last render, in the order of the
    /// app's sources: a commit for Git, `version (sha256:…)` for a chart. A new
    /// revision of any source renders the app again.
    #[serde(default)]
    pub rendered_revisions: Vec<String>,
    /// How that commit was rendered (after detection), to tell which later changes
    /// can affect the app.
    #[serde(default)]
    pub rendered_kind: Option<SourceKind>,
    /// Why the last render failed, with the tool's message. While set, the app's
    /// last good bundle stays in force: a failed render never becomes an empty one.
    #[serde(default)]
    pub render_error: Option<String>,
    /// Whether `render_error` is the app's AppProject refusing it, rather than the
    /// source failing to render.
    #[serde(default)]
    pub project_violation: bool,
    /// The Argo CD objects the last render of this app (as a parent) produced that
    /// the hub refused to adopt, each with the rule it broke.
    #[serde(default)]
    pub refused_children: Vec<Refusal>,
}

impl AppRecord {
    pub fn new(application: Application, origin: AppOrigin) -> Self {
        Self {
            application,
            origin,
            rendered_commit: None,
            rendered_revisions: Vec::new(),
            rendered_kind: None,
            render_error: None,
            project_violation: false,
            refused_children: Vec::new(),
        }
    }

    pub fn project(&self) -> String {
        self.application.spec.project.clone()
    }

    pub fn name(&self) -> String {
        self.application.metadata.name.clone()
    }

    /// Whether any of the app's sources is the repository at `url`.
    pub fn uses_repository(&self, url: &str) -> bool {
        self.application
            .sources()
            .iter()
            .any(|s| same_source_repository(&s.repo_url, url))
    }
}

/// Whether two repository URLs name the same repository: the same text
/// (`oci://` and a trailing `/` aside), or the same to Git on the same port
/// (Git's comparison leaves ports out, which would make two servers on one host
/// one repository).
pub fn same_source_repository(a: &str, b: &str) -> bool {
    let plain = |u: &str| {
        let u = u.trim();
        u.strip_prefix("oci://")
            .unwrap_or(u)
            .trim_end_matches('/')
            .to_owned()
    };
    let port = |u: &str| {
        let (_, rest) = u.split_once("://")?;
        let authority = rest.split('/').next().unwrap_or("");
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        host.rsplit_once(':').map(|(_, p)| p.to_owned())
    };
    plain(a) == plain(b) || (crate::source::webhook::same_repository(a, b) && port(a) == port(b))
}

/// A cluster the hub knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The API server URL the admin gave (`cluster add --server`, `cluster set
    /// --server`): what an Application's `destination.server` is matched
    /// against. Never taken from the agent, which could otherwise claim another
    /// cluster's URL and receive its apps.
    #[serde(default)]
    pub server: Option<String>,
    /// What its agent reported when it registered. Shown, never trusted for
    /// placement.
    #[serde(default)]
    pub facts: Option<ClusterFacts>,
}

impl ClusterRecord {
    /// Whether an Application's destination names this cluster: `name` by cluster
    /// name, `server` by the URL the admin set for it, and Argo CD's
    /// `https://kubernetes.default.svc` also by the cluster the admin named
    /// `in-cluster`. A cluster without an admin-set URL is reached by name only.
    pub fn is_destination(&self, dest: &Destination) -> bool {
        match (&dest.name, &dest.server) {
            (Some(name), _) => *name == self.name,
            (None, Some(server)) => {
                let server = server.trim_end_matches('/');
                let by_url = self
                    .server
                    .as_deref()
                    .is_some_and(|own| own.trim_end_matches('/') == server);
                by_url || (server == IN_CLUSTER_SERVER && self.name == IN_CLUSTER_NAME)
            }
            (None, None) => false,
        }
    }
}

/// One sync, as `argocd app history` lists it: what an agent reported as the end of
/// an operation on one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Increasing per app.
    pub id: u64,
    /// The cluster the operation ran on.
    #[serde(default)]
    pub cluster: String,
    /// The commit the bundle was rendered from.
    pub revision: String,
    /// The bundle's digest, `sha256:…`.
    #[serde(default)]
    pub digest: String,
    pub generation: u64,
    pub started_at_ms: u64,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// How it ended.
    pub result: super::ops::Phase,
    /// The agent's summary, or why it failed.
    #[serde(default)]
    pub message: String,
    /// Who started it: a user, `automated` (a new bundle under automated sync) or
    /// `selfHeal`.
    pub initiated_by: String,
    /// What the operation did to each resource, in apply order.
    #[serde(default)]
    pub resources: Vec<ResourceOutcome>,
}

/// What one operation did to one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceOutcome {
    pub group: String,
    pub version: String,
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    /// `Created`, `Configured`, `Unchanged`, `Pruned`, `Failed`, … as the agent
    /// reported it.
    pub action: String,
    #[serde(default)]
    pub message: Option<String>,
}

/// An audit record: who did what to which object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub detail: String,
}

impl Event {
    /// An event stamped with the current time.
    pub fn now(actor: &str, action: &str, target: impl Into<String>, detail: &str) -> Self {
        Self {
            at_ms: crate::cluster::epoch_ms(std::time::SystemTime::now()),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.into(),
            detail: detail.to_owned(),
        }
    }
}
