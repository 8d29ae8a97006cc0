//! An Argo CD AppProject's rules as a bundle carries them, so the agent can enforce
//! them again before it applies anything: the repository the app comes from, where
//! it deploys, and which kinds it may create.
//!
//! Patterns are globs as Argo CD has them: `*` matches anything (also across `/`),
//! a `!pattern` in `sourceRepos` or a destination namespace denies, and a denial
//! wins over any allow. The first rule broken is named in the [`Violation`].

use std::fmt;

use globset::Glob;
use serde::{Deserialize, Serialize};

use crate::bundle::Object;

/// Where an app deploys, as its Application's `spec.destination` says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The cluster's API server URL, if the app names it by server.
    pub server: Option<String>,
    /// The cluster's name, if the app names it by name.
    pub name: Option<String>,
    /// The default namespace of the app's objects.
    pub namespace: Option<String>,
}

/// A `group`/`kind` pair of a whitelist or blacklist; both may be globs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupKind {
    /// API group, empty for the core group.
    pub group: String,
    /// Kind.
    pub kind: String,
}

impl GroupKind {
    /// A pair of patterns.
    pub fn new(group: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            kind: kind.into(),
        }
    }
}

/// The rules of the app's AppProject, and the destination they are checked
/// against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRules {
    /// The AppProject's name.
    pub name: String,
    /// The app's own destination, as its Application wrote it.
    pub destination: Destination,
    /// `spec.sourceRepos`: repository URL globs.
    pub source_repos: Vec<String>,
    /// `spec.destinations`: cluster (server or name) and namespace globs.
    pub destinations: Vec<Destination>,
    /// `spec.clusterResourceWhitelist`; empty allows no cluster-scoped kind.
    pub cluster_resource_whitelist: Vec<GroupKind>,
    /// `spec.clusterResourceBlacklist`.
    pub cluster_resource_blacklist: Vec<GroupKind>,
    /// `spec.namespaceResourceWhitelist`; empty allows every namespaced kind.
    pub namespace_resource_whitelist: Vec<GroupKind>,
    /// `spec.namespaceResourceBlacklist`.
    pub namespace_resource_blacklist: Vec<GroupKind>,
}

/// The rule an app broke, in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The app's repository is not in `sourceRepos`.
    #[error("project {project}: repository {repo} is not permitted by spec.sourceRepos")]
    SourceRepo {
        /// The project.
        project: String,
        /// The repository.
        repo: String,
    },
    /// The destination, or an object's namespace, is not in `destinations`.
    #[error("project {project}: destination {destination} is not permitted by spec.destinations")]
    Destination {
        /// The project.
        project: String,
        /// The cluster and namespace.
        destination: String,
    },
    /// A cluster-scoped kind is not whitelisted, or is blacklisted.
    #[error("project {project}: cluster-scoped {kind} {name} is not permitted by {rule}")]
    ClusterResource {
        /// The project.
        project: String,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The rule, such as `spec.clusterResourceWhitelist`.
        rule: &'static str,
    },
    /// A namespaced kind is not whitelisted, or is blacklisted.
    #[error("project {project}: {kind} {name} is not permitted by {rule}")]
    NamespaceResource {
        /// The project.
        project: String,
        /// The object's kind.
        kind: String,
        /// `namespace/name`.
        name: String,
        /// The rule, such as `spec.namespaceResourceBlacklist`.
        rule: &'static str,
    },
}

/// Matches like Argo CD's globs; an invalid pattern matches only itself.
fn matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" || pattern == value {
        return true;
    }
    Glob::new(pattern).is_ok_and(|g| g.compile_matcher().is_match(value))
}

/// Allowed by patterns where `!pattern` denies and a plain one allows.
fn permitted<'a>(patterns: impl Iterator<Item = &'a str> + Clone, value: &str) -> bool {
    let denied = patterns
        .clone()
        .filter_map(|p| p.strip_prefix('!'))
        .any(|p| matches(p, value));
    !denied
        && patterns
            .filter(|p| !p.starts_with('!'))
            .any(|p| matches(p, value))
}

fn listed(list: &[GroupKind], group: &str, kind: &str) -> bool {
    list.iter()
        .any(|gk| matches(&gk.group, group) && matches(&gk.kind, kind))
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cluster = self
            .name
            .as_deref()
            .or(self.server.as_deref())
            .unwrap_or("?");
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => write!(f, "{cluster} namespace {ns}"),
            _ => f.write_str(cluster),
        }
    }
}

impl ProjectRules {
    /// Argo CD's built-in `default` project: every repository, destination and
    /// kind, for an app deploying to the cluster named `cluster`.
    pub fn allow_all(project: impl Into<String>, cluster: impl Into<String>) -> Self {
        let any = || Some("*".to_owned());
        Self {
            name: project.into(),
            destination: Destination {
                server: None,
                name: Some(cluster.into()),
                namespace: None,
            },
            source_repos: vec!["*".to_owned()],
            destinations: vec![Destination {
                server: any(),
                name: any(),
                namespace: any(),
            }],
            cluster_resource_whitelist: vec![GroupKind::new("*", "*")],
            cluster_resource_blacklist: Vec::new(),
            namespace_resource_whitelist: Vec::new(),
            namespace_resource_blacklist: Vec::new(),
        }
    }

    /// Checks that `repo` is one `spec.sourceRepos` allows: before anything is
    /// fetched from it on the project's behalf.
    pub fn permits_repo(&self, repo: &str) -> Result<(), Violation> {
        let repo = repo.trim_end_matches('/');
        if permitted(
            self.source_repos.iter().map(|p| p.trim_end_matches('/')),
            repo,
        ) {
            return Ok(());
        }
        Err(Violation::SourceRepo {
            project: self.name.clone(),
            repo: repo.to_owned(),
        })
    }

    /// Checks an app from `repo` with these `objects` against the rules. An app
    /// whose destination names no cluster is taken to deploy to `cluster`, the
    /// cluster the bundle is addressed to.
    pub fn permits(&self, repo: &str, cluster: &str, objects: &[Object]) -> Result<(), Violation> {
        let project = self.name.clone();
        self.permits_repo(repo)?;
        let mut dest = self.destination.clone();
        if dest.name.is_none() && dest.server.is_none() {
            dest.name = Some(cluster.to_owned());
        }
        let app_namespace = dest.namespace.clone().unwrap_or_default();
        if !self.destination_permitted(&dest, &app_namespace) {
            return Err(Violation::Destination {
                project,
                destination: dest.to_string(),
            });
        }
        for object in objects {
            let (group, kind, name) = (&object.gvk.group, &object.gvk.kind, &object.name);
            match &object.namespace {
                None => {
                    let rule = if !listed(&self.cluster_resource_whitelist, group, kind) {
                        Some("spec.clusterResourceWhitelist")
                    } else if listed(&self.cluster_resource_blacklist, group, kind) {
                        Some("spec.clusterResourceBlacklist")
                    } else {
                        None
                    };
                    if let Some(rule) = rule {
                        return Err(Violation::ClusterResource {
                            project,
                            kind: kind.clone(),
                            name: name.clone(),
                            rule,
                        });
                    }
                }
                Some(namespace) => {
                    if !self.destination_permitted(&dest, namespace) {
                        let mut at = dest.clone();
                        at.namespace = Some(namespace.clone());
                        return Err(Violation::Destination {
                            project,
                            destination: at.to_string(),
                        });
                    }
                    let whitelist = &self.namespace_resource_whitelist;
                    let rule = if !whitelist.is_empty() && !listed(whitelist, group, kind) {
                        Some("spec.namespaceResourceWhitelist")
                    } else if listed(&self.namespace_resource_blacklist, group, kind) {
                        Some("spec.namespaceResourceBlacklist")
                    } else {
                        None
                    };
                    if let Some(rule) = rule {
                        return Err(Violation::NamespaceResource {
                            project,
                            kind: kind.clone(),
                            name: format!("{namespace}/{name}"),
                            rule,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn destination_permitted(&self, dest: &Destination, namespace: &str) -> bool {
        let fits = |d: &Destination, namespace_pattern: &str| {
            let cluster = match (&dest.name, &dest.server) {
                (Some(name), _) => {
                    d.name.as_deref().is_some_and(|p| matches(p, name))
                        || d.server.as_deref() == Some("*")
                }
                (None, Some(server)) => {
                    d.server.as_deref().is_some_and(|p| matches(p, server))
                        || d.name.as_deref() == Some("*")
                }
                (None, None) => false,
            };
            cluster && matches(namespace_pattern, namespace)
        };
        let denied = self.destinations.iter().any(|d| {
            d.namespace
                .as_deref()
                .and_then(|n| n.strip_prefix('!'))
                .is_some_and(|n| fits(d, n))
        });
        !denied
            && self.destinations.iter().any(|d| {
                let pattern = d.namespace.as_deref().unwrap_or("*");
                !pattern.starts_with('!') && fits(d, pattern)
            })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::Gvk;

    fn object(group: &str, kind: &str, namespace: Option<&str>) -> Object {
        Object::new(
            Gvk::new(group, "v1", kind),
            namespace.map(str::to_owned),
            "x",
            &json!({}),
        )
    }

    /// Like the hub's tests: a web team's project.
    fn web(namespace: &str) -> ProjectRules {
        ProjectRules {
            name: "web".into(),
            destination: Destination {
                server: None,
                name: Some("east".into()),
                namespace: Some(namespace.into()),
            },
            source_repos: vec![
                "https://git.example/web/*".into(),
                "!https://git.example/web/secret*".into(),
            ],
            destinations: vec![Destination {
                server: None,
                name: Some("east".into()),
                namespace: Some("shop-*".into()),
            }],
            cluster_resource_whitelist: vec![GroupKind::new("", "Namespace")],
            cluster_resource_blacklist: Vec::new(),
            namespace_resource_whitelist: Vec::new(),
            namespace_resource_blacklist: vec![GroupKind::new("", "ResourceQuota")],
        }
    }

    const REPO: &str = "https://git.example/web/shop.git";

    #[test]
    fn the_default_project_permits_everything() {
        let rules = ProjectRules::allow_all("default", "east");
        let objects = [
            object("rbac.authorization.k8s.io", "ClusterRole", None),
            object("", "Secret", Some("kube-system")),
        ];
        assert_eq!(
            rules.permits("https://any.example/x", "east", &objects),
            Ok(())
        );
    }

    #[test]
    fn each_rule_is_named_when_broken() {
        let rules = web("shop-a");
        let ok = [
            object("", "Namespace", None),
            object("apps", "Deployment", Some("shop-a")),
        ];
        assert_eq!(rules.permits(REPO, "east", &ok), Ok(()));
        let cases: [(&str, Object, &str); 4] = [
            (
                "https://git.example/web/secrets.git",
                object("", "ConfigMap", Some("shop-a")),
                "spec.sourceRepos",
            ),
            (
                REPO,
                object("", "ConfigMap", Some("kube-system")),
                "east namespace kube-system is not permitted by spec.destinations",
            ),
            (
                REPO,
                object("rbac.authorization.k8s.io", "ClusterRole", None),
                "ClusterRole x is not permitted by spec.clusterResourceWhitelist",
            ),
            (
                REPO,
                object("", "ResourceQuota", Some("shop-a")),
                "spec.namespaceResourceBlacklist",
            ),
        ];
        for (repo, object, rule) in cases {
            let error = rules.permits(repo, "east", &[object]).unwrap_err();
            assert!(error.to_string().contains(rule), "{error} lacks {rule}");
        }
        let mut only_maps = web("shop-a");
        only_maps.namespace_resource_whitelist = vec![GroupKind::new("", "ConfigMap")];
        assert!(matches!(
            only_maps.permits(
                REPO,
                "east",
                &[object("apps", "Deployment", Some("shop-a"))]
            ),
            Err(Violation::NamespaceResource {
                rule: "spec.namespaceResourceWhitelist",
                ..
            })
        ));
    }

    #[test]
    fn the_app_destination_itself_must_be_permitted() {
        let error = web("default").permits(REPO, "east", &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "project web: destination east namespace default is not permitted by spec.destinations"
        );
        let mut denying = web("shop-a");
        denying.destinations.push(Destination {
            server: None,
            name: Some("east".into()),
            namespace: Some("!shop-a".into()),
        });
        assert!(denying.permits(REPO, "east", &[]).is_err());
    }
}
