//! `flotilla login` and `flotilla logout`: the saved session the other commands
//! use.

use flotilla_hub::client::{Client, Session};

use super::{Connection, UsageError};

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
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

pub async fn login(args: LoginArgs, connection: &Connection) -> anyhow::Result<()> {
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

pub async fn logout(connection: &Connection) -> anyhow::Result<()> {
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
