//! An AppProject's rules, enforced on what an app renders: the repo it comes from,
//! where it goes, and which kinds it may create. Patterns are globs as Argo CD has
//! them (`*` matches anything, `!pattern` denies), and the first rule broken is
//! named in the error.
//!
//! The matching itself is `flotilla_common::project`'s, the same code the agent
//! runs on the rules a bundle carries, so hub and agent cannot disagree.

use flotilla_common::bundle::{Bundle, Object};
use flotilla_common::project as common;

use super::AppProject;
use crate::app::Application;

/// The rule an app broke, in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A rule of the project: its source repos, destinations or resource lists.
    #[error(transparent)]
    Rule(#[from] common::Violation),
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

impl AppProject {
    /// Checks `app` and the objects it rendered against this project.
    /// Every source's repository must be allowed, a `ref` source's too: its
    /// files reach the render.
    pub fn permits(&self, app: &Application, objects: &[Object]) -> Result<(), Violation> {
        for source in app.sources() {
            self.permits_from(app, &source.repo_url, objects)?;
        }
        Ok(())
    }

    /// Checks that the project allows fetching from `repo` (`spec.sourceRepos`),
    /// as an ApplicationSet's git generator does for the app that holds it.
    pub fn permits_repo(&self, repo: &str) -> Result<(), Violation> {
        Ok(self
            .rules(&super::super::Destination::default())
            .permits_repo(repo)?)
    }

    /// Checks a bundle about to be signed again (re-issued, or rolled back to)
    /// against this project as it is now, for `app` as it is now, and returns the
    /// rules it must carry: a bundle never outlives a narrowing of its project.
    pub fn permits_bundle(
        &self,
        app: &Application,
        bundle: &Bundle,
    ) -> Result<common::ProjectRules, Violation> {
        for source in app.sources() {
            if source.repo_url != bundle.source.repo {
                self.permits_from(app, &source.repo_url, &[])?;
            }
        }
        self.permits_from(app, &bundle.source.repo, &bundle.objects)
    }

    fn permits_from(
        &self,
        app: &Application,
        repo: &str,
        objects: &[Object],
    ) -> Result<common::ProjectRules, Violation> {
        let dest = &app.spec.destination;
        if dest.name.is_none() && dest.server.is_none() {
            // An app must name where it goes; the rules never guess.
            return Err(common::Violation::Destination {
                project: self.name().to_owned(),
                destination: "?".to_owned(),
            }
            .into());
        }
        // The destination names its cluster, so the cluster the rules would
        // otherwise assume is never used.
        let rules = self.rules(dest);
        rules.permits(repo, "", objects)?;
        Ok(rules)
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
            Err(Violation::Rule(common::Violation::SourceRepo { .. }))
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
            Err(Violation::Rule(common::Violation::NamespaceResource {
                rule: "spec.namespaceResourceWhitelist",
                ..
            }))
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
