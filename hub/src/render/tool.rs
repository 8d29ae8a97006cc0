//! Running kustomize and helm: found once, run in a given folder with a deadline,
//! killed when it passes, and their stderr kept for the user.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{Error, Result};

/// Where the render tools are, and how long one run may take.
#[derive(Clone, Debug)]
pub struct Tools {
    pub kustomize: PathBuf,
    pub helm: PathBuf,
    pub timeout: Duration,
}

/// Argo CD's default for one tool run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

impl Tools {
    /// `FLOTILLA_KUSTOMIZE` and `FLOTILLA_HELM`, else `kustomize` and `helm` on `PATH`.
    /// A missing tool is reported when an app needs it, not here.
    pub fn from_env() -> Self {
        let find = |var: &str, name: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .or_else(|| which(name))
                .unwrap_or_else(|| PathBuf::from(name))
        };
        Self {
            kustomize: find("FLOTILLA_KUSTOMIZE", "kustomize"),
            helm: find("FLOTILLA_HELM", "helm"),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The tools' versions, part of every render cache key.
    pub async fn versions(&self) -> String {
        let kustomize = self.quiet(&self.kustomize, &["version"]).await;
        let helm = self.quiet(&self.helm, &["version", "--short"]).await;
        format!("kustomize {kustomize}; helm {helm}")
    }

    async fn quiet(&self, tool: &Path, args: &[&str]) -> String {
        match run(
            tool,
            args.iter().map(OsString::from).collect(),
            Path::new("/"),
            &[("HOME", std::env::temp_dir().as_path())],
            self.timeout,
        )
        .await
        {
            Ok(out) => String::from_utf8_lossy(&out).trim().to_owned(),
            Err(_) => "missing".to_owned(),
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `tool args` in `dir` with only `env` added to a cleared environment (plus
/// PATH), and returns stdout. HOME is whatever `env` says, never the hub's own: the
/// tools must not read the hub's configuration or credentials. Fails with the tool's stderr, or on timeout,
/// after killing it.
pub async fn run(
    tool: &Path,
    args: Vec<OsString>,
    dir: &Path,
    env: &[(&str, &Path)],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let name = tool
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| tool.display().to_string());
    let mut command = Command::new(tool);
    command
        .args(&args)
        .current_dir(dir)
        .env_clear()
        .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|source| Error::ToolMissing {
        tool: name.clone(),
        path: tool.to_owned(),
        source,
    })?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(result) => result.map_err(|source| Error::Io {
            what: format!("waiting for {name}"),
            path: dir.to_owned(),
            source,
        })?,
        // Dropping the future drops the child, which kill_on_drop kills.
        Err(_) => {
            return Err(Error::ToolTimeout {
                tool: name,
                timeout,
            });
        }
    };
    if !output.status.success() {
        return Err(Error::ToolFailed {
            tool: name,
            // Argv and stderr can hold a repository URL with credentials in it.
            args: super::argument::redact_urls(
                &args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            status: output.status.to_string(),
            stderr: super::argument::redact_urls(String::from_utf8_lossy(&output.stderr).trim()),
        });
    }
    Ok(output.stdout)
}
