//! The one log setup of the `flotilla` and `flotilla-agent` binaries.

/// Logs to stderr at `RUST_LOG`'s levels (info by default), with colour codes
/// only on a terminal: a log file or a pod's log gets plain text.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
