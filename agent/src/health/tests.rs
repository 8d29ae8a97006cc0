use flotilla_common::model::Health::{self, *};
use serde_json::{Value, json};

use super::{assess, assess_live};

fn object(api_version: &str, kind: &str, rest: Value) -> Value {
    let mut o = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}});
    if let (Some(o), Some(rest)) = (o.as_object_mut(), rest.as_object()) {
        for (k, v) in rest {
            o.insert(k.clone(), v.clone());
        }
    }
    o
}

/// Runs a table of (case name, object body, expected health) for one kind.
fn table(api_version: &str, kind: &str, cases: &[(&str, Value, Health)]) {
    for (name, rest, want) in cases {
        let got = assess(&object(api_version, kind, rest.clone()));
        assert_eq!(got.health, *want, "{kind} / {name}: {got:?}");
    }
}

#[test]
fn deployment_follows_generation_replicas_and_pause() {
    let meta = json!({"name": "x", "generation": 2});
    table(
        "apps/v1",
        "Deployment",
        &[
            ("paused", json!({"spec": {"paused": true}}), Suspended),
            (
                "not observed",
                json!({"metadata": meta, "spec": {"replicas": 1}, "status": {"observedGeneration": 1}}),
                Progressing,
            ),
            (
                "updating",
                json!({"metadata": meta, "spec": {"replicas": 3}, "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3}}),
                Progressing,
            ),
            (
                "old replicas terminating",
                json!({"metadata": meta, "spec": {"replicas": 2}, "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}}),
                Progressing,
            ),
            (
                "not available",
                json!({"metadata": meta, "spec": {"replicas": 2}, "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}}),
                Progressing,
            ),
            (
                "deadline exceeded",
                json!({"metadata": meta, "spec": {"replicas": 2}, "status": {"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}}),
                Degraded,
            ),
            (
                "rolled out",
                json!({"metadata": meta, "spec": {"replicas": 2}, "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}}),
                Healthy,
            ),
            (
                "scaled to zero",
                json!({"metadata": meta, "spec": {"replicas": 0}, "status": {"observedGeneration": 2}}),
                Healthy,
            ),
        ],
    );
}

#[test]
fn stateful_set_waits_for_ready_replicas_and_revision() {
    let meta = json!({"name": "x", "generation": 1});
    table(
        "apps/v1",
        "StatefulSet",
        &[
            (
                "never observed",
                json!({"metadata": meta, "spec": {"replicas": 1}}),
                Progressing,
            ),
            (
                "not ready",
                json!({"metadata": meta, "spec": {"replicas": 2}, "status": {"observedGeneration": 1, "readyReplicas": 1}}),
                Progressing,
            ),
            (
                "old revision",
                json!({"metadata": meta, "spec": {"replicas": 2}, "status": {"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "b"}}),
                Progressing,
            ),
            (
                "partition reached",
                json!({"metadata": meta, "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}, "status": {"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "b"}}),
                Healthy,
            ),
            (
                "on delete",
                json!({"metadata": meta, "spec": {"replicas": 1, "updateStrategy": {"type": "OnDelete"}}, "status": {"observedGeneration": 1, "readyReplicas": 1, "currentRevision": "a", "updateRevision": "b"}}),
                Healthy,
            ),
            (
                "rolled out",
                json!({"metadata": meta, "spec": {"replicas": 2}, "status": {"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 2, "currentRevision": "b", "updateRevision": "b"}}),
                Healthy,
            ),
        ],
    );
}

#[test]
fn daemon_set_waits_for_every_scheduled_pod() {
    let meta = json!({"name": "x", "generation": 3});
    table(
        "apps/v1",
        "DaemonSet",
        &[
            (
                "not observed",
                json!({"metadata": meta, "status": {"observedGeneration": 2}}),
                Progressing,
            ),
            (
                "updating",
                json!({"metadata": meta, "status": {"observedGeneration": 3, "desiredNumberScheduled": 2, "updatedNumberScheduled": 1, "numberAvailable": 2}}),
                Progressing,
            ),
            (
                "unavailable",
                json!({"metadata": meta, "status": {"observedGeneration": 3, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 1}}),
                Progressing,
            ),
            (
                "ready",
                json!({"metadata": meta, "status": {"observedGeneration": 3, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 2}}),
                Healthy,
            ),
        ],
    );
}

#[test]
fn replica_set_reports_replica_failure() {
    let meta = json!({"name": "x", "generation": 1});
    table(
        "apps/v1",
        "ReplicaSet",
        &[
            (
                "failure",
                json!({"metadata": meta, "spec": {"replicas": 1}, "status": {"observedGeneration": 1, "conditions": [{"type": "ReplicaFailure", "status": "True", "message": "quota"}]}}),
                Degraded,
            ),
            (
                "short",
                json!({"metadata": meta, "spec": {"replicas": 2}, "status": {"observedGeneration": 1, "availableReplicas": 1}}),
                Progressing,
            ),
            (
                "full",
                json!({"metadata": meta, "spec": {"replicas": 2}, "status": {"observedGeneration": 1, "availableReplicas": 2}}),
                Healthy,
            ),
        ],
    );
}

#[test]
fn pod_is_degraded_in_a_restart_loop() {
    let ready = json!([{"type": "Ready", "status": "True"}]);
    table(
        "v1",
        "Pod",
        &[
            (
                "pending",
                json!({"status": {"phase": "Pending"}}),
                Progressing,
            ),
            (
                "image pull",
                json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "app", "state": {"waiting": {"reason": "ErrImagePull"}}}]}}),
                Degraded,
            ),
            (
                "crash loop",
                json!({"status": {"phase": "Running", "containerStatuses": [{"name": "app", "restartCount": 7, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
                Degraded,
            ),
            (
                "running ready",
                json!({"status": {"phase": "Running", "conditions": ready}}),
                Healthy,
            ),
            (
                "running not ready",
                json!({"status": {"phase": "Running"}}),
                Progressing,
            ),
            (
                "run to completion still running",
                json!({"spec": {"restartPolicy": "Never"}, "status": {"phase": "Running", "conditions": ready}}),
                Progressing,
            ),
            (
                "succeeded",
                json!({"status": {"phase": "Succeeded"}}),
                Healthy,
            ),
            ("failed", json!({"status": {"phase": "Failed"}}), Degraded),
            ("unknown", json!({"status": {"phase": "Unknown"}}), Unknown),
            (
                "deleting",
                json!({"metadata": {"name": "x", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running", "conditions": ready}}),
                Progressing,
            ),
        ],
    );
}

#[test]
fn job_follows_complete_failed_and_suspend() {
    table(
        "batch/v1",
        "Job",
        &[
            ("running", json!({"status": {"active": 1}}), Progressing),
            ("suspended", json!({"spec": {"suspend": true}}), Suspended),
            (
                "complete",
                json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}),
                Healthy,
            ),
            (
                "failed",
                json!({"status": {"conditions": [{"type": "Failed", "status": "True", "message": "backoff limit"}]}}),
                Degraded,
            ),
        ],
    );
}

#[test]
fn cron_job_is_degraded_when_the_last_run_did_not_succeed() {
    table(
        "batch/v1",
        "CronJob",
        &[
            ("suspended", json!({"spec": {"suspend": true}}), Suspended),
            ("never ran", json!({"status": {}}), Healthy),
            (
                "succeeded",
                json!({"status": {"lastScheduleTime": "2026-01-01T00:00:00Z", "lastSuccessfulTime": "2026-01-01T00:00:05Z"}}),
                Healthy,
            ),
            (
                "running",
                json!({"status": {"lastScheduleTime": "2026-01-01T00:01:00Z", "lastSuccessfulTime": "2026-01-01T00:00:05Z", "active": [{"name": "j"}]}}),
                Healthy,
            ),
            (
                "last run failed",
                json!({"status": {"lastScheduleTime": "2026-01-01T00:01:00Z", "lastSuccessfulTime": "2026-01-01T00:00:05Z"}}),
                Degraded,
            ),
        ],
    );
}

#[test]
fn load_balancer_service_and_ingress_wait_for_an_address() {
    let address = json!({"loadBalancer": {"ingress": [{"ip": "127.0.0.2"}]}});
    table(
        "v1",
        "Service",
        &[
            (
                "cluster ip",
                json!({"spec": {"type": "ClusterIP"}}),
                Healthy,
            ),
            (
                "lb pending",
                json!({"spec": {"type": "LoadBalancer"}, "status": {}}),
                Progressing,
            ),
            (
                "lb ready",
                json!({"spec": {"type": "LoadBalancer"}, "status": address}),
                Healthy,
            ),
        ],
    );
    table(
        "networking.k8s.io/v1",
        "Ingress",
        &[
            ("pending", json!({"status": {}}), Progressing),
            ("ready", json!({"status": address}), Healthy),
        ],
    );
}

#[test]
fn pvc_follows_its_phase() {
    table(
        "v1",
        "PersistentVolumeClaim",
        &[
            (
                "pending",
                json!({"status": {"phase": "Pending"}}),
                Progressing,
            ),
            ("bound", json!({"status": {"phase": "Bound"}}), Healthy),
            ("lost", json!({"status": {"phase": "Lost"}}), Degraded),
        ],
    );
}

#[test]
fn hpa_is_degraded_when_it_cannot_scale() {
    table(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        &[
            ("no conditions", json!({"status": {}}), Progressing),
            (
                "cannot get metrics",
                json!({"status": {"conditions": [{"type": "AbleToScale", "status": "True"}, {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric"}]}}),
                Degraded,
            ),
            (
                "cannot scale",
                json!({"status": {"conditions": [{"type": "AbleToScale", "status": "False", "reason": "FailedGetScale"}]}}),
                Degraded,
            ),
            (
                "scaling",
                json!({"status": {"conditions": [{"type": "AbleToScale", "status": "True"}, {"type": "ScalingActive", "status": "True"}]}}),
                Healthy,
            ),
        ],
    );
}

#[test]
fn api_service_and_crd_follow_their_conditions() {
    table(
        "apiregistration.k8s.io/v1",
        "APIService",
        &[
            ("no status", json!({}), Progressing),
            (
                "unavailable",
                json!({"status": {"conditions": [{"type": "Available", "status": "False", "reason": "MissingEndpoints"}]}}),
                Progressing,
            ),
            (
                "available",
                json!({"status": {"conditions": [{"type": "Available", "status": "True"}]}}),
                Healthy,
            ),
        ],
    );
    table(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        &[
            ("new", json!({"status": {}}), Progressing),
            (
                "names conflict",
                json!({"status": {"conditions": [{"type": "NamesAccepted", "status": "False"}]}}),
                Degraded,
            ),
            (
                "established",
                json!({"status": {"conditions": [{"type": "NamesAccepted", "status": "True"}, {"type": "Established", "status": "True"}]}}),
                Healthy,
            ),
        ],
    );
}

#[test]
fn custom_resources_use_standard_conditions_then_phase() {
    let meta = json!({"name": "x", "generation": 2});
    table(
        "example.com/v1",
        "Widget",
        &[
            ("no status", json!({"spec": {}}), Healthy),
            (
                "stale observation",
                json!({"metadata": meta, "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}}),
                Progressing,
            ),
            (
                "ready",
                json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
                Healthy,
            ),
            (
                "not ready yet",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Provisioning"}]}}),
                Progressing,
            ),
            (
                "ready failed",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "InstallFailed"}]}}),
                Degraded,
            ),
            (
                "available",
                json!({"status": {"conditions": [{"type": "Available", "status": "True"}]}}),
                Healthy,
            ),
            (
                "stalled",
                json!({"status": {"conditions": [{"type": "Stalled", "status": "True"}, {"type": "Ready", "status": "True"}]}}),
                Degraded,
            ),
            (
                "reconciling",
                json!({"status": {"conditions": [{"type": "Reconciling", "status": "True"}]}}),
                Progressing,
            ),
            (
                "phase running",
                json!({"status": {"phase": "Running"}}),
                Healthy,
            ),
            (
                "phase pending",
                json!({"status": {"phase": "Pending"}}),
                Progressing,
            ),
            (
                "phase failed",
                json!({"status": {"phase": "Failed"}}),
                Degraded,
            ),
            (
                "phase paused",
                json!({"status": {"phase": "Paused"}}),
                Suspended,
            ),
            (
                "phase odd",
                json!({"status": {"phase": "Sideways"}}),
                Unknown,
            ),
        ],
    );
}

#[test]
fn absent_objects_are_missing_and_plain_objects_healthy() {
    assert_eq!(assess_live(None).health, Missing);
    let config_map = object("v1", "ConfigMap", json!({"data": {"a": "b"}}));
    assert_eq!(assess(&config_map).health, Healthy);
    let deleting = object(
        "v1",
        "ConfigMap",
        json!({"metadata": {"name": "x", "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    assert_eq!(assess(&deleting).health, Progressing);
}
