//! A pod of a local cluster, run with podman the way a kubelet would run it.
//!
//! kwok runs no containers: the local clusters admit, schedule and report pods, but
//! nothing starts. To prove that what the charts and the printed manifest ask for is
//! enough, [`Kubelet::start`] reads the Pod object the cluster made (after its
//! controllers and admission had their say) and runs its one container as podman
//! on the host network: the image (never pulled), command and arguments, the
//! environment from values, Secrets, ConfigMaps and the downward API, the user and
//! group, a read-only root, dropped capabilities, and every mounted volume:
//! a claim is a folder kept per claim uid (so a new pod on the same claim sees the
//! same data, and a re-created claim would not), an `emptyDir` a fresh tmpfs, a
//! Secret or ConfigMap their keys as files, and the projected ServiceAccount
//! volume a token minted for the pod's own ServiceAccount, so the pod has exactly
//! the rights its RBAC grants. `KUBERNETES_SERVICE_HOST`/`PORT` name the
//! cluster's apiserver, as a kubelet sets them. What it cannot run (init
//! containers, more than one container, a volume kind it does not know) fails the
//! test rather than run something else.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;

use base64::Engine as _;

use super::*;

/// Runs pods of `cluster`; the claims' folders live as long as it does.
pub(super) struct Kubelet {
    cluster: LocalCluster,
    root: tempfile::TempDir,
    /// Containers started and not yet removed.
    running: std::cell::RefCell<Vec<String>>,
    /// PersistentVolumes made by [`Kubelet::provision`].
    volumes: std::cell::RefCell<Vec<String>>,
}

/// A folder outside the pod's own that the test binds in as well, read-only.
pub(super) struct ExtraMount<'a> {
    pub host: &'a Path,
    pub container: &'a str,
}

impl Kubelet {
    pub(super) fn new(cluster: &LocalCluster) -> Self {
        let root = tempfile::Builder::new()
            .prefix("kubelet-")
            .tempdir()
            .unwrap();
        // Containers run as the pod's user, which must reach the folders below.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            cluster: cluster.clone(),
            root,
            running: Default::default(),
            volumes: Default::default(),
        }
    }

    /// A PersistentVolume bound in advance to claim `namespace/claim`, as a
    /// provisioner would make one: the local clusters have none, and a pod whose
    /// claim stays unbound is never scheduled, so a StatefulSet would not roll.
    /// What the pod sees on it is [`Kubelet::claim_dir`]'s folder.
    pub(super) fn provision(&self, namespace: &str, claim: &str) {
        let name = format!("{namespace}-{claim}");
        let volume = json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                "hostPath": {"path": format!("/var/lib/flotilla-test/{name}")},
                "claimRef": {"namespace": namespace, "name": claim}}});
        self.volumes.borrow_mut().push(name);
        apply(&self.cluster, &volume.to_string());
    }

    /// Waits for a pod matching `selector` in `namespace` whose uid is not `not`
    /// (the pod a controller made anew) and returns it.
    pub(super) fn wait_for_pod(
        &self,
        namespace: &str,
        selector: &str,
        not: Option<&Value>,
    ) -> Value {
        let start = Instant::now();
        loop {
            let list: Value = serde_json::from_str(&run(
                kubectl(&self.cluster)
                    .args(["get", "pods", "-n", namespace, "-l", selector, "-o", "json"]),
                None,
            ))
            .unwrap();
            let fresh = list["items"].as_array().unwrap().iter().find(|pod| {
                pod["metadata"]["deletionTimestamp"].is_null()
                    && not.is_none_or(|uid| &pod["metadata"]["uid"] != uid)
            });
            if let Some(pod) = fresh {
                return pod.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "no new pod {selector} in {namespace}: {list:#}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Starts `pod`'s container as `name` and returns the name.
    pub(super) fn start(&self, pod: &Value, name: &str, extra: &[ExtraMount<'_>]) -> String {
        let spec = &pod["spec"];
        let namespace = pod["metadata"]["namespace"].as_str().unwrap();
        let uid = pod["metadata"]["uid"].as_str().unwrap();
        assert!(
            spec["initContainers"]
                .as_array()
                .is_none_or(|c| c.is_empty()),
            "init containers are not run here: {spec:#}"
        );
        let containers = spec["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "one container per pod: {spec:#}");
        let container = &containers[0];
        let pod_security = &spec["securityContext"];
        let security = &container["securityContext"];
        let setting = |key: &str| {
            let own = &security[key];
            if own.is_null() {
                pod_security[key].clone()
            } else {
                own.clone()
            }
        };
        let user = setting("runAsUser")
            .as_u64()
            .expect("the pod names its user");
        let group = setting("runAsGroup").as_u64().unwrap_or(user);
        let fs_group = pod_security["fsGroup"].as_u64().unwrap_or(group);
        if setting("runAsNonRoot") == true {
            assert_ne!(user, 0, "runAsNonRoot with user 0");
        }

        let mut command = podman();
        command.args(["run", "--detach", "--name", name, "--network", "host"]);
        command.args(["--pull", "never", "--user", &format!("{user}:{group}")]);
        command.arg(format!("--group-add={fs_group}"));
        if security["readOnlyRootFilesystem"] == true {
            // Only what the pod mounts is writable: no tmpfs of podman's own.
            command.args(["--read-only", "--read-only-tmpfs=false"]);
        }
        if security["allowPrivilegeEscalation"] == false {
            command.args(["--security-opt", "no-new-privileges"]);
        }
        for cap in security["capabilities"]["drop"]
            .as_array()
            .into_iter()
            .flatten()
        {
            command.args(["--cap-drop", cap.as_str().unwrap()]);
        }
        for cap in security["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
        {
            command.args(["--cap-add", cap.as_str().unwrap()]);
        }

        let volumes: BTreeMap<&str, &Value> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        let pod_dir = self.root.path().join("pods").join(uid);
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            assert!(
                mount["subPath"].is_null(),
                "subPath is not run here: {mount}"
            );
            let volume_name = mount["name"].as_str().unwrap();
            let volume = volumes
                .get(volume_name)
                .unwrap_or_else(|| panic!("mount of an unknown volume {volume_name}"));
            let path = mount["mountPath"].as_str().unwrap();
            let read_only = mount["readOnly"] == true;
            if !volume["emptyDir"].is_null() {
                command.args(["--tmpfs", &format!("{path}:rw,mode=1777")]);
                continue;
            }
            let host = if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                self.claim_dir(namespace, claim, user, fs_group)
            } else {
                let dir = pod_dir.join(volume_name);
                std::fs::create_dir_all(&dir).unwrap();
                self.fill(&dir, volume, pod, namespace);
                chown_to(&dir, user, fs_group);
                dir
            };
            let options = if read_only { "ro" } else { "rw" };
            command
                .arg("--volume")
                .arg(format!("{}:{path}:{options}", host.display()));
        }
        for mount in extra {
            command
                .arg("--volume")
                .arg(format!("{}:{}:ro", mount.host.display(), mount.container));
        }

        // The environment goes through podman's own (`--env NAME`), so no value,
        // secret or not, is on a command line.
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let (host, port) = self.apiserver();
        env.insert("KUBERNETES_SERVICE_HOST".into(), host);
        env.insert("KUBERNETES_SERVICE_PORT".into(), port);
        for from in container["envFrom"].as_array().into_iter().flatten() {
            let data = if let Some(secret) = from["secretRef"]["name"].as_str() {
                self.data("secret", namespace, secret)
            } else {
                let map = from["configMapRef"]["name"]
                    .as_str()
                    .expect("envFrom secretRef or configMapRef");
                self.data("configmap", namespace, map)
            };
            for (key, value) in data {
                env.insert(key, String::from_utf8(value).unwrap());
            }
        }
        // Later entries win, as in Kubernetes.
        for var in container["env"].as_array().into_iter().flatten() {
            let key = var["name"].as_str().unwrap().to_owned();
            let value = if let Some(value) = var["value"].as_str() {
                value.to_owned()
            } else {
                let from = &var["valueFrom"];
                let bytes = if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
                    field_of(pod, field).into_bytes()
                } else {
                    let (kind, reference) = if from["secretKeyRef"].is_object() {
                        ("secret", &from["secretKeyRef"])
                    } else {
                        ("configmap", &from["configMapKeyRef"])
                    };
                    let name = reference["name"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{var}"));
                    let wanted = reference["key"].as_str().unwrap();
                    self.data(kind, namespace, name)
                        .remove(wanted)
                        .unwrap_or_else(|| panic!("{kind} {name} has no key {wanted}"))
                };
                String::from_utf8(bytes).unwrap()
            };
            env.insert(key, value);
        }
        for (key, value) in &env {
            command.args(["--env", key]).env(key, value);
        }

        if let Some(entry) = container["command"].as_array() {
            command
                .arg("--entrypoint")
                .arg(serde_json::to_string(entry).unwrap());
        }
        command.arg(container["image"].as_str().unwrap());
        for arg in container["args"].as_array().into_iter().flatten() {
            command.arg(arg.as_str().unwrap());
        }
        self.running.borrow_mut().push(name.to_owned());
        run(&mut command, None);
        name.to_owned()
    }

    /// Stops `name` as a kubelet does when its pod goes: SIGTERM, a grace period,
    /// then removal.
    pub(super) fn stop(&self, name: &str) {
        run(podman().args(["rm", "--force", "--time", "10", name]), None);
        self.running.borrow_mut().retain(|n| n != name);
    }

    /// The folder that holds claim `namespace/claim`, by its uid: a new pod on
    /// the same claim gets the same folder.
    fn claim_dir(&self, namespace: &str, claim: &str, user: u64, group: u64) -> PathBuf {
        let uid = run(
            kubectl(&self.cluster).args([
                "get",
                "pvc",
                claim,
                "-n",
                namespace,
                "-o",
                "jsonpath={.metadata.uid}",
            ]),
            None,
        );
        assert!(
            !uid.trim().is_empty(),
            "claim {namespace}/{claim} has no uid"
        );
        let dir = self.root.path().join("claims").join(uid.trim());
        if !dir.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            chown_to(&dir, user, group);
        }
        dir
    }

    /// A Secret, ConfigMap or projected volume's files, written into `dir`.
    fn fill(&self, dir: &Path, volume: &Value, pod: &Value, namespace: &str) {
        let write = |path: &str, bytes: &[u8]| {
            let file = dir.join(path);
            assert!(
                file.starts_with(dir) && !path.contains(".."),
                "a volume file outside its folder: {path}"
            );
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, bytes).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        };
        let keyed = |kind: &str, source: &Value, name_field: &str| {
            let name = source[name_field].as_str().unwrap();
            let mut data = self.data(kind, namespace, name);
            match source["items"].as_array() {
                Some(items) => {
                    for item in items {
                        let key = item["key"].as_str().unwrap();
                        let bytes = data
                            .remove(key)
                            .unwrap_or_else(|| panic!("{kind} {name} has no key {key}"));
                        write(item["path"].as_str().unwrap(), &bytes);
                    }
                }
                None => {
                    for (key, bytes) in data {
                        write(&key, &bytes);
                    }
                }
            }
        };
        if volume["secret"].is_object() {
            keyed("secret", &volume["secret"], "secretName");
        } else if volume["configMap"].is_object() {
            keyed("configmap", &volume["configMap"], "name");
        } else if let Some(sources) = volume["projected"]["sources"].as_array() {
            for source in sources {
                if let Some(token) = source["serviceAccountToken"].as_object() {
                    let account = pod["spec"]["serviceAccountName"]
                        .as_str()
                        .unwrap_or("default");
                    let minted = run(
                        kubectl(&self.cluster).args([
                            "create",
                            "token",
                            account,
                            "-n",
                            namespace,
                            "--duration",
                            "1h",
                        ]),
                        None,
                    );
                    write(token["path"].as_str().unwrap(), minted.trim().as_bytes());
                } else if source["configMap"].is_object() {
                    keyed("configmap", &source["configMap"], "name");
                } else if let Some(items) = source["downwardAPI"]["items"].as_array() {
                    for item in items {
                        let field = item["fieldRef"]["fieldPath"].as_str().unwrap();
                        write(
                            item["path"].as_str().unwrap(),
                            field_of(pod, field).as_bytes(),
                        );
                    }
                } else {
                    panic!("a projected source not run here: {source}");
                }
            }
        } else {
            panic!("a volume kind not run here: {volume}");
        }
    }

    /// The keys of Secret or ConfigMap `namespace/name`, decoded.
    fn data(&self, kind: &str, namespace: &str, name: &str) -> BTreeMap<String, Vec<u8>> {
        let object: Value = serde_json::from_str(&run(
            kubectl(&self.cluster).args(["get", kind, name, "-n", namespace, "-o", "json"]),
            None,
        ))
        .unwrap();
        let mut data = BTreeMap::new();
        for (key, value) in object["data"].as_object().into_iter().flatten() {
            let value = value.as_str().unwrap();
            let bytes = if kind == "secret" {
                base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .unwrap()
            } else {
                value.as_bytes().to_vec()
            };
            data.insert(key.clone(), bytes);
        }
        for (key, value) in object["binaryData"].as_object().into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().unwrap())
                .unwrap();
            data.insert(key.clone(), bytes);
        }
        data
    }

    /// The apiserver's host and port, as the pod reaches it.
    fn apiserver(&self) -> (String, String) {
        let url = run(
            kubectl(&self.cluster).args([
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ]),
            None,
        );
        let (host, port) = url
            .trim()
            .strip_prefix("https://")
            .unwrap()
            .rsplit_once(':')
            .unwrap();
        (host.to_owned(), port.to_owned())
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for name in self.running.borrow().iter() {
            let _ = output(podman().args(["rm", "--force", "--time", "0", name]), None);
        }
        for name in self.volumes.borrow().iter() {
            let _ = output(
                kubectl(&self.cluster).args(["delete", "pv", name, "--wait=false"]),
                None,
            );
        }
    }
}

/// The downward API's `fieldPath` of `pod`, for the fields these pods use.
fn field_of(pod: &Value, field: &str) -> String {
    match field {
        "metadata.namespace" => pod["metadata"]["namespace"].as_str().unwrap().to_owned(),
        "metadata.name" => pod["metadata"]["name"].as_str().unwrap().to_owned(),
        "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap()
            .to_owned(),
        other => panic!("downward API field {other} is not run here"),
    }
}

fn chown_to(path: &Path, user: u64, group: u64) {
    std::os::unix::fs::chown(path, Some(user as u32), Some(group as u32)).unwrap();
}
