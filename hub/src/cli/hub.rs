//! `flotilla hub` (alias `serve`): checks the hub's flags, then wires the store,
//! the refresher, the agent link and the API server together and runs them until
//! Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_hub::chart::ChartCache;
use flotilla_hub::link::{Link, LinkConfig};
use flotilla_hub::rbac::Policy;
use flotilla_hub::refresh::Refresher;
use flotilla_hub::render::{Renderer, Tools};
use flotilla_hub::server::{self, ApiTls, Config, Server};
use flotilla_hub::source::RepoCache;
use flotilla_hub::store::Store;

use super::{ConfigError, default_data_dir};

#[derive(Debug, clap::Args)]
pub struct HubArgs {
    /// The hub's data folder (its sled database and bare clones).
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the API and the webhook endpoint (/api/webhook) listen.
    #[arg(long, env = "FLOTILLA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Secret for push webhooks of repositories that have none of their own.
    #[arg(long, env = "FLOTILLA_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// An argocd-rbac-cm ConfigMap (YAML) with policy.csv and policy.default; by
    /// default only `admin` may do anything.
    #[arg(long, env = "FLOTILLA_RBAC")]
    rbac: Option<PathBuf>,
    /// The `admin` password on first start; generated and printed once when unset.
    #[arg(long, env = "FLOTILLA_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Where agents connect (QUIC, UDP).
    #[arg(long, env = "FLOTILLA_AGENT_LISTEN", default_value = "127.0.0.1:7443")]
    agent_listen: std::net::SocketAddr,
    /// How long issued client certificates last, in days.
    #[arg(long, env = "FLOTILLA_CERT_DAYS", default_value_t = 30)]
    cert_days: u64,
    /// The agent address written into install manifests (`cluster add` through
    /// the API), host:port; --agent-listen by default.
    #[arg(long, env = "FLOTILLA_AGENT_ADDRESS")]
    agent_address: Option<String>,
    /// Serve the API with this PEM certificate chain instead of one from the hub's CA.
    #[arg(long, env = "FLOTILLA_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(long, env = "FLOTILLA_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// More DNS names or addresses for the certificate the hub's CA issues to the
    /// API; comma-separated.
    #[arg(long, env = "FLOTILLA_TLS_SAN", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Serve the API over plain HTTP; allowed only on a loopback --listen.
    #[arg(long, env = "FLOTILLA_PLAIN_HTTP", conflicts_with_all = ["tls_cert", "tls_key", "tls_san"])]
    plain_http: bool,
    /// QUIC keep-alive towards agents, in seconds.
    #[arg(long, env = "FLOTILLA_KEEP_ALIVE_SECS", default_value_t = 15)]
    keep_alive_secs: u64,
    /// How long an agent may stay silent before its cluster counts as
    /// disconnected, in seconds (the QUIC idle timeout).
    #[arg(long, env = "FLOTILLA_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    idle_timeout_secs: u64,
    /// Free space, in MiB, kept on the data folder's disk: below it the hub
    /// refuses new work with an error that says so, and takes it again once
    /// space returns (0 turns the check off).
    #[arg(long, env = "FLOTILLA_MIN_FREE_MIB", default_value_t = flotilla_hub::store::DEFAULT_MIN_FREE_MIB)]
    min_free_mib: u64,
    /// PEM certificate authorities to trust, besides the system's, for Git
    /// repositories, Helm chart repositories and OCI registries with a private
    /// CA (what Argo CD keeps in argocd-tls-certs-cm).
    #[arg(long, env = "FLOTILLA_REPO_CA_FILE")]
    repo_ca_file: Option<PathBuf>,
}

/// What the flags ask of the hub, checked before anything is opened or started.
#[derive(Debug)]
struct Settings {
    tls: ApiTls,
    policy: Policy,
    cert_lifetime: Duration,
    keep_alive: Duration,
    idle_timeout: Duration,
}

/// Checks every flag that can be wrong on its own, so a bad configuration exits 64
/// before the store is opened or a socket bound.
fn settings(args: &HubArgs) -> Result<Settings, ConfigError> {
    if args.cert_days == 0 {
        return Err(ConfigError("--cert-days must be at least 1".to_owned()));
    }
    if args
        .webhook_secret
        .as_deref()
        .is_some_and(|s| s.trim().is_empty())
    {
        return Err(ConfigError(
            "--webhook-secret is empty: anyone could sign with it; give a real one, or none"
                .to_owned(),
        ));
    }
    if args.keep_alive_secs == 0 || args.idle_timeout_secs <= args.keep_alive_secs {
        return Err(ConfigError(
            "--keep-alive-secs must be at least 1 and less than --idle-timeout-secs".to_owned(),
        ));
    }
    let tls = match (&args.tls_cert, &args.tls_key, args.plain_http) {
        (_, _, true) if !args.listen.ip().is_loopback() => {
            return Err(ConfigError(format!(
                "--plain-http is allowed only on a loopback --listen, not {}: credentials would cross the network unencrypted; drop --plain-http to serve HTTPS",
                args.listen
            )));
        }
        (_, _, true) => ApiTls::Plain,
        (Some(cert), Some(key), false) => ApiTls::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ if !args.tls_san.is_empty() => ApiTls::HubCaWithNames(args.tls_san.clone()),
        _ => ApiTls::HubCa,
    };
    let policy = match &args.rbac {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("reading --rbac {}: {e}", path.display())))?;
            let mut policy = Policy::from_configmap_yaml(&text, &path.display().to_string())
                .map_err(|e| ConfigError(e.to_string()))?;
            // The built-in admin account keeps its role, as Argo CD's does.
            policy.add_grouping("admin", "role:admin");
            policy
        }
        None => server::default_policy(),
    };
    Ok(Settings {
        tls,
        policy,
        cert_lifetime: Duration::from_secs(args.cert_days * 24 * 3600),
        keep_alive: Duration::from_secs(args.keep_alive_secs),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
    })
}

pub async fn run(args: HubArgs) -> anyhow::Result<()> {
    flotilla_common::logging::init();
    let Settings {
        tls,
        policy,
        cert_lifetime,
        keep_alive,
        idle_timeout,
    } = settings(&args)?;
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let store = Store::open(&data_dir.join("db")).context("opening the hub's store")?;
    store.set_min_free_mib(args.min_free_mib);
    let repo_ca =
        match &args.repo_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ConfigError(format!("reading --repo-ca-file {}: {e}", path.display()))
            })?),
            None => None,
        };
    let mut cache = RepoCache::new(data_dir.join("repos"))?;
    let mut charts = ChartCache::new(data_dir.join("charts"))?;
    if let Some(pem) = &repo_ca {
        cache = cache.trust_root_certificate_pem(pem.clone());
        charts = charts.trust_root_certificate_pem(pem.clone());
    }
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env()))
        .await?
        .with_chart_cache(charts);
    let mut link_config = LinkConfig::new(args.agent_listen);
    link_config.cert_lifetime = cert_lifetime;
    link_config.keep_alive = keep_alive;
    link_config.idle_timeout = idle_timeout;
    link_config.metrics = refresher.metrics();
    let link = Arc::new(
        Link::start(store.clone(), link_config)
            .await
            .context("starting the agent link")?,
    );
    let fingerprint = link.ca_fingerprint();
    let config = Config {
        listen: args.listen,
        webhook_secret: args.webhook_secret,
        policy,
        admin_password: args.admin_password,
        tls: tls.clone(),
        link: Some(link.clone()),
        // The bound address (with port 0, the port the system chose), unless it is
        // a wildcard no agent can dial: then `cluster add` must name one.
        agent_address: args.agent_address.or_else(|| {
            link.local_addr()
                .ok()
                .filter(|a| !a.ip().is_unspecified())
                .map(|a| a.to_string())
        }),
    };
    let server = match Server::start(config, store, refresher).await {
        Ok(server) => server,
        Err(e @ server::Error::Tls(_)) => return Err(ConfigError(format!("{e:#}")).into()),
        Err(e) => return Err(e.into()),
    };
    let scheme = if matches!(tls, ApiTls::Plain) {
        "http"
    } else {
        "https"
    };
    println!("hub API: {scheme}://{}", server.local_addr());
    if matches!(tls, ApiTls::HubCa | ApiTls::HubCaWithNames(_)) {
        println!("hub CA fingerprint (for flotilla login --ca-fingerprint): {fingerprint}");
    }
    if let Some(password) = server.generated_admin_password() {
        // Shown once, on the terminal only, never in the log.
        println!("admin password (shown once): {password}");
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.stop().await;
    if !Link::stop_shared(link, Duration::from_secs(10)).await {
        tracing::warn!("the agent link was still in use after 10 s; not waiting for it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        hub: HubArgs,
    }

    fn settings_of(flags: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["flotilla-hub"];
        argv.extend(flags);
        settings(&Flags::parse_from(argv).hub)
    }

    #[test]
    fn the_defaults_serve_https_from_the_hub_ca_with_the_default_policy() {
        let settings = settings_of(&[]).unwrap();
        assert!(matches!(settings.tls, ApiTls::HubCa));
        assert_eq!(settings.cert_lifetime, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(settings.keep_alive, Duration::from_secs(15));
        assert_eq!(settings.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn plain_http_is_refused_off_loopback_and_allowed_on_it() {
        let refused = settings_of(&["--plain-http", "--listen", "0.0.0.0:8080"]).unwrap_err();
        assert!(refused.0.contains("--plain-http"), "{refused}");
        let allowed = settings_of(&["--plain-http", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(allowed.tls, ApiTls::Plain));
    }

    #[test]
    fn extra_names_ask_the_hub_ca_for_them() {
        let settings = settings_of(&["--tls-san", "hub.example,10.0.0.1"]).unwrap();
        assert!(
            matches!(&settings.tls, ApiTls::HubCaWithNames(names) if names == &["hub.example", "10.0.0.1"])
        );
    }

    #[test]
    fn each_bad_flag_is_a_configuration_error_naming_it() {
        for (flags, named) in [
            (&["--cert-days", "0"][..], "--cert-days"),
            (&["--webhook-secret", "  "][..], "--webhook-secret"),
            (&["--keep-alive-secs", "0"][..], "--keep-alive-secs"),
            (
                &["--keep-alive-secs", "60", "--idle-timeout-secs", "60"][..],
                "--idle-timeout-secs",
            ),
            (&["--rbac", "/nonexistent/rbac.yaml"][..], "--rbac"),
        ] {
            let error = settings_of(flags).unwrap_err();
            assert!(error.0.contains(named), "{flags:?}: {error}");
        }
    }
}
