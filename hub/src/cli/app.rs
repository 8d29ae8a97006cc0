//! `flotilla app list|get|sync|confirm|history|rollback|diff|wait|create|delete`: the app
//! operations of the CLI, as `argocd app …` offers them, through the hub's API.
//!
//! Exit codes, as argocd's: 0 when all went well, 1 when the operation failed (a
//! failed sync, a wait that ran out of time), 20 when `diff` found differences.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use flotilla_hub::client::Client;
use serde_json::{Value, json};

use super::output::{Format, OutputArgs, Table, cell, print};
use super::{Connection, EXIT_DIFF, EXIT_FAILED, Exit, UsageError};

fn failed(message: impl Into<String>) -> anyhow::Error {
    Exit {
        code: EXIT_FAILED,
        message: message.into(),
    }
    .into()
}

#[derive(Debug, clap::Subcommand)]
pub enum AppCommand {
    /// List the applications you may see, with their sync status and health.
    List(OutputArgs),
    /// Show one application (PROJECT/NAME, or NAME in the default project): its
    /// state, conditions and, per cluster, its resource tree with health.
    Get {
        app: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Sync an application now and wait for the result (exit 1 when it failed).
    Sync(SyncArgs),
    /// Confirm the pruning of objects marked `Prune=confirm`, as Argo CD's
    /// "Confirm Pruning" does: syncs now with the confirmation (the app's own
    /// prune policy still decides whether anything is pruned; add --prune to
    /// `app sync --confirm` for a manual app).
    Confirm { app: String },
    /// List an application's past syncs.
    History {
        app: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Re-send the bundle of a history entry and sync it; switches automated sync
    /// off, as Argo CD does.
    Rollback { app: String, id: u64 },
    /// Show desired against live state per cluster as a unified diff (exit 20 when
    /// they differ).
    Diff { app: String },
    /// Poll the application's repository now and have every agent compare again,
    /// as `argocd app get --refresh` does.
    Refresh { app: String },
    /// Wait until an application is Synced and/or Healthy (exit 1 on timeout).
    Wait(WaitArgs),
    /// Create applications from an Argo CD Application manifest (-f), or one from
    /// flags as `argocd app create` takes them.
    Create(CreateArgs),
    /// Delete an application (PROJECT/NAME, or NAME in the default project) and,
    /// unless --cascade=false, what it deployed.
    Delete(DeleteArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("from_flags").multiple(true).args(["repo", "path", "revision", "dest_server", "dest_name", "dest_namespace", "project", "sync_policy", "auto_prune", "self_heal", "sync_options"])))]
pub struct CreateArgs {
    /// The app's name, when it is given by flags rather than a manifest.
    #[arg(conflicts_with = "file", required_unless_present = "file")]
    name: Option<String>,
    /// An Argo CD Application manifest (one or more documents).
    #[arg(short = 'f', long = "file", conflicts_with = "from_flags")]
    pub file: Option<std::path::PathBuf>,
    /// The Git repository URL.
    #[arg(long, requires = "name")]
    repo: Option<String>,
    /// The folder of the app in the repository.
    #[arg(long, default_value = ".")]
    path: String,
    /// The branch, tag or commit to follow.
    #[arg(long, default_value = "HEAD")]
    revision: String,
    /// The destination cluster, by API server URL.
    #[arg(long, conflicts_with = "dest_name")]
    dest_server: Option<String>,
    /// The destination cluster, by name.
    #[arg(long)]
    dest_name: Option<String>,
    /// The destination namespace.
    #[arg(long)]
    dest_namespace: Option<String>,
    /// The AppProject.
    #[arg(long = "project", default_value = "default")]
    project: String,
    /// `automated` (or `auto`) for automated sync; `none` for manual sync.
    #[arg(long, value_parser = ["none", "automated", "automatic", "auto"])]
    sync_policy: Option<String>,
    /// Under automated sync, delete what leaves Git.
    #[arg(long)]
    auto_prune: bool,
    /// Under automated sync, revert changes made in the cluster.
    #[arg(long)]
    self_heal: bool,
    /// A sync option such as CreateNamespace=true; repeatable.
    #[arg(long = "sync-option")]
    sync_options: Vec<String>,
}

impl CreateArgs {
    /// The Application the flags describe, as `argocd app create` would make it.
    pub fn manifest(&self) -> Result<String, UsageError> {
        let name = self
            .name
            .as_deref()
            .ok_or_else(|| UsageError("give NAME and flags, or -f FILE".to_owned()))?;
        let repo = self
            .repo
            .as_deref()
            .ok_or_else(|| UsageError("--repo is required without -f".to_owned()))?;
        let mut destination = serde_json::Map::new();
        match (&self.dest_server, &self.dest_name) {
            (Some(server), None) => destination.insert("server".to_owned(), json!(server)),
            (None, Some(cluster)) => destination.insert("name".to_owned(), json!(cluster)),
            _ => {
                return Err(UsageError(
                    "one of --dest-server or --dest-name is required".to_owned(),
                ));
            }
        };
        if let Some(namespace) = &self.dest_namespace {
            destination.insert("namespace".to_owned(), json!(namespace));
        }
        let automated = matches!(
            self.sync_policy.as_deref(),
            Some("automated" | "automatic" | "auto")
        );
        if !automated && (self.auto_prune || self.self_heal) {
            return Err(UsageError(
                "--auto-prune and --self-heal need --sync-policy automated".to_owned(),
            ));
        }
        let mut sync_policy = serde_json::Map::new();
        if automated {
            sync_policy.insert(
                "automated".to_owned(),
                json!({ "prune": self.auto_prune, "selfHeal": self.self_heal }),
            );
        }
        if !self.sync_options.is_empty() {
            sync_policy.insert("syncOptions".to_owned(), json!(self.sync_options));
        }
        let application = json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Application",
            "metadata": { "name": name },
            "spec": {
                "project": self.project,
                "source": { "repoURL": repo, "path": self.path, "targetRevision": self.revision },
                "destination": destination,
                "syncPolicy": sync_policy,
            },
        });
        // JSON is YAML; the hub reads either.
        Ok(application.to_string())
    }
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The app: PROJECT/NAME, or NAME in the default project.
    pub app: String,
    /// Delete what the app deployed too (the default, as in argocd); with
    /// `--cascade=false` the objects stay in the clusters, unmanaged.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub cascade: bool,
    /// Confirm the deletion of objects marked `Delete=confirm`; without it a
    /// cascading delete of such an app is refused and names them.
    #[arg(long)]
    pub confirm: bool,
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The app: PROJECT/NAME, or NAME in the default project.
    app: String,
    /// Delete what left the bundle, even when the app's policy does not prune.
    #[arg(long)]
    prune: bool,
    /// Show what would change and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Render and sync this branch, tag or commit instead of the targetRevision
    /// (refused under automated sync).
    #[arg(long)]
    revision: Option<String>,
    /// Only this resource, GROUP:KIND:NAME or GROUP:KIND:NAMESPACE/NAME (an empty
    /// group for the core group: `:ConfigMap:settings`); repeatable.
    #[arg(long = "resource")]
    resources: Vec<String>,
    /// Confirm pruning: objects marked `Prune=confirm` are pruned too.
    #[arg(long)]
    confirm: bool,
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The app: PROJECT/NAME, or NAME in the default project.
    app: String,
    /// Wait until it is Synced.
    #[arg(long)]
    sync: bool,
    /// Wait until it is Healthy.
    #[arg(long)]
    health: bool,
    /// Give up after this many seconds (0: never) and exit 1.
    #[arg(long, default_value_t = 0)]
    timeout: u64,
}

/// `PROJECT/NAME`, or `NAME` in the default project, as an API path.
pub fn app_path(app: &str) -> String {
    match app.split_once('/') {
        Some((project, name)) => format!("/api/v1/applications/{project}/{name}"),
        None => format!("/api/v1/applications/default/{app}"),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Prints rows as columns two spaces apart, the first row being the header.
fn table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// An app's source as `PATH@REVISION` (or `CHART@VERSION`).
fn source_at_revision(app: &Value) -> String {
    format!(
        "{}@{}",
        app["source"]["path"]
            .as_str()
            .or(app["source"]["chart"].as_str())
            .unwrap_or(""),
        app["source"]["targetRevision"].as_str().unwrap_or("")
    )
}

fn short(revision: &str) -> &str {
    revision.get(..8).unwrap_or(revision)
}

fn resource_name(r: &Value) -> String {
    match r["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", text(&r["name"])),
        None => text(&r["name"]),
    }
}

/// `app list`: NAME, PROJECT, SYNC, HEALTH, CLUSTERS, SOURCE.
pub async fn list(client: &Client) -> anyhow::Result<()> {
    let list = client.get("/api/v1/applications").await?;
    let mut rows = vec![vec![
        "NAME".to_owned(),
        "PROJECT".to_owned(),
        "SYNC".to_owned(),
        "HEALTH".to_owned(),
        "CLUSTERS".to_owned(),
        "SOURCE".to_owned(),
        "CONDITIONS".to_owned(),
    ]];
    for app in list["items"].as_array().into_iter().flatten() {
        let status = &app["status"];
        let clusters: Vec<String> = status["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| text(&c["cluster"]))
            .collect();
        let conditions: Vec<String> = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| text(&c["type"]))
            .collect();
        rows.push(vec![
            text(&app["name"]),
            text(&app["project"]),
            text(&status["sync"]),
            text(&status["health"]),
            if clusters.is_empty() {
                "-".to_owned()
            } else {
                clusters.join(",")
            },
            source_at_revision(app),
            if conditions.is_empty() {
                "-".to_owned()
            } else {
                conditions.join(",")
            },
        ]);
    }
    table(&rows);
    Ok(())
}

fn describe_operation(op: &Value) -> String {
    if op.is_null() {
        return "-".to_owned();
    }
    let mut s = format!(
        "{} (sync of generation {} on {}, by {})",
        text(&op["phase"]),
        text(&op["generation"]),
        text(&op["cluster"]),
        text(&op["initiatedBy"])
    );
    if let Some(message) = op["message"].as_str().filter(|m| !m.is_empty()) {
        s.push_str(": ");
        s.push_str(message);
    }
    s
}

/// A commit shortened; a chart's `version (sha256:…)` with its digest shortened.
fn short_revision(revision: &str) -> String {
    match revision.split_once(" (sha256:") {
        Some((version, digest)) => {
            format!("{version} (sha256:{})", &digest[..digest.len().min(12)])
        }
        None if revision.len() == 40 => short(revision).to_owned(),
        None => revision.to_owned(),
    }
}

/// `app get`: the app's state and, per cluster, its resource tree.
pub async fn get(client: &Client, app: &str) -> anyhow::Result<()> {
    let summary = client.get(&app_path(app)).await?;
    let status = &summary["status"];
    let source = &summary["source"];
    println!(
        "Name:        {}/{}",
        text(&summary["project"]),
        text(&summary["name"])
    );
    let sources = summary["sources"].as_array().cloned().unwrap_or_default();
    let describe = |source: &Value| {
        let what = source["path"]
            .as_str()
            .or(source["chart"].as_str())
            .map(str::to_owned)
            .or_else(|| source["ref"].as_str().map(|r| format!("(ref {r})")))
            .unwrap_or_default();
        let resolved = source["revision"]
            .as_str()
            .map(|r| format!(" -> {}", short_revision(r)))
            .unwrap_or_default();
        format!(
            "{} {what}@{}{resolved}",
            text(&source["repoURL"]),
            text(&source["targetRevision"])
        )
    };
    if sources.len() > 1 {
        println!("Sources:");
        for (i, s) in sources.iter().enumerate() {
            println!("  [{i}] {}", describe(s));
        }
    } else {
        println!(
            "Source:      {}",
            describe(sources.first().unwrap_or(source))
        );
    }
    println!(
        "Sync policy: {}",
        if summary["automated"].as_bool() == Some(true) {
            "Automated"
        } else {
            "Manual"
        }
    );
    for info in summary["info"].as_array().into_iter().flatten() {
        println!(
            "{:<12} {}",
            format!("{}:", text(&info["name"])),
            text(&info["value"])
        );
    }
    for cluster in summary["clusters"].as_array().into_iter().flatten() {
        let verdict = &cluster["syncWindows"];
        if verdict.is_null() {
            continue;
        }
        let open: Vec<String> = verdict["windows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["active"].as_bool() == Some(true))
            .map(|w| {
                format!(
                    "{} {:?} for {} until {}",
                    text(&w["kind"]),
                    text(&w["schedule"]),
                    text(&w["duration"]),
                    text(&w["closesAt"])
                )
            })
            .collect();
        println!(
            "Sync window: [{}] {}{}",
            text(&cluster["cluster"]),
            match (verdict["automated"].as_bool(), verdict["manual"].as_bool()) {
                (Some(true), _) => "syncs allowed".to_owned(),
                (_, Some(true)) => "automated syncs blocked, manual syncs allowed".to_owned(),
                _ => "syncs blocked".to_owned(),
            },
            if open.is_empty() {
                verdict["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            } else {
                format!(" (active: {})", open.join("; "))
            }
        );
    }
    println!("Sync:        {}", text(&status["sync"]));
    println!("Health:      {}", text(&status["health"]));
    println!("Operation:   {}", describe_operation(&status["operation"]));
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    if !conditions.is_empty() {
        println!("Conditions:");
        for c in &conditions {
            let on = c["cluster"]
                .as_str()
                .map(|c| format!(" [{c}]"))
                .unwrap_or_default();
            println!("  {}{on}: {}", text(&c["type"]), text(&c["message"]));
        }
    }
    for cluster in status["clusters"].as_array().into_iter().flatten() {
        println!();
        println!(
            "Cluster {} ({}; generation {}, revision {}; {} {})",
            text(&cluster["cluster"]),
            if cluster["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "disconnected"
            },
            text(&cluster["generation"]),
            cluster["revision"]
                .as_str()
                .map_or_else(|| "-".to_owned(), short_revision),
            text(&cluster["sync"]),
            text(&cluster["health"]),
        );
        let mut rows = vec![vec![
            "GROUP".to_owned(),
            "KIND".to_owned(),
            "NAMESPACE".to_owned(),
            "NAME".to_owned(),
            "SYNC".to_owned(),
            "HEALTH".to_owned(),
            "MESSAGE".to_owned(),
        ]];
        for r in cluster["resources"].as_array().into_iter().flatten() {
            rows.push(vec![
                r["group"].as_str().unwrap_or("").to_owned(),
                text(&r["kind"]),
                r["namespace"].as_str().unwrap_or("").to_owned(),
                text(&r["name"]),
                text(&r["sync"]),
                text(&r["health"]),
                r["message"].as_str().unwrap_or("").to_owned(),
            ]);
        }
        table(&rows);
    }
    Ok(())
}

fn print_resources(resources: &[Value]) {
    if resources.is_empty() {
        return;
    }
    let mut rows = vec![vec![
        "GROUP".to_owned(),
        "KIND".to_owned(),
        "NAME".to_owned(),
        "RESULT".to_owned(),
        "MESSAGE".to_owned(),
    ]];
    for r in resources {
        rows.push(vec![
            r["group"].as_str().unwrap_or("").to_owned(),
            text(&r["kind"]),
            resource_name(r),
            text(&r["action"]),
            r["message"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table(&rows);
}

/// Prints each cluster's outcome; fails (exit 1) when one failed.
fn report_operation(what: &str, reply: &Value) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for cluster in reply["clusters"].as_array().into_iter().flatten() {
        let name = text(&cluster["cluster"]);
        let phase = text(&cluster["phase"]);
        let message = cluster["message"].as_str().unwrap_or("");
        println!(
            "Cluster {name}: {phase}{}{}",
            if cluster["dryRun"].as_bool() == Some(true) {
                " (dry run)"
            } else {
                ""
            },
            if message.is_empty() {
                String::new()
            } else {
                format!(" - {message}")
            }
        );
        print_resources(cluster["resources"].as_array().map_or(&[], Vec::as_slice));
        if phase != "Succeeded" {
            failures.push(format!("{name}: {message}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failed(format!("{what} failed on {}", failures.join("; "))))
    }
}

/// `app sync`: waits for the operation's result; exit 1 when it failed.
pub async fn sync(client: &Client, args: SyncArgs) -> anyhow::Result<()> {
    let body = json!({
        "prune": args.prune,
        "dryRun": args.dry_run,
        "revision": args.revision,
        "resources": args.resources,
        "confirm": args.confirm,
    });
    let reply = client
        .post(&format!("{}/sync", app_path(&args.app)), body.to_string())
        .await?;
    report_operation(&format!("sync of {}", text(&reply["app"])), &reply)?;
    println!("Phase: {}", text(&reply["phase"]));
    Ok(())
}

fn format_ms(ms: &Value) -> String {
    let Some(at) = ms
        .as_u64()
        .and_then(|ms| i64::try_from(ms / 1000).ok())
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
    else {
        return "-".to_owned();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// `app history`: ID, CLUSTER, STARTED, FINISHED, REVISION, GENERATION, RESULT,
/// INITIATED BY.
pub async fn history(client: &Client, app: &str) -> anyhow::Result<()> {
    let reply = client.get(&format!("{}/history", app_path(app))).await?;
    let mut rows = vec![vec![
        "ID".to_owned(),
        "CLUSTER".to_owned(),
        "STARTED".to_owned(),
        "FINISHED".to_owned(),
        "REVISION".to_owned(),
        "GENERATION".to_owned(),
        "RESULT".to_owned(),
        "INITIATED BY".to_owned(),
    ]];
    for h in reply["items"].as_array().into_iter().flatten() {
        rows.push(vec![
            text(&h["id"]),
            text(&h["cluster"]),
            format_ms(&h["started_at_ms"]),
            format_ms(&h["finished_at_ms"]),
            short(h["revision"].as_str().unwrap_or("-")).to_owned(),
            text(&h["generation"]),
            text(&h["result"]),
            text(&h["initiated_by"]),
        ]);
    }
    table(&rows);
    Ok(())
}

/// `app rollback`: re-sends a history entry's bundle and syncs it.
pub async fn rollback(client: &Client, app: &str, id: u64) -> anyhow::Result<()> {
    let reply = client
        .post(
            &format!("{}/rollback", app_path(app)),
            json!({ "id": id }).to_string(),
        )
        .await?;
    println!("{}", text(&reply["message"]));
    report_operation(&format!("rollback of {}", text(&reply["app"])), &reply)
}

/// `app refresh`: the repository polled now, and each cluster's answer.
pub async fn refresh(client: &Client, app: &str) -> anyhow::Result<()> {
    let reply = client
        .post(&format!("{}/refresh", app_path(app)), String::new())
        .await?;
    let mut failed = Vec::new();
    for cluster in reply["clusters"].as_array().into_iter().flatten() {
        let name = text(&cluster["cluster"]);
        match cluster["error"].as_str() {
            Some(e) => failed.push(format!("{name}: {e}")),
            None => println!("{name}: {}", text(&cluster["message"])),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("refresh of {}: {}", text(&reply["app"]), failed.join("; "));
    }
    Ok(())
}

/// `app diff`: desired against live per cluster; exit 20 when they differ.
pub async fn diff(client: &Client, app: &str) -> anyhow::Result<()> {
    let reply = client.get(&format!("{}/diff", app_path(app))).await?;
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut found = false;
    let mut errors = Vec::new();
    let mut out = std::io::stdout().lock();
    for cluster in reply["clusters"].as_array().into_iter().flatten() {
        let name = text(&cluster["cluster"]);
        if let Some(e) = cluster["error"].as_str() {
            errors.push(format!("{name}: {e}"));
            continue;
        }
        for d in cluster["diffs"].as_array().into_iter().flatten() {
            found = true;
            let group = d["group"].as_str().unwrap_or("");
            let kind = text(&d["kind"]);
            let id = resource_name(d);
            let _ = writeln!(out, "===== {name}: {group}/{kind} {id} ======");
            let live = d["live"].as_str().unwrap_or("");
            let desired = d["desired"].as_str().unwrap_or("");
            let _ = write!(
                out,
                "{}",
                flotilla_hub::diff::unified(
                    live,
                    desired,
                    &format!("live/{name}/{kind}/{id}"),
                    &format!("desired/{name}/{kind}/{id}"),
                    colour,
                )
            );
        }
    }
    drop(out);
    if !errors.is_empty() {
        return Err(failed(format!("diff failed on {}", errors.join("; "))));
    }
    if found {
        return Err(Exit {
            code: EXIT_DIFF,
            message: String::new(),
        }
        .into());
    }
    Ok(())
}

/// `app wait`: polls until the app is Synced and/or Healthy with no operation
/// running; exit 1 on timeout.
pub async fn wait(client: &Client, args: WaitArgs) -> anyhow::Result<()> {
    let (want_sync, want_health) = match (args.sync, args.health) {
        (false, false) => (true, true),
        flags => flags,
    };
    let start = Instant::now();
    let limit = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    loop {
        let summary = client.get(&app_path(&args.app)).await?;
        let status = &summary["status"];
        let sync = text(&status["sync"]);
        let health = text(&status["health"]);
        let running = status["operation"]["phase"].as_str() == Some("Running");
        let done = (!want_sync || sync == "Synced") && (!want_health || health == "Healthy");
        let line = format!(
            "{}: sync {sync}, health {health}{}",
            args.app,
            if running { ", operation Running" } else { "" }
        );
        if terminal {
            eprint!("\r\x1b[2K{line} ({}s)", start.elapsed().as_secs());
        } else if line != last_line {
            eprintln!("{line}");
        }
        last_line = line;
        if done && !running {
            if terminal {
                eprintln!();
            }
            println!("{} is {sync} and {health}", args.app);
            return Ok(());
        }
        if let Some(limit) = limit
            && start.elapsed() >= limit
        {
            if terminal {
                eprintln!();
            }
            return Err(failed(format!(
                "timed out after {}s waiting for {} (now: {last_line})",
                limit.as_secs(),
                args.app
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Applications as a table: name, project, source and render state; wide adds
/// the destination and the clusters with their bundle generation.
fn app_table(list: &serde_json::Value, wide: bool) -> Table {
    let mut header = vec!["NAME", "PROJECT", "SYNC", "HEALTH", "SOURCE", "STATUS"];
    if wide {
        header.extend(["DESTINATION", "CLUSTERS"]);
    }
    let mut table = Table::new(&header);
    for app in list["items"].as_array().into_iter().flatten() {
        let source = source_at_revision(app);
        let status = match app["renderError"].as_str() {
            Some(_) => "RenderError".to_owned(),
            None => app["renderedCommit"]
                .as_str()
                .map_or("Pending".to_owned(), |c| {
                    format!("Rendered {}", c.get(..8).unwrap_or(c))
                }),
        };
        let mut row = vec![
            cell(&app["name"]),
            cell(&app["project"]),
            cell(&app["status"]["sync"]),
            cell(&app["status"]["health"]),
            source,
            status,
        ];
        if wide {
            let destination = &app["destination"];
            let clusters: Vec<String> = app["clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| format!("{}@{}", cell(&c["cluster"]), cell(&c["generation"])))
                .collect();
            row.extend([
                format!(
                    "{}/{}",
                    destination["name"]
                        .as_str()
                        .or(destination["server"].as_str())
                        .unwrap_or("-"),
                    destination["namespace"].as_str().unwrap_or("-")
                ),
                if clusters.is_empty() {
                    "-".to_owned()
                } else {
                    clusters.join(",")
                },
            ]);
        }
        table.row(row);
    }
    table
}

pub async fn run(command: AppCommand, connection: &Connection) -> anyhow::Result<()> {
    let client = connection.client()?;
    match command {
        AppCommand::List(output) => match output.output {
            Format::Table => list(&client).await?,
            format => {
                let list = client.get("/api/v1/applications").await?;
                print(format, &list, |wide| app_table(&list, wide))?;
            }
        },
        AppCommand::Get { app, output } => match output.output {
            Format::Table => get(&client, &app).await?,
            format => {
                let app = client.get(&app_path(&app)).await?;
                let list = serde_json::json!({ "items": [app.clone()] });
                print(format, &app, |_| app_table(&list, true))?;
            }
        },
        AppCommand::Sync(args) => sync(&client, args).await?,
        AppCommand::Confirm { app } => {
            sync(
                &client,
                SyncArgs {
                    app,
                    prune: false,
                    dry_run: false,
                    revision: None,
                    resources: Vec::new(),
                    confirm: true,
                },
            )
            .await?;
        }
        AppCommand::History { app, output } => match output.output {
            Format::Table | Format::Wide => history(&client, &app).await?,
            format => {
                let history = client.get(&format!("{}/history", app_path(&app))).await?;
                print(format, &history, |_| Table::new(&[]))?;
            }
        },
        AppCommand::Rollback { app, id } => rollback(&client, &app, id).await?,
        AppCommand::Diff { app } => diff(&client, &app).await?,
        AppCommand::Refresh { app } => refresh(&client, &app).await?,
        AppCommand::Wait(args) => wait(&client, args).await?,
        AppCommand::Create(args) => {
            let text = match &args.file {
                Some(file) => std::fs::read_to_string(file)
                    .map_err(|e| UsageError(format!("reading {}: {e}", file.display())))?,
                None => args.manifest()?,
            };
            let created = client.post("/api/v1/applications", text).await?;
            println!(
                "application {}/{} created",
                created["project"].as_str().unwrap_or(""),
                created["name"].as_str().unwrap_or("")
            );
        }
        AppCommand::Delete(args) => {
            client
                .delete(&format!(
                    "{}?cascade={}&confirm={}",
                    app_path(&args.app),
                    args.cascade,
                    args.confirm
                ))
                .await?;
            if args.cascade {
                println!(
                    "application {} deleted; its clusters delete what it deployed",
                    args.app
                );
            } else {
                println!(
                    "application {} deleted; its objects stay in the clusters",
                    args.app
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(format_ms(&json!(0)), "1970-01-01 00:00:00Z");
        assert_eq!(
            format_ms(&json!(1_795_788_000_000u64)),
            "2026-11-27 14:00:00Z"
        );
        assert_eq!(format_ms(&Value::Null), "-");
    }
}
