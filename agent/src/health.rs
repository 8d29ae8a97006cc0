//! Health of live Kubernetes objects, judged the way kstatus and Argo CD's built-in
//! checks judge it, from the object alone (no API calls), so it can run on every
//! watch event.
//!
//! Start with [`assess`]: it dispatches on `apiVersion`/`kind` to one rule per
//! built-in kind, and falls back to [`generic`] conditions (`Ready`, `Available`,
//! `Stalled`, `Reconciling`) and `status.phase` for custom resources. Objects with
//! nothing to judge (a ConfigMap, a Role) are `Healthy`, as in Argo CD.

use flotilla_common::model::Health;
use serde_json::Value;

#[cfg(test)]
mod tests;

/// The health of one object and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// The verdict.
    pub health: Health,
    /// A short human explanation; empty when healthy for the obvious reason.
    pub message: String,
}

impl Assessment {
    fn new(health: Health, message: impl Into<String>) -> Self {
        Self {
            health,
            message: message.into(),
        }
    }

    fn healthy() -> Self {
        Self::new(Health::Healthy, "")
    }
}

/// The health of a live object, or `Missing` when it does not exist.
pub fn assess_live(live: Option<&Value>) -> Assessment {
    match live {
        Some(object) => assess(object),
        None => Assessment::new(Health::Missing, "object does not exist"),
    }
}

/// The health of a live object.
pub fn assess(object: &Value) -> Assessment {
    if object.pointer("/metadata/deletionTimestamp").is_some() && kind(object) != "Pod" {
        return Assessment::new(Health::Progressing, "object is being deleted");
    }
    let group = api_group(object);
    match (group, kind(object)) {
        ("apps", "Deployment") => deployment(object),
        ("apps", "StatefulSet") => stateful_set(object),
        ("apps", "DaemonSet") => daemon_set(object),
        ("apps", "ReplicaSet") | ("", "ReplicationController") => replica_set(object),
        ("", "Pod") => pod(object),
        ("batch", "Job") => job(object),
        ("batch", "CronJob") => cron_job(object),
        ("", "Service") => service(object),
        ("networking.k8s.io", "Ingress") => ingress(object),
        ("", "PersistentVolumeClaim") => pvc(object),
        ("autoscaling", "HorizontalPodAutoscaler") => hpa(object),
        ("apiregistration.k8s.io", "APIService") => api_service(object),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(object),
        ("", "Namespace") => namespace(object),
        _ => generic(object),
    }
}

fn kind(object: &Value) -> &str {
    object.get("kind").and_then(Value::as_str).unwrap_or("")
}

fn api_group(object: &Value) -> &str {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    match api_version.split_once('/') {
        Some((group, _)) => group,
        None => "",
    }
}

fn int(object: &Value, pointer: &str) -> Option<i64> {
    object.pointer(pointer).and_then(Value::as_i64)
}

fn text<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

fn flag(object: &Value, pointer: &str) -> bool {
    object
        .pointer(pointer)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// A `status.conditions` entry.
struct Condition<'a> {
    status: &'a str,
    reason: &'a str,
    message: &'a str,
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<Condition<'a>> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        .map(|c| Condition {
            status: c.get("status").and_then(Value::as_str).unwrap_or("Unknown"),
            reason: c.get("reason").and_then(Value::as_str).unwrap_or(""),
            message: c.get("message").and_then(Value::as_str).unwrap_or(""),
        })
}

/// `Some(message)` when the controller has not yet seen the latest spec.
fn generation_pending(object: &Value) -> Option<String> {
    let generation = int(object, "/metadata/generation")?;
    let observed = int(object, "/status/observedGeneration").unwrap_or(0);
    (observed < generation).then(|| {
        format!("waiting for the controller to observe generation {generation} (saw {observed})")
    })
}

fn deployment(object: &Value) -> Assessment {
    if flag(object, "/spec/paused") {
        return Assessment::new(Health::Suspended, "deployment is paused");
    }
    if let Some(message) = generation_pending(object) {
        return Assessment::new(Health::Progressing, message);
    }
    if let Some(c) = condition(object, "Progressing")
        && c.reason == "ProgressDeadlineExceeded"
    {
        return Assessment::new(
            Health::Degraded,
            format!("deployment exceeded its progress deadline: {}", c.message),
        );
    }
    let want = int(object, "/spec/replicas").unwrap_or(1);
    let replicas = int(object, "/status/replicas").unwrap_or(0);
    let updated = int(object, "/status/updatedReplicas").unwrap_or(0);
    let available = int(object, "/status/availableReplicas").unwrap_or(0);
    if updated < want {
        return Assessment::new(
            Health::Progressing,
            format!("{updated} of {want} replicas updated"),
        );
    }
    if replicas > updated {
        return Assessment::new(
            Health::Progressing,
            format!("{} old replicas pending termination", replicas - updated),
        );
    }
    if available < updated {
        return Assessment::new(
            Health::Progressing,
            format!("{available} of {updated} updated replicas available"),
        );
    }
    Assessment::healthy()
}

fn stateful_set(object: &Value) -> Assessment {
    if let Some(message) = generation_pending(object) {
        return Assessment::new(Health::Progressing, message);
    }
    let want = int(object, "/spec/replicas").unwrap_or(1);
    let ready = int(object, "/status/readyReplicas").unwrap_or(0);
    if ready < want {
        return Assessment::new(
            Health::Progressing,
            format!("{ready} of {want} replicas ready"),
        );
    }
    if text(object, "/spec/updateStrategy/type") == Some("OnDelete") {
        return Assessment::healthy();
    }
    let updated = int(object, "/status/updatedReplicas").unwrap_or(0);
    if let Some(partition) = int(object, "/spec/updateStrategy/rollingUpdate/partition")
        && partition > 0
    {
        let expected = (want - partition).max(0);
        return if updated < expected {
            Assessment::new(
                Health::Progressing,
                format!("{updated} of {expected} partitioned replicas updated"),
            )
        } else {
            Assessment::healthy()
        };
    }
    let current = text(object, "/status/currentRevision");
    let update = text(object, "/status/updateRevision");
    if current != update {
        return Assessment::new(
            Health::Progressing,
            format!("{updated} of {want} replicas on the new revision"),
        );
    }
    Assessment::healthy()
}

fn daemon_set(object: &Value) -> Assessment {
    if let Some(message) = generation_pending(object) {
        return Assessment::new(Health::Progressing, message);
    }
    if text(object, "/spec/updateStrategy/type") == Some("OnDelete") {
        return Assessment::healthy();
    }
    let desired = int(object, "/status/desiredNumberScheduled").unwrap_or(0);
    let updated = int(object, "/status/updatedNumberScheduled").unwrap_or(0);
    let available = int(object, "/status/numberAvailable").unwrap_or(0);
    if updated < desired {
        return Assessment::new(
            Health::Progressing,
            format!("{updated} of {desired} pods updated"),
        );
    }
    if available < desired {
        return Assessment::new(
            Health::Progressing,
            format!("{available} of {desired} pods available"),
        );
    }
    Assessment::healthy()
}

fn replica_set(object: &Value) -> Assessment {
    if let Some(message) = generation_pending(object) {
        return Assessment::new(Health::Progressing, message);
    }
    if let Some(c) = condition(object, "ReplicaFailure")
        && c.status == "True"
    {
        return Assessment::new(Health::Degraded, c.message.to_owned());
    }
    let want = int(object, "/spec/replicas").unwrap_or(1);
    let available = int(object, "/status/availableReplicas").unwrap_or(0);
    if available < want {
        return Assessment::new(
            Health::Progressing,
            format!("{available} of {want} replicas available"),
        );
    }
    Assessment::healthy()
}

/// A container that will not start by itself: image pull errors, crash loops,
/// config errors. Matches Argo CD's "Err*", "*Error" and "*BackOff" waiting reasons.
fn stuck_container(object: &Value) -> Option<String> {
    let statuses = ["/status/initContainerStatuses", "/status/containerStatuses"];
    statuses
        .iter()
        .filter_map(|p| object.pointer(p).and_then(Value::as_array))
        .flatten()
        .find_map(|c| {
            let reason = c.pointer("/state/waiting/reason").and_then(Value::as_str)?;
            let stuck = reason.starts_with("Err")
                || reason.ends_with("Error")
                || reason.ends_with("BackOff");
            stuck.then(|| {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
                let restarts = c.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
                format!("container {name} is waiting: {reason} (restarted {restarts} times)")
            })
        })
}

fn pod(object: &Value) -> Assessment {
    if object.pointer("/metadata/deletionTimestamp").is_some() {
        return Assessment::new(Health::Progressing, "pod is being deleted");
    }
    match text(object, "/status/phase").unwrap_or("Pending") {
        "Succeeded" => Assessment::healthy(),
        "Failed" => Assessment::new(
            Health::Degraded,
            text(object, "/status/message").unwrap_or("pod failed"),
        ),
        "Pending" => match stuck_container(object) {
            Some(message) => Assessment::new(Health::Degraded, message),
            None => Assessment::new(Health::Progressing, "pod is pending"),
        },
        "Running" => {
            if let Some(message) = stuck_container(object) {
                return Assessment::new(Health::Degraded, message);
            }
            let restart = text(object, "/spec/restartPolicy").unwrap_or("Always");
            if restart != "Always" {
                // A run-to-completion pod is only done when it has succeeded.
                return Assessment::new(Health::Progressing, "pod is running");
            }
            match condition(object, "Ready") {
                Some(c) if c.status == "True" => Assessment::healthy(),
                _ => Assessment::new(Health::Progressing, "pod is not ready"),
            }
        }
        other => Assessment::new(Health::Unknown, format!("pod phase is {other}")),
    }
}

fn job(object: &Value) -> Assessment {
    if let Some(c) = condition(object, "Failed")
        && c.status == "True"
    {
        return Assessment::new(Health::Degraded, format!("job failed: {}", c.message));
    }
    for done in ["Complete", "SuccessCriteriaMet"] {
        if let Some(c) = condition(object, done)
            && c.status == "True"
        {
            return Assessment::healthy();
        }
    }
    if flag(object, "/spec/suspend") {
        return Assessment::new(Health::Suspended, "job is suspended");
    }
    Assessment::new(Health::Progressing, "job is running")
}

fn cron_job(object: &Value) -> Assessment {
    if flag(object, "/spec/suspend") {
        return Assessment::new(Health::Suspended, "cronjob is suspended");
    }
    let Some(scheduled) = text(object, "/status/lastScheduleTime") else {
        return Assessment::healthy();
    };
    let active = object
        .pointer("/status/active")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    // RFC 3339 UTC timestamps from the apiserver compare correctly as strings.
    let succeeded = text(object, "/status/lastSuccessfulTime");
    if !active && succeeded.is_none_or(|s| s < scheduled) {
        return Assessment::new(Health::Degraded, "the last scheduled job did not succeed");
    }
    Assessment::healthy()
}

fn has_load_balancer_ingress(object: &Value) -> bool {
    object
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn service(object: &Value) -> Assessment {
    if text(object, "/spec/type") == Some("LoadBalancer") && !has_load_balancer_ingress(object) {
        return Assessment::new(Health::Progressing, "waiting for a load balancer address");
    }
    Assessment::healthy()
}

fn ingress(object: &Value) -> Assessment {
    if has_load_balancer_ingress(object) {
        Assessment::healthy()
    } else {
        Assessment::new(Health::Progressing, "waiting for an ingress address")
    }
}

fn pvc(object: &Value) -> Assessment {
    match text(object, "/status/phase") {
        Some("Bound") => Assessment::healthy(),
        Some("Pending") | None => Assessment::new(Health::Progressing, "claim is not bound yet"),
        Some("Lost") => Assessment::new(Health::Degraded, "claim lost its volume"),
        Some(other) => Assessment::new(Health::Unknown, format!("claim phase is {other}")),
    }
}

fn hpa(object: &Value) -> Assessment {
    let conditions = object
        .pointer("/status/conditions")
        .and_then(Value::as_array);
    let Some(conditions) = conditions.filter(|c| !c.is_empty()) else {
        return Assessment::new(Health::Progressing, "waiting to autoscale");
    };
    for c in conditions {
        let kind = c.get("type").and_then(Value::as_str).unwrap_or("");
        let status = c.get("status").and_then(Value::as_str).unwrap_or("");
        let reason = c.get("reason").and_then(Value::as_str).unwrap_or("");
        let message = c.get("message").and_then(Value::as_str).unwrap_or("");
        let failed = (kind == "AbleToScale" && status == "False")
            || (kind == "ScalingActive" && status == "False" && reason.starts_with("Failed"));
        if failed {
            return Assessment::new(Health::Degraded, format!("{reason}: {message}"));
        }
    }
    Assessment::healthy()
}

fn api_service(object: &Value) -> Assessment {
    match condition(object, "Available") {
        Some(c) if c.status == "True" => Assessment::healthy(),
        Some(c) => Assessment::new(Health::Progressing, format!("{}: {}", c.reason, c.message)),
        None => Assessment::new(
            Health::Progressing,
            "waiting for the service to be available",
        ),
    }
}

fn crd(object: &Value) -> Assessment {
    if let Some(c) = condition(object, "NamesAccepted")
        && c.status == "False"
    {
        return Assessment::new(
            Health::Degraded,
            format!("names not accepted: {}", c.message),
        );
    }
    match condition(object, "Established") {
        Some(c) if c.status == "True" => Assessment::healthy(),
        _ => Assessment::new(Health::Progressing, "waiting to be established"),
    }
}

fn namespace(object: &Value) -> Assessment {
    match text(object, "/status/phase") {
        Some("Terminating") => Assessment::new(Health::Progressing, "namespace is terminating"),
        _ => Assessment::healthy(),
    }
}

/// Custom resources: kstatus' standard conditions, then a `status.phase` word.
pub fn generic(object: &Value) -> Assessment {
    if object.get("status").is_none() {
        return Assessment::healthy();
    }
    if let Some(message) = generation_pending(object)
        && object.pointer("/status/observedGeneration").is_some()
    {
        return Assessment::new(Health::Progressing, message);
    }
    if let Some(c) = condition(object, "Stalled")
        && c.status == "True"
    {
        return Assessment::new(Health::Degraded, format!("stalled: {}", c.message));
    }
    if let Some(c) = condition(object, "Reconciling")
        && c.status == "True"
    {
        return Assessment::new(Health::Progressing, format!("reconciling: {}", c.message));
    }
    for kind in ["Ready", "Available"] {
        if let Some(c) = condition(object, kind) {
            return match c.status {
                "True" => Assessment::healthy(),
                "False" if looks_failed(c.reason) => {
                    Assessment::new(Health::Degraded, format!("{}: {}", c.reason, c.message))
                }
                _ => Assessment::new(
                    Health::Progressing,
                    format!("{kind} is {}: {}", c.status, c.message),
                ),
            };
        }
    }
    if let Some(phase) = text(object, "/status/phase") {
        return phase_health(phase);
    }
    Assessment::healthy()
}

fn looks_failed(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    ["fail", "error", "invalid", "degraded"]
        .iter()
        .any(|w| reason.contains(w))
}

fn phase_health(phase: &str) -> Assessment {
    let health = match phase.to_ascii_lowercase().as_str() {
        "running" | "succeeded" | "active" | "ready" | "bound" | "healthy" | "available"
        | "complete" | "completed" | "deployed" | "established" => Health::Healthy,
        "pending" | "progressing" | "creating" | "provisioning" | "initializing" | "updating"
        | "reconciling" | "deploying" | "starting" => Health::Progressing,
        "failed" | "error" | "degraded" | "lost" | "crashloopbackoff" => Health::Degraded,
        "suspended" | "paused" => Health::Suspended,
        _ => Health::Unknown,
    };
    let message = if health == Health::Healthy {
        String::new()
    } else {
        format!("phase is {phase}")
    };
    Assessment::new(health, message)
}
