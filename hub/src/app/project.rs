//! Argo CD `AppProject`: which repos an app may use, where it may deploy, and which
//! kinds it may create.

use flotilla_common::project as bundle_rules;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Error, Metadata, Result, ServerOwned, typed};

pub use rules::{Violation, built_in_default};

mod rules;
pub mod windows;

/// An Argo CD `AppProject`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppProject {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ProjectSpec,
    #[serde(default, skip_serializing)]
    status: ServerOwned,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectSpec {
    #[serde(default)]
    pub description: Option<String>,
    /// Repo URL globs apps of this project may use (`*` allows any).
    #[serde(default)]
    pub source_repos: Vec<String>,
    #[serde(default)]
    pub destinations: Vec<ProjectDestination>,
    #[serde(default)]
    pub cluster_resource_whitelist: Vec<GroupKind>,
    #[serde(default)]
    pub cluster_resource_blacklist: Vec<GroupKind>,
    #[serde(default)]
    pub namespace_resource_whitelist: Vec<GroupKind>,
    #[serde(default)]
    pub namespace_resource_blacklist: Vec<GroupKind>,
    #[serde(default)]
    pub roles: Vec<ProjectRole>,
    #[serde(default)]
    pub sync_windows: Vec<SyncWindow>,
    #[serde(default)]
    pub orphaned_resources: Option<OrphanedResources>,
    #[serde(default)]
    pub source_namespaces: Vec<String>,
    #[serde(default)]
    pub permit_only_project_scoped_clusters: bool,
    #[serde(default, skip_serializing)]
    signature_keys: Option<Value>,
    #[serde(default, skip_serializing)]
    destination_service_accounts: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectDestination {
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupKind {
    #[serde(default)]
    pub group: String,
    pub kind: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectRole {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `p, proj:PROJECT:ROLE, RESOURCE, ACTION, OBJECT, EFFECT` lines.
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing)]
    jwt_tokens: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncWindow {
    /// `allow` or `deny`.
    pub kind: String,
    /// A cron expression for when the window opens.
    pub schedule: String,
    /// How long it stays open, e.g. `1h`.
    pub duration: String,
    #[serde(default)]
    pub applications: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub clusters: Vec<String>,
    #[serde(default)]
    pub manual_sync: bool,
    #[serde(default)]
    pub time_zone: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrphanedResources {
    #[serde(default)]
    pub warn: Option<bool>,
    #[serde(default)]
    pub ignore: Vec<Value>,
}

impl AppProject {
    /// Reads and validates one AppProject from a parsed document.
    pub fn from_value(doc: Value, origin: &str) -> Result<Self> {
        let project: Self = typed(doc, origin, "AppProject")?;
        project.validate(origin)?;
        Ok(project)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The rules a bundle carries for the agent to enforce again, checked against
    /// the app's `destination`.
    pub fn rules(&self, destination: &super::Destination) -> bundle_rules::ProjectRules {
        let dest = |d: &ProjectDestination| bundle_rules::Destination {
            server: d.server.clone(),
            name: d.name.clone(),
            namespace: d.namespace.clone(),
        };
        let kinds = |list: &[GroupKind]| {
            list.iter()
                .map(|gk| bundle_rules::GroupKind::new(&gk.group, &gk.kind))
                .collect()
        };
        let spec = &self.spec;
        bundle_rules::ProjectRules {
            name: self.metadata.name.clone(),
            destination: bundle_rules::Destination {
                server: destination.server.clone(),
                name: destination.name.clone(),
                namespace: destination.namespace.clone(),
            },
            source_repos: spec.source_repos.clone(),
            destinations: spec.destinations.iter().map(dest).collect(),
            cluster_resource_whitelist: kinds(&spec.cluster_resource_whitelist),
            cluster_resource_blacklist: kinds(&spec.cluster_resource_blacklist),
            namespace_resource_whitelist: kinds(&spec.namespace_resource_whitelist),
            namespace_resource_blacklist: kinds(&spec.namespace_resource_blacklist),
        }
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let error = |path: &str, why: &'static str| Error::Unsupported {
            origin: origin.to_owned(),
            kind: "AppProject",
            name: self.metadata.name.clone(),
            path: path.to_owned(),
            why,
        };
        // The name is part of RBAC subjects (`proj:NAME:ROLE`) and objects
        // (`NAME/APP`): a `*`, `:` or `/` in it would make one project's grants
        // reach another's.
        if !super::is_dns_subdomain(&self.metadata.name) {
            return Err(Error::Invalid {
                origin: origin.to_owned(),
                kind: "AppProject",
                name: self.metadata.name.clone(),
                path: "metadata.name".to_owned(),
                message: "must be a lowercase DNS name (a-z, 0-9, '-', '.'), at most 253 \
                          characters"
                    .to_owned(),
            });
        }
        if self.spec.signature_keys.is_some() {
            return Err(error(
                "spec.signatureKeys",
                "GPG commit verification is not implemented; Flotilla signs bundles itself",
            ));
        }
        if self.spec.destination_service_accounts.is_some() {
            return Err(error(
                "spec.destinationServiceAccounts",
                "the agent applies with its own service account",
            ));
        }
        if self.spec.orphaned_resources.is_some() {
            return Err(error(
                "spec.orphanedResources",
                "orphaned resource monitoring is not implemented; the agent watches only what \
                 its apps own",
            ));
        }
        if self.spec.permit_only_project_scoped_clusters {
            return Err(error(
                "spec.permitOnlyProjectScopedClusters",
                "project-scoped clusters are not implemented: every cluster is the admin's",
            ));
        }
        if self.spec.roles.iter().any(|r| r.jwt_tokens.is_some()) {
            return Err(error(
                "spec.roles[].jwtTokens",
                "project tokens are not implemented",
            ));
        }
        for (i, window) in self.spec.sync_windows.iter().enumerate() {
            if let Err((field, e)) = windows::check(window) {
                return Err(Error::Invalid {
                    origin: origin.to_owned(),
                    kind: "AppProject",
                    name: self.metadata.name.clone(),
                    path: format!("spec.syncWindows[{i}].{field}"),
                    message: e.to_string(),
                });
            }
        }
        Ok(())
    }
}
