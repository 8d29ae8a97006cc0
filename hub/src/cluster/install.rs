//! What installs and removes an agent, as `cluster add` and `cluster rm` print it:
//! the manifest to apply, the equivalent `helm install` of
//! `deploy/charts/flotilla-agent`, and the cleanup.
//!
//! Every value comes from the hub's own checks (DNS labels, `host:port`, a hex
//! fingerprint, a token it made), and even so none is pasted into text: the
//! manifest is serialized YAML and the Helm values are a JSON document on stdin, so
//! no value can become a YAML key, a shell word or a Helm flag.

use serde_json::{Value, json};

use super::JoinInfo;

/// The namespace the agent runs in.
pub const AGENT_NAMESPACE: &str = "flotilla-system";

/// The name of the agent's ServiceAccount, Deployment and cluster-wide RBAC.
const AGENT: &str = "flotilla-agent";

/// Every object of the install carries `app.kubernetes.io/name: flotilla-agent`, so
/// the cleanup finds them all by it (the chart labels its objects the same way).
const NAME_LABEL: &str = "app.kubernetes.io/name";

/// The discovery endpoints: all the agent reads outside the resource API.
const DISCOVERY_URLS: [&str; 5] = ["/api", "/api/*", "/apis", "/apis/*", "/version"];

/// The claim for the agent's sled database (inventory, journal, last applied
/// bundles), so that a new pod finds what the last one applied and pruned.
const STATE_CLAIM: &str = "flotilla-agent-state";

/// How much the state claim asks for: the agent keeps the last bundle per app.
const STATE_SIZE: &str = "1Gi";

/// The user the images run as (deploy/build-images).
const IMAGE_USER: u32 = 65532;

/// The delimiter of the Helm values' here-document.
const VALUES_END: &str = "FLOTILLA_VALUES";
/// Ends the here-document of the namespace in the printed `helm install`.
const NAMESPACE_END: &str = "FLOTILLA_NAMESPACE";

/// The agent's install manifest: Namespace, ServiceAccount, RBAC, the bootstrap
/// Secret, the state claim and the Deployment.
///
/// By default the agent may act on any resource anywhere: it applies whatever the
/// hub's AppProjects allow, and those, checked on the agent, narrow it. Outside the
/// resource API it reads only the discovery endpoints. With namespaces it gets full
/// rights in those namespaces only (RoleBindings), read-only discovery of the rest
/// (namespaces, CRDs, APIServices, the discovery endpoints), and its identity Secret
/// in its own namespace; the agent refuses any bundle that reaches outside them.
pub fn manifest(join: &JoinInfo<'_>) -> String {
    let JoinInfo {
        cluster,
        hub_address,
        ca_fingerprint,
        token,
        image,
        namespaces,
        storage_class,
    } = join;
    let labels = json!({NAME_LABEL: AGENT, "app.kubernetes.io/part-of": "flotilla"});
    let meta = |name: &str, namespace: Option<&str>| {
        let mut meta = json!({"name": name, "labels": labels});
        if let Some(namespace) = namespace {
            meta["namespace"] = json!(namespace);
        }
        meta
    };
    let own = Some(AGENT_NAMESPACE);
    let subject = json!([{"kind": "ServiceAccount", "name": AGENT, "namespace": AGENT_NAMESPACE}]);
    let role_ref = |kind: &str, name: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name});
    let mut documents: Vec<(Option<String>, Value)> = vec![
        (
            Some(format!(
                "Flotilla agent for cluster {cluster}. The token works once and expires; apply soon."
            )),
            namespace_object(),
        ),
        (
            None,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(AGENT, own)}),
        ),
    ];
    let mut bootstrap = json!({
        "FLOTILLA_HUB": hub_address,
        "FLOTILLA_CA_FINGERPRINT": ca_fingerprint,
        "FLOTILLA_TOKEN": token,
        "FLOTILLA_CLUSTER": cluster,
    });
    if namespaces.is_empty() {
        documents.extend([
            (
                Some(
                    "The agent applies whatever the hub's AppProjects allow, so it needs broad \
                     rights on resources;\nAppProjects, checked on the agent, are what narrow \
                     them. `flotilla cluster add --namespaces` grants less."
                        .to_owned(),
                ),
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": meta(AGENT, None),
                "rules": [
                    {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                    {"nonResourceURLs": DISCOVERY_URLS, "verbs": ["get"]},
                ]}),
            ),
            (
                None,
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": meta(AGENT, None),
                    "roleRef": role_ref("ClusterRole", AGENT),
                    "subjects": subject}),
            ),
        ]);
    } else {
        let read = "flotilla-agent-read";
        let namespaced = "flotilla-agent-namespaced";
        documents.extend([
            (
                Some(format!(
                    "Least privilege: the agent acts only in {}, and reads what it needs to \
                     discover kinds.",
                    namespaces.join(", ")
                )),
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": meta(read, None),
                    "rules": [
                        {"apiGroups": [""], "resources": ["namespaces"],
                            "verbs": ["get", "list", "watch"]},
                        {"apiGroups": ["apiextensions.k8s.io"],
                            "resources": ["customresourcedefinitions"],
                            "verbs": ["get", "list", "watch"]},
                        {"apiGroups": ["apiregistration.k8s.io"], "resources": ["apiservices"],
                            "verbs": ["get", "list", "watch"]},
                        {"nonResourceURLs": DISCOVERY_URLS, "verbs": ["get"]},
                    ]}),
            ),
            (
                None,
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": meta(read, None),
                    "roleRef": role_ref("ClusterRole", read),
                    "subjects": subject}),
            ),
            (
                Some(
                    "Full rights, but only where a RoleBinding below grants them: one per namespace."
                        .to_owned(),
                ),
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": meta(namespaced, None),
                    "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
            ),
        ]);
        for namespace in namespaces.iter() {
            documents.push((
                None,
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": meta(AGENT, Some(namespace)),
                    "roleRef": role_ref("ClusterRole", namespaced),
                    "subjects": subject}),
            ));
        }
        documents.extend([
            (
                Some("The agent keeps its identity in a Secret of its own namespace.".to_owned()),
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": meta(AGENT, own),
                    "rules": [{"apiGroups": [""], "resources": ["secrets"],
                        "verbs": ["get", "create", "update", "patch"]}]}),
            ),
            (
                None,
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": meta(AGENT, own),
                    "roleRef": role_ref("Role", AGENT),
                    "subjects": subject}),
            ),
        ]);
        bootstrap["FLOTILLA_NAMESPACES"] = json!(namespaces.join(","));
    }
    let selector = json!({NAME_LABEL: AGENT});
    documents.extend([
        (
            None,
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": meta("flotilla-agent-bootstrap", own),
                "type": "Opaque",
                "stringData": bootstrap}),
        ),
        (
            Some(format!(
                "The agent's inventory and journal: a pod restart must not lose what it \
                 applied,\nor it could neither prune nor tell a hook already ran. Uses {}.",
                match storage_class {
                    Some(class) => format!("the storage class {class}"),
                    None => "the default storage class (cluster add --storage-class names another)"
                        .to_owned(),
                }
            )),
            {
                let mut claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": meta(STATE_CLAIM, own),
                    "spec": {"accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": STATE_SIZE}}}});
                if let Some(class) = storage_class {
                    claim["spec"]["storageClassName"] = json!(class);
                }
                claim
            },
        ),
        (
            None,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": meta(AGENT, own),
            "spec": {
                "replicas": 1,
                // One process may open the state at a time: the old pod goes first.
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": AGENT,
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": IMAGE_USER,
                            "runAsGroup": IMAGE_USER,
                            "fsGroup": IMAGE_USER,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [{
                            "name": "agent",
                            "image": format!("{image}:{}", flotilla_common::VERSION),
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["--state-dir", "/var/lib/flotilla-agent",
                                "--identity-secret",
                                format!("{AGENT_NAMESPACE}/flotilla-agent-identity")],
                            "envFrom": [{"secretRef": {"name": "flotilla-agent-bootstrap"}}],
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"memory": "512Mi"}},
                            "volumeMounts": [{"name": "state",
                                "mountPath": "/var/lib/flotilla-agent"}],
                        }],
                        "volumes": [{"name": "state",
                            "persistentVolumeClaim": {"claimName": STATE_CLAIM}}],
                    },
                },
            }}),
        ),
    ]);
    let mut text = String::new();
    for (comment, document) in documents {
        if !text.is_empty() {
            text.push_str("---\n");
        }
        for line in comment.iter().flat_map(|c| c.lines()) {
            text.push_str("# ");
            text.push_str(line);
            text.push('\n');
        }
        // Serializing a JSON value cannot fail.
        text.push_str(&serde_saphyr::to_string(&document).unwrap_or_default());
    }
    text
}

/// The Helm values that install the same agent from `deploy/charts/flotilla-agent`.
pub fn helm_values(join: &JoinInfo<'_>) -> Value {
    json!({
        "cluster": join.cluster,
        "hub": {"address": join.hub_address, "caFingerprint": join.ca_fingerprint},
        "token": join.token,
        "namespaces": join.namespaces,
        "image": {"repository": join.image, "tag": flotilla_common::VERSION},
        "persistence": {"storageClass": join.storage_class.unwrap_or_default()},
    })
}

/// The agent's namespace. The agent's pod passes the restricted Pod Security
/// profile; the namespace enforces it.
fn namespace_object() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": AGENT_NAMESPACE,
        "labels": {NAME_LABEL: AGENT, "app.kubernetes.io/part-of": "flotilla",
            "pod-security.kubernetes.io/enforce": "restricted"}}})
}

/// The `helm install` command equivalent to [`manifest`]. The namespace is made
/// first, with its Pod Security label (`helm --create-namespace` would make it
/// without). The values go in on
/// stdin as pretty JSON (which is YAML): each line starts with a brace or a space
/// and no string holds a raw newline, so no value can end the here-document,
/// and none reaches Helm as a flag or through `--set`'s own splitting.
pub fn helm_command(join: &JoinInfo<'_>) -> String {
    // Serializing a JSON value cannot fail.
    let values = serde_json::to_string_pretty(&helm_values(join)).unwrap_or_default();
    format!(
        "# Flotilla agent for cluster {cluster}, from deploy/charts/flotilla-agent in a checkout of\n\
         # Flotilla {version}. The token works once and expires; run soon.\n\
         kubectl apply --server-side --field-manager flotilla-install -f - <<'{NAMESPACE_END}'\n\
         {namespace}\n{NAMESPACE_END}\n\
         helm install flotilla-agent deploy/charts/flotilla-agent --namespace {AGENT_NAMESPACE} \
         --values - <<'{VALUES_END}'\n{values}\n{VALUES_END}\n",
        cluster = join.cluster,
        version = flotilla_common::VERSION,
        namespace = namespace_object(),
    )
}

/// What removes an agent from its cluster, for `cluster rm` to print. The objects
/// the agent applied for apps stay: they belong to the apps, not to the agent.
pub fn uninstall_commands() -> String {
    format!(
        "# On the cluster, remove the agent, its state and its rights (the apps' objects stay):\n\
         kubectl delete namespace {AGENT_NAMESPACE} --ignore-not-found\n\
         kubectl delete clusterrolebinding,clusterrole,rolebinding --all-namespaces \
         --selector {NAME_LABEL}={AGENT} --ignore-not-found\n\
         # or, where it was installed with helm:\n\
         helm uninstall flotilla-agent --namespace {AGENT_NAMESPACE}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::super::{DEFAULT_AGENT_IMAGE, command_line, parse_namespaces};
    use super::*;
    use crate::cluster::Error;

    fn join(namespaces: &[String]) -> JoinInfo<'_> {
        JoinInfo {
            cluster: "east",
            hub_address: "hub.example:7443",
            ca_fingerprint: "ab12",
            token: "flt_secret",
            image: DEFAULT_AGENT_IMAGE,
            namespaces,
            storage_class: None,
        }
    }

    fn parse_manifest(text: &str) -> Vec<Value> {
        serde_saphyr::from_multiple(text).unwrap()
    }

    #[test]
    fn the_manifest_carries_hub_fingerprint_and_token() {
        let join = join(&[]);
        let text = manifest(&join);
        for kind in [
            "kind: Namespace",
            "kind: ServiceAccount",
            "kind: ClusterRole",
            "kind: ClusterRoleBinding",
            "kind: Secret",
            "kind: PersistentVolumeClaim",
            "kind: Deployment",
        ] {
            assert!(text.contains(kind), "{kind} missing");
        }
        assert!(text.contains("hub.example:7443"));
        assert!(text.contains("ab12"));
        assert!(text.contains("flt_secret"));
        assert!(command_line(&join).contains("--token flt_secret"));
        let documents = parse_manifest(&text);
        let role = documents
            .iter()
            .find(|d| d["kind"] == "ClusterRole")
            .unwrap();
        assert_eq!(role["rules"][0]["verbs"], json!(["*"]));
        assert!(!text.contains("FLOTILLA_NAMESPACES"));
    }

    #[test]
    fn the_broad_role_reads_only_discovery_outside_resources() {
        let documents = parse_manifest(&manifest(&join(&[])));
        let role = documents
            .iter()
            .find(|d| d["kind"] == "ClusterRole")
            .unwrap();
        let urls = &role["rules"][1];
        assert_eq!(urls["verbs"], json!(["get"]));
        assert_eq!(urls["nonResourceURLs"], json!(DISCOVERY_URLS));
    }

    #[test]
    fn the_agent_keeps_its_state_on_a_claim_and_runs_restricted() {
        let documents = parse_manifest(&manifest(&join(&[])));
        let claim = documents
            .iter()
            .find(|d| d["kind"] == "PersistentVolumeClaim")
            .unwrap();
        let deployment = documents
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            claim["metadata"]["name"]
        );
        assert!(!manifest(&join(&[])).contains("emptyDir"));
        assert_eq!(
            pod["containers"][0]["image"],
            format!("localhost/flotilla-agent:{}", flotilla_common::VERSION)
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
            true
        );
        // Every object carries the label the cleanup selects by.
        for document in &documents {
            assert_eq!(
                document["metadata"]["labels"][NAME_LABEL], AGENT,
                "{document}"
            );
        }
        assert!(uninstall_commands().contains(&format!("--selector {NAME_LABEL}={AGENT}")));
    }

    #[test]
    fn a_namespaced_manifest_grants_rights_only_in_its_namespaces() {
        let namespaces =
            parse_namespaces(&["team-b,team-a".to_owned(), "team-a".to_owned()]).unwrap();
        assert_eq!(namespaces, ["team-a", "team-b"]);
        let join = join(&namespaces);
        let documents = parse_manifest(&manifest(&join));
        // Nothing grants a write outside the namespaces: every cluster-wide binding
        // points at a role that only reads.
        for binding in documents
            .iter()
            .filter(|d| d["kind"] == "ClusterRoleBinding")
        {
            let role = documents
                .iter()
                .find(|d| {
                    d["kind"] == "ClusterRole"
                        && d["metadata"]["name"] == binding["roleRef"]["name"]
                })
                .unwrap();
            for rule in role["rules"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    assert!(
                        ["get", "list", "watch"].contains(&verb.as_str().unwrap()),
                        "cluster-wide {verb} in {rule}"
                    );
                }
            }
        }
        let bound: Vec<&str> = documents
            .iter()
            .filter(|d| {
                d["kind"] == "RoleBinding" && d["roleRef"]["name"] == "flotilla-agent-namespaced"
            })
            .map(|d| d["metadata"]["namespace"].as_str().unwrap())
            .collect();
        assert_eq!(bound, ["team-a", "team-b"]);
        let secret = documents.iter().find(|d| d["kind"] == "Secret").unwrap();
        assert_eq!(secret["stringData"]["FLOTILLA_NAMESPACES"], "team-a,team-b");
        assert!(command_line(&join).contains("--namespaces team-a,team-b"));
        assert_eq!(
            helm_values(&join)["namespaces"],
            json!(["team-a", "team-b"])
        );
        for bad in ["Team", "a/b", "-a", "x;y", "a b"] {
            assert!(
                matches!(
                    parse_namespaces(&[bad.to_owned()]),
                    Err(Error::InvalidNamespace(_))
                ),
                "{bad}"
            );
        }
    }

    fn hostile() -> JoinInfo<'static> {
        JoinInfo {
            cluster: "east",
            hub_address: "hub.example:7443\n  evil: true\nFLOTILLA_VALUES\nrm -rf /",
            ca_fingerprint: "ab12\"",
            token: "flt: x' --set image.repository=evil",
            image: DEFAULT_AGENT_IMAGE,
            namespaces: &[],
            storage_class: Some("fast\n  evil: true"),
        }
    }

    #[test]
    fn manifest_values_are_serialized_not_pasted() {
        // The values are validated where they come in; even so, a value with YAML
        // syntax in it stays one string.
        let join = hostile();
        let documents = parse_manifest(&manifest(&join));
        let secret = documents.iter().find(|d| d["kind"] == "Secret").unwrap();
        assert_eq!(secret["stringData"]["FLOTILLA_HUB"], join.hub_address);
        assert_eq!(secret["stringData"]["FLOTILLA_CA_FINGERPRINT"], "ab12\"");
        assert_eq!(secret["stringData"]["FLOTILLA_TOKEN"], join.token);
        assert_eq!(secret["stringData"].as_object().unwrap().len(), 4);
        let claim = documents
            .iter()
            .find(|d| d["kind"] == "PersistentVolumeClaim")
            .unwrap();
        assert_eq!(claim["spec"]["storageClassName"], "fast\n  evil: true");
    }

    #[test]
    fn a_storage_class_names_the_claims_class_in_the_manifest_and_the_chart() {
        let namespaces = [];
        let mut join = join(&namespaces);
        let claim = |join: &JoinInfo<'_>| {
            parse_manifest(&manifest(join))
                .into_iter()
                .find(|d| d["kind"] == "PersistentVolumeClaim")
                .unwrap()
        };
        assert!(claim(&join)["spec"]["storageClassName"].is_null());
        assert_eq!(helm_values(&join)["persistence"]["storageClass"], "");
        join.storage_class = Some("local-path");
        assert_eq!(claim(&join)["spec"]["storageClassName"], "local-path");
        assert_eq!(
            helm_values(&join)["persistence"]["storageClass"],
            "local-path"
        );
        for good in ["standard", "local-path", "ebs.csi.aws.com", "gp3"] {
            assert!(crate::cluster::is_storage_class(good), "{good}");
        }
        for bad in [
            "",
            "Fast",
            "-a",
            "a-",
            "a..b",
            "a b",
            "a\nb",
            "a;b",
            &"a".repeat(254),
        ] {
            assert!(!crate::cluster::is_storage_class(bad), "{bad:?}");
        }
    }

    #[test]
    fn helm_values_stay_inside_their_here_document() {
        let join = hostile();
        let command = helm_command(&join);
        let lines: Vec<&str> = command.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.starts_with("helm install"))
            .unwrap();
        assert!(lines[start].ends_with(&format!("--values - <<'{VALUES_END}'")));
        // The document ends at the last line, and nowhere before it.
        assert_eq!(
            lines.iter().position(|l| *l == VALUES_END),
            Some(lines.len() - 1)
        );
        let values: Value =
            serde_saphyr::from_str(&lines[start + 1..lines.len() - 1].join("\n")).unwrap();
        assert_eq!(values, helm_values(&join));
        assert_eq!(values["hub"]["address"], join.hub_address);
        assert_eq!(values["token"], join.token);
        // Nothing but the fixed words reaches the command line itself.
        assert!(!lines[start].contains("evil"));
        assert!(!lines[start].contains("--create-namespace"));
        // The namespace comes first, with the label that enforces the restricted
        // profile (helm's --create-namespace would make it without).
        assert_eq!(
            lines[start - 3],
            format!(
                "kubectl apply --server-side --field-manager flotilla-install -f - <<'{NAMESPACE_END}'"
            )
        );
        assert_eq!(lines[start - 1], NAMESPACE_END);
        let namespace: Value = serde_json::from_str(lines[start - 2]).unwrap();
        assert_eq!(
            namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
    }
}
