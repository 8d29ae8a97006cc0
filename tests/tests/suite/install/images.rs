//! The images, with `FLOTILLA_IMAGE_TESTS=1`: `deploy/build-images` run three times
//! (cold or warm, then cached, then with every image removed) gives the same image
//! IDs; the images are non-root, shell-less and small; and the hub and an agent run
//! from them as containers beside a local cluster.

use std::collections::BTreeMap;

use super::*;

mod pod;

/// The user the images run as.
const IMAGE_USER: u32 = 65532;

fn enabled() -> bool {
    std::env::var("FLOTILLA_IMAGE_TESTS").as_deref() == Ok("1")
}

fn podman() -> Command {
    let mut command = Command::new("podman");
    command.env("CONTAINERS_CONF", repo().join("deploy/containers.conf"));
    command
}

struct Build {
    /// Image reference to (ID, size in MB), from the script's last lines.
    images: BTreeMap<String, (String, f64)>,
    log: String,
    took: Duration,
}

fn build_images() -> Build {
    let start = Instant::now();
    let out = output(&mut Command::new(repo().join("deploy/build-images")), None);
    let took = start.elapsed();
    let log = text(&out.stderr);
    eprintln!("{log}");
    assert!(out.status.success(), "deploy/build-images failed:\n{log}");
    let images = text(&out.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 3, "{line}");
            let size = fields[2].trim_end_matches(" MB").parse().unwrap();
            (fields[0].to_owned(), (fields[1].to_owned(), size))
        })
        .collect();
    Build { images, log, took }
}

fn hub_image() -> String {
    format!("localhost/flotilla:{VERSION}")
}

fn agent_image() -> String {
    format!("localhost/flotilla-agent:{VERSION}")
}

fn chown(path: &Path) {
    std::os::unix::fs::chown(path, Some(IMAGE_USER), Some(IMAGE_USER)).unwrap();
}

fn chown_tree(path: &Path) {
    chown(path);
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path());
        }
    }
}

fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn container_running(name: &str) -> bool {
    run(
        podman().args(["inspect", "--format", "{{.State.Running}}", name]),
        None,
    )
    .trim()
        == "true"
}

fn logs(name: &str) -> String {
    let out = output(podman().args(["logs", name]), None);
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// Ignored unless asked for, so that a run without it reports it as not run
/// rather than passed: `FLOTILLA_IMAGE_TESTS=1 tests/run -- --ignored install::images`.
#[test]
#[ignore = "builds the images with podman: FLOTILLA_IMAGE_TESTS=1 tests/run -- --ignored install::images"]
fn images_build_reproducibly_and_run_the_hub_and_an_agent() {
    assert!(
        enabled(),
        "set FLOTILLA_IMAGE_TESTS=1 (tests/install-prereqs then installs podman and runc)"
    );
    let first = build_images();
    let second = build_images();
    for name in ["agent", "hub"] {
        assert!(
            second.log.contains(&format!("base of {name}: cached")),
            "{}",
            second.log
        );
    }
    assert_eq!(
        first.images, second.images,
        "a cached build changed an image"
    );
    // Every image removed, bases included: rebuilt from the same inputs, the same IDs.
    let mut remove = vec![hub_image(), agent_image()];
    remove.extend(
        second
            .log
            .lines()
            .filter_map(|l| l.split_once(": cached (")?.1.strip_suffix(')'))
            .map(str::to_owned),
    );
    assert_eq!(remove.len(), 4, "{}", second.log);
    run(podman().args(["rmi", "--force"]).args(&remove), None);
    let third = build_images();
    assert!(
        third.log.contains("base of agent: building"),
        "{}",
        third.log
    );
    assert_eq!(
        first.images, third.images,
        "the images are not reproducible"
    );
    eprintln!(
        "build-images: first {:?}, cached {:?}, without any image {:?}; {:?}",
        first.took, second.took, third.took, first.images
    );
    let (_, agent_mb) = first.images[&agent_image()];
    assert!(agent_mb < 40.0, "the agent image is {agent_mb} MB");

    for image in [hub_image(), agent_image()] {
        let user = run(
            podman().args(["image", "inspect", "--format", "{{.Config.User}}", &image]),
            None,
        );
        assert_eq!(user.trim(), format!("{IMAGE_USER}:{IMAGE_USER}"), "{image}");
        let version = run(
            podman().args([
                "run",
                "--rm",
                "--read-only",
                "--network",
                "none",
                &image,
                "--version",
            ]),
            None,
        );
        assert!(version.contains(VERSION), "{image}: {version}");
        // Nothing but what the programs need: no shell to run.
        let shell = output(
            podman().args([
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "/bin/sh",
                &image,
                "-c",
                "true",
            ]),
            None,
        );
        assert!(!shell.status.success(), "{image} has a shell");
    }
    let tools = run(
        podman().args([
            "run",
            "--rm",
            "--read-only",
            "--network",
            "none",
            "--entrypoint",
            "/usr/local/bin/helm",
            &hub_image(),
            "version",
            "--short",
        ]),
        None,
    );
    assert!(tools.starts_with('v'), "{tools}");

    hub_and_agent_containers();
}

/// Reads `what: VALUE` from `container`'s log, waiting for the hub to print it.
fn logged(container: &str, what: &str) -> String {
    let start = Instant::now();
    loop {
        let log = logs(container);
        if let Some(value) = log
            .lines()
            .find_map(|line| line.split_once(what).map(|(_, v)| v.trim().to_owned()))
        {
            return value;
        }
        assert!(
            container_running(container) && start.elapsed() < Duration::from_secs(60),
            "the hub never printed {what:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The README's install, step by step, with the images: the hub installed with
/// `helm install` and its pod run from the hub image; `flotilla login` pinning the
/// CA fingerprint the hub printed; `flotilla cluster add` applied as printed and its
/// agent pod run from the agent image. An app syncs and reports Healthy. The agent's
/// pod is deleted and made anew: nothing is applied again and no hook runs again.
/// Then `helm upgrade` to a new chart version: the StatefulSet's new pod, on the
/// same claim, keeps the CA, the signing key and every cluster, and the agent comes
/// back on its certificate without registering again.
fn hub_and_agent_containers() {
    let _turn = AGENT_INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = cluster();
    super::run_cleanup(
        &cluster,
        &flotilla_hub::cluster::uninstall_commands(),
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let id = unique("it");
    let kubelet = pod::Kubelet::new(&cluster);

    // A fleet repository with one app: a ConfigMap and a PreSync hook that is
    // deleted and made anew each time it runs, so a second run shows as a new uid.
    let namespace = unique("install-app");
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(fleet.join("app")).unwrap();
    let write_app = |greeting: &str| {
        std::fs::write(
            fleet.join("app/objects.yaml"),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\ndata:\n  greeting: {greeting}\n\
                 ---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-hook\n  annotations:\n    \
                 argocd.argoproj.io/hook: PreSync\n    argocd.argoproj.io/hook-delete-policy: BeforeHookCreation\n\
                 data:\n  ran: \"yes\"\n"
            ),
        )
        .unwrap();
    };
    let git = |args: &[&str]| {
        run(
            Command::new("git")
                .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
                // Owned by the hub's user once the hub serves it.
                .args(["-c", "safe.directory=*"])
                .args(args)
                .current_dir(&fleet),
            None,
        )
    };
    write_app("hello");
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "an app"]);
    // git serves a repository only to its owner.
    chown_tree(&fleet);
    // What the hub would reach over the network, bound into its container.
    let fleet_mount = [pod::ExtraMount {
        host: &fleet,
        container: "/srv/fleet",
    }];

    // README: a namespace that enforces the restricted profile, then `helm install`.
    let hub_namespace = unique("flotilla");
    run(
        kubectl(&cluster).args(["create", "namespace", &hub_namespace]),
        None,
    );
    let _hub_scratch = Scratch {
        cluster: cluster.clone(),
        name: hub_namespace.clone(),
    };
    run(
        kubectl(&cluster).args([
            "label",
            "namespace",
            &hub_namespace,
            "pod-security.kubernetes.io/enforce=restricted",
        ]),
        None,
    );
    // The host network is shared, so the hub listens on free loopback ports.
    let (api, quic) = (free_port(), free_port());
    let values = dir.path().join("hub-values.json");
    std::fs::write(
        &values,
        json!({
            "agentAddress": format!("127.0.0.1:{quic}"),
            "extraEnv": [
                {"name": "FLOTILLA_LISTEN", "value": format!("127.0.0.1:{api}")},
                {"name": "FLOTILLA_AGENT_LISTEN", "value": format!("127.0.0.1:{quic}")},
                {"name": "FLOTILLA_KEEP_ALIVE_SECS", "value": "1"},
                {"name": "FLOTILLA_IDLE_TIMEOUT_SECS", "value": "30"},
            ],
        })
        .to_string(),
    )
    .unwrap();
    let helm_hub = |verb: &str, chart_dir: &Path| {
        run(
            helm(&cluster)
                .args([verb, "flotilla", "--namespace", &hub_namespace, "--values"])
                .arg(&values)
                .arg(chart_dir),
            None,
        )
    };
    kubelet.provision(&hub_namespace, "data-flotilla-0");
    helm_hub("install", &chart("flotilla"));
    let hub_selector = "app.kubernetes.io/name=flotilla,app.kubernetes.io/instance=flotilla";
    let hub_pod = kubelet.wait_for_pod(&hub_namespace, hub_selector, None);
    let current_hub = std::cell::RefCell::new(kubelet.start(
        &hub_pod,
        &format!("flotilla-{id}-hub"),
        &fleet_mount,
    ));
    let hub = current_hub.borrow().clone();

    // README: the first admin password and the CA fingerprint, from the hub's log.
    let password = logged(&hub, "admin password (shown once):");
    let fingerprint = logged(
        &hub,
        "hub CA fingerprint (for flotilla login --ca-fingerprint):",
    );
    let server = format!("https://127.0.0.1:{api}");
    let cli_home = dir.path().join("cli");
    let cli = |args: &[&str]| {
        let mut command = Command::new(binary("flotilla"));
        command
            .args(args)
            .env("XDG_CONFIG_HOME", &cli_home)
            .env("FLOTILLA_PASSWORD", &password)
            .env_remove("FLOTILLA_DATA_DIR");
        command
    };
    let start = Instant::now();
    while !output(
        &mut cli(&[
            "login",
            "--server",
            &server,
            "--username",
            "admin",
            "--ca-fingerprint",
            &fingerprint,
        ]),
        None,
    )
    .status
    .success()
    {
        assert!(
            container_running(&hub) && start.elapsed() < Duration::from_secs(60),
            "the hub never answered:\n{}",
            logs(&hub)
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // README: `flotilla cluster add NAME`, applied as printed; its pod runs.
    let name = format!("install-{}", std::process::id());
    let manifest = run(&mut cli(&["cluster", "add", &name]), None);
    apply(&cluster, &manifest);
    let objects = documents(&manifest);
    let secret = objects.iter().find(|d| d["kind"] == "Secret").unwrap();
    assert_eq!(
        secret["stringData"]["FLOTILLA_CA_FINGERPRINT"],
        fingerprint.as_str()
    );
    let agent_selector = "app.kubernetes.io/name=flotilla-agent";
    let agent_pod = kubelet.wait_for_pod("flotilla-system", agent_selector, None);
    assert_eq!(
        agent_pod["spec"]["containers"][0]["image"],
        agent_image(),
        "the printed manifest names the image build-images tags"
    );
    let agent =
        std::cell::RefCell::new(kubelet.start(&agent_pod, &format!("flotilla-{id}-agent"), &[]));
    let cluster_view = || -> Value {
        let list: Value =
            serde_json::from_str(&run(&mut cli(&["cluster", "list", "-o", "json"]), None)).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name.as_str())
            .cloned()
            .unwrap_or(Value::Null)
    };
    let wait = |what: &str, ready: &dyn Fn(&Value) -> bool| -> Value {
        let start = Instant::now();
        loop {
            let view = cluster_view();
            if ready(&view) {
                return view;
            }
            let agent = agent.borrow();
            assert!(
                container_running(&agent),
                "the agent container exited:\n{}",
                logs(&agent)
            );
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "timed out waiting for {what}: {view:#}\nhub:\n{}\nagent:\n{}",
                logs(&current_hub.borrow()),
                logs(&agent)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    wait("the agent registered and connected", &|c| {
        c["link"]["state"] == "Connected"
    });
    let identity = || -> Value {
        let secret: Value = serde_json::from_str(&run(
            kubectl(&cluster).args([
                "get",
                "secret",
                "flotilla-agent-identity",
                "-n",
                "flotilla-system",
                "-o",
                "json",
            ]),
            None,
        ))
        .unwrap();
        secret["metadata"].clone()
    };
    let registered = identity();

    // An app for the cluster, synced automatically.
    let scratch = create_namespace(&cluster, &namespace);
    let app = format!("install-app-{}", std::process::id());
    let application = dir.path().join("app.yaml");
    std::fs::write(
        &application,
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {app}\n  namespace: argocd\n\
             spec:\n  project: default\n  source:\n    repoURL: file:///srv/fleet\n    targetRevision: main\n    path: app\n\
             \x20 destination:\n    name: {name}\n    namespace: {namespace}\n  syncPolicy:\n    automated: {{}}\n"
        ),
    )
    .unwrap();
    run(
        &mut cli(&["app", "create", "-f", application.to_str().unwrap()]),
        None,
    );
    let app_key = format!("default/{app}");
    let object = |name: &str| -> Value {
        serde_json::from_str(&run(
            kubectl(&cluster).args(["get", "configmap", name, "-n", &namespace, "-o", "json"]),
            None,
        ))
        .unwrap()
    };
    let healthy = |greeting: &str| {
        let start = Instant::now();
        loop {
            let list: Value =
                serde_json::from_str(&run(&mut cli(&["app", "list", "-o", "json"]), None)).unwrap();
            let status = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == app.as_str())
                .map(|a| a["status"].clone())
                .unwrap_or(Value::Null);
            // Synced to the commit that says `greeting`, not only to an older one.
            if status["sync"] == "Synced"
                && status["health"] == "Healthy"
                && object("app-config")["data"]["greeting"] == greeting
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the app never became Synced and Healthy: {status:#}\nhub:\n{}\nagent:\n{}",
                logs(&current_hub.borrow()),
                logs(&agent.borrow())
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    healthy("hello");
    let before = wait("the bundle acknowledged", &|c| {
        c["link"]["acks"][&app_key]["outcome"] == "Applied"
    });
    let (config, hook) = (object("app-config"), object("app-hook"));

    // The agent's pod restarts: deleted, and its Deployment makes a new one on the
    // same claim, with its identity from its Secret.
    kubelet.stop(&agent.borrow());
    run(
        kubectl(&cluster).args([
            "delete",
            "pod",
            agent_pod["metadata"]["name"].as_str().unwrap(),
            "-n",
            "flotilla-system",
        ]),
        None,
    );
    let stopped_ms = now_ms();
    let agent_pod = kubelet.wait_for_pod(
        "flotilla-system",
        agent_selector,
        Some(&agent_pod["metadata"]["uid"]),
    );
    agent.replace(kubelet.start(&agent_pod, &format!("flotilla-{id}-agent-2"), &[]));
    wait("the agent back after its pod was replaced", &|c| {
        c["link"]["state"] == "Connected"
            && c["link"]["lastSeenMs"]
                .as_u64()
                .is_some_and(|t| t > stopped_ms)
    });
    // Time for a resend or a re-sync, were there one.
    std::thread::sleep(Duration::from_secs(5));
    let after = cluster_view();
    assert_eq!(
        after["link"]["acks"][&app_key],
        before["link"]["acks"][&app_key]
    );
    assert_eq!(
        after["link"]["bundlesSentSinceStart"], before["link"]["bundlesSentSinceStart"],
        "the hub sent a bundle again"
    );
    assert_eq!(
        object("app-hook")["metadata"]["uid"],
        hook["metadata"]["uid"],
        "the hook ran again"
    );
    assert_eq!(
        object("app-config")["metadata"]["resourceVersion"],
        config["metadata"]["resourceVersion"],
        "the app's object was written again"
    );
    healthy("hello");

    // `helm upgrade` to the next chart version, whose image is the next tag (the
    // same build, tagged so). The StatefulSet replaces its pod; the new one runs on
    // the same claim.
    let next_image = "localhost/flotilla:99.0.0";
    run(podman().args(["tag", &hub_image(), next_image]), None);
    let _untag = Untag(next_image);
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
    std::fs::write(chart_dir.join("Chart.yaml"), meta).unwrap();
    let upgrade_started = Instant::now();
    helm_hub("upgrade", &chart_dir);
    let new_hub_pod = kubelet.wait_for_pod(
        &hub_namespace,
        hub_selector,
        Some(&hub_pod["metadata"]["uid"]),
    );
    assert_eq!(new_hub_pod["spec"]["containers"][0]["image"], next_image);
    let rolled = upgrade_started.elapsed();
    kubelet.stop(&hub);
    let replaced_ms = now_ms();
    let new_hub_started = Instant::now();
    let hub = kubelet.start(&new_hub_pod, &format!("flotilla-{id}-hub-2"), &fleet_mount);
    current_hub.replace(hub.clone());
    // The saved session still trusts the hub: its CA is the one pinned at login.
    let start = Instant::now();
    while !output(&mut cli(&["cluster", "list"]), None)
        .status
        .success()
    {
        assert!(
            container_running(&hub) && start.elapsed() < Duration::from_secs(60),
            "the upgraded hub never answered with the pinned CA:\n{}",
            logs(&hub)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let back = wait("the agent back on the upgraded hub", &|c| {
        c["link"]["state"] == "Connected"
            && c["link"]["lastSeenMs"]
                .as_u64()
                .is_some_and(|t| t > replaced_ms)
    });
    eprintln!(
        "helm upgrade: the StatefulSet's new pod in {rolled:?}; the agent connected \
         {:?} after the new hub container started",
        new_hub_started.elapsed()
    );
    std::thread::sleep(Duration::from_secs(5));
    let back_later = cluster_view();
    assert_eq!(
        back_later["link"]["acks"][&app_key],
        before["link"]["acks"][&app_key]
    );
    assert_eq!(back_later["link"]["bundlesSentSinceStart"], 0, "{back:#}");
    // No new registration: the identity Secret is the one the first pod wrote.
    let now = identity();
    assert_eq!(now["uid"], registered["uid"]);
    assert_eq!(
        now["resourceVersion"], registered["resourceVersion"],
        "the agent registered again"
    );
    assert_eq!(
        object("app-hook")["metadata"]["uid"],
        hook["metadata"]["uid"]
    );
    // The signing key is the same: the agent, which trusts only the key it got at
    // registration, applies the next commit.
    write_app("after-upgrade");
    git(&["commit", "-q", "-am", "after the upgrade"]);
    chown_tree(&fleet);
    run(&mut cli(&["app", "refresh", &app]), None);
    healthy("after-upgrade");

    drop(kubelet);
    run(
        helm(&cluster).args(["uninstall", "flotilla", "--namespace", &hub_namespace]),
        None,
    );
    drop(scratch);
    super::run_cleanup(
        &cluster,
        &flotilla_hub::cluster::uninstall_commands(),
        false,
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An image tag this test added, removed when it ends.
struct Untag(&'static str);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = output(podman().args(["untag", self.0]), None);
    }
}
