//! `agentmesh server run`: flags, the optional TOML config file, and the run loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentmesh::Signals;
use agentmesh_server::{
    BootstrapConfig, BootstrapEntry, CaLifetimes, IssuanceSettings, OidcDiscoveryConfig,
    OpenBaoAuth, OpenBaoUpstreamConfig, ServerConfig, X509PopConfig,
};
use agentmesh_spiffe::TrustDomain;
use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Deserialize;

use super::{ADMIN_SOCKET_ENV, DEFAULT_DATA_DIR, default_admin_socket, parse_duration};

/// The trust domain when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "agentmesh.local";
/// The node API address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

/// `agentmesh server ...`
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Runs the server until SIGINT or SIGTERM.
    Run(ServerRunArgs),
}

/// `agentmesh server run` flags. Each one overrides the same key in `--config`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerRunArgs {
    /// Where the datastore and CA keys live [default: .agentmesh]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The trust domain this server is the authority of [default: agentmesh.local]
    #[arg(long, value_name = "TD")]
    pub trust_domain: Option<String>,
    /// The node API's address, IP:PORT [default: 127.0.0.1:8081]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The admin API's Unix socket [default: $AGENTMESH_ADMIN_SOCKET, then <DATA_DIR>/admin.sock]
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// A TOML file with the same settings in snake_case (data_dir = "...", default_x509_ttl = "1h"),
    /// and the tables only a file sets: [upstream_authority.openbao], [oidc_discovery],
    /// [limits], [bootstrap], [federation] (the SPIFFE bundle endpoint and the trust domains
    /// to federate with), and [node_attestation.x509pop] ca_bundle_path = "FILE" (the PEM
    /// CAs that x509pop node certificates must chain to; without it only join tokens attest
    /// nodes)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// X.509-SVID lifetime for entries that do not set one [default: 1h]
    #[arg(long, value_name = "DUR")]
    pub default_x509_ttl: Option<String>,
    /// JWT-SVID lifetime for entries that do not set one [default: 5m]
    #[arg(long, value_name = "DUR")]
    pub default_jwt_ttl: Option<String>,
    /// Lifetime of node SVIDs [default: 1h]
    #[arg(long, value_name = "DUR")]
    pub node_svid_ttl: Option<String>,
    /// Lifetime of the self-signed root [default: 8760h]
    #[arg(long, value_name = "DUR")]
    pub root_ttl: Option<String>,
    /// Lifetime of the intermediate that signs SVIDs [default: 24h]
    #[arg(long, value_name = "DUR")]
    pub intermediate_ttl: Option<String>,
    /// Join token lifetime when `token generate` does not set one [default: 10m]
    #[arg(long, value_name = "DUR")]
    pub join_token_ttl: Option<String>,
}

/// The `--config` file: the flags' settings, in snake_case. Unknown keys are an error.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFileConfig {
    /// As `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// As `--trust-domain`.
    pub trust_domain: Option<String>,
    /// As `--listen`.
    pub listen: Option<String>,
    /// As `--admin-socket`.
    pub admin_socket: Option<PathBuf>,
    /// As `--default-x509-ttl`.
    pub default_x509_ttl: Option<String>,
    /// As `--default-jwt-ttl`.
    pub default_jwt_ttl: Option<String>,
    /// As `--node-svid-ttl`.
    pub node_svid_ttl: Option<String>,
    /// As `--root-ttl`.
    pub root_ttl: Option<String>,
    /// As `--intermediate-ttl`.
    pub intermediate_ttl: Option<String>,
    /// As `--join-token-ttl`.
    pub join_token_ttl: Option<String>,
    /// `[upstream_authority.openbao]`: OpenBao signs the intermediate (file only; no flags).
    pub upstream_authority: Option<UpstreamAuthorityFile>,
    /// `[oidc_discovery]`: serve the JWKS and discovery document for JWT-SVID verifiers.
    pub oidc_discovery: Option<OidcDiscoveryFile>,
    /// `[limits]`: the node API's and the admin socket's listener limits (file only).
    pub limits: Option<agentmesh_proto::limits::ListenerLimits>,
    /// `[bootstrap]`: what the server sets up at start (file only).
    pub bootstrap: Option<BootstrapFile>,
    /// `[node_attestation.x509pop]`: how nodes may attest besides join tokens (file only).
    pub node_attestation: Option<NodeAttestationFile>,
    /// `[federation]`: the SPIFFE bundle endpoint and `[[federation.federates_with]]` (file
    /// only).
    pub federation: Option<agentmesh_server::FederationConfig>,
}

/// `[node_attestation]`: node attestors besides join tokens, which are always on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAttestationFile {
    /// `[node_attestation.x509pop]`, as SPIRE's x509pop node attestor.
    pub x509pop: Option<X509PopFile>,
}

/// `[node_attestation.x509pop]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509PopFile {
    /// PEM file of the CA certificates that node certificates must chain to (required;
    /// SPIRE's key of the same name).
    pub ca_bundle_path: Option<PathBuf>,
}

/// `[bootstrap]`: entries and intentions created at start when missing, a bundle file kept
/// current, and a join token file written at every start. For deployments with no operator
/// at hand, such as `deploy/compose/`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapFile {
    /// Where to keep the trust bundle (PEM), for nodes' `--trust-bundle`.
    pub bundle_file: Option<PathBuf>,
    /// Where to write a fresh one-time join token (0600), for a node's `--join-token-file`.
    pub join_token_file: Option<PathBuf>,
    /// `[[bootstrap.entry]]`: the fields of `agentmesh entry create`.
    #[serde(default)]
    pub entry: Vec<BootstrapEntryFile>,
    /// `[[bootstrap.intention]]`: the JSON model of `agentmesh intention create --file`, as
    /// TOML.
    #[serde(default)]
    pub intention: Vec<toml::Table>,
}

/// `[[bootstrap.entry]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapEntryFile {
    /// As `--spiffe-id`.
    pub spiffe_id: String,
    /// As `--selector`, each `TYPE:KEY:VALUE`.
    pub selectors: Vec<String>,
    /// As `--parent-id` [default: every node].
    #[serde(default)]
    pub parent_id: String,
    /// As `--x509-ttl`.
    pub x509_ttl: Option<String>,
    /// As `--jwt-ttl`.
    pub jwt_ttl: Option<String>,
    /// As `--dns-name`.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// As `--federates-with`, each `spiffe://other.td`.
    #[serde(default)]
    pub federates_with: Vec<String>,
}

/// Converts `[bootstrap]`; the server checks the entries and intentions themselves.
fn bootstrap(file: &ServerFileConfig, file_name: &str) -> anyhow::Result<BootstrapConfig> {
    let Some(b) = &file.bootstrap else {
        return Ok(BootstrapConfig::default());
    };
    let ttl = |v: &Option<String>, key: String| {
        v.as_deref()
            .map(|t| parse_duration(&format!("{key} in {file_name}"), t))
            .transpose()
    };
    let entries = b
        .entry
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(BootstrapEntry {
                spiffe_id: e.spiffe_id.clone(),
                parent_id: e.parent_id.clone(),
                selectors: e.selectors.clone(),
                x509_ttl: ttl(&e.x509_ttl, format!("bootstrap.entry[{i}].x509_ttl"))?,
                jwt_ttl: ttl(&e.jwt_ttl, format!("bootstrap.entry[{i}].jwt_ttl"))?,
                dns_names: e.dns_names.clone(),
                federates_with: e.federates_with.clone(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let intentions = b
        .intention
        .iter()
        .map(|t| serde_json::to_string(t).context("an intention does not convert to JSON"))
        .collect::<anyhow::Result<_>>()?;
    Ok(BootstrapConfig {
        bundle_file: b.bundle_file.clone(),
        join_token_file: b.join_token_file.clone(),
        entries,
        intentions,
    })
}

/// `[oidc_discovery]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcDiscoveryFile {
    /// Loopback IP:PORT (required).
    pub listen: Option<String>,
    /// The discovery document's issuer (default `http://<listen>`).
    pub issuer: Option<String>,
}

/// `[upstream_authority]`: which upstream signs the server's intermediate CA.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuthorityFile {
    /// OpenBao (or Vault) PKI.
    pub openbao: Option<OpenBaoFile>,
}

/// `[upstream_authority.openbao]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBaoFile {
    /// `http://127.0.0.1:8200` or `https://…` (required).
    pub address: Option<String>,
    /// For https: the CA file (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Where the PKI engine is mounted [default: pki].
    pub pki_mount: Option<String>,
    /// `token` or `approle` [default: token].
    pub auth: Option<String>,
    /// With `auth = "token"`: the file holding the token.
    pub token_file: Option<PathBuf>,
    /// With `auth = "approle"`: the role ID.
    pub role_id: Option<String>,
    /// With `auth = "approle"`: the file holding the secret ID.
    pub secret_id_file: Option<PathBuf>,
    /// With `auth = "approle"`: where AppRole is mounted [default: approle].
    pub approle_mount: Option<String>,
    /// The intermediate's lifetime (as `--intermediate-ttl`, which it replaces).
    pub intermediate_ttl: Option<String>,
}

impl OpenBaoFile {
    /// Checks the table and builds the server's upstream config; `file` is for messages.
    fn resolve(&self, file: &str) -> anyhow::Result<OpenBaoUpstreamConfig> {
        let key = |k: &str| format!("upstream_authority.openbao.{k} in {file}");
        let address = self.address.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "{} is missing (e.g. \"http://127.0.0.1:8200\")",
                key("address")
            )
        })?;
        let mount = |m: &Option<String>, k: &str, default: &str| -> anyhow::Result<String> {
            let m = m.clone().unwrap_or_else(|| default.to_owned());
            let m = m.trim_matches('/').to_owned();
            if m.is_empty() || m.contains(char::is_whitespace) || m.contains("..") {
                anyhow::bail!(
                    "invalid {} {m:?}: give a mount path such as \"{default}\"",
                    key(k)
                );
            }
            Ok(m)
        };
        let pki_mount = mount(&self.pki_mount, "pki_mount", "pki")?;
        let auth = match self.auth.as_deref().unwrap_or("token") {
            "token" => {
                for (k, set) in [
                    ("role_id", self.role_id.is_some()),
                    ("secret_id_file", self.secret_id_file.is_some()),
                    ("approle_mount", self.approle_mount.is_some()),
                ] {
                    if set {
                        anyhow::bail!("{} is only for auth = \"approle\"", key(k));
                    }
                }
                OpenBaoAuth::Token {
                    token_file: self.token_file.clone().ok_or_else(|| {
                        anyhow::anyhow!(
                            "{} is missing (auth = \"token\" reads the token from it)",
                            key("token_file")
                        )
                    })?,
                }
            }
            "approle" => {
                if self.token_file.is_some() {
                    anyhow::bail!("{} is only for auth = \"token\"", key("token_file"));
                }
                OpenBaoAuth::AppRole {
                    mount: mount(&self.approle_mount, "approle_mount", "approle")?,
                    role_id: self
                        .role_id
                        .clone()
                        .filter(|r| !r.trim().is_empty())
                        .ok_or_else(|| {
                            anyhow::anyhow!("{} is missing (auth = \"approle\")", key("role_id"))
                        })?,
                    secret_id_file: self.secret_id_file.clone().ok_or_else(|| {
                        anyhow::anyhow!("{} is missing (auth = \"approle\")", key("secret_id_file"))
                    })?,
                }
            }
            other => anyhow::bail!(
                "invalid {} {other:?}: use \"token\" or \"approle\"",
                key("auth")
            ),
        };
        Ok(OpenBaoUpstreamConfig {
            address,
            ca_file: self.ca_file.clone(),
            pki_mount,
            auth,
        })
    }
}

impl ServerFileConfig {
    /// Reads and parses a config file.
    ///
    /// # Errors
    /// One line naming the file, and for a parse error the line and the offending key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` is only for messages.
    ///
    /// # Errors
    /// As [`ServerFileConfig::load`].
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .and_then(|s| text.get(..s.start))
                .map(|before| format!(" line {}", before.matches('\n').count() + 1))
                .unwrap_or_default();
            anyhow::anyhow!(
                "config file {}{line}: {}",
                path.display(),
                super::one_line(e.message())
            )
        })
    }
}

/// Where a setting came from, for error messages.
fn source_name(flag: &str, key: &str, file: Option<&Path>, from_flag: bool) -> String {
    match (from_flag, file) {
        (false, Some(f)) => format!("{key} in {}", f.display()),
        _ => flag.to_owned(),
    }
}

/// Merges flags over the file over the defaults. `env_admin_socket` is
/// `$AGENTMESH_ADMIN_SOCKET`, which counts only when neither the flag nor the file names a
/// socket.
///
/// # Errors
/// One line naming the flag (or the file and key) whose value is bad.
pub fn resolve(
    args: &ServerRunArgs,
    file: &ServerFileConfig,
    file_path: Option<&Path>,
    env_admin_socket: Option<PathBuf>,
) -> anyhow::Result<ServerConfig> {
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));

    let (td, td_from) = pick(&args.trust_domain, &file.trust_domain, DEFAULT_TRUST_DOMAIN);
    let td_name = source_name("--trust-domain", "trust_domain", file_path, td_from);
    let trust_domain =
        TrustDomain::new(&td).map_err(|e| anyhow::anyhow!("invalid {td_name} {td:?}: {e}"))?;

    let (listen, listen_from) = pick(&args.listen, &file.listen, DEFAULT_LISTEN);
    let listen_name = source_name("--listen", "listen", file_path, listen_from);
    let listen: SocketAddr = listen.trim().parse().map_err(|e| {
        anyhow::anyhow!("invalid {listen_name} {listen:?}: {e} (use IP:PORT, e.g. 127.0.0.1:8081)")
    })?;

    let admin_socket = args
        .admin_socket
        .clone()
        .or_else(|| file.admin_socket.clone())
        .or(env_admin_socket)
        .unwrap_or_else(|| default_admin_socket(&data_dir));

    let file_name =
        file_path.map_or_else(|| "the config file".to_owned(), |p| p.display().to_string());
    let openbao = file
        .upstream_authority
        .as_ref()
        .and_then(|u| u.openbao.as_ref());
    let upstream = openbao.map(|o| o.resolve(&file_name)).transpose()?;
    let (ca, issuance) = lifetimes(args, file, file_path, &file_name, openbao)?;
    check_lifetimes(&ca, &issuance, upstream.is_some())?;
    let oidc_discovery = oidc_discovery(file, &file_name)?;
    let x509pop = match file.node_attestation.as_ref().and_then(|n| n.x509pop.as_ref()) {
        None => None,
        Some(x) => Some(X509PopConfig {
            ca_bundle_path: x.ca_bundle_path.clone().filter(|p| !p.as_os_str().is_empty()).ok_or_else(|| {
                anyhow::anyhow!(
                    "node_attestation.x509pop.ca_bundle_path in {file_name} is missing (the PEM file of the CAs that sign node certificates)"
                )
            })?,
        }),
    };
    let limits = file.limits.clone().unwrap_or_default();
    limits
        .check()
        .map_err(|e| anyhow::anyhow!("invalid {e} in {file_name}"))?;
    let bootstrap = bootstrap(file, &file_name)?;
    Ok(ServerConfig {
        data_dir,
        trust_domain,
        listen,
        admin_socket,
        ca,
        issuance,
        upstream,
        oidc_discovery,
        limits,
        bootstrap,
        x509pop,
        federation: file.federation.clone().unwrap_or_default(),
    })
}

/// The CA's lifetimes and those of what it issues. OpenBao's block may set the intermediate's
/// lifetime in place of `intermediate_ttl`, but not alongside it: which should win is a guess.
fn lifetimes(
    args: &ServerRunArgs,
    file: &ServerFileConfig,
    file_path: Option<&Path>,
    file_name: &str,
    openbao: Option<&OpenBaoFile>,
) -> anyhow::Result<(CaLifetimes, IssuanceSettings)> {
    let dur = |flag: &str, key: &str, a: &Option<String>, f: &Option<String>, default: &str| {
        let (v, from_flag) = pick(a, f, default);
        parse_duration(&source_name(flag, key, file_path, from_flag), &v)
    };
    let mut intermediate_ttl = file.intermediate_ttl.clone();
    let mut intermediate_key = "intermediate_ttl";
    if let Some(t) = openbao.and_then(|o| o.intermediate_ttl.clone()) {
        if file.intermediate_ttl.is_some() || args.intermediate_ttl.is_some() {
            anyhow::bail!(
                "upstream_authority.openbao.intermediate_ttl in {file_name} and --intermediate-ttl (or intermediate_ttl) both set the intermediate's lifetime; keep one"
            );
        }
        intermediate_ttl = Some(t);
        intermediate_key = "upstream_authority.openbao.intermediate_ttl";
    }
    let ca = CaLifetimes {
        root: dur(
            "--root-ttl",
            "root_ttl",
            &args.root_ttl,
            &file.root_ttl,
            "8760h",
        )?,
        intermediate: dur(
            "--intermediate-ttl",
            intermediate_key,
            &args.intermediate_ttl,
            &intermediate_ttl,
            "24h",
        )?,
    };
    let issuance = IssuanceSettings {
        default_x509_ttl: dur(
            "--default-x509-ttl",
            "default_x509_ttl",
            &args.default_x509_ttl,
            &file.default_x509_ttl,
            "1h",
        )?,
        default_jwt_ttl: dur(
            "--default-jwt-ttl",
            "default_jwt_ttl",
            &args.default_jwt_ttl,
            &file.default_jwt_ttl,
            "5m",
        )?,
        node_svid_ttl: dur(
            "--node-svid-ttl",
            "node_svid_ttl",
            &args.node_svid_ttl,
            &file.node_svid_ttl,
            "1h",
        )?,
        join_token_ttl: dur(
            "--join-token-ttl",
            "join_token_ttl",
            &args.join_token_ttl,
            &file.join_token_ttl,
            "10m",
        )?,
    };
    Ok((ca, issuance))
}

/// The OIDC discovery listener, if the file asks for one; it must be on loopback, since it
/// serves plain HTTP.
fn oidc_discovery(
    file: &ServerFileConfig,
    file_name: &str,
) -> anyhow::Result<Option<OidcDiscoveryConfig>> {
    let Some(o) = &file.oidc_discovery else {
        return Ok(None);
    };
    let key = format!("oidc_discovery.listen in {file_name}");
    let text = o
        .listen
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{key} is missing (e.g. \"127.0.0.1:8444\")"))?;
    let listen: SocketAddr = text
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid {key} {text:?}: {e} (use IP:PORT)"))?;
    if !listen.ip().is_loopback() {
        anyhow::bail!(
            "invalid {key} {text:?}: OIDC discovery is plain HTTP and listens on loopback only"
        );
    }
    Ok(Some(OidcDiscoveryConfig {
        listen,
        issuer: o.issuer.clone(),
    }))
}

/// The flag's value, else the file's, else the default; and whether the flag supplied it.
fn pick(flag: &Option<String>, file: &Option<String>, default: &str) -> (String, bool) {
    match (flag, file) {
        (Some(v), _) => (v.clone(), true),
        (None, Some(v)) => (v.clone(), false),
        (None, None) => (default.to_owned(), true),
    }
}

/// Refuses lifetimes that cannot work together: an intermediate must outlive the SVIDs it
/// signs by default, and the root must outlive the intermediate.
fn check_lifetimes(
    ca: &CaLifetimes,
    issuance: &IssuanceSettings,
    upstream: bool,
) -> anyhow::Result<()> {
    let h = |d: Duration| humantime::format_duration(d).to_string();
    // With an upstream there is no local root; OpenBao caps the intermediate at its root.
    if !upstream && ca.intermediate >= ca.root {
        anyhow::bail!(
            "--intermediate-ttl {} must be shorter than --root-ttl {}",
            h(ca.intermediate),
            h(ca.root)
        );
    }
    let max = ca.intermediate / 2;
    for (flag, d) in [
        ("--default-x509-ttl", issuance.default_x509_ttl),
        ("--default-jwt-ttl", issuance.default_jwt_ttl),
        ("--node-svid-ttl", issuance.node_svid_ttl),
    ] {
        if d > max {
            anyhow::bail!(
                "{flag} {} is longer than half of --intermediate-ttl ({}); shorten it or raise --intermediate-ttl",
                h(d),
                h(max)
            );
        }
    }
    Ok(())
}

/// Runs `agentmesh server ...`.
///
/// # Errors
/// Bad settings, or the server failing to start.
pub async fn run(cmd: ServerCommand) -> anyhow::Result<()> {
    match cmd {
        ServerCommand::Run(args) => run_server(args).await,
    }
}

async fn run_server(args: ServerRunArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => ServerFileConfig::load(p)?,
        None => ServerFileConfig::default(),
    };
    let env_socket = std::env::var_os(ADMIN_SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let cfg = resolve(&args, &file, args.config.as_deref(), env_socket)?;
    let data_dir = cfg.data_dir.clone();
    let mut signals = Signals::new()?;
    let server = agentmesh_server::start(cfg)
        .await
        .with_context(|| format!("server did not start (data dir {})", data_dir.display()))?;
    let signal = signals.recv().await;
    tracing::info!(signal, "shutting down");
    server.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> anyhow::Result<ServerFileConfig> {
        ServerFileConfig::parse(text, Path::new("/etc/agentmesh/server.toml"))
    }

    #[test]
    fn defaults_match_the_contract() {
        let cfg = resolve(
            &ServerRunArgs::default(),
            &ServerFileConfig::default(),
            None,
            None,
        )
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from(".agentmesh"));
        assert_eq!(cfg.trust_domain.to_string(), "agentmesh.local");
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(cfg.admin_socket, PathBuf::from(".agentmesh/admin.sock"));
        assert_eq!(cfg.issuance.default_x509_ttl, Duration::from_secs(3600));
        assert_eq!(cfg.issuance.default_jwt_ttl, Duration::from_secs(300));
        assert_eq!(cfg.issuance.node_svid_ttl, Duration::from_secs(3600));
        assert_eq!(cfg.issuance.join_token_ttl, Duration::from_secs(600));
        assert_eq!(cfg.ca.root, Duration::from_secs(8760 * 3600));
        assert_eq!(cfg.ca.intermediate, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn admin_socket_is_flag_then_file_then_env_then_data_dir() {
        let env = Some(PathBuf::from("/env.sock"));
        let f = file("admin_socket = \"/file.sock\"\ndata_dir = \"/d\"").unwrap();
        let flag = ServerRunArgs {
            admin_socket: Some(PathBuf::from("/flag.sock")),
            ..Default::default()
        };
        let none = ServerRunArgs::default();
        let empty = ServerFileConfig {
            data_dir: Some(PathBuf::from("/d")),
            ..Default::default()
        };
        let sock = |a, f, e| resolve(a, f, None, e).unwrap().admin_socket;
        assert_eq!(sock(&flag, &f, env.clone()), PathBuf::from("/flag.sock"));
        assert_eq!(sock(&none, &f, env.clone()), PathBuf::from("/file.sock"));
        assert_eq!(sock(&none, &empty, env), PathBuf::from("/env.sock"));
        assert_eq!(sock(&none, &empty, None), PathBuf::from("/d/admin.sock"));
    }

    #[test]
    fn flags_override_the_config_file() {
        let f = file(
            "data_dir = \"/srv/am\"\ntrust_domain = \"file.example\"\nlisten = \"127.0.0.1:9000\"\n\
             default_x509_ttl = \"30m\"\njoin_token_ttl = \"2m\"\n",
        )
        .unwrap();
        let args = ServerRunArgs {
            trust_domain: Some("flag.example".into()),
            default_x509_ttl: Some("10m".into()),
            ..Default::default()
        };
        let cfg = resolve(&args, &f, None, None).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/am"));
        assert_eq!(cfg.trust_domain.to_string(), "flag.example");
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(cfg.issuance.default_x509_ttl, Duration::from_secs(600));
        assert_eq!(cfg.issuance.join_token_ttl, Duration::from_secs(120));
    }

    #[test]
    fn the_limits_table_reaches_the_server_and_a_bad_value_is_named() {
        let f = file("[limits]\nmax_connections = 10\nheader_timeout = \"4s\"\n").unwrap();
        let cfg = resolve(&ServerRunArgs::default(), &f, None, None).unwrap();
        assert_eq!(cfg.limits.max_connections, 10);
        assert_eq!(cfg.limits.header_timeout, Duration::from_secs(4));
        let cfg = resolve(&ServerRunArgs::default(), &file("").unwrap(), None, None).unwrap();
        assert_eq!(
            cfg.limits,
            agentmesh_proto::limits::ListenerLimits::default()
        );
        let f = file("[limits]\nmax_header_bytes = 100\n").unwrap();
        let err = resolve(&ServerRunArgs::default(), &f, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.max_header_bytes"), "{err}");
        let err = file("[limits]\nmax_conections = 10\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_conections"), "{err}");
    }

    #[test]
    fn an_unknown_config_key_is_named_with_the_file() {
        let err = file("data_dir = \"/x\"\ndefault_ttl = \"1h\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/agentmesh/server.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("default_ttl"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn malformed_toml_is_one_line_naming_the_file() {
        let err = file("listen = \n").unwrap_err().to_string();
        assert!(
            err.starts_with("config file /etc/agentmesh/server.toml"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let err = file("listen = 8081\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn bad_durations_name_the_flag_or_the_file_key() {
        let args = ServerRunArgs {
            default_jwt_ttl: Some("5 minutes-ish".into()),
            ..Default::default()
        };
        let err = resolve(&args, &ServerFileConfig::default(), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid --default-jwt-ttl \"5 minutes-ish\""),
            "{err}"
        );

        let f = file("node_svid_ttl = \"soon\"").unwrap();
        let path = Path::new("/etc/agentmesh/server.toml");
        let err = resolve(&ServerRunArgs::default(), &f, Some(path), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid node_svid_ttl in /etc/agentmesh/server.toml \"soon\""),
            "{err}"
        );
    }

    #[test]
    fn bad_addresses_and_trust_domains_are_refused() {
        let args = ServerRunArgs {
            listen: Some("localhost:8081".into()),
            ..Default::default()
        };
        let err = resolve(&args, &ServerFileConfig::default(), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid --listen \"localhost:8081\""),
            "{err}"
        );
        let args = ServerRunArgs {
            trust_domain: Some("Example.org".into()),
            ..Default::default()
        };
        let err = resolve(&args, &ServerFileConfig::default(), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid --trust-domain \"Example.org\""),
            "{err}"
        );
    }

    #[test]
    fn the_x509pop_table_names_the_ca_bundle_and_refuses_other_keys() {
        let path = Path::new("/etc/agentmesh/server.toml");
        let f =
            file("[node_attestation.x509pop]\nca_bundle_path = \"/etc/agentmesh/node-ca.pem\"\n")
                .unwrap();
        let cfg = resolve(&ServerRunArgs::default(), &f, Some(path), None).unwrap();
        assert_eq!(
            cfg.x509pop.unwrap().ca_bundle_path,
            PathBuf::from("/etc/agentmesh/node-ca.pem")
        );
        let cfg = resolve(
            &ServerRunArgs::default(),
            &ServerFileConfig::default(),
            None,
            None,
        )
        .unwrap();
        assert_eq!(cfg.x509pop, None);
        let f = file("[node_attestation.x509pop]\n").unwrap();
        let err = resolve(&ServerRunArgs::default(), &f, Some(path), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "node_attestation.x509pop.ca_bundle_path in /etc/agentmesh/server.toml is missing"
            ),
            "{err}"
        );
        for bad in [
            "[node_attestation.x509pop]\nca_bundle = \"/x\"\n",
            "[node_attestation.tpm]\n",
        ] {
            let err = file(bad).unwrap_err().to_string();
            assert!(err.contains("unknown field"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_openbao_table_resolves_with_defaults_and_names_each_bad_key() {
        let path = Path::new("/etc/agentmesh/server.toml");
        let f = file(
            "[upstream_authority.openbao]\naddress = \"http://127.0.0.1:8200\"\ntoken_file = \"/t\"\nintermediate_ttl = \"2h\"\n\
             [oidc_discovery]\nlisten = \"127.0.0.1:8444\"\n",
        )
        .unwrap();
        let cfg = resolve(&ServerRunArgs::default(), &f, Some(path), None).unwrap();
        let up = cfg.upstream.unwrap();
        assert_eq!(up.pki_mount, "pki");
        assert_eq!(
            up.auth,
            OpenBaoAuth::Token {
                token_file: PathBuf::from("/t")
            }
        );
        assert_eq!(cfg.ca.intermediate, Duration::from_secs(7200));
        assert_eq!(
            cfg.oidc_discovery.unwrap().listen.to_string(),
            "127.0.0.1:8444"
        );

        for (table, want) in [
            (
                "token_file = \"/t\"",
                "upstream_authority.openbao.address in /etc/agentmesh/server.toml is missing",
            ),
            (
                "address = \"http://h:1\"",
                "upstream_authority.openbao.token_file",
            ),
            (
                "address = \"http://h:1\"\nauth = \"kerberos\"",
                "upstream_authority.openbao.auth",
            ),
            (
                "address = \"http://h:1\"\nauth = \"approle\"\nsecret_id_file = \"/s\"",
                "upstream_authority.openbao.role_id",
            ),
            (
                "address = \"http://h:1\"\nauth = \"approle\"\nrole_id = \"r\"\nsecret_id_file = \"/s\"\ntoken_file = \"/t\"",
                "token_file",
            ),
            (
                "address = \"http://h:1\"\ntoken_file = \"/t\"\npki_mount = \"a b\"",
                "upstream_authority.openbao.pki_mount",
            ),
        ] {
            let f = file(&format!("[upstream_authority.openbao]\n{table}\n")).unwrap();
            let e = resolve(&ServerRunArgs::default(), &f, Some(path), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{table}: {e}");
        }
        let e = file("[upstream_authority.openbao]\naddres = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("addres") && e.contains("line 2"), "{e}");
        let e = file("[upstream_authority.vault]\naddress = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vault"), "{e}");
        let f = file("[oidc_discovery]\nlisten = \"0.0.0.0:8444\"\n").unwrap();
        let e = resolve(&ServerRunArgs::default(), &f, Some(path), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("oidc_discovery.listen") && e.contains("loopback"),
            "{e}"
        );
    }

    #[test]
    fn lifetimes_that_cannot_work_together_are_refused() {
        let args = ServerRunArgs {
            default_x509_ttl: Some("13h".into()),
            ..Default::default()
        };
        let err = resolve(&args, &ServerFileConfig::default(), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--default-x509-ttl"), "{err}");
    }
}
