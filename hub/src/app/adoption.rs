//! Which Argo CD objects an app may render for the hub to adopt (app of apps).
//!
//! A rendered Application, ApplicationSet or AppProject changes what the hub
//! trusts, so each is checked against rules the admin set, never against rules the
//! rendering app could write itself:
//!
//! - A child Application (or an Application an ApplicationSet generates) must be in
//!   the parent's own project, or in a project whose
//!   [`PARENT_PROJECTS_ANNOTATION`] lists the parent's project.
//! - An AppProject is adopted only from an app whose project carries
//!   [`MANAGES_PROJECTS_ANNOTATION`]` = "true"`. Even then it may not be the parent's
//!   own project, nor `default`, nor carry that mark itself, nor replace a project
//!   that was not adopted from the same parent.
//!
//! A child that breaks a rule is a [`Refusal`] kept on the parent, shown in its
//! conditions; it never stops the parent's other children or its own bundle.

use serde::{Deserialize, Serialize};

use super::{AppProject, Application};

/// On an AppProject: the projects (comma-separated names, no globs) whose apps may
/// create Applications and ApplicationSets in it, e.g. `team-a,platform`.
pub const PARENT_PROJECTS_ANNOTATION: &str = "flotilla.dev/parent-projects";

/// On an AppProject an admin created: `"true"` lets its apps create and change
/// AppProjects. A rendered AppProject may never carry it.
pub const MANAGES_PROJECTS_ANNOTATION: &str = "flotilla.dev/manages-projects";

/// Argo CD's built-in project, which no app may create or change.
const DEFAULT_PROJECT: &str = "default";

/// A rendered Argo CD object the hub refused to adopt, and the rule it broke. The
/// message names the child and the rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "rule", rename_all = "camelCase")]
pub enum Refusal {
    /// A child app in a project other than its parent's, which does not list the
    /// parent's project.
    #[error(
        "{child} is in project {project}, which is not the parent's project {parent_project} \
         and does not list it in its {annotation} annotation; not adopted",
        annotation = PARENT_PROJECTS_ANNOTATION
    )]
    ForeignProject {
        child: String,
        project: String,
        parent_project: String,
    },
    /// A child app in a project the hub does not have.
    #[error(
        "{child} is in project {project}, which does not exist (only the parent's project \
         {parent_project} or a project listing it in {annotation} may hold its children); not adopted",
        annotation = PARENT_PROJECTS_ANNOTATION
    )]
    NoSuchProject {
        child: String,
        project: String,
        parent_project: String,
    },
    /// An app of that name exists and belongs to someone else.
    #[error("{child} already exists and was not adopted from this parent; not adopted")]
    NotOwnedApp { child: String },
    /// An AppProject from an app whose project may not manage projects.
    #[error(
        "AppProject {name}: the parent's project {parent_project} is not marked \
         {annotation}: \"true\" by an admin, so its apps may not create or change AppProjects; not adopted",
        annotation = MANAGES_PROJECTS_ANNOTATION
    )]
    NotManager {
        name: String,
        parent_project: String,
    },
    /// An AppProject that would replace the parent's own project.
    #[error(
        "AppProject {name} is the parent's own project; an app never changes the project it is in; not adopted"
    )]
    OwnProject { name: String },
    /// An AppProject that would replace Argo CD's built-in `default`.
    #[error("AppProject {name}: the default project is the admin's and is never adopted from Git")]
    DefaultProject { name: String },
    /// An AppProject granting itself the right to manage projects.
    #[error(
        "AppProject {name} carries {annotation}; only an admin marks a project as \
         able to manage projects; not adopted",
        annotation = MANAGES_PROJECTS_ANNOTATION
    )]
    GrantsManagement { name: String },
    /// An AppProject that exists and was not adopted from this parent.
    #[error(
        "AppProject {name} already exists and was not adopted from this parent; a rendered \
         AppProject never replaces it; not adopted"
    )]
    NotOwnedProject { name: String },
    /// An AppProject whose roles Argo CD would refuse (a `g` line, a policy about
    /// another project or another resource, a malformed role name): as the API
    /// refuses it when an admin creates it, adoption refuses it whole.
    #[error("AppProject {name}: {message}; not adopted")]
    InvalidRoles { name: String, message: String },
}

impl AppProject {
    /// Whether an admin marked this project as able to manage projects.
    pub fn manages_projects(&self) -> bool {
        self.metadata
            .annotations
            .get(MANAGES_PROJECTS_ANNOTATION)
            .is_some_and(|v| v.trim() == "true")
    }

    /// Whether apps of `parent_project` may create Applications in this project.
    pub fn accepts_children_from(&self, parent_project: &str) -> bool {
        self.metadata
            .annotations
            .get(PARENT_PROJECTS_ANNOTATION)
            .is_some_and(|list| list.split(',').any(|p| p.trim() == parent_project))
    }
}

/// Checks a child Application of an app in `parent_project`. `target` is the
/// child's project as the hub holds it now (`None` when it has none of that name;
/// Argo CD's built-in `default` accepts no other project's children). `child` names
/// it in the refusal.
pub fn check_child_app(
    parent_project: &str,
    app: &Application,
    target: Option<&AppProject>,
    child: &str,
) -> Result<(), Refusal> {
    let project = &app.spec.project;
    if project == parent_project {
        return Ok(());
    }
    match target {
        Some(target) if target.accepts_children_from(parent_project) => Ok(()),
        None if project != DEFAULT_PROJECT => Err(Refusal::NoSuchProject {
            child: child.to_owned(),
            project: project.clone(),
            parent_project: parent_project.to_owned(),
        }),
        _ => Err(Refusal::ForeignProject {
            child: child.to_owned(),
            project: project.clone(),
            parent_project: parent_project.to_owned(),
        }),
    }
}

/// Checks a rendered AppProject from an app in `parent` (its project as the hub
/// holds it now; `None` for the built-in default). `exists_elsewhere` says whether a
/// project of that name exists that was not adopted from this same parent.
pub fn check_child_project(
    parent_project: &str,
    parent: Option<&AppProject>,
    project: &AppProject,
    exists_elsewhere: bool,
) -> Result<(), Refusal> {
    let name = project.name().to_owned();
    if !parent.is_some_and(AppProject::manages_projects) {
        return Err(Refusal::NotManager {
            name,
            parent_project: parent_project.to_owned(),
        });
    }
    if name == parent_project {
        return Err(Refusal::OwnProject { name });
    }
    if name == DEFAULT_PROJECT {
        return Err(Refusal::DefaultProject { name });
    }
    if project
        .metadata
        .annotations
        .contains_key(MANAGES_PROJECTS_ANNOTATION)
    {
        return Err(Refusal::GrantsManagement { name });
    }
    if exists_elsewhere {
        return Err(Refusal::NotOwnedProject { name });
    }
    if let Err(e) = crate::rbac::check_project_roles(project) {
        return Err(Refusal::InvalidRoles {
            name,
            message: e.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(name: &str, annotations: &str) -> AppProject {
        let text = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: {name}, annotations: {{{annotations}}}}}\nspec: {{sourceRepos: ['*']}}\n"
        );
        AppProject::from_value(serde_saphyr::from_str(&text).unwrap(), "test").unwrap()
    }

    fn app(project: &str) -> Application {
        Application::from_yaml(
            &format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: c}}\nspec:\n  project: {project}\n  source: {{repoURL: 'https://git.example/x.git', path: a}}\n  destination: {{name: east, namespace: a}}\n"
            ),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn a_child_in_the_parents_project_is_adopted() {
        assert_eq!(check_child_app("team-a", &app("team-a"), None, "c"), Ok(()));
    }

    #[test]
    fn a_child_in_another_project_needs_that_project_to_list_the_parents() {
        let platform = project("platform", "");
        let e = check_child_app("team-a", &app("platform"), Some(&platform), "c").unwrap_err();
        assert!(matches!(e, Refusal::ForeignProject { .. }), "{e}");
        assert!(
            e.to_string().contains("c is in project platform")
                && e.to_string().contains(PARENT_PROJECTS_ANNOTATION),
            "{e}"
        );
        let e = check_child_app("team-a", &app("default"), None, "c").unwrap_err();
        assert!(matches!(e, Refusal::ForeignProject { .. }), "{e}");
        let e = check_child_app("team-a", &app("nowhere"), None, "c").unwrap_err();
        assert!(matches!(e, Refusal::NoSuchProject { .. }), "{e}");

        let open = project(
            "platform",
            &format!("'{PARENT_PROJECTS_ANNOTATION}': 'team-b, team-a'"),
        );
        assert_eq!(
            check_child_app("team-a", &app("platform"), Some(&open), "c"),
            Ok(())
        );
        // Names match whole, never as prefixes or globs.
        let glob = project(
            "platform",
            &format!("'{PARENT_PROJECTS_ANNOTATION}': 'team-*,team-a-x'"),
        );
        assert!(check_child_app("team-a", &app("platform"), Some(&glob), "c").is_err());
    }

    #[test]
    fn only_a_managing_project_adopts_projects_and_never_its_own_default_or_the_mark() {
        let managing = project(
            "platform",
            &format!("'{MANAGES_PROJECTS_ANNOTATION}': 'true'"),
        );
        let plain = project("team-a", "");
        let child = project("shop", "");
        assert_eq!(
            check_child_project("platform", Some(&managing), &child, false),
            Ok(())
        );
        assert!(matches!(
            check_child_project("team-a", Some(&plain), &child, false),
            Err(Refusal::NotManager { .. })
        ));
        assert!(matches!(
            check_child_project("default", None, &child, false),
            Err(Refusal::NotManager { .. })
        ));
        assert!(matches!(
            check_child_project("platform", Some(&managing), &project("platform", ""), false),
            Err(Refusal::OwnProject { .. })
        ));
        assert!(matches!(
            check_child_project("platform", Some(&managing), &project("default", ""), false),
            Err(Refusal::DefaultProject { .. })
        ));
        let grants = project("shop", &format!("'{MANAGES_PROJECTS_ANNOTATION}': 'true'"));
        assert!(matches!(
            check_child_project("platform", Some(&managing), &grants, false),
            Err(Refusal::GrantsManagement { .. })
        ));
        assert!(matches!(
            check_child_project("platform", Some(&managing), &child, true),
            Err(Refusal::NotOwnedProject { .. })
        ));
    }

    #[test]
    fn a_rendered_project_whose_roles_argo_cd_would_refuse_is_not_adopted() {
        let managing = project(
            "platform",
            &format!("'{MANAGES_PROJECTS_ANNOTATION}': 'true'"),
        );
        let with_role = |policy: &str| {
            let text = format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: shop}}\nspec:\n  sourceRepos: ['*']\n  roles: [{{name: ci, policies: ['{policy}']}}]\n"
            );
            AppProject::from_value(serde_saphyr::from_str(&text).unwrap(), "test").unwrap()
        };
        let good = with_role("p, proj:shop:ci, applications, sync, shop/*, allow");
        assert_eq!(
            check_child_project("platform", Some(&managing), &good, false),
            Ok(())
        );
        for bad in [
            "g, alice, role:admin",
            "p, proj:shop:ci, clusters, create, *, allow",
            "p, proj:shop:ci, applications, sync, other/*, allow",
        ] {
            let refused = check_child_project("platform", Some(&managing), &with_role(bad), false);
            assert!(
                matches!(&refused, Err(Refusal::InvalidRoles { name, .. }) if name == "shop"),
                "{bad}: {refused:?}"
            );
        }
    }
}
