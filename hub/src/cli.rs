//! The `flotilla` commands, one file each, and what they share: where the hub is
//! and how it is trusted ([`Connection`]), how output is printed ([`output`]), and
//! which exit status each kind of error ends with ([`report`]).
//!
//! Exit statuses:
//! - 0: all went well;
//! - 1: the work failed (a failed sync, a wait that ran out of time, a hub that
//!   could not be reached);
//! - 2: bad usage, a wrong argument of the command ([`UsageError`], or the hub
//!   answered 400), as clap exits for a flag it cannot parse;
//! - 20: `app diff` found differences, as argocd's;
//! - 64: bad configuration, a flag with a `FLOTILLA_*` fallback that is wrong on
//!   its own or with another ([`ConfigError`]), as sysexits' EX_USAGE.

use std::process::ExitCode;

use anyhow::Context as _;
use flotilla_hub::client::{self, Client, Session, Trust};

pub mod account;
pub mod app;
pub mod cluster;
pub mod completion;
pub mod hub;
pub mod login;
pub mod output;
pub mod project;
pub mod render;
pub mod repo;
pub mod rollout;

/// The work failed.
pub const EXIT_FAILED: u8 = 1;
/// Bad usage, as clap gives for bad flags.
pub const EXIT_USAGE: u8 = 2;
/// `app diff` found differences.
pub const EXIT_DIFF: u8 = 20;
/// Bad configuration, as sysexits' EX_USAGE.
pub const EXIT_CONFIG: u8 = 64;

/// An error in what the user asked for, as opposed to a failure doing it: exit 2,
/// as clap does for bad flags.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A bad configuration, of the hub or of the connection to it: exit 64
/// (EX_USAGE), as the style guide asks.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Ends the command with an exit code other than success, and a message (printed
/// to stderr when not empty).
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Prints why a command failed and gives its exit status.
pub fn report(e: &anyhow::Error) -> ExitCode {
    if let Some(exit) = e.downcast_ref::<Exit>() {
        if !exit.message.is_empty() {
            eprintln!("flotilla: {}", exit.message);
        }
        return ExitCode::from(exit.code);
    }
    eprintln!("flotilla: {e:#}");
    ExitCode::from(exit_code(e))
}

/// 2 for bad usage (here or as the hub judged the request), 64 for a bad
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
        EXIT_FAILED
    }
}

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
                ConfigError("give --ca-fingerprint or --insecure, not both".to_owned()).into(),
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
            .map(|f| Trust::pinned(f).map_err(|e| ConfigError(e.to_string()).into()))
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
