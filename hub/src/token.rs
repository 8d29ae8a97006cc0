//! API tokens scoped to a role, as Argo CD has them: a project role's tokens act
//! as `proj:PROJECT:ROLE`, an account's tokens act as that account.
//!
//! A token is shown once, when it is issued; the store keeps only its SHA-256, with
//! an id that lists and revokes it. A project token stops working when its role
//! leaves the AppProject, and any token stops at its expiry.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::account::{self, Principal};
use crate::ca::hex;
use crate::cluster::epoch_ms;
use crate::store::{self, Key, Store};

/// The tree tokens live in, keyed by the SHA-256 of the token.
pub const TREE: &str = "api_tokens";

/// What every API token starts with, so the hub can tell one from a session.
pub const PREFIX: &str = "flt_api_";

/// Errors from issuing, checking and revoking tokens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The system's random source failed.
    #[error("failed to draw a token from the system's random source")]
    Random,
    /// The token is unknown, revoked, expired, or its role or account is gone.
    #[error("invalid, revoked or expired API token")]
    Invalid,
    /// The project has no such role (or no such project is stored).
    #[error("project {project:?} has no role {role:?}")]
    NoSuchRole {
        /// The project.
        project: String,
        /// The role asked for.
        role: String,
    },
    /// No account has that name.
    #[error("account {0:?} does not exist")]
    NoSuchAccount(String),
    /// Looking up the account failed.
    #[error(transparent)]
    Account(#[from] account::Error),
    /// The lifetime asked for is longer than [`MAX_TTL`].
    #[error("a token lives at most {max} seconds, not {0} seconds", max = MAX_TTL.as_secs())]
    TtlTooLong(u64),
}

/// The longest a token may live: a hundred years, far beyond any use and far
/// inside what a clock can count to.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whose role a token carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Owner {
    /// A role an AppProject defines: the bearer is `proj:PROJECT:ROLE`.
    Project {
        /// The AppProject.
        project: String,
        /// The role in its `spec.roles`.
        role: String,
    },
    /// A local account: the bearer is that account, with its groups.
    Account {
        /// The account name.
        name: String,
    },
}

impl Owner {
    /// The RBAC subject the bearer acts as.
    pub fn subject(&self) -> String {
        match self {
            Self::Project { project, role } => format!("proj:{project}:{role}"),
            Self::Account { name } => name.clone(),
        }
    }
}

/// A token as stored and listed: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// Names the token in lists and revocation.
    pub id: String,
    /// Whose role it carries.
    pub owner: Owner,
    /// When it was issued, ms since the epoch.
    pub issued_at_ms: u64,
    /// When it stops working, ms since the epoch; never when `None`.
    pub expires_at_ms: Option<u64>,
    /// Who issued it.
    pub issued_by: String,
}

fn token_key(token: &str) -> Key {
    Key::new().str(&hex(&Sha256::digest(token.as_bytes())))
}

fn random_hex<const N: usize>() -> Result<String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| Error::Random)?;
    Ok(hex(&bytes))
}

/// Checks that `owner` exists: the project role in its stored AppProject, or the
/// account.
pub fn check_owner(store: &Store, owner: &Owner) -> Result<()> {
    match owner {
        Owner::Project { project, role } => {
            let has_role = store
                .project(project)?
                .is_some_and(|p| p.spec.roles.iter().any(|r| r.name == *role));
            if has_role {
                Ok(())
            } else {
                Err(Error::NoSuchRole {
                    project: project.clone(),
                    role: role.clone(),
                })
            }
        }
        Owner::Account { name } => match account::groups(store, name)? {
            Some(_) => Ok(()),
            None => Err(Error::NoSuchAccount(name.clone())),
        },
    }
}

/// Issues a token for `owner`, valid for `ttl` (forever when `None`). Returns the
/// token, to be shown once, and what is stored about it.
pub async fn issue(
    store: &Store,
    owner: Owner,
    ttl: Option<Duration>,
    issued_by: &str,
    now: SystemTime,
) -> Result<(String, TokenInfo)> {
    if let Some(ttl) = ttl.filter(|ttl| *ttl > MAX_TTL) {
        return Err(Error::TtlTooLong(ttl.as_secs()));
    }
    check_owner(store, &owner)?;
    let token = format!("{PREFIX}{}", random_hex::<32>()?);
    let info = TokenInfo {
        id: random_hex::<8>()?,
        owner,
        issued_at_ms: epoch_ms(now),
        expires_at_ms: ttl.map(|ttl| now.checked_add(ttl).map_or(u64::MAX, epoch_ms)),
        issued_by: issued_by.to_owned(),
    };
    store.put(TREE, &token_key(&token), &info).await?;
    Ok((token, info))
}

/// Every token of `owner`, oldest first.
pub fn list(store: &Store, owner: &Owner) -> Result<Vec<TokenInfo>> {
    let mut tokens: Vec<TokenInfo> = store
        .scan::<TokenInfo>(TREE, &Key::new())?
        .into_iter()
        .map(|(_, info)| info)
        .filter(|info| info.owner == *owner)
        .collect();
    tokens.sort_by(|a, b| (a.issued_at_ms, &a.id).cmp(&(b.issued_at_ms, &b.id)));
    Ok(tokens)
}

/// Revokes `owner`'s token `id`; returns it if it existed.
pub async fn revoke(store: &Store, owner: &Owner, id: &str) -> Result<Option<TokenInfo>> {
    let found = store
        .scan::<TokenInfo>(TREE, &Key::new())?
        .into_iter()
        .find(|(_, info)| info.owner == *owner && info.id == id);
    match found {
        Some((key, info)) => {
            store.remove(TREE, &key).await?;
            Ok(Some(info))
        }
        None => Ok(None),
    }
}

/// Who the bearer of `token` is, if it is a live API token whose role or account
/// still exists.
pub fn authenticate(store: &Store, token: &str, now: SystemTime) -> Result<Principal> {
    let info: TokenInfo = store.get(TREE, &token_key(token))?.ok_or(Error::Invalid)?;
    if info.expires_at_ms.is_some_and(|at| at <= epoch_ms(now)) {
        return Err(Error::Invalid);
    }
    match &info.owner {
        Owner::Project { .. } => {
            check_owner(store, &info.owner).map_err(|_| Error::Invalid)?;
            Ok(Principal {
                user: info.owner.subject(),
                groups: Vec::new(),
            })
        }
        Owner::Account { name } => {
            let groups = account::groups(store, name)?.ok_or(Error::Invalid)?;
            Ok(Principal {
                user: name.clone(),
                groups,
            })
        }
    }
}

/// Parses a duration as `argocd --expires-in` takes it: a number with `s`, `m`,
/// `h` or `d`, e.g. `90m` or `30d`; `0` means never.
pub fn parse_duration(text: &str) -> Option<Option<Duration>> {
    let text = text.trim();
    if text == "0" {
        return Some(None);
    }
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => return None,
    };
    let total = number.checked_mul(seconds)?;
    (total > 0).then_some(Some(Duration::from_secs(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_argocd_writes_them() {
        assert_eq!(parse_duration("90m"), Some(Some(Duration::from_secs(5400))));
        assert_eq!(
            parse_duration("2d"),
            Some(Some(Duration::from_secs(172_800)))
        );
        assert_eq!(parse_duration("0"), Some(None));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("h"), None);
    }

    #[tokio::test]
    async fn an_account_token_works_until_revoked_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        account::create(&store, "ci", "ci-password", vec!["deployers".to_owned()])
            .await
            .unwrap();
        let owner = Owner::Account {
            name: "ci".to_owned(),
        };
        let now = SystemTime::now();
        let (token, info) = issue(&store, owner.clone(), None, "admin", now)
            .await
            .unwrap();
        assert!(token.starts_with(PREFIX));
        let who = authenticate(&store, &token, now).unwrap();
        assert_eq!(who.user, "ci");
        assert_eq!(who.groups, vec!["deployers".to_owned()]);
        // Only the hash is stored.
        let stored =
            serde_json::to_string(&store.scan::<TokenInfo>(TREE, &Key::new()).unwrap()[0].1)
                .unwrap();
        assert!(!stored.contains(&token[PREFIX.len()..]));
        assert_eq!(list(&store, &owner).unwrap(), vec![info.clone()]);
        assert!(revoke(&store, &owner, &info.id).await.unwrap().is_some());
        assert!(matches!(
            authenticate(&store, &token, now),
            Err(Error::Invalid)
        ));

        let (short, _) = issue(&store, owner, Some(Duration::from_secs(60)), "admin", now)
            .await
            .unwrap();
        assert!(authenticate(&store, &short, now).is_ok());
        assert!(matches!(
            authenticate(&store, &short, now + Duration::from_secs(61)),
            Err(Error::Invalid)
        ));
    }

    #[tokio::test]
    async fn a_lifetime_past_the_longest_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        account::create(&store, "ci", "ci-password", Vec::new())
            .await
            .unwrap();
        let owner = Owner::Account {
            name: "ci".to_owned(),
        };
        for secs in [u64::MAX, MAX_TTL.as_secs() + 1] {
            let ttl = Some(Duration::from_secs(secs));
            assert!(matches!(
                issue(&store, owner.clone(), ttl, "admin", SystemTime::now()).await,
                Err(Error::TtlTooLong(s)) if s == secs
            ));
        }
        let (_, info) = issue(&store, owner, Some(MAX_TTL), "admin", SystemTime::now())
            .await
            .unwrap();
        assert!(info.expires_at_ms.is_some());
    }

    #[tokio::test]
    async fn a_token_for_a_missing_role_or_account_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let role = Owner::Project {
            project: "shop".to_owned(),
            role: "ci".to_owned(),
        };
        assert!(matches!(
            issue(&store, role, None, "admin", SystemTime::now()).await,
            Err(Error::NoSuchRole { .. })
        ));
        let account = Owner::Account {
            name: "nobody".to_owned(),
        };
        assert!(matches!(
            issue(&store, account, None, "admin", SystemTime::now()).await,
            Err(Error::NoSuchAccount(_))
        ));
    }
}
