//! `flotilla account create|generate-token|list-tokens|delete-token`.

use serde_json::json;

use super::Connection;
use super::output::{OutputArgs, print};
use super::project::{expires_in_secs, token_table};

#[derive(Debug, clap::Subcommand)]
pub enum AccountCommand {
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
    /// Issue an API token for an account (yours by default); printed once.
    GenerateToken {
        /// The account; the one you are logged in as by default.
        #[arg(short = 'a', long)]
        account: Option<String>,
        /// How long it works: e.g. 30m, 12h, 90d; never when absent or 0.
        #[arg(short = 'e', long)]
        expires_in: Option<String>,
    },
    /// List an account's tokens (ids and expiry, never the tokens).
    ListTokens {
        #[arg(short = 'a', long)]
        account: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke an account's token by its id.
    DeleteToken {
        id: String,
        #[arg(short = 'a', long)]
        account: Option<String>,
    },
}

async fn account_or_self(
    client: &flotilla_hub::client::Client,
    account: Option<String>,
) -> anyhow::Result<String> {
    match account {
        Some(name) => Ok(name),
        None => {
            let me = client.get("/api/v1/session/userinfo").await?;
            Ok(me["username"].as_str().unwrap_or_default().to_owned())
        }
    }
}

pub async fn run(command: AccountCommand, connection: &Connection) -> anyhow::Result<()> {
    let client = connection.client()?;
    match command {
        AccountCommand::Create {
            name,
            password,
            groups,
        } => {
            let body = json!({ "name": name, "password": password, "groups": groups });
            client.post("/api/v1/accounts", body.to_string()).await?;
            println!("account {name} created");
        }
        AccountCommand::GenerateToken {
            account,
            expires_in,
        } => {
            let secs = expires_in_secs(expires_in.as_deref())?;
            let name = account_or_self(&client, account).await?;
            let issued = client
                .post(
                    &format!("/api/v1/account/{name}/token"),
                    json!({ "expiresIn": secs }).to_string(),
                )
                .await?;
            println!("{}", issued["token"].as_str().unwrap_or_default());
        }
        AccountCommand::ListTokens { account, output } => {
            let name = account_or_self(&client, account).await?;
            let list = client.get(&format!("/api/v1/account/{name}/token")).await?;
            print(output.output, &list, |_| {
                token_table(list["items"].as_array().map_or(&[][..], Vec::as_slice))
            })?;
        }
        AccountCommand::DeleteToken { id, account } => {
            let name = account_or_self(&client, account).await?;
            client
                .delete(&format!("/api/v1/account/{name}/token/{id}"))
                .await?;
            println!("token {id} of account {name} revoked");
        }
    }
    Ok(())
}
