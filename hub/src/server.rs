//! The hub as a long-running service: polls each repository at its interval and
//! refreshes at once when a forge's push webhook names it.
//!
//! Refreshes run one at a time on one task, fed by the poll timer and by webhooks,
//! so a repository is never refreshed twice at once and a burst of webhooks
//! coalesces into one refresh per repository.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::account;
use crate::api::{self, ApiState};
use crate::link::Link;
use crate::rbac::Policy;
use crate::refresh::Refresher;
use crate::source::{DEFAULT_POLL_INTERVAL, webhook};
use crate::store::Store;

mod tls;

pub use tls::{ApiTls, Error as TlsError};

/// The webhook path, as forges are configured to call it.
pub const WEBHOOK_PATH: &str = "/api/webhook";

/// How many refresh requests (webhooks, new apps) may wait at once. A full
/// queue refuses more: each repository is polled at its interval anyway, and a
/// flood of webhooks must not grow the hub's memory.
pub const REFRESH_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Serving HTTP failed.
    #[error("the API server stopped")]
    Serve(#[source] std::io::Error),
    /// The admin account could not be made.
    #[error("failed to set up the admin account")]
    Account(#[from] account::Error),
    /// The API's TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// The hub-wide webhook secret is empty: anyone could sign with it.
    #[error("the webhook secret is empty; give a real one, or none")]
    EmptyWebhookSecret,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the service needs.
pub struct Config {
    /// Where the API (and webhook) listens.
    pub listen: SocketAddr,
    /// Accepted on webhooks for repositories that have no secret of their own.
    pub webhook_secret: Option<String>,
    /// Who may do what through the API.
    pub policy: Policy,
    /// The `admin` account's password on first start; generated when `None`.
    pub admin_password: Option<String>,
    /// HTTPS from the hub's CA, from provided files, or plain HTTP on loopback.
    pub tls: ApiTls,
    /// The agent link this hub runs, if any: the API removes clusters through it
    /// and `/readyz` waits for it.
    pub link: Option<Arc<Link>>,
    /// The QUIC address agents dial, written into install manifests.
    pub agent_address: Option<String>,
}

/// The policy when none is configured: `admin` is `role:admin`, nobody else may do
/// anything.
pub fn default_policy() -> Policy {
    Policy::parse("g, admin, role:admin", None, "built-in default")
        .expect("invariant: the default policy parses")
}

/// A running hub service.
pub struct Server {
    addr: SocketAddr,
    generated_admin_password: Option<String>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// For waiting on flushes that stopped refreshes leave running.
    store: Store,
}

#[derive(Clone)]
struct Shared {
    store: Store,
    refresh_now: mpsc::Sender<String>,
    webhook_secret: Option<String>,
    watched: Arc<Watched>,
}

/// The repositories to watch, worked out from the store again only when an app
/// or a repository changed: an unauthenticated webhook, however many come, costs
/// no walk over every stored app.
#[derive(Default)]
struct Watched {
    /// The store's sources version when they were read, and what was read.
    last: tokio::sync::Mutex<Option<(u64, Arc<Repos>)>>,
}

/// Repository URLs with their poll intervals.
type Repos = BTreeMap<String, Duration>;

impl Watched {
    async fn get(&self, store: &Store) -> Arc<Repos> {
        let mut last = self.last.lock().await;
        let version = store.sources_version();
        if let Some((seen, repos)) = &*last
            && *seen == version
        {
            return repos.clone();
        }
        let reading = store.clone();
        let repos = Arc::new(
            tokio::task::spawn_blocking(move || watched_repos(&reading))
                .await
                .unwrap_or_default(),
        );
        *last = Some((version, repos.clone()));
        repos
    }
}

impl Server {
    /// Binds the API and starts polling. Every repository is refreshed once at start.
    pub async fn start(config: Config, store: Store, refresher: Refresher) -> Result<Self> {
        // Refused before binding, so nothing listens even for a moment.
        if matches!(config.tls, ApiTls::Plain) && !config.listen.ip().is_loopback() {
            return Err(tls::Error::PlainNotLoopback(config.listen).into());
        }
        if config
            .webhook_secret
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(Error::EmptyWebhookSecret);
        }
        let refresher = Arc::new(refresher);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(Error::Serve)?;
        let tls = tls::server_config(&config.tls, addr, &store).await?;
        let generated_admin_password =
            account::ensure_admin(&store, config.admin_password.as_deref()).await?;
        let (shutdown, stop) = watch::channel(false);
        let (refresh_now, requests) = mpsc::channel(REFRESH_QUEUE);
        let registrations = config.link.as_ref().map(|l| l.registrations());
        let rollouts = Arc::new(
            crate::rollout::Rollouts::new(store.clone(), refresher.issuer().clone())
                .with_metrics(refresher.metrics()),
        );
        let api = api::router(ApiState {
            store: store.clone(),
            policy: Arc::new(config.policy),
            refresh_now: refresh_now.clone(),
            link: config.link,
            metrics: refresher.metrics(),
            agent_address: config.agent_address,
            refresher: Some(refresher.clone()),
            command_timeout: api::DEFAULT_COMMAND_TIMEOUT,
            logins: Arc::default(),
            rollouts: Some(rollouts.clone()),
        });
        let watched = Arc::new(Watched::default());
        let shared = Shared {
            store: store.clone(),
            refresh_now,
            webhook_secret: config.webhook_secret,
            watched: watched.clone(),
        };
        let app = Router::new()
            .route(WEBHOOK_PATH, post(webhook_handler))
            .with_state(shared)
            .merge(api)
            .layer(axum::middleware::map_response(api::error::to_json));
        let mut api_stop = stop.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let api = match tls {
            Some(tls) => {
                let listener = tls::TlsListener::new(listener, tls).map_err(Error::Serve)?;
                // Tapping is what makes axum hand the peer address of a custom
                // listener to handlers, for per-client login limits.
                let listener = axum::serve::ListenerExt::tap_io(listener, |_| {});
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                tokio::spawn(async move {
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = api_stop.wait_for(|stopped| *stopped).await;
                    });
                    if let Err(e) = serve.await {
                        warn!(error = %e, "the API server stopped");
                    }
                })
            }
            None => tokio::spawn(async move {
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = api_stop.wait_for(|stopped| *stopped).await;
                });
                if let Err(e) = serve.await {
                    warn!(error = %e, "the API server stopped");
                }
            }),
        };
        let flushes = store.clone();
        let rolling = tokio::spawn(rollouts.run(stop.clone()));
        let poller = tokio::spawn(poll_loop(
            store,
            watched,
            refresher,
            requests,
            registrations,
            stop,
        ));
        info!(%addr, scheme, "hub API listening");
        Ok(Self {
            addr,
            generated_admin_password,
            shutdown,
            tasks: vec![api, poller, rolling],
            store: flushes,
        })
    }

    /// As [`Server::start`], with the agent link the API sends sync, diff and
    /// refresh commands over (and removes clusters through).
    pub async fn start_with_link(
        mut config: Config,
        store: Store,
        refresher: Refresher,
        link: Option<Arc<Link>>,
    ) -> Result<Self> {
        if link.is_some() {
            config.link = link;
        }
        Self::start(config, store, refresher).await
    }

    /// The `admin` password made at this start, if one was made: show it once.
    pub fn generated_admin_password(&self) -> Option<&str> {
        self.generated_admin_password.as_deref()
    }

    /// Where the API listens (with port 0 asked for, the port the system chose).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops polling and serving, and waits for both.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // Refreshes cut short still flush, with the database open.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.store.flushes_done()).await;
    }
}

/// Every repository the hub must watch: those registered, and those apps name.
fn watched_repos(store: &Store) -> BTreeMap<String, Duration> {
    // Every source of every app: Git repositories, chart repositories and
    // registries alike are polled, so a new commit or chart version is seen.
    let mut repos: BTreeMap<String, Duration> = store
        .apps()
        .unwrap_or_default()
        .into_iter()
        .flat_map(|a| {
            a.application
                .sources()
                .iter()
                .map(|s| (s.repo_url.clone(), DEFAULT_POLL_INTERVAL))
                .collect::<Vec<_>>()
        })
        .collect();
    // Credential templates are prefixes, not repositories.
    for repo in store
        .repos()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !r.template)
    {
        repos.insert(
            repo.url.clone(),
            Duration::from_secs(
                repo.poll_interval_secs
                    .clamp(1, api::MAX_POLL_INTERVAL_SECS),
            ),
        );
    }
    repos
}

/// How many repositories refresh at once.
const PARALLEL_REFRESHES: usize = 4;

async fn poll_loop(
    store: Store,
    watched_now: Arc<Watched>,
    refresher: Arc<Refresher>,
    mut requests: mpsc::Receiver<String>,
    mut registrations: Option<tokio::sync::broadcast::Receiver<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next_due: BTreeMap<String, Instant> = BTreeMap::new();
    let mut running: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    let mut in_flight: std::collections::HashMap<tokio::task::Id, String> =
        std::collections::HashMap::new();
    // Repositories that came due while they (or too many others) were refreshing.
    let mut again: BTreeSet<String> = BTreeSet::new();
    loop {
        let now = Instant::now();
        let mut due: BTreeSet<String> = BTreeSet::new();
        let watched = watched_now.get(&store).await;
        next_due.retain(|url, _| watched.contains_key(url));
        for (url, interval) in watched.iter() {
            let (url, interval) = (url.clone(), *interval);
            let at = next_due.entry(url.clone()).or_insert(now);
            if *at <= now {
                due.insert(url);
                *at = now + interval;
            }
        }
        // Webhook requests that arrived meanwhile join this round, once each.
        while let Ok(url) = requests.try_recv() {
            due.insert(url);
        }
        due.append(&mut again);
        // Each repository refreshes in its own task, a few at once, so one that
        // stalls (until the fetch timeout) holds up only itself. A repository
        // already refreshing, or over the limit, waits in `again` for the next
        // round, which the end of a refresh starts.
        for url in due {
            if in_flight.values().any(|u| *u == url) || in_flight.len() >= PARALLEL_REFRESHES {
                again.insert(url);
                continue;
            }
            let refresher = refresher.clone();
            let task_url = url.clone();
            let handle = running.spawn(async move {
                let shown = crate::source::RepoSpec::new(&task_url).redacted_url();
                match refresher.refresh_repo(&task_url, SystemTime::now()).await {
                    Ok(outcomes) => info!(repo = %shown, apps = outcomes.len(), "refreshed"),
                    Err(e) => {
                        let error =
                            crate::render::redact_urls(&flotilla_common::error::describe(&e));
                        warn!(repo = %shown, %error, "refresh failed")
                    }
                }
            });
            in_flight.insert(handle.id(), url);
        }
        let wake = next_due
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        let mut cluster_registered = false;
        tokio::select! {
            _ = tokio::time::sleep_until(wake.max(Instant::now() + Duration::from_millis(200)).into()) => {}
            // A webhook: due at once, so the next round refreshes it.
            Some(url) = requests.recv() => {
                next_due.insert(url, Instant::now());
            }
            // A cluster registered: apps that were waiting for it (their
            // destination was not registered yet) render now, not at the next poll.
            Some(cluster) = registered(&mut registrations) => {
                info!(%cluster, "a cluster registered; refreshing every repository");
                cluster_registered = true;
                next_due.clear();
            }
            // A refresh finished: what came due meanwhile can start.
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(e) => e.id(),
                };
                if let Err(e) = done {
                    warn!(error = %e, "a refresh task failed");
                }
                in_flight.remove(&id);
            }
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        // Its ApplicationSets' clusters generators must see it: their parents
        // render again, even at the commit they rendered last.
        if cluster_registered && let Err(e) = refresher.render_parents_again().await {
            warn!(error = %e, "could not mark app-of-apps parents to render again");
        }
    }
}

/// The next registration, or never when there is no link to hear from. A
/// receiver that fell behind has only missed names: it still says "someone
/// registered".
async fn registered(
    registrations: &mut Option<tokio::sync::broadcast::Receiver<String>>,
) -> Option<String> {
    let Some(receiver) = registrations else {
        return std::future::pending().await;
    };
    match receiver.recv().await {
        Ok(cluster) => Some(cluster),
        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some("(several)".to_owned()),
        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
            *registrations = None;
            std::future::pending().await
        }
    }
}

/// `POST /api/webhook`: a push from GitHub, GitLab or Gitea. Answers 202 when
/// accepted (alike whether it names a watched repository or not), 400 for a
/// malformed request, 401 for a bad or missing signature, and 503 when too many
/// refreshes are waiting.
async fn webhook_handler(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    // First read the payload to learn which repository it is about, then check it
    // against that repository's secret (or the hub-wide one).
    let unverified = match webhook::parse(&headers, &body, None) {
        Ok(event) => event,
        Err(webhook::Error::NotAPush { .. }) => {
            return (StatusCode::OK, "ignored: not a push\n".to_owned());
        }
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let watched = shared.watched.get(&shared.store).await;
    let matching: Vec<String> = watched
        .keys()
        .filter(|url| {
            unverified
                .repo_urls
                .iter()
                .any(|u| webhook::same_repository(u, url))
        })
        .cloned()
        .collect();
    // An unauthenticated caller must not learn which repositories are watched:
    // one that matches none is judged by the hub-wide secret, if there is one,
    // and otherwise answered as an accepted push is.
    if matching.is_empty() {
        if let Some(secret) = &shared.webhook_secret
            && let Err(e) = webhook::parse(&headers, &body, Some(secret.as_bytes()))
        {
            return (StatusCode::UNAUTHORIZED, format!("{e}\n"));
        }
        return (StatusCode::ACCEPTED, ACCEPTED.to_owned());
    }
    for url in &matching {
        let secret = shared
            .store
            .repo(url)
            .ok()
            .flatten()
            .and_then(|r| r.webhook_secret)
            .or_else(|| shared.webhook_secret.clone());
        // An empty secret (stored before it was refused) is one anyone can sign
        // with: nothing is accepted under it.
        if secret.as_deref().is_some_and(|s| s.trim().is_empty()) {
            warn!("webhook refused: the repository's webhook secret is empty");
            return (
                StatusCode::UNAUTHORIZED,
                "the webhook secret configured for this repository is empty; set a real one\n"
                    .to_owned(),
            );
        }
        let verified = secret.map(|s| webhook::parse(&headers, &body, Some(s.as_bytes())));
        if let Some(Err(e)) = verified {
            warn!(error = %e, "webhook refused");
            return (StatusCode::UNAUTHORIZED, format!("{e}\n"));
        }
    }
    for url in &matching {
        if shared.refresh_now.try_send(url.clone()).is_err() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many refreshes are waiting; the repository is polled at its interval\n"
                    .to_owned(),
            );
        }
    }
    (StatusCode::ACCEPTED, ACCEPTED.to_owned())
}

/// What every accepted push is answered with, whether it names a watched
/// repository or not.
const ACCEPTED: &str = "accepted\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Application;
    use crate::store::{AppOrigin, AppRecord};

    fn record(name: &str, repo: &str) -> AppRecord {
        let application = Application::from_yaml(
            &format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  project: default\n  source: {{repoURL: '{repo}', path: apps}}\n  destination: {{name: east}}\n"
            ),
            "test",
        )
        .unwrap();
        AppRecord::new(application, AppOrigin::Store)
    }

    #[tokio::test]
    async fn watched_repositories_are_worked_out_again_only_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .put_app(&record("one", "https://git.example/one.git"))
            .await
            .unwrap();
        let watched = Watched::default();
        let first = watched.get(&store).await;
        assert!(first.contains_key("https://git.example/one.git"));
        // Unchanged: the same reading, however often asked (a webhook flood).
        for _ in 0..100 {
            assert!(Arc::ptr_eq(&first, &watched.get(&store).await));
        }
        // A write to another tree changes nothing either.
        store
            .put_bundle("default", "one", "east", 1, b"envelope")
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &watched.get(&store).await));

        // A new app's repository is watched at once, a removed one no more.
        store
            .put_app(&record("two", "https://git.example/two.git"))
            .await
            .unwrap();
        let second = watched.get(&store).await;
        assert!(second.contains_key("https://git.example/two.git"));
        store.remove_app("default", "one").await.unwrap();
        let third = watched.get(&store).await;
        assert!(!third.contains_key("https://git.example/one.git"));
        assert!(third.contains_key("https://git.example/two.git"));
    }
}
