//! `flotilla completion SHELL`: a shell completion script for the whole CLI.

#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

/// Prints the script for `command`, the CLI's definition, which `main` owns.
pub fn run(args: CompletionArgs, mut command: clap::Command) -> anyhow::Result<()> {
    clap_complete::generate(args.shell, &mut command, "flotilla", &mut std::io::stdout());
    Ok(())
}
