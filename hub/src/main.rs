//! `flotilla`: the hub server and its command-line interface.

use clap::Parser;

/// Multi-cluster GitOps: one hub, an agent in every cluster.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version = flotilla_common::VERSION)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("the hub has no commands yet; see the open issues")
}
