//! `flotilla`: the hub server and its command-line interface. This file only
//! parses and dispatches; each command lives in its own file under `cli/`.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

mod cli;

use cli::Connection;

/// Multi-cluster GitOps: one hub, an agent in every cluster.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version = flotilla_common::VERSION)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the objects an Application renders to, in apply order, without a hub
    /// (like `argocd app manifests --local` or `flux build`).
    Render(cli::render::RenderArgs),
    /// Run the hub: poll repositories, take push webhooks, render and store bundles,
    /// serve the API, and push bundles to agents over QUIC.
    #[command(visible_alias = "serve")]
    Hub(cli::hub::HubArgs),
    /// Log in to a hub (--server, --ca-fingerprint or --insecure) and keep the
    /// session for the commands below.
    Login(cli::login::LoginArgs),
    /// End the saved session, on the hub and here.
    Logout,
    /// Applications on the hub.
    #[command(subcommand)]
    App(cli::app::AppCommand),
    /// Git repositories the hub reads (credentials are stored, never shown).
    #[command(subcommand)]
    Repo(cli::repo::RepoCommand),
    /// Local accounts and their API tokens.
    #[command(subcommand)]
    Account(cli::account::AccountCommand),
    /// Add, remove, list and show clusters: through the API, or with --data-dir
    /// on a stopped hub's data folder.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCommand),
    /// AppProjects and their roles' tokens.
    #[command(subcommand)]
    Proj(cli::project::ProjCommand),
    /// Rollouts of ApplicationSets with a RollingSync strategy.
    #[command(subcommand)]
    Rollout(cli::rollout::RolloutCommand),
    /// Print a shell completion script: `source <(flotilla completion bash)`.
    Completion(cli::completion::CompletionArgs),
}

fn main() -> ExitCode {
    // reqwest is built without a default crypto provider; gix's https needs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flotilla: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let connection = cli.connection;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Render(args) => cli::render::run(args).await,
            Command::Hub(args) => cli::hub::run(args).await,
            Command::Login(args) => cli::login::login(args, &connection).await,
            Command::Logout => cli::login::logout(&connection).await,
            Command::App(command) => cli::app::run(command, &connection).await,
            Command::Repo(command) => cli::repo::run(command, &connection).await,
            Command::Account(command) => cli::account::run(command, &connection).await,
            Command::Cluster(command) => cli::cluster::run(command, &connection).await,
            Command::Proj(command) => cli::project::run(command, &connection).await,
            Command::Rollout(command) => cli::rollout::run(command, &connection).await,
            Command::Completion(args) => cli::completion::run(args, Cli::command()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::report(&e),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_cli_definition_is_valid() {
        super::Cli::command().debug_assert();
    }
}
