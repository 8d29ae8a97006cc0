use super::*;

fn app(source: &str) -> Application {
    let text = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: a}}\nspec:\n  source:\n{source}\n  destination: {{name: east}}\n"
    );
    Application::from_yaml(&text, "a.yaml").unwrap()
}

fn changed(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|p| (*p).to_owned()).collect()
}

#[test]
fn a_directory_app_is_affected_only_by_changes_inside_its_folder() {
    let a = app("    repoURL: /r\n    path: apps/web");
    assert!(affected_by(
        &a,
        SourceKind::Directory,
        &changed(&["apps/web/deploy.yaml"])
    ));
    assert!(affected_by(
        &a,
        SourceKind::Directory,
        &changed(&["apps/web/deep/x.yaml"])
    ));
    assert!(!affected_by(
        &a,
        SourceKind::Directory,
        &changed(&["apps/web2/deploy.yaml"])
    ));
    assert!(!affected_by(
        &a,
        SourceKind::Directory,
        &changed(&["apps/db/x.yaml", "README.md"])
    ));
    assert!(!affected_by(&a, SourceKind::Directory, &[]));
}

#[test]
fn kustomize_and_helm_apps_are_affected_by_any_change_since_they_reach_outside_their_folder() {
    let a = app("    repoURL: /r\n    path: apps/web/overlays/prod");
    for kind in [SourceKind::Kustomize, SourceKind::Helm] {
        assert!(affected_by(
            &a,
            kind,
            &changed(&["apps/web/base/deploy.yaml"])
        ));
        assert!(!affected_by(&a, kind, &[]));
    }
}

#[test]
fn a_chart_from_a_helm_repository_is_never_affected_by_git_changes() {
    let a = app("    repoURL: https://charts.example\n    chart: web\n    targetRevision: 1.0.0");
    assert!(!affected_by(
        &a,
        SourceKind::HelmRepo,
        &changed(&["anything"])
    ));
}

#[test]
fn a_directory_app_at_the_repo_root_is_affected_by_every_change() {
    let a = app("    repoURL: /r\n    path: .");
    assert!(affected_by(
        &a,
        SourceKind::Directory,
        &changed(&["x/y.yaml"])
    ));
}
