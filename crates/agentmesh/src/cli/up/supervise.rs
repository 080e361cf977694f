//! The children of `agentmesh up`: each gets a log file, and a stdin pipe that `up` holds.
//! Closing the pipe asks a child to stop (it runs with `AGENTMESH_STOP_WITH_STDIN=1`), and
//! because the kernel closes it when `up` dies, even `kill -9` of `up` leaves no strays.
//!
//! Once the mesh is up, a child that exits is started again from the same [`Recipe`] with
//! backoff (1 s doubling to 30 s, back to 1 s after a minute of running), like a Kubernetes
//! pod's restart policy `Always`, and the rest of the mesh keeps serving meanwhile.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agentmesh_proto::v1::node_admin_client::NodeAdminClient;
use anyhow::Context;
use tokio::process::{Child, ChildStdin, Command};

use super::layout::Layout;
use super::start::register_launch;
use agentmesh::{STOP_WITH_STDIN_ENV, Signals};

/// How to start a child, kept so that it can be started again the same way.
#[derive(Debug, Clone)]
pub struct Recipe {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    gid: Option<u32>,
}

impl Recipe {
    /// Runs `program`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            gid: None,
        }
    }

    /// Runs the child with this group id (its uid stays `up`'s): on SPIRE, the `unix:gid`
    /// selector that tells one service's processes from another's.
    pub fn gid(&mut self, gid: u32) -> &mut Self {
        self.gid = Some(gid);
        self
    }

    /// One more argument.
    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// More arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .push((k.as_ref().to_owned(), Some(v.as_ref().to_owned())));
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(&mut self, k: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((k.as_ref().to_owned(), None));
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(gid) = self.gid {
            cmd.gid(gid);
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }
}

/// One child process.
pub struct Managed {
    /// What it is, for messages (`planner sidecar`).
    pub name: String,
    /// Its stderr (and stdout, unless that was given a file of its own).
    pub log: PathBuf,
    /// The service it is registered with the node as (`launcher:service:NAME`), if any.
    pub service: Option<String>,
    stdout: Option<PathBuf>,
    recipe: Recipe,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// The current process's pid.
    pub pid: u32,
    started: Instant,
    restarts: u32,
    /// When an exited child is due to start again.
    due: Option<Instant>,
}

/// What happened to a child that exited after the mesh was up.
#[derive(Debug)]
pub struct Exit {
    /// Its name.
    pub name: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Its log.
    pub log: PathBuf,
    /// How long until it is started again.
    pub backoff: Duration,
}

/// Every child `up` started, in start order.
#[derive(Default)]
pub struct Supervisor {
    children: Vec<Managed>,
}

/// How long a child may take to stop after its stdin closes before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// The first restart delay; it doubles with each quick crash.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long before exiting starts over at [`BACKOFF_START`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);

fn open_log(path: &Path, append: bool) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .with_context(|| format!("cannot open log {}", path.display()))
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

/// Starts `recipe` with its logs; a restart appends to them so the crash stays readable.
fn start(
    name: &str,
    recipe: &Recipe,
    log: &Path,
    stdout: Option<&Path>,
    append: bool,
) -> anyhow::Result<(Child, Option<ChildStdin>, u32)> {
    let err = open_log(log, append)?;
    let out = match stdout {
        Some(p) => open_log(p, append)?,
        None => err.try_clone().context("cannot share the log file")?,
    };
    let mut cmd = recipe.command();
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
    Ok((child, stdin, pid))
}

impl Supervisor {
    /// Starts `recipe` as `name`, stderr to `log`, stdout to `stdout` (or `log`); `service`
    /// is what the node should attest it as. Returns its pid.
    ///
    /// # Errors
    /// The program cannot be started or a log cannot be created.
    pub fn spawn(
        &mut self,
        name: &str,
        recipe: Recipe,
        log: &Path,
        stdout: Option<&Path>,
        service: Option<&str>,
    ) -> anyhow::Result<u32> {
        let (child, stdin, pid) = start(name, &recipe, log, stdout, false)?;
        self.children.push(Managed {
            name: name.to_owned(),
            log: log.to_owned(),
            service: service.map(str::to_owned),
            stdout: stdout.map(Path::to_owned),
            recipe,
            child: Some(child),
            stdin,
            pid,
            started: Instant::now(),
            restarts: 0,
            due: None,
        });
        Ok(pid)
    }

    /// A child that has exited, if any: its name, status and log.
    pub fn exited(&mut self) -> Option<(String, ExitStatus, PathBuf)> {
        self.children
            .iter_mut()
            .find_map(|c| match c.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some((c.name.clone(), status, c.log.clone())),
                _ => None,
            })
    }

    /// Waits until a running child exits, marks it due for a restart after its backoff, and
    /// says which.
    pub async fn wait_exit(&mut self) -> Exit {
        loop {
            for c in &mut self.children {
                let Some(child) = c.child.as_mut() else {
                    continue;
                };
                if let Ok(Some(status)) = child.try_wait() {
                    c.child = None;
                    c.stdin = None;
                    if c.started.elapsed() >= HEALTHY_RUN {
                        c.restarts = 0;
                    }
                    let backoff = BACKOFF_START
                        .saturating_mul(1 << c.restarts.min(5))
                        .min(BACKOFF_MAX);
                    c.restarts += 1;
                    c.due = Some(Instant::now() + backoff);
                    return Exit {
                        name: c.name.clone(),
                        status,
                        log: c.log.clone(),
                        backoff,
                    };
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Children whose backoff has passed, by index.
    pub fn due(&self) -> Vec<usize> {
        let now = Instant::now();
        self.children
            .iter()
            .enumerate()
            .filter(|(_, c)| c.child.is_none() && c.due.is_some_and(|d| d <= now))
            .map(|(i, _)| i)
            .collect()
    }

    /// When the next restart is due, if any child is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        self.children.iter().filter_map(|c| c.due).min()
    }

    /// Starts child `index` again from its recipe; returns it (with its new pid).
    ///
    /// # Errors
    /// It cannot be started (it stays due, for another try after the next backoff).
    pub fn restart(&mut self, index: usize) -> anyhow::Result<&Managed> {
        let c = &mut self.children[index];
        match start(&c.name, &c.recipe, &c.log, c.stdout.as_deref(), true) {
            Ok((child, stdin, pid)) => {
                c.child = Some(child);
                c.stdin = stdin;
                c.pid = pid;
                c.started = Instant::now();
                c.due = None;
                Ok(c)
            }
            Err(e) => {
                c.due = Some(Instant::now() + BACKOFF_MAX);
                Err(e)
            }
        }
    }

    /// Every running child that the node should attest as a service.
    pub fn registered(&self) -> impl Iterator<Item = &Managed> {
        self.children
            .iter()
            .filter(|c| c.child.is_some() && c.service.is_some())
    }

    /// Stops every child, the last started first (apps before their sidecars, sidecars
    /// before the node, the node before the server): closes its stdin, waits up to
    /// [`STOP_GRACE`], then kills it.
    pub async fn stop_all(&mut self) {
        while let Some(mut c) = self.children.pop() {
            drop(c.stdin.take());
            let Some(mut child) = c.child.take() else {
                continue;
            };
            match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!("  {} did not stop in {STOP_GRACE:?}; killing it", c.name);
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// How many children there are.
    pub fn len(&self) -> usize {
        self.children.len()
    }
}

/// Keeps the mesh running until a signal: a child that exits is started again after its
/// backoff while the rest keep serving; a restarted app or sidecar is registered with the
/// node again, and a restarted node gets every registration back.
pub async fn keep_running(sup: &mut Supervisor, signals: &mut Signals, layout: &Layout) {
    // Registrations the node has not taken yet (it may be restarting itself).
    let mut pending: Vec<(u32, String)> = Vec::new();
    loop {
        let next = sup
            .next_due()
            .map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_secs(1));
        tokio::select! {
            s = signals.recv() => {
                println!("\n{s}: stopping the mesh");
                return;
            }
            exit = sup.wait_exit() => {
                eprintln!(
                    "  ! {} exited ({}); starting it again in {:?}; the end of {}:\n{}",
                    exit.name,
                    exit.status,
                    exit.backoff,
                    exit.log.display(),
                    tail(&exit.log, 5)
                );
            }
            () = tokio::time::sleep(next) => {}
        }
        for index in sup.due() {
            match sup.restart(index) {
                Ok(c) => {
                    println!("  ↻ {} restarted (pid {})", c.name, c.pid);
                    if c.name == "node" {
                        pending = sup
                            .registered()
                            .filter_map(|c| Some((c.pid, c.service.clone()?)))
                            .collect();
                    } else if let Some(service) = &c.service {
                        pending.push((c.pid, service.clone()));
                    }
                }
                Err(e) => eprintln!("  ! {e:#}; trying again later"),
            }
        }
        if !pending.is_empty()
            && let Ok(channel) = agentmesh_proto::unix::connect(&layout.node_admin_socket).await
        {
            let mut node = NodeAdminClient::new(channel);
            let mut still = Vec::new();
            for (pid, service) in pending.drain(..) {
                if let Err(e) = register_launch(&mut node, pid, &service).await {
                    // A process that already exited again has nothing to register.
                    if agentmesh_node::process_start_time(pid).is_ok() {
                        tracing::debug!(error = %e, "registration retried later");
                        still.push((pid, service));
                    }
                }
            }
            pending = still;
        }
    }
}
