//! `flotilla-agent`: runs in one cluster, dials the hub, applies what it is sent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use flotilla_agent::apply::{Applier, Options, Reach};
use flotilla_agent::engine::Engine;
use flotilla_agent::identity::Keeper;
use flotilla_agent::link::{Agent, AgentConfig};
use flotilla_agent::store::Store;

/// The Flotilla agent for one cluster.
#[derive(Debug, Parser)]
#[command(name = "flotilla-agent", version = flotilla_common::VERSION)]
struct Cli {
    /// The hub's QUIC address, host:port.
    #[arg(long, env = "FLOTILLA_HUB")]
    hub: String,
    /// SHA-256 fingerprint of the hub's CA, as `flotilla cluster add` printed it.
    #[arg(long, env = "FLOTILLA_CA_FINGERPRINT")]
    ca_fingerprint: String,
    /// The name this cluster was added under.
    #[arg(long, env = "FLOTILLA_CLUSTER")]
    cluster: String,
    /// The single-use bootstrap token; needed only until the agent has registered.
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the agent keeps its identity and store.
    #[arg(
        long,
        env = "FLOTILLA_STATE_DIR",
        default_value = "/var/lib/flotilla-agent"
    )]
    state_dir: PathBuf,
    /// The kubeconfig to use; in-cluster config or $KUBECONFIG when absent.
    #[arg(long, env = "FLOTILLA_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Keep the identity in this Secret (NAMESPACE/NAME) of the agent's cluster
    /// instead of the state directory, so it survives pod restarts.
    #[arg(long, env = "FLOTILLA_IDENTITY_SECRET")]
    identity_secret: Option<String>,
    /// Act only in these namespaces (comma-separated), as installed by
    /// `flotilla cluster add --namespaces`: a bundle with anything outside them,
    /// a cluster-scoped object included, is refused whole. Empty: the whole cluster.
    #[arg(long, env = "FLOTILLA_NAMESPACES", default_value = "")]
    namespaces: String,
    /// The longest delay between reconnect attempts, in seconds.
    #[arg(long, env = "FLOTILLA_BACKOFF_MAX_SECS", default_value_t = 30)]
    backoff_max_secs: u64,
    /// QUIC keep-alive towards the hub, in seconds.
    #[arg(long, env = "FLOTILLA_KEEP_ALIVE_SECS", default_value_t = 15)]
    keep_alive_secs: u64,
    /// How long the hub may stay silent before the agent reconnects, in seconds
    /// (the QUIC idle timeout).
    #[arg(long, env = "FLOTILLA_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    idle_timeout_secs: u64,
}

/// Exit status for bad flags or configuration, as sysexits' EX_USAGE.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    flotilla_common::logging::init();
    let hub: SocketAddr = match std::net::ToSocketAddrs::to_socket_addrs(&cli.hub)
        .ok()
        .and_then(|mut addrs| addrs.next())
    {
        Some(addr) => addr,
        None => {
            eprintln!(
                "flotilla-agent: --hub {:?} is not a reachable host:port",
                cli.hub
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if cli.ca_fingerprint.replace(':', "").len() != 64 {
        eprintln!("flotilla-agent: --ca-fingerprint must be a hex SHA-256 (64 digits)");
        return ExitCode::from(EXIT_USAGE);
    }
    if cli.identity_secret.as_deref().is_some_and(|s| {
        s.split_once('/')
            .is_none_or(|(ns, name)| ns.is_empty() || name.is_empty())
    }) {
        eprintln!("flotilla-agent: --identity-secret must be NAMESPACE/NAME");
        return ExitCode::from(EXIT_USAGE);
    }
    if cli.keep_alive_secs == 0 || cli.idle_timeout_secs <= cli.keep_alive_secs {
        eprintln!(
            "flotilla-agent: --keep-alive-secs must be at least 1 and less than --idle-timeout-secs"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let reach = match Reach::parse(&cli.namespaces) {
        Ok(reach) => reach,
        Err(e) => {
            eprintln!("flotilla-agent: --namespaces: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flotilla-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, hub, reach)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, hub: SocketAddr, reach: Reach) -> anyhow::Result<()> {
    let kube_config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig")?,
    };
    let url = kube_config.cluster_url.to_string();
    let client = kube::Client::try_from(kube_config).context("building the kube client")?;
    let facts = flotilla_agent::facts::read(client.clone(), url.clone()).await?;
    let keeper = match &cli.identity_secret {
        Some(secret) => {
            let (namespace, name) = secret
                .split_once('/')
                .context("--identity-secret must be NAMESPACE/NAME")?;
            Keeper::Secret {
                client: client.clone(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }
        }
        None => Keeper::Dir(cli.state_dir.clone()),
    };
    // One database: the engine's inventory (what each app owns, which hooks ran)
    // and the link's journal are trees of it.
    let db = flotilla_agent::store::open_database(&cli.state_dir).with_context(|| {
        format!(
            "opening the agent's database in {}",
            cli.state_dir.display()
        )
    })?;
    let inventory = Store::in_database(db.clone()).context("opening the agent's inventory")?;
    let journal = flotilla_agent::journal::Store::in_database(db);
    let engine = Engine::with_options(
        Applier::new(
            client,
            cli.cluster.clone(),
            inventory,
            Options {
                reach,
                ..Options::default()
            },
        ),
        flotilla_agent::engine::Options {
            api_server_url: Some(url),
            ..Default::default()
        },
    );
    let mut config = AgentConfig::new(hub, cli.ca_fingerprint, cli.cluster, cli.state_dir);
    config.token = cli.token;
    config.facts = facts;
    config.backoff_max = Duration::from_secs(cli.backoff_max_secs.max(1));
    config.keep_alive = Duration::from_secs(cli.keep_alive_secs);
    config.idle_timeout = Duration::from_secs(cli.idle_timeout_secs);
    let agent = Agent::with_store(config, journal, engine)?.with_keeper(keeper);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    agent.run(stop).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_cli_definition_is_valid() {
        super::Cli::command().debug_assert();
    }
}
