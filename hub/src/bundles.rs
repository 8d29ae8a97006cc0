//! The one writer of bundles. A refresh, the re-issue of a bundle past half its
//! life, the deletion bundle of a removed app and an API rollback can all make the
//! next generation of one (app, cluster) at the same moment; each goes through
//! [`Issuer::issue`], which allocates the generation, signs the bundle and stores
//! it so that no generation is taken twice and none is overwritten.
//!
//! The store refuses a generation that is not newer than the stored one, in the
//! same transaction that writes it ([`Store::put_bundle`]). The issuer reads the
//! latest, lets the caller draft the next bundle from it, signs and stores it, and
//! when another writer got there first, drafts again from the newer latest.
//!
//! A refresh issues one bundle per cluster into a [`Batch`], which makes them all
//! durable with one flush before any agent hears of them.
//!
//! The issuer is also the gate of rollouts: a refresh proposes each new bundle
//! ([`Batch::propose`]), and one of an app a RollingSync rollout drives is held
//! (stored unsigned, no generation taken, never sent) until the rollout's step
//! reaches the app and [`crate::rollout`] issues it.

use flotilla_common::bundle::{Bundle, Envelope};
use flotilla_common::model::AppRef;
use flotilla_common::signing::{self, BundleSigner};
use tracing::debug;

use crate::store::{self, Indexed, Store, Unflushed};

/// How many bundles a refresh writes before it commits them (one flush) and
/// the link starts pushing them. Measured with `link_scale 10000` (100 KiB
/// bundles, hub and agents on two cores): one flush per bundle spent the
/// fan-out flushing; one flush for all 10,000, or for every 256, stored faster
/// but held pushes back and let them pile up at once; 16 stored in less than
/// half the time and acked last soonest.
pub const COMMIT_EVERY: usize = 16;

/// How many times a draft is made again after other writers took the generation
/// it was drafted for, before giving up.
const ATTEMPTS: u32 = 16;

/// Why a bundle was not issued.
#[derive(Debug, thiserror::Error)]
pub enum Error<E: std::error::Error + 'static> {
    /// The caller's draft failed; nothing was stored.
    #[error(transparent)]
    Draft(E),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Signing or encoding the bundle failed.
    #[error("signing generation {generation} of {app} for cluster {cluster}")]
    Sign {
        app: AppRef,
        cluster: String,
        generation: u64,
        #[source]
        source: signing::Error,
    },
    /// Other writers kept taking the next generation.
    #[error(
        "generation of {app} for cluster {cluster}: other writers took the next one {ATTEMPTS} times in a row"
    )]
    Contended { app: AppRef, cluster: String },
}

/// What became of a proposed bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proposed {
    /// It was issued as this generation.
    Issued(u64),
    /// A rollout drives the app: the bundle is held until its step starts.
    Held,
    /// The draft changed nothing.
    Unchanged,
}

/// The newest stored bundle of an (app, cluster).
#[derive(Debug)]
pub struct Latest {
    /// Its generation.
    pub generation: u64,
    /// The bundle, when it decodes (a bundle that does not is drafted over).
    pub bundle: Option<Bundle>,
}

/// Allocates, signs and stores bundle generations.
pub struct Issuer {
    store: Store,
    signer: BundleSigner,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").finish_non_exhaustive()
    }
}

impl Issuer {
    /// An issuer that signs with the hub's bundle key, made on first use.
    pub async fn new(store: Store) -> Result<Self, store::Error> {
        let signer = store.bundle_signer().await?;
        Ok(Self { store, signer })
    }

    /// The public half of the signing key, which agents trust.
    pub fn public_key(&self) -> [u8; 32] {
        self.signer.public_key()
    }

    /// The newest stored bundle of `app` for `cluster`.
    pub fn latest(&self, app: &AppRef, cluster: &str) -> Result<Option<Latest>, store::Error> {
        Ok(self
            .store
            .latest_bundle(&app.project, &app.name, cluster)?
            .map(|(generation, bytes)| Latest {
                generation,
                bundle: Envelope::decode(&bytes)
                    .ok()
                    .and_then(|envelope| Bundle::decode(&envelope.payload).ok()),
            }))
    }

    /// Issues the next generation of `app` for `cluster`, flushed and announced
    /// to the link: a [`Batch`] of one.
    pub async fn issue<E: std::error::Error + 'static>(
        &self,
        app: &AppRef,
        cluster: &str,
        draft: impl FnMut(u64, Option<&Latest>) -> Result<Option<Bundle>, E>,
    ) -> Result<Option<u64>, Error<E>> {
        let mut batch = self.batch();
        let issued = batch.issue(app, cluster, draft);
        batch.commit().await?;
        issued
    }

    /// A batch of bundles written one by one and made durable together: a
    /// refresh issues one bundle per cluster and flushes once.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            issuer: self,
            written: Vec::new(),
            held: 0,
        }
    }

    /// The newest generation of `app` for `cluster` and its expiry, from the
    /// index: what deciding whether to re-issue needs, without decoding the bundle.
    pub fn indexed(&self, app: &AppRef, cluster: &str) -> Result<Option<Indexed>, store::Error> {
        self.store.indexed_bundle(&app.project, &app.name, cluster)
    }
}

/// Bundles issued but not yet durable: nothing in a batch reaches an agent before
/// [`Batch::commit`] has flushed them all. A batch dropped without a commit leaves
/// its bundles written; the next flush of the store makes them durable and they
/// reach their agents when those next connect.
#[must_use = "issued bundles reach no agent until the batch is committed"]
pub struct Batch<'a> {
    issuer: &'a Issuer,
    written: Vec<Unflushed>,
    /// Held bundles written or dropped since the last commit.
    held: usize,
}

impl Batch<'_> {
    /// Issues the next generation of `app` for `cluster`. `draft` is given that
    /// generation and the latest stored bundle, and returns the bundle to store
    /// (its app, cluster and generation are set here), or `None` to store nothing.
    /// It runs again, with the newer latest, if another writer stored a generation
    /// meanwhile. Returns the generation written.
    pub fn issue<E: std::error::Error + 'static>(
        &mut self,
        app: &AppRef,
        cluster: &str,
        mut draft: impl FnMut(u64, Option<&Latest>) -> Result<Option<Bundle>, E>,
    ) -> Result<Option<u64>, Error<E>> {
        for _ in 0..ATTEMPTS {
            let latest = self.issuer.latest(app, cluster)?;
            let generation = latest.as_ref().map_or(1, |l| l.generation + 1);
            let Some(mut bundle) = draft(generation, latest.as_ref()).map_err(Error::Draft)? else {
                return Ok(None);
            };
            bundle.app = app.clone();
            bundle.cluster = cluster.to_owned();
            bundle.generation = generation;
            let sign_error = |source| Error::Sign {
                app: app.clone(),
                cluster: cluster.to_owned(),
                generation,
                source,
            };
            let bytes = self
                .issuer
                .signer
                .sign(&bundle)
                .map_err(sign_error)?
                .encode()
                .map_err(|e| sign_error(signing::Error::Bundle(e)))?;
            match self.issuer.store.write_bundle(
                &app.project,
                &app.name,
                cluster,
                generation,
                Some(bundle.not_after),
                &bytes,
            ) {
                Ok(written) => {
                    self.written.push(written);
                    return Ok(Some(generation));
                }
                Err(store::Error::GenerationTaken { stored, .. }) => {
                    debug!(%app, cluster, generation, stored, "another writer took the generation; drafting again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contended {
            app: app.clone(),
            cluster: cluster.to_owned(),
        })
    }

    /// As [`Batch::issue`] for a new desired state, unless a rollout drives the
    /// app: then the draft is held, unsigned and with no generation taken, in
    /// place of what was held before, and no agent sees it until the rollout
    /// issues it. A draft that changes nothing drops what was held.
    pub fn propose<E: std::error::Error + 'static>(
        &mut self,
        app: &AppRef,
        cluster: &str,
        mut draft: impl FnMut(u64, Option<&Latest>) -> Result<Option<Bundle>, E>,
    ) -> Result<Proposed, Error<E>> {
        let store = &self.issuer.store;
        if store.rollout_member(&app.project, &app.name)?.is_none() {
            return Ok(self
                .issue(app, cluster, draft)?
                .map_or(Proposed::Unchanged, Proposed::Issued));
        }
        let latest = self.issuer.latest(app, cluster)?;
        let generation = latest.as_ref().map_or(1, |l| l.generation + 1);
        self.held += 1;
        let Some(mut bundle) = draft(generation, latest.as_ref()).map_err(Error::Draft)? else {
            store.forget_held_bundle(&app.project, &app.name, cluster)?;
            return Ok(Proposed::Unchanged);
        };
        bundle.app = app.clone();
        bundle.cluster = cluster.to_owned();
        let bytes = bundle.encode().map_err(|e| Error::Sign {
            app: app.clone(),
            cluster: cluster.to_owned(),
            generation,
            source: signing::Error::Bundle(e),
        })?;
        store.write_held_bundle(&app.project, &app.name, cluster, &bytes)?;
        debug!(%app, cluster, revision = %bundle.source.revision, "held a bundle for its rollout step");
        Ok(Proposed::Held)
    }

    /// How many bundles are written and not yet committed.
    pub fn pending(&self) -> usize {
        self.written.len() + self.held
    }

    /// Commits what is written so far and keeps the batch open: a refresh of
    /// thousands of clusters commits every [`COMMIT_EVERY`] bundles, so the link
    /// pushes the first while the rest are still being written.
    pub async fn commit_pending(&mut self) -> Result<(), store::Error> {
        let written = std::mem::take(&mut self.written);
        if std::mem::take(&mut self.held) > 0 {
            self.issuer.store.flush_held_bundles().await?;
        }
        self.issuer.store.commit_bundles(written).await
    }

    /// Flushes every bundle of the batch with one flush, then announces them to
    /// the link.
    pub async fn commit(mut self) -> Result<(), store::Error> {
        self.commit_pending().await
    }
}

#[cfg(test)]
mod tests;
