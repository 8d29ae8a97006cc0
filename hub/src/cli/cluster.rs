//! `flotilla cluster add|set|list|get|rm`: through the hub's API while it runs, or on
//! its data folder (`--data-dir`) to bootstrap before it first starts.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use flotilla_hub::ca::Ca;
use flotilla_hub::cluster;
use flotilla_hub::store::Store;
use serde_json::{Value, json};

use super::output::{OutputArgs, Table, age, cell, print};
use super::{ConfigError, Connection, UsageError};

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Make a single-use bootstrap token for a new cluster and print the agent's
    /// install manifest (or, with --helm, the equivalent `helm install`; with
    /// --print-command, a local command line).
    Add(AddArgs),
    /// Change what the admin decides about a cluster: its API server URL.
    Set(SetArgs),
    /// Remove a cluster and revoke its certificate; its open connection closes.
    /// Prints the commands that remove the agent from the cluster.
    Rm(NameArgs),
    /// List clusters with their connection state, last-seen time and agent version.
    List(ListArgs),
    /// Show one cluster: labels, facts, connection and acknowledged bundles.
    Get(GetArgs),
}

#[derive(Debug, clap::Args)]
pub struct DataDirArgs {
    /// Work on the hub's data folder instead of through its API (only while the
    /// hub is stopped: sled allows one process).
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The cluster's name: a DNS label.
    name: String,
    /// A label for the cluster, key=value; repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The cluster's Kubernetes API server URL, which Applications'
    /// destination.server is matched against. Without it the cluster is reached
    /// by destination.name only (what its agent reports about itself never
    /// counts); set it later with `flotilla cluster set NAME --api-server URL`.
    /// (`--server` is the hub's own API address.)
    #[arg(long, value_name = "URL")]
    api_server: Option<String>,
    /// The hub's QUIC address as agents reach it, host:port (through the API: the
    /// hub's own by default).
    #[arg(long, env = "FLOTILLA_HUB_ADDRESS")]
    hub_address: Option<String>,
    /// How long the token works, in minutes.
    #[arg(long, env = "FLOTILLA_TOKEN_TTL_MINUTES", default_value_t = 60)]
    token_ttl_minutes: u64,
    /// The agent image the manifest runs (the tag is this flotilla's version).
    #[arg(long, env = "FLOTILLA_AGENT_IMAGE", default_value = cluster::DEFAULT_AGENT_IMAGE)]
    image: String,
    /// Least privilege: the agent may act only in these namespaces
    /// (comma-separated; repeatable). The manifest then grants rights in them and
    /// read-only discovery elsewhere instead of the whole cluster, and the agent
    /// refuses any bundle that reaches outside them.
    #[arg(long, value_name = "NS,...")]
    namespaces: Vec<String>,
    /// The storage class of the agent's state claim; the cluster's default
    /// when not given.
    #[arg(long, value_name = "CLASS")]
    storage_class: Option<String>,
    /// Print a command line that runs the agent locally instead of a manifest.
    #[arg(long, conflicts_with = "helm")]
    print_command: bool,
    /// Print the `helm install` of deploy/charts/flotilla-agent with the same
    /// values instead of a manifest.
    #[arg(long)]
    helm: bool,
    #[command(flatten)]
    data: DataDirArgs,
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The cluster, registered or waiting for its agent.
    name: String,
    /// The cluster's Kubernetes API server URL, which Applications'
    /// destination.server is matched against.
    #[arg(long, value_name = "URL", conflicts_with = "unset_api_server")]
    api_server: Option<String>,
    /// Forget the API server URL: the cluster is reached by destination.name only.
    #[arg(long)]
    unset_api_server: bool,
    #[command(flatten)]
    data: DataDirArgs,
}

#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The cluster.
    name: String,
    #[command(flatten)]
    data: DataDirArgs,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    data: DataDirArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The cluster.
    name: String,
    #[command(flatten)]
    data: DataDirArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// The data folder, when the command should use it rather than the API: an
/// explicit `--server` always means the API.
fn data_dir_mode(connection: &Connection, data: &DataDirArgs) -> Option<PathBuf> {
    if connection.server.is_some() {
        None
    } else {
        data.data_dir.clone()
    }
}

fn open(dir: &std::path::Path) -> anyhow::Result<Store> {
    Store::open(&dir.join("db")).context(
        "opening the hub's data folder (with --data-dir the hub must be stopped; while it runs, log in and omit --data-dir)",
    )
}

pub async fn run(command: ClusterCommand, connection: &Connection) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Add(args) => add(args, connection).await,
        ClusterCommand::Set(args) => set(args, connection).await,
        ClusterCommand::Rm(args) => {
            match data_dir_mode(connection, &args.data) {
                Some(dir) => {
                    let store = open(&dir)?;
                    if !store.remove_cluster(&args.name).await? {
                        return Err(UsageError(format!("no cluster named {:?}", args.name)).into());
                    }
                }
                None => {
                    connection
                        .client()?
                        .delete(&format!("/api/v1/clusters/{}", args.name))
                        .await?;
                }
            }
            eprintln!(
                "removed cluster {:?}; its certificate no longer works",
                args.name
            );
            print!("{}", cluster::uninstall_commands());
            Ok(())
        }
        ClusterCommand::List(args) => {
            let list = match data_dir_mode(connection, &args.data) {
                Some(dir) => json!({ "items": local_views(&open(&dir)?)? }),
                None => connection.client()?.get("/api/v1/clusters").await?,
            };
            print(args.output.output, &list, |wide| {
                table(
                    list["items"].as_array().map_or(&[][..], Vec::as_slice),
                    wide,
                )
            })
        }
        ClusterCommand::Get(args) => {
            let found = match data_dir_mode(connection, &args.data) {
                Some(dir) => local_views(&open(&dir)?)?
                    .into_iter()
                    .find(|c| c["name"] == args.name.as_str())
                    .ok_or_else(|| UsageError(format!("no cluster named {:?}", args.name)))?,
                None => {
                    connection
                        .client()?
                        .get(&format!("/api/v1/clusters/{}", args.name))
                        .await?
                }
            };
            print(args.output.output, &found, |_| {
                table(std::slice::from_ref(&found), true)
            })
        }
    }
}

fn table(items: &[Value], wide: bool) -> Table {
    let mut header = vec!["NAME", "STATE", "LAST SEEN", "AGENT"];
    if wide {
        header.extend(["KUBERNETES", "SERVER", "LABELS"]);
    }
    let mut table = Table::new(&header);
    for c in items {
        let mut row = vec![
            cell(&c["name"]),
            cell(&c["state"]),
            age(&c["lastSeenMs"]),
            cell(&c["agentVersion"]),
        ];
        if wide {
            let labels: Vec<String> = c["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            row.extend([
                cell(&c["kubernetesVersion"]),
                cell(&c["server"]),
                if labels.is_empty() {
                    "-".to_owned()
                } else {
                    labels.join(",")
                },
            ]);
        }
        table.row(row);
    }
    table
}

/// The clusters as the API shows them, read from a stopped hub's store.
fn local_views(store: &Store) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    for record in store.clusters()? {
        let link = store.link(&record.name)?;
        items.push(json!({
            "name": record.name,
            "state": "Disconnected",
            "connected": false,
            "labels": record.labels,
            "server": record.server,
            "kubernetesVersion": record.facts.as_ref().map(|f| f.kubernetes_version.clone()),
            "lastSeenMs": link.as_ref().and_then(|l| l.last_seen_ms),
            "agentVersion": link.as_ref().and_then(|l| l.agent_version.clone()),
        }));
    }
    for token in store.tokens()? {
        items.push(json!({
            "name": token.cluster,
            "state": "Pending",
            "connected": false,
            "labels": token.labels,
            "server": token.server,
        }));
    }
    items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(items)
}

async fn add(args: AddArgs, connection: &Connection) -> anyhow::Result<()> {
    let labels = cluster::parse_labels(&args.labels).map_err(|e| UsageError(e.to_string()))?;
    // The flags with FLOTILLA_* fallbacks are configuration: checked here in both
    // modes, so a wrong one exits 64 whether or not a hub is asked.
    if args.token_ttl_minutes == 0 {
        return Err(ConfigError("--token-ttl-minutes must be at least 1".to_owned()).into());
    }
    if args.token_ttl_minutes > cluster::MAX_TOKEN_TTL_MINUTES {
        return Err(ConfigError(format!(
            "--token-ttl-minutes must be at most {} (a year)",
            cluster::MAX_TOKEN_TTL_MINUTES
        ))
        .into());
    }
    // Written into the manifest and the command line: plain words only.
    if let Some(hub_address) = &args.hub_address
        && !cluster::is_host_port(hub_address)
    {
        return Err(ConfigError(format!("--hub-address {hub_address:?} must be HOST:PORT")).into());
    }
    if !cluster::is_image_name(&args.image) {
        return Err(ConfigError(format!(
            "--image {:?} must be an image name without a tag",
            args.image
        ))
        .into());
    }
    let namespaces = cluster::parse_namespaces(&args.namespaces).map_err(usage)?;
    if let Some(class) = args.storage_class.as_deref()
        && !cluster::is_storage_class(class)
    {
        return Err(UsageError(format!(
            "--storage-class {class:?} must be a storage class name (a DNS subdomain)"
        ))
        .into());
    }
    let (manifest, command, helm) = match data_dir_mode(connection, &args.data) {
        Some(dir) => {
            let hub_address = args
                .hub_address
                .unwrap_or_else(|| "127.0.0.1:7443".to_owned());
            let store = open(&dir)?;
            let ca = Ca::load_or_create(&store, SystemTime::now()).await?;
            let added = cluster::add_with_server(
                &store,
                &args.name,
                labels,
                args.api_server.as_deref(),
                Duration::from_secs(args.token_ttl_minutes * 60),
                SystemTime::now(),
            )
            .await
            .map_err(usage)?;
            let fingerprint = ca.fingerprint();
            let join = cluster::JoinInfo {
                cluster: &added.cluster,
                hub_address: &hub_address,
                ca_fingerprint: &fingerprint,
                token: &added.token,
                image: &args.image,
                namespaces: &namespaces,
                storage_class: args.storage_class.as_deref(),
            };
            (
                cluster::manifest(&join),
                cluster::command_line(&join),
                cluster::helm_command(&join),
            )
        }
        None => {
            let body = json!({
                "name": args.name,
                "labels": labels,
                "server": args.api_server,
                "hubAddress": args.hub_address,
                "tokenTtlMinutes": args.token_ttl_minutes,
                "image": args.image,
                "namespaces": namespaces,
                "storageClass": args.storage_class,
            });
            let added = connection
                .client()?
                .post("/api/v1/clusters", body.to_string())
                .await?;
            let text = |key: &str| added[key].as_str().unwrap_or_default().to_owned();
            (text("manifest"), text("command"), text("helm"))
        }
    };
    if args.print_command {
        print!("{command}");
    } else if args.helm {
        print!("{helm}");
    } else {
        print!("{manifest}");
    }
    Ok(())
}

/// A cluster error, as a usage error where the command line was wrong.
fn usage(e: cluster::Error) -> anyhow::Error {
    match e {
        cluster::Error::InvalidName(_)
        | cluster::Error::Exists(_)
        | cluster::Error::InvalidLabel(_)
        | cluster::Error::InvalidServer(_)
        | cluster::Error::InvalidNamespace(_)
        | cluster::Error::ServerTaken { .. }
        | cluster::Error::NotFound(_) => anyhow::Error::from(UsageError(e.to_string())),
        e => e.into(),
    }
}

async fn set(args: SetArgs, connection: &Connection) -> anyhow::Result<()> {
    if args.api_server.is_none() && !args.unset_api_server {
        return Err(UsageError("give --api-server URL or --unset-api-server".to_owned()).into());
    }
    let server = match data_dir_mode(connection, &args.data) {
        Some(dir) => {
            let store = open(&dir)?;
            cluster::set_server(&store, &args.name, args.api_server.as_deref())
                .await
                .map_err(usage)?
        }
        None => {
            let body = json!({ "server": args.api_server });
            let answer = connection
                .client()?
                .patch(&format!("/api/v1/clusters/{}", args.name), body.to_string())
                .await?;
            answer["server"].as_str().map(str::to_owned)
        }
    };
    match server {
        Some(server) => eprintln!(
            "cluster {:?} now matches destination.server {server}",
            args.name
        ),
        None => eprintln!(
            "cluster {:?} has no API server URL; it is reached by destination.name only",
            args.name
        ),
    }
    Ok(())
}
