use std::sync::Arc;

use flotilla_common::bundle::{Bundle, Envelope};
use flotilla_common::model::AppRef;

use super::*;
use crate::testing;

#[derive(Debug, thiserror::Error)]
#[error("the draft failed")]
struct DraftFailed;

fn stored(store: &Store, generation: u64) -> Bundle {
    let (_, bytes) = store
        .latest_bundle("default", "web", "east")
        .unwrap()
        .filter(|(g, _)| *g == generation)
        .unwrap_or_else(|| panic!("generation {generation} is not the latest"));
    Bundle::decode(&Envelope::decode(&bytes).unwrap().payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_racing_on_one_app_never_lose_or_reuse_a_generation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let issuer = Arc::new(Issuer::new(store.clone()).await.unwrap());
    let app = AppRef::new("default", "web");
    // Two writers, as a refresh and a rollback are, each issuing 40 generations,
    // each recording the revision it drafted under the generation it got.
    let writer = |who: &'static str| {
        let issuer = issuer.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..40 {
                let revision = format!("{who}-{i}");
                let generation = issuer
                    .issue(&app, "east", |generation, _| {
                        Ok::<_, DraftFailed>(Some(testing::bundle(
                            "web",
                            "east",
                            generation,
                            &revision,
                            Vec::new(),
                        )))
                    })
                    .await
                    .unwrap()
                    .unwrap();
                mine.push((generation, revision));
            }
            mine
        })
    };
    let (a, b) = (writer("refresh"), writer("rollback"));
    let mut all = a.await.unwrap();
    all.extend(b.await.unwrap());
    all.sort();
    let generations: Vec<u64> = all.iter().map(|(g, _)| *g).collect();
    assert_eq!(generations, (1..=80).collect::<Vec<_>>(), "lost or reused");
    // Every generation holds the bundle its writer signed for it, nothing else.
    for (generation, revision) in &all {
        let bytes = store
            .bundle_at("default", "web", "east", *generation)
            .unwrap()
            .unwrap();
        let bundle = Bundle::decode(&Envelope::decode(&bytes).unwrap().payload).unwrap();
        assert_eq!(
            (bundle.generation, &bundle.source.revision),
            (*generation, revision)
        );
    }
    assert_eq!(stored(&store, 80).generation, 80);
}

#[tokio::test]
async fn a_draft_that_declines_or_fails_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let issuer = Issuer::new(store.clone()).await.unwrap();
    let app = AppRef::new("default", "web");
    let first = issuer
        .issue(&app, "east", |generation, latest| {
            assert!(latest.is_none());
            Ok::<_, DraftFailed>(Some(testing::bundle(
                "web",
                "east",
                generation,
                "a",
                Vec::new(),
            )))
        })
        .await
        .unwrap();
    assert_eq!(first, Some(1));
    let declined = issuer
        .issue(&app, "east", |_, latest| {
            assert_eq!(latest.map(|l| l.generation), Some(1));
            assert_eq!(
                latest
                    .and_then(|l| l.bundle.as_ref())
                    .map(|b| b.source.revision.as_str()),
                Some("a")
            );
            Ok::<_, DraftFailed>(None)
        })
        .await
        .unwrap();
    assert_eq!(declined, None);
    let failed = issuer
        .issue(&app, "east", |_, _| Err::<Option<Bundle>, _>(DraftFailed))
        .await;
    assert!(matches!(failed, Err(Error::Draft(DraftFailed))));
    assert_eq!(stored(&store, 1).source.revision, "a");
}

#[tokio::test]
async fn the_store_refuses_a_generation_that_is_not_newer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_bundle("default", "web", "east", 2, b"two")
        .await
        .unwrap();
    for generation in [1, 2] {
        let refused = store
            .put_bundle("default", "web", "east", generation, b"again")
            .await;
        assert!(
            matches!(
                refused,
                Err(store::Error::GenerationTaken { stored: 2, .. })
            ),
            "{refused:?}"
        );
    }
    assert_eq!(
        store.latest_bundle("default", "web", "east").unwrap(),
        Some((2, b"two".to_vec()))
    );
}

#[tokio::test]
async fn a_batch_announces_each_committed_chunk_and_nothing_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let issuer = Issuer::new(store.clone()).await.unwrap();
    let mut announced = store.subscribe_bundles();
    let mut batch = issuer.batch();
    for cluster in ["east", "west", "north"] {
        let app = AppRef::new("default", "web");
        let issued = batch
            .issue(&app, cluster, |generation, _| {
                Ok::<_, DraftFailed>(Some(testing::bundle(
                    "web",
                    cluster,
                    generation,
                    "r1",
                    Vec::new(),
                )))
            })
            .unwrap();
        assert_eq!(issued, Some(1));
        if cluster == "west" {
            assert_eq!(batch.pending(), 2);
            assert!(announced.try_recv().is_err(), "announced before a commit");
            batch.commit_pending().await.unwrap();
            assert_eq!(batch.pending(), 0);
            assert_eq!(announced.try_recv().unwrap().cluster, "east");
            assert_eq!(announced.try_recv().unwrap().cluster, "west");
        }
    }
    assert!(announced.try_recv().is_err());
    batch.commit().await.unwrap();
    assert_eq!(announced.try_recv().unwrap().cluster, "north");
}
