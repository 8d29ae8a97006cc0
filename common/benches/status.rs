//! Encoding and decoding the Status of an app with 1,000 resources, as a frame.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flotilla_common::frame::{self, Limits};
use flotilla_common::message::{
    Channel, DriftEntry, Event, EventKind, Message, ResourceStatus, Status,
};
use flotilla_common::model::{AppRef, Gvk, Health, ResourceRef, SyncStatus, Timestamp};

fn status_of_1000_resources() -> Message {
    let resource = |i: usize| ResourceRef {
        gvk: Gvk::new("apps", "v1", "Deployment"),
        namespace: Some("production".to_owned()),
        name: format!("service-{i:04}"),
    };
    Message::Status(Status {
        sequence: 1,
        app: AppRef::new("default", "big"),
        generation: 7,
        sync: SyncStatus::OutOfSync,
        health: Health::Progressing,
        resources: (0..1000)
            .map(|i| ResourceStatus {
                resource: resource(i),
                sync: SyncStatus::Synced,
                health: Health::Healthy,
                message: Some("deployment has minimum availability".to_owned()),
            })
            .collect(),
        drift: (0..50)
            .map(|i| DriftEntry {
                resource: resource(i),
                path: ".spec.replicas".to_owned(),
                old: Some("3".to_owned()),
                new: Some("5".to_owned()),
                field_manager: Some("kubectl-scale".to_owned()),
            })
            .collect(),
        events: (0..20)
            .map(|i| Event {
                at: Timestamp(1_800_000_000 + i),
                kind: EventKind::Normal,
                reason: "ResourceUpdated".to_owned(),
                message: "updated".to_owned(),
                resource: Some(resource(i as usize)),
            })
            .collect(),
        operation: None,
    })
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let message = status_of_1000_resources();
    let bytes = frame::encode(&message, &limits).expect("invariant: encodable");
    let mut group = c.benchmark_group("status_1000_resources");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode", |b| {
        b.iter(|| frame::encode(black_box(&message), &limits).expect("encode"))
    });
    group.bench_function("decode", |b| {
        b.iter(|| frame::decode(black_box(&bytes), Channel::Status, &limits).expect("decode"))
    });
    group.finish();
    println!("status frame: {} bytes", bytes.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
