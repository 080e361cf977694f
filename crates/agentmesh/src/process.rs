//! Process plumbing every long-running command shares: logging, errors on one line, and
//! stopping on a signal or when `agentmesh up` goes away.

use std::io::IsTerminal;

use anyhow::Context;
use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// The environment variable holding the log filter (`RUST_LOG` syntax).
pub const LOG_ENV: &str = "AGENTMESH_LOG";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sends tracing output to stderr, filtered by `$AGENTMESH_LOG` (default `info`).
///
/// # Errors
/// A filter that does not parse, or a second call.
pub fn init_logging(format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var(LOG_ENV) {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec)
            .map_err(|e| anyhow::anyhow!("invalid ${LOG_ENV} {spec:?}: {e}"))?,
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    res.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// Folds a possibly multi-line message into one line, so every error is exactly one line.
pub fn one_line(msg: &str) -> String {
    msg.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Set by `agentmesh up` on its children: stop when stdin reaches end-of-file. `up` holds
/// the write end of every child's stdin, so the children stop with it however it ends, even
/// on `kill -9`, and closing the pipe is how it asks one child to stop cleanly.
pub const STOP_WITH_STDIN_ENV: &str = "AGENTMESH_STOP_WITH_STDIN";

/// SIGINT and SIGTERM (and stdin's end under `agentmesh up`), installed before starting so an
/// early signal is not lost.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    stdin_closed: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Signals {
    /// Installs the handlers.
    ///
    /// # Errors
    /// The handlers cannot be installed.
    pub fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let stdin_closed = (std::env::var(STOP_WITH_STDIN_ENV).as_deref() == Ok("1")).then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A plain thread: tokio's stdin would keep a blocking-pool thread busy forever
            // and hold up the runtime's shutdown.
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 64];
                let mut stdin = std::io::stdin();
                while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
                let _ = tx.send(());
            });
            rx
        });
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            stdin_closed,
        })
    }

    /// Waits for either signal (or stdin's end) and names it.
    pub async fn recv(&mut self) -> &'static str {
        let stdin = async {
            match self.stdin_closed.as_mut() {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            () = stdin => "stdin closed (the launcher stopped)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_messages_become_one_line() {
        assert_eq!(one_line("a\n  b\r\n\nc"), "a b c");
    }
}
