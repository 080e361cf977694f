//! Workload attestation: turns a caller on the Workload API socket into selectors.
//!
//! The kernel vouches for the uid, gid and pid (SO_PEERCRED); everything else comes from
//! `/proc/<pid>` and the system's user and group databases. A launcher the node trusts can add
//! `launcher:` selectors for a child it started, pinned to the child's pid *and* start time so
//! that a recycled pid inherits nothing. A caller in a Docker container also gets `docker:`
//! selectors from the Docker Engine ([`docker`]).

mod docker;
pub use docker::{DEFAULT_DOCKER_SOCKET, DockerAttestor, DockerError};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use agentmesh_spiffe::{Selector, SelectorSet};

/// The most `launcher:` selectors one process may get, as many as an entry may have.
pub const MAX_LAUNCH_SELECTORS: usize = 32;

/// Why a launch could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The process is gone or unreadable.
    #[error("process {pid} cannot be read: {source}")]
    NoProcess {
        /// The pid asked about.
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// The start time does not match the live process: the pid was reused.
    #[error(
        "process {pid} started at tick {actual}, not {claimed}: the pid was reused or the launcher is wrong"
    )]
    StartTimeMismatch {
        /// The pid.
        pid: u32,
        /// What the launcher said.
        claimed: u64,
        /// What /proc says.
        actual: u64,
    },
    /// A selector a launcher may not set.
    #[error("launchers may only register launcher:KEY:VALUE selectors, not {}", agentmesh_spiffe::echo(.0))]
    NotALauncherSelector(String),
    /// More selectors than `MAX_LAUNCH_SELECTORS` (32) for one process.
    #[error("a launcher may register at most {max} selectors for a process, not {count}")]
    TooManySelectors {
        /// How many were given.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// A malformed selector.
    #[error(transparent)]
    Selector(#[from] agentmesh_spiffe::SelectorError),
    /// `/proc/<pid>/stat` did not parse.
    #[error("cannot parse /proc/{0}/stat")]
    BadStat(u32),
}

/// What the kernel says about a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id (None when the kernel did not say).
    pub pid: Option<u32>,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// The attested facts of one caller, for matching and for explaining a refusal.
#[derive(Debug, Clone)]
pub struct Attestation {
    /// Every selector that holds for the caller.
    pub selectors: SelectorSet,
    /// A short human summary: `pid=123 uid=1000 path=/usr/bin/python3`.
    pub summary: String,
    /// What the kernel said about the caller.
    pub cred: PeerCred,
    /// Why the caller's container could not be attested, when it runs in one and the Docker
    /// Engine could not say what it is; its `docker:` selectors are then missing.
    pub docker_error: Option<DockerError>,
}

#[derive(Debug, Clone)]
struct Launch {
    start_time: u64,
    selectors: Vec<Selector>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// Attests callers. Cheap to share; it caches binary digests by file identity, and
/// containers' `docker:` selectors by container id.
#[derive(Debug, Default)]
pub struct Attestor {
    launches: Mutex<HashMap<u32, Launch>>,
    digests: Mutex<HashMap<FileStamp, String>>,
    denials: crate::denials::Denials,
    docker: Option<DockerAttestor>,
}

impl Attestor {
    /// A new attestor with no registered launches and no Docker attestation.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new attestor that also asks the Docker Engine on `socket` about callers that run in
    /// containers.
    pub fn with_docker(socket: impl Into<PathBuf>) -> Self {
        Self {
            docker: Some(DockerAttestor::new(socket)),
            ..Self::default()
        }
    }

    /// Where every API that refuses an unmatched caller records why (see [`crate::denials`]).
    pub fn denials(&self) -> &crate::denials::Denials {
        &self.denials
    }

    /// Records `launcher:` selectors for a child process.
    ///
    /// # Errors
    /// The process does not exist, its start time differs, or a selector is not `launcher:`.
    pub fn register_launch(
        &self,
        pid: u32,
        start_time: u64,
        selectors: &[String],
    ) -> Result<(), AttestError> {
        if selectors.len() > MAX_LAUNCH_SELECTORS {
            return Err(AttestError::TooManySelectors {
                count: selectors.len(),
                max: MAX_LAUNCH_SELECTORS,
            });
        }
        let parsed = selectors
            .iter()
            .map(|s| {
                let sel: Selector = s.parse()?;
                if sel.kind() != "launcher" {
                    return Err(AttestError::NotALauncherSelector(s.clone()));
                }
                Ok(sel)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let actual = process_start_time(pid)?;
        if actual != start_time {
            return Err(AttestError::StartTimeMismatch {
                pid,
                claimed: start_time,
                actual,
            });
        }
        let mut launches = self.launches.lock().unwrap_or_else(|e| e.into_inner());
        // Forget launches whose process is gone, so the map does not grow without end.
        launches.retain(|p, l| process_start_time(*p).is_ok_and(|t| t == l.start_time));
        launches.insert(
            pid,
            Launch {
                start_time,
                selectors: parsed,
            },
        );
        Ok(())
    }

    /// Everything that holds for the caller: what the kernel and `/proc` say, the launcher's
    /// selectors, and, for a caller in a container, what the Docker Engine says about it.
    pub async fn attest(&self, cred: PeerCred) -> Attestation {
        let mut att = self.attest_process(cred);
        let (Some(docker), Some(pid)) = (&self.docker, cred.pid) else {
            return att;
        };
        match docker.selectors(pid).await {
            Ok(None) => {}
            Ok(Some((id, selectors))) => {
                att.summary.push_str(&format!(" container={}", &id[..12]));
                for s in selectors {
                    att.selectors.insert(s);
                }
            }
            Err(e) => {
                tracing::debug!(pid, error = %e, "docker attestation failed");
                att.summary.push_str(" container=(not attested)");
                att.docker_error = Some(e);
            }
        }
        att
    }

    /// What the kernel, `/proc` and the launcher say about the caller.
    fn attest_process(&self, cred: PeerCred) -> Attestation {
        let mut selectors = SelectorSet::new();
        let mut add = |key: &str, value: &str| {
            if let Ok(s) = Selector::new("unix", key, value) {
                selectors.insert(s);
            }
        };
        add("uid", &cred.uid.to_string());
        add("gid", &cred.gid.to_string());
        if let Some(user) = name_for_id(Path::new("/etc/passwd"), cred.uid) {
            add("user", &user);
        }
        if let Some(group) = name_for_id(Path::new("/etc/group"), cred.gid) {
            add("group", &group);
        }
        let mut summary = format!("uid={} gid={}", cred.uid, cred.gid);
        if let Some(pid) = cred.pid {
            summary = format!("pid={pid} {summary}");
            for gid in supplementary_gids(pid) {
                add("supplementary_gid", &gid.to_string());
                if let Some(group) = name_for_id(Path::new("/etc/group"), gid) {
                    add("supplementary_group", &group);
                }
            }
            match std::fs::read_link(format!("/proc/{pid}/exe")) {
                Ok(exe) => {
                    let exe_str = exe.to_string_lossy().into_owned();
                    add("path", &exe_str);
                    summary.push_str(&format!(" path={exe_str}"));
                    // Hash through /proc/<pid>/exe, not the path: the file at the path may
                    // have been replaced since the process started.
                    if let Some(digest) = self.digest(Path::new(&format!("/proc/{pid}/exe")), &exe)
                    {
                        add("sha256", &digest);
                    }
                }
                Err(e) => tracing::debug!(pid, error = %e, "cannot read the caller's executable"),
            }
            let launches = self.launches.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(l) = launches.get(&pid)
                && process_start_time(pid).is_ok_and(|t| t == l.start_time)
            {
                for s in &l.selectors {
                    selectors.insert(s.clone());
                }
            }
        }
        Attestation {
            selectors,
            summary,
            cred,
            docker_error: None,
        }
    }

    fn digest(&self, open_path: &Path, real_path: &Path) -> Option<String> {
        let meta = std::fs::metadata(open_path).ok()?;
        use std::os::unix::fs::MetadataExt;
        let stamp = FileStamp {
            path: real_path.to_owned(),
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        };
        if let Some(d) = self
            .digests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&stamp)
        {
            return Some(d.clone());
        }
        // Streamed: a workload binary can be hundreds of MB, and reading it whole would put
        // that on the node's heap for every new binary.
        let mut file = std::fs::File::open(open_path).ok()?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf).ok()?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let digest = ctx.finish();
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        self.digests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stamp, hex.clone());
        Some(hex)
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
///
/// # Errors
/// The process does not exist or the file does not parse.
pub fn process_start_time(pid: u32) -> Result<u64, AttestError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| AttestError::NoProcess { pid, source })?;
    // The command name (field 2) is in parentheses and may itself contain spaces and ')'.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or(AttestError::BadStat(pid))?;
    // After the name come fields 3, 4, ...; field 22 is the 20th of those.
    after
        .split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or(AttestError::BadStat(pid))
}

fn supplementary_gids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Looks an id up in a passwd- or group-format file (`name:x:id:...`).
fn name_for_id(db: &Path, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(db).ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _ = f.next()?;
        (f.next()?.parse::<u32>().ok()? == id).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> PeerCred {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |k: &str| -> u32 {
            let line = status.lines().find(|l| l.starts_with(k)).unwrap();
            line.split_whitespace().nth(2).unwrap().parse().unwrap()
        };
        PeerCred {
            pid: Some(std::process::id()),
            uid: field("Uid:"),
            gid: field("Gid:"),
        }
    }

    #[test]
    fn attests_this_process_from_proc() {
        let a = Attestor::new();
        let att = a.attest_process(me());
        let has = |prefix: &str| {
            att.selectors
                .iter()
                .any(|s| s.to_string().starts_with(prefix))
        };
        assert!(has("unix:uid:"));
        assert!(has("unix:gid:"));
        assert!(has("unix:path:/"));
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let want: String = ring::digest::digest(&ring::digest::SHA256, &exe)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            att.selectors
                .iter()
                .any(|s| s.to_string() == format!("unix:sha256:{want}"))
        );
    }

    #[test]
    fn launcher_selectors_are_pinned_to_the_start_time() {
        let a = Attestor::new();
        let pid = std::process::id();
        let start = process_start_time(pid).unwrap();
        let err = a
            .register_launch(pid, start + 1, &["launcher:service:planner".into()])
            .unwrap_err();
        assert!(
            matches!(err, AttestError::StartTimeMismatch { .. }),
            "{err}"
        );
        let err = a
            .register_launch(pid, start, &["unix:uid:0".into()])
            .unwrap_err();
        assert!(matches!(err, AttestError::NotALauncherSelector(_)), "{err}");
        assert!(a.register_launch(999_999_999, 1, &[]).is_err());
        let too_many: Vec<String> = (0..=MAX_LAUNCH_SELECTORS)
            .map(|i| format!("launcher:k{i}:v"))
            .collect();
        let err = a.register_launch(pid, start, &too_many).unwrap_err();
        assert!(
            matches!(err, AttestError::TooManySelectors { count: 33, max: 32 }),
            "{err}"
        );
        let err = a
            .register_launch(pid, start, &["launcher:service:a\u{0}".into()])
            .unwrap_err();
        assert!(matches!(err, AttestError::Selector(_)), "{err}");
        a.register_launch(pid, start, &["launcher:service:planner".into()])
            .unwrap();
        let att = a.attest_process(me());
        assert!(
            att.selectors
                .iter()
                .any(|s| s.to_string() == "launcher:service:planner")
        );
    }

    #[test]
    fn start_time_parses_names_with_parentheses() {
        // The real file of this process, whose name has no spaces, still parses...
        assert!(process_start_time(std::process::id()).unwrap() > 0);
        // ... and so does a name like "a) b (c".
        let stat = "1 (a) b (c) S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0";
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        assert_eq!(after.split_whitespace().nth(19), Some("4242"));
    }
}
