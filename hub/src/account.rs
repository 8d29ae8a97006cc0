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
    /// A new account's name, password or group breaks the rules for them.
    #[error("{field} {value:?}: {why}")]
    Invalid {
        /// `name`, `password` or `groups[i]`.
        field: String,
        /// What was given; never the password.
        value: String,
        why: &'static str,
    },
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

/// The longest password taken, so hashing one is bounded work.
pub const MAX_PASSWORD: usize = 128;
/// The shortest password taken, as Argo CD's default password pattern has it.
pub const MIN_PASSWORD: usize = 8;

/// Checks a new account's name, password and groups. A name is a plain word
/// (`a-z`, `0-9`, `-`, `_`, `.`, `@`, starting with a letter or digit), so it is
/// never a role (`role:…`), a project role (`proj:…:…`) or a glob; groups are names
/// without commas or control characters.
pub fn check_new(name: &str, password: &str, groups: &[String]) -> Result<()> {
    let invalid = |field: &str, value: &str, why| Error::Invalid {
        field: field.to_owned(),
        value: value.to_owned(),
        why,
    };
    let bytes = name.as_bytes();
    let name_ok = (1..=64).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.' | b'@')
        });
    if !name_ok {
        return Err(invalid(
            "name",
            name,
            "an account name is 1 to 64 of a-z, 0-9, '-', '_', '.', '@', starting with a letter \
             or digit (':' is kept for role: and proj: names)",
        ));
    }
    let length = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&length) {
        return Err(invalid(
            "password",
            "(not shown)",
            "a password is 8 to 128 characters",
        ));
    }
    for (i, group) in groups.iter().enumerate() {
        let ok = !group.trim().is_empty()
            && group.len() <= 253
            && group.trim() == group
            && !group.contains(',')
            && !group.chars().any(char::is_control);
        if !ok {
            return Err(invalid(
                &format!("groups[{i}]"),
                group,
                "a group is a name of at most 253 characters, without commas, control \
                 characters or surrounding spaces",
            ));
        }
    }
    Ok(())
}

/// Creates an account after [`check_new`]; fails if it exists.
pub async fn create(store: &Store, name: &str, password: &str, groups: Vec<String>) -> Result<()> {
    check_new(name, password, &groups)?;
    insert(store, name, password, groups).await
}

async fn insert(store: &Store, name: &str, password: &str, groups: Vec<String>) -> Result<()> {
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
    // No randomness is an error: a fallback would be a password anyone can guess.
    // A given one follows the rules every password does (an empty
    // FLOTILLA_ADMIN_PASSWORD would otherwise let anyone in).
    let generated = match password {
        Some(given) => {
            check_new("admin", given, &[])?;
            None
        }
        None => Some(hex(&random::<12>()?)),
    };
    let password = password.or(generated.as_deref()).unwrap_or_default();
    insert(store, "admin", password, Vec::new()).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_admin_password_is_generated_or_follows_the_password_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for weak in ["", "short"] {
            assert!(matches!(
                ensure_admin(&store, Some(weak)).await,
                Err(Error::Invalid { ref field, .. }) if field == "password"
            ));
            assert!(!exists(&store, "admin").unwrap(), "{weak:?}");
        }
        let generated = ensure_admin(&store, None).await.unwrap().unwrap();
        assert_eq!(generated.len(), 24);
        assert!(login(&store, "admin", &generated).await.is_ok());
        assert!(matches!(
            login(&store, "admin", "").await,
            Err(Error::BadLogin)
        ));
    }

    #[test]
    fn account_names_are_plain_words_never_roles() {
        for name in ["alice", "ci-bot", "a.b_c@example.com", "0ps"] {
            check_new(name, "long-enough", &[]).unwrap();
        }
        for name in [
            "role:admin",
            "proj:a:b",
            "*",
            "",
            "Alice",
            "-x",
            "a b",
            "a,b",
        ] {
            assert!(check_new(name, "long-enough", &[]).is_err(), "{name:?}");
        }
        let long = "x".repeat(MAX_PASSWORD + 1);
        assert!(check_new("alice", &long, &[]).is_err());
        let e = check_new("alice", "pw-7", &[]).unwrap_err().to_string();
        assert!(!e.contains("pw-7"), "{e}");
    }
}
