//! ApplicationSet generators against real Git repositories and a real store:
//! what each generator makes of a repository's directories and files and of the
//! hub's clusters, and what it refuses.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::SystemTime;

use flotilla_hub::app::appset::GeneratorInput;
use flotilla_hub::app::{AppProject, Application, ApplicationSet, Manifest, parse_manifests};
use flotilla_hub::refresh::{Outcome, Refresher};
use flotilla_hub::render::{Renderer, Tools};
use flotilla_hub::source::RepoCache;
use flotilla_hub::store::{AppOrigin, AppRecord, ClusterRecord, Store};

use fixture::WorkRepo;

use crate::support::source as fixture;

struct Hub {
    _dir: tempfile::TempDir,
    store: Store,
    refresher: Refresher,
}

/// A hub with two clusters: east (production, tier gold) and west (production,
/// tier silver), and a lab cluster in staging.
async fn hub() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    for (name, env, tier) in [
        ("east", "production", "gold"),
        ("west", "production", "silver"),
        ("lab", "staging", "bronze"),
    ] {
        store
            .put_cluster(&ClusterRecord {
                name: name.to_owned(),
                labels: BTreeMap::from([
                    ("environment".to_owned(), env.to_owned()),
                    ("tier".to_owned(), tier.to_owned()),
                ]),
                server: Some(format!("https://{name}.fleet.test:6443")),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let cache = RepoCache::new(dir.path().join("repos")).unwrap();
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env()))
        .await
        .unwrap();
    Hub {
        _dir: dir,
        store,
        refresher,
    }
}

fn url(repo: &WorkRepo) -> String {
    repo.path().display().to_string()
}

/// An ApplicationSet named `name` with `generators` (YAML, indented for
/// `spec.generators`) and a template naming apps `app_name`, reading `path`.
fn set_yaml(name: &str, generators: &str, app_name: &str, path: &str, repo: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata: {{name: {name}, namespace: argocd}}\nspec:\n  generators:\n{generators}  template:\n    metadata:\n      name: '{app_name}'\n    spec:\n      project: default\n      source: {{repoURL: '{repo}', targetRevision: main, path: '{path}'}}\n      destination: {{name: east, namespace: addons}}\n"
    )
}

fn parse(yaml: &str) -> Result<ApplicationSet, String> {
    match parse_manifests(yaml, "set.yaml")
        .map_err(|e| e.to_string())?
        .remove(0)
    {
        Manifest::ApplicationSet(set) => Ok(*set),
        other => panic!("{other:?}"),
    }
}

fn generate(input: &dyn GeneratorInput, yaml: &str) -> Result<Vec<Application>, String> {
    parse(yaml)?.generate(input).map_err(|e| e.to_string())
}

fn names(apps: &[Application]) -> Vec<String> {
    let mut names: Vec<String> = apps.iter().map(|a| a.name().to_owned()).collect();
    names.sort();
    names
}

fn configmap(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{v: '1'}}\n")
}

/// The recipe's layout: cluster add-ons, some with nested folders, next to apps
/// and Argo CD's own folder.
fn addons_repo() -> WorkRepo {
    let repo = WorkRepo::new();
    for dir in [
        "cluster-addons/cert-manager",
        "cluster-addons/ingress-nginx/base",
        "cluster-addons/ingress-nginx/overlays/production",
        "cluster-addons/monitoring/prometheus",
        "cluster-addons/monitoring/grafana",
        "cluster-addons/.drafts/half-done",
        "apps/myapp/base",
    ] {
        repo.write(&format!("{dir}/cm.yaml"), &configmap("x"));
    }
    repo.write("cluster-addons/README.md", "add-ons\n");
    repo.commit("cluster add-ons");
    repo
}

#[tokio::test]
async fn git_directory_globs_follow_go_path_match_on_a_cluster_addons_layout() {
    let repo = addons_repo();
    let hub = hub().await;
    let repo_url = url(&repo);
    let dirs = |patterns: &str| {
        set_yaml(
            "cluster-addons",
            &format!(
                "    - git:\n        repoURL: '{repo_url}'\n        revision: main\n        directories:\n{patterns}"
            ),
            "{{path.basenameNormalized}}",
            "{{path}}",
            &repo_url,
        )
    };
    let generated = |patterns: &str| {
        let apps = generate(&hub.refresher, &dirs(patterns)).unwrap();
        names(&apps)
    };

    // `*` stays in one folder: the nested ones and hidden ones are not add-ons.
    assert_eq!(
        generated("          - path: cluster-addons/*\n"),
        ["cert-manager", "ingress-nginx", "monitoring"]
    );
    // `**` is not special in Go's path.Match: it is `*` twice, still one folder.
    assert_eq!(
        generated("          - path: cluster-addons/**\n"),
        ["cert-manager", "ingress-nginx", "monitoring"]
    );
    // Two levels, one of them excluded; an exclude wins over any include.
    assert_eq!(
        generated(
            "          - path: cluster-addons/*/*\n          - path: cluster-addons/ingress-nginx/*\n            exclude: true\n"
        ),
        ["grafana", "prometheus"]
    );
    assert_eq!(
        generated(
            "          - path: cluster-addons/[cm]*\n          - path: cluster-addons/ingress-nginx/overlays/production\n"
        ),
        ["cert-manager", "monitoring", "production"]
    );
    // Path parameters, for a nested folder.
    let apps = generate(
        &hub.refresher,
        &set_yaml(
            "deep",
            &format!("    - git:\n        repoURL: '{repo_url}'\n        revision: main\n        directories: [{{path: cluster-addons/*/overlays/*}}]\n"),
            "{{path[1]}}-{{path.basename}}",
            "{{path}}",
            &repo_url,
        ),
    )
    .unwrap();
    assert_eq!(names(&apps), ["ingress-nginx-production"]);
    assert_eq!(
        apps[0].source().path.as_deref(),
        Some("cluster-addons/ingress-nginx/overlays/production")
    );

    // A malformed glob is an error naming the field, never "matches nothing".
    let error = parse(&dirs(
        "          - path: cluster-addons/*\n          - path: 'cluster-addons/[a-'\n            exclude: true\n",
    ))
    .unwrap_err();
    assert!(
        error.contains("spec.generators[0].git.directories[1].path")
            && error.contains("\"cluster-addons/[a-\" is not a valid glob"),
        "{error}"
    );
}

/// The recipe's cluster-addons set, in the repository a parent app renders: one
/// app per add-on folder, and a malformed glob fails the parent's refresh with
/// the field named while what was generated stays.
#[tokio::test]
async fn a_parent_app_renders_the_cluster_addons_set_and_a_bad_glob_loses_nothing() {
    let repo = addons_repo();
    let repo_url = url(&repo);
    let set = |glob: &str| {
        set_yaml(
            "cluster-addons",
            &format!(
                "    - git:\n        repoURL: '{repo_url}'\n        revision: main\n        directories: [{{path: '{glob}'}}]\n"
            ),
            "{{path.basename}}",
            "{{path}}",
            &repo_url,
        )
    };
    repo.write("argocd/applications/addons.yaml", &set("cluster-addons/*"));
    repo.commit("the add-ons set");
    let hub = hub().await;
    let root = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: root, namespace: argocd}}\nspec:\n  project: default\n  source: {{repoURL: '{repo_url}', targetRevision: main, path: argocd/applications}}\n  destination: {{name: east, namespace: argocd}}\n"
    );
    hub.store
        .put_app(&AppRecord::new(
            Application::from_yaml(&root, "test").unwrap(),
            AppOrigin::Store,
        ))
        .await
        .unwrap();
    let stored = || {
        let mut apps: Vec<String> = hub.store.apps().unwrap().iter().map(|a| a.name()).collect();
        apps.sort();
        apps
    };

    hub.refresher
        .refresh_repo(&repo_url, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(
        stored(),
        ["cert-manager", "ingress-nginx", "monitoring", "root"]
    );

    repo.write("argocd/applications/addons.yaml", &set("cluster-addons/[z"));
    repo.commit("a typo in the glob");
    let outcomes = hub
        .refresher
        .refresh_repo(&repo_url, SystemTime::now())
        .await
        .unwrap();
    let root_outcome = outcomes
        .iter()
        .find(|(name, _)| name == "default/root")
        .map(|(_, o)| o.clone());
    let Some(Outcome::Failed { error }) = root_outcome else {
        panic!("{outcomes:?}")
    };
    assert!(
        error.contains("spec.generators[0].git.directories[0].path")
            && error.contains("not a valid glob"),
        "{error}"
    );
    assert_eq!(
        stored(),
        ["cert-manager", "ingress-nginx", "monitoring", "root"],
        "a set that fails to parse deletes nothing"
    );
}

/// A repository of per-cluster config files, as the git files generator reads.
fn config_repo() -> WorkRepo {
    let repo = WorkRepo::new();
    repo.write(
        "cluster-config/production/east/config.json",
        r#"{"cluster": {"name": "east", "address": "https://east.fleet.test:6443", "zones": ["a", "b"]}, "aws_account": "123456", "replicas": 3, "canary": false}"#,
    )
    .write(
        "cluster-config/staging/config.json",
        r#"{"cluster": {"name": "lab", "address": "https://lab.fleet.test:6443"}}"#,
    )
    .write(
        "teams/config.yaml",
        "- team: payments\n  owner: {name: ana}\n- team: search\n  owner: {name: bo}\n",
    )
    .write("cluster-config/notes.txt", "not a config\n");
    repo.commit("cluster configs");
    repo
}

#[tokio::test]
async fn git_files_generators_flatten_json_and_yaml_with_path_parameters_and_values() {
    let repo = config_repo();
    let hub = hub().await;
    let repo_url = url(&repo);
    let files = |patterns: &str, extra: &str| {
        format!(
            "    - git:\n        repoURL: '{repo_url}'\n        revision: main\n        files:\n{patterns}{extra}"
        )
    };

    // JSON: nested keys flattened with dots, lists by index, every value a string;
    // the path parameters are the file's folder. `**` in a file glob crosses
    // folders as git's pathspec does.
    let apps = generate(
        &hub.refresher,
        &set_yaml(
            "clusters",
            &files(
                "          - path: 'cluster-config/**/config.json'\n",
                "        values: {region: 'eu-{{cluster.name}}'}\n",
            ),
            "{{cluster.name}}-{{path.basename}}-{{values.region}}",
            "{{path}}/{{path.filename}}-{{cluster.zones.1}}-{{replicas}}-{{canary}}-{{aws_account}}",
            &repo_url,
        ),
    )
    .unwrap();
    assert_eq!(names(&apps), ["east-east-eu-east", "lab-staging-eu-lab"]);
    assert_eq!(
        apps[0].source().path.as_deref(),
        Some("cluster-config/production/east/config.json-b-3-false-123456")
    );
    // A key the file lacks stays as written, as Argo CD's default templates do.
    assert_eq!(
        apps[1].source().path.as_deref(),
        Some(
            "cluster-config/staging/config.json-{{cluster.zones.1}}-{{replicas}}-{{canary}}-{{aws_account}}"
        )
    );
    // `*` in a pathspec crosses folders too; an exclude entry takes files out.
    let apps = generate(
        &hub.refresher,
        &set_yaml(
            "clusters",
            &files(
                "          - path: 'cluster-config/*.json'\n          - path: cluster-config/production/**\n            exclude: true\n",
                "",
            ),
            "{{cluster.name}}",
            "{{path[0]}}/{{path[1]}}",
            &repo_url,
        ),
    )
    .unwrap();
    assert_eq!(names(&apps), ["lab"]);
    assert_eq!(
        apps[0].source().path.as_deref(),
        Some("cluster-config/staging")
    );

    // YAML holding a list: one parameter set per item; pathParamPrefix moves the
    // path parameters so they cannot clash with the file's own keys.
    let apps = generate(
        &hub.refresher,
        &set_yaml(
            "teams",
            &files(
                "          - path: teams/config.yaml\n",
                "        pathParamPrefix: source\n",
            ),
            "{{team}}-{{owner.name}}",
            "{{source.path}}/{{source.path.filenameNormalized}}/{{team}}",
            &repo_url,
        ),
    )
    .unwrap();
    assert_eq!(names(&apps), ["payments-ana", "search-bo"]);
    let search = apps.iter().find(|a| a.name() == "search-bo").unwrap();
    assert_eq!(
        search.source().path.as_deref(),
        Some("teams/config.yaml/search")
    );

    // A file that is neither JSON nor YAML is an error naming it.
    repo.write("cluster-config/broken/config.json", "{\"cluster\": ");
    repo.commit("a broken config");
    let error = generate(
        &hub.refresher,
        &set_yaml(
            "clusters",
            &files("          - path: 'cluster-config/**/config.json'\n", ""),
            "{{cluster.name}}",
            "{{path}}",
            &repo_url,
        ),
    )
    .unwrap_err();
    assert!(
        error.contains("spec.generators[0].git.files")
            && error.contains("cluster-config/broken/config.json: is not valid JSON"),
        "{error}"
    );
}

/// A value from a repository file is data: one that would leave the checkout
/// fails the generated app's validation, naming the field.
#[tokio::test]
async fn a_generated_path_from_a_file_never_leaves_the_checkout() {
    let repo = WorkRepo::new();
    repo.write(
        "envs/evil/config.json",
        r#"{"dir": "../../../etc", "name": "evil"}"#,
    )
    .write("envs/abs/config.json", r#"{"dir": "/etc", "name": "abs"}"#);
    repo.commit("hostile configs");
    let hub = hub().await;
    let repo_url = url(&repo);
    for file in ["envs/evil/config.json", "envs/abs/config.json"] {
        let error = generate(
            &hub.refresher,
            &set_yaml(
                "hostile",
                &format!("    - git:\n        repoURL: '{repo_url}'\n        revision: main\n        files: [{{path: '{file}'}}]\n"),
                "{{name}}",
                "{{dir}}",
                &repo_url,
            ),
        )
        .unwrap_err();
        assert!(
            error.contains("source.path") && error.contains("must stay inside the repository"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn list_elements_yaml_and_cluster_values_labels_and_project_parameters() {
    let repo = WorkRepo::new();
    let hub = hub().await;
    let repo_url = url(&repo);

    // elementsYaml adds to elements; `values` in an element become `values.KEY`.
    let apps = generate(
        &hub.refresher,
        &set_yaml(
            "envs",
            "    - list:\n        elements:\n          - {env: staging, values: {replicas: '1'}}\n        elementsYaml: |\n          - env: production\n            values: {replicas: '3'}\n          - env: canary\n            values: {replicas: '1'}\n",
            "myapp-{{env}}",
            "apps/myapp/overlays/{{env}}/{{values.replicas}}",
            &repo_url,
        ),
    )
    .unwrap();
    assert_eq!(
        names(&apps),
        ["myapp-canary", "myapp-production", "myapp-staging"]
    );
    let production = apps
        .iter()
        .find(|a| a.name() == "myapp-production")
        .unwrap();
    assert_eq!(
        production.source().path.as_deref(),
        Some("apps/myapp/overlays/production/3")
    );
    let error = generate(
        &hub.refresher,
        &set_yaml(
            "envs",
            "    - list:\n        elementsYaml: 'env: not-a-list'\n",
            "{{env}}",
            "p",
            &repo_url,
        ),
    )
    .unwrap_err();
    assert!(
        error.contains("spec.generators[0].list.elementsYaml")
            && error.contains("is not a YAML list of mappings"),
        "{error}"
    );

    // Clusters: the registered ones the selector picks, with their labels as
    // `metadata.labels.*`, `values` that use them, and `project` (empty: a
    // Flotilla cluster is not scoped to a project).
    let apps = generate(
        &hub.refresher,
        &set_yaml(
            "multi",
            "    - clusters:\n        selector:\n          matchExpressions: [{key: environment, operator: In, values: [production]}]\n        values: {ns: 'myapp-{{metadata.labels.tier}}'}\n",
            "myapp-{{name}}",
            "apps/myapp/{{values.ns}}/{{server}}/p{{project}}",
            &repo_url,
        ),
    )
    .unwrap();
    assert_eq!(names(&apps), ["myapp-east", "myapp-west"]);
    let west = apps.iter().find(|a| a.name() == "myapp-west").unwrap();
    assert_eq!(
        west.source().path.as_deref(),
        Some("apps/myapp/myapp-silver/https://west.fleet.test:6443/p")
    );
}

/// The fleet's production clusters times the add-on folders: one app per
/// cluster and add-on, each sent to its cluster.
#[tokio::test]
async fn a_matrix_of_clusters_and_git_directories_addresses_each_cluster() {
    let repo = addons_repo();
    let hub = hub().await;
    let repo_url = url(&repo);
    let yaml = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata: {{name: fleet-addons}}\nspec:\n  generators:\n    - matrix:\n        generators:\n          - clusters:\n              selector: {{matchLabels: {{environment: production}}}}\n          - git:\n              repoURL: '{repo_url}'\n              revision: main\n              directories: [{{path: 'cluster-addons/*'}}]\n  template:\n    metadata: {{name: '{{{{name}}}}-{{{{path.basename}}}}'}}\n    spec:\n      project: default\n      source: {{repoURL: '{repo_url}', targetRevision: main, path: '{{{{path}}}}'}}\n      destination: {{server: '{{{{server}}}}', namespace: '{{{{path.basename}}}}'}}\n"
    );
    let apps = generate(&hub.refresher, &yaml).unwrap();
    assert_eq!(
        names(&apps),
        [
            "east-cert-manager",
            "east-ingress-nginx",
            "east-monitoring",
            "west-cert-manager",
            "west-ingress-nginx",
            "west-monitoring"
        ]
    );
    let west = apps.iter().find(|a| a.name() == "west-monitoring").unwrap();
    assert_eq!(
        west.spec.destination.server.as_deref(),
        Some("https://west.fleet.test:6443")
    );
    assert_eq!(
        west.source().path.as_deref(),
        Some("cluster-addons/monitoring")
    );
}

#[tokio::test]
async fn matrix_and_merge_nest_two_levels_with_selectors_and_merge_keys() {
    let repo = addons_repo();
    let hub = hub().await;
    let repo_url = url(&repo);

    // The second generator of a matrix reads the first's parameters: each
    // element lists the folders under its own add-on, and a post-selector on
    // the git generator leaves grafana out.
    let apps = generate(
        &hub.refresher,
        &set_yaml(
            "parts",
            &format!("    - matrix:\n        generators:\n          - list:\n              elements: [{{addon: monitoring, tier: gold}}, {{addon: ingress-nginx, tier: silver}}]\n          - git:\n              repoURL: '{repo_url}'\n              revision: main\n              directories: [{{path: 'cluster-addons/{{{{addon}}}}/*'}}]\n            selector:\n              matchExpressions: [{{key: path.basename, operator: NotIn, values: [grafana]}}]\n"),
            "{{tier}}-{{path.basename}}",
            "{{path}}",
            &repo_url,
        ),
    )
    .unwrap();
    assert_eq!(
        names(&apps),
        ["gold-prometheus", "silver-base", "silver-overlays"]
    );

    // Merge: every cluster, with the values a list gives for some of them by
    // name; a matrix around it (two levels) crosses them with the add-ons, and a
    // selector on the merge keeps production.
    let apps = generate(
        &hub.refresher,
        &set_yaml(
            "merged",
            &format!("    - matrix:\n        generators:\n          - merge:\n              mergeKeys: [name]\n              generators:\n                - clusters: {{values: {{size: small}}}}\n                - list:\n                    elements:\n                      - {{name: east, values.size: large}}\n                      - {{name: nowhere, values.size: huge}}\n            selector: {{matchLabels: {{metadata.labels.environment: production}}}}\n          - git:\n              repoURL: '{repo_url}'\n              revision: main\n              directories: [{{path: 'cluster-addons/c*'}}]\n"),
            "{{name}}-{{path.basename}}-{{values.size}}",
            "{{path}}",
            &repo_url,
        ),
    )
    .unwrap();
    assert_eq!(
        names(&apps),
        ["east-cert-manager-large", "west-cert-manager-small"]
    );

    // Two sets of one merge generator with the same key are an error, as are
    // two matrix generators giving one parameter two values.
    let error = generate(
        &hub.refresher,
        &set_yaml(
            "dup",
            "    - merge:\n        mergeKeys: [env]\n        generators:\n          - list: {elements: [{env: a, x: '1'}, {env: b}]}\n          - list: {elements: [{env: a}, {env: a}]}\n",
            "{{env}}",
            "p",
            &repo_url,
        ),
    )
    .unwrap_err();
    assert!(
        error.contains("spec.generators[0].merge.generators[1]") && error.contains("same values"),
        "{error}"
    );
    let error = generate(
        &hub.refresher,
        &set_yaml(
            "clash",
            "    - matrix:\n        generators:\n          - list: {elements: [{env: a}]}\n          - list: {elements: [{env: b}]}\n",
            "{{env}}",
            "p",
            &repo_url,
        ),
    )
    .unwrap_err();
    assert!(
        error.contains("spec.generators[0].matrix") && error.contains("\"env\""),
        "{error}"
    );
}

/// A matrix's second git generator may take its repository from the first's
/// values; the parent's project still decides, before anything is fetched.
#[tokio::test]
async fn a_repository_named_through_a_matrix_is_checked_against_the_project() {
    let repo = WorkRepo::new();
    let other = WorkRepo::new();
    other.write("private/secret-team/cm.yaml", &configmap("x"));
    other.commit("another team's repository");
    let repo_url = url(&repo);
    let other_url = url(&other);
    repo.write(
        "argo/sneaky.yaml",
        &set_yaml(
            "sneaky",
            &format!("    - matrix:\n        generators:\n          - list: {{elements: [{{repo: '{other_url}'}}]}}\n          - git: {{repoURL: '{{{{repo}}}}', revision: main, directories: [{{path: 'private/*'}}]}}\n"),
            "{{path.basename}}",
            "argo",
            &repo_url,
        )
        .replace("project: default", "project: locked"),
    );
    repo.commit("a set that names another repository through a list");
    let hub = hub().await;
    let project = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: locked, namespace: argocd}}\nspec:\n  sourceRepos: ['{repo_url}']\n  destinations: [{{name: '*', namespace: '*'}}]\n"
    );
    hub.store
        .put_project(
            &AppProject::from_value(serde_saphyr::from_str(&project).unwrap(), "test").unwrap(),
        )
        .await
        .unwrap();
    let root = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: root, namespace: argocd}}\nspec:\n  project: locked\n  source: {{repoURL: '{repo_url}', targetRevision: main, path: argo}}\n  destination: {{name: east, namespace: argocd}}\n"
    );
    hub.store
        .put_app(&AppRecord::new(
            Application::from_yaml(&root, "test").unwrap(),
            AppOrigin::Store,
        ))
        .await
        .unwrap();

    let outcomes = hub
        .refresher
        .refresh_repo(&repo_url, SystemTime::now())
        .await
        .unwrap();
    let [(name, Outcome::Failed { error })] = outcomes.as_slice() else {
        panic!("{outcomes:?}")
    };
    assert_eq!(name, "locked/root");
    assert!(
        error.contains("spec.generators[0].matrix.generators[1].git")
            && error.contains("spec.sourceRepos"),
        "{error}"
    );
    assert_eq!(
        std::fs::read_dir(hub._dir.path().join("repos"))
            .unwrap()
            .count(),
        1,
        "only the parent's own repository was fetched"
    );
    let names: Vec<String> = hub.store.apps().unwrap().iter().map(|a| a.name()).collect();
    assert_eq!(names, ["root"]);
}

/// Generators that need a service Flotilla does not run are refused by name,
/// wherever they are nested, and the parent app fails instead of rendering a
/// set that would quietly generate nothing.
#[tokio::test]
async fn generators_needing_other_services_fail_the_parent_by_name() {
    let repo = WorkRepo::new();
    let repo_url = url(&repo);
    let hub = hub().await;
    let root = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: root, namespace: argocd}}\nspec:\n  project: default\n  source: {{repoURL: '{repo_url}', targetRevision: main, path: argo}}\n  destination: {{name: east, namespace: argocd}}\n"
    );
    hub.store
        .put_app(&AppRecord::new(
            Application::from_yaml(&root, "test").unwrap(),
            AppOrigin::Store,
        ))
        .await
        .unwrap();
    for (generator, path) in [
        (
            "    - scmProvider: {github: {organization: myorg}}\n",
            "spec.generators[0].scmProvider",
        ),
        (
            "    - pullRequest: {github: {owner: myorg, repo: myapp}}\n",
            "spec.generators[0].pullRequest",
        ),
        (
            "    - clusterDecisionResource: {configMapRef: ocm-placement, name: all}\n",
            "spec.generators[0].clusterDecisionResource",
        ),
        (
            "    - matrix:\n        generators:\n          - list: {elements: [{env: a}]}\n          - plugin: {configMapRef: {name: my-plugin}}\n",
            "spec.generators[0].matrix.generators[1].plugin",
        ),
    ] {
        repo.write(
            "argo/set.yaml",
            &set_yaml("remote", generator, "{{env}}", "p", &repo_url),
        );
        repo.commit(path);
        let outcomes = hub
            .refresher
            .refresh_repo(&repo_url, SystemTime::now())
            .await
            .unwrap();
        let [(_, Outcome::Failed { error })] = outcomes.as_slice() else {
            panic!("{path}: {outcomes:?}")
        };
        assert!(
            error.contains(path) && error.contains("not supported by Flotilla"),
            "{path}: {error}"
        );
        let names: Vec<String> = hub.store.apps().unwrap().iter().map(|a| a.name()).collect();
        assert_eq!(names, ["root"], "{path}");
    }
}

/// Values from a list reach helm only through the renderer's checks: one shaped
/// like a flag is refused as a release name, and a value file outside the
/// checkout is refused, each naming the field, while the well-behaved app
/// renders.
#[tokio::test]
async fn generated_values_never_reach_helm_as_flags_or_paths_outside_the_checkout() {
    let repo = WorkRepo::new();
    let repo_url = url(&repo);
    repo.write(
        "charts/web/Chart.yaml",
        "apiVersion: v2\nname: web\nversion: 0.1.0\n",
    )
    .write("charts/web/values.yaml", "color: blue\n")
    .write(
        "charts/web/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {color: '{{ .Values.color }}'}\n",
    )
    .write(
        "argo/set.yaml",
        &format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata: {{name: web}}\nspec:\n  generators:\n    - list:\n        elements:\n          - {{app: good, release: web, file: values.yaml}}\n          - {{app: flag, release: '--post-renderer=/bin/sh', file: values.yaml}}\n          - {{app: escape, release: web, file: ../../../../../etc/passwd}}\n  template:\n    metadata: {{name: 'web-{{{{app}}}}'}}\n    spec:\n      project: default\n      source:\n        repoURL: '{repo_url}'\n        targetRevision: main\n        path: charts/web\n        helm: {{releaseName: '{{{{release}}}}', valueFiles: ['{{{{file}}}}']}}\n      destination: {{name: east, namespace: web}}\n"
        ),
    );
    repo.commit("a chart and a set");
    let hub = hub().await;
    let root = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: root, namespace: argocd}}\nspec:\n  project: default\n  source: {{repoURL: '{repo_url}', targetRevision: main, path: argo}}\n  destination: {{name: east, namespace: argocd}}\n"
    );
    hub.store
        .put_app(&AppRecord::new(
            Application::from_yaml(&root, "test").unwrap(),
            AppOrigin::Store,
        ))
        .await
        .unwrap();

    let outcomes = hub
        .refresher
        .refresh_repo(&repo_url, SystemTime::now())
        .await
        .unwrap();
    // A generated app is first adopted, then rendered (or refused).
    let failed = |app: &str| {
        outcomes
            .iter()
            .find_map(|(name, outcome)| match outcome {
                Outcome::Failed { error } if name == &format!("default/{app}") => {
                    Some(error.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{app} did not fail: {outcomes:?}"))
    };
    let flag = failed("web-flag");
    assert!(
        flag.contains("spec.source.helm.releaseName") && flag.contains("--post-renderer"),
        "{flag}"
    );
    let escape = failed("web-escape");
    assert!(escape.contains("leaves the repository"), "{escape}");
    assert!(
        hub.store
            .latest_bundle("default", "web-good", "east")
            .unwrap()
            .is_some(),
        "the well-behaved app renders: {outcomes:?}"
    );
}
