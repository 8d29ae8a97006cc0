//! The shared vocabulary: apps, clusters, resources, times and the sync and health
//! states that the hub and the agent talk about.
//!
//! Everything here crosses the wire in bincode, so nothing uses `flatten`,
//! `untagged` or `skip_serializing_if`, and maps are `BTreeMap`s or sorted `Vec`s so
//! that the same value always encodes to the same bytes.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in wall-clock time, in whole seconds since the Unix epoch.
///
/// Bundles carry these (`created_at`, `not_after`), so they are wall-clock, not
/// monotonic. The caller reads the clock and passes the value in.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Converts a `SystemTime`, clamping times before the epoch to the epoch.
    pub fn from_system_time(time: SystemTime) -> Self {
        Self(
            time.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }

    /// This time plus `duration`, saturating at the far future.
    #[must_use]
    pub fn saturating_add(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(duration.as_secs()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0)
    }
}

/// An Argo CD application, named by its AppProject and its own name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AppRef {
    /// The AppProject that the application belongs to.
    pub project: String,
    /// The application's name.
    pub name: String,
}

impl AppRef {
    /// Names an application in a project.
    pub fn new(project: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            project: project.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for AppRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project, self.name)
    }
}

/// A Kubernetes group, version and kind. The core group is the empty string.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Gvk {
    /// API group, empty for the core group.
    pub group: String,
    /// API version within the group, such as `v1`.
    pub version: String,
    /// Kind, such as `Deployment`.
    pub kind: String,
}

impl Gvk {
    /// Builds a group, version and kind.
    pub fn new(
        group: impl Into<String>,
        version: impl Into<String>,
        kind: impl Into<String>,
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        }
    }
}

/// One Kubernetes object, named by kind, namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceRef {
    /// The object's group, version and kind.
    pub gvk: Gvk,
    /// The namespace, or `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
}

/// Whether live state matches desired state, as Argo CD reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SyncStatus {
    /// Live state matches the bundle.
    Synced,
    /// Live state differs from the bundle.
    OutOfSync,
    /// Not known yet, for example before the first comparison.
    #[default]
    Unknown,
}

/// The health of a resource or an app, as Argo CD reports it.
///
/// The variants are ordered from best to worst, so an app's health is the maximum
/// of its resources' health (see [`Health::worst`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Health {
    /// Everything is as it should be.
    Healthy,
    /// Suspended on purpose, for example a paused rollout or a suspended CronJob.
    Suspended,
    /// Moving towards healthy.
    Progressing,
    /// The object does not exist in the cluster.
    Missing,
    /// Failed, or cannot become healthy.
    Degraded,
    /// Health could not be judged.
    #[default]
    Unknown,
}

impl Health {
    /// The worst of several health values; `Healthy` when there are none.
    ///
    /// The order follows Argo CD: Healthy < Suspended < Progressing < Missing <
    /// Degraded < Unknown.
    pub fn worst(values: impl IntoIterator<Item = Health>) -> Health {
        values.into_iter().max().unwrap_or(Health::Healthy)
    }
}

/// One API resource the cluster serves, as discovery reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ApiResource {
    /// `group/version`, or just `version` for the core group.
    pub group_version: String,
    /// The kind served, such as `Deployment`.
    pub kind: String,
    /// The plural resource name, such as `deployments`.
    pub plural: String,
    /// Whether objects of this kind live in a namespace.
    pub namespaced: bool,
}

/// What an agent tells the hub about its cluster when it registers.
///
/// The hub uses these for Helm's `--kube-version` and `--api-versions`, and the
/// kube-system namespace UID identifies the cluster even if its URL changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFacts {
    /// The API server's version, such as `v1.35.0`.
    pub kubernetes_version: String,
    /// Every API resource discovery reported.
    pub api_resources: Vec<ApiResource>,
    /// The API server URL as the agent sees it.
    pub api_server_url: String,
    /// The UID of the `kube-system` namespace.
    pub kube_system_uid: String,
}

/// Argo CD's kind order inside one wave; unknown kinds (custom resources) go last.
pub const KIND_ORDER: &[&str] = &[
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
];

/// The position of `kind` in Argo CD's order, shared by the hub (which prints objects
/// in apply order) and the agent (which applies them in it).
pub fn kind_rank(kind: &str) -> usize {
    KIND_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KIND_ORDER.len())
}

/// An RFC 1123 label, as Kubernetes names namespaces (and Flotilla names
/// clusters): 1–63 lowercase letters, digits and `-`, not starting or ending
/// with `-`.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && is_label_text(name)
}

/// An RFC 1123 subdomain, as Kubernetes names most objects: at most 253
/// characters of labels joined by `.`.
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_label_text)
}

fn is_label_text(label: &str) -> bool {
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn dns_labels_and_subdomains() {
        for good in ["east", "east-1", "a", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in [
            "",
            "East",
            "-east",
            "east-",
            "a.b",
            "a b",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("shop.team-a.example"));
        for bad in ["", "a..b", ".a", "a.", "A.b", "a.-b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
