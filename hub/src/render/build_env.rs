//! Argo CD's build environment in Helm sources: `$ARGOCD_APP_NAME`,
//! `$ARGOCD_APP_NAMESPACE`, `$ARGOCD_APP_REVISION`, `$ARGOCD_APP_REVISION_SHORT`,
//! `$ARGOCD_APP_SOURCE_PATH`, `$ARGOCD_APP_SOURCE_REPO_URL`,
//! `$ARGOCD_APP_SOURCE_TARGET_REVISION`, `$KUBE_VERSION` and `$KUBE_API_VERSIONS`
//! in `helm.parameters[].value`, `helm.valueFiles` and `helm.fileParameters[].path`,
//! where Argo CD expands them.
//!
//! Expansion is plain string replacement in Rust, as Go's `os.Expand` does it for
//! Argo CD (`$NAME` or `${NAME}`, `$$` for a literal `$`, an unknown name expands
//! to nothing): no shell ever sees the text, and the result then goes through the
//! same checks and escaping as any other value before it reaches helm.

use flotilla_common::model::ClusterFacts;

use crate::app::{Application, Source};

/// The variables of one render.
#[derive(Clone, Debug)]
pub struct BuildEnv {
    vars: Vec<(&'static str, String)>,
}

impl BuildEnv {
    /// The variables for rendering `source` of `app` at `revision` (a commit, or
    /// a chart version) for a cluster with `facts`.
    pub fn new(
        app: &Application,
        source: &Source,
        revision: &str,
        facts: Option<&ClusterFacts>,
    ) -> Self {
        let api_versions = facts
            .map(|f| {
                let mut versions: Vec<&str> = f
                    .api_resources
                    .iter()
                    .map(|r| r.group_version.as_str())
                    .collect();
                versions.sort_unstable();
                versions.dedup();
                versions.join(",")
            })
            .unwrap_or_default();
        let short: String = revision.chars().take(7).collect();
        Self {
            vars: vec![
                ("ARGOCD_APP_NAME", app.name().to_owned()),
                (
                    "ARGOCD_APP_NAMESPACE",
                    app.spec.destination.namespace.clone().unwrap_or_default(),
                ),
                ("ARGOCD_APP_REVISION", revision.to_owned()),
                ("ARGOCD_APP_REVISION_SHORT", short),
                (
                    "ARGOCD_APP_SOURCE_PATH",
                    source.path.clone().unwrap_or_default(),
                ),
                // A password in the URL would reach helm's argv and the rendered
                // objects: it is redacted, as in every message.
                (
                    "ARGOCD_APP_SOURCE_REPO_URL",
                    super::argument::redact_urls(&source.repo_url),
                ),
                (
                    "ARGOCD_APP_SOURCE_TARGET_REVISION",
                    source.target_revision.clone(),
                ),
                (
                    "KUBE_VERSION",
                    facts
                        .map(|f| f.kubernetes_version.clone())
                        .unwrap_or_default(),
                ),
                ("KUBE_API_VERSIONS", api_versions),
            ],
        }
    }

    fn get(&self, name: &str) -> &str {
        self.vars
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// `text` with every `$NAME` and `${NAME}` expanded, as Go's `os.Expand`.
    pub fn expand(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(braced) = after.strip_prefix('{') {
                match braced.find('}') {
                    Some(end) => {
                        out.push_str(self.get(&braced[..end]));
                        rest = &braced[end + 1..];
                    }
                    // An unclosed brace is kept as written.
                    None => {
                        out.push_str(&rest[at..]);
                        rest = "";
                    }
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                if end == 0 {
                    out.push('$');
                } else {
                    out.push_str(self.get(&after[..end]));
                }
                rest = &after[end..];
            }
        }
        out.push_str(rest);
        out
    }

    /// A copy of `source` (of `app`) with its Helm parameters, value files and
    /// file parameter paths expanded. A value file that starts with another
    /// source's `$ref/` is that source's, and left to it, as Argo CD leaves it.
    pub fn apply(&self, app: &Application, source: &Source) -> Source {
        let mut source = source.clone();
        let refs: Vec<String> = app
            .sources()
            .iter()
            .filter_map(|s| s.ref_.as_ref().map(|r| format!("${r}/")))
            .collect();
        if let Some(helm) = source.helm.as_mut() {
            for p in &mut helm.parameters {
                p.value = self.expand(&p.value);
            }
            for file in &mut helm.value_files {
                if !refs.iter().any(|r| file.starts_with(r.as_str())) {
                    *file = self.expand(file);
                }
            }
            for p in &mut helm.file_parameters {
                p.path = self.expand(&p.path);
            }
        }
        source
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn app() -> Application {
        Application::from_yaml(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: web}\nspec:\n  source:\n    repoURL: https://git.example/fleet.git\n    targetRevision: main\n    path: charts/web\n    helm:\n      valueFiles: [values-$ARGOCD_APP_NAME.yaml]\n      parameters:\n        - {name: image.tag, value: '$ARGOCD_APP_REVISION_SHORT'}\n        - {name: note, value: 'ns=${ARGOCD_APP_NAMESPACE} k8s=$KUBE_VERSION cost=$$5 $UNKNOWN.'}\n  destination: {name: east, namespace: shop}\n",
            "app.yaml",
        )
        .unwrap()
    }

    #[test]
    fn variables_expand_as_argo_cd_expands_them() {
        let facts = ClusterFacts {
            kubernetes_version: "v1.35.4".to_owned(),
            ..ClusterFacts::default()
        };
        let app = app();
        let env = BuildEnv::new(&app, app.source(), "0123456789abcdef", Some(&facts));
        let expanded = env.apply(&app, app.source());
        let helm = expanded.helm.as_ref().unwrap();
        assert_eq!(helm.value_files, ["values-web.yaml"]);
        assert_eq!(helm.parameters[0].value, "0123456");
        assert_eq!(helm.parameters[1].value, "ns=shop k8s=v1.35.4 cost=$5 .");
        assert_eq!(
            env.expand("${ARGOCD_APP_SOURCE_PATH}@${ARGOCD_APP_SOURCE_TARGET_REVISION"),
            "charts/web@${ARGOCD_APP_SOURCE_TARGET_REVISION"
        );
        assert_eq!(env.expand("a $ b"), "a $ b");
        let mut with_token = app.source().clone();
        with_token.repo_url = "https://ci:s3cret@git.example/fleet.git".to_owned();
        let env = BuildEnv::new(&app, &with_token, "0123456789abcdef", Some(&facts));
        assert_eq!(
            env.expand("$ARGOCD_APP_SOURCE_REPO_URL"),
            "https://ci:<redacted>@git.example/fleet.git"
        );
    }
}
