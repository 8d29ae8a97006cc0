use super::*;
use crate::app::Application;
use crate::source::{Credentials, RepoSpec};
use flotilla_common::message::BundleOutcome;
use flotilla_common::model::Timestamp;

fn app(name: &str) -> Application {
    Application::from_yaml(
        &format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  project: web\n  source: {{repoURL: /srv/fleet, path: apps/{name}}}\n  destination: {{name: east}}\n"
        ),
        "test",
    )
    .unwrap()
}

#[tokio::test]
async fn writes_are_there_after_the_store_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut record = AppRecord::new(app("shop"), AppOrigin::Store);
        record.render_error = Some("kustomize build failed".to_owned());
        store.put_app(&record).await.unwrap();
        store
            .put_bundle("web", "shop", "east", 7, b"envelope-7")
            .await
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let record = store.app("web", "shop").unwrap().unwrap();
    assert_eq!(record.application, app("shop"));
    assert_eq!(
        record.render_error.as_deref(),
        Some("kustomize build failed")
    );
    assert_eq!(
        store.latest_bundle("web", "shop", "east").unwrap(),
        Some((7, b"envelope-7".to_vec()))
    );
}

#[tokio::test]
async fn a_store_written_by_a_newer_schema_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree(META)
            .unwrap()
            .insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let e = Store::open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1));
    assert!(e.to_string().contains("newer than this flotilla's"), "{e}");
}

#[tokio::test]
async fn a_store_another_process_holds_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let e = Store::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains(&dir.path().display().to_string()), "{e}");
}

#[tokio::test]
async fn the_latest_bundle_is_the_highest_generation_and_prefixes_do_not_leak() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for generation in [1, 2, 10, 255, 256] {
        store
            .put_bundle("web", "shop", "east", generation, &generation.to_be_bytes())
            .await
            .unwrap();
    }
    store
        .put_bundle("web", "shop-2", "east", 999, b"other app")
        .await
        .unwrap();
    store
        .put_bundle("web", "shop", "east-2", 999, b"other cluster")
        .await
        .unwrap();
    let (generation, _) = store.latest_bundle("web", "shop", "east").unwrap().unwrap();
    assert_eq!(generation, 256);
    assert_eq!(store.latest_bundle("web", "shop", "west").unwrap(), None);
}

fn entry(cluster: &str, revision: &str) -> HistoryEntry {
    HistoryEntry {
        id: 0,
        cluster: cluster.to_owned(),
        revision: revision.to_owned(),
        digest: String::new(),
        generation: 1,
        started_at_ms: 0,
        finished_at_ms: None,
        result: Phase::Succeeded,
        message: String::new(),
        initiated_by: "automated".to_owned(),
        resources: Vec::new(),
    }
}

#[tokio::test]
async fn history_comes_back_oldest_first_with_ids_increasing_per_app() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (cluster, revision) in [("east", "aaa"), ("west", "bbb"), ("east", "ccc")] {
        store
            .push_history("web", "shop", entry(cluster, revision), None, 10)
            .await
            .unwrap();
    }
    store
        .push_history("web", "other", entry("east", "zzz"), None, 10)
        .await
        .unwrap();
    let history = store.history("web", "shop").unwrap();
    let got: Vec<_> = history
        .iter()
        .map(|h| (h.id, h.cluster.as_str(), h.revision.as_str()))
        .collect();
    assert_eq!(
        got,
        [(1, "east", "aaa"), (2, "west", "bbb"), (3, "east", "ccc")]
    );
    assert_eq!(store.history("web", "other").unwrap()[0].id, 1);
}

#[tokio::test]
async fn history_keeps_the_newest_entries_and_their_bundles_up_to_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..5u8 {
        store
            .push_history("web", "shop", entry("east", &i.to_string()), Some(&[i]), 3)
            .await
            .unwrap();
    }
    let ids: Vec<_> = store
        .history("web", "shop")
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, [3, 4, 5]);
    assert_eq!(store.history_bundle("web", "shop", 2).unwrap(), None);
    assert_eq!(
        store.history_bundle("web", "shop", 5).unwrap(),
        Some(vec![4])
    );
    store.remove_history("web", "shop").await.unwrap();
    assert!(store.history("web", "shop").unwrap().is_empty());
    assert_eq!(store.history_bundle("web", "shop", 5).unwrap(), None);
}

#[tokio::test]
async fn repo_credentials_are_stored_but_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut repo = RepoRecord::new(RepoSpec::with_credentials(
        "https://git.example/fleet.git",
        Credentials::Https {
            username: "ci".to_owned(),
            token: "s3cret-token".to_owned(),
        },
    ));
    repo.webhook_secret = Some("hook-secret".to_owned());
    store.put_repo(&repo).await.unwrap();
    let back = store
        .repo("https://git.example/fleet.git")
        .unwrap()
        .unwrap();
    assert_eq!(back, repo);
    let shown = format!("{back:?} {:?} {:?}", back.spec(), store.repos().unwrap());
    assert!(
        !shown.contains("s3cret-token") && !shown.contains("hook-secret"),
        "{shown}"
    );
}

#[test]
fn destinations_match_by_name_by_admin_set_server_and_in_cluster() {
    use crate::app::Destination;
    let east = ClusterRecord {
        name: "east".to_owned(),
        server: Some("https://10.0.0.1:6443".to_owned()),
        facts: Some(flotilla_common::model::ClusterFacts {
            api_server_url: "https://10.9.9.9:6443".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // West's agent claims east's URL; only the admin's word counts.
    let west = ClusterRecord {
        name: "west".to_owned(),
        facts: Some(flotilla_common::model::ClusterFacts {
            api_server_url: "https://10.0.0.1:6443".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let in_cluster = ClusterRecord {
        name: "in-cluster".to_owned(),
        ..Default::default()
    };
    let by = |name: Option<&str>, server: Option<&str>| Destination {
        name: name.map(str::to_owned),
        server: server.map(str::to_owned),
        namespace: None,
    };
    assert!(east.is_destination(&by(Some("east"), None)));
    assert!(!east.is_destination(&by(Some("west"), None)));
    assert!(east.is_destination(&by(None, Some("https://10.0.0.1:6443/"))));
    assert!(!east.is_destination(&by(None, Some("https://10.0.0.2:6443"))));
    assert!(in_cluster.is_destination(&by(None, Some("https://kubernetes.default.svc"))));
    assert!(!east.is_destination(&by(None, Some("https://kubernetes.default.svc"))));
    assert!(!east.is_destination(&by(None, Some("https://10.9.9.9:6443"))));
    assert!(!west.is_destination(&by(None, Some("https://10.0.0.1:6443"))));
    assert!(west.is_destination(&by(Some("west"), None)));
}

#[test]
fn string_parts_are_length_prefixed_so_prefix_scans_are_exact() {
    let a = Key::new().str("web").str("shop");
    let b = Key::new().str("web").str("shop-2");
    assert!(!b.as_bytes().starts_with(a.as_bytes()));
    assert!(a.as_bytes().starts_with(Key::new().str("web").as_bytes()));
    assert_eq!(Key::new().str("x").u64(42).last_u64(), Some(42));
}

#[tokio::test]
async fn operations_left_running_by_a_stopped_hub_are_marked_failed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let op = |phase: Phase| OperationRecord {
        request_id: Some(1),
        initiated_by: "alice".to_owned(),
        generation: 1,
        phase,
        message: String::new(),
        dry_run: false,
        prune: false,
        started_at_ms: 1,
        finished_at_ms: None,
        resources: Vec::new(),
        history_id: None,
    };
    store
        .put_operation("web", "shop", "east", &op(Phase::Running))
        .await
        .unwrap();
    store
        .put_operation("web", "shop", "west", &op(Phase::Succeeded))
        .await
        .unwrap();
    assert_eq!(
        store.fail_running_operations("restarted", 9).await.unwrap(),
        1
    );
    let east = store.operation("web", "shop", "east").unwrap().unwrap();
    assert_eq!(
        (east.phase, east.message.as_str()),
        (Phase::Failed, "restarted")
    );
    assert_eq!(east.finished_at_ms, Some(9));
    let west = store.operation("web", "shop", "west").unwrap().unwrap();
    assert_eq!(west.phase, Phase::Succeeded);
}

#[test]
fn the_store_folder_is_private_to_its_owner_even_when_it_existed() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let fresh = parent.path().join("new").join("data");
    drop(Store::open(&fresh).unwrap());
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    let open = parent.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    drop(Store::open(&open).unwrap());
    let mode = std::fs::metadata(&open).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

fn registered_link(cluster: &str, cert: &str) -> LinkRecord {
    LinkRecord {
        cluster: cluster.to_owned(),
        cert_sha256: cert.to_owned(),
        cert_not_after_ms: 1_000,
        ..LinkRecord::default()
    }
}

#[tokio::test]
async fn a_renewal_decided_before_a_removal_does_not_write_the_link_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_link(&registered_link("east", "aa"))
        .await
        .unwrap();
    // The renewal reads the link and issues a certificate...
    let before = store.link("east").unwrap().unwrap();
    let mut renewed = before.clone();
    renewed.previous_cert_sha256 = Some("aa".to_owned());
    renewed.cert_sha256 = "bb".to_owned();
    // ...while `cluster rm` runs.
    assert!(store.remove_cluster("east").await.unwrap());
    let written = store
        .put_renewed_link(&before, &renewed, &["aa".to_owned()])
        .await
        .unwrap();
    assert!(!written);
    assert_eq!(store.link("east").unwrap(), None);
    assert_eq!(store.cluster_by_cert("aa").unwrap(), None);
    assert_eq!(store.cluster_by_cert("bb").unwrap(), None);
    assert!(store.links().unwrap().is_empty());
}

#[tokio::test]
async fn a_renewal_keeps_acks_recorded_meanwhile_and_loses_a_race_with_another() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_link(&registered_link("east", "aa"))
        .await
        .unwrap();
    let before = store.link("east").unwrap().unwrap();
    // An ack lands between the renewal's read and its write.
    store
        .update_link_lazily("east", |link| link.last_status_sequence = 9)
        .unwrap();
    let mut renewed = before.clone();
    renewed.previous_cert_sha256 = Some("aa".to_owned());
    renewed.cert_sha256 = "bb".to_owned();
    assert!(
        store
            .put_renewed_link(&before, &renewed, &["aa".to_owned()])
            .await
            .unwrap()
    );
    let link = store.link("east").unwrap().unwrap();
    assert_eq!(link.last_status_sequence, 9);
    assert_eq!(link.cert_sha256, "bb");
    assert_eq!(
        store.cluster_by_cert("aa").unwrap().as_deref(),
        Some("east")
    );
    assert_eq!(
        store.cluster_by_cert("bb").unwrap().as_deref(),
        Some("east")
    );
    // A second renewal decided on the record before the first is refused.
    let mut other = before.clone();
    other.previous_cert_sha256 = Some("aa".to_owned());
    other.cert_sha256 = "cc".to_owned();
    assert!(
        !store
            .put_renewed_link(&before, &other, &["aa".to_owned()])
            .await
            .unwrap()
    );
    assert_eq!(store.cluster_by_cert("cc").unwrap(), None);
}

#[tokio::test]
async fn link_state_reported_after_a_removal_does_not_bring_the_link_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_link(&registered_link("east", "aa"))
        .await
        .unwrap();
    assert!(store.remove_cluster("east").await.unwrap());
    let was_there = store
        .update_link_lazily("east", |link| link.connected = true)
        .unwrap();
    assert!(!was_there);
    assert_eq!(store.link("east").unwrap(), None);
}

#[tokio::test]
async fn facts_replace_a_clusters_facts_and_never_bring_a_removed_cluster_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let record = ClusterRecord {
        name: "east".to_owned(),
        server: Some("https://10.0.0.1:6443".to_owned()),
        ..Default::default()
    };
    store.put_cluster(&record).await.unwrap();
    let facts = flotilla_common::model::ClusterFacts {
        kubernetes_version: "v1.36.0".to_owned(),
        api_server_url: "https://elsewhere:6443".to_owned(),
        ..Default::default()
    };
    assert!(store.update_cluster_facts("east", &facts).await.unwrap());
    let stored = store.cluster("east").unwrap().unwrap();
    assert_eq!(stored.facts, Some(facts.clone()));
    assert_eq!(
        stored.server, record.server,
        "facts never move the server URL"
    );

    assert!(store.remove_cluster("east").await.unwrap());
    assert!(!store.update_cluster_facts("east", &facts).await.unwrap());
    assert_eq!(store.cluster("east").unwrap(), None);
}

#[tokio::test]
async fn a_bundle_and_its_cluster_index_are_written_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_bundle("web", "shop", "east", 3, b"envelope-3")
        .await
        .unwrap();
    assert_eq!(
        store.latest_bundles_for("east").unwrap(),
        vec![("web".to_owned(), "shop".to_owned(), b"envelope-3".to_vec())]
    );
}

#[test]
fn acks_stored_as_text_by_earlier_versions_still_read() {
    let read = |outcome: &str| -> AckRecord {
        serde_json::from_value(serde_json::json!({
            "generation": 3, "digest": "ab", "outcome": outcome, "at_ms": 1
        }))
        .unwrap()
    };
    assert_eq!(read("Applied").outcome, BundleOutcome::Applied);
    assert_eq!(
        read("Rejected: Expired").outcome,
        BundleOutcome::Failed {
            message: "Rejected: Expired".to_owned()
        }
    );
    // And the typed form round-trips.
    let typed = AckRecord {
        generation: 3,
        digest: "ab".to_owned(),
        outcome: BundleOutcome::Rejected(flotilla_common::message::Rejection::Stale {
            last_applied: 2,
        }),
        at_ms: 1,
    };
    let back: AckRecord = serde_json::from_value(serde_json::to_value(&typed).unwrap()).unwrap();
    assert_eq!(back, typed);
}

#[test]
fn phases_are_stored_and_shown_by_argo_cds_names() {
    for (phase, name) in [
        (Phase::Running, "Running"),
        (Phase::Succeeded, "Succeeded"),
        (Phase::Failed, "Failed"),
    ] {
        assert_eq!(
            serde_json::to_value(phase).unwrap(),
            serde_json::json!(name)
        );
        assert_eq!(
            serde_json::from_value::<Phase>(serde_json::json!(name)).unwrap(),
            phase
        );
        assert_eq!(phase.to_string(), name);
    }
}

#[tokio::test]
async fn facts_never_change_the_kube_system_uid_checked_at_registration() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let registered = |uid: &str| flotilla_common::model::ClusterFacts {
        kube_system_uid: uid.to_owned(),
        ..Default::default()
    };
    store
        .put_cluster(&ClusterRecord {
            name: "east".to_owned(),
            facts: Some(registered("uid-east")),
            ..Default::default()
        })
        .await
        .unwrap();
    // An agent claiming west's UID would keep west from ever registering.
    let mut claimed = registered("uid-west");
    claimed.kubernetes_version = "v1.36.0".to_owned();
    assert!(store.update_cluster_facts("east", &claimed).await.unwrap());
    let facts = store.cluster("east").unwrap().unwrap().facts.unwrap();
    assert_eq!(facts.kube_system_uid, "uid-east");
    assert_eq!(facts.kubernetes_version, "v1.36.0");
}

#[tokio::test]
async fn written_bundles_are_announced_only_once_their_batch_is_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut announced = store.subscribe_bundles();
    let written: Vec<_> = ["east", "west", "north"]
        .into_iter()
        .map(|cluster| {
            store
                .write_bundle("web", "shop", cluster, 1, Some(Timestamp(500)), b"signed")
                .unwrap()
        })
        .collect();
    // Written, readable, but no agent hears of them before the flush.
    assert_eq!(
        store
            .latest_bundle("web", "shop", "west")
            .unwrap()
            .unwrap()
            .0,
        1
    );
    assert!(announced.try_recv().is_err());
    store.commit_bundles(written).await.unwrap();
    let clusters: Vec<_> = (0..3)
        .map(|_| announced.try_recv().unwrap().cluster)
        .collect();
    assert_eq!(clusters, ["east", "west", "north"]);
    // A generation a batch holds is taken like a stored one.
    let taken = store
        .write_bundle("web", "shop", "east", 1, Some(Timestamp(900)), b"again")
        .unwrap_err();
    assert!(
        matches!(taken, Error::GenerationTaken { stored: 1, .. }),
        "{taken}"
    );
}

#[tokio::test]
async fn the_index_keeps_each_bundles_expiry_and_reads_entries_written_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let written = store
        .write_bundle("web", "shop", "east", 4, Some(Timestamp(1_700)), b"signed")
        .unwrap();
    store.commit_bundles(vec![written]).await.unwrap();
    assert_eq!(
        store.indexed_bundle("web", "shop", "east").unwrap(),
        Some(Indexed {
            generation: 4,
            not_after: Some(Timestamp(1_700)),
        })
    );
    assert_eq!(store.indexed_bundle("web", "shop", "west").unwrap(), None);

    // An entry as earlier versions wrote it: the generation alone.
    let index = Key::new().str("west").str("web").str("shop");
    store
        .tree("cluster_bundles")
        .unwrap()
        .insert(index.as_bytes(), &9u64.to_be_bytes())
        .unwrap();
    assert_eq!(
        store.indexed_bundle("web", "shop", "west").unwrap(),
        Some(Indexed {
            generation: 9,
            not_after: None,
        })
    );
    // And its generation is still the one a writer must pass.
    let taken = store
        .write_bundle("web", "shop", "west", 9, None, b"signed")
        .unwrap_err();
    assert!(
        matches!(taken, Error::GenerationTaken { stored: 9, .. }),
        "{taken}"
    );
}

#[tokio::test]
async fn under_the_free_space_kept_new_state_is_refused_and_work_under_way_still_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // More free space than any disk has: the disk counts as nearly full.
    store.set_min_free_mib(u64::MAX >> 21);
    let refused = store
        .put_app(&AppRecord::new(app("web"), AppOrigin::Store))
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::DiskFull { .. }), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("new work is refused until space returns"),
        "{refused}"
    );
    let bundle = store
        .write_bundle("web", "shop", "east", 1, None, b"signed")
        .unwrap_err();
    assert!(matches!(bundle, Error::DiskFull { .. }), "{bundle}");
    assert_eq!(store.apps().unwrap().len(), 0);
    assert!(
        store
            .latest_bundle("web", "shop", "east")
            .unwrap()
            .is_none()
    );
    // What records work under way, and logging in, still goes through.
    store
        .put("operations", &Key::new().str("web"), &"running")
        .await
        .unwrap();
    // Space returns: new state is taken again.
    store.set_min_free_mib(0);
    store
        .put_app(&AppRecord::new(app("web"), AppOrigin::Store))
        .await
        .unwrap();
    assert_eq!(store.apps().unwrap().len(), 1);
}

#[tokio::test]
async fn a_bundle_written_without_an_expiry_is_indexed_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let written = store
        .write_bundle("web", "shop", "east", 2, None, b"not an envelope")
        .unwrap();
    store.commit_bundles(vec![written]).await.unwrap();
    assert_eq!(
        store.indexed_bundle("web", "shop", "east").unwrap(),
        Some(Indexed {
            generation: 2,
            not_after: None,
        })
    );
}

#[test]
fn the_render_cache_starts_over_when_full_and_counts_what_it_already_held() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for i in 0..3u8 {
            store.cache_render(&[i; 32], &i, 4).unwrap();
        }
        // The same key again replaces, and is not counted twice.
        store.cache_render(&[0; 32], &0u8, 4).unwrap();
        assert_eq!(store.cached_render::<u8>(&[2; 32]).unwrap(), Some(2));
    }
    // Reopened: the three it holds count toward the limit.
    let store = Store::open(dir.path()).unwrap();
    store.cache_render(&[3; 32], &3u8, 4).unwrap();
    assert_eq!(store.cached_render::<u8>(&[0; 32]).unwrap(), Some(0));
    store.cache_render(&[4; 32], &4u8, 4).unwrap();
    assert_eq!(
        store.cached_render::<u8>(&[0; 32]).unwrap(),
        None,
        "not started over"
    );
    assert_eq!(store.cached_render::<u8>(&[4; 32]).unwrap(), Some(4));
}

#[tokio::test]
async fn a_credential_template_covers_urls_below_it_not_hosts_that_start_like_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut template = RepoRecord::new(RepoSpec::with_credentials(
        "https://charts.example",
        Credentials::Https {
            username: "ci".to_owned(),
            token: "s3cret-token".to_owned(),
        },
    ));
    template.template = true;
    store.put_repo(&template).await.unwrap();
    let covered = store
        .repo_access("https://charts.example/stable")
        .unwrap()
        .expect("a URL below the template's");
    assert_eq!(covered.credentials, template.credentials);
    assert!(
        store
            .repo_access("https://charts.example")
            .unwrap()
            .is_some(),
        "the template's own URL"
    );
    for elsewhere in [
        "https://charts.example.evil.com/stable",
        "https://charts.example-evil.com",
        "https://charts.examplex/stable",
    ] {
        assert!(
            store.repo_access(elsewhere).unwrap().is_none(),
            "{elsewhere} got the template's credentials"
        );
    }
}
