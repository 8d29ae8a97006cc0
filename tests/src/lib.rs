//! Shared helpers for Flotilla's end-to-end tests.
//!
//! Tests run against real local Kubernetes clusters that `tests/cluster up NAME`
//! starts (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok,
//! built from Go modules by `tests/build-k8s`). `tests/run` starts the fleet, names it
//! in `FLOTILLA_TEST_CLUSTERS`, runs the workspace's tests, and stops it again.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// The clusters `tests/run` starts when `FLOTILLA_TEST_CLUSTERS` is not set.
pub const DEFAULT_FLEET: &[&str] = &["east", "west"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "local cluster {name:?} is not running: {path} does not exist \
         (start the fleet with `tests/run`, or one cluster with `tests/cluster up {name}`)"
    )]
    NotRunning { name: String, path: PathBuf },

    #[error("reading the kubeconfig of cluster {name:?} at {path}")]
    Kubeconfig {
        name: String,
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },

    #[error("finding the tool folder that tests/build-k8s fills: {0}")]
    Tools(String),

    #[error("{name} is not in the tool folder {dir} (tests/build-k8s builds it)")]
    MissingTool { name: String, dir: PathBuf },

    #[error("building a client for cluster {name:?}")]
    Client {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("asking cluster {name:?} for a token of ServiceAccount {account}")]
    Token {
        name: String,
        account: String,
        #[source]
        source: kube::Error,
    },
}

/// One local cluster started by `tests/cluster up`.
#[derive(Clone, Debug)]
pub struct LocalCluster {
    name: String,
    dir: PathBuf,
}

impl LocalCluster {
    /// Finds the running cluster `name` under the clusters folder.
    pub fn named(name: &str) -> Result<Self, Error> {
        let cluster = Self {
            name: name.to_owned(),
            dir: clusters_dir().join(name),
        };
        let kubeconfig = cluster.kubeconfig_path();
        if !kubeconfig.is_file() {
            return Err(Error::NotRunning {
                name: cluster.name,
                path: kubeconfig,
            });
        }
        Ok(cluster)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder holding this cluster's certificates, logs and process ids.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A kube client with cluster-admin rights on this cluster.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let config = self.kube_config().await?;
        kube::Client::try_from(config).map_err(|source| Error::Client {
            name: self.name.clone(),
            source,
        })
    }

    /// A kube client on this cluster that acts as the ServiceAccount
    /// `namespace/name` (with a token good for ten minutes), with only the rights
    /// its RBAC gives: how an agent installed in the cluster runs.
    pub async fn client_as(&self, namespace: &str, name: &str) -> Result<kube::Client, Error> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        let accounts: kube::Api<ServiceAccount> =
            kube::Api::namespaced(self.client().await?, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &Default::default(), &request)
            .await
            .map_err(|source| Error::Token {
                name: self.name.clone(),
                account: format!("{namespace}/{name}"),
                source,
            })?
            .status
            .map(|status| status.token)
            .unwrap_or_default();
        let mut config = self.kube_config().await?;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.into()),
            ..Default::default()
        };
        kube::Client::try_from(config).map_err(|source| Error::Client {
            name: self.name.clone(),
            source,
        })
    }

    /// The apiserver's URL, as an agent reports it in its cluster facts.
    pub async fn server_url(&self) -> Result<String, Error> {
        Ok(self.kube_config().await?.cluster_url.to_string())
    }

    async fn kube_config(&self) -> Result<kube::Config, Error> {
        let path = self.kubeconfig_path();
        let kubeconfig = Kubeconfig::read_from(&path).map_err(|source| Error::Kubeconfig {
            name: self.name.clone(),
            path: path.clone(),
            source,
        })?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                name: self.name.clone(),
                path,
                source,
            })
    }
}

/// The fleet under test: the clusters named in `FLOTILLA_TEST_CLUSTERS`
/// (comma-separated), or [`DEFAULT_FLEET`].
pub fn fleet() -> Result<Vec<LocalCluster>, Error> {
    match std::env::var("FLOTILLA_TEST_CLUSTERS") {
        Ok(names) => names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(LocalCluster::named)
            .collect(),
        Err(_) => DEFAULT_FLEET
            .iter()
            .map(|n| LocalCluster::named(n))
            .collect(),
    }
}

/// Where `tests/cluster` keeps each cluster's state: `FLOTILLA_CLUSTERS_DIR`, or
/// `tests/.clusters` in this checkout.
pub fn clusters_dir() -> PathBuf {
    std::env::var_os("FLOTILLA_CLUSTERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".clusters"))
}

/// The folder of programs that `tests/build-k8s` builds (kubectl, helm, kustomize,
/// kwok and the control plane): `FLOTILLA_TOOLS`, which `tests/run` sets, or what
/// `tests/build-k8s` prints (at once when its cache is complete).
pub fn tools_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("FLOTILLA_TOOLS") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build-k8s");
    let out = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::Tools(format!("running {}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(Error::Tools(format!("{} failed", script.display())));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(PathBuf::from(dir))
}

/// A program from [`tools_dir`], never one that the machine happens to have on its
/// PATH: a test runs the versions the clusters run.
pub fn tool(name: &str) -> Result<PathBuf, Error> {
    let dir = tools_dir()?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingTool {
            name: name.to_owned(),
            dir,
        })
    }
}
