//! What the agent tells the hub about its cluster when it registers: the
//! Kubernetes version, the API resources, the API server URL, and the kube-system
//! namespace UID that identifies the cluster.

use flotilla_common::model::{ApiResource, ClusterFacts};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::discovery::{Discovery, Scope};

/// Errors from reading cluster facts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server could not be asked.
    #[error("failed to read {what} from the API server")]
    Kube {
        /// What was being read.
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The kube-system namespace has no UID.
    #[error("the kube-system namespace has no uid")]
    NoUid,
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads the facts of the cluster `client` talks to; `api_server_url` is the URL
/// the client was configured with.
pub async fn read(client: kube::Client, api_server_url: String) -> Result<ClusterFacts> {
    let version = client
        .apiserver_version()
        .await
        .map_err(|source| Error::Kube {
            what: "the version",
            source,
        })?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let kube_system = namespaces
        .get("kube-system")
        .await
        .map_err(|source| Error::Kube {
            what: "the kube-system namespace",
            source,
        })?;
    let kube_system_uid = kube_system.metadata.uid.ok_or(Error::NoUid)?;
    let discovery = Discovery::new(client)
        .run()
        .await
        .map_err(|source| Error::Kube {
            what: "the API resources",
            source,
        })?;
    let mut api_resources = Vec::new();
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            api_resources.push(ApiResource {
                group_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
                plural: resource.plural.clone(),
                namespaced: capabilities.scope == Scope::Namespaced,
            });
        }
    }
    api_resources.sort();
    Ok(ClusterFacts {
        kubernetes_version: version.git_version,
        api_resources,
        api_server_url,
        kube_system_uid,
    })
}
