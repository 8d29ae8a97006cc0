//! Signing and verifying a 1 MiB bundle. Verifying must reach at least 500 MiB/s on
//! one core: it is bounded by hashing, and the agent does it for every bundle.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flotilla_common::bundle::{Bundle, Object, Source, SyncPolicy};
use flotilla_common::model::{AppRef, Gvk, Timestamp};
use flotilla_common::project::ProjectRules;
use flotilla_common::signing::{self, BundleSigner, Expectation, KeySet};
use serde_json::json;

const NOW: Timestamp = Timestamp(1_800_000_000);

/// About 1 MiB of ConfigMaps, 256 objects of roughly 4 KiB each.
fn one_mib_bundle() -> Bundle {
    let objects = (0..256)
        .map(|i| {
            Object::new(
                Gvk::new("", "v1", "ConfigMap"),
                Some("default".to_owned()),
                format!("cm-{i}"),
                &json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": format!("cm-{i}"), "namespace": "default"},
                    "data": {"blob": "x".repeat(4000)},
                }),
            )
        })
        .collect();
    Bundle {
        app: AppRef::new("default", "big"),
        cluster: "east".to_owned(),
        source: Source::default(),
        generation: 1,
        created_at: NOW,
        not_after: Timestamp(NOW.0 + 3600),
        policy: SyncPolicy::default(),
        ignore_differences: Vec::new(),
        project: ProjectRules::allow_all("default", "east"),
        objects,
    }
}

fn bench(c: &mut Criterion) {
    let signer = BundleSigner::from_seed(&[1; 32]);
    let trusted = KeySet::new(1, &[signer.public_key()]).expect("invariant: valid key");
    let bundle = one_mib_bundle();
    let envelope = signer.sign(&bundle).expect("invariant: signable bundle");
    let expect = Expectation {
        cluster: "east",
        now: NOW,
    };
    let mut group = c.benchmark_group("bundle_1mib");
    group.throughput(Throughput::Bytes(envelope.payload.len() as u64));
    group.bench_function("sign", |b| {
        b.iter(|| signer.sign(black_box(&bundle)).expect("sign"))
    });
    group.bench_function("verify", |b| {
        b.iter(|| {
            signing::verify(black_box(&envelope), &trusted, expect, |_| None).expect("verify")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
