//! `flotilla`: the hub server and its command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use flotilla_common::model::{ApiResource, ClusterFacts};
use flotilla_hub::app::{Application, SourceKind};
use flotilla_hub::ca::Ca;
use flotilla_hub::client::Client;
use flotilla_hub::cluster;
use flotilla_hub::link::{Link, LinkConfig};
use flotilla_hub::rbac::Policy;
use flotilla_hub::refresh::Refresher;
use flotilla_hub::render::{self, Renderer, Target, Tools};
use flotilla_hub::server::{self, Config, Server};
use flotilla_hub::source::{RepoCache, RepoSpec};
use flotilla_hub::store::Store;

/// Multi-cluster GitOps: one hub, an agent in every cluster.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version = flotilla_common::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the objects an Application renders to, in apply order, without a hub
    /// (like `argocd app manifests --local` or `flux build`).
    Render(RenderArgs),
    /// Run the hub: poll repositories, take push webhooks, render and store bundles,
    /// and push them to agents over QUIC.
    Serve(ServeArgs),
    /// Log in to a hub and keep the session for the commands below.
    Login(LoginArgs),
    /// Applications on the hub.
    #[command(subcommand)]
    App(AppCommand),
    /// Git repositories the hub reads (credentials are stored, never shown).
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Local accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Add, remove and list clusters. These open the hub's data folder directly, so
    /// run them while the hub is stopped (sled allows one process at a time).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Make a single-use bootstrap token for a new cluster and print the agent's
    /// install manifest (or, with --print-command, a local command line).
    Add(ClusterAddArgs),
    /// Remove a cluster and revoke its certificate.
    Rm(ClusterRmArgs),
    /// List clusters with their connection state, last-seen time and agent version.
    List(DataDirArgs),
}

#[derive(Debug, clap::Args)]
struct DataDirArgs {
    /// The hub's data folder.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ClusterAddArgs {
    /// The cluster's name: a DNS label.
    name: String,
    /// A label for the cluster, key=value; repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The hub's QUIC address as agents reach it, host:port.
    #[arg(long, env = "FLOTILLA_HUB_ADDRESS", default_value = "127.0.0.1:7443")]
    hub_address: String,
    /// How long the token works, in minutes.
    #[arg(long, env = "FLOTILLA_TOKEN_TTL_MINUTES", default_value_t = 60)]
    token_ttl_minutes: u64,
    /// The agent image the manifest runs (the tag is this flotilla's version).
    #[arg(long, env = "FLOTILLA_AGENT_IMAGE", default_value = flotilla_hub::cluster::DEFAULT_AGENT_IMAGE)]
    image: String,
    /// Print a command line that runs the agent locally instead of a manifest.
    #[arg(long)]
    print_command: bool,
    #[command(flatten)]
    data: DataDirArgs,
}

#[derive(Debug, clap::Args)]
struct ClusterRmArgs {
    /// The cluster to remove.
    name: String,
    #[command(flatten)]
    data: DataDirArgs,
}

#[derive(Debug, clap::Args)]
struct LoginArgs {
    /// The hub's API, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "FLOTILLA_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    #[arg(long, env = "FLOTILLA_USERNAME", default_value = "admin")]
    username: String,
    /// The password; read from FLOTILLA_PASSWORD when not given.
    #[arg(long, env = "FLOTILLA_PASSWORD", hide_env_values = true)]
    password: String,
}

#[derive(Debug, Subcommand)]
enum AppCommand {
    /// List the applications you may see.
    List,
    /// Show one application (PROJECT/NAME, or NAME in the default project).
    Get { app: String },
    /// Create applications from an Argo CD Application manifest.
    Create {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Delete an application (PROJECT/NAME, or NAME in the default project).
    Delete { app: String },
}

#[derive(Debug, Subcommand)]
enum RepoCommand {
    /// List repositories.
    List,
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

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Create a local account.
    Create {
        name: String,
        /// Its password; read from FLOTILLA_ACCOUNT_PASSWORD when not given.
        #[arg(long, env = "FLOTILLA_ACCOUNT_PASSWORD", hide_env_values = true)]
        password: String,
        /// Groups the account belongs to, for RBAC `g` lines; repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
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

/// Exit status for bad flags or configuration, as sysexits' EX_USAGE.
const EXIT_USAGE: u8 = 64;

/// An error in what the user asked for, as opposed to a failure doing it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

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
    let result = runtime.block_on(async {
        match cli.command {
            Command::Render(args) => render_command(args).await,
            Command::Serve(args) => serve_command(args).await,
            Command::Login(args) => {
                let session = Client::login(&args.server, &args.username, &args.password).await?;
                session.save()?;
                println!("logged in to {} as {}", session.server, args.username);
                Ok(())
            }
            Command::App(command) => app_command(command).await,
            Command::Repo(command) => repo_command(command).await,
            Command::Account(AccountCommand::Create {
                name,
                password,
                groups,
            }) => {
                let body =
                    serde_json::json!({ "name": name, "password": password, "groups": groups });
                Client::from_session()?
                    .post("/api/v1/accounts", body.to_string())
                    .await?;
                println!("account {name} created");
                Ok(())
            }
            Command::Cluster(command) => cluster_command(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
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

/// `PROJECT/NAME`, or `NAME` in the default project.
fn app_path(app: &str) -> String {
    match app.split_once('/') {
        Some((project, name)) => format!("/api/v1/applications/{project}/{name}"),
        None => format!("/api/v1/applications/default/{app}"),
    }
}

async fn app_command(command: AppCommand) -> anyhow::Result<()> {
    let client = Client::from_session()?;
    match command {
        AppCommand::List => {
            let list = client.get("/api/v1/applications").await?;
            println!("{:<30} {:<12} {:<40} STATUS", "NAME", "PROJECT", "SOURCE");
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
                println!(
                    "{:<30} {:<12} {:<40} {}",
                    app["name"].as_str().unwrap_or(""),
                    app["project"].as_str().unwrap_or(""),
                    source,
                    status
                );
            }
        }
        AppCommand::Get { app } => {
            let app = client.get(&app_path(&app)).await?;
            println!("{}", serde_json::to_string_pretty(&app)?);
        }
        AppCommand::Create { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| UsageError(format!("reading {}: {e}", file.display())))?;
            let created = client.post("/api/v1/applications", text).await?;
            println!(
                "application {}/{} created",
                created["project"].as_str().unwrap_or(""),
                created["name"].as_str().unwrap_or("")
            );
        }
        AppCommand::Delete { app } => {
            client.delete(&app_path(&app)).await?;
            println!("application {app} deleted");
        }
    }
    Ok(())
}

async fn repo_command(command: RepoCommand) -> anyhow::Result<()> {
    let client = Client::from_session()?;
    match command {
        RepoCommand::List => {
            let list = client.get("/api/v1/repositories").await?;
            println!("{:<60} {:<12} POLL", "URL", "CREDENTIALS");
            for repo in list["items"].as_array().into_iter().flatten() {
                println!(
                    "{:<60} {:<12} {}s",
                    repo["url"].as_str().unwrap_or(""),
                    repo["credentials"].as_str().unwrap_or(""),
                    repo["pollIntervalSeconds"]
                );
            }
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
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let store = Store::open(&data_dir.join("db")).context("opening the hub's store")?;
    let cache = RepoCache::new(data_dir.join("repos"))?;
    let refresher = Refresher::new(store.clone(), cache, Renderer::new(Tools::from_env())).await?;
    let policy = match &args.rbac {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| UsageError(format!("reading {}: {e}", path.display())))?;
            let mut policy = Policy::from_configmap_yaml(&text, &path.display().to_string())
                .map_err(|e| UsageError(e.to_string()))?;
            // The built-in admin account keeps its role, as Argo CD's does.
            policy.add_grouping("admin", "role:admin");
            policy
        }
        None => server::default_policy(),
    };
    let mut link_config = LinkConfig::new(args.agent_listen);
    if args.cert_days == 0 {
        return Err(UsageError("--cert-days must be at least 1".to_owned()).into());
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
    let link = Link::start(store.clone(), link_config)
        .await
        .context("starting the agent link")?;
    let config = Config {
        listen: args.listen,
        webhook_secret: args.webhook_secret,
        policy,
        admin_password: args.admin_password,
        link: Some(link.views()),
    };
    let server = Server::start(config, store, refresher).await?;
    if let Some(password) = server.generated_admin_password() {
        // Shown once, on the terminal only, never in the log.
        println!("admin password (shown once): {password}");
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.stop().await;
    link.stop().await;
    Ok(())
}

fn open_data_dir(args: &DataDirArgs) -> anyhow::Result<Store> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    Store::open(&data_dir.join("db")).context(
        "opening the hub's data folder (cluster commands need the hub stopped: sled allows one process)",
    )
}

async fn cluster_command(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Add(args) => {
            let labels =
                cluster::parse_labels(&args.labels).map_err(|e| UsageError(e.to_string()))?;
            if args.token_ttl_minutes == 0 {
                return Err(UsageError("--token-ttl-minutes must be at least 1".to_owned()).into());
            }
            let store = open_data_dir(&args.data)?;
            let ca = Ca::load_or_create(&store, SystemTime::now()).await?;
            let added = cluster::add(
                &store,
                &args.name,
                labels,
                Duration::from_secs(args.token_ttl_minutes * 60),
                SystemTime::now(),
            )
            .await
            .map_err(|e| match e {
                cluster::Error::InvalidName(_)
                | cluster::Error::Exists(_)
                | cluster::Error::InvalidLabel(_) => anyhow::Error::from(UsageError(e.to_string())),
                e => e.into(),
            })?;
            let fingerprint = ca.fingerprint();
            let join = cluster::JoinInfo {
                cluster: &added.cluster,
                hub_address: &args.hub_address,
                ca_fingerprint: &fingerprint,
                token: &added.token,
                image: &args.image,
            };
            if args.print_command {
                print!("{}", cluster::command_line(&join));
            } else {
                print!("{}", cluster::manifest(&join));
            }
            Ok(())
        }
        ClusterCommand::Rm(args) => {
            let store = open_data_dir(&args.data)?;
            if !store.remove_cluster(&args.name).await? {
                return Err(UsageError(format!("no cluster named {:?}", args.name)).into());
            }
            eprintln!(
                "removed cluster {:?}; its certificate no longer works",
                args.name
            );
            Ok(())
        }
        ClusterCommand::List(args) => {
            let store = open_data_dir(&args)?;
            println!("NAME\tSTATE\tLAST SEEN (ms since epoch)\tAGENT");
            for link in store.links()? {
                println!(
                    "{}\t{}\t{}\t{}",
                    link.cluster,
                    if link.connected {
                        "Connected"
                    } else {
                        "Disconnected"
                    },
                    link.last_seen_ms.map_or("-".to_owned(), |t| t.to_string()),
                    link.agent_version.as_deref().unwrap_or("-"),
                );
            }
            for token in store.tokens()? {
                println!("{}\tPending\t-\t-", token.cluster);
            }
            Ok(())
        }
    }
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
        .join("flotilla")
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
