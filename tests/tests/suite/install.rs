//! Installing Flotilla for real (issue 13): the charts pass `helm lint` and refuse
//! hostile values; what `helm template` renders of both charts, the kustomize base
//! of the hub and the manifest `flotilla cluster add` prints are applied to a local
//! cluster with server-side apply and every object is accepted, the pods included
//! (their namespaces enforce the restricted Pod Security profile); the printed
//! `helm install` runs as printed; the cleanup `cluster rm` prints leaves nothing of
//! the agent behind; `deploy/build-images` refuses bad arguments.
//!
//! With `FLOTILLA_IMAGE_TESTS=1` (and podman, which `FLOTILLA_IMAGE_TESTS=1
//! tests/install-prereqs` installs), the images too: built twice to the same IDs,
//! then the hub and an agent run as containers beside a local cluster, the agent
//! with exactly what a pod of the printed manifest gets (its ServiceAccount's
//! token, bound by the manifest's own RBAC); an app syncs and reports Healthy, and
//! after the agent container restarts nothing is applied again and no hook runs
//! again. Building the images takes minutes on two cores, hence the flag.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_tests::{LocalCluster, fleet};
use serde_json::{Value, json};

/// The tests that install the agent's cluster-wide objects (one set per cluster,
/// by design) take turns.
static AGENT_INSTALL: Mutex<()> = Mutex::new(());

const VERSION: &str = flotilla_common::VERSION;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn tool(name: &str) -> PathBuf {
    flotilla_tests::tool(name).unwrap()
}

/// The workspace's debug binary `name`, next to the running test's own folder.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is missing; build it with `cargo build -p flotilla-hub`",
        path.display()
    );
    path
}

/// The cluster these tests install on: the last of the fleet (the least-privilege
/// test installs RBAC of the same names on the first).
fn cluster() -> LocalCluster {
    fleet().expect("the local fleet is running").pop().unwrap()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{:x}-{:x}", std::process::id(), nanos % 0xfffff)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command` with `input` on stdin.
fn output(command: &mut Command, input: Option<&str>) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(input.unwrap_or_default().as_bytes())
        .unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// Runs `command` to success and returns its stdout; panics with both outputs.
fn run(command: &mut Command, input: Option<&str>) -> String {
    let out = output(command, input);
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn kubectl(cluster: &LocalCluster) -> Command {
    let mut command = Command::new(tool("kubectl"));
    command.arg("--kubeconfig").arg(cluster.kubeconfig_path());
    command
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Server-side apply, for real; every document must come back applied.
fn apply(cluster: &LocalCluster, yaml: &str) {
    let count = documents(yaml).len();
    assert!(count > 0, "nothing to apply");
    let out = run(
        kubectl(cluster).args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "flotilla-install-test",
            "-f",
            "-",
        ]),
        Some(yaml),
    );
    let applied = out
        .lines()
        .filter(|l| l.ends_with(" serverside-applied"))
        .count();
    assert_eq!(applied, count, "not every object was applied:\n{out}");
}

/// A namespace of the test's own, deleted when the test ends, pass or fail.
struct Scratch {
    cluster: LocalCluster,
    name: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = output(
            kubectl(&self.cluster).args([
                "delete",
                "namespace",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ]),
            None,
        );
    }
}

/// A namespace that enforces the restricted Pod Security profile.
fn create_namespace(cluster: &LocalCluster, name: &str) -> Scratch {
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    apply(cluster, &namespace.to_string());
    Scratch {
        cluster: cluster.clone(),
        name: name.to_owned(),
    }
}

/// Waits until `kubectl get ARGS -o name` lists something (or, with `gone`,
/// nothing), and returns what it listed.
fn wait_listed(cluster: &LocalCluster, args: &[&str], gone: bool, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let out = run(kubectl(cluster).args(args).args(["-o", "name"]), None);
        if out.trim().is_empty() == gone {
            return out;
        }
        assert!(
            start.elapsed() < timeout,
            "kubectl get {args:?} still lists {out:?} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The pods of a controller were admitted, so they pass the namespace's Pod Security
/// profile (admission refuses a pod that does not; kwok then runs it).
fn wait_for_pods(cluster: &LocalCluster, namespace: &str, selector: &str) {
    wait_listed(
        cluster,
        &["get", "pods", "-n", namespace, "-l", selector],
        false,
        Duration::from_secs(60),
    );
}

fn chart(name: &str) -> PathBuf {
    repo().join("deploy/charts").join(name)
}

/// Values that make the agent chart render: a real-looking fingerprint and token.
fn agent_values(namespaces: &[&str]) -> Value {
    json!({
        "cluster": "install-test",
        "hub": {"address": "hub.example:7443", "caFingerprint": "ab".repeat(32)},
        "token": "flt_0123456789abcdef",
        "namespaces": namespaces,
    })
}

/// `helm template` with `values` given as a file (JSON is YAML).
fn helm_template(chart: &Path, namespace: &str, values: &Value) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.json");
    std::fs::write(&file, values.to_string()).unwrap();
    output(
        Command::new(tool("helm"))
            .args(["template", "flotilla", "--namespace", namespace, "--values"])
            .arg(&file)
            .arg(chart),
        None,
    )
}

/// Every value a user is likely to set on the hub chart.
fn hub_values() -> Value {
    json!({
        "image": {"repository": "registry.example/team/flotilla", "tag": VERSION},
        "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}},
        "persistence": {"size": "2Gi", "storageClass": "fast"},
        "service": {"api": {"type": "NodePort"}, "agent": {"type": "LoadBalancer",
            "annotations": {"example.com/udp": "true"}}},
        "agentAddress": "hub.example:7443",
        "tls": {"extraNames": ["hub.example"]},
        "adminPassword": {"secretName": "flotilla-admin"},
        "rbac": {"policyCsv": "p, role:dev, applications, get, */*, allow\ng, alice, role:dev\n",
            "policyDefault": "role:readonly"},
        "webhook": {"secretName": "flotilla-webhook"},
        "extraEnv": [{"name": "RUST_LOG", "value": "info"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "flotilla",
            "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [
                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}}]}},
    })
}

#[test]
fn both_charts_pass_helm_lint_and_name_the_workspace_version() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("agent.json");
    std::fs::write(&values, agent_values(&["team-a"]).to_string()).unwrap();
    run(
        Command::new(tool("helm"))
            .args(["lint", "--strict"])
            .arg(chart("flotilla")),
        None,
    );
    let hub = dir.path().join("hub.json");
    std::fs::write(&hub, hub_values().to_string()).unwrap();
    run(
        Command::new(tool("helm"))
            .args(["lint", "--strict", "--values"])
            .arg(&hub)
            .arg(chart("flotilla")),
        None,
    );
    run(
        Command::new(tool("helm"))
            .args(["lint", "--strict", "--values"])
            .arg(&values)
            .arg(chart("flotilla-agent")),
        None,
    );
    for name in ["flotilla", "flotilla-agent"] {
        let meta: Value = serde_saphyr::from_str(
            &std::fs::read_to_string(chart(name).join("Chart.yaml")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["version"], VERSION, "{name}");
        assert_eq!(meta["appVersion"], VERSION, "{name}");
    }
    let base = run(
        Command::new(tool("kustomize"))
            .arg("build")
            .arg(repo().join("deploy/hub")),
        None,
    );
    let statefulset = documents(&base)
        .into_iter()
        .find(|d| d["kind"] == "StatefulSet")
        .unwrap();
    assert_eq!(
        statefulset["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("localhost/flotilla:{VERSION}")
    );
}

#[test]
fn the_charts_refuse_hostile_values_with_a_clear_error() {
    let bad: [(&str, Value, &str); 7] = [
        (
            "cluster",
            json!("east\nevil: true"),
            "cluster must be a DNS label",
        ),
        ("cluster", json!("--set=x"), "cluster must be a DNS label"),
        ("namespaces", json!(["team-a", "a b"]), "is not a DNS label"),
        ("namespaces", json!("team-a"), "namespaces must be a list"),
        (
            "hub",
            json!({"address": "hub:1 --x", "caFingerprint": "ab".repeat(32)}),
            "hub.address must be HOST:PORT",
        ),
        (
            "hub",
            json!({"address": "hub:1", "caFingerprint": "zz"}),
            "hub.caFingerprint",
        ),
        ("token", json!("t\"ok"), "token must be"),
    ];
    for (key, value, message) in bad {
        let mut values = agent_values(&[]);
        values[key] = value.clone();
        let out = helm_template(&chart("flotilla-agent"), "flotilla-system", &values);
        assert!(!out.status.success(), "{key}={value} rendered");
        assert!(
            text(&out.stderr).contains(message),
            "{key}={value}: {}",
            text(&out.stderr)
        );
    }
    for (values, message) in [
        (
            json!({"agentAddress": "x:1\nevil: true"}),
            "agentAddress must be HOST:PORT",
        ),
        (
            json!({"rbac": {"key": "../../etc/passwd"}}),
            "rbac.key must be a plain file name",
        ),
        (json!({"tls": {"extraNames": ["a,b"]}}), "is not a DNS name"),
        (
            json!({"service": {"api": {"type": "ExternalName", "port": 1}}}),
            "service.api.type",
        ),
    ] {
        let out = helm_template(&chart("flotilla"), "flotilla", &values);
        assert!(!out.status.success(), "{values} rendered");
        assert!(
            text(&out.stderr).contains(message),
            "{values}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn the_hub_chart_and_the_kustomize_base_are_accepted_by_a_real_apiserver() {
    let cluster = cluster();
    // The chart, with every value a user is likely to set.
    let namespace = unique("flotilla-hub");
    let scratch = create_namespace(&cluster, &namespace);
    let rendered = helm_template(&chart("flotilla"), &namespace, &hub_values());
    assert!(rendered.status.success(), "{}", text(&rendered.stderr));
    let rendered = text(&rendered.stdout);
    let kinds: Vec<String> = documents(&rendered)
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    for kind in ["ServiceAccount", "ConfigMap", "Service", "StatefulSet"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    // No cluster rights for the hub.
    assert!(!kinds.iter().any(|k| k.contains("Role")), "{kinds:?}");
    apply(&cluster, &rendered);
    wait_for_pods(&cluster, &namespace, "app.kubernetes.io/name=flotilla");
    let services = run(
        kubectl(&cluster).args(["get", "services", "-n", &namespace, "-o", "json"]),
        None,
    );
    let services: Value = serde_json::from_str(&services).unwrap();
    let protocols: Vec<(String, String)> = services["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["spec"]["type"].as_str().unwrap().to_owned(),
                s["spec"]["ports"][0]["protocol"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    assert!(
        protocols.contains(&("NodePort".to_owned(), "TCP".to_owned())),
        "{protocols:?}"
    );
    assert!(
        protocols.contains(&("LoadBalancer".to_owned(), "UDP".to_owned())),
        "{protocols:?}"
    );
    drop(scratch);

    // The kustomize base, as `kubectl apply --server-side -k deploy/hub` applies it.
    let base = run(
        Command::new(tool("kustomize"))
            .arg("build")
            .arg(repo().join("deploy/hub")),
        None,
    );
    apply(&cluster, &base);
    wait_for_pods(&cluster, "flotilla", "app.kubernetes.io/name=flotilla");
    run(
        kubectl(&cluster).args(["delete", "-f", "-", "--ignore-not-found", "--wait=false"]),
        Some(&base),
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn helm(cluster: &LocalCluster) -> Command {
    let mut command = Command::new(tool("helm"));
    command.arg("--kubeconfig").arg(cluster.kubeconfig_path());
    command
}

#[test]
fn helm_upgrade_to_a_new_chart_version_keeps_the_hubs_data_claim() {
    let cluster = cluster();
    let namespace = unique("flotilla-upgrade");
    let _scratch = create_namespace(&cluster, &namespace);
    run(
        helm(&cluster)
            .args(["install", "flotilla", "--namespace", &namespace])
            .arg(chart("flotilla")),
        None,
    );
    let claim = |what: &str| -> Value {
        wait_listed(
            &cluster,
            &["get", "pvc", "data-flotilla-0", "-n", &namespace],
            false,
            Duration::from_secs(60),
        );
        let claim: Value = serde_json::from_str(&run(
            kubectl(&cluster).args([
                "get",
                "pvc",
                "data-flotilla-0",
                "-n",
                &namespace,
                "-o",
                "json",
            ]),
            None,
        ))
        .unwrap();
        assert!(
            claim["metadata"]["deletionTimestamp"].is_null(),
            "{what}: {claim}"
        );
        claim
    };
    let before = claim("installed");
    // The next release of the chart: same chart, a new version and image tag.
    let next = tempfile::tempdir().unwrap();
    let chart_dir = next.path().join("flotilla");
    copy_tree(&chart("flotilla"), &chart_dir);
    let meta = std::fs::read_to_string(chart_dir.join("Chart.yaml"))
        .unwrap()
        .replace(&format!("version: {VERSION}"), "version: 99.0.0")
        .replace(
            &format!("appVersion: \"{VERSION}\""),
            "appVersion: \"99.0.0\"",
        );
    assert!(
        meta.contains("version: 99.0.0") && meta.contains("appVersion: \"99.0.0\""),
        "{meta}"
    );
    std::fs::write(chart_dir.join("Chart.yaml"), meta).unwrap();
    run(
        helm(&cluster)
            .args(["upgrade", "flotilla", "--namespace", &namespace])
            .arg(&chart_dir),
        None,
    );
    let image = run(
        kubectl(&cluster).args([
            "get",
            "statefulset",
            "flotilla",
            "-n",
            &namespace,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ]),
        None,
    );
    assert_eq!(image, "localhost/flotilla:99.0.0");
    // The claim that holds the hub's sled data, CA and signing key is the same one.
    let after = claim("upgraded");
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    run(
        helm(&cluster).args(["uninstall", "flotilla", "--namespace", &namespace]),
        None,
    );
    // A StatefulSet's claims outlive an uninstall too.
    let kept = claim("uninstalled");
    assert_eq!(kept["metadata"]["uid"], before["metadata"]["uid"]);
}

/// The commands `flotilla cluster rm` prints, run against `cluster`; the helm one
/// only when `helm` is set.
fn run_cleanup(cluster: &LocalCluster, printed: &str, helm: bool) {
    let commands: Vec<Vec<&str>> = printed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(commands.len(), 3, "{printed}");
    // helm first: it removes what it installed before the namespace goes.
    let mut ordered: Vec<&Vec<&str>> = commands.iter().filter(|c| c[0] == "helm").collect();
    ordered.extend(commands.iter().filter(|c| c[0] == "kubectl"));
    for words in ordered {
        match words[0] {
            "helm" if helm => {
                run(
                    Command::new(tool("helm"))
                        .arg("--kubeconfig")
                        .arg(cluster.kubeconfig_path())
                        .args(&words[1..]),
                    None,
                );
            }
            "helm" => {}
            "kubectl" => {
                run(kubectl(cluster).args(&words[1..]), None);
            }
            other => panic!("unexpected command {other} in {printed}"),
        }
    }
    let left = run(
        kubectl(cluster).args([
            "get",
            "clusterrole,clusterrolebinding,rolebinding",
            "--all-namespaces",
            "--selector",
            "app.kubernetes.io/name=flotilla-agent",
            "-o",
            "name",
        ]),
        None,
    );
    assert_eq!(left.trim(), "", "left behind: {left}");
    // The namespace goes with its claim and Secrets; the next install needs it gone.
    wait_listed(
        cluster,
        &[
            "get",
            "namespaces",
            "--field-selector",
            "metadata.name=flotilla-system",
        ],
        true,
        Duration::from_secs(90),
    );
}

/// `kubectl auth can-i` as the agent's ServiceAccount.
fn agent_can(cluster: &LocalCluster, args: &[&str]) -> bool {
    let out = output(
        kubectl(cluster).args(["auth", "can-i"]).args(args).args([
            "--as",
            "system:serviceaccount:flotilla-system:flotilla-agent",
        ]),
        None,
    );
    text(&out.stdout).trim() == "yes"
}

#[test]
fn the_printed_manifest_and_helm_install_work_as_printed_and_cluster_rm_cleans_up() {
    let _turn = AGENT_INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = cluster();
    let data = tempfile::tempdir().unwrap();
    let flotilla = |args: &[&str]| {
        let mut command = Command::new(binary("flotilla"));
        command
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .env_remove("FLOTILLA_SERVER");
        run(&mut command, None)
    };
    // A stale install from an interrupted run would make this one prove nothing.
    run_cleanup(
        &cluster,
        &flotilla_hub::cluster::uninstall_commands(),
        false,
    );

    // The manifest, broad rights.
    let manifest = flotilla(&[
        "cluster",
        "add",
        "install-broad",
        "--hub-address",
        "hub.example:7443",
        "--storage-class",
        "flotilla-test-class",
    ]);
    assert!(
        manifest.contains(&format!("image: localhost/flotilla-agent:{VERSION}")),
        "{manifest}"
    );
    apply(&cluster, &manifest);
    wait_for_pods(
        &cluster,
        "flotilla-system",
        "app.kubernetes.io/name=flotilla-agent",
    );
    run(
        kubectl(&cluster).args([
            "get",
            "pvc",
            "flotilla-agent-state",
            "-n",
            "flotilla-system",
        ]),
        None,
    );
    let class = run(
        kubectl(&cluster).args([
            "get",
            "pvc",
            "flotilla-agent-state",
            "-n",
            "flotilla-system",
            "-o",
            "jsonpath={.spec.storageClassName}",
        ]),
        None,
    );
    assert_eq!(class, "flotilla-test-class");
    assert!(agent_can(
        &cluster,
        &["create", "configmaps", "-n", "default"]
    ));
    assert!(agent_can(&cluster, &["create", "clusterroles"]));
    assert!(agent_can(&cluster, &["get", "/apis/apps/v1"]));
    // Outside the resource API it reads discovery only.
    assert!(!agent_can(&cluster, &["get", "/metrics"]));
    assert!(!agent_can(&cluster, &["get", "/logs/"]));
    let printed = flotilla(&["cluster", "rm", "install-broad"]);
    run_cleanup(&cluster, &printed, false);

    // `--helm`, least privilege: the printed command piped to a shell at the top of a
    // checkout, as the README says.
    let (team_a, team_b) = (unique("team-a"), unique("team-b"));
    let _scratch = [
        create_namespace(&cluster, &team_a),
        create_namespace(&cluster, &team_b),
    ];
    let command = flotilla(&[
        "cluster",
        "add",
        "install-least",
        "--hub-address",
        "hub.example:7443",
        "--namespaces",
        &format!("{team_a},{team_b}"),
        "--helm",
    ]);
    assert!(
        command.contains("helm install flotilla-agent deploy/charts/flotilla-agent"),
        "{command}"
    );
    let helm_dir = tool("helm").parent().unwrap().to_owned();
    let path = format!("{}:/usr/bin:/bin", helm_dir.display());
    run(
        Command::new("sh")
            .current_dir(repo())
            .env("PATH", path)
            .env("KUBECONFIG", cluster.kubeconfig_path())
            .env("HOME", data.path()),
        Some(&command),
    );
    wait_for_pods(
        &cluster,
        "flotilla-system",
        "app.kubernetes.io/name=flotilla-agent",
    );
    let secret = run(
        kubectl(&cluster).args([
            "get",
            "secret",
            "flotilla-agent-bootstrap",
            "-n",
            "flotilla-system",
            "-o",
            "jsonpath={.data.FLOTILLA_NAMESPACES}",
        ]),
        None,
    );
    assert!(!secret.is_empty());
    // The namespace the printed command made enforces the restricted profile.
    let enforced = run(
        kubectl(&cluster).args([
            "get",
            "namespace",
            "flotilla-system",
            "-o",
            "jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}",
        ]),
        None,
    );
    assert_eq!(enforced, "restricted");
    assert!(agent_can(
        &cluster,
        &["create", "configmaps", "-n", &team_a]
    ));
    assert!(agent_can(
        &cluster,
        &["create", "deployments.apps", "-n", &team_b]
    ));
    assert!(!agent_can(
        &cluster,
        &["create", "configmaps", "-n", "default"]
    ));
    assert!(!agent_can(&cluster, &["create", "clusterroles"]));
    assert!(agent_can(
        &cluster,
        &["get", "secrets", "-n", "flotilla-system"]
    ));
    let printed = flotilla(&["cluster", "rm", "install-least"]);
    run_cleanup(&cluster, &printed, true);
}

#[test]
fn build_images_refuses_bad_arguments_before_building_anything() {
    let script = repo().join("deploy/build-images");
    for (args, message) in [
        (&["--repository", "Registry;rm -rf /"][..], "--repository"),
        (&["--repository", "-x"][..], "--repository"),
        (&["--no-such-flag"][..], "unknown argument"),
        (&["--binaries"][..], "--binaries needs a value"),
    ] {
        let out = output(
            Command::new(&script)
                .args(args)
                .env("FLOTILLA_IMAGE_CACHE", "/nonexistent/never"),
            None,
        );
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(message),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let help = run(Command::new(&script).arg("--help"), None);
    assert!(help.contains("--repository"), "{help}");
}

mod images;
