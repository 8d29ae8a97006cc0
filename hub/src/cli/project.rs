//! `flotilla proj create|list|get`, `flotilla proj windows list` and `flotilla proj role
//! create-token|list-tokens|delete-token`.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::output::{OutputArgs, Table, age, cell, print};
use super::{Connection, UsageError};

#[derive(Debug, clap::Subcommand)]
pub enum ProjCommand {
    /// Create an AppProject from a manifest (-f) or from flags, as `argocd proj create`.
    Create(CreateArgs),
    /// List the projects you may see.
    List(OutputArgs),
    /// Show one project.
    Get {
        /// The project.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// A project role's API tokens.
    #[command(subcommand)]
    Role(RoleCommand),
    /// A project's sync windows.
    #[command(subcommand)]
    Windows(WindowsCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum WindowsCommand {
    /// List the project's sync windows and whether each is open now.
    List {
        /// The project.
        project: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The project's name (with flags; a manifest names itself).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    name: Option<String>,
    /// A file holding one Argo CD AppProject.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// A description.
    #[arg(long, conflicts_with = "file")]
    description: Option<String>,
    /// A repository URL glob apps of the project may use; repeatable.
    #[arg(long = "src", conflicts_with = "file")]
    source_repos: Vec<String>,
    /// A destination, SERVER,NAMESPACE (globs allowed); repeatable.
    #[arg(long = "dest", conflicts_with = "file")]
    destinations: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum RoleCommand {
    /// Issue a token that acts as proj:PROJECT:ROLE; it is printed once.
    CreateToken {
        project: String,
        role: String,
        /// How long it works: e.g. 30m, 12h, 90d; never when absent or 0.
        #[arg(short = 'e', long)]
        expires_in: Option<String>,
    },
    /// List a role's tokens (ids and expiry, never the tokens).
    ListTokens {
        project: String,
        role: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke a role's token by its id.
    DeleteToken {
        project: String,
        role: String,
        id: String,
    },
}

/// Seconds for `--expires-in`, 0 for never.
pub fn expires_in_secs(text: Option<&str>) -> anyhow::Result<u64> {
    let Some(text) = text else { return Ok(0) };
    match flotilla_hub::token::parse_duration(text) {
        Some(ttl) => Ok(ttl.map_or(0, |d| d.as_secs())),
        None => Err(UsageError(format!(
            "--expires-in {text:?} is not a duration such as 30m, 12h or 90d"
        ))
        .into()),
    }
}

fn manifest_from_flags(args: &CreateArgs, name: &str) -> anyhow::Result<Value> {
    let destinations = args
        .destinations
        .iter()
        .map(|d| match d.split_once(',') {
            Some((server, namespace)) => Ok(json!({ "server": server, "namespace": namespace })),
            None => Err(UsageError(format!("--dest {d:?} is not SERVER,NAMESPACE"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut spec = json!({
        "sourceRepos": args.source_repos,
        "destinations": destinations,
    });
    if let Some(description) = &args.description {
        spec["description"] = json!(description);
    }
    Ok(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AppProject",
        "metadata": { "name": name },
        "spec": spec,
    }))
}

fn table(items: &[Value], wide: bool) -> Table {
    let mut header = vec!["NAME", "DESCRIPTION", "SOURCES", "DESTINATIONS"];
    if wide {
        header.push("ROLES");
    }
    let mut table = Table::new(&header);
    for p in items {
        let list = |v: &Value, f: &dyn Fn(&Value) -> String| {
            let parts: Vec<String> = v.as_array().into_iter().flatten().map(f).collect();
            if parts.is_empty() {
                "-".to_owned()
            } else {
                parts.join(",")
            }
        };
        let mut row = vec![
            cell(&p["name"]),
            cell(&p["description"]),
            list(&p["sourceRepos"], &cell),
            list(&p["destinations"], &|d| {
                format!(
                    "{},{}",
                    d["server"].as_str().or(d["name"].as_str()).unwrap_or("*"),
                    d["namespace"].as_str().unwrap_or("*")
                )
            }),
        ];
        if wide {
            row.push(list(&p["roles"], &|r| cell(&r["name"])));
        }
        table.row(row);
    }
    table
}

fn windows_table(items: &[Value]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "STATUS",
        "KIND",
        "SCHEDULE",
        "DURATION",
        "TIMEZONE",
        "APPLICATIONS",
        "NAMESPACES",
        "CLUSTERS",
        "MANUALSYNC",
        "UNTIL",
    ]);
    let list = |v: &Value| {
        let parts: Vec<String> = v.as_array().into_iter().flatten().map(cell).collect();
        if parts.is_empty() {
            "-".to_owned()
        } else {
            parts.join(",")
        }
    };
    for (i, w) in items.iter().enumerate() {
        let active = w["active"].as_bool() == Some(true);
        table.row(vec![
            i.to_string(),
            if active { "Active" } else { "Inactive" }.to_owned(),
            cell(&w["kind"]),
            cell(&w["schedule"]),
            cell(&w["duration"]),
            cell(&w["timeZone"]),
            list(&w["applications"]),
            list(&w["namespaces"]),
            list(&w["clusters"]),
            if w["manualSync"].as_bool() == Some(true) {
                "Enabled"
            } else {
                "Disabled"
            }
            .to_owned(),
            if active {
                format!("closes {}", cell(&w["closesAt"]))
            } else {
                format!("opens {}", cell(&w["nextOpensAt"]))
            },
        ]);
    }
    table
}

pub async fn run(command: ProjCommand, connection: &Connection) -> anyhow::Result<()> {
    let client = connection.client()?;
    match command {
        ProjCommand::Create(args) => {
            let body = match (&args.file, &args.name) {
                (Some(file), _) => std::fs::read_to_string(file)
                    .map_err(|e| UsageError(format!("reading {}: {e}", file.display())))?,
                (None, Some(name)) => manifest_from_flags(&args, name)?.to_string(),
                (None, None) => {
                    return Err(UsageError("give a project name or -f FILE".to_owned()).into());
                }
            };
            let created = client.post("/api/v1/projects", body).await?;
            println!("project {} created", cell(&created["name"]));
        }
        ProjCommand::List(output) => {
            let list = client.get("/api/v1/projects").await?;
            print(output.output, &list, |wide| {
                table(
                    list["items"].as_array().map_or(&[][..], Vec::as_slice),
                    wide,
                )
            })?;
        }
        ProjCommand::Get { name, output } => {
            let project = client.get(&format!("/api/v1/projects/{name}")).await?;
            print(output.output, &project, |_| {
                table(std::slice::from_ref(&project["summary"]), true)
            })?;
        }
        ProjCommand::Windows(WindowsCommand::List { project, output }) => {
            let list = client
                .get(&format!("/api/v1/projects/{project}/windows"))
                .await?;
            print(output.output, &list, |_| {
                windows_table(list["items"].as_array().map_or(&[][..], Vec::as_slice))
            })?;
        }
        ProjCommand::Role(RoleCommand::CreateToken {
            project,
            role,
            expires_in,
        }) => {
            let secs = expires_in_secs(expires_in.as_deref())?;
            let issued = client
                .post(
                    &format!("/api/v1/projects/{project}/roles/{role}/token"),
                    json!({ "expiresIn": secs }).to_string(),
                )
                .await?;
            // The token alone on stdout, as argocd prints it, for scripts.
            println!("{}", issued["token"].as_str().unwrap_or_default());
            eprintln!(
                "token {} for proj:{project}:{role} (shown once)",
                cell(&issued["id"])
            );
        }
        ProjCommand::Role(RoleCommand::ListTokens {
            project,
            role,
            output,
        }) => {
            let list = client
                .get(&format!("/api/v1/projects/{project}/roles/{role}/token"))
                .await?;
            print(output.output, &list, |_| {
                token_table(list["items"].as_array().map_or(&[][..], Vec::as_slice))
            })?;
        }
        ProjCommand::Role(RoleCommand::DeleteToken { project, role, id }) => {
            client
                .delete(&format!(
                    "/api/v1/projects/{project}/roles/{role}/token/{id}"
                ))
                .await?;
            println!("token {id} of proj:{project}:{role} revoked");
        }
    }
    Ok(())
}

/// Tokens as a table: id, age, expiry, issuer.
pub fn token_table(items: &[Value]) -> Table {
    let mut table = Table::new(&["ID", "ISSUED", "EXPIRES AT (ms)", "ISSUED BY"]);
    for t in items {
        table.row(vec![
            cell(&t["id"]),
            age(&t["issuedAtMs"]),
            cell(&t["expiresAtMs"]),
            cell(&t["issuedBy"]),
        ]);
    }
    table
}
