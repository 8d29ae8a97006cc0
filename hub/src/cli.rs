//! The `flotilla` CLI's shared parts: where the hub is and how it is trusted, how
//! output is printed, and the commands that are not about applications.

use anyhow::Context as _;
use flotilla_hub::client::{self, Client, Session, Trust};

pub mod account;
pub mod app;
pub mod cluster;
pub mod output;
pub mod project;

/// An error in what the user asked for, as opposed to a failure doing it: exit 2,
/// as clap does for bad flags.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A bad hub configuration: exit 64 (EX_USAGE), as the style guide asks of
/// services.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Which hub to talk to, and how to trust it; the saved login's by default.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Connection {
    /// The hub's API, e.g. https://127.0.0.1:8080; the saved login's by default.
    #[arg(long, global = true, env = "FLOTILLA_SERVER")]
    pub server: Option<String>,
    /// A bearer token (a session or an API token) to use instead of the saved one.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<String>,
    /// Trust the hub whose CA has this SHA-256 fingerprint (hex; `flotilla hub`
    /// prints it at start).
    #[arg(long, global = true, env = "FLOTILLA_CA_FINGERPRINT")]
    pub ca_fingerprint: Option<String>,
    /// Do not verify the hub's certificate.
    #[arg(long, global = true, env = "FLOTILLA_INSECURE")]
    pub insecure: bool,
}

impl Connection {
    /// The trust the flags ask for, if they ask for any.
    pub fn trust(&self) -> anyhow::Result<Option<Trust>> {
        if self.insecure && self.ca_fingerprint.is_some() {
            return Err(
                UsageError("give --ca-fingerprint or --insecure, not both".to_owned()).into(),
            );
        }
        if self.insecure {
            return Ok(Some(Trust {
                ca_fingerprint: None,
                insecure: true,
            }));
        }
        self.ca_fingerprint
            .as_deref()
            .map(|f| Trust::pinned(f).map_err(|e| UsageError(e.to_string()).into()))
            .transpose()
    }

    /// A client of the hub these flags or the saved login name.
    pub fn client(&self) -> anyhow::Result<Client> {
        let session = Session::load().ok();
        let flags_trust = self.trust()?;
        let (server, session) = match &self.server {
            Some(server) => {
                let same = session
                    .filter(|s| s.server.trim_end_matches('/') == server.trim_end_matches('/'));
                (server.clone(), same)
            }
            None => {
                let session = session.ok_or(client::Error::NotLoggedIn)?;
                (session.server.clone(), Some(session))
            }
        };
        let token = self
            .auth_token
            .clone()
            .or_else(|| session.as_ref().map(|s| s.token.clone()));
        let trust = flags_trust
            .or_else(|| session.map(|s| s.trust))
            .unwrap_or_default();
        Client::new(&server, token, &trust).context("connecting to the hub")
    }
}

/// The hub's state folder when none is given: `$XDG_DATA_HOME/flotilla`.
pub fn default_data_dir() -> std::path::PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"))
        })
        .unwrap_or_else(std::env::temp_dir)
        .join("flotilla")
}
