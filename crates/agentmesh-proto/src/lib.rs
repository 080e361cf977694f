//! Generated gRPC code (the SPIFFE Workload API, Envoy's SDS and agentmesh's own APIs), and the Unix-socket
//! transport that the Workload API and the admin APIs run over, and the limits every agentmesh
//! listener applies (`limits`), and the one HTTPS client for calls that leave the mesh (`https`).
//!
//! The plumbing every component shares, and nothing that decides: no identities (agentmesh-tls
//! and the SDK), no intentions (agentmesh-policy), no component's own config types.
#![forbid(unsafe_code)]

// Namespaces on purpose, like the generated modules below: each is a small toolbox whose items
// read best with its name (`config::load_toml`, `https::Client`, `limits::grpc_server`,
// `unix::create_private_dir`), and `limits` alone has some thirty items.
pub mod config;
pub mod https;
pub mod limits;
pub mod unix;

/// The SPIFFE Workload API. Its proto has no package, so the paths are
/// `/SpiffeWorkloadAPI/<Method>`, exactly what SPIFFE clients call.
#[allow(missing_docs, clippy::all)]
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// agentmesh's node API, the server's admin API and the node's admin API.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/agentmesh.v1.rs"));
}

/// Envoy's Secret Discovery Service (xDS v3) and the secret types it carries: a wire-compatible
/// subset of Envoy's protos (proto/envoy/README.md). The modules mirror the proto packages,
/// because the generated code names other packages by relative paths.
#[allow(missing_docs, clippy::all)]
pub mod xds {
    pub mod envoy {
        pub mod config {
            pub mod core {
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
                }
            }
        }
        pub mod extensions {
            pub mod transport_sockets {
                pub mod tls {
                    pub mod v3 {
                        include!(concat!(
                            env!("OUT_DIR"),
                            "/envoy.extensions.transport_sockets.tls.v3.rs"
                        ));
                    }
                }
            }
        }
        pub mod service {
            pub mod discovery {
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
                }
            }
            pub mod secret {
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.service.secret.v3.rs"));
                }
            }
        }
    }
    pub mod google {
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
        }
    }
}

/// The metadata key every Workload API request must carry, with the value `true`.
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";

/// The largest gRPC message agentmesh accepts: a node with 10,000 entries receives them in one
/// full-state message.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
