//! The hub's link against real agents over real QUIC and mutual TLS on
//! 127.0.0.1: registration, delivery, status, and the bad input the issue lists.

#![allow(clippy::unwrap_used)]

mod attacks;
mod handshake_flood;
mod relay;
mod trust;

use std::time::{Duration, SystemTime};

use fixture::{Hub, RunningAgent, agent_config, eventually, probe};
use flotilla_agent::identity::{self, Identity};
use flotilla_common::message::{Register, Status};
use flotilla_common::model::{AppRef, Health, SyncStatus};
use flotilla_hub::ca::{self, Ca};
use flotilla_hub::cluster::{self, RenewError};
use flotilla_hub::link::LinkConfig;
use relay::Relay;

use crate::support::link as fixture;

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_then_gets_bundles_over_mutual_tls_and_reports_status() {
    let hub_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let token = hub.add("east").await;
    let mut agent = RunningAgent::start(agent_config(&hub, "east", Some(token), agent_dir.path()));
    agent.wait("connected", |s| s.connected).await;

    // Registered: the cluster, its facts and its certificate are on record, the
    // token is gone, and the identity is on the agent's disk.
    let cluster = hub.store.cluster("east").unwrap().unwrap();
    assert_eq!(cluster.facts.unwrap().kube_system_uid, "uid-east");
    assert!(hub.store.tokens().unwrap().is_empty());
    assert!(agent_dir.path().join("identity.json").is_file());
    let link = hub.store.link("east").unwrap().unwrap();
    assert!(link.connected);
    assert_eq!(
        link.agent_version.as_deref(),
        Some(flotilla_common::VERSION)
    );

    let envelope = hub.publish("east", "web", 1, 3).await;
    agent
        .wait("bundle applied", |s| {
            s.applied.iter().any(|a| a.generation == 1)
        })
        .await;
    eventually("the hub records the ack", Duration::from_secs(10), || {
        hub.store
            .link("east")
            .unwrap()
            .unwrap()
            .acks
            .get("default/web")
            .is_some_and(|a| {
                a.generation == 1
                    && a.digest == envelope.digest.to_string()
                    && a.outcome == flotilla_common::message::BundleOutcome::Applied
            })
    })
    .await;
    eventually("the hub stores the status", Duration::from_secs(10), || {
        hub.store
            .status("default", "web", "east")
            .unwrap()
            .is_some_and(|s| s.status.generation == 1 && s.status.health == Health::Healthy)
    })
    .await;
    agent.wait("outbox drained", |s| s.outbox == 0).await;

    assert!(agent.stop().await.is_ok());
    eventually(
        "the hub marks it disconnected",
        Duration::from_secs(10),
        || {
            let link = hub.store.link("east").unwrap().unwrap();
            !link.connected && link.last_seen_ms.is_some()
        },
    )
    .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expired_and_reused_tokens_are_refused_and_change_nothing() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;

    // Wrong token.
    let dir = tempfile::tempdir().unwrap();
    let wrong = RunningAgent::start(agent_config(
        &hub,
        "east",
        Some("flt_wrong".to_owned()),
        dir.path(),
    ));
    let error = wrong.task.await.unwrap().unwrap_err();
    assert!(
        matches!(error, flotilla_agent::link::Error::RegistrationRefused(_)),
        "{error}"
    );
    assert!(
        error.to_string().contains("unknown or already used"),
        "{error}"
    );
    assert!(!dir.path().join("identity.json").exists());

    // Expired token: made with a one-second life, used after it.
    let expired = flotilla_hub::cluster::add(
        &hub.store,
        "late",
        Default::default(),
        Duration::from_secs(1),
        SystemTime::now() - Duration::from_secs(5),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let late = RunningAgent::start(agent_config(&hub, "late", Some(expired.token), dir.path()));
    let error = late.task.await.unwrap().unwrap_err();
    assert!(error.to_string().contains("expired"), "{error}");
    assert!(hub.store.cluster("late").unwrap().is_none());
    assert!(hub.store.link("late").unwrap().is_none());

    // Reused token: works once, then never again.
    let token = hub.add("east").await;
    let dir = tempfile::tempdir().unwrap();
    let mut first =
        RunningAgent::start(agent_config(&hub, "east", Some(token.clone()), dir.path()));
    first.wait("connected", |s| s.connected).await;
    let cert_before = hub.store.link("east").unwrap().unwrap().cert_sha256;
    let dir2 = tempfile::tempdir().unwrap();
    let again = RunningAgent::start(agent_config(&hub, "east", Some(token), dir2.path()));
    let error = again.task.await.unwrap().unwrap_err();
    assert!(
        error.to_string().contains("unknown or already used"),
        "{error}"
    );
    assert_eq!(
        hub.store.link("east").unwrap().unwrap().cert_sha256,
        cert_before
    );
    first.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_cluster_cannot_register_under_a_second_name() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut east = RunningAgent::start(agent_config(
        &hub,
        "east",
        Some(hub.add("east").await),
        dir.path(),
    ));
    east.wait("connected", |s| s.connected).await;

    let token = hub.add("west").await;
    let dir2 = tempfile::tempdir().unwrap();
    let mut config = agent_config(&hub, "west", Some(token), dir2.path());
    config.facts = fixture::facts("uid-east");
    let error = RunningAgent::start(config).task.await.unwrap().unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("already registered as \"east\""),
        "{message}"
    );
    assert!(message.contains("uid-east"), "{message}");
    assert!(hub.store.cluster("west").unwrap().is_none());
    // The token was not spent on a refusal.
    assert_eq!(hub.store.tokens().unwrap().len(), 1);
    east.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_cluster_closes_its_connection_and_fails_its_next_handshake() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut east = RunningAgent::start(agent_config(
        &hub,
        "east",
        Some(hub.add("east").await),
        dir.path(),
    ));
    east.wait("connected", |s| s.connected).await;

    assert!(hub.link.remove_cluster("east").await.unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(10), east.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ended, Err(flotilla_agent::link::Error::Revoked(_))),
        "{ended:?}"
    );

    // The same identity cannot connect again: the handshake is refused.
    let mut again = RunningAgent::start(agent_config(&hub, "east", None, dir.path()));
    again
        .wait("a failed attempt", |s| s.last_error.is_some())
        .await;
    let error = again.state.borrow().last_error.clone().unwrap();
    assert!(error.contains("Revoked"), "{error}");
    assert!(!again.state.borrow().connected);
    again.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_left_in_the_outbox_is_delivered_after_an_outage_in_order_and_once() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut east = RunningAgent::start(agent_config(
        &hub,
        "east",
        Some(hub.add("east").await),
        dir.path(),
    ));
    east.wait("connected", |s| s.connected).await;
    east.stop().await.unwrap();

    // The agent applied web's bundle (an agent speaks only of apps the hub sent
    // its cluster), and reports made while the hub was unreachable wait in its
    // sled outbox.
    let envelope = fixture::sign(&hub.store, "east", "web", 1, 1, 16).await;
    let bytes = envelope.encode().unwrap();
    hub.store
        .put_bundle("default", "web", "east", 1, &bytes)
        .await
        .unwrap();
    {
        let store = flotilla_agent::journal::Store::open(&dir.path().join("db")).unwrap();
        let applied = flotilla_common::message::Applied {
            app: AppRef::new("default", "web"),
            generation: 1,
            digest: envelope.digest,
        };
        store.put_bundle(&applied, &bytes).await.unwrap();
        for (sequence, health) in [
            (1, Health::Progressing),
            (2, Health::Degraded),
            (3, Health::Healthy),
        ] {
            store
                .push_outbox(&Status {
                    sequence,
                    app: AppRef::new("default", "web"),
                    generation: 1,
                    sync: SyncStatus::Synced,
                    health,
                    resources: Vec::new(),
                    drift: Vec::new(),
                    events: Vec::new(),
                    operation: None,
                })
                .await
                .unwrap();
        }
    }
    let mut east = RunningAgent::start(agent_config(&hub, "east", None, dir.path()));
    east.wait("outbox drained", |s| s.connected && s.outbox == 0)
        .await;
    let history: Vec<(u64, Health)> = hub
        .store
        .status_history("default", "web", "east")
        .unwrap()
        .into_iter()
        .map(|r| (r.status.sequence, r.status.health))
        .collect();
    assert_eq!(
        history,
        vec![
            (1, Health::Progressing),
            (2, Health::Degraded),
            (3, Health::Healthy)
        ]
    );
    assert_eq!(
        hub.store
            .status("default", "web", "east")
            .unwrap()
            .unwrap()
            .status
            .health,
        Health::Healthy
    );
    // A restart resends nothing.
    east.stop().await.unwrap();
    let mut east = RunningAgent::start(agent_config(&hub, "east", None, dir.path()));
    east.wait("connected", |s| s.connected).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hub.store
            .status_history("default", "web", "east")
            .unwrap()
            .len(),
        3
    );
    east.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_hub_restart_only_newer_bundles_are_sent() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let addr = hub.addr;
    let dir = tempfile::tempdir().unwrap();
    let mut east = RunningAgent::start(agent_config(
        &hub,
        "east",
        Some(hub.add("east").await),
        dir.path(),
    ));
    east.wait("connected", |s| s.connected).await;
    hub.publish("east", "web", 1, 1).await;
    hub.publish("east", "api", 1, 1).await;
    east.wait("both applied", |s| s.applied.len() == 2).await;
    assert_eq!(east.state.borrow().bundles_received, 2);

    hub.stop().await;
    east.wait("disconnected", |s| !s.connected).await;
    let hub = Hub::start(hub_dir.path(), addr).await;
    hub.publish("east", "api", 2, 1).await;
    east.wait("reconnected", |s| s.sessions == 2).await;
    east.wait("api 2 applied", |s| {
        s.applied
            .iter()
            .any(|a| a.app.name == "api" && a.generation == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Only api generation 2 travelled; web 1 and api 1 were not resent.
    assert_eq!(east.state.borrow().bundles_received, 3);
    assert_eq!(east.state.borrow().bundles_rejected, 0);
    east.stop().await.unwrap();
    hub.stop().await;
}

fn sha(identity: &Identity) -> String {
    ca::fingerprint(&identity.certificate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renews_at_two_thirds_of_its_life_and_the_old_one_ends_once_the_new_one_is_used()
 {
    let hub_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut config = LinkConfig::new(loopback());
    config.cert_lifetime = Duration::from_secs(15);
    let hub = Hub::start_with(hub_dir.path(), config).await;
    let token = hub.add("east").await;
    let mut agent = RunningAgent::start(agent_config(&hub, "east", Some(token), agent_dir.path()));
    agent.wait("connected", |s| s.connected).await;
    let first = Identity::load(agent_dir.path()).unwrap().unwrap();
    let (not_before, not_after) = first.certificate_validity().unwrap();
    let life = not_after.duration_since(not_before).unwrap();
    assert!(
        (Duration::from_secs(15)..=Duration::from_secs(17)).contains(&life),
        "{life:?}"
    );
    assert_eq!(
        hub.store.link("east").unwrap().unwrap().cert_sha256,
        sha(&first)
    );

    // The agent asks at two thirds of the life, not before, and persists the new
    // identity: a new key and a new certificate.
    agent.wait("renewed", |s| s.renewals == 1).await;
    assert!(SystemTime::now() >= not_before + life * 2 / 3);
    let second = Identity::load(agent_dir.path()).unwrap().unwrap();
    assert_ne!(second.certificate, first.certificate);
    assert_ne!(second.key_pkcs8, first.key_pkcs8);
    assert_eq!(second.key_set, first.key_set);
    let link = hub.store.link("east").unwrap().unwrap();
    assert_eq!(link.cert_sha256, sha(&second));
    assert_eq!(link.previous_cert_sha256, Some(sha(&first)));
    // Still connected on the old certificate's connection.
    assert!(agent.state.borrow().connected);

    // An agent that died before persisting the new certificate is not locked out.
    probe(hub.addr, &first).await.unwrap();

    // The next connection uses the new certificate; from then on the old one is
    // refused, while it has not expired yet.
    agent.stop().await.unwrap();
    let mut agent = RunningAgent::start(agent_config(&hub, "east", None, agent_dir.path()));
    agent.wait("connected again", |s| s.connected).await;
    eventually(
        "the hub to retire the previous certificate",
        Duration::from_secs(10),
        || {
            hub.store
                .link("east")
                .unwrap()
                .unwrap()
                .previous_cert_sha256
                .is_none()
        },
    )
    .await;
    let refused = probe(hub.addr, &first).await.unwrap_err();
    assert!(
        SystemTime::now() < not_after,
        "the first certificate expired before it was probed, so its refusal proves nothing"
    );
    assert!(refused.contains("Revoked"), "{refused}");
    assert!(hub.store.cluster_by_cert(&sha(&first)).unwrap().is_none());

    // Removing the cluster revokes the renewed certificate too.
    assert!(hub.link.remove_cluster("east").await.unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(10), agent.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ended, Err(flotilla_agent::link::Error::Revoked(_))),
        "{ended:?}"
    );
    let refused = probe(hub.addr, &second).await.unwrap_err();
    assert!(refused.contains("Revoked"), "{refused}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_cluster_cannot_renew_its_certificate() {
    let hub_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut config = LinkConfig::new(loopback());
    config.cert_lifetime = Duration::from_secs(4);
    let hub = Hub::start_with(hub_dir.path(), config).await;
    let token = hub.add("east").await;
    let mut agent = RunningAgent::start(agent_config(&hub, "east", Some(token), agent_dir.path()));
    agent.wait("connected", |s| s.connected).await;
    let first = Identity::load(agent_dir.path()).unwrap().unwrap();

    // Removed in the store only, as `flotilla cluster rm` does on the data
    // folder: the open connection stays up until the agent asks to renew.
    assert!(hub.store.remove_cluster("east").await.unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(20), agent.task)
        .await
        .unwrap()
        .unwrap();
    let Err(error @ flotilla_agent::link::Error::Revoked(_)) = ended else {
        panic!("expected a revocation, got {ended:?}");
    };
    assert!(error.to_string().contains("cannot be renewed"), "{error}");
    assert_eq!(Identity::load(agent_dir.path()).unwrap(), Some(first));
    assert!(hub.store.link("east").unwrap().is_none());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_only_the_presented_certificate_as_previous_and_removal_revokes_both() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let ca = Ca::load_or_create(&hub.store, SystemTime::now())
        .await
        .unwrap();
    let lifetime = Duration::from_secs(3600);
    let register = Register {
        token: hub.add("east").await,
        public_key: identity::new_key().unwrap().public_key,
        facts: fixture::facts("uid-east"),
    };
    let registered_at = SystemTime::now();
    let first = cluster::register(&hub.store, &ca, &register, registered_at, lifetime)
        .await
        .unwrap();
    let first = ca::fingerprint(&first.certificate);
    let renew_at = |presented: String, at: SystemTime| {
        let (store, ca) = (&hub.store, &ca);
        async move {
            let key = identity::new_key().unwrap().public_key;
            cluster::renew(store, ca, "east", &presented, &key, at, lifetime)
                .await
                .map(|r| ca::fingerprint(&r.certificate))
        }
    };
    // Two thirds into the first certificate's life, as the agent asks.
    let later = registered_at + lifetime * 2 / 3;
    let renew = |presented: String| renew_at(presented, later);

    // Before half of its life the current certificate is not renewed.
    let early = renew_at(first.clone(), registered_at + lifetime / 4).await;
    assert!(matches!(early, Err(RenewError::NotDue { .. })), "{early:?}");
    let second = renew(first.clone()).await.unwrap();
    let by_cert = |sha: &str| hub.store.cluster_by_cert(sha).unwrap();
    assert_eq!(by_cert(&first).as_deref(), Some("east"));
    assert_eq!(by_cert(&second).as_deref(), Some("east"));

    // The agent lost the second certificate and renews again with the first: the
    // first stays previous, the second, never used, stops working.
    let third = renew(first.clone()).await.unwrap();
    assert_eq!(by_cert(&first).as_deref(), Some("east"));
    assert_eq!(by_cert(&second), None);
    assert_eq!(by_cert(&third).as_deref(), Some("east"));
    // A certificate that no longer counts cannot renew.
    assert!(matches!(
        renew(second.clone()).await,
        Err(RenewError::Revoked { .. })
    ));
    // The third is brand new: not due.
    assert!(matches!(
        renew(third.clone()).await,
        Err(RenewError::NotDue { .. })
    ));

    assert!(hub.store.remove_cluster("east").await.unwrap());
    assert_eq!(by_cert(&first), None);
    assert_eq!(by_cert(&third), None);
    assert!(matches!(
        renew_at(third.clone(), later + lifetime * 2 / 3).await,
        Err(RenewError::Revoked { .. })
    ));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_network_drop_marks_the_cluster_disconnected_and_the_agent_comes_back() {
    let _alone = crate::support::alone().await;
    // Production keeps QUIC keep-alive at 15 s and the idle timeout at 60 s on
    // both ends; this test shortens both.
    let defaults = LinkConfig::new(loopback());
    assert_eq!(defaults.keep_alive, Duration::from_secs(15));
    assert_eq!(defaults.idle_timeout, Duration::from_secs(60));
    let agent_defaults = flotilla_agent::link::AgentConfig::new(
        loopback(),
        String::new(),
        "east".to_owned(),
        std::path::PathBuf::new(),
    );
    assert_eq!(agent_defaults.keep_alive, Duration::from_secs(15));
    assert_eq!(agent_defaults.idle_timeout, Duration::from_secs(60));

    let keep_alive = Duration::from_millis(250);
    let idle_timeout = Duration::from_millis(1500);
    let hub_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut config = LinkConfig::new(loopback());
    config.keep_alive = keep_alive;
    config.idle_timeout = idle_timeout;
    let hub = Hub::start_with(hub_dir.path(), config).await;
    let relay = Relay::start(hub.addr).await;
    let token = hub.add("east").await;
    let mut config = agent_config(&hub, "east", Some(token), agent_dir.path());
    config.hub = relay.addr;
    config.keep_alive = keep_alive;
    config.idle_timeout = idle_timeout;
    let mut agent = RunningAgent::start(config);
    agent.wait("connected", |s| s.connected).await;
    let east = |hub: &Hub| {
        hub.link
            .clusters()
            .unwrap()
            .into_iter()
            .find(|c| c.cluster == "east")
            .unwrap()
    };
    eventually(
        "the hub to see it connected",
        Duration::from_secs(10),
        || east(&hub).connected,
    )
    .await;
    let seen_before = east(&hub).last_seen_ms.unwrap();

    // Nothing is closed; datagrams just stop arriving, both ways.
    relay.set_dropping(true);
    let cut = std::time::Instant::now();
    eventually(
        "the hub to mark the cluster disconnected",
        Duration::from_secs(20),
        || !east(&hub).connected,
    )
    .await;
    let noticed = cut.elapsed();
    eprintln!("the hub noticed the silent drop after {noticed:?} (idle timeout {idle_timeout:?})");
    // Noticed by the idle timeout (1.5 s here, from the last packet heard), not
    // by anything slower; twice the timeout leaves room for a loaded machine.
    assert!(noticed < idle_timeout * 2, "noticed after {noticed:?}");
    let view = east(&hub);
    assert!(view.last_seen_ms.unwrap() >= seen_before, "{view:?}");
    assert_eq!(
        view.agent_version.as_deref(),
        Some(flotilla_common::VERSION)
    );
    agent.wait("the agent to notice", |s| !s.connected).await;

    // The network comes back: the agent reconnects on its own.
    relay.set_dropping(false);
    agent
        .wait("reconnected", |s| s.connected && s.sessions == 2)
        .await;
    eventually("the hub to see it again", Duration::from_secs(10), || {
        east(&hub).connected
    })
    .await;
    agent.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_lost_in_a_hub_crash_are_restored_from_the_agents_hello() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let addr = hub.addr;
    let dir = tempfile::tempdir().unwrap();
    let mut east = RunningAgent::start(agent_config(
        &hub,
        "east",
        Some(hub.add("east").await),
        dir.path(),
    ));
    east.wait("connected", |s| s.connected).await;
    let envelope = hub.publish("east", "web", 1, 1).await;
    east.wait("applied", |s| s.applied.len() == 1).await;
    eventually("the ack", Duration::from_secs(10), || {
        hub.store
            .link("east")
            .unwrap()
            .unwrap()
            .acks
            .contains_key("default/web")
    })
    .await;
    hub.stop().await;

    // Acks are written without a flush, so a hub killed right after one can come
    // back without it; here it is removed from the stopped hub's store.
    {
        let store = flotilla_hub::store::Store::open(&hub_dir.path().join("db")).unwrap();
        let mut link = store.link("east").unwrap().unwrap();
        link.acks.clear();
        store.put_link(&link).await.unwrap();
    }
    let hub = Hub::start(hub_dir.path(), addr).await;
    east.wait("reconnected", |s| s.connected && s.sessions == 2)
        .await;
    eventually(
        "the ack restored from the hello",
        Duration::from_secs(10),
        || {
            hub.store
                .link("east")
                .unwrap()
                .unwrap()
                .acks
                .get("default/web")
                .is_some_and(|a| {
                    a.generation == 1
                        && a.digest == envelope.digest.to_string()
                        && a.outcome == flotilla_common::message::BundleOutcome::Applied
                })
        },
    )
    .await;
    // Restored from what the agent has, not by sending the bundle again.
    assert_eq!(east.state.borrow().bundles_received, 1);
    east.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_reaches_the_connected_agent_and_its_result_comes_back() {
    use flotilla_common::message::{Command, CommandKind};
    use flotilla_hub::link::CommandError;

    let hub_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let token = hub.add("east").await;
    let mut agent = RunningAgent::start(agent_config(&hub, "east", Some(token), agent_dir.path()));
    agent.wait("connected", |s| s.connected).await;
    eventually(
        "the link counts it connected",
        Duration::from_secs(10),
        || hub.link.is_connected("east"),
    )
    .await;

    let request_id = hub.link.new_request_id().unwrap();
    let command = Command {
        request_id,
        app: AppRef::new("default", "web"),
        kind: CommandKind::Refresh,
    };
    // Whatever the agent makes of it, its answer carries this request id.
    let result = hub
        .link
        .command("east", command.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(result.request_id, request_id);

    let unknown = hub
        .link
        .command("west", command, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(&unknown, CommandError::NotConnected { cluster } if cluster == "west"),
        "{unknown}"
    );
    assert_eq!(unknown.to_string(), "cluster west is not connected");

    agent.stop().await.unwrap();
    hub.stop().await;
}

/// The agent enforces the bundle's AppProject again: a signed bundle with an
/// object its project does not allow is refused with the rule named, is not
/// stored as applied, and the hub records the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_bundle_its_project_does_not_permit() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path(), loopback()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut east = RunningAgent::start(agent_config(
        &hub,
        "east",
        Some(hub.add("east").await),
        dir.path(),
    ));
    east.wait("connected", |s| s.connected).await;
    let mut bundle = fixture::bundle("east", "web", 1, 1, 16);
    bundle.project.name = "team".to_owned();
    bundle.project.source_repos = vec!["https://git.example/other/*".to_owned()];
    let envelope = hub
        .store
        .bundle_signer()
        .await
        .unwrap()
        .sign(&bundle)
        .unwrap();
    hub.store
        .put_bundle("default", "web", "east", 1, &envelope.encode().unwrap())
        .await
        .unwrap();
    east.wait("refused", |s| s.bundles_rejected == 1).await;
    assert_eq!(east.applied_generation("web"), None);
    eventually(
        "the hub records the refusal",
        Duration::from_secs(10),
        || {
            hub.store
            .link("east")
            .unwrap()
            .unwrap()
            .acks
            .get("default/web")
            .is_some_and(|a| {
                matches!(&a.outcome, flotilla_common::message::BundleOutcome::Rejected(
                    flotilla_common::message::Rejection::NotPermitted { message },
                ) if message.contains(
                    "repository https://git.example/fleet.git is not permitted by spec.sourceRepos",
                ))
            })
        },
    )
    .await;
    east.stop().await.unwrap();
    hub.stop().await;
}

/// With a push budget smaller than one bundle, bundles leave one at a time:
/// every agent still gets the newest generation of every app, whether it was
/// stored before or while the others were on their way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_smaller_than_one_bundle_still_delivers_every_newest_bundle() {
    let hub_dir = tempfile::tempdir().unwrap();
    let mut config = LinkConfig::new(loopback());
    config.bundle_bytes_in_flight = 1;
    let hub = Hub::start_with(hub_dir.path(), config).await;
    let clusters = ["east", "west", "north"];
    let mut agents = Vec::new();
    let mut dirs = Vec::new();
    for name in clusters {
        let token = hub.add(name).await;
        let dir = tempfile::tempdir().unwrap();
        let mut agent = RunningAgent::start(agent_config(&hub, name, Some(token), dir.path()));
        agent.wait("connected", |s| s.connected).await;
        agents.push(agent);
        dirs.push(dir);
    }
    // Two generations of two apps per cluster, stored back to back: the second
    // generation of each is announced while the first is still queued or in
    // flight.
    for generation in 1..=2 {
        for name in clusters {
            for app in ["web", "api"] {
                hub.publish_sized(name, app, generation, 4, 8 * 1024).await;
            }
        }
    }
    for agent in &mut agents {
        agent
            .wait("generation 2 of both apps applied", |s| {
                ["web", "api"].iter().all(|app| {
                    s.applied
                        .iter()
                        .any(|a| a.app.name == *app && a.generation == 2)
                })
            })
            .await;
    }
    for name in clusters {
        eventually("the hub records both acks", Duration::from_secs(10), || {
            let link = hub.store.link(name).unwrap().unwrap();
            ["default/web", "default/api"]
                .iter()
                .all(|app| link.acks.get(*app).is_some_and(|a| a.generation == 2))
        })
        .await;
    }
    for agent in agents {
        assert!(agent.stop().await.is_ok());
    }
    hub.stop().await;
}
