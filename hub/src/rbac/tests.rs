use super::*;

/// An argocd-rbac-cm as teams write it (our own fixture).
const CONFIGMAP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-rbac-cm
  namespace: argocd
data:
  policy.default: role:readonly
  policy.csv: |
    # operators run everything
    p, role:operator, applications, *, */*, allow
    p, role:operator, clusters, *, *, allow

    # release managers sync anything but production, and restart deployments
    p, role:release, applications, get, */*, allow
    p, role:release, applications, sync, */*, allow
    p, role:release, applications, sync, production/*, deny
    p, role:release, applications, action/apps/Deployment/restart, */*, allow
    p, role:release, logs, get, */*, allow
    p, "role:quoted", repositories, get, "https://git.example/a,b", allow

    g, ops-team, role:operator
    g, release-team, role:release
    g, alice, release-team
"#;

fn policy() -> Policy {
    Policy::from_configmap_yaml(CONFIGMAP, "argocd-rbac-cm.yaml").unwrap()
}

/// (user, groups, resource, action, object, allowed)
type Case = (
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static str,
    &'static str,
    bool,
);

fn groups(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn decisions_follow_roles_groups_globs_and_deny_over_allow() {
    let p = policy();
    let table: &[Case] = &[
        (
            "bob",
            &["ops-team"],
            "applications",
            "delete",
            "production/web",
            true,
        ),
        (
            "bob",
            &["ops-team"],
            "clusters",
            "update",
            "https://10.0.0.1:6443",
            true,
        ),
        (
            "bob",
            &["ops-team"],
            "repositories",
            "create",
            "https://git.example/x",
            false,
        ),
        (
            "carol",
            &["release-team"],
            "applications",
            "sync",
            "staging/web",
            true,
        ),
        (
            "carol",
            &["release-team"],
            "applications",
            "sync",
            "production/web",
            false,
        ),
        (
            "carol",
            &["release-team"],
            "applications",
            "delete",
            "staging/web",
            false,
        ),
        (
            "carol",
            &["release-team"],
            "applications",
            "action/apps/Deployment/restart",
            "staging/web",
            true,
        ),
        (
            "carol",
            &["release-team"],
            "applications",
            "action/apps/Deployment/scale",
            "staging/web",
            false,
        ),
        (
            "carol",
            &["release-team"],
            "logs",
            "get",
            "staging/web",
            true,
        ),
        // alice reaches role:release through a g line from her user to a group.
        ("alice", &[], "applications", "sync", "staging/web", true),
        // everyone is role:readonly by policy.default
        (
            "mallory",
            &[],
            "applications",
            "get",
            "production/web",
            true,
        ),
        (
            "mallory",
            &[],
            "clusters",
            "get",
            "https://10.0.0.1:6443",
            true,
        ),
        (
            "mallory",
            &[],
            "applications",
            "sync",
            "production/web",
            false,
        ),
        ("mallory", &[], "projects", "delete", "production", false),
    ];
    for (user, gs, resource, action, object, want) in table {
        assert_eq!(
            p.enforce(user, &groups(gs), resource, action, object),
            *want,
            "{user} {gs:?} {action} {resource} {object}"
        );
    }
}

#[test]
fn the_built_in_admin_may_do_anything() {
    let p = Policy::parse("g, root, role:admin", None, "policy.csv").unwrap();
    assert!(p.enforce("root", &[], "projects", "delete", "production"));
    assert!(p.enforce(
        "root",
        &[],
        "applications",
        "action/batch/Job/terminate",
        "a/b"
    ));
    assert!(
        !p.enforce("nobody", &[], "applications", "get", "a/b"),
        "no default role"
    );
}

#[test]
fn quoted_fields_may_hold_commas() {
    let p = Policy::parse(
        "p, alice, repositories, get, \"https://git.example/a,b\", allow",
        None,
        "policy.csv",
    )
    .unwrap();
    assert!(p.enforce(
        "alice",
        &[],
        "repositories",
        "get",
        "https://git.example/a,b"
    ));
}

#[test]
fn a_bad_line_is_an_error_naming_its_line() {
    for (csv, message) in [
        ("p, a, applications, get, */*", "6 fields"),
        ("p, a, apps, get, */*, allow", "unknown resource \"apps\""),
        (
            "p, a, applications, fly, */*, allow",
            "unknown action \"fly\"",
        ),
        ("p, a, applications, get, */*, maybe", "allow or deny"),
        ("x, a, b", "start with p or g"),
        ("g, a", "3 fields"),
    ] {
        let e = Policy::parse(&format!("# header\n\n{csv}\n"), None, "policy.csv")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("policy.csv:3:") && e.contains(message),
            "{csv}: {e}"
        );
    }
}

#[test]
fn project_roles_grant_only_their_project_and_map_groups() {
    let project = crate::app::parse_manifests(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata: {name: production}
spec:
  roles:
    - name: deployer
      policies:
        - p, proj:production:deployer, applications, sync, production/*, allow
      groups: [deployers]
"#,
        "project.yaml",
    )
    .unwrap();
    let crate::app::Manifest::AppProject(project) = &project[0] else {
        panic!("a project")
    };
    let mut p = Policy::parse("", None, "policy.csv").unwrap();
    p.add_project_roles(project).unwrap();
    assert!(p.enforce(
        "dan",
        &groups(&["deployers"]),
        "applications",
        "sync",
        "production/web"
    ));
    assert!(!p.enforce(
        "dan",
        &groups(&["deployers"]),
        "applications",
        "sync",
        "staging/web"
    ));
    assert!(p.enforce(
        "proj:production:deployer",
        &[],
        "applications",
        "sync",
        "production/api"
    ));

    let mut escaping = project.as_ref().clone();
    escaping.spec.roles[0].policies =
        vec!["p, proj:production:deployer, applications, sync, */*, allow".to_owned()];
    let e = Policy::default()
        .add_project_roles(&escaping)
        .unwrap_err()
        .to_string();
    assert!(e.contains("objects production/..."), "{e}");
}

#[test]
fn a_configmap_with_another_match_mode_is_refused() {
    let regex = CONFIGMAP.replace(
        "policy.default: role:readonly",
        "policy.default: role:readonly\n  policy.matchMode: regex",
    );
    let e = Policy::from_configmap_yaml(&regex, "rbac.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("policy.matchMode \"regex\""), "{e}");
}

fn project_with(name: &str, role: &str, policies: &[&str], groups: &[&str]) -> AppProject {
    let mut project = crate::app::project::built_in_default();
    project.metadata.name = name.to_owned();
    let mut project_role = crate::app::project::ProjectRole::default();
    project_role.name = role.to_owned();
    project_role.policies = policies.iter().map(|p| (*p).to_owned()).collect();
    project_role.groups = groups.iter().map(|g| (*g).to_owned()).collect();
    project.spec.roles = vec![project_role];
    project
}

#[test]
fn a_project_role_may_only_grant_its_own_project_apps() {
    let refused = [
        // A g line, alone or hidden after a newline in one policy entry.
        "g, mallory, role:admin",
        "p, proj:shop:ci, applications, get, shop/*, allow\ng, mallory, role:admin",
        "p, proj:shop:ci, applications, get, shop/*, allow\rg, mallory, role:admin",
        // Resources beyond the project's apps.
        "p, proj:shop:ci, clusters, *, *, allow",
        "p, proj:shop:ci, accounts, update, *, allow",
        "p, proj:shop:ci, projects, update, shop, allow",
        "p, proj:shop:ci, repositories, get, *, allow",
        "p, proj:shop:ci, *, *, shop/*, allow",
        // Objects beyond the project.
        "p, proj:shop:ci, applications, *, */*, allow",
        "p, proj:shop:ci, applications, *, *, allow",
        "p, proj:shop:ci, applications, *, shop*/*, allow",
        "p, proj:shop:ci, applications, *, shop, allow",
        "p, proj:shop:ci, applications, *, shop/{a,b}, allow",
        "p, proj:shop:ci, applications, *, shop/[a-z], allow",
        "p, proj:shop:ci, applications, *, shop/a/b/c, allow",
        // Another subject, quoting to smuggle a comma, a bad effect or action.
        "p, role:admin, applications, *, shop/*, allow",
        "p, proj:other:ci, applications, *, shop/*, allow",
        "p, \"proj:shop:ci\", applications, *, \"shop/a,b\", allow",
        "p, proj:shop:ci, applications, *, shop/*, maybe",
        "p, proj:shop:ci, applications, fly, shop/*, allow",
        "p, proj:shop:ci, applications, *, shop/*",
        "",
    ];
    for line in refused {
        let mut policy = Policy::parse("", None, "policy.csv").unwrap();
        let before = policy.clone();
        let project = project_with("shop", "ci", &[line], &[]);
        let e = policy.add_project_roles(&project).unwrap_err().to_string();
        assert!(e.contains("AppProject shop role ci"), "{line:?}: {e}");
        assert_eq!(policy, before, "{line:?}: a refused role added something");
        assert!(!policy.enforce("mallory", &[], "clusters", "create", "x"));
    }
    for line in [
        "p, proj:shop:ci, applications, sync, shop/*, allow",
        "p, proj:shop:ci, applications, get, shop/web, deny",
        "p, proj:shop:ci, applications, action/apps/Deployment/restart, shop/*, allow",
        "p, proj:shop:ci, applicationsets, get, shop/*, allow",
        "p, proj:shop:ci, logs, get, shop/ns/web-*, allow",
        "p,proj:shop:ci,applications,get,shop/*,allow",
    ] {
        let mut policy = Policy::default();
        policy
            .add_project_roles(&project_with("shop", "ci", &[line], &["deployers"]))
            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
}

#[test]
fn a_project_role_name_or_group_that_could_name_another_subject_is_refused() {
    for role in ["a:b", "", "-x", "x y", "a/b"] {
        let project = project_with("shop", role, &[], &[]);
        assert!(
            Policy::default().add_project_roles(&project).is_err(),
            "{role:?}"
        );
    }
    for group in ["", "a,b", "a\nb"] {
        let project = project_with("shop", "ci", &[], &[group]);
        assert!(
            Policy::default().add_project_roles(&project).is_err(),
            "{group:?}"
        );
    }
    let project = project_with("shop", "ci", &[], &["\"a,b\""]);
    let mut policy = Policy::default();
    policy.add_project_roles(&project).unwrap();
    assert!(policy.roles["a,b"].contains("proj:shop:ci"));
}

#[test]
fn an_account_may_not_be_given_what_its_creator_lacks() {
    let policy = Policy::parse(
        "p, role:hr, accounts, create, *, allow\n\
         g, hr, role:hr\n\
         g, ops, role:operator\n\
         p, role:operator, clusters, *, *, allow\n\
         g, carol, role:operator\n\
         g, root, role:admin",
        None,
        "policy.csv",
    )
    .unwrap();
    let none: &[String] = &[];
    let beyond =
        |user: &str, groups: &[&str]| policy.beyond_grantor("hr", none, user, &groups_of(groups));
    assert_eq!(beyond("x", &["role:admin"]).as_deref(), Some("role:admin"));
    assert_eq!(beyond("x", &["ops"]).as_deref(), Some("ops"));
    assert_eq!(beyond("carol", &[]).as_deref(), Some("carol"));
    assert_eq!(beyond("x", &[]), None);
    assert_eq!(beyond("x", &["role:hr"]), None);
    // An admin may give anything.
    assert_eq!(
        policy.beyond_grantor("root", none, "carol", &groups_of(&["role:admin"])),
        None
    );
}

fn groups_of(names: &[&str]) -> Vec<String> {
    groups(names)
}
