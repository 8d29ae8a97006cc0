use flotilla_common::bundle::Digest;
use flotilla_common::message::Applied;
use flotilla_common::model::{AppRef, Gvk, ResourceRef};

use super::{Owned, Store, open_database};

#[tokio::test]
async fn an_older_agents_second_database_is_moved_into_the_one_database() {
    let state = tempfile::tempdir().unwrap();
    let app = AppRef::new("default", "web");
    let hook = ResourceRef {
        gvk: Gvk::new("batch", "v1", "Job"),
        namespace: Some("shop".into()),
        name: "migrate".into(),
    };
    let owned = vec![Owned {
        resource: ResourceRef {
            gvk: Gvk::new("", "v1", "ConfigMap"),
            namespace: Some("shop".into()),
            name: "settings".into(),
        },
        prune: true,
        delete: false,
        prune_confirm: false,
        delete_confirm: false,
        prune_last: false,
        ignore_extraneous: false,
    }];
    let applied = Applied {
        app: app.clone(),
        generation: 3,
        digest: Digest([7; 32]),
    };
    // The old layout: the inventory in a database of its own beside the journal's.
    {
        let old = Store::open(&state.path().join("inventory")).unwrap();
        old.set_inventory(&app, &owned).await.unwrap();
        old.set_hook_done(&app, 3, &hook).await.unwrap();
        let journal = crate::journal::Store::open(&state.path().join("db")).unwrap();
        journal.put_bundle(&applied, b"envelope").await.unwrap();
    }

    let db = open_database(state.path()).unwrap();
    assert!(!state.path().join("inventory").exists());
    let read_back = |db: sled::Db| {
        let store = Store::in_database(db.clone()).unwrap();
        assert_eq!(store.inventory(&app).unwrap(), owned);
        assert!(store.hook_done(&app, 3, &hook).unwrap());
        let journal = crate::journal::Store::in_database(db);
        assert_eq!(journal.applied().unwrap(), vec![applied.clone()]);
        assert_eq!(
            journal.bundle(&app).unwrap().as_deref(),
            Some(&b"envelope"[..])
        );
    };
    read_back(db);

    // Nothing is left to move: the data stays where it was moved to.
    let db = open_database(state.path()).unwrap();
    assert!(!state.path().join("inventory").exists());
    read_back(db);
}

#[tokio::test]
async fn the_inventory_and_the_journal_share_one_database() {
    let state = tempfile::tempdir().unwrap();
    let app = AppRef::new("default", "web");
    let owned = Owned {
        resource: ResourceRef {
            gvk: Gvk::new("", "v1", "ConfigMap"),
            namespace: None,
            name: "settings".into(),
        },
        prune: true,
        delete: true,
        prune_confirm: false,
        delete_confirm: false,
        prune_last: false,
        ignore_extraneous: false,
    };
    {
        let db = open_database(state.path()).unwrap();
        let store = Store::in_database(db.clone()).unwrap();
        store
            .set_inventory(&app, std::slice::from_ref(&owned))
            .await
            .unwrap();
        let journal = crate::journal::Store::in_database(db);
        let applied = Applied {
            app: app.clone(),
            generation: 1,
            digest: Digest([1; 32]),
        };
        journal.put_bundle(&applied, b"envelope").await.unwrap();
    }
    let entries: Vec<String> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["db"]);
    let db = open_database(state.path()).unwrap();
    let journal = crate::journal::Store::in_database(db.clone());
    assert_eq!(journal.applied().unwrap()[0].generation, 1);
    let store = Store::in_database(db).unwrap();
    assert_eq!(store.inventory(&app).unwrap(), vec![owned]);
}
