//! From rendered manifests to bundle objects: identity, namespace defaulting, and the
//! Argo CD (and Helm) annotations that give each object its wave, hook and options.

use std::collections::BTreeSet;

use flotilla_common::bundle::{Hook, HookDeletePolicy, HookPhase, Object};
use flotilla_common::model::{ClusterFacts, Gvk, kind_rank};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{Error, Result};
use crate::app::check_sync_option;

pub const SYNC_WAVE: &str = "argocd.argoproj.io/sync-wave";
pub const HOOK: &str = "argocd.argoproj.io/hook";
pub const HOOK_DELETE_POLICY: &str = "argocd.argoproj.io/hook-delete-policy";
pub const SYNC_OPTIONS: &str = "argocd.argoproj.io/sync-options";
pub const COMPARE_OPTIONS: &str = "argocd.argoproj.io/compare-options";
const HELM_HOOK: &str = "helm.sh/hook";
const HELM_HOOK_WEIGHT: &str = "helm.sh/hook-weight";
const HELM_HOOK_DELETE_POLICY: &str = "helm.sh/hook-delete-policy";

/// Kinds that are cluster-scoped in every Kubernetes release, for rendering without a
/// cluster's discovery (the CLI) and for kinds discovery has not seen yet.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "CSIDriver",
    "CSINode",
    "VolumeAttachment",
    "CertificateSigningRequest",
    "FlowSchema",
    "PriorityLevelConfiguration",
];

/// Turns manifests into bundle objects. Objects of namespaced kinds without a
/// namespace get `default_namespace`, as Argo CD applies them into the destination
/// namespace. Two manifests for the same object are an error.
pub fn to_objects(
    manifests: Vec<Value>,
    default_namespace: Option<&str>,
    facts: Option<&ClusterFacts>,
) -> Result<Vec<Object>> {
    let crd_scopes = crd_scopes(&manifests);
    let mut seen = BTreeSet::new();
    let mut objects = Vec::with_capacity(manifests.len());
    for mut manifest in manifests {
        name_generated_hook(&mut manifest)?;
        let (gvk, name) = identity(&manifest)?;
        let namespaced = is_namespaced(&gvk, facts, &crd_scopes);
        let namespace = if namespaced {
            let ns = manifest
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|ns| !ns.is_empty())
                .map(str::to_owned)
                .or_else(|| default_namespace.map(str::to_owned));
            if let (Some(ns), Some(meta)) = (
                &ns,
                manifest.get_mut("metadata").and_then(Value::as_object_mut),
            ) {
                meta.insert("namespace".to_owned(), Value::String(ns.clone()));
            }
            ns
        } else {
            None
        };
        let described = describe(&gvk, namespace.as_deref(), &name);
        if !seen.insert((
            gvk.group.clone(),
            gvk.kind.clone(),
            namespace.clone(),
            name.clone(),
        )) {
            return Err(Error::Duplicate { object: described });
        }
        let annotations = manifest
            .pointer("/metadata/annotations")
            .cloned()
            .unwrap_or(Value::Null);
        let annotation = |key: &str| annotations.get(key).and_then(Value::as_str);

        let mut object = Object::new(gvk, namespace, name, &manifest);
        object.hook = hook(&annotation, &described)?;
        object.wave = wave(&annotation, object.hook.is_some(), &described)?;
        if let Some(options) = annotation(SYNC_OPTIONS) {
            for option in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                check_sync_option(option).map_err(|message| Error::Annotation {
                    object: described.clone(),
                    annotation: SYNC_OPTIONS,
                    message,
                })?;
                object.sync_options.push(option.to_owned());
            }
        }
        if let Some(options) = annotation(COMPARE_OPTIONS) {
            for option in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                check_compare_option(option).map_err(|message| Error::Annotation {
                    object: described.clone(),
                    annotation: COMPARE_OPTIONS,
                    message,
                })?;
            }
        }
        objects.push(object);
    }
    Ok(objects)
}

/// A hook with `metadata.generateName` and no name (Argo CD's own examples use
/// them) gets a name now: the prefix and a digest of the manifest, so the same
/// hook always has the same name and a bundle can address it. The agent creates
/// such a hook afresh on every run, as the apiserver would name a new one each
/// time. Only hooks may leave the name to the server: anything else must be
/// named to be tracked, pruned and compared, as in Argo CD.
fn name_generated_hook(manifest: &mut Value) -> Result<()> {
    let meta = manifest.get("metadata");
    let text = |key: &str| meta.and_then(|m| m.get(key)).and_then(Value::as_str);
    if text("name").is_some_and(|n| !n.is_empty()) {
        return Ok(());
    }
    let Some(prefix) = text("generateName").filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let is_hook = meta
        .and_then(|m| m.get("annotations"))
        .is_some_and(|a| a.get(HOOK).is_some() || a.get(HELM_HOOK).is_some());
    if !is_hook {
        return Err(Error::NotAnObject {
            what: format!(
                "metadata.generateName {prefix:?} without a name: only hooks \
                 (argocd.argoproj.io/hook or helm.sh/hook) may leave the name to the server"
            ),
        });
    }
    let digest = Sha256::digest(flotilla_common::bundle::canonical_json(manifest));
    let suffix: String = digest[..3].iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("{prefix}{}", &suffix[..5]);
    if let Some(meta) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("name".to_owned(), Value::String(name));
    }
    Ok(())
}

/// The compare options Flotilla honours: `IgnoreExtraneous` (an object that
/// left Git and is kept does not make the app OutOfSync) and
/// `ServerSideDiff=true`, which is how Flotilla always compares.
fn check_compare_option(option: &str) -> std::result::Result<(), String> {
    match option {
        "IgnoreExtraneous" | "ServerSideDiff=true" => Ok(()),
        "ServerSideDiff=false" => Err(
            "ServerSideDiff=false is not supported: Flotilla always compares against a \
             server-side apply dry run"
                .to_owned(),
        ),
        other => Err(format!(
            "unknown compare option {other:?} (IgnoreExtraneous or ServerSideDiff=true)"
        )),
    }
}

fn identity(manifest: &Value) -> Result<(Gvk, String)> {
    let text = |p: &str| manifest.pointer(p).and_then(Value::as_str).unwrap_or("");
    let (api_version, kind, name) = (text("/apiVersion"), text("/kind"), text("/metadata/name"));
    if api_version.is_empty() || kind.is_empty() || name.is_empty() {
        return Err(Error::NotAnObject {
            what: format!("apiVersion {api_version:?}, kind {kind:?}, name {name:?}"),
        });
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Ok((Gvk::new(group, version, kind), name.to_owned()))
}

/// `Kind namespace/name`, for messages.
pub fn describe(gvk: &Gvk, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", gvk.kind),
        None => format!("{} {name}", gvk.kind),
    }
}

/// The scope each CRD in this render declares, so its custom resources are
/// namespaced correctly before the cluster has ever seen the CRD. A CRD that is
/// never applied (`hook: Skip`) declares nothing, and no CRD overrides what the
/// cluster's own facts say (see [`is_namespaced`]); the agent checks scopes again
/// against live discovery.
fn crd_scopes(manifests: &[Value]) -> Vec<(String, String, bool)> {
    manifests
        .iter()
        .filter(|m| m.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition"))
        .filter(|m| {
            m.pointer("/metadata/annotations")
                .and_then(|a| a.get(HOOK))
                .and_then(Value::as_str)
                .is_none_or(|hooks| !hooks.split(',').any(|h| h.trim() == "Skip"))
        })
        .filter_map(|m| {
            let spec = m.get("spec")?;
            Some((
                spec.get("group")?.as_str()?.to_owned(),
                spec.pointer("/names/kind")?.as_str()?.to_owned(),
                spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
            ))
        })
        .collect()
}

/// Whether `gvk` is namespaced: as the cluster's facts say, then as a CRD of the
/// render says (a kind the cluster does not serve yet, outside Kubernetes' own
/// groups), then by the built-in list.
/// The cluster comes first, so a rendered CRD cannot make a ClusterRoleBinding look
/// namespaced and pass a project that allows only namespaces.
fn is_namespaced(gvk: &Gvk, facts: Option<&ClusterFacts>, crds: &[(String, String, bool)]) -> bool {
    let group_version = if gvk.group.is_empty() {
        gvk.version.clone()
    } else {
        format!("{}/{}", gvk.group, gvk.version)
    };
    if let Some(resource) = facts.and_then(|f| {
        f.api_resources
            .iter()
            .find(|r| r.kind == gvk.kind && r.group_version == group_version)
    }) {
        return resource.namespaced;
    }
    // Kubernetes' own groups (no dot, or under k8s.io) are not a CRD's to
    // redefine: the built-in list decides, whatever a rendered CRD claims.
    let kubernetes_group =
        !gvk.group.contains('.') || gvk.group == "k8s.io" || gvk.group.ends_with(".k8s.io");
    if !kubernetes_group
        && let Some((_, _, namespaced)) = crds
            .iter()
            .find(|(g, k, _)| *g == gvk.group && *k == gvk.kind)
    {
        return *namespaced;
    }
    !CLUSTER_SCOPED.contains(&gvk.kind.as_str())
}

fn hook<'a>(annotation: &impl Fn(&str) -> Option<&'a str>, object: &str) -> Result<Option<Hook>> {
    let bad = |annotation: &'static str, message: String| Error::Annotation {
        object: object.to_owned(),
        annotation,
        message,
    };
    if let Some(value) = annotation(HOOK) {
        let phases: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let [phase] = phases[..] else {
            return Err(bad(
                HOOK,
                format!(
                    "{value:?}: Flotilla runs a hook in one phase; split it into one object per phase"
                ),
            ));
        };
        let phase = match phase {
            "PreSync" => HookPhase::PreSync,
            "Sync" => HookPhase::Sync,
            "PostSync" => HookPhase::PostSync,
            "SyncFail" => HookPhase::SyncFail,
            "Skip" => HookPhase::Skip,
            "PreDelete" => HookPhase::PreDelete,
            "PostDelete" => HookPhase::PostDelete,
            other => {
                return Err(bad(
                    HOOK,
                    format!(
                        "unknown phase {other:?} (PreSync, Sync, PostSync, SyncFail, Skip, \
                         PreDelete or PostDelete)"
                    ),
                ));
            }
        };
        let delete_policy = delete_policies(annotation(HOOK_DELETE_POLICY), |p| match p {
            "HookSucceeded" => Some(HookDeletePolicy::HookSucceeded),
            "HookFailed" => Some(HookDeletePolicy::HookFailed),
            "BeforeHookCreation" => Some(HookDeletePolicy::BeforeHookCreation),
            _ => None,
        })
        .map_err(|m| bad(HOOK_DELETE_POLICY, m))?;
        return Ok(Some(Hook {
            phase,
            delete_policy,
        }));
    }
    // Helm hooks map onto Argo CD phases, as Argo CD maps them.
    let Some(value) = annotation(HELM_HOOK) else {
        return Ok(None);
    };
    let mut phase = None;
    let mut on_delete = None;
    for h in value.split(',').map(str::trim) {
        let mapped = match h {
            "pre-install" | "pre-upgrade" => HookPhase::PreSync,
            "post-install" | "post-upgrade" => HookPhase::PostSync,
            // Argo CD runs the delete hooks when the app is deleted.
            "pre-delete" => {
                on_delete = Some(HookPhase::PreDelete);
                continue;
            }
            "post-delete" => {
                on_delete = Some(HookPhase::PostDelete);
                continue;
            }
            "crd-install" => continue,
            // Argo CD ignores test and rollback hooks: they never run on sync.
            "test" | "test-success" | "test-failure" | "pre-rollback" | "post-rollback" => {
                HookPhase::Skip
            }
            other => return Err(bad(HELM_HOOK, format!("unknown Helm hook {other:?}"))),
        };
        phase = Some(match (phase, mapped) {
            (Some(HookPhase::PreSync), _) | (_, HookPhase::PreSync) => HookPhase::PreSync,
            (_, p) => p,
        });
    }
    let phase = match (phase, on_delete) {
        (Some(HookPhase::Skip) | None, Some(delete)) => Some(delete),
        (Some(sync), Some(_)) => {
            return Err(bad(
                HELM_HOOK,
                format!(
                    "{value:?} runs on sync ({sync:?}) and on delete; Flotilla runs a hook in one \
                     phase, so split it into one object per phase"
                ),
            ));
        }
        (phase, None) => phase,
    };
    let Some(phase) = phase else {
        return Ok(None);
    };
    let delete_policy = delete_policies(annotation(HELM_HOOK_DELETE_POLICY), |p| match p {
        "hook-succeeded" => Some(HookDeletePolicy::HookSucceeded),
        "hook-failed" => Some(HookDeletePolicy::HookFailed),
        "before-hook-creation" => Some(HookDeletePolicy::BeforeHookCreation),
        _ => None,
    })
    .map_err(|m| bad(HELM_HOOK_DELETE_POLICY, m))?;
    Ok(Some(Hook {
        phase,
        delete_policy,
    }))
}

fn delete_policies(
    value: Option<&str>,
    parse: impl Fn(&str) -> Option<HookDeletePolicy>,
) -> std::result::Result<Vec<HookDeletePolicy>, String> {
    value
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| parse(p).ok_or_else(|| format!("unknown delete policy {p:?}")))
        .collect()
}

fn wave<'a>(
    annotation: &impl Fn(&str) -> Option<&'a str>,
    is_hook: bool,
    object: &str,
) -> Result<i32> {
    let (key, value) = match (annotation(SYNC_WAVE), annotation(HELM_HOOK_WEIGHT)) {
        (Some(v), _) => (SYNC_WAVE, v),
        (None, Some(v)) if is_hook => (HELM_HOOK_WEIGHT, v),
        _ => return Ok(0),
    };
    value.trim().parse().map_err(|_| Error::Annotation {
        object: object.to_owned(),
        annotation: key,
        message: format!("{value:?} is not a whole number"),
    })
}

/// The order objects are applied in: phase, then wave, then Argo CD's kind order,
/// then namespace and name.
pub fn sort_for_apply(objects: &mut [Object]) {
    objects.sort_by(|a, b| apply_key(a).cmp(&apply_key(b)));
}

fn apply_key(o: &Object) -> (u8, i32, usize, &str, &Option<String>, &str) {
    let phase = match o.hook.as_ref().map(|h| h.phase) {
        Some(HookPhase::PreSync) => 0,
        None | Some(HookPhase::Sync) => 1,
        Some(HookPhase::PostSync) => 2,
        Some(HookPhase::SyncFail) => 3,
        Some(HookPhase::Skip) => 4,
        Some(HookPhase::PreDelete) => 5,
        Some(HookPhase::PostDelete) => 6,
    };
    let kind = kind_rank(&o.gvk.kind);
    (phase, o.wave, kind, &o.gvk.kind, &o.namespace, &o.name)
}
