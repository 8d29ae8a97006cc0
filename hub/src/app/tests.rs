mod compatibility;

use super::*;

const GUESTBOOK: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: guestbook
  namespace: argocd
  finalizers:
    - resources-finalizer.argocd.argoproj.io
spec:
  project: web
  source:
    repoURL: https://git.example/fleet.git
    targetRevision: release-2
    path: apps/guestbook/overlays/prod
    kustomize:
      namePrefix: prod-
      nameSuffix: -v2
      images:
        - guestbook=registry.example/guestbook:2.1.0
      commonLabels:
        tier: web
      commonAnnotations:
        owner: team-web
  destination:
    server: https://kubernetes.default.svc
    namespace: guestbook
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
    syncOptions:
      - CreateNamespace=true
      - PrunePropagationPolicy=foreground
      - PruneLast=true
      - ApplyOutOfSyncOnly=true
      - ServerSideApply=true
  ignoreDifferences:
    - group: apps
      kind: Deployment
      jsonPointers:
        - /spec/replicas
      managedFieldsManagers:
        - kube-controller-manager
"#;

fn only_app(text: &str) -> Application {
    Application::from_yaml(text, "test.yaml").unwrap()
}

fn err(text: &str) -> String {
    Application::from_yaml(text, "apps/bad.yaml")
        .unwrap_err()
        .to_string()
}

#[test]
fn a_kustomize_application_reads_every_field_users_write() {
    let app = only_app(GUESTBOOK);
    assert_eq!(app.name(), "guestbook");
    assert_eq!(app.spec.project, "web");
    assert!(app.cascades());
    let source = app.source();
    assert_eq!(source.repo_url, "https://git.example/fleet.git");
    assert_eq!(source.target_revision, "release-2");
    assert_eq!(source.path.as_deref(), Some("apps/guestbook/overlays/prod"));
    let k = source.kustomize.as_ref().unwrap();
    assert_eq!(k.name_prefix.as_deref(), Some("prod-"));
    assert_eq!(k.name_suffix.as_deref(), Some("-v2"));
    assert_eq!(k.images, ["guestbook=registry.example/guestbook:2.1.0"]);
    assert_eq!(k.common_labels["tier"], "web");
    assert_eq!(k.common_annotations["owner"], "team-web");
    assert_eq!(app.source_kind(), SourceKind::Kustomize);
    assert_eq!(
        app.spec.destination.server.as_deref(),
        Some(IN_CLUSTER_SERVER)
    );
    assert_eq!(app.spec.destination.namespace.as_deref(), Some("guestbook"));
    let automated = app.automated().unwrap();
    assert!(automated.prune && automated.self_heal && !automated.allow_empty);
    assert_eq!(app.sync_option("CreateNamespace"), Some("true"));
    assert_eq!(
        app.sync_option("PrunePropagationPolicy"),
        Some("foreground")
    );
    assert_eq!(app.sync_option("Replace"), None);
    assert_eq!(
        app.spec.ignore_differences[0].json_pointers,
        ["/spec/replicas"]
    );
    assert_eq!(
        app.spec.ignore_differences[0].managed_fields_managers,
        ["kube-controller-manager"]
    );
}

#[test]
fn a_helm_repo_application_reads_chart_values_and_parameters() {
    let app = only_app(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {name: metrics}
spec:
  source:
    repoURL: https://charts.example/stable
    chart: metrics-stack
    targetRevision: 12.4.1
    helm:
      releaseName: metrics
      values: |
        retention: 7d
      valuesObject:
        grafana: {enabled: true}
      valueFiles: [values-prod.yaml]
      parameters:
        - name: replicas
          value: "3"
          forceString: true
  destination: {name: east, namespace: monitoring}
"#,
    );
    assert_eq!(app.spec.project, "default");
    assert_eq!(app.source_kind(), SourceKind::HelmRepo);
    let helm = app.source().helm.as_ref().unwrap();
    assert_eq!(helm.release_name.as_deref(), Some("metrics"));
    assert_eq!(helm.values.as_deref(), Some("retention: 7d\n"));
    assert_eq!(
        helm.values_object.as_ref().unwrap()["grafana"]["enabled"],
        true
    );
    assert_eq!(helm.value_files, ["values-prod.yaml"]);
    assert_eq!(helm.parameters[0].name, "replicas");
    assert!(helm.parameters[0].force_string);
    assert_eq!(app.spec.destination.name.as_deref(), Some("east"));
    assert!(app.automated().is_none(), "no syncPolicy means manual sync");
}

#[test]
fn a_directory_application_reads_recurse_include_and_exclude() {
    let app = only_app(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {name: plain}
spec:
  source:
    repoURL: /srv/git/fleet
    path: manifests
    directory: {recurse: true, include: "{*.yaml,*.json}", exclude: "drafts/*"}
  destination: {server: "https://10.1.2.3:6443"}
  syncPolicy: {automated: {enabled: false, prune: true}}
"#,
    );
    let d = app.source().directory.as_ref().unwrap();
    assert!(d.recurse);
    assert_eq!(d.include.as_deref(), Some("{*.yaml,*.json}"));
    assert_eq!(d.exclude.as_deref(), Some("drafts/*"));
    assert_eq!(app.source().target_revision, "HEAD");
    assert!(
        app.automated().is_none(),
        "enabled: false switches automation off"
    );
}

#[test]
fn a_misspelt_field_is_an_error_naming_its_path() {
    let text = GUESTBOOK.replace("targetRevision: release-2", "targetRevison: release-2");
    let e = err(&text);
    assert!(e.contains("spec.source"), "{e}");
    assert!(e.contains("targetRevison"), "{e}");
    assert!(e.contains("apps/bad.yaml"), "{e}");
}

#[test]
fn unsupported_argo_fields_are_refused_by_name_never_dropped() {
    for (from, to, path) in [
        (
            "  source:\n",
            "  sourceHydrator: {}\n  source:\n",
            "spec.sourceHydrator",
        ),
        (
            "    kustomize:\n",
            "    plugin: {name: cdk8s}\n    kustomize:\n",
            "spec.source.plugin",
        ),
        (
            "      namePrefix: prod-\n",
            "      namePrefix: prod-\n      version: v4.5.7\n",
            "spec.source.kustomize.version",
        ),
    ] {
        let e = err(&GUESTBOOK.replacen(from, to, 1));
        assert!(
            e.contains(path) && e.contains("not supported"),
            "{path}: {e}"
        );
    }
}

#[test]
fn a_sync_option_argo_does_not_define_is_refused() {
    let e = err(&GUESTBOOK.replace("PruneLast=true", "PruneFirst=true"));
    assert!(
        e.contains("syncOptions[2]") && e.contains("PruneFirst"),
        "{e}"
    );
    let e = err(&GUESTBOOK.replace(
        "PrunePropagationPolicy=foreground",
        "PrunePropagationPolicy=eager",
    ));
    assert!(e.contains("foreground, background, orphan"), "{e}");
}

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let e =
        err("apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: [broken\n");
    assert!(
        e.contains("apps/bad.yaml") && e.contains("invalid YAML"),
        "{e}"
    );
    assert!(e.contains("line 4") || e.contains("4:"), "no line in: {e}");
}

#[test]
fn destination_needs_exactly_one_of_server_and_name() {
    let both = GUESTBOOK.replace(
        "    server: https://kubernetes.default.svc\n",
        "    server: https://kubernetes.default.svc\n    name: east\n",
    );
    assert!(err(&both).contains("sets both server and name"));
    let neither = GUESTBOOK.replace("    server: https://kubernetes.default.svc\n", "");
    assert!(err(&neither).contains("needs server or name"));
}

#[test]
fn a_source_path_leaving_the_repo_is_refused() {
    let e = err(&GUESTBOOK.replace("path: apps/guestbook/overlays/prod", "path: ../../etc"));
    assert!(e.contains("must stay inside the repository"), "{e}");
}

#[test]
fn a_project_name_that_could_read_as_another_rbac_object_is_refused() {
    // `PROJECT/APP` is the RBAC object: `a/b` + `c` must not read as `a` + `b/c`.
    for project in ["'a/b'", "'*'", "'proj:x'", "''", "Web"] {
        let e = err(&GUESTBOOK.replace("project: web", &format!("project: {project}")));
        assert!(e.contains("spec.project"), "{project}: {e}");
    }
    for name in ["'*'", "'a:b'", "'a/b'", "Shop"] {
        let text = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: {name}}}\nspec: {{}}\n"
        );
        let e = parse_manifests(&text, "project.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("metadata.name"), "{name}: {e}");
    }
}

#[test]
fn an_application_exported_from_a_live_argo_cd_still_loads() {
    let exported = GUESTBOOK.replace(
        "  namespace: argocd\n",
        "  namespace: argocd\n  uid: 6c0f\n  resourceVersion: \"123\"\n  generation: 4\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\n",
    ) + "status:\n  sync: {status: Synced}\n";
    assert_eq!(only_app(&exported), only_app(GUESTBOOK));
}

#[test]
fn projects_and_applications_load_from_one_stream_and_empty_documents_are_skipped() {
    let text = format!(
        "---\n---\n{GUESTBOOK}\n---\n{}",
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata: {name: web, namespace: argocd}
spec:
  description: The web team
  sourceRepos: ["https://git.example/*"]
  destinations:
    - {server: "*", namespace: "guestbook*"}
  clusterResourceWhitelist:
    - {group: "", kind: Namespace}
  namespaceResourceBlacklist:
    - {group: "", kind: ResourceQuota}
  roles:
    - name: deployer
      policies: ["p, proj:web:deployer, applications, sync, web/*, allow"]
      groups: [web-team]
  syncWindows:
    - {kind: deny, schedule: "0 22 * * *", duration: 8h, applications: ["*"], manualSync: true}
"#
    );
    let manifests = parse_manifests(&text, "fleet.yaml").unwrap();
    assert_eq!(manifests.len(), 2);
    let Manifest::AppProject(project) = &manifests[1] else {
        panic!("second is the project")
    };
    assert_eq!(project.name(), "web");
    assert_eq!(project.spec.source_repos, ["https://git.example/*"]);
    assert_eq!(project.spec.cluster_resource_whitelist[0].kind, "Namespace");
    assert_eq!(project.spec.roles[0].groups, ["web-team"]);
    assert!(project.spec.sync_windows[0].manual_sync);
}

#[test]
fn a_document_of_another_kind_is_refused() {
    let e = parse_manifests(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        "x.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("\"ConfigMap\"") && e.contains("not an Argo CD"),
        "{e}"
    );
}

fn with_retry(retry: &str) -> String {
    GUESTBOOK.replace(
        "    syncOptions:\n      - CreateNamespace=true",
        &format!("    retry: {retry}\n    syncOptions:\n      - CreateNamespace=true"),
    )
}

#[test]
fn retry_reads_argo_cds_limit_and_backoff_with_its_defaults() {
    let app = Application::from_yaml(
        &with_retry("{limit: 5, backoff: {duration: 10s, factor: 3, maxDuration: 2m}}"),
        "app.yaml",
    )
    .unwrap();
    let retry = app.retry().unwrap();
    assert_eq!(
        (
            retry.limit,
            retry.backoff_secs,
            retry.factor,
            retry.max_backoff_secs
        ),
        (5, 10, 3, 120)
    );
    let waits: Vec<u64> = retry.waits().map(|w| w.as_secs()).collect();
    assert_eq!(waits, [10, 30, 90, 120, 120]);
    let defaults = Application::from_yaml(&with_retry("{limit: 2}"), "app.yaml").unwrap();
    let retry = defaults.retry().unwrap();
    assert_eq!(
        (retry.backoff_secs, retry.factor, retry.max_backoff_secs),
        (5, 2, 180)
    );
    // Bare seconds, as Argo CD takes them.
    let bare = Application::from_yaml(
        &with_retry("{limit: 1, backoff: {duration: '7'}}"),
        "app.yaml",
    )
    .unwrap();
    assert_eq!(bare.retry().unwrap().backoff_secs, 7);
    // No limit is Argo CD's 0: no retry.
    let none = Application::from_yaml(&with_retry("{}"), "app.yaml").unwrap();
    assert!(none.retry().is_none());
}

#[test]
fn retry_fields_flotilla_cannot_honour_are_refused_by_name() {
    let e = err(&with_retry("{limit: -1}"));
    assert!(e.contains("spec.syncPolicy.retry.limit"), "{e}");
    let e = err(&with_retry("{limit: 101}"));
    assert!(e.contains("spec.syncPolicy.retry.limit"), "{e}");
    Application::from_yaml(&with_retry("{limit: 100}"), "app.yaml").unwrap();
    let e = err(&with_retry("{limit: 2, refresh: true}"));
    assert!(e.contains("spec.syncPolicy.retry.refresh"), "{e}");
    let e = err(&with_retry("{limit: 2, backoff: {duration: soon}}"));
    assert!(
        e.contains("spec.syncPolicy.retry.backoff.duration") && e.contains("soon"),
        "{e}"
    );
    let e = err(&with_retry("{limit: 2, backoff: {factor: 0}}"));
    assert!(e.contains("spec.syncPolicy.retry.backoff.factor"), "{e}");
}

#[test]
fn jq_path_expressions_are_compiled_at_load_and_a_bad_one_is_named() {
    let app = GUESTBOOK.replace(
        "  ignoreDifferences:\n",
        "  ignoreDifferences:\n    - kind: Pod\n      jqPathExpressions: ['.spec.containers[] | select(.name == \"istio-proxy\")']\n",
    );
    Application::from_yaml(&app, "app.yaml").unwrap();
    let bad = GUESTBOOK.replace(
        "  ignoreDifferences:\n",
        "  ignoreDifferences:\n    - kind: Pod\n      jqPathExpressions: ['.spec | select(']\n",
    );
    let e = err(&bad);
    assert!(
        e.contains("spec.ignoreDifferences[0].jqPathExpressions[0]") && e.contains("not valid jq"),
        "{e}"
    );
}

#[test]
fn sync_options_flotilla_cannot_honour_are_refused_with_the_reason() {
    let e = err(&GUESTBOOK.replace("ServerSideApply=true", "ServerSideApply=false"));
    assert!(
        e.contains("ServerSideApply=false is not supported") && e.contains("server-side"),
        "{e}"
    );
    let e = err(&GUESTBOOK.replace("ServerSideApply=true", "Force=true"));
    assert!(e.contains("Force=true is not supported"), "{e}");
    assert!(check_sync_option("Force=false").is_ok());
}

#[test]
fn the_resources_finalizer_variants_cascade_and_other_finalizers_are_refused() {
    for (finalizer, background) in [
        ("resources-finalizer.argocd.argoproj.io", false),
        ("resources-finalizer.argocd.argoproj.io/foreground", false),
        ("resources-finalizer.argocd.argoproj.io/background", true),
    ] {
        let app = Application::from_yaml(
            &GUESTBOOK.replace("resources-finalizer.argocd.argoproj.io", finalizer),
            "app.yaml",
        )
        .unwrap();
        assert!(app.cascades(), "{finalizer}");
        assert_eq!(app.cascades_in_background(), background, "{finalizer}");
    }
    // Argo CD's controller adds this one; an exported manifest still loads.
    Application::from_yaml(
        &GUESTBOOK.replace(
            "resources-finalizer.argocd.argoproj.io",
            "post-delete-finalizer.argocd.argoproj.io",
        ),
        "app.yaml",
    )
    .unwrap();
    let e = err(&GUESTBOOK.replace(
        "resources-finalizer.argocd.argoproj.io",
        "example.com/keep-forever",
    ));
    assert!(e.contains("metadata.finalizers[0]"), "{e}");
    let e = err(&GUESTBOOK.replace(
        "resources-finalizer.argocd.argoproj.io",
        "resources-finalizer.argocd.argoproj.io/sideways",
    ));
    assert!(e.contains("metadata.finalizers[0]"), "{e}");
}

#[test]
fn managed_namespace_metadata_needs_create_namespace() {
    let with_metadata = GUESTBOOK.replace(
        "    syncOptions:\n",
        "    managedNamespaceMetadata:\n      labels: {team: web}\n    syncOptions:\n",
    );
    Application::from_yaml(&with_metadata, "app.yaml").unwrap();
    let e = err(&with_metadata.replace("      - CreateNamespace=true\n", ""));
    assert!(
        e.contains("spec.syncPolicy.managedNamespaceMetadata")
            && e.contains("CreateNamespace=true"),
        "{e}"
    );
}

fn with_annotation(key: &str, value: &str) -> String {
    GUESTBOOK.replace(
        "  namespace: argocd\n",
        &format!("  namespace: argocd\n  annotations:\n    {key}: {value:?}\n"),
    )
}

#[test]
fn argo_cd_annotations_on_an_application_are_known_or_refused_by_name() {
    let app = Application::from_yaml(
        &with_annotation("argocd.argoproj.io/skip-reconcile", "true"),
        "app.yaml",
    )
    .unwrap();
    assert!(app.skips_reconcile());
    let app = Application::from_yaml(
        &with_annotation("argocd.argoproj.io/skip-reconcile", "false"),
        "app.yaml",
    )
    .unwrap();
    assert!(!app.skips_reconcile());
    Application::from_yaml(
        &with_annotation("argocd.argoproj.io/sync-wave", "-1"),
        "app.yaml",
    )
    .unwrap();
    for key in [
        "argocd.argoproj.io/refresh",
        "argocd.argoproj.io/deletion-approved",
        "argocd.argoproj.io/something-new",
    ] {
        let e = err(&with_annotation(key, "hard"));
        assert!(e.contains(&format!("metadata.annotations[{key}]")), "{e}");
    }
    let e = err(&with_annotation("argocd.argoproj.io/skip-reconcile", "yes"));
    assert!(e.contains("skip-reconcile"), "{e}");
    // Other prefixes are the user's own.
    Application::from_yaml(&with_annotation("example.com/owner", "web"), "app.yaml").unwrap();
}

fn project_with(spec: &str) -> String {
    match parse_manifests(
        &format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata: {{name: web}}\nspec:\n  sourceRepos: ['*']\n{spec}"
        ),
        "project.yaml",
    ) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn project_fields_flotilla_does_not_implement_are_refused_by_name() {
    let e = project_with("  orphanedResources: {warn: true}\n");
    assert!(e.contains("spec.orphanedResources"), "{e}");
    let e = project_with("  permitOnlyProjectScopedClusters: true\n");
    assert!(e.contains("spec.permitOnlyProjectScopedClusters"), "{e}");
    assert_eq!(
        project_with("  permitOnlyProjectScopedClusters: false\n"),
        ""
    );
    let e = project_with(
        "  syncWindows: [{kind: deny, schedule: '0 25 * * *', duration: 1h, applications: ['*']}]\n",
    );
    assert!(e.contains("spec.syncWindows[0].schedule"), "{e}");
}

const MULTI: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: monitoring
spec:
  project: default
  sources:
    - repoURL: https://charts.example/stable
      chart: metrics-stack
      targetRevision: 58.*
      helm:
        valueFiles:
          - $values/monitoring/values.yaml
    - repoURL: https://git.example/fleet.git
      targetRevision: main
      ref: values
  destination:
    name: east
    namespace: monitoring
"#;

#[test]
fn multiple_sources_with_a_ref_are_read() {
    let app = Application::from_yaml(MULTI, "apps/monitoring.yaml").expect("valid");
    assert!(app.is_multi_source());
    assert!(app.needs_resolved_sources());
    assert_eq!(app.sources().len(), 2);
    assert_eq!(app.source().chart.as_deref(), Some("metrics-stack"));
    assert_eq!(app.sources()[1].ref_.as_deref(), Some("values"));
    assert!(!app.sources()[1].renders());
}

#[test]
fn multiple_sources_are_checked_source_by_source() {
    for (from, to, expect) in [
        (
            "$values/monitoring",
            "$other/monitoring",
            "names ref \"other\"",
        ),
        (
            "$values/monitoring/values.yaml",
            "$values/../../etc/passwd",
            "inside ref",
        ),
        (
            "      ref: values\n",
            "      ref: values\n      path: x\n      plugin: {}\n",
            "spec.sources[1].plugin",
        ),
        (
            "  destination:\n",
            "    - repoURL: https://git.example/other.git\n  destination:\n",
            "spec.sources[2].path",
        ),
        (
            "  sources:\n",
            "  source: {repoURL: https://git.example/a.git, path: apps}\n  sources:\n",
            "sets both source and sources",
        ),
    ] {
        let e = err(&MULTI.replacen(from, to, 1));
        assert!(e.contains(expect), "{expect}: {e}");
    }
    let e = err(&MULTI.replace("      ref: values\n", "      ref: values\n      helm: {}\n"));
    assert!(e.contains("renders nothing"), "{e}");
}

#[test]
fn a_ref_value_file_needs_multiple_sources() {
    let single = "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: web}\nspec:\n  source:\n    repoURL: https://charts.example\n    chart: web\n    helm: {valueFiles: [$values/x.yaml]}\n  destination: {name: east}\n";
    let e = err(single);
    assert!(
        e.contains("spec.source.helm.valueFiles") && e.contains("multiple sources"),
        "{e}"
    );
    let with_ref = single.replace("    chart: web\n", "    chart: web\n    ref: values\n");
    assert!(err(&with_ref).contains("spec.source.ref"));
}
