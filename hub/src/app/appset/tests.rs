use super::*;
use crate::app::{Manifest, parse_manifests};

struct Input;

impl GeneratorInput for Input {
    fn clusters(&self) -> Vec<ClusterParams> {
        let cluster = |name: &str, env: &str| ClusterParams {
            name: name.to_owned(),
            server: format!("https://{name}.example:6443"),
            labels: BTreeMap::from([("environment".to_owned(), env.to_owned())]),
        };
        vec![
            cluster("east", "production"),
            cluster("west", "production"),
            cluster("lab", "staging"),
        ]
    }

    fn directories(&self, repo: &str, revision: &str) -> std::result::Result<Vec<String>, String> {
        assert_eq!((repo, revision), ("https://git.example/fleet.git", "main"));
        Ok([
            "addons",
            "addons/cert-manager",
            "addons/ingress",
            "addons/legacy",
            "apps",
            "apps/web",
        ]
        .map(str::to_owned)
        .to_vec())
    }
}

fn set(text: &str) -> ApplicationSet {
    match parse_manifests(text, "set.yaml").unwrap().remove(0) {
        Manifest::ApplicationSet(set) => *set,
        other => panic!("{other:?}"),
    }
}

const HEADER: &str = "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata: {name: shop, namespace: argocd}\nspec:\n";

#[test]
fn a_list_generator_makes_one_app_per_element() {
    let s = set(&format!(
        "{HEADER}  generators:\n    - list:\n        elements:\n          - {{env: staging, ns: shop-staging, replicas: 1}}\n          - {{env: production, ns: shop-prod, replicas: 3}}\n  template:\n    metadata: {{name: 'shop-{{{{env}}}}'}}\n    spec:\n      project: default\n      source:\n        repoURL: https://git.example/fleet.git\n        targetRevision: main\n        path: 'apps/shop/overlays/{{{{env}}}}'\n        kustomize:\n          commonAnnotations: {{replicas: '{{{{replicas}}}}'}}\n      destination: {{server: 'https://kubernetes.default.svc', namespace: '{{{{ns}}}}'}}\n"
    ));
    let apps = s.generate(&Input).unwrap();
    let names: Vec<_> = apps.iter().map(|a| a.name()).collect();
    assert_eq!(names, ["shop-staging", "shop-production"]);
    assert_eq!(
        apps[1].source().path.as_deref(),
        Some("apps/shop/overlays/production")
    );
    assert_eq!(
        apps[1].spec.destination.namespace.as_deref(),
        Some("shop-prod")
    );
    assert_eq!(
        apps[1]
            .source()
            .kustomize
            .as_ref()
            .unwrap()
            .common_annotations["replicas"],
        "3"
    );
}

#[test]
fn a_clusters_generator_selects_registered_clusters_by_label() {
    let s = set(&format!(
        "{HEADER}  generators:\n    - clusters:\n        selector: {{matchLabels: {{environment: production}}}}\n        values: {{tier: 'gold-{{{{name}}}}'}}\n  template:\n    metadata: {{name: 'shop-{{{{name}}}}', labels: {{tier: '{{{{values.tier}}}}'}}}}\n    spec:\n      source: {{repoURL: https://git.example/fleet.git, path: apps/shop}}\n      destination: {{server: '{{{{server}}}}', namespace: shop}}\n"
    ));
    let apps = s.generate(&Input).unwrap();
    let names: Vec<_> = apps.iter().map(|a| a.name()).collect();
    assert_eq!(names, ["shop-east", "shop-west"]);
    assert_eq!(
        apps[0].spec.destination.server.as_deref(),
        Some("https://east.example:6443")
    );
    assert_eq!(apps[1].metadata.labels["tier"], "gold-west");
}

#[test]
fn a_git_directories_generator_matches_globs_and_honours_excludes() {
    let s = set(&format!(
        "{HEADER}  generators:\n    - git:\n        repoURL: https://git.example/fleet.git\n        revision: main\n        directories:\n          - path: addons/*\n          - {{path: addons/legacy, exclude: true}}\n  template:\n    metadata: {{name: '{{{{path.basename}}}}'}}\n    spec:\n      source: {{repoURL: https://git.example/fleet.git, targetRevision: main, path: '{{{{path}}}}'}}\n      destination: {{name: east, namespace: '{{{{path[1]}}}}'}}\n"
    ));
    let apps = s.generate(&Input).unwrap();
    let names: Vec<_> = apps.iter().map(|a| a.name()).collect();
    assert_eq!(names, ["cert-manager", "ingress"]);
    assert_eq!(
        apps[0].spec.destination.namespace.as_deref(),
        Some("cert-manager")
    );
}

#[test]
fn unsupported_generators_and_go_templates_are_refused_by_name() {
    for (spec, path) in [
        (
            "  generators: [{matrix: {generators: []}}]\n  template: {}\n",
            "spec.generators[0].matrix",
        ),
        (
            "  goTemplate: true\n  generators: [{list: {elements: []}}]\n  template: {}\n",
            "spec.goTemplate",
        ),
        (
            "  generators: [{git: {repoURL: x, files: [{path: a.json}]}}]\n  template: {}\n",
            "spec.generators[0].git",
        ),
    ] {
        let e = parse_manifests(&format!("{HEADER}{spec}"), "set.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(path) && e.contains("not supported"),
            "{path}: {e}"
        );
    }
}

#[test]
fn two_elements_generating_one_name_are_an_error() {
    let s = set(&format!(
        "{HEADER}  generators:\n    - list: {{elements: [{{env: a}}, {{env: b}}]}}\n  template:\n    metadata: {{name: same}}\n    spec:\n      source: {{repoURL: /r, path: '{{{{env}}}}'}}\n      destination: {{name: east}}\n"
    ));
    let e = s.generate(&Input).unwrap_err().to_string();
    assert!(e.contains("both generate \"same\""), "{e}");
}

#[test]
fn a_generated_application_is_validated_like_any_other() {
    let s = set(&format!(
        "{HEADER}  generators:\n    - list: {{elements: [{{env: a}}]}}\n  template:\n    metadata: {{name: 'x-{{{{env}}}}'}}\n    spec:\n      source: {{repoURL: /r, path: p, targetRevison: main}}\n      destination: {{name: east}}\n"
    ));
    let e = s.generate(&Input).unwrap_err().to_string();
    assert!(e.contains("targetRevison"), "{e}");
}

#[test]
fn a_rolling_sync_strategy_is_read_as_argo_cd_writes_it() {
    let s = set(&format!(
        "{HEADER}  generators: [{{list: {{elements: [{{env: a}}]}}}}]\n  strategy:\n    type: RollingSync\n    rollingSync:\n      steps:\n        - matchExpressions: [{{key: envLabel, operator: In, values: [env-dev]}}]\n        - matchExpressions: [{{key: envLabel, operator: In, values: [env-prod]}}]\n          maxUpdate: 10%\n        - matchExpressions: []\n          maxUpdate: 0\n  template:\n    metadata: {{name: 'x-{{{{env}}}}'}}\n    spec:\n      source: {{repoURL: /r, path: p}}\n      destination: {{name: east}}\n"
    ));
    let steps = s.spec.strategy.as_ref().unwrap().rolling_steps().unwrap();
    assert_eq!(steps.len(), 3);
    let dev = BTreeMap::from([("envLabel".to_owned(), "env-dev".to_owned())]);
    assert!(steps[0].matches(&dev) && !steps[1].matches(&dev));
    assert_eq!(steps[1].max_update.as_ref().unwrap().of(35).unwrap(), 3);
    assert_eq!(steps[1].max_update.as_ref().unwrap().of(4).unwrap(), 1);
    assert_eq!(steps[2].max_update.as_ref().unwrap().of(4).unwrap(), 0);
}

#[test]
fn a_strategy_flotilla_cannot_honour_is_refused_with_its_path() {
    for (strategy, path) in [
        ("{type: Canary}", "spec.strategy.type"),
        (
            "{type: RollingSync, rollingSync: {steps: []}}",
            "spec.strategy.rollingSync.steps",
        ),
        (
            "{type: RollingSync, rollingSync: {steps: [{maxUpdate: 'ten'}]}}",
            "spec.strategy.rollingSync.steps[0].maxUpdate",
        ),
        (
            "{type: RollingSync, rollingSync: {steps: [{matchExpressions: [{key: a, operator: Gt}]}]}}",
            "spec.strategy.rollingSync.steps[0].matchExpressions[0].operator",
        ),
        (
            "{type: RollingSync, deletionOrder: Reverse, rollingSync: {steps: [{}]}}",
            "spec.strategy.deletionOrder",
        ),
    ] {
        let e = parse_manifests(
            &format!("{HEADER}  generators: [{{list: {{elements: []}}}}]\n  strategy: {strategy}\n  template: {{}}\n"),
            "set.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(path), "{path}: {e}");
    }
}
