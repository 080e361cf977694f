//! What the two executables of this package share.
//!
//! `agentmesh` runs every command. `agentmesh-proxy` runs only the sidecar (`agentmesh-proxy
//! run --config proxy.toml`, the same sidecar as `agentmesh proxy run`): it links the data
//! plane and nothing else, about a third of the code, so each sidecar maps fewer pages of it
//! (bench/RESULTS.md, "Where the proxy's RSS goes"). `agentmesh up` starts its sidecars with
//! `agentmesh-proxy` when the one next to it comes from the same build ([`BUILD_ID`]).
#![forbid(unsafe_code)]

mod process;
mod sidecar;

pub use process::{LOG_ENV, LogFormat, STOP_WITH_STDIN_ENV, Signals, init_logging, one_line};
pub use sidecar::{
    BUILD_ID, PROXY_EXECUTABLE, ProxyRunArgs, VERSION, WORKLOAD_SOCKET_ENV,
    proxy_executable_beside, run_sidecar,
};
