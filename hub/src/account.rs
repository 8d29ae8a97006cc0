//! Local accounts and API sessions.
//!
//! Passwords are hashed with Argon2id and a random salt; sessions are random bearer
//! tokens, of which the store keeps only the SHA-256, so a copy of the database holds
//! no usable credential. The first start creates `admin` with a generated password,
//! printed once, or with `FLOTILLA_ADMIN_PASSWORD` when that is set.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::store::{self, Key, Store};

pub mod throttle;

/// How long a login session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

const TREE: &str = "accounts";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Hashing failed (bad parameters or no randomness).
    #[error("failed to hash a password: {0}")]
    Hash(String),
    /// The user name or password is wrong; deliberately not saying which.
    #[error("invalid user name or password")]
    BadLogin,
    /// The token is unknown, revoked or expired.
    #[error("invalid or expired token")]
    BadToken,
    /// The account exists already.
    #[error("account {0:?} exists already")]
    Exists(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Serialize, Deserialize)]
struct AccountRecord {
    name: String,
    salt: [u8; 16],
    hash: [u8; 32],
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Clone, Serialize, Deserialize)]
struct SessionRecord {
    user: String,
    groups: Vec<String>,
    expires_at: u64,
}

/// Who a request is made by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub groups: Vec<String>,
}

fn hash(password: &str, salt: &[u8; 16]) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(password.as_bytes(), salt, &mut out)
        .map_err(|e| Error::Hash(e.to_string()))?;
    Ok(out)
}

/// [`hash`] on tokio's blocking pool: an Argon2 hash takes tens of milliseconds of
/// a core, and on the runtime it would stall the agent link's tasks that share it.
async fn hash_blocking(password: &str, salt: [u8; 16]) -> Result<[u8; 32]> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash(&password, &salt))
        .await
        .map_err(|e| Error::Hash(format!("the hashing task failed: {e}")))?
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| Error::Hash(e.to_string()))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn account_key(name: &str) -> Key {
    Key::new().str("account").str(name)
}

fn session_key(token: &str) -> Key {
    Key::new()
        .str("session")
        .str(&hex(&Sha256::digest(token.as_bytes())))
}

/// Creates an account; fails if it exists.
pub async fn create(store: &Store, name: &str, password: &str, groups: Vec<String>) -> Result<()> {
    if store
        .get::<AccountRecord>(TREE, &account_key(name))?
        .is_some()
    {
        return Err(Error::Exists(name.to_owned()));
    }
    let salt = random::<16>()?;
    let record = AccountRecord {
        name: name.to_owned(),
        hash: hash_blocking(password, salt).await?,
        salt,
        groups,
    };
    store.put(TREE, &account_key(name), &record).await?;
    Ok(())
}

/// Makes sure `admin` exists. Returns the generated password when it had to make
/// one, for the caller to show once.
pub async fn ensure_admin(store: &Store, password: Option<&str>) -> Result<Option<String>> {
    if store
        .get::<AccountRecord>(TREE, &account_key("admin"))?
        .is_some()
    {
        return Ok(None);
    }
    let generated = password
        .is_none()
        .then(|| hex(&random::<12>().unwrap_or_default()));
    let password = password.or(generated.as_deref()).unwrap_or_default();
    create(store, "admin", password, Vec::new()).await?;
    Ok(generated)
}

/// Checks a password and opens a session; returns its bearer token.
pub async fn login(store: &Store, name: &str, password: &str) -> Result<String> {
    let Some(account) = store.get::<AccountRecord>(TREE, &account_key(name))? else {
        // Spend the same time as a real check, so names cannot be probed by timing.
        let _ = hash_blocking(password, [0; 16]).await;
        return Err(Error::BadLogin);
    };
    let computed = hash_blocking(password, account.salt).await?;
    if !bool::from(computed.ct_eq(&account.hash)) {
        return Err(Error::BadLogin);
    }
    let token = hex(&random::<32>()?);
    let session = SessionRecord {
        user: account.name,
        groups: account.groups,
        expires_at: now_secs() + SESSION_TTL.as_secs(),
    };
    store.put(TREE, &session_key(&token), &session).await?;
    Ok(token)
}

/// The groups of account `name`, or `None` when there is no such account.
pub fn groups(store: &Store, name: &str) -> Result<Option<Vec<String>>> {
    Ok(store
        .get::<AccountRecord>(TREE, &account_key(name))?
        .map(|a| a.groups))
}

/// Whether account `name` exists.
pub fn exists(store: &Store, name: &str) -> Result<bool> {
    Ok(groups(store, name)?.is_some())
}

/// Ends the session `token`; says whether it was one.
pub async fn logout(store: &Store, token: &str) -> Result<bool> {
    Ok(store.remove(TREE, &session_key(token)).await?)
}

/// Who holds `token`, if it is a live session.
pub fn authenticate(store: &Store, token: &str) -> Result<Principal> {
    let session: SessionRecord = store
        .get(TREE, &session_key(token))?
        .ok_or(Error::BadToken)?;
    if session.expires_at <= now_secs() {
        return Err(Error::BadToken);
    }
    Ok(Principal {
        user: session.user,
        groups: session.groups,
    })
}
