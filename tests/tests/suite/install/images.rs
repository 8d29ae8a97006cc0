//! The images, with `FLOTILLA_IMAGE_TESTS=1`: `deploy/build-images` run three times
//! (cold or warm, then cached, then with every image removed) gives the same image
//! IDs; the images are non-root, shell-less and small; and the hub and an agent run
//! from them as containers beside a local cluster.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;

use super::*;

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

/// Containers this test started, removed by name when it ends, pass or fail.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = output(podman().args(["rm", "--force", "--time", "0", name]), None);
        }
    }
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

const PASSWORD: &str = "install-test-admin-password";

/// The hub and an agent as containers; the agent with what a pod of the printed
/// manifest gets.
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
    let mut containers = Containers(Vec::new());

    // A fleet repository with one app: a ConfigMap and a PreSync hook that is
    // deleted and made anew each time it runs, so a second run shows as a new uid.
    let namespace = unique("install-app");
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(fleet.join("app")).unwrap();
    std::fs::write(
        fleet.join("app/objects.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\ndata:\n  greeting: hello\n\
         ---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-hook\n  annotations:\n    \
         argocd.argoproj.io/hook: PreSync\n    argocd.argoproj.io/hook-delete-policy: BeforeHookCreation\n\
         data:\n  ran: \"yes\"\n",
    )
    .unwrap();
    let git = |args: &[&str]| {
        run(
            Command::new("git")
                .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
                .args(args)
                .current_dir(&fleet),
            None,
        )
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "an app"]);
    // git serves a repository only to its owner.
    chown_tree(&fleet);

    // The hub: read-only root, no capabilities, its data on a volume.
    let data = dir.path().join("hub");
    std::fs::create_dir(&data).unwrap();
    chown(&data);
    let (api, quic) = (free_port(), free_port());
    let start_hub = |name: &str| {
        run(
            podman()
                .args([
                    "run",
                    "--detach",
                    "--name",
                    name,
                    "--network",
                    "host",
                    "--read-only",
                ])
                .args([
                    "--tmpfs",
                    "/tmp",
                    "--cap-drop",
                    "ALL",
                    "--security-opt",
                    "no-new-privileges",
                ])
                .arg("--volume")
                .arg(format!("{}:/var/lib/flotilla", data.display()))
                .arg("--volume")
                .arg(format!("{}:/srv/fleet:ro", fleet.display()))
                // From podman's own environment: the password stays off the command line.
                .args(["--env", "FLOTILLA_ADMIN_PASSWORD"])
                .env("FLOTILLA_ADMIN_PASSWORD", PASSWORD)
                .arg(hub_image())
                .args(["hub", "--data-dir", "/var/lib/flotilla", "--plain-http"])
                .args(["--listen", &format!("127.0.0.1:{api}")])
                .args(["--agent-listen", &format!("127.0.0.1:{quic}")])
                .args(["--keep-alive-secs", "1", "--idle-timeout-secs", "30"]),
            None,
        );
    };
    // The hub container of the moment, for the failure reports below.
    let current_hub = std::cell::RefCell::new(format!("flotilla-{id}-hub"));
    let hub = current_hub.borrow().clone();
    containers.0.push(hub.clone());
    start_hub(&hub);

    // The CLI, as a user runs it against that hub.
    let server = format!("http://127.0.0.1:{api}");
    let cli_home = dir.path().join("cli");
    let cli = |args: &[&str]| {
        let mut command = Command::new(binary("flotilla"));
        command
            .args(args)
            .env("XDG_CONFIG_HOME", &cli_home)
            .env("FLOTILLA_PASSWORD", PASSWORD)
            .env_remove("FLOTILLA_DATA_DIR");
        command
    };
    let login = |hub: &str| {
        let start = Instant::now();
        while !output(
            &mut cli(&["login", "--server", &server, "--username", "admin"]),
            None,
        )
        .status
        .success()
        {
            assert!(
                container_running(hub),
                "the hub container exited:\n{}",
                logs(hub)
            );
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the hub never answered:\n{}",
                logs(hub)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    login(&hub);
    let name = format!("install-{}", std::process::id());
    let manifest = run(&mut cli(&["cluster", "add", &name]), None);
    apply(&cluster, &manifest);

    // What the manifest's pod would get: its env, args and image, the cluster's
    // address, and a token of the manifest's own ServiceAccount.
    let objects = documents(&manifest);
    let secret = objects.iter().find(|d| d["kind"] == "Secret").unwrap();
    let container = &objects.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]
        ["spec"]["containers"][0];
    assert_eq!(container["image"], agent_image());
    let env_file = dir.path().join("agent.env");
    let mut env = String::new();
    for (key, value) in secret["stringData"].as_object().unwrap() {
        let value = value.as_str().unwrap();
        assert!(!value.contains('\n'), "{key}");
        env.push_str(&format!("{key}={value}\n"));
    }
    std::fs::write(&env_file, env).unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let account = dir.path().join("serviceaccount");
    std::fs::create_dir(&account).unwrap();
    let token = run(
        kubectl(&cluster).args([
            "create",
            "token",
            "flotilla-agent",
            "-n",
            "flotilla-system",
            "--duration",
            "1h",
        ]),
        None,
    );
    std::fs::write(account.join("token"), token.trim()).unwrap();
    std::fs::copy(cluster.dir().join("pki/ca.crt"), account.join("ca.crt")).unwrap();
    std::fs::write(account.join("namespace"), "flotilla-system").unwrap();
    chown_tree(&account);
    let apiserver = run(
        kubectl(&cluster).args([
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]),
        None,
    );
    let (host, port) = apiserver
        .trim()
        .strip_prefix("https://")
        .unwrap()
        .rsplit_once(':')
        .unwrap();
    let state = dir.path().join("agent");
    std::fs::create_dir(&state).unwrap();
    chown(&state);
    let agent = format!("flotilla-{id}-agent");
    containers.0.push(agent.clone());
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    run(
        podman()
            .args([
                "run",
                "--detach",
                "--name",
                &agent,
                "--network",
                "host",
                "--read-only",
            ])
            .args(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"])
            .args(["--user", &format!("{IMAGE_USER}:{IMAGE_USER}")])
            .arg("--volume")
            .arg(format!("{}:/var/lib/flotilla-agent", state.display()))
            .arg("--volume")
            .arg(format!(
                "{}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
                account.display()
            ))
            .args(["--env", &format!("KUBERNETES_SERVICE_HOST={host}")])
            .args(["--env", &format!("KUBERNETES_SERVICE_PORT={port}")])
            .arg("--env-file")
            .arg(&env_file)
            .arg(agent_image())
            .args(&args),
        None,
    );
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
    let healthy = || {
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
            if status["sync"] == "Synced" && status["health"] == "Healthy" {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the app never became Synced and Healthy: {status:#}\nhub:\n{}\nagent:\n{}",
                logs(&current_hub.borrow()),
                logs(&agent)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    healthy();
    let before = wait("the bundle acknowledged", &|c| {
        c["link"]["acks"][&app_key]["outcome"] == "Applied"
    });
    let object = |name: &str| -> Value {
        serde_json::from_str(&run(
            kubectl(&cluster).args(["get", "configmap", name, "-n", &namespace, "-o", "json"]),
            None,
        ))
        .unwrap()
    };
    let (config, hook) = (object("app-config"), object("app-hook"));
    assert_eq!(config["data"]["greeting"], "hello");

    // The agent container restarts: same state volume, identity from its Secret.
    run(podman().args(["stop", "--time", "10", &agent]), None);
    let stopped_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    run(podman().args(["start", &agent]), None);
    wait("the agent back after its restart", &|c| {
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
    let (config_after, hook_after) = (object("app-config"), object("app-hook"));
    assert_eq!(
        hook_after["metadata"]["uid"], hook["metadata"]["uid"],
        "the hook ran again"
    );
    assert_eq!(
        config_after["metadata"]["resourceVersion"], config["metadata"]["resourceVersion"],
        "the app's object was written again"
    );
    healthy();

    // An upgrade of the hub, as the StatefulSet does it: a new container on the same
    // data. The agent comes back on its certificate, with no new registration (its
    // token is spent), and nothing is sent again.
    let fingerprint = secret["stringData"]["FLOTILLA_CA_FINGERPRINT"].clone();
    run(podman().args(["rm", "--force", "--time", "10", &hub]), None);
    let replaced_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hub = format!("flotilla-{id}-hub-2");
    current_hub.replace(hub.clone());
    containers.0.push(hub.clone());
    start_hub(&hub);
    login(&hub);
    let back = wait("the agent back on the new hub", &|c| {
        c["link"]["state"] == "Connected"
            && c["link"]["lastSeenMs"]
                .as_u64()
                .is_some_and(|t| t > replaced_ms)
    });
    std::thread::sleep(Duration::from_secs(5));
    let back_later = cluster_view();
    assert_eq!(
        back_later["link"]["acks"][&app_key],
        before["link"]["acks"][&app_key]
    );
    assert_eq!(back_later["link"]["bundlesSentSinceStart"], 0, "{back:#}");
    let other = documents(&run(
        &mut cli(&["cluster", "add", &format!("{name}-2")]),
        None,
    ));
    let other = other.iter().find(|d| d["kind"] == "Secret").unwrap();
    assert_eq!(
        other["stringData"]["FLOTILLA_CA_FINGERPRINT"], fingerprint,
        "the hub's CA changed"
    );
    assert_eq!(
        object("app-hook")["metadata"]["uid"],
        hook["metadata"]["uid"]
    );
    healthy();

    drop(containers);
    drop(scratch);
    super::run_cleanup(
        &cluster,
        &flotilla_hub::cluster::uninstall_commands(),
        false,
    );
}
