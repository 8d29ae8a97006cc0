//! Signed bundles, by (app, cluster, generation), and the index by cluster that
//! holds each (cluster, app)'s newest generation and its expiry.
//!
//! Writing and flushing are apart: a refresh writes one bundle per cluster, then
//! makes them all durable with one flush ([`Store::commit_bundles`]), and only then
//! announces them to the link. An agent never receives a bundle the hub could
//! lose in a crash, and a fan-out to thousands of clusters costs one flush, not
//! thousands.

use flotilla_common::bundle::Envelope;
use flotilla_common::model::Timestamp;

use super::{BundleStored, Error, Key, Result, Store, app_key, db};

/// A bundle written to the database but not yet flushed nor announced. Hand it
/// to [`Store::commit_bundles`]; one that is dropped is made durable by the next
/// flush of anything, and reaches its agent when the agent next connects.
#[derive(Debug)]
#[must_use = "a written bundle reaches no agent until it is committed"]
pub struct Unflushed(BundleStored);

impl Unflushed {
    /// The bundle's generation.
    pub fn generation(&self) -> u64 {
        self.0.generation
    }
}

/// What the index by cluster holds for one (cluster, app).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Indexed {
    /// The newest generation.
    pub generation: u64,
    /// Its expiry; `None` for an entry written before the index kept expiries.
    pub not_after: Option<Timestamp>,
}

impl Indexed {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let generation = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let not_after = bytes
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map(|b| Timestamp(u64::from_be_bytes(b)));
        Some(Self {
            generation,
            not_after,
        })
    }

    /// The generation, then the expiry when there is one: an entry without one
    /// reads back as without one, not as expired at the epoch.
    fn encode(self) -> Vec<u8> {
        let mut out = self.generation.to_be_bytes().to_vec();
        if let Some(not_after) = self.not_after {
            out.extend_from_slice(&not_after.0.to_be_bytes());
        }
        out
    }
}

impl Store {
    /// Stores a signed bundle (the envelope's bytes) for (app, cluster, generation),
    /// flushed and announced; a generation not newer than the stored one is refused
    /// with [`Error::GenerationTaken`] and nothing is written. The hub allocates
    /// generations in [`crate::bundles`]; only tests call this directly.
    pub async fn put_bundle(
        &self,
        project: &str,
        app: &str,
        cluster: &str,
        generation: u64,
        envelope: &[u8],
    ) -> Result<()> {
        let not_after = Envelope::decode(envelope).ok().map(|e| e.not_after);
        let written = self.write_bundle(project, app, cluster, generation, not_after, envelope)?;
        self.commit_bundles(vec![written]).await
    }

    /// Writes a signed bundle without flushing it; see [`Store::put_bundle`] for
    /// what is refused. `not_after` is the bundle's expiry, kept in the index so
    /// finding the bundles due for re-issue decodes none.
    pub fn write_bundle(
        &self,
        project: &str,
        app: &str,
        cluster: &str,
        generation: u64,
        not_after: Option<Timestamp>,
        envelope: &[u8],
    ) -> Result<Unflushed> {
        use sled::Transactional as _;
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        self.ensure_space()?;
        let key = app_key(project, app).str(cluster).u64(generation);
        // Index by cluster, so an agent's connection finds its bundles without
        // scanning every cluster's. One transaction with the bundle: a bundle
        // without its index entry would never reach a reconnecting agent. The
        // index also holds the newest generation, which the transaction checks:
        // a generation is written once, never overwritten, never reused.
        let index = Key::new().str(cluster).str(project).str(app);
        let entry = Indexed {
            generation,
            not_after,
        };
        let bundles = self.tree("bundles")?;
        let cluster_bundles = self.tree("cluster_bundles")?;
        let written = (&bundles, &cluster_bundles).transaction(|(bundles, cluster_bundles)| {
            let stored = cluster_bundles
                .get(index.as_bytes())?
                .and_then(|v| Indexed::decode(&v))
                .map(|i| i.generation);
            if let Some(stored) = stored.filter(|stored| generation <= *stored) {
                return Err(ConflictableTransactionError::Abort(stored));
            }
            bundles.insert(key.as_bytes(), envelope)?;
            cluster_bundles.insert(index.as_bytes(), entry.encode())?;
            Ok(())
        });
        match written {
            Ok(()) => Ok(Unflushed(BundleStored {
                project: project.to_owned(),
                app: app.to_owned(),
                cluster: cluster.to_owned(),
                generation,
            })),
            Err(TransactionError::Abort(stored)) => Err(Error::GenerationTaken {
                project: project.to_owned(),
                app: app.to_owned(),
                cluster: cluster.to_owned(),
                generation,
                stored,
            }),
            Err(TransactionError::Storage(source)) => Err(db("bundles", "writing", source)),
        }
    }

    /// Makes written bundles durable with one flush, then announces each to the
    /// link. On a failed flush none is announced.
    pub async fn commit_bundles(&self, written: Vec<Unflushed>) -> Result<()> {
        if written.is_empty() {
            return Ok(());
        }
        self.flush("bundles").await?;
        for Unflushed(stored) in written {
            let _ = self.bundles_stored.send(stored);
        }
        Ok(())
    }

    /// What the index holds for (app, cluster): the newest generation and its
    /// expiry, read without decoding the bundle.
    pub fn indexed_bundle(
        &self,
        project: &str,
        app: &str,
        cluster: &str,
    ) -> Result<Option<Indexed>> {
        let index = Key::new().str(cluster).str(project).str(app);
        Ok(self
            .tree("cluster_bundles")?
            .get(index.as_bytes())
            .map_err(|source| db("cluster_bundles", "reading", source))?
            .and_then(|v| Indexed::decode(&v)))
    }

    /// The newest bundle of (app, cluster): its generation and envelope bytes.
    pub fn latest_bundle(
        &self,
        project: &str,
        app: &str,
        cluster: &str,
    ) -> Result<Option<(u64, Vec<u8>)>> {
        let prefix = app_key(project, app).str(cluster);
        let item = self
            .tree("bundles")?
            .scan_prefix(prefix.as_bytes())
            .next_back()
            .transpose()
            .map_err(|source| db("bundles", "scanning", source))?;
        Ok(item.and_then(|(k, v)| {
            let generation = Key::from_bytes(k.to_vec()).last_u64()?;
            Some((generation, v.to_vec()))
        }))
    }
}
