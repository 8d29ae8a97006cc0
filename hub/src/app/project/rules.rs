//! An AppProject's rules, enforced on what an app renders: the repo it comes from,
//! where it goes, and which kinds it may create. Patterns are globs as Argo CD has
//! them (`*` matches anything, `!pattern` denies), and the first rule broken is
//! named in the error.

use flotilla_common::bundle::Object;
use globset::{Glob, GlobMatcher};

use super::{AppProject, GroupKind, ProjectDestination};
use crate::app::{Application, Destination};

/// The rule an app broke, in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The app's repo is not in `sourceRepos`.
    #[error("project {project}: repository {repo} is not permitted by spec.sourceRepos")]
    SourceRepo { project: String, repo: String },
    /// The destination (or an object's namespace) is not in `destinations`.
    #[error("project {project}: destination {destination} is not permitted by spec.destinations")]
    Destination {
        project: String,
        destination: String,
    },
    /// A cluster-scoped kind is not whitelisted, or is blacklisted.
    #[error("project {project}: cluster-scoped {kind} {name} is not permitted by {rule}")]
    ClusterResource {
        project: String,
        kind: String,
        name: String,
        rule: &'static str,
    },
    /// A namespaced kind is not whitelisted, or is blacklisted.
    #[error("project {project}: {kind} {name} is not permitted by {rule}")]
    NamespaceResource {
        project: String,
        kind: String,
        name: String,
        rule: &'static str,
    },
    /// The app names a project the hub does not have.
    #[error("project {project} does not exist")]
    NoSuchProject { project: String },
}

/// Argo CD's built-in `default` project: every repo, destination and kind.
pub fn built_in_default() -> AppProject {
    let text = "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {name: default}\nspec:\n  sourceRepos: ['*']\n  destinations: [{server: '*', name: '*', namespace: '*'}]\n  clusterResourceWhitelist: [{group: '*', kind: '*'}]\n";
    let doc = serde_saphyr::from_str(text).expect("invariant: the default project parses");
    AppProject::from_value(doc, "built-in").expect("invariant: the default project is valid")
}

/// Matches like Argo CD's globs: `*` crosses `/`, and an invalid pattern matches
/// only itself.
fn matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" || pattern == value {
        return true;
    }
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .is_ok_and(|m: GlobMatcher| m.is_match(value))
}

/// Allowed by a list of patterns where `!pattern` denies and a plain one allows.
fn permitted<'a>(patterns: impl IntoIterator<Item = &'a str> + Clone, value: &str) -> bool {
    let denied = patterns
        .clone()
        .into_iter()
        .filter_map(|p| p.strip_prefix('!'))
        .any(|p| matches(p, value));
    !denied
        && patterns
            .into_iter()
            .filter(|p| !p.starts_with('!'))
            .any(|p| matches(p, value))
}

fn kind_listed(list: &[GroupKind], group: &str, kind: &str) -> bool {
    list.iter()
        .any(|gk| matches(&gk.group, group) && matches(&gk.kind, kind))
}

impl AppProject {
    /// Checks `app` and the objects it rendered against this project.
    pub fn permits(&self, app: &Application, objects: &[Object]) -> Result<(), Violation> {
        let project = self.name().to_owned();
        let spec = &self.spec;
        let repo = app.source().repo_url.trim_end_matches('/');
        let repo_patterns = spec.source_repos.iter().map(|p| p.trim_end_matches('/'));
        if !permitted(repo_patterns, repo) {
            return Err(Violation::SourceRepo {
                project,
                repo: repo.to_owned(),
            });
        }
        let dest = &app.spec.destination;
        if !self.destination_permitted(dest, dest.namespace.as_deref().unwrap_or("")) {
            return Err(Violation::Destination {
                project,
                destination: describe(dest, dest.namespace.as_deref()),
            });
        }
        for object in objects {
            let (group, kind, name) = (&object.gvk.group, &object.gvk.kind, &object.name);
            match &object.namespace {
                None => {
                    if !kind_listed(&spec.cluster_resource_whitelist, group, kind) {
                        return Err(Violation::ClusterResource {
                            project,
                            kind: kind.clone(),
                            name: name.clone(),
                            rule: "spec.clusterResourceWhitelist",
                        });
                    }
                    if kind_listed(&spec.cluster_resource_blacklist, group, kind) {
                        return Err(Violation::ClusterResource {
                            project,
                            kind: kind.clone(),
                            name: name.clone(),
                            rule: "spec.clusterResourceBlacklist",
                        });
                    }
                }
                Some(namespace) => {
                    if !self.destination_permitted(dest, namespace) {
                        return Err(Violation::Destination {
                            project,
                            destination: describe(dest, Some(namespace)),
                        });
                    }
                    let whitelist = &spec.namespace_resource_whitelist;
                    if !whitelist.is_empty() && !kind_listed(whitelist, group, kind) {
                        return Err(Violation::NamespaceResource {
                            project,
                            kind: kind.clone(),
                            name: format!("{namespace}/{name}"),
                            rule: "spec.namespaceResourceWhitelist",
                        });
                    }
                    if kind_listed(&spec.namespace_resource_blacklist, group, kind) {
                        return Err(Violation::NamespaceResource {
                            project,
                            kind: kind.clone(),
                            name: format!("{namespace}/{name}"),
                            rule: "spec.namespaceResourceBlacklist",
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn destination_permitted(&self, dest: &Destination, namespace: &str) -> bool {
        let fits = |d: &ProjectDestination| {
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
            cluster && matches(d.namespace.as_deref().unwrap_or("*"), namespace)
        };
        let denied = self.spec.destinations.iter().any(|d| {
            d.namespace
                .as_deref()
                .and_then(|n| n.strip_prefix('!'))
                .is_some_and(|n| matches(n, namespace))
                && fits(&ProjectDestination {
                    namespace: Some("*".to_owned()),
                    ..d.clone()
                })
        });
        !denied
            && self
                .spec
                .destinations
                .iter()
                .filter(|d| !d.namespace.as_deref().is_some_and(|n| n.starts_with('!')))
                .any(fits)
    }
}

fn describe(dest: &Destination, namespace: Option<&str>) -> String {
    let cluster = dest
        .name
        .as_deref()
        .or(dest.server.as_deref())
        .unwrap_or("?");
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{cluster} namespace {ns}"),
        _ => cluster.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use flotilla_common::model::Gvk;
    use serde_json::json;

    use super::*;

    fn project(spec: &str) -> AppProject {
        let text = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: web}}\nspec:\n{spec}"
        );
        AppProject::from_value(serde_saphyr::from_str(&text).unwrap(), "test").unwrap()
    }

    fn app(repo: &str, dest: &str) -> Application {
        Application::from_yaml(
            &format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: a}}\nspec:\n  project: web\n  source: {{repoURL: '{repo}', path: a}}\n  destination: {dest}\n"
            ),
            "test",
        )
        .unwrap()
    }

    fn object(group: &str, kind: &str, namespace: Option<&str>) -> Object {
        Object::new(
            Gvk::new(group, "v1", kind),
            namespace.map(str::to_owned),
            "x",
            &json!({}),
        )
    }

    const WEB: &str = "  sourceRepos: ['https://git.example/web/*', '!https://git.example/web/secret*']\n  destinations:\n    - {name: east, namespace: 'shop-*'}\n    - {server: 'https://10.*', namespace: shop-prod}\n  namespaceResourceBlacklist: [{group: '', kind: ResourceQuota}]\n  clusterResourceWhitelist: [{group: '', kind: Namespace}]\n";

    #[test]
    fn the_default_project_permits_everything() {
        let a = app(
            "https://anywhere.example/x.git",
            "{server: 'https://kubernetes.default.svc', namespace: kube-system}",
        );
        let objects = [
            object("rbac.authorization.k8s.io", "ClusterRole", None),
            object("", "Secret", Some("kube-system")),
        ];
        assert_eq!(built_in_default().permits(&a, &objects), Ok(()));
    }

    #[test]
    fn a_repo_outside_source_repos_is_refused_and_negation_wins() {
        let p = project(WEB);
        assert_eq!(
            p.permits(
                &app(
                    "https://git.example/web/shop.git",
                    "{name: east, namespace: shop-a}"
                ),
                &[]
            ),
            Ok(())
        );
        let e = p
            .permits(
                &app(
                    "https://git.example/db/x.git",
                    "{name: east, namespace: shop-a}",
                ),
                &[],
            )
            .unwrap_err();
        assert!(e.to_string().contains("spec.sourceRepos"), "{e}");
        assert!(matches!(
            p.permits(
                &app(
                    "https://git.example/web/secrets.git",
                    "{name: east, namespace: shop-a}"
                ),
                &[]
            ),
            Err(Violation::SourceRepo { .. })
        ));
    }

    #[test]
    fn destinations_match_by_name_or_server_with_namespace_globs() {
        let p = project(WEB);
        let repo = "https://git.example/web/shop.git";
        assert_eq!(
            p.permits(&app(repo, "{name: east, namespace: shop-a}"), &[]),
            Ok(())
        );
        assert_eq!(
            p.permits(
                &app(
                    repo,
                    "{server: 'https://10.0.0.1:6443', namespace: shop-prod}"
                ),
                &[]
            ),
            Ok(())
        );
        let e = p
            .permits(&app(repo, "{name: west, namespace: shop-a}"), &[])
            .unwrap_err();
        assert!(
            e.to_string().contains("west namespace shop-a")
                && e.to_string().contains("spec.destinations"),
            "{e}"
        );
        assert!(
            p.permits(&app(repo, "{name: east, namespace: default}"), &[])
                .is_err()
        );
    }

    #[test]
    fn an_object_in_a_namespace_outside_the_destinations_is_refused() {
        let p = project(WEB);
        let a = app(
            "https://git.example/web/shop.git",
            "{name: east, namespace: shop-a}",
        );
        let e = p
            .permits(&a, &[object("", "ConfigMap", Some("kube-system"))])
            .unwrap_err();
        assert!(e.to_string().contains("namespace kube-system"), "{e}");
    }

    #[test]
    fn cluster_scoped_kinds_need_the_whitelist_and_blacklists_refuse() {
        let p = project(WEB);
        let a = app(
            "https://git.example/web/shop.git",
            "{name: east, namespace: shop-a}",
        );
        assert_eq!(p.permits(&a, &[object("", "Namespace", None)]), Ok(()));
        let e = p
            .permits(
                &a,
                &[object("rbac.authorization.k8s.io", "ClusterRole", None)],
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("ClusterRole x")
                && e.to_string().contains("spec.clusterResourceWhitelist"),
            "{e}"
        );
        let e = p
            .permits(&a, &[object("", "ResourceQuota", Some("shop-a"))])
            .unwrap_err();
        assert!(
            e.to_string().contains("spec.namespaceResourceBlacklist"),
            "{e}"
        );
        let only_configmaps = project(&format!(
            "{WEB}  namespaceResourceWhitelist: [{{group: '', kind: ConfigMap}}]\n"
        ));
        assert_eq!(
            only_configmaps.permits(&a, &[object("", "ConfigMap", Some("shop-a"))]),
            Ok(())
        );
        assert!(matches!(
            only_configmaps.permits(&a, &[object("apps", "Deployment", Some("shop-a"))]),
            Err(Violation::NamespaceResource {
                rule: "spec.namespaceResourceWhitelist",
                ..
            })
        ));
    }

    #[test]
    fn the_rules_a_bundle_carries_give_the_agent_the_hubs_verdicts() {
        let p = project(WEB);
        let repo = "https://git.example/web/shop.git";
        let cases = [
            (
                repo,
                "{name: east, namespace: shop-a}",
                object("", "ConfigMap", Some("shop-a")),
            ),
            (
                repo,
                "{name: east, namespace: shop-a}",
                object("", "ConfigMap", Some("kube-system")),
            ),
            (
                repo,
                "{name: west, namespace: shop-a}",
                object("", "ConfigMap", Some("shop-a")),
            ),
            (
                "https://git.example/web/secrets.git",
                "{name: east, namespace: shop-a}",
                object("", "Secret", Some("shop-a")),
            ),
            (
                repo,
                "{name: east, namespace: shop-a}",
                object("rbac.authorization.k8s.io", "ClusterRole", None),
            ),
            (
                repo,
                "{name: east, namespace: shop-a}",
                object("", "Namespace", None),
            ),
            (
                repo,
                "{name: east, namespace: shop-a}",
                object("", "ResourceQuota", Some("shop-a")),
            ),
            (
                repo,
                "{server: 'https://10.0.0.1:6443', namespace: shop-prod}",
                object("", "ConfigMap", Some("shop-prod")),
            ),
        ];
        for (repo, dest, object) in cases {
            let a = app(repo, dest);
            let objects = [object];
            let hub = p.permits(&a, &objects).map_err(|v| v.to_string());
            let agent = p
                .rules(&a.spec.destination)
                .permits(repo, "east", &objects)
                .map_err(|v| v.to_string());
            assert_eq!(hub, agent, "{repo} {dest}");
        }
    }
}
