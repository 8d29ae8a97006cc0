//! `flotilla rollout list|get|pause|resume|promote|abort|retry`: the rollouts of
//! ApplicationSets with a RollingSync strategy, through `/api/v1/rollouts`.

use serde_json::Value;

use super::Connection;
use super::output::{Format, OutputArgs, Table, age, cell, print};

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// List the rollouts you may see.
    List(OutputArgs),
    /// Show one rollout: its revisions, steps and each app's state.
    Get {
        /// The rollout (its ApplicationSet's name).
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Start no more apps until resumed; apps already updating carry on.
    Pause { name: String },
    /// Lift a pause.
    Resume { name: String },
    /// Let the current step go past its maxUpdate (0 included) and soak time.
    Promote { name: String },
    /// Roll back every cluster the rollout moved, and stop it.
    Abort { name: String },
    /// Roll a rolled-back or aborted revision out again, from step one.
    Retry { name: String },
}

fn short(revision: &Value) -> String {
    revision
        .as_str()
        .map_or_else(|| "-".to_owned(), |r| r.chars().take(10).collect())
}

fn table(items: &[Value]) -> Table {
    let mut table = Table::new(&["NAME", "PHASE", "STEP", "FROM", "TO", "STARTED", "REASON"]);
    for r in items {
        let step = format!(
            "{}/{}",
            (r["step"].as_u64().unwrap_or(0) + 1).min(r["stepCount"].as_u64().unwrap_or(0)),
            cell(&r["stepCount"])
        );
        let mut phase = cell(&r["phase"]);
        if r["paused"] == true {
            phase.push_str(" (paused)");
        }
        table.row(vec![
            cell(&r["name"]),
            phase,
            step,
            short(&r["fromRevision"]),
            short(&r["toRevision"]),
            age(&r["startedMs"]),
            cell(&r["reason"]),
        ]);
    }
    table
}

fn apps_table(rollout: &Value) -> Table {
    let mut table = Table::new(&[
        "STEP", "APP", "CLUSTER", "STATE", "BEFORE", "RELEASED", "MESSAGE",
    ]);
    for app in rollout["apps"].as_array().into_iter().flatten() {
        for cluster in app["clusters"].as_array().into_iter().flatten() {
            table.row(vec![
                (app["step"].as_u64().unwrap_or(0) + 1).to_string(),
                format!("{}/{}", cell(&app["project"]), cell(&app["name"])),
                cell(&cluster["cluster"]),
                cell(&app["phase"]),
                cell(&cluster["before"]),
                cell(&cluster["released"]),
                cell(&app["message"]),
            ]);
        }
    }
    table
}

pub async fn run(command: RolloutCommand, connection: &Connection) -> anyhow::Result<()> {
    let client = connection.client()?;
    let (name, action) = match command {
        RolloutCommand::List(output) => {
            let list = client.get("/api/v1/rollouts").await?;
            return print(output.output, &list, |_| {
                table(list["items"].as_array().map_or(&[][..], Vec::as_slice))
            });
        }
        RolloutCommand::Get { name, output } => {
            let rollout = client.get(&format!("/api/v1/rollouts/{name}")).await?;
            if matches!(output.output, Format::Table | Format::Wide) {
                print!("{}", table(std::slice::from_ref(&rollout)).render());
                println!();
                print!("{}", apps_table(&rollout).render());
                return Ok(());
            }
            return print(output.output, &rollout, |_| {
                table(std::slice::from_ref(&rollout))
            });
        }
        RolloutCommand::Pause { name } => (name, "pause"),
        RolloutCommand::Resume { name } => (name, "resume"),
        RolloutCommand::Promote { name } => (name, "promote"),
        RolloutCommand::Abort { name } => (name, "abort"),
        RolloutCommand::Retry { name } => (name, "retry"),
    };
    let rollout = client
        .post(
            &format!("/api/v1/rollouts/{name}/{action}"),
            "{}".to_owned(),
        )
        .await?;
    println!(
        "rollout {name}: {action} done; it is {}{}",
        cell(&rollout["phase"]),
        if rollout["paused"] == true {
            " (paused)"
        } else {
            ""
        }
    );
    Ok(())
}
