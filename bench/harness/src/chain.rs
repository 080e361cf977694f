//! `chain`: what it costs per request to verify a user token with a 3-hop delegation chain plus
//! one response JWS, against the ECDSA P-256 verifications that work needs at `openssl speed`'s
//! rate, measured in the same run.
//!
//! Everything is in process and single-threaded: a throwaway CA (`agentmesh_sdk::testing`)
//! mints real X509-SVIDs for the frontend and three agents; the frontend-format user token and
//! the links are made once, before the clock starts, and each timed request runs
//! `delegation::verify_chain` (user token by `x5c` against the bundle, then every link) and
//! `jws::verify` on the last agent's signed response, exactly as a gateway would.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agentmesh_sdk::delegation::{self, ChainConfig};
use agentmesh_sdk::testing::{TestCa, user_token};
use agentmesh_sdk::{SpiffeId, X509Source, jws};
use anyhow::{Context, bail};

use crate::load::best_of;
use crate::mint::{openssl_speed, ring_speed};
use crate::report::{Table, ratio};

/// Rounds per measurement; each keeps its fastest.
const ROUNDS: usize = 5;
/// Seconds `openssl speed` (and ring's own loop) runs.
const SPEED_SECONDS: f64 = 3.0;
const FRONTEND: &str = "spiffe://bench.example/frontend";
const AGENTS: [&str; 3] = [
    "spiffe://bench.example/planner",
    "spiffe://bench.example/researcher",
    "spiffe://bench.example/writer",
];
const GATEWAY: &str = "spiffe://bench.example/gateway";

/// What one timed loop verifies per iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// User token + 3 links + the response JWS: one request at the gateway.
    Request,
    /// User token + 3 links.
    Chain,
    /// The response JWS alone.
    Response,
}

/// The inputs of one request, made before the clock starts.
struct Request {
    config: ChainConfig,
    token: String,
    links: String,
    response: String,
    last: SpiffeId,
}

impl Request {
    fn new() -> anyhow::Result<(Self, usize)> {
        let ca = TestCa::try_new("bench.example")?;
        let frontend = ca.source(FRONTEND);
        let agents: Vec<Arc<X509Source>> = AGENTS.iter().map(|id| ca.source(id)).collect();
        let token = user_token(
            &frontend,
            serde_json::json!({"sub": "dev:alice", "email": "alice@example.org",
                               "name": "Alice", "idp": "dev", "aud": "research-team"}),
            300,
        );
        let mut links = String::new();
        for (i, agent) in agents.iter().enumerate() {
            let next: SpiffeId = AGENTS.get(i + 1).copied().unwrap_or(GATEWAY).parse()?;
            links = delegation::add_link(agent, &token, &links, &next)?;
        }
        // About the size of an agent's JSON answer.
        let body = serde_json::json!({"answer": "x".repeat(900), "agent": AGENTS[2]}).to_string();
        let response = jws::sign(&agents[2], body.as_bytes())?;
        let config = ChainConfig::new(ca.roots(), FRONTEND.parse()?, "research-team")
            .with_me(GATEWAY.parse()?);
        // One x5c chain per signed element (token, 3 links, response), each the same length.
        let x5c_len = frontend.current().svid.chain.len();
        let request = Self {
            config,
            token,
            links,
            response,
            last: AGENTS[2].parse()?,
        };
        // The work verifies before it is timed.
        let chain = request.verify_chain()?;
        if chain.hops.len() != AGENTS.len() {
            bail!("the bench chain verified with {} hops", chain.hops.len());
        }
        request.verify_response()?;
        Ok((request, x5c_len))
    }

    fn verify_chain(&self) -> anyhow::Result<delegation::VerifiedChain> {
        Ok(delegation::verify_chain(
            &self.token,
            &self.links,
            &self.config,
            Some(&self.last),
            SystemTime::now(),
        )?)
    }

    fn verify_response(&self) -> anyhow::Result<()> {
        jws::verify(
            &self.response,
            &self.config.roots,
            &self.last,
            SystemTime::now(),
        )?;
        Ok(())
    }

    /// Mean time per iteration of `part` over `iterations`.
    fn time(&self, part: Part, iterations: usize) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for _ in 0..iterations {
            match part {
                Part::Request => {
                    black_box(self.verify_chain()?);
                    self.verify_response()?;
                }
                Part::Chain => {
                    black_box(self.verify_chain()?);
                }
                Part::Response => self.verify_response()?,
            }
        }
        Ok(start.elapsed() / u32::try_from(iterations.max(1)).unwrap_or(u32::MAX))
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Runs the benchmark: `iterations` requests per round, the best of [`ROUNDS`] rounds.
pub fn run(iterations: usize) -> anyhow::Result<Table> {
    let (request, x5c_len) = Request::new()?;
    // Per signed element: x5c_len certificate signatures (leaf by intermediate, intermediate
    // by root) and the JWS itself.
    let per_element = x5c_len + 1;
    let chain_elements = 1 + AGENTS.len();
    let chain_verifies = per_element * chain_elements;
    let request_verifies = chain_verifies + per_element;

    // Warm caches and the allocator.
    request.time(Part::Request, iterations.min(200))?;
    let parts = [Part::Request, Part::Chain, Part::Response];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("a tokio runtime")?;
    let best = runtime.block_on(best_of(
        &parts,
        ROUNDS,
        |part| {
            let timed = request.time(part, iterations);
            async move { timed }
        },
        |run, best| run < best,
    ))?;
    let [full, chain, response] = best[..] else {
        bail!("best_of returned {} results for 3 parts", best.len());
    };
    let ring = ring_speed(SPEED_SECONDS)?;
    let openssl = openssl_speed(SPEED_SECONDS)?;
    let per_verify = Duration::from_secs_f64(1.0 / openssl.verify);
    let ring_per_verify = Duration::from_secs_f64(1.0 / ring.verify);
    let floor = |n: usize| per_verify * u32::try_from(n).unwrap_or(u32::MAX);

    let mut t = Table::new(
        "chain — verify a user token + 3-hop delegation chain + 1 response JWS, per request, one core",
    );
    t.row(
        format!(
            "per request: token + 3 links + response JWS ({request_verifies} ECDSA verifications; \
             peer: {request_verifies} × openssl verify)"
        ),
        us(full),
        us(floor(request_verifies)),
        ratio(full.as_secs_f64(), floor(request_verifies).as_secs_f64()),
        "",
    );
    t.row(
        format!(
            "token + 3 links only, `delegation::verify_chain` ({chain_verifies} verifications)"
        ),
        us(chain),
        us(floor(chain_verifies)),
        ratio(chain.as_secs_f64(), floor(chain_verifies).as_secs_f64()),
        "",
    );
    t.row(
        format!("response JWS only, `jws::verify` ({per_element} verifications)"),
        us(response),
        us(floor(per_element)),
        ratio(response.as_secs_f64(), floor(per_element).as_secs_f64()),
        "",
    );
    t.row(
        "one ECDSA P-256 verify: ring (agentmesh's library) vs openssl",
        format!("{:.1} µs", ring_per_verify.as_secs_f64() * 1e6),
        format!("{:.1} µs", per_verify.as_secs_f64() * 1e6),
        ratio(ring_per_verify.as_secs_f64(), per_verify.as_secs_f64()),
        "",
    );
    t.row(
        format!("per request vs {request_verifies} × ring verify (the pure-signature floor with our own library)"),
        us(full),
        us(ring_per_verify * u32::try_from(request_verifies).unwrap_or(u32::MAX)),
        ratio(
            full.as_secs_f64(),
            ring_per_verify.as_secs_f64() * request_verifies as f64,
        ),
        "",
    );
    t.note(format!(
        "Single thread, {iterations} requests per round, fastest of {ROUNDS} rounds (the three \
         loops alternate). Each signed element (user token, 3 links, response) carries a \
         {x5c_len}-certificate `x5c` (leaf + intermediate) checked against a one-root bundle: \
         {x5c_len} certificate signatures + the JWS = {per_element} verifications, so \
         {request_verifies} per request. Peer: `openssl speed -seconds {} ecdsap256` verify/s in \
         the same run, as µs per verify × that count; ratio = agentmesh / peer (above 1× is the \
         cost of parsing, base64, JSON, SHA-256 and certificate checks beyond the signatures).",
        SPEED_SECONDS as u64
    ));
    Ok(t)
}
