//! `hub::render` against real Git repositories and the real kustomize and helm
//! binaries (tests/run puts the ones tests/build-k8s built on PATH). Where a tool
//! renders, the result must equal what that tool prints when run directly.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use flotilla_common::bundle::{HookDeletePolicy, HookPhase, Object};
use flotilla_common::model::{ApiResource, ClusterFacts};
use flotilla_hub::app::Application;
use flotilla_hub::render::{Error, Renderer, Target, Tools, directory};
use flotilla_hub::source::{CommitId, Repo, RepoSpec};
use serde_json::Value;

use fixture::{WorkRepo, cache};

use crate::support::source as fixture;

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations:
    argocd.argoproj.io/sync-wave: "2"
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "registry.example/web:1.0"}]
"#;

const MIGRATION: &str = r#"apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  annotations:
    argocd.argoproj.io/hook: PreSync
    argocd.argoproj.io/hook-delete-policy: HookSucceeded,BeforeHookCreation
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: "registry.example/web:1.0"}]
"#;

/// A fleet repo with one app of each kind, committed on `main`.
fn fleet() -> WorkRepo {
    let work = WorkRepo::new();
    work.write(
        "apps/plain/web.yaml",
        &format!("---\n{DEPLOYMENT}---\n\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  annotations:\n    argocd.argoproj.io/sync-options: Prune=false\nspec:\n  ports: [{{port: 80}}]\n"),
    )
    .write("apps/plain/hooks/migrate.yaml", MIGRATION)
    .write(
        "apps/plain/config.json",
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "fast"}}"#,
    )
    .write("apps/plain/drafts/wip.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: wip}\n")
    .write("apps/plain/README.md", "not a manifest\n")
    .write(
        "apps/kust/base/kustomization.yaml",
        "resources: [deployment.yaml]\nlabels:\n  - pairs: {team: web}\n",
    )
    .write("apps/kust/base/deployment.yaml", DEPLOYMENT)
    .write(
        "apps/kust/overlays/prod/kustomization.yaml",
        "resources: [../../base]\nnamePrefix: prod-\nreplicas: [{name: web, count: 5}]\n",
    )
    .write(
        "apps/remote/kustomization.yaml",
        "resources:\n  - github.com/example/fleet//base?ref=v1\n",
    )
    .write("apps/broken/bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [oops\n")
    .write(
        "charts/web/Chart.yaml",
        "apiVersion: v2\nname: web\nversion: 0.3.0\nappVersion: \"1.0\"\n",
    )
    .write("charts/web/values.yaml", "replicas: 1\nimage: registry.example/web\ntag: \"1.0\"\n")
    .write("charts/web/values-prod.yaml", "replicas: 3\n")
    .write(
        "charts/web/templates/deployment.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
  namespace: {{ .Release.Namespace }}
  annotations:
    kube-version: {{ .Capabilities.KubeVersion.Version | quote }}
    has-widgets: {{ .Capabilities.APIVersions.Has "widgets.example.com/v1/Widget" | quote }}
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "{{ .Values.image }}:{{ .Values.tag }}"}]
"#,
    )
    .write(
        "charts/web/templates/hook.yaml",
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-smoke
  annotations:
    helm.sh/hook: post-install,post-upgrade
    helm.sh/hook-weight: "5"
    helm.sh/hook-delete-policy: hook-succeeded
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: smoke, image: busybox}]
"#,
    )
    .write("charts/failing/Chart.yaml", "apiVersion: v2\nname: failing\nversion: 0.1.0\n")
    .write(
        "charts/failing/templates/x.yaml",
        "{{ fail \"the database password is not set\" }}\n",
    );
    work.commit("the fleet");
    work
}

fn application(source: &str, destination_namespace: &str) -> Application {
    let text = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: web}}\nspec:\n  source:\n{source}\n  destination: {{name: east, namespace: {destination_namespace}}}\n"
    );
    Application::from_yaml(&text, "app.yaml").unwrap()
}

struct Fixture {
    work: WorkRepo,
    _cache_dir: tempfile::TempDir,
    repo: Repo,
    commit: CommitId,
}

fn fixture() -> Fixture {
    fixture_of(fleet())
}

fn fixture_of(work: WorkRepo) -> Fixture {
    let (cache_dir, cache) = cache();
    let repo = cache
        .fetch(&RepoSpec::new(work.path().to_str().unwrap()))
        .unwrap();
    let commit = repo.resolve("main").unwrap();
    Fixture {
        work,
        _cache_dir: cache_dir,
        repo,
        commit,
    }
}

impl Fixture {
    async fn render(
        &self,
        app: &Application,
        facts: Option<&ClusterFacts>,
    ) -> Result<Vec<Object>, Error> {
        let renderer = Renderer::new(Tools::from_env());
        let target = Target {
            cluster: "east",
            facts,
        };
        renderer
            .render(app, Some(&self.repo), Some(&self.commit), target)
            .await
            .map(|rendered| rendered.objects.to_vec())
    }
}

fn manifests(objects: &[Object]) -> Vec<Value> {
    objects.iter().map(|o| o.manifest_json().unwrap()).collect()
}

fn set(values: &[Value]) -> BTreeSet<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn tool(name: &str, args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new(name)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn names(objects: &[Object]) -> Vec<String> {
    objects
        .iter()
        .map(|o| format!("{}/{}", o.gvk.kind, o.name))
        .collect()
}

#[tokio::test]
async fn a_directory_renders_yaml_and_json_in_apply_order_with_waves_hooks_and_options() {
    let f = fixture();
    let app = application(
        "    repoURL: /unused\n    path: apps/plain\n    directory: {recurse: true, exclude: 'drafts/*'}",
        "shop",
    );
    let objects = f.render(&app, None).await.unwrap();
    assert_eq!(
        names(&objects),
        [
            "Job/migrate",
            "ConfigMap/settings",
            "Service/web",
            "Deployment/web"
        ],
        "PreSync hook first, then wave 0 by kind order, then wave 2"
    );
    let hook = objects[0].hook.as_ref().unwrap();
    assert_eq!(hook.phase, HookPhase::PreSync);
    assert_eq!(
        hook.delete_policy,
        [
            HookDeletePolicy::HookSucceeded,
            HookDeletePolicy::BeforeHookCreation
        ]
    );
    assert_eq!(objects[3].wave, 2);
    assert_eq!(objects[2].sync_options, ["Prune=false"]);
    for o in &objects {
        assert_eq!(o.namespace.as_deref(), Some("shop"), "{}", o.name);
        assert_eq!(o.manifest_json().unwrap()["metadata"]["namespace"], "shop");
    }
}

#[tokio::test]
async fn a_directory_without_recurse_reads_only_its_own_files_and_include_filters() {
    let f = fixture();
    let flat = application("    repoURL: /unused\n    path: apps/plain", "shop");
    assert_eq!(
        names(&f.render(&flat, None).await.unwrap()),
        ["ConfigMap/settings", "Service/web", "Deployment/web"]
    );
    let included = application(
        "    repoURL: /unused\n    path: apps/plain\n    directory: {recurse: true, include: '{hooks/*,*.json}'}",
        "shop",
    );
    assert_eq!(
        names(&f.render(&included, None).await.unwrap()),
        ["Job/migrate", "ConfigMap/settings"]
    );
}

#[tokio::test]
async fn a_kustomize_app_renders_exactly_what_kustomize_build_prints() {
    let f = fixture();
    let app = application(
        "    repoURL: /unused\n    path: apps/kust/overlays/prod",
        "shop",
    );
    let ours = f.render(&app, None).await.unwrap();
    let direct = tool(
        "kustomize",
        &["build", "apps/kust/overlays/prod"],
        f.work.path(),
    );
    // Flotilla adds the destination namespace, as Argo CD applies into it.
    let mut expected: Vec<Value> = Vec::new();
    directory::parse_file("kustomize", &direct, &mut expected).unwrap();
    for m in &mut expected {
        m["metadata"]["namespace"] = "shop".into();
    }
    assert_eq!(set(&manifests(&ours)), set(&expected));
    assert_eq!(ours[0].name, "prod-web");
    assert_eq!(ours[0].wave, 2);
}

#[tokio::test]
async fn the_applications_kustomize_fields_are_applied_as_kustomize_edits() {
    let f = fixture();
    let app = application(
        "    repoURL: /unused\n    path: apps/kust/overlays/prod\n    kustomize:\n      namePrefix: staging-\n      nameSuffix: -v2\n      images: ['registry.example/web=registry.example/web:2.0']\n      commonLabels: {env: staging}\n      commonAnnotations: {owner: team-web}",
        "shop",
    );
    let objects = f.render(&app, None).await.unwrap();
    let d = objects[0].manifest_json().unwrap();
    assert_eq!(
        d["metadata"]["name"], "staging-web-v2",
        "the app's prefix replaces the overlay's"
    );
    assert_eq!(d["metadata"]["labels"]["env"], "staging");
    assert_eq!(d["metadata"]["labels"]["team"], "web");
    assert_eq!(d["metadata"]["annotations"]["owner"], "team-web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/web:2.0"
    );
    assert_eq!(d["spec"]["replicas"], 5);
    // The repo itself is untouched: edits happen on a private copy.
    let again = application(
        "    repoURL: /unused\n    path: apps/kust/overlays/prod",
        "shop",
    );
    assert_eq!(f.render(&again, None).await.unwrap()[0].name, "prod-web");
}

fn facts() -> ClusterFacts {
    ClusterFacts {
        kubernetes_version: "v1.35.4".to_owned(),
        api_resources: vec![ApiResource {
            group_version: "widgets.example.com/v1".to_owned(),
            kind: "Widget".to_owned(),
            plural: "widgets".to_owned(),
            namespaced: true,
        }],
        api_server_url: "https://127.0.0.1:6443".to_owned(),
        kube_system_uid: "uid".to_owned(),
    }
}

#[tokio::test]
async fn a_helm_chart_in_git_renders_exactly_what_helm_template_prints() {
    let f = fixture();
    let app = application(
        "    repoURL: /unused\n    path: charts/web\n    helm:\n      releaseName: shop\n      valueFiles: [values-prod.yaml]\n      values: 'tag: \"1.1\"'\n      parameters: [{name: image, value: registry.example/shop}]",
        "shop",
    );
    let ours = f.render(&app, Some(&facts())).await.unwrap();
    let direct = tool(
        "helm",
        &[
            "template",
            "shop",
            "charts/web",
            "--namespace",
            "shop",
            "--values",
            "charts/web/values-prod.yaml",
            "--set",
            "tag=1.1",
            "--set",
            "image=registry.example/shop",
            "--kube-version",
            "v1.35.4",
            "--api-versions",
            "widgets.example.com/v1",
            "--api-versions",
            "widgets.example.com/v1/Widget",
            "--include-crds",
        ],
        f.work.path(),
    );
    let mut expected = Vec::new();
    directory::parse_file("helm", &direct, &mut expected).unwrap();
    for m in &mut expected {
        m["metadata"]["namespace"] = "shop".into();
    }
    assert_eq!(set(&manifests(&ours)), set(&expected));

    let deployment = ours.iter().find(|o| o.gvk.kind == "Deployment").unwrap();
    let d = deployment.manifest_json().unwrap();
    assert_eq!(d["spec"]["replicas"], 3, "values-prod.yaml applies");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/shop:1.1"
    );
    assert_eq!(d["metadata"]["annotations"]["kube-version"], "v1.35.4");
    assert_eq!(d["metadata"]["annotations"]["has-widgets"], "true");

    let smoke = ours.iter().find(|o| o.gvk.kind == "Job").unwrap();
    let hook = smoke.hook.as_ref().unwrap();
    assert_eq!(
        hook.phase,
        HookPhase::PostSync,
        "Helm's post-install is Argo CD's PostSync"
    );
    assert_eq!(hook.delete_policy, [HookDeletePolicy::HookSucceeded]);
    assert_eq!(smoke.wave, 5, "the hook weight orders hooks");
    assert_eq!(
        ours.last().unwrap().gvk.kind,
        "Job",
        "PostSync hooks come last"
    );
}

#[tokio::test]
async fn malformed_yaml_is_an_error_naming_the_file_and_line() {
    let f = fixture();
    let app = application("    repoURL: /unused\n    path: apps/broken", "shop");
    let e = f.render(&app, None).await.unwrap_err().to_string();
    assert!(e.contains("apps/broken/bad.yaml"), "{e}");
    assert!(e.contains("line 4") || e.contains(":4:"), "{e}");
}

#[tokio::test]
async fn a_missing_path_is_an_error_not_an_empty_render() {
    let f = fixture();
    let app = application("    repoURL: /unused\n    path: apps/nowhere", "shop");
    let e = f.render(&app, None).await.unwrap_err();
    assert!(matches!(e, Error::Source(_)), "{e:?}");
    assert!(e.to_string().contains("apps/nowhere"), "{e}");
}

#[tokio::test]
async fn a_chart_that_fails_to_render_reports_helms_message() {
    let f = fixture();
    let app = application("    repoURL: /unused\n    path: charts/failing", "shop");
    let e = f.render(&app, None).await.unwrap_err();
    assert!(matches!(e, Error::ToolFailed { .. }), "{e:?}");
    assert!(
        e.to_string().contains("the database password is not set"),
        "{e}"
    );
}

#[tokio::test]
async fn a_kustomization_naming_a_remote_base_is_refused() {
    let f = fixture();
    let app = application("    repoURL: /unused\n    path: apps/remote", "shop");
    let e = f.render(&app, None).await.unwrap_err();
    assert!(matches!(e, Error::RemoteBase { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("github.com/example/fleet//base?ref=v1"),
        "{e}"
    );
}

#[tokio::test]
async fn a_missing_value_file_is_an_error_unless_the_app_ignores_it() {
    let f = fixture();
    let strict = application(
        "    repoURL: /unused\n    path: charts/web\n    helm: {valueFiles: [values-nope.yaml]}",
        "shop",
    );
    let e = f.render(&strict, None).await.unwrap_err().to_string();
    assert!(e.contains("values-nope.yaml"), "{e}");
    let lenient = application(
        "    repoURL: /unused\n    path: charts/web\n    helm: {valueFiles: [values-nope.yaml], ignoreMissingValueFiles: true}",
        "shop",
    );
    assert!(f.render(&lenient, None).await.is_ok());
}

#[tokio::test]
async fn a_missing_tool_is_named() {
    let f = fixture();
    let app = application(
        "    repoURL: /unused\n    path: apps/kust/overlays/prod",
        "shop",
    );
    let mut tools = Tools::from_env();
    tools.kustomize = "/nonexistent/kustomize".into();
    let e = Renderer::new(tools)
        .render(&app, Some(&f.repo), Some(&f.commit), Target::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/kustomize"), "{e}");
}

#[tokio::test]
async fn a_tool_past_its_deadline_is_killed() {
    let f = fixture();
    let app = application("    repoURL: /unused\n    path: charts/web", "shop");
    let mut tools = Tools::from_env();
    tools.timeout = std::time::Duration::from_millis(1);
    let e = Renderer::new(tools)
        .render(&app, Some(&f.repo), Some(&f.commit), Target::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ToolTimeout { .. }), "{e:?}");
}

/// Serves the files of `dir` over plain HTTP on loopback, as a Helm chart
/// repository does; stops when the returned task is dropped or aborted.
async fn serve_dir(dir: std::path::PathBuf) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let dir = dir.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 8192];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let file = dir.join(path.trim_start_matches('/').split('?').next().unwrap_or(""));
                let (status, body) = match std::fs::read(&file) {
                    Ok(body) if !path.contains("..") => ("200 OK", body),
                    _ => ("404 Not Found", Vec::new()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chart_from_a_helm_repository_renders_exactly_what_helm_template_prints() {
    let f = fixture();
    let served = tempfile::tempdir().unwrap();
    tool(
        "helm",
        &[
            "package",
            "charts/web",
            "--destination",
            served.path().to_str().unwrap(),
        ],
        f.work.path(),
    );
    let (url, server) = serve_dir(served.path().to_owned()).await;
    tool(
        "helm",
        &["repo", "index", ".", "--url", &url],
        served.path(),
    );

    let app = application(
        &format!(
            "    repoURL: {url}\n    chart: web\n    targetRevision: 0.3.0\n    helm:\n      releaseName: shop\n      valuesObject: {{replicas: 7}}"
        ),
        "shop",
    );
    let renderer = Renderer::new(Tools::from_env());
    let ours = renderer
        .render(
            &app,
            None,
            None,
            Target {
                cluster: "east",
                facts: Some(&facts()),
            },
        )
        .await
        .unwrap()
        .objects
        .to_vec();

    let values = served.path().join("values.yaml");
    std::fs::write(&values, "replicas: 7\n").unwrap();
    let helm_home = tempfile::tempdir().unwrap();
    let direct = Command::new("helm")
        .args([
            "template",
            "shop",
            "web",
            "--repo",
            &url,
            "--version",
            "0.3.0",
            "--namespace",
            "shop",
            "--values",
            values.to_str().unwrap(),
            "--kube-version",
            "v1.35.4",
            "--api-versions",
            "widgets.example.com/v1",
            "--api-versions",
            "widgets.example.com/v1/Widget",
            "--include-crds",
        ])
        .env("HELM_CACHE_HOME", helm_home.path().join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.path().join("config"))
        .env("HELM_DATA_HOME", helm_home.path().join("data"))
        .output()
        .unwrap();
    assert!(
        direct.status.success(),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );
    let mut expected = Vec::new();
    directory::parse_file("helm", &direct.stdout, &mut expected).unwrap();
    for m in &mut expected {
        m["metadata"]["namespace"] = "shop".into();
    }
    assert_eq!(set(&manifests(&ours)), set(&expected));
    let deployment = ours.iter().find(|o| o.gvk.kind == "Deployment").unwrap();
    assert_eq!(deployment.manifest_json().unwrap()["spec"]["replicas"], 7);

    let missing = application(
        &format!("    repoURL: {url}\n    chart: web\n    targetRevision: 9.9.9"),
        "shop",
    );
    let e = renderer
        .render(&missing, None, None, Target::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("9.9.9"), "{e}");
    server.abort();
}

// Hostile Applications: nothing from a manifest may reach helm's or kustomize's argv
// as an option, be split by the tool into more than it says, or lead out of the
// checkout.

/// A chart whose output, if it were ever run as a shell script (as
/// `--post-renderer=/bin/sh` would), creates `marker`.
fn chart_with_a_shell_line(marker: &Path) -> WorkRepo {
    let work = WorkRepo::new();
    work.write(
        "charts/evil/Chart.yaml",
        "apiVersion: v2\nname: evil\nversion: 0.1.0\n",
    )
    .write(
        "charts/evil/templates/cm.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: evil\ndata:\n  script: |\n    touch {}\n",
            marker.display()
        ),
    );
    work.commit("a chart with a shell line");
    work
}

#[tokio::test]
async fn helm_release_name_that_looks_like_a_flag_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let marker = outside.path().join("ran");
    let f = fixture_of(chart_with_a_shell_line(&marker));
    for release in ["--post-renderer=/bin/sh", "-h", "Shop", "a b"] {
        let app = application(
            &format!(
                "    repoURL: /unused\n    path: charts/evil\n    helm:\n      releaseName: '{release}'"
            ),
            "shop",
        );
        let result = f.render(&app, None).await;
        assert!(
            !marker.exists(),
            "{release}: helm ran the chart's output as a shell script"
        );
        let e = result.unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{release}: {e:?}");
        assert!(e.to_string().contains("releaseName"), "{e}");
    }
    // A good name still renders.
    let app = application(
        "    repoURL: /unused\n    path: charts/evil\n    helm:\n      releaseName: shop",
        "shop",
    );
    assert_eq!(
        names(&f.render(&app, None).await.unwrap()),
        ["ConfigMap/evil"]
    );
    assert!(!marker.exists());
}

#[tokio::test]
async fn helm_chart_name_that_looks_like_a_flag_is_refused_before_helm_runs() {
    let outside = tempfile::tempdir().unwrap();
    let marker = outside.path().join("ran");
    for chart in ["--post-renderer=/bin/sh", "-h", "../../etc", "web --devel"] {
        let app = application(
            &format!(
                "    repoURL: https://127.0.0.1:9/charts\n    chart: '{chart}'\n    targetRevision: 1.0.0"
            ),
            "shop",
        );
        let e = Renderer::new(Tools::from_env())
            .render(&app, None, None, Target::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{chart}: {e:?}");
        assert!(e.to_string().contains("spec.source.chart"), "{e}");
    }
    assert!(!marker.exists());
}

#[tokio::test]
async fn helm_namespace_and_versions_cannot_carry_options() {
    let f = fixture();
    for helm in [
        "namespace: '--post-renderer=/bin/sh'",
        "kubeVersion: '--post-renderer=/bin/sh'",
        "apiVersions: ['v1,--post-renderer=/bin/sh']",
    ] {
        let app = application(
            &format!("    repoURL: /unused\n    path: charts/web\n    helm: {{{helm}}}"),
            "shop",
        );
        let e = f.render(&app, None).await.unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{helm}: {e:?}");
    }
}

/// A file outside the repository, as the hub's own files are, holding a value a
/// chart would print.
fn hub_secret() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.yaml");
    std::fs::write(&file, "leak: hub-secret-6f1c\n").unwrap();
    (dir, file)
}

/// A chart that prints `.Values.leak`.
fn leaky_chart(work: &WorkRepo) {
    work.write(
        "charts/leak/Chart.yaml",
        "apiVersion: v2\nname: leak\nversion: 0.1.0\n",
    )
    .write("charts/leak/values.yaml", "leak: none\n")
    .write(
        "charts/leak/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: leak\ndata:\n  leak: {{ .Values.leak | toString | quote }}\n",
    );
}

fn leaked(result: &Result<Vec<Object>, Error>) -> bool {
    match result {
        Ok(objects) => objects.iter().any(|o| {
            o.manifest_json()
                .unwrap()
                .to_string()
                .contains("hub-secret-6f1c")
        }),
        Err(e) => e.to_string().contains("hub-secret-6f1c"),
    }
}

#[tokio::test]
async fn a_helm_file_parameter_name_cannot_read_a_hub_file() {
    let (_dir, secret) = hub_secret();
    let work = WorkRepo::new();
    leaky_chart(&work);
    work.commit("leaky chart");
    let f = fixture_of(work);
    for name in [
        format!("x={},y", secret.display()),
        format!("x,leak={}", secret.display()),
        "leak\\".to_owned(),
    ] {
        let app = application(
            &format!(
                "    repoURL: /unused\n    path: charts/leak\n    helm:\n      fileParameters: [{{name: '{name}', path: values.yaml}}]"
            ),
            "shop",
        );
        let result = f.render(&app, None).await;
        assert!(!leaked(&result), "{name}: the hub's file was read");
        let e = result.unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{name}: {e:?}");
        assert!(e.to_string().contains("fileParameters"), "{e}");
    }
}

#[tokio::test]
async fn a_helm_file_parameter_path_outside_the_repository_is_refused() {
    let (_dir, secret) = hub_secret();
    let work = WorkRepo::new();
    leaky_chart(&work);
    work.commit("leaky chart");
    let f = fixture_of(work);
    let up = "../".repeat(40);
    for path in [
        secret.display().to_string(),
        format!(
            "{up}{}",
            secret.display().to_string().trim_start_matches('/')
        ),
        "https://127.0.0.1:9/secret.yaml".to_owned(),
    ] {
        let app = application(
            &format!(
                "    repoURL: /unused\n    path: charts/leak\n    helm:\n      fileParameters: [{{name: leak, path: '{path}'}}]"
            ),
            "shop",
        );
        let result = f.render(&app, None).await;
        assert!(!leaked(&result), "{path}: the hub's file was read");
        assert!(
            matches!(result, Err(Error::Refused { .. })),
            "{path}: {result:?}"
        );
    }
}

#[tokio::test]
async fn a_helm_value_file_with_a_comma_stays_one_file_inside_the_repository() {
    let (_dir, secret) = hub_secret();
    let work = WorkRepo::new();
    leaky_chart(&work);
    // `x,/<secret>` is a real path in the repo, holding a harmless value; helm splits
    // `--values` on commas, so unescaped it would read `x` and then the hub's file.
    let mirror = format!("charts/leak/x,{}", secret.display());
    work.write(&mirror, "leak: in-repo\n")
        .write("charts/leak/x", "{}\n");
    work.commit("a value file with a comma in its path");
    let f = fixture_of(work);
    let app = application(
        &format!(
            "    repoURL: /unused\n    path: charts/leak\n    helm:\n      valueFiles: ['x,/{}']",
            secret.display()
        ),
        "shop",
    );
    let result = f.render(&app, None).await;
    assert!(!leaked(&result), "the hub's file was read: {result:?}");
    let objects = result.unwrap();
    assert_eq!(
        objects[0].manifest_json().unwrap()["data"]["leak"],
        "in-repo"
    );
}

#[tokio::test]
async fn helm_value_files_that_are_remote_or_outside_the_repository_are_refused() {
    let (_dir, secret) = hub_secret();
    let work = WorkRepo::new();
    leaky_chart(&work);
    work.commit("leaky chart");
    let f = fixture_of(work);
    let up = "../".repeat(40);
    for file in [
        secret.display().to_string(),
        format!(
            "{up}{}",
            secret.display().to_string().trim_start_matches('/')
        ),
        "https://127.0.0.1:9/values.yaml".to_owned(),
    ] {
        for ignore in [false, true] {
            let app = application(
                &format!(
                    "    repoURL: /unused\n    path: charts/leak\n    helm:\n      valueFiles: ['{file}']\n      ignoreMissingValueFiles: {ignore}"
                ),
                "shop",
            );
            let result = f.render(&app, None).await;
            assert!(!leaked(&result), "{file}: the hub's file was read");
            assert!(
                matches!(result, Err(Error::Refused { .. })),
                "{file}: {result:?}"
            );
        }
    }
}

#[tokio::test]
async fn helm_parameters_set_only_the_key_they_name() {
    let (_dir, secret) = hub_secret();
    let work = WorkRepo::new();
    leaky_chart(&work);
    work.commit("leaky chart");
    let f = fixture_of(work);
    // A value with a comma is one value, as Argo CD passes it.
    let app = application(
        "    repoURL: /unused\n    path: charts/leak\n    helm:\n      parameters: [{name: leak, value: 'a,b=c'}]",
        "shop",
    );
    let objects = f.render(&app, None).await.unwrap();
    assert_eq!(objects[0].manifest_json().unwrap()["data"]["leak"], "a,b=c");
    // A name that would split is refused.
    for name in ["a,leak=x", "leak=x", "x\\"] {
        let app = application(
            &format!(
                "    repoURL: /unused\n    path: charts/leak\n    helm:\n      parameters: [{{name: '{name}', value: v}}]"
            ),
            "shop",
        );
        let e = f.render(&app, None).await.unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{name}: {e:?}");
    }
    let _ = secret;
}

#[tokio::test]
async fn a_chart_dependency_outside_the_repository_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("Chart.yaml"),
        "apiVersion: v2\nname: outside\nversion: 0.1.0\n",
    )
    .unwrap();
    let work = WorkRepo::new();
    work.write(
        "charts/dep/Chart.yaml",
        &format!(
            "apiVersion: v2\nname: dep\nversion: 0.1.0\ndependencies:\n  - name: outside\n    version: 0.1.0\n    repository: file://{}\n",
            outside.path().display()
        ),
    )
    .write("charts/dep/templates/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dep}\n");
    work.commit("a chart depending on a folder outside the repo");
    let f = fixture_of(work);
    let app = application("    repoURL: /unused\n    path: charts/dep", "shop");
    let e = f.render(&app, None).await.unwrap_err();
    assert!(matches!(e, Error::Refused { .. }), "{e:?}");
}

/// A kustomization outside the repository, as another tenant's or the hub's files
/// could be.
fn outside_kustomization() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources: [cm.yaml]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: stolen}\ndata: {leak: hub-secret-6f1c}\n",
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn a_kustomize_resource_outside_the_checkout_is_refused() {
    let outside = outside_kustomization();
    let up = "../".repeat(40);
    let relative = format!(
        "{up}{}",
        outside.path().display().to_string().trim_start_matches('/')
    );
    for entry in [outside.path().display().to_string(), relative] {
        for field in ["resources", "components", "transformers"] {
            let work = WorkRepo::new();
            work.write(
                "apps/k/kustomization.yaml",
                &format!("{field}: ['{entry}']\n"),
            );
            work.commit("reaching out");
            let f = fixture_of(work);
            let app = application("    repoURL: /unused\n    path: apps/k", "shop");
            let result = f.render(&app, None).await;
            assert!(
                !leaked(&result),
                "{field} {entry}: read outside the checkout"
            );
            assert!(
                matches!(result, Err(Error::Refused { .. })),
                "{field} {entry}: {result:?}"
            );
        }
    }
}

/// Accepts connections on loopback and counts them: any count above zero means
/// something was fetched.
async fn counting_listener() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (url, count)
}

#[tokio::test]
async fn remote_files_in_a_kustomization_are_refused_before_any_fetch() {
    let (url, fetched) = counting_listener().await;
    for kustomization in [
        format!("resources: [cm.yaml]\npatches:\n  - path: {url}/patch.yaml\n"),
        format!("resources: [cm.yaml]\nconfigMapGenerator:\n  - name: g\n    files: [{url}/x]\n"),
        format!("resources: [cm.yaml]\ncrds: ['{url}/crd.yaml']\n"),
        format!("resources: [cm.yaml]\ntransformers: ['{url}/t.yaml']\n"),
    ] {
        let work = WorkRepo::new();
        work.write("apps/k/kustomization.yaml", &kustomization)
            .write(
                "apps/k/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
            );
        work.commit("remote files");
        let f = fixture_of(work);
        let app = application("    repoURL: /unused\n    path: apps/k", "shop");
        let e = f.render(&app, None).await.unwrap_err();
        assert!(
            matches!(e, Error::RemoteBase { .. }),
            "{kustomization}: {e:?}"
        );
    }
    assert_eq!(
        fetched.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "something was fetched"
    );
}

#[tokio::test]
async fn the_applications_kustomize_components_and_patches_cannot_reach_outside() {
    let (url, fetched) = counting_listener().await;
    let outside = outside_kustomization();
    let up = "../".repeat(40);
    let relative = format!(
        "{up}{}",
        outside.path().display().to_string().trim_start_matches('/')
    );
    let f = fixture();
    for kustomize in [
        format!("components: ['{url}/component']"),
        format!("components: ['{relative}']"),
        format!("components: ['{}']", outside.path().display()),
        "components: ['../../../*']".to_owned(),
        format!("patches: [{{path: '{url}/patch.yaml'}}]"),
        format!("patches: [{{path: '{relative}/cm.yaml'}}]"),
    ] {
        let app = application(
            &format!(
                "    repoURL: /unused\n    path: apps/kust/overlays/prod\n    kustomize: {{{kustomize}}}"
            ),
            "shop",
        );
        let result = f.render(&app, None).await;
        assert!(!leaked(&result), "{kustomize}: read outside the checkout");
        assert!(
            matches!(
                result,
                Err(Error::Refused { .. } | Error::RemoteBase { .. })
            ),
            "{kustomize}: {result:?}"
        );
    }
    assert_eq!(
        fetched.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "something was fetched"
    );
}

#[tokio::test]
async fn kustomize_options_arrive_whole_and_never_as_flags() {
    let f = fixture();
    let app = application(
        "    repoURL: /unused\n    path: apps/kust/overlays/prod\n    kustomize:\n      commonAnnotations: {note: 'a,b:c', quoted: '\"x\"'}\n      commonLabels: {env: staging}",
        "shop",
    );
    let objects = f.render(&app, None).await.unwrap();
    let d = objects[0].manifest_json().unwrap();
    assert_eq!(d["metadata"]["annotations"]["note"], "a,b:c");
    assert_eq!(d["metadata"]["annotations"]["quoted"], "\"x\"");
    assert!(d["metadata"]["annotations"].get("b").is_none(), "{d}");
    for kustomize in [
        "namespace: '--help'",
        "images: ['--help']",
        "replicas: [{name: '--help', count: x}]",
        "commonLabels: {'a:b': c}",
        "kubeVersion: '--help'",
    ] {
        let app = application(
            &format!(
                "    repoURL: /unused\n    path: apps/kust/overlays/prod\n    kustomize: {{{kustomize}}}"
            ),
            "shop",
        );
        let e = f.render(&app, None).await.unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{kustomize}: {e:?}");
    }
}

#[tokio::test]
async fn kustomize_never_runs_plugins_exec_functions_or_helm_a_kustomization_asks_for() {
    let (url, fetched) = counting_listener().await;
    let outside = tempfile::tempdir().unwrap();
    let marker = outside.path().join("ran");
    for kustomization in [
        format!(
            "resources: [cm.yaml]\ntransformers:\n  - |-\n    apiVersion: example.com/v1\n    kind: Evil\n    metadata:\n      name: evil\n      annotations:\n        config.kubernetes.io/function: |\n          exec:\n            path: /bin/sh\n            args: ['-c', 'touch {}']\n",
            marker.display()
        ),
        format!("helmCharts:\n  - name: x\n    repo: {url}/charts\n    version: 1.0.0\n"),
    ] {
        let work = WorkRepo::new();
        work.write("apps/k/kustomization.yaml", &kustomization)
            .write(
                "apps/k/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
            );
        work.commit("plugins");
        let f = fixture_of(work);
        let app = application("    repoURL: /unused\n    path: apps/k", "shop");
        let result = f.render(&app, None).await;
        assert!(result.is_err(), "{kustomization}: {result:?}");
        assert!(!marker.exists(), "an exec function ran");
    }
    assert_eq!(
        fetched.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "kustomize inflated a remote Helm chart"
    );
}

#[tokio::test]
async fn a_render_kept_in_the_store_is_served_after_a_restart_without_rendering_again() {
    let f = fixture();
    let app = application(
        "    repoURL: /unused\n    path: apps/kust/overlays/prod",
        "shop",
    );
    let data = tempfile::tempdir().unwrap();
    let target = Target {
        cluster: "east",
        facts: None,
    };
    let first = {
        let store = flotilla_hub::store::Store::open(data.path()).unwrap();
        let renderer = Renderer::new(Tools::from_env()).with_store(store);
        let rendered = renderer
            .render(&app, Some(&f.repo), Some(&f.commit), target)
            .await
            .unwrap();
        assert_eq!(renderer.cache_hits(), 0);
        rendered
    };
    // The hub restarts: a new process opens the same data folder.
    let store = flotilla_hub::store::Store::open(data.path()).unwrap();
    let renderer = Renderer::new(Tools::from_env()).with_store(store);
    let again = renderer
        .render(&app, Some(&f.repo), Some(&f.commit), target)
        .await
        .unwrap();
    assert_eq!(renderer.cache_hits(), 1, "rendered again after the restart");
    assert_eq!(again.objects, first.objects);
    assert_eq!(again.kind, first.kind);

    // Anything that changes the render misses: another destination namespace.
    let elsewhere = application(
        "    repoURL: /unused\n    path: apps/kust/overlays/prod",
        "shop-2",
    );
    let other = renderer
        .render(&elsewhere, Some(&f.repo), Some(&f.commit), target)
        .await
        .unwrap();
    assert_eq!(renderer.cache_hits(), 1);
    assert!(
        other
            .objects
            .iter()
            .all(|o| o.namespace.as_deref() == Some("shop-2"))
    );
}

/// Argo CD's build environment in Helm parameters and value files: the app's
/// name, the commit and the cluster's version reach the chart as data, through
/// the real helm.
#[tokio::test]
async fn build_environment_variables_reach_helm_parameters_and_value_files() {
    let f = fixture();
    let app = application(
        "    repoURL: /unused\n    path: charts/web\n    helm:\n      valueFiles: [values-$ARGOCD_APP_NAME.yaml]\n      parameters:\n        - {name: image, value: 'registry.example/$ARGOCD_APP_NAME'}\n        - {name: tag, value: '${ARGOCD_APP_REVISION_SHORT}-$KUBE_VERSION'}",
        "shop",
    );
    f.work.write("charts/web/values-web.yaml", "replicas: 4\n");
    let objects = f.render(&app, Some(&facts())).await;
    // The fixture's commit predates values-web.yaml: expanded, the file is
    // looked up and reported missing by its expanded name.
    let e = objects.unwrap_err().to_string();
    assert!(e.contains("values-web.yaml"), "{e}");

    let app = application(
        "    repoURL: /unused\n    path: charts/web\n    helm:\n      valueFiles: [values-prod.yaml]\n      parameters:\n        - {name: image, value: 'registry.example/$ARGOCD_APP_NAME'}\n        - {name: tag, value: '${ARGOCD_APP_REVISION_SHORT}-$KUBE_VERSION'}",
        "shop",
    );
    let objects = f.render(&app, Some(&facts())).await.unwrap();
    let deployment = objects.iter().find(|o| o.gvk.kind == "Deployment").unwrap();
    let d = deployment.manifest_json().unwrap();
    let short: String = f.commit.to_string().chars().take(7).collect();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("registry.example/web:{short}-v1.35.4").as_str()
    );
}
