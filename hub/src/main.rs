//! `flotilla`: the hub server and its command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use flotilla_common::model::{ApiResource, ClusterFacts};
use flotilla_hub::app::{Application, SourceKind};
use flotilla_hub::client::{self, Client, Session};
use flotilla_hub::link::{Link, LinkConfig};
use flotilla_hub::rbac::Policy;
use flotilla_hub::refresh::Refresher;
use flotilla_hub::render::{self, Renderer, Target, Tools};
use flotilla_hub::server::{self, ApiTls, Config, Server};
use flotilla_hub::source::{RepoCache, RepoSpec};
use flotilla_hub::store::Store;

mod cli;

use cli::app as app_cli;
use cli::output::{Format, OutputArgs, Table, cell, print};
use cli::{ConfigError, Connection, UsageError, default_data_dir};

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
    Render(RenderArgs),
    /// Run the hub: poll repositories, take push webhooks, render and store bundles,
    /// serve the API, and push bundles to agents over QUIC.
    #[command(visible_alias = "serve")]
    Hub(ServeArgs),
    /// Log in to a hub (--server, --ca-fingerprint or --insecure) and keep the
    /// session for the commands below.
    Login(LoginArgs),
    /// End the saved session, on the hub and here.
    Logout,
    /// Applications on the hub.
    #[command(subcommand)]
    App(AppCommand),
    /// Git repositories the hub reads (credentials are stored, never shown).
    #[command(subcommand)]
    Repo(RepoCommand),
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
    /// Print a shell completion script: `source <(flotilla completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
struct LoginArgs {
    /// The hub, as `argocd login SERVER` takes it: HOST:PORT (https) or a URL;
    /// the same as --server.
    #[arg(value_name = "SERVER")]
    address: Option<String>,
    #[arg(long, env = "FLOTILLA_USERNAME", default_value = "admin")]
    username: String,
    /// The password; read from FLOTILLA_PASSWORD when not given.
    #[arg(long, env = "FLOTILLA_PASSWORD", hide_env_values = true)]
    password: String,
}

#[derive(Debug, Subcommand)]
enum AppCommand {
    /// List the applications you may see, with their sync status and health.
    List(OutputArgs),
    /// Show one application (PROJECT/NAME, or NAME in the default project): its
    /// state, conditions and, per cluster, its resource tree with health.
    Get {
        app: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Sync an application now and wait for the result (exit 1 when it failed).
    Sync(app_cli::SyncArgs),
    /// List an application's past syncs.
    History {
        app: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Re-send the bundle of a history entry and sync it; switches automated sync
    /// off, as Argo CD does.
    Rollback { app: String, id: u64 },
    /// Show desired against live state per cluster as a unified diff (exit 20 when
    /// they differ).
    Diff { app: String },
    /// Wait until an application is Synced and/or Healthy (exit 1 on timeout).
    Wait(app_cli::WaitArgs),
    /// Create applications from an Argo CD Application manifest (-f), or one from
    /// flags as `argocd app create` takes them.
    Create(app_cli::CreateArgs),
    /// Delete an application (PROJECT/NAME, or NAME in the default project) and,
    /// unless --cascade=false, what it deployed.
    Delete(app_cli::DeleteArgs),
}

#[derive(Debug, Subcommand)]
enum RepoCommand {
    /// List repositories.
    List(OutputArgs),
    /// Remove a repository and its credentials (the URL as `repo list` shows it).
    Rm { url: String },
    /// Add a repository, or an Argo CD repository Secret with --from-secret.
    Add {
        url: Option<String>,
        #[arg(long)]
        username: Option<String>,
        /// The token or password; only from the environment, so it stays out of
        /// shell history.
        #[arg(
            long = "password",
            env = "FLOTILLA_REPO_PASSWORD",
            hide_env_values = true
        )]
        password: Option<String>,
        /// A private key file for ssh repositories.
        #[arg(long)]
        ssh_private_key_path: Option<PathBuf>,
        /// A Kubernetes Secret labelled argocd.argoproj.io/secret-type: repository.
        #[arg(long)]
        from_secret: Option<PathBuf>,
        /// Seconds between polls (180 by default).
        #[arg(long)]
        poll_interval: Option<u64>,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
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
}

#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// The file holding the Application.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Render this branch, tag or commit instead of the Application's targetRevision.
    #[arg(long)]
    revision: Option<String>,
    /// Render for this registered cluster, using the Kubernetes version and APIs its
    /// agent reported (needs --data-dir).
    #[arg(long)]
    cluster: Option<String>,
    /// The hub's data folder, for repo credentials and cluster facts.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where bare clones are kept between runs.
    #[arg(long, env = "FLOTILLA_REPO_CACHE")]
    repo_cache: Option<PathBuf>,
    /// Kubernetes version for Helm's --kube-version, overriding the cluster's.
    #[arg(long)]
    kube_version: Option<String>,
    /// An API version (group/version or group/version/Kind) for Helm's
    /// --api-versions; repeatable. Replaces the cluster's list.
    #[arg(long = "api-versions")]
    api_versions: Vec<String>,
}

/// Exit status for bad usage, as clap gives for bad flags.
const EXIT_USAGE: u8 = 2;
/// Exit status for a bad hub configuration, as sysexits' EX_USAGE.
const EXIT_CONFIG: u8 = 64;

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
            Command::Render(args) => render_command(args).await,
            Command::Hub(args) => serve_command(args).await,
            Command::Login(args) => login_command(args, &connection).await,
            Command::Logout => logout_command(&connection).await,
            Command::App(command) => app_command(command, &connection).await,
            Command::Repo(command) => repo_command(command, &connection).await,
            Command::Account(command) => cli::account::run(command, &connection).await,
            Command::Cluster(command) => cli::cluster::run(command, &connection).await,
            Command::Proj(command) => cli::project::run(command, &connection).await,
            Command::Completion { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "flotilla",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<app_cli::Exit>() {
                if !exit.message.is_empty() {
                    eprintln!("flotilla: {}", exit.message);
                }
                return ExitCode::from(exit.code);
            }
            eprintln!("flotilla: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 2 for bad usage (here or as the hub judged the request), 64 for a bad hub
/// configuration, 1 for anything that failed.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() {
        EXIT_USAGE
    } else if e.downcast_ref::<ConfigError>().is_some() {
        EXIT_CONFIG
    } else if matches!(
        e.downcast_ref::<client::Error>(),
        Some(client::Error::Api { status: 400, .. })
    ) {
        EXIT_USAGE
    } else {
        1
    }
}

async fn login_command(args: LoginArgs, connection: &Connection) -> anyhow::Result<()> {
    let server = match (args.address, &connection.server) {
        (Some(address), _) if address.contains("://") => address,
        (Some(address), _) => format!("https://{address}"),
        (None, Some(server)) => server.clone(),
        (None, None) => {
            return Err(UsageError(
                "give the hub: flotilla login HOST:PORT, or --server https://HOST:PORT (or FLOTILLA_SERVER)"
                    .to_owned(),
            )
            .into());
        }
    };
    let trust = connection.trust()?.unwrap_or_default();
    let session = Client::login(&server, &args.username, &args.password, trust).await?;
    session.save()?;
    println!("logged in to {} as {}", session.server, args.username);
    Ok(())
}

async fn logout_command(connection: &Connection) -> anyhow::Result<()> {
    let Ok(session) = Session::load() else {
        println!("not logged in");
        return Ok(());
    };
    // Ending it on the hub is best effort: a hub that is gone still lets you log
    // out here.
    if let Ok(client) = connection.client()
        && let Err(e) = client.delete("/api/v1/session").await
    {
        eprintln!("flotilla: the hub did not end the session: {e}");
    }
    Session::remove()?;
    println!("logged out of {}", session.server);
    Ok(())
}

async fn render_command(args: RenderArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| UsageError(format!("reading {}: {e}", args.file.display())))?;
    let mut app = Application::from_yaml(&text, &args.file.display().to_string())
        .map_err(|e| UsageError(e.to_string()))?;
    if let (Some(revision), Some(source)) = (&args.revision, app.spec.source.as_mut()) {
        source.target_revision = revision.clone();
    }

    let store = match &args.data_dir {
        Some(dir) => Some(
            Store::open(dir)
                .context("opening the hub's data folder (stop the hub, or omit --data-dir)")?,
        ),
        None => None,
    };
    let mut facts = match (&args.cluster, &store) {
        (Some(name), Some(store)) => {
            let cluster = store.cluster(name)?.ok_or_else(|| {
                let known: Vec<String> = store
                    .clusters()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.name)
                    .collect();
                UsageError(format!(
                    "no cluster named {name:?} is registered (known: {})",
                    known.join(", ")
                ))
            })?;
            cluster.facts
        }
        (Some(_), None) => {
            return Err(UsageError(
                "--cluster needs --data-dir (or FLOTILLA_DATA_DIR) to find the cluster".to_owned(),
            )
            .into());
        }
        (None, _) => None,
    };
    if args.kube_version.is_some() || !args.api_versions.is_empty() {
        let f = facts.get_or_insert_with(ClusterFacts::default);
        if let Some(v) = &args.kube_version {
            f.kubernetes_version = v.clone();
        }
        if !args.api_versions.is_empty() {
            f.api_resources = args.api_versions.iter().map(|v| api_version(v)).collect();
        }
    }

    let tools = Tools::from_env();
    let renderer = Renderer::new(tools);
    let target = Target {
        cluster: args.cluster.as_deref().unwrap_or(""),
        facts: facts.as_ref(),
    };
    let rendered = if app.source_kind() == SourceKind::HelmRepo {
        renderer.render(&app, None, None, target).await?
    } else {
        let source = app.source();
        let spec = match store
            .as_ref()
            .map(|s| s.repo(&source.repo_url))
            .transpose()?
            .flatten()
        {
            Some(record) => record.spec(),
            None => RepoSpec::new(local_url(&source.repo_url, &args.file)),
        };
        let cache_dir = args.repo_cache.clone().unwrap_or_else(default_repo_cache);
        let cache = RepoCache::new(cache_dir)?;
        let revision = source.target_revision.clone();
        let repo = tokio::task::spawn_blocking(move || cache.fetch(&spec))
            .await
            .context("the fetch task failed")??;
        let commit = repo.resolve(&revision)?;
        renderer
            .render(&app, Some(&repo), Some(&commit), target)
            .await?
    };
    print!("{}", render::to_yaml_stream(&rendered.objects)?);
    Ok(())
}

/// Applications as a table: name, project, source and render state; wide adds
/// the destination and the clusters with their bundle generation.
fn app_table(list: &serde_json::Value, wide: bool) -> Table {
    let mut header = vec!["NAME", "PROJECT", "SYNC", "HEALTH", "SOURCE", "STATUS"];
    if wide {
        header.extend(["DESTINATION", "CLUSTERS"]);
    }
    let mut table = Table::new(&header);
    for app in list["items"].as_array().into_iter().flatten() {
        let source = format!(
            "{}@{}",
            app["source"]["path"]
                .as_str()
                .or(app["source"]["chart"].as_str())
                .unwrap_or(""),
            app["source"]["targetRevision"].as_str().unwrap_or("")
        );
        let status = match app["renderError"].as_str() {
            Some(_) => "RenderError".to_owned(),
            None => app["renderedCommit"]
                .as_str()
                .map_or("Pending".to_owned(), |c| {
                    format!("Rendered {}", c.get(..8).unwrap_or(c))
                }),
        };
        let mut row = vec![
            cell(&app["name"]),
            cell(&app["project"]),
            cell(&app["status"]["sync"]),
            cell(&app["status"]["health"]),
            source,
            status,
        ];
        if wide {
            let destination = &app["destination"];
            let clusters: Vec<String> = app["clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| format!("{}@{}", cell(&c["cluster"]), cell(&c["generation"])))
                .collect();
            row.extend([
                format!(
                    "{}/{}",
                    destination["name"]
                        .as_str()
                        .or(destination["server"].as_str())
                        .unwrap_or("-"),
                    destination["namespace"].as_str().unwrap_or("-")
                ),
                if clusters.is_empty() {
                    "-".to_owned()
                } else {
                    clusters.join(",")
                },
            ]);
        }
        table.row(row);
    }
    table
}

/// A path segment with everything but unreserved characters percent-encoded,
/// as a repository URL travels in `/api/v1/repositories/{url}`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn app_command(command: AppCommand, connection: &Connection) -> anyhow::Result<()> {
    let client = connection.client()?;
    match command {
        AppCommand::List(output) => match output.output {
            Format::Table => app_cli::list(&client).await?,
            format => {
                let list = client.get("/api/v1/applications").await?;
                print(format, &list, |wide| app_table(&list, wide))?;
            }
        },
        AppCommand::Get { app, output } => match output.output {
            Format::Table => app_cli::get(&client, &app).await?,
            format => {
                let app = client.get(&app_cli::app_path(&app)).await?;
                let list = serde_json::json!({ "items": [app.clone()] });
                print(format, &app, |_| app_table(&list, true))?;
            }
        },
        AppCommand::Sync(args) => app_cli::sync(&client, args).await?,
        AppCommand::History { app, output } => match output.output {
            Format::Table | Format::Wide => app_cli::history(&client, &app).await?,
            format => {
                let history = client
                    .get(&format!("{}/history", app_cli::app_path(&app)))
                    .await?;
                print(format, &history, |_| Table::new(&[]))?;
            }
        },
        AppCommand::Rollback { app, id } => app_cli::rollback(&client, &app, id).await?,
        AppCommand::Diff { app } => app_cli::diff(&client, &app).await?,
        AppCommand::Wait(args) => app_cli::wait(&client, args).await?,
        AppCommand::Create(args) => {
            let text = match &args.file {
                Some(file) => std::fs::read_to_string(file)
                    .map_err(|e| UsageError(format!("reading {}: {e}", file.display())))?,
                None => args.manifest()?,
            };
            let created = client.post("/api/v1/applications", text).await?;
            println!(
                "application {}/{} created",
                created["project"].as_str().unwrap_or(""),
                created["name"].as_str().unwrap_or("")
            );
        }
        AppCommand::Delete(args) => {
            client
                .delete(&format!(
                    "{}?cascade={}",
                    app_cli::app_path(&args.app),
                    args.cascade
                ))
                .await?;
            if args.cascade {
                println!(
                    "application {} deleted; its clusters delete what it deployed",
                    args.app
                );
            } else {
                println!(
                    "application {} deleted; its objects stay in the clusters",
                    args.app
                );
            }
        }
    }
    Ok(())
}

async fn repo_command(command: RepoCommand, connection: &Connection) -> anyhow::Result<()> {
    let client = connection.client()?;
    match command {
        RepoCommand::List(output) => {
            let list = client.get("/api/v1/repositories").await?;
            print(output.output, &list, |_| {
                let mut table = Table::new(&["URL", "CREDENTIALS", "POLL", "WEBHOOK SECRET"]);
                for repo in list["items"].as_array().into_iter().flatten() {
                    table.row(vec![
                        cell(&repo["url"]),
                        cell(&repo["credentials"]),
                        format!("{}s", repo["pollIntervalSeconds"]),
                        cell(&repo["webhookSecret"]),
                    ]);
                }
                table
            })?;
        }
        RepoCommand::Rm { url } => {
            let encoded = percent_encode(&url);
            client
                .delete(&format!("/api/v1/repositories/{encoded}"))
                .await?;
            println!("repository {url} removed");
        }
        RepoCommand::Add {
            url,
            username,
            password,
            ssh_private_key_path,
            from_secret,
            poll_interval,
        } => {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path)
                    .map_err(|e| UsageError(format!("reading {}: {e}", path.display())))
            };
            let body = serde_json::json!({
                "url": url,
                "username": username,
                "password": password,
                "sshPrivateKey": ssh_private_key_path.as_ref().map(read).transpose()?,
                "argocdSecret": from_secret.as_ref().map(read).transpose()?,
                "pollIntervalSeconds": poll_interval,
            });
            let added = client
                .post("/api/v1/repositories", body.to_string())
                .await?;
            println!("repository {} added", added["url"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}

async fn serve_command(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if args.cert_days == 0 {
        return Err(ConfigError("--cert-days must be at least 1".to_owned()).into());
    }
    let tls = match (&args.tls_cert, &args.tls_key, args.plain_http) {
        (_, _, true) if !args.listen.ip().is_loopback() => {
            return Err(ConfigError(format!(
                "--plain-http is allowed only on a loopback --listen, not {}: credentials would cross the network unencrypted; drop --plain-http to serve HTTPS",
                args.listen
            ))
            .into());
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
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let store = Store::open(&data_dir.join("db")).context("opening the hub's store")?;
    let cache = RepoCache::new(data_dir.join("repos"))?;
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env())).await?;
    let mut link_config = LinkConfig::new(args.agent_listen);
    if args.cert_days == 0 {
        return Err(UsageError("--cert-days must be at least 1".to_owned()).into());
    }
    if args
        .webhook_secret
        .as_deref()
        .is_some_and(|s| s.trim().is_empty())
    {
        return Err(UsageError(
            "--webhook-secret is empty: anyone could sign with it; give a real one, or none"
                .to_owned(),
        )
        .into());
    }
    link_config.cert_lifetime = Duration::from_secs(args.cert_days * 24 * 3600);
    if args.keep_alive_secs == 0 || args.idle_timeout_secs <= args.keep_alive_secs {
        return Err(UsageError(
            "--keep-alive-secs must be at least 1 and less than --idle-timeout-secs".to_owned(),
        )
        .into());
    }
    link_config.keep_alive = Duration::from_secs(args.keep_alive_secs);
    link_config.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
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

/// A relative local path in repoURL is relative to the Application's file.
fn local_url(url: &str, app_file: &std::path::Path) -> String {
    let is_remote = url.contains("://") || url.contains('@');
    if is_remote || std::path::Path::new(url).is_absolute() {
        return url.to_owned();
    }
    let base = app_file.parent().unwrap_or(std::path::Path::new("."));
    base.join(url).display().to_string()
}

fn default_repo_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("flotilla").join("repos")
}

/// `group/version` or `group/version/Kind` as an API resource for Helm.
fn api_version(value: &str) -> ApiResource {
    let parts: Vec<&str> = value.split('/').collect();
    let (group_version, kind) = match parts[..] {
        [g, v, k] => (format!("{g}/{v}"), k.to_owned()),
        _ => (value.to_owned(), String::new()),
    };
    ApiResource {
        group_version,
        kind,
        plural: String::new(),
        namespaced: true,
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
