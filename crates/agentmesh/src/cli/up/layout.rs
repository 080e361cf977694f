//! The data dir of `agentmesh up`: where the server's and the node's state, the generated
//! configs, the sockets, the logs and the files other commands read (`mesh.json`, `env`)
//! live. Every path is decided here, so the rest of `up` never joins a path by hand.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Every path `up` uses, under the data dir.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The data dir (absolute); also the server's data dir.
    pub data: PathBuf,
    /// `<data>/logs/`: one log per child, and the gateway's and sidecars' audit files.
    pub logs: PathBuf,
    /// `<data>/services/`: the generated component configs.
    pub configs: PathBuf,
    /// `<data>/run/NAME/`: each service's app, sidecar-port and admin sockets, 0700.
    pub run: PathBuf,
    /// The server's admin socket.
    pub admin_socket: PathBuf,
    /// The node's Workload API socket.
    pub node_socket: PathBuf,
    /// The node's admin socket, where `up` vouches for the children it launched.
    pub node_admin_socket: PathBuf,
    /// The node's data dir.
    pub node_data: PathBuf,
    /// The trust bundle the node starts with.
    pub bundle: PathBuf,
    /// `<data>/up.pid`, so a second `up` on the same data dir stops before it starts.
    pub pid_file: PathBuf,
    /// `<data>/mesh.json`, how `agentmesh ask` finds the entry.
    pub mesh_file: PathBuf,
    /// `<data>/env`, the exports that point the CLI at this mesh.
    pub env_file: PathBuf,
    /// `--identity spire:unix:///PATH`: the SPIRE agent's Workload API, where every service
    /// takes its SVID; the node then relays policy only. `None`: the node's own.
    pub spire_socket: Option<PathBuf>,
    /// `<data>/spire-entries.sh`: the `spire-server entry create` lines for the operator.
    pub spire_entries: PathBuf,
}

impl Layout {
    /// The layout under `data` (made absolute, so children started elsewhere agree).
    ///
    /// # Errors
    /// `data` cannot be made absolute.
    pub fn new(data: &Path) -> anyhow::Result<Self> {
        let data = std::path::absolute(data)
            .with_context(|| format!("invalid --data-dir {}", data.display()))?;
        Ok(Self {
            logs: data.join("logs"),
            configs: data.join("services"),
            run: data.join("run"),
            admin_socket: data.join(crate::cli::ADMIN_SOCKET_FILE),
            node_socket: data.join("node.sock"),
            node_admin_socket: data.join("node-admin.sock"),
            node_data: data.join("node"),
            bundle: data.join("bundle.pem"),
            pid_file: data.join("up.pid"),
            mesh_file: mesh_file(&data),
            env_file: data.join("env"),
            spire_socket: None,
            spire_entries: data.join("spire-entries.sh"),
            data,
        })
    }

    /// The policy relay for sidecars, when it is not the Workload API socket (on SPIRE).
    pub fn policy_api(&self) -> Option<String> {
        self.spire_socket
            .as_ref()
            .map(|_| format!("unix://{}", self.node_socket.display()))
    }

    /// The node's Workload API as components name it: `unix:///path`.
    pub fn workload_api(&self) -> String {
        let socket = self.spire_socket.as_ref().unwrap_or(&self.node_socket);
        format!("unix://{}", socket.display())
    }

    /// The private directory of one service's sockets.
    pub fn service_run_dir(&self, service: &str) -> PathBuf {
        self.run.join(service)
    }

    /// The config file of one component of a service (`KIND` is agent, gateway, frontend or
    /// proxy).
    pub fn config_file(&self, stem: &str, kind: &str) -> PathBuf {
        self.configs.join(format!("{stem}.{kind}.toml"))
    }

    /// A file under the logs dir.
    pub fn log(&self, file: &str) -> PathBuf {
        self.logs.join(file)
    }

    /// Creates the data dir and its private subdirectories, one per service under `run/`.
    ///
    /// # Errors
    /// A directory cannot be created.
    pub fn create_dirs<'a>(
        &self,
        services: impl IntoIterator<Item = &'a str>,
    ) -> anyhow::Result<()> {
        for dir in [&self.data, &self.logs, &self.configs, &self.run] {
            create_private_dir(dir)?;
        }
        for service in services {
            create_private_dir(&self.service_run_dir(service))?;
        }
        Ok(())
    }

    /// Is another `agentmesh up` running from this data dir?
    ///
    /// # Errors
    /// One is: its pid file names a live `up` process.
    pub fn check_not_running(&self) -> anyhow::Result<()> {
        let Ok(text) = std::fs::read_to_string(&self.pid_file) else {
            return Ok(());
        };
        let Ok(pid) = text.trim().parse::<u32>() else {
            return Ok(());
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if pid != std::process::id() && args.iter().any(|a| *a == b"up") {
            bail!(
                "a mesh is already running from {} (agentmesh up, pid {pid}); stop it with Ctrl-C, \
                 or use another --data-dir",
                self.data.display()
            );
        }
        Ok(())
    }
}

/// Where `up` writes the running mesh's description.
pub fn mesh_file(data: &Path) -> PathBuf {
    data.join("mesh.json")
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    agentmesh_proto::unix::create_private_dir(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Writes a whole file.
///
/// # Errors
/// The file cannot be written.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    // Write then rename, so a crash never leaves half a config behind.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
