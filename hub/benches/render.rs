//! Rendering a generated monorepo of 1,000 plain-directory apps of 20 objects each
//! (issue 4, "Speed"): cold, then after a commit that changes one file, with the peak
//! RSS, side by side with `kubectl kustomize` and `kustomize build` over the same trees.
//!
//! `cargo bench -p flotilla-hub --bench render`. Without `--bench` (as `cargo test
//! --all-targets` runs it) it renders 10 apps, checks the results and skips the tools.
//! `FLOTILLA_BENCH_APPS` changes the number of apps, for profiling a smaller run.
//! Everything is written under one temporary folder, removed at the end.

// A benchmark reports a broken setup by panicking, as a test does.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_hub::app::Application;
use flotilla_hub::render::{self, Rendered, Renderer, Target, Tools, directory, objects};
use flotilla_hub::source::{CommitId, Limits, Repo, RepoCache, RepoSpec};

/// Objects per app, spread over the files [`write_app`] writes.
const OBJECTS_PER_APP: usize = 20;
/// The app whose one file each incremental commit changes.
const CHANGED_APP: usize = 500;
/// Incremental commits measured; the report shows their median and worst.
const INCREMENTAL_RUNS: usize = 5;
/// Goals from issue 4.
const COLD_GOAL: Duration = Duration::from_secs(5);
const INCREMENTAL_GOAL: Duration = Duration::from_millis(200);
const RSS_GOAL_MIB: f64 = 300.0;
/// How long one external tool may spend on the per-app runs before the rest is
/// extrapolated, so the bench always stops by itself.
const TOOL_BUDGET: Duration = Duration::from_secs(150);
/// One tool run that takes longer than this is killed.
const TOOL_RUN_TIMEOUT: Duration = Duration::from_secs(60);

struct Config {
    apps: usize,
    tools: bool,
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let apps = std::env::var("FLOTILLA_BENCH_APPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if bench { 1000 } else { 10 });
    let config = Config {
        apps: apps.max(1),
        tools: bench,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(&config));
}

async fn run(config: &Config) {
    let n = config.apps;
    let changed_app = CHANGED_APP.min(n - 1);
    let load_before = load_average();
    let scratch = tempfile::Builder::new()
        .prefix("flotilla-bench-render-")
        .tempdir()
        .unwrap();
    let work = scratch.path().join("work");
    let kust = scratch.path().join("kustomize");

    let started = Instant::now();
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    for i in 0..n {
        write_app(&work, i, 0);
        write_app(&kust, i, 0);
        write_kustomization(&kust, i);
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "a monorepo"]);
    let apps: Vec<Application> = (0..n).map(|i| application(&work, i)).collect();
    let generated = started.elapsed();

    let mut report = Report::default();
    if !config.tools {
        report.note(
            "smoke run (no --bench argument, as under cargo test): few apps, no external tools; \
             run `cargo bench -p flotilla-hub --bench render` for the figures"
                .to_owned(),
        );
    }
    report.note(format!(
        "{n} apps x {OBJECTS_PER_APP} objects in {} files each; generated in {:.1} s (not timed)",
        APP_FILES.len(),
        generated.as_secs_f64()
    ));

    // Cold: a fresh clone, a fresh renderer.
    let cache = RepoCache::new(scratch.path().join("cache")).unwrap();
    let spec = RepoSpec::new(work.to_str().unwrap());
    let target = Target {
        cluster: "east",
        facts: None,
    };
    let cold_started = Instant::now();
    let repo = cache.fetch(&spec).unwrap();
    let fetched = cold_started.elapsed();
    let commit = repo.resolve("main").unwrap();
    let resolved = cold_started.elapsed();
    let renderer = Renderer::new(Tools::from_env());
    let mut rendered: Vec<Rendered> = Vec::with_capacity(n);
    let mut first_render = Duration::ZERO;
    for app in &apps {
        let one = Instant::now();
        rendered.push(
            renderer
                .render(app, Some(&repo), Some(&commit), target)
                .await
                .unwrap(),
        );
        if first_render.is_zero() {
            first_render = one.elapsed();
        }
    }
    let cold = cold_started.elapsed();
    for (app, r) in apps.iter().zip(&rendered) {
        assert_eq!(r.kind, flotilla_hub::app::SourceKind::Directory);
        assert_eq!(r.objects.len(), OBJECTS_PER_APP, "{}", app.name());
    }
    report.row(
        "cold: fetch + resolve + render all",
        cold,
        Some(COLD_GOAL),
        format!(
            "clone {} ms, resolve {} ms, first render {} ms (tool versions), {} renders {:.2} ms each",
            fetched.as_millis(),
            (resolved - fetched).as_millis(),
            first_render.as_millis(),
            n - 1,
            (cold - resolved - first_render).as_secs_f64() * 1e3 / (n - 1).max(1) as f64
        ),
    );

    // Incremental: one file of one app changes; only affected apps are re-rendered.
    let mut incremental = Vec::new();
    let mut old = commit.clone();
    let mut split = String::new();
    for run in 1..=INCREMENTAL_RUNS {
        write_app(&work, changed_app, run);
        git(&work, &["commit", "-q", "-am", "change one config"]);
        let started = Instant::now();
        let repo = cache.fetch(&spec).unwrap();
        let fetched = started.elapsed();
        let new = repo.resolve("main").unwrap();
        let changed = repo.changed_paths(&old, &new).unwrap();
        let diffed = started.elapsed();
        let affected: Vec<usize> = (0..n)
            .filter(|&i| render::affected_by(&apps[i], rendered[i].kind, &changed))
            .collect();
        let selected = started.elapsed();
        for &i in &affected {
            rendered[i] = renderer
                .render(&apps[i], Some(&repo), Some(&new), target)
                .await
                .unwrap();
        }
        let took = started.elapsed();
        assert_eq!(
            changed,
            [format!("{}/config.yaml", app_dir(changed_app))],
            "changed paths"
        );
        assert_eq!(affected, [changed_app], "affected apps");
        if run == INCREMENTAL_RUNS {
            split = format!(
                "last: fetch {} ms, resolve + diff {} ms, select {} µs, render {} ms",
                fetched.as_millis(),
                (diffed - fetched).as_millis(),
                (selected - diffed).as_micros(),
                (took - selected).as_millis()
            );
        }
        incremental.push(took);
        old = new;
    }
    incremental.sort();
    let median = incremental[incremental.len() / 2];
    let worst = incremental[incremental.len() - 1];
    report.row(
        &format!("incremental: 1 file changed (median of {INCREMENTAL_RUNS})"),
        median,
        Some(INCREMENTAL_GOAL),
        format!("worst {} ms; {split}", worst.as_millis()),
    );

    let peak = peak_rss_mib();
    report.row_text(
        "peak RSS (VmHWM)",
        format!("{peak:.0} MiB"),
        format!(
            "goal < {RSS_GOAL_MIB:.0} MiB: {}",
            verdict(peak < RSS_GOAL_MIB)
        ),
        String::new(),
    );

    breakdown(&mut report, &repo, &commit, &apps);

    if config.tools {
        for (root, count) in [("root-tenth", n.div_ceil(10)), ("root-all", n)] {
            std::fs::create_dir_all(kust.join(root)).unwrap();
            std::fs::write(
                kust.join(root).join("kustomization.yaml"),
                (0..count).fold(String::from("resources:\n"), |mut out, i| {
                    let _ = writeln!(out, "  - ../{}", app_dir(i));
                    out
                }),
            )
            .unwrap();
        }
        for (name, program, args, version) in [
            (
                "kubectl kustomize",
                PathBuf::from("kubectl"),
                ["kustomize"],
                &["version", "--client"][..],
            ),
            (
                "kustomize build",
                standalone_kustomize(),
                ["build"],
                &["version"][..],
            ),
        ] {
            let tool = Tool {
                name,
                program: &program,
                args: &args,
                version,
            };
            compare_tool(&mut report, &tool, &kust, n, changed_app).await;
        }
    }

    report.note(format!(
        "{} CPUs; load average {load_before} before, {} after",
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        load_average()
    ));
    report.print();
}

/// Times where a render spends its time, by calling the steps `Renderer::render`
/// takes one after the other over every app.
fn breakdown(report: &mut Report, repo: &Repo, commit: &CommitId, apps: &[Application]) {
    let limits = Limits::default();
    let (mut read, mut parse, mut convert, mut sort) = Default::default();
    for app in apps {
        let path = app.source().path.as_deref().unwrap_or("");
        let started = Instant::now();
        let files = repo.files(commit, path, &limits).unwrap();
        let t_read = started.elapsed();
        let manifests =
            directory::render(&files, path, &flotilla_hub::app::Directory::default()).unwrap();
        let t_parse = started.elapsed();
        let mut objects = objects::to_objects(manifests, Some("x"), None).unwrap();
        let t_convert = started.elapsed();
        objects::sort_for_apply(&mut objects);
        let t_sort = started.elapsed();
        read += t_read;
        parse += t_parse - t_read;
        convert += t_convert - t_parse;
        sort += t_sort - t_convert;
    }
    let total: Duration = read + parse + convert + sort;
    let share = |d: Duration| {
        format!(
            "{:>6.0} ms  {:>3.0}%",
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() * 100.0 / total.as_secs_f64()
        )
    };
    report.note(format!(
        "where a render's time goes, over all {} apps: read tree (gix) {}; parse YAML (serde-saphyr) {}; to objects (canonical JSON) {}; sort {}",
        apps.len(),
        share(read),
        share(parse),
        share(convert),
        share(sort)
    ));
}

/// Runs a kustomize once per app dir (as Argo CD's repo server does, one process per
/// app), once over root kustomizations of a tenth and of all apps, and again on the
/// changed app.
async fn compare_tool(
    report: &mut Report,
    tool_under_test: &Tool<'_>,
    root: &Path,
    n: usize,
    changed_app: usize,
) {
    let Tool {
        name,
        program,
        args,
        version,
    } = *tool_under_test;
    let version = Command::new(program)
        .args(version)
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let label = format!("{} {version}", program.display());
    // One run first, to see the tool works and to count what it renders.
    let one = match tool(program, args, &root.join(app_dir(0))).await {
        Ok(out) => out,
        Err(e) => {
            report.row_text(&format!("{name}: all apps"), "-".into(), String::new(), e);
            return;
        }
    };
    let documents = String::from_utf8_lossy(&one).matches("\nkind: ").count();
    assert_eq!(documents, OBJECTS_PER_APP, "{name} renders every object");

    let started = Instant::now();
    let mut done = 0;
    while done < n && started.elapsed() < TOOL_BUDGET {
        tool(program, args, &root.join(app_dir(done)))
            .await
            .unwrap();
        done += 1;
    }
    let took = started.elapsed();
    let per_app = took / done as u32;
    let all = per_app * n as u32;
    report.row(
        &format!("{name}: all apps, one process each"),
        all,
        None,
        format!(
            "{:.1} ms per app; {label}{}",
            per_app.as_secs_f64() * 1e3,
            if done < n {
                format!(
                    "; extrapolated from {done} apps run in {} s",
                    took.as_secs()
                )
            } else {
                String::new()
            }
        ),
    );

    // kustomize accumulates resources in ways that grow faster than linearly, so a
    // root of a tenth of the apps is timed too, to show the trend when the whole
    // root does not finish within TOOL_RUN_TIMEOUT.
    for (root_name, count) in [("root-tenth", n.div_ceil(10)), ("root-all", n)] {
        let dir = root.join(root_name);
        let started = Instant::now();
        let row = format!("{name}: {count} apps, one process");
        match tool(program, args, &dir).await {
            Ok(all) => {
                let took = started.elapsed();
                let documents = String::from_utf8_lossy(&all).matches("\nkind: ").count();
                assert_eq!(
                    documents,
                    OBJECTS_PER_APP * count,
                    "{name} renders every object"
                );
                report.row(
                    &row,
                    took,
                    None,
                    format!("a root kustomization listing {count} app dirs ({documents} objects)"),
                );
            }
            Err(e) => report.row_text(&row, "-".into(), String::new(), e),
        }
    }

    // The changed app, as the incremental pass renders it.
    write_app(root, changed_app, INCREMENTAL_RUNS + 1);
    let mut runs = Vec::new();
    for _ in 0..INCREMENTAL_RUNS {
        let started = Instant::now();
        tool(program, args, &root.join(app_dir(changed_app)))
            .await
            .unwrap();
        runs.push(started.elapsed());
    }
    runs.sort();
    report.row(
        &format!("{name}: the 1 changed app (median of {INCREMENTAL_RUNS})"),
        runs[runs.len() / 2],
        None,
        "render only; no fetch or diff".into(),
    );
}

/// An external renderer to compare with: `program args… <dir>`.
struct Tool<'a> {
    name: &'a str,
    program: &'a Path,
    args: &'a [&'a str],
    version: &'a [&'a str],
}

async fn tool(program: &Path, args: &[&str], dir: &Path) -> Result<Vec<u8>, String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let out = tokio::time::timeout(TOOL_RUN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{} did not finish in {TOOL_RUN_TIMEOUT:?}",
                program.display()
            )
        })?
        .map_err(|e| format!("{}: {e}", program.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {args:?} {}: {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

fn standalone_kustomize() -> PathBuf {
    let cached = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/flotilla/k8s-v1.35.4-r1/kustomize");
    if cached.is_file() {
        cached
    } else {
        PathBuf::from("kustomize")
    }
}

// The monorepo.

const APP_FILES: [&str; 9] = [
    "config.yaml",
    "cronjob.yaml",
    "deployment.yaml",
    "ingress.json",
    "policy.yaml",
    "rbac.yaml",
    "README.md",
    "service.yaml",
    "workers.yaml",
];

fn app_dir(i: usize) -> String {
    format!("apps/app-{i:04}")
}

fn application(work: &Path, i: usize) -> Application {
    let text = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: app-{i:04}, namespace: argocd}}\nspec:\n  project: default\n  source:\n    repoURL: {}\n    targetRevision: main\n    path: {}\n  destination: {{name: east, namespace: team-{}}}\n",
        work.display(),
        app_dir(i),
        i % 40
    );
    Application::from_yaml(&text, "bench").unwrap()
}

/// Writes app `i`'s 20 objects; `revision` changes one value in `config.yaml`.
fn write_app(root: &Path, i: usize, revision: usize) {
    let dir = root.join(app_dir(i));
    std::fs::create_dir_all(&dir).unwrap();
    let app = format!("app-{i:04}");
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    let labels = format!(
        "app.kubernetes.io/name: {app}\n    app.kubernetes.io/part-of: shop\n    team: team-{}",
        i % 40
    );
    let deployment = |name: &str, replicas: usize, port: usize, image: &str| {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    {labels}
  annotations:
    argocd.argoproj.io/sync-wave: "1"
spec:
  replicas: {replicas}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      app.kubernetes.io/name: {name}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {name}
    spec:
      serviceAccountName: {app}
      containers:
        - name: main
          image: registry.example.com/shop/{image}:1.{}.{}
          args: ["--port={port}", "--log-format=json"]
          ports:
            - {{name: http, containerPort: {port}}}
          env:
            - {{name: APP, value: {app}}}
            - name: CONFIG
              valueFrom: {{configMapKeyRef: {{name: {app}-settings, key: mode}}}}
          envFrom:
            - configMapRef: {{name: {app}-env}}
          resources:
            requests: {{cpu: 100m, memory: 128Mi}}
            limits: {{memory: 256Mi}}
          readinessProbe:
            httpGet: {{path: /healthz, port: http}}
            periodSeconds: 10
"#,
            i % 17,
            i % 5
        )
    };
    write(
        "deployment.yaml",
        format!(
            "{}---\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: {app}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {app}}}\n  minReplicas: 2\n  maxReplicas: {}\n  metrics:\n    - type: Resource\n      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 70}}}}\n",
            deployment(&app, 2, 8080, &app),
            4 + i % 7
        ),
    );
    write(
        "workers.yaml",
        (0..3)
            .map(|w| deployment(&format!("{app}-worker-{w}"), 1, 9000 + w, "worker"))
            .collect::<Vec<_>>()
            .join("---\n"),
    );
    write(
        "service.yaml",
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {app}\n  labels:\n    {labels}\nspec:\n  selector: {{app.kubernetes.io/name: {app}}}\n  ports:\n    - {{name: http, port: 80, targetPort: http}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {app}-headless\nspec:\n  clusterIP: None\n  selector: {{app.kubernetes.io/name: {app}}}\n  ports:\n    - {{name: http, port: 8080}}\n"
        ),
    );
    let mut config = String::new();
    for (c, name) in ["settings", "env", "features", "limits", "routes", "logging"]
        .iter()
        .enumerate()
    {
        let mode = if c == 0 && revision > 0 {
            format!("fast-{revision}")
        } else {
            "fast".to_owned()
        };
        let _ = write!(
            config,
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {app}-{name}\n  labels:\n    {labels}\ndata:\n  mode: {mode}\n  region: eu-west-{}\n  replicas: \"{}\"\n  greeting: |\n    Hello from {app}.\n    This is the {name} configuration.\n",
            c % 3,
            i % 9
        );
    }
    write("config.yaml", config);
    write(
        "rbac.yaml",
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {app}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {app}-reader\nrules:\n  - apiGroups: [\"\"]\n    resources: [configmaps, secrets]\n    verbs: [get, list, watch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {app}-reader\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {app}-reader}}\nsubjects:\n  - {{kind: ServiceAccount, name: {app}}}\n"
        ),
    );
    write(
        "policy.yaml",
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {app}\nspec:\n  podSelector: {{matchLabels: {{app.kubernetes.io/name: {app}}}}}\n  ingress:\n    - from: [{{namespaceSelector: {{matchLabels: {{team: team-{}}}}}}}]\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: {app}\nspec:\n  minAvailable: 1\n  selector: {{matchLabels: {{app.kubernetes.io/name: {app}}}}}\n",
            i % 40
        ),
    );
    write(
        "cronjob.yaml",
        format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: {app}-cleanup\nspec:\n  schedule: \"{} 3 * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: OnFailure\n          containers:\n            - {{name: cleanup, image: registry.example.com/shop/cleanup:2.1.0, args: [--older-than=7d]}}\n",
            i % 60
        ),
    );
    write(
        "ingress.json",
        format!(
            r#"{{
  "apiVersion": "networking.k8s.io/v1",
  "kind": "Ingress",
  "metadata": {{"name": "{app}", "annotations": {{"argocd.argoproj.io/sync-wave": "2"}}}},
  "spec": {{
    "rules": [{{"host": "{app}.shop.example.com", "http": {{"paths": [
      {{"path": "/", "pathType": "Prefix", "backend": {{"service": {{"name": "{app}", "port": {{"name": "http"}}}}}}}}
    ]}}}}]
  }}
}}
"#
        ),
    );
    write(
        "README.md",
        format!("# {app}\n\nThe {app} service of the shop.\n"),
    );
}

fn write_kustomization(root: &Path, i: usize) {
    let resources: Vec<&str> = APP_FILES
        .iter()
        .copied()
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".json"))
        .collect();
    std::fs::write(
        root.join(app_dir(i)).join("kustomization.yaml"),
        format!("resources: [{}]\n", resources.join(", ")),
    )
    .unwrap();
}

/// Runs `git` isolated from the machine's configuration.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@fleet.test")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@fleet.test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// Reporting.

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

#[derive(Default)]
struct Report {
    rows: Vec<[String; 4]>,
    notes: Vec<String>,
}

impl Report {
    fn row(&mut self, what: &str, took: Duration, goal: Option<Duration>, detail: String) {
        let goal = goal.map_or(String::new(), |g| {
            format!("goal < {}: {}", human(g), verdict(took < g))
        });
        self.row_text(what, human(took), goal, detail);
    }

    fn row_text(&mut self, what: &str, value: String, goal: String, detail: String) {
        self.rows.push([what.to_owned(), value, goal, detail]);
    }

    fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    fn print(&self) {
        let width = |c: usize| self.rows.iter().map(|r| r[c].chars().count()).max();
        let (w0, w1, w2) = (
            width(0).unwrap_or(0),
            width(1).unwrap_or(0),
            width(2).unwrap_or(0),
        );
        println!();
        println!("render bench (hub/benches/render.rs)");
        for row in &self.rows {
            println!(
                "  {:<w0$}  {:>w1$}  {:<w2$}  {}",
                row[0], row[1], row[2], row[3]
            );
        }
        for note in &self.notes {
            println!("  - {note}");
        }
    }
}

fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}
