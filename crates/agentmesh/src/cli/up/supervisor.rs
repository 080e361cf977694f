//! The children of `agentmesh up`: each gets a log file, and a stdin pipe that `up` holds.
//! Closing the pipe asks a child to stop (it runs with `AGENTMESH_STOP_WITH_STDIN=1`), and
//! because the kernel closes it when `up` dies, even `kill -9` of `up` leaves no strays.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, ChildStdin, Command};

use crate::cli::server::STOP_WITH_STDIN_ENV;

/// One child process.
pub struct Managed {
    /// What it is, for messages (`planner proxy`).
    pub name: String,
    /// Its stderr (and stdout, unless that was given a file of its own).
    pub log: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Every child `up` started, in start order.
#[derive(Default)]
pub struct Supervisor {
    children: Vec<Managed>,
}

/// How long a child may take to stop after its stdin closes before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

fn create_log(path: &Path) -> anyhow::Result<File> {
    File::create(path).with_context(|| format!("cannot create log {}", path.display()))
}

/// The last `n` lines of a log, indented, for an error message about a child.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Supervisor {
    /// Starts `cmd` as `name`, stderr to `log`, stdout to `stdout` (or `log`). Returns its pid.
    ///
    /// # Errors
    /// The program cannot be started or a log cannot be created.
    pub fn spawn(
        &mut self,
        name: &str,
        mut cmd: Command,
        log: &Path,
        stdout: Option<&Path>,
    ) -> anyhow::Result<u32> {
        let err = create_log(log)?;
        let out = match stdout {
            Some(p) => create_log(p)?,
            None => err.try_clone().context("cannot share the log file")?,
        };
        cmd.stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .env(STOP_WITH_STDIN_ENV, "1")
            // A safety net for error paths that never reach stop_all.
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited as soon as it started"))?;
        let stdin = child.stdin.take();
        self.children.push(Managed {
            name: name.to_owned(),
            log: log.to_owned(),
            child,
            stdin,
        });
        Ok(pid)
    }

    /// A child that has exited, if any: its name, status and log.
    pub fn exited(&mut self) -> Option<(String, ExitStatus, PathBuf)> {
        self.children
            .iter_mut()
            .find_map(|c| match c.child.try_wait() {
                Ok(Some(status)) => Some((c.name.clone(), status, c.log.clone())),
                _ => None,
            })
    }

    /// Waits until some child exits.
    pub async fn wait_exit(&mut self) -> (String, ExitStatus, PathBuf) {
        loop {
            if let Some(e) = self.exited() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every child, the last started first (apps before their sidecars, sidecars
    /// before the node, the node before the server): closes its stdin, waits up to
    /// [`STOP_GRACE`], then kills it.
    pub async fn stop_all(&mut self) {
        while let Some(mut c) = self.children.pop() {
            drop(c.stdin.take());
            match tokio::time::timeout(STOP_GRACE, c.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!("  {} did not stop in {STOP_GRACE:?}; killing it", c.name);
                    let _ = c.child.kill().await;
                }
            }
        }
    }

    /// How many children are running.
    pub fn len(&self) -> usize {
        self.children.len()
    }
}
