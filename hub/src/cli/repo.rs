//! `flotilla repo list|add|rm`: the Git repositories the hub reads, through its
//! API (credentials are stored, never shown).

use std::path::PathBuf;

use super::output::{OutputArgs, Table, cell, print};
use super::{Connection, UsageError};

#[derive(Debug, clap::Subcommand)]
pub enum RepoCommand {
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

pub async fn run(command: RepoCommand, connection: &Connection) -> anyhow::Result<()> {
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
