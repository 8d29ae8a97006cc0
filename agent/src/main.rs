//! `flotilla-agent`: runs in one cluster, dials the hub, applies what it is sent.

use clap::Parser;

/// The Flotilla agent for one cluster.
#[derive(Debug, Parser)]
#[command(name = "flotilla-agent", version = flotilla_common::VERSION)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("the agent cannot connect yet; see the open issues")
}
