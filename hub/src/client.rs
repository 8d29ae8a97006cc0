//! A client of the hub's API, for the `flotilla` CLI: it keeps the session a `login`
//! made, and turns the API's answers into typed errors (a 403 stays a permission
//! denial, with the hub's message).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No session: `flotilla login` first.
    #[error("not logged in (run `flotilla login --server URL --username NAME`)")]
    NotLoggedIn,
    /// The hub could not be reached.
    #[error("cannot reach the hub at {server}")]
    Unreachable {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    /// The hub refused the credentials or the session expired.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// RBAC denied the request.
    #[error("{0}")]
    PermissionDenied(String),
    /// The hub answered with another error.
    #[error("the hub answered {status}: {message}")]
    Api { status: u16, message: String },
    /// Reading or writing the session file failed.
    #[error("session file {path}")]
    SessionFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A logged-in session, kept in the user's config folder (mode 0600).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub server: String,
    pub token: String,
}

/// Where the session is kept: `$XDG_CONFIG_HOME/flotilla/session.json`.
pub fn session_path() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(std::env::temp_dir)
        .join("flotilla")
        .join("session.json")
}

impl Session {
    pub fn load() -> Result<Self> {
        let path = session_path();
        let text = std::fs::read_to_string(&path).map_err(|_| Error::NotLoggedIn)?;
        serde_json::from_str(&text).map_err(|_| Error::NotLoggedIn)
    }

    pub fn save(&self) -> Result<()> {
        let path = session_path();
        let io = |source| Error::SessionFile {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        write_private(&path, text.as_bytes()).map_err(io)
    }
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Talks to one hub.
pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            server: server.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub fn from_session() -> Result<Self> {
        let session = Session::load()?;
        Ok(Self::new(&session.server, Some(session.token)))
    }

    /// Logs in and returns the session (not yet saved).
    pub async fn login(server: &str, username: &str, password: &str) -> Result<Session> {
        let client = Self::new(server, None);
        let body = serde_json::json!({ "username": username, "password": password });
        let reply = client
            .send(
                reqwest::Method::POST,
                "/api/v1/session",
                Some(body.to_string()),
            )
            .await?;
        Ok(Session {
            server: client.server,
            token: reply["token"].as_str().unwrap_or_default().to_owned(),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: String) -> Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Value> {
        let unreachable = |source| Error::Unreachable {
            server: self.server.clone(),
            source,
        };
        let mut request = self.http.request(method, format!("{}{path}", self.server));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(unreachable)?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = json["error"].as_str().map(str::to_owned).unwrap_or(text);
        match status {
            200..=299 => Ok(json),
            401 => Err(Error::Unauthorized(message)),
            403 => Err(Error::PermissionDenied(message)),
            _ => Err(Error::Api { status, message }),
        }
    }
}
