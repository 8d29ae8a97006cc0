//! What the cluster serves and where this agent may act: discovery cached per
//! kind, waiting for kinds that a CRD or APIService just applied will provide,
//! the scope and reach checks made before a bundle is applied, and the API
//! handles every request goes through.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use flotilla_common::bundle::{Bundle, HookPhase, Object};
use flotilla_common::model::{Gvk, ResourceRef};
use kube::api::{Api, DynamicObject};
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use tokio::time::Instant;
use tracing::info;

use super::{Applier, Error, Result, api_message, describe, is_not_found};

#[cfg(test)]
mod tests;

/// Where an agent may act: the whole cluster, or only some namespaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Reach {
    /// The whole cluster, as the default install manifest grants.
    #[default]
    Cluster,
    /// Only these namespaces (`flotilla-agent --namespaces`, from `flotilla cluster
    /// add --namespaces`): the install manifest grants rights in them and read-only
    /// discovery elsewhere, and a bundle with any object outside them (a
    /// cluster-scoped one included) is refused whole, before anything is applied.
    Namespaces(BTreeSet<String>),
}

impl Reach {
    /// The namespaces in `list` (comma-separated DNS labels); an empty list is the
    /// whole cluster.
    pub fn parse(list: &str) -> std::result::Result<Reach, String> {
        let mut namespaces = BTreeSet::new();
        for namespace in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !flotilla_common::model::is_dns_label(namespace) {
                return Err(format!(
                    "{namespace:?} is not a namespace name (a DNS label: a-z, 0-9 and '-', at most 63)"
                ));
            }
            namespaces.insert(namespace.to_owned());
        }
        Ok(if namespaces.is_empty() {
            Reach::Cluster
        } else {
            Reach::Namespaces(namespaces)
        })
    }
}

fn scope_mismatch(resource: &ResourceRef, namespace: &str) -> Error {
    Error::ScopeMismatch {
        resource: describe(resource),
        kind: format!(
            "{}/{}/{}",
            resource.gvk.group, resource.gvk.version, resource.gvk.kind
        ),
        namespace: namespace.to_owned(),
    }
}

/// Whether discovery failed because the group, version or kind is not served (yet),
/// as opposed to a dead apiserver or a refused request.
fn is_not_served(error: &kube::Error) -> bool {
    is_not_found(error) || matches!(error, kube::Error::Discovery(_))
}

/// How long an applied CRD or APIService counts as a promise that its kinds will
/// be served, for bundles synced after the one that applied it.
const PROVIDER_WINDOW: Duration = Duration::from_secs(60);

/// What a CustomResourceDefinition or an APIService makes the apiserver serve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Provided {
    /// A CRD: one kind of one group.
    Kind {
        /// `spec.group`.
        group: String,
        /// `spec.names.kind`.
        kind: String,
    },
    /// An APIService: every kind of one group version.
    GroupVersion {
        /// `spec.group`.
        group: String,
        /// `spec.version`.
        version: String,
    },
}

impl Provided {
    /// What `object` provides, if it is a CRD or an APIService.
    fn by(object: &Object) -> Option<Self> {
        let crd = object.gvk.group == "apiextensions.k8s.io"
            && object.gvk.kind == "CustomResourceDefinition";
        let api_service =
            object.gvk.group == "apiregistration.k8s.io" && object.gvk.kind == "APIService";
        if !crd && !api_service {
            return None;
        }
        let manifest = object.manifest_json().ok()?;
        let field = |pointer: &str| manifest.pointer(pointer)?.as_str().map(str::to_owned);
        if crd {
            Some(Self::Kind {
                group: field("/spec/group")?,
                kind: field("/spec/names/kind")?,
            })
        } else {
            Some(Self::GroupVersion {
                group: field("/spec/group")?,
                version: field("/spec/version")?,
            })
        }
    }

    fn provides(&self, gvk: &Gvk) -> bool {
        match self {
            Self::Kind { group, kind } => *group == gvk.group && *kind == gvk.kind,
            Self::GroupVersion { group, version } => *group == gvk.group && *version == gvk.version,
        }
    }
}

/// Kinds that a CRD or APIService will serve soon, and how long lookups waited
/// for them.
#[derive(Default)]
pub(super) struct Providers {
    /// When each provider was last in a bundle being synced or applied.
    promised: HashMap<Provided, std::time::Instant>,
    /// Kinds whose wait ran out, when, and after how long: a second lookup in
    /// the same sync (the live listing, then the apply) does not wait again.
    gave_up: HashMap<Gvk, (std::time::Instant, Duration)>,
    /// Kinds that were served only after a wait, and how long it took, for the
    /// sync report.
    waited: Vec<(Gvk, Duration)>,
}

impl Providers {
    fn promise(&mut self, provided: Provided) {
        let now = std::time::Instant::now();
        self.promised
            .retain(|_, at| now.duration_since(*at) < PROVIDER_WINDOW);
        self.gave_up
            .retain(|_, (at, _)| now.duration_since(*at) < PROVIDER_WINDOW);
        self.promised.insert(provided, now);
    }

    /// Whether a lookup of `gvk` that the cluster does not serve should wait.
    fn promise_for(&self, gvk: &Gvk, wait: Duration) -> Promise {
        let now = std::time::Instant::now();
        if let Some((at, waited)) = self.gave_up.get(gvk)
            && now.duration_since(*at) < wait
        {
            return Promise::GaveUp(*waited);
        }
        let promised = self
            .promised
            .iter()
            .any(|(p, at)| p.provides(gvk) && now.duration_since(*at) < PROVIDER_WINDOW);
        if promised {
            Promise::Wait
        } else {
            Promise::None
        }
    }
}

/// What [`Providers::promise_for`] says of a kind the cluster does not serve.
enum Promise {
    /// Nothing provides it: fail at once.
    None,
    /// A CRD or APIService provides it: ask again.
    Wait,
    /// A wait for it ran out a moment ago, after this long: fail at once.
    GaveUp(Duration),
}

impl Applier {
    /// Remembers that `objects` provide kinds (CRDs, APIServices) about to be
    /// applied, so lookups of those kinds wait for them to be served.
    pub(super) fn promise_kinds<'o>(&self, objects: impl IntoIterator<Item = &'o Object>) {
        let provided: Vec<Provided> = objects.into_iter().filter_map(Provided::by).collect();
        if provided.is_empty() {
            return;
        }
        let mut providers = self
            .providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in provided {
            providers.promise(p);
        }
    }

    /// Kinds of `bundle` that were served only after a wait, and how long it took.
    pub(super) fn take_kind_waits(&self, bundle: &Bundle) -> Vec<(Gvk, Duration)> {
        let mut providers = self
            .providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (ours, others): (Vec<_>, Vec<_>) = std::mem::take(&mut providers.waited)
            .into_iter()
            .partition(|(gvk, _)| bundle.objects.iter().any(|o| o.gvk == *gvk));
        providers.waited = others;
        ours
    }

    /// Discovery for one kind, cached; a miss asks the apiserver again, so kinds of
    /// CRDs applied a moment ago are found.
    ///
    /// The apiserver marks a CRD Established a moment before discovery serves its
    /// group (and an APIService is Available only once its backend answers), so a
    /// kind that a CRD or APIService of the bundle provides, or one this agent
    /// applied in the last minute, is asked for again with a jittered backoff for
    /// up to [`Options::kind_wait`]. Any other unknown kind fails at once.
    async fn kind(&self, resource: &ResourceRef) -> Result<(ApiResource, ApiCapabilities)> {
        if let Some(found) = self.kinds.lock().await.get(&resource.gvk) {
            return Ok(found.clone());
        }
        let gvk = kube::api::GroupVersionKind::gvk(
            &resource.gvk.group,
            &resource.gvk.version,
            &resource.gvk.kind,
        );
        let kind = format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind);
        let started = Instant::now();
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut said = false;
        let found = loop {
            let source = match kube::discovery::pinned_kind(&self.client, &gvk).await {
                Ok(found) => break found,
                Err(source) => source,
            };
            let waited = started.elapsed();
            let promise = if is_not_served(&source) {
                self.providers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .promise_for(&resource.gvk, self.options.kind_wait)
            } else {
                Promise::None
            };
            let gave_up = match promise {
                Promise::Wait if waited < self.options.kind_wait => None,
                Promise::Wait => {
                    self.providers
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .gave_up
                        .insert(resource.gvk.clone(), (std::time::Instant::now(), waited));
                    Some(Some(waited))
                }
                Promise::GaveUp(earlier) => Some(Some(earlier)),
                Promise::None => Some(None),
            };
            if gave_up.is_some() && !is_not_served(&source) {
                // Not an answer about the kind: a dead apiserver is not "does not
                // serve kind".
                return Err(Error::Discovery {
                    resource: describe(resource),
                    kind,
                    message: api_message(&source),
                    source: Box::new(source),
                });
            }
            if let Some(waited) = gave_up {
                return Err(Error::UnknownKind {
                    resource: describe(resource),
                    kind,
                    waited: waited.map_or_else(String::new, |w| {
                        format!(
                            " (waited {:.1} s for the CustomResourceDefinition or APIService that provides it)",
                            w.as_secs_f64()
                        )
                    }),
                    message: api_message(&source),
                    source: Box::new(source),
                });
            }
            if !said {
                info!(
                    object = %describe(resource),
                    %kind,
                    "waiting for the cluster to serve the kind that a CRD or APIService just applied provides"
                );
                said = true;
            }
            let remaining = self.options.kind_wait.saturating_sub(waited);
            let delay = backoff.next_delay(crate::backoff::random_unit());
            tokio::time::sleep(delay.min(remaining)).await;
        };
        if said {
            let waited = started.elapsed();
            info!(%kind, waited_ms = waited.as_millis() as u64, "the kind is served");
            self.providers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .waited
                .push((resource.gvk.clone(), waited));
        }
        self.kinds
            .lock()
            .await
            .insert(resource.gvk.clone(), found.clone());
        Ok(found)
    }

    /// Refuses what the cluster's own discovery says the hub got wrong: an object
    /// of a cluster-scoped kind placed in a namespace. Kinds the cluster does not
    /// serve yet (their CRD is in the bundle) are checked when they are applied.
    pub async fn check_scopes(&self, bundle: &Bundle) -> Result<()> {
        for object in &bundle.objects {
            if matches!(object.hook.as_ref().map(|h| h.phase), Some(HookPhase::Skip)) {
                continue;
            }
            let Some(namespace) = &object.namespace else {
                continue;
            };
            let resource = object.resource();
            let cached = self.kinds.lock().await.get(&resource.gvk).cloned();
            let caps = match cached {
                Some((_, caps)) => caps,
                None => {
                    let gvk = kube::api::GroupVersionKind::gvk(
                        &resource.gvk.group,
                        &resource.gvk.version,
                        &resource.gvk.kind,
                    );
                    match kube::discovery::pinned_kind(&self.client, &gvk).await {
                        Ok(found) => {
                            let caps = found.1.clone();
                            self.kinds.lock().await.insert(resource.gvk.clone(), found);
                            caps
                        }
                        Err(_) => continue,
                    }
                }
            };
            if caps.scope == Scope::Cluster {
                return Err(scope_mismatch(&resource, namespace));
            }
        }
        Ok(())
    }

    /// Refuses `bundle` when an object it applies lies outside the namespaces this
    /// agent is limited to: one in another namespace, or a cluster-scoped one.
    pub fn check_reach(&self, bundle: &Bundle) -> Result<()> {
        let Reach::Namespaces(allowed) = &self.options.reach else {
            return Ok(());
        };
        for object in &bundle.objects {
            if matches!(object.hook.as_ref().map(|h| h.phase), Some(HookPhase::Skip)) {
                continue;
            }
            let what = match &object.namespace {
                Some(namespace) if allowed.contains(namespace) => continue,
                Some(namespace) => format!("it is in namespace {namespace}"),
                None => "it is cluster-scoped".to_owned(),
            };
            return Err(Error::OutOfReach {
                resource: describe(&object.resource()),
                what,
                allowed: allowed.iter().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        Ok(())
    }

    /// A dynamic API handle for the object's kind and namespace.
    pub async fn api(&self, resource: &ResourceRef) -> Result<Api<DynamicObject>> {
        let (ar, caps) = self.kind(resource).await?;
        if let (Scope::Cluster, Some(namespace)) = (&caps.scope, &resource.namespace)
            && !resource.name.is_empty()
        {
            return Err(scope_mismatch(resource, namespace));
        }
        Ok(match (&caps.scope, &resource.namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(self.client.clone(), &ar),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &ar),
        })
    }

    /// Dynamic API handles that together cover the object's kind wherever this
    /// agent may act: every namespace at once, or one handle per namespace it is
    /// limited to (it may not list the others), each with the namespace it covers
    /// (`None`: all of them).
    pub async fn apis_in_reach(
        &self,
        resource: &ResourceRef,
    ) -> Result<Vec<(Option<String>, Api<DynamicObject>)>> {
        let (ar, caps) = self.kind(resource).await?;
        Ok(match (&self.options.reach, caps.scope) {
            (Reach::Namespaces(allowed), Scope::Namespaced) => allowed
                .iter()
                .map(|namespace| {
                    let api = Api::namespaced_with(self.client.clone(), namespace, &ar);
                    (Some(namespace.clone()), api)
                })
                .collect(),
            _ => vec![(None, Api::all_with(self.client.clone(), &ar))],
        })
    }
}
