//! `mint`: X.509-SVIDs minted per second on one thread (CSR verify + sign), against the P-256
//! crypto floor that `openssl speed` measures on the same machine in the same run.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use agentmesh_ca::{Authority, PrivateKey, build_csr, new_intermediate, new_root, verify_csr};
use agentmesh_spiffe::{SpiffeId, TrustDomain};
use anyhow::{Context, bail};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};

use crate::report::{Table, count, ratio};

/// Distinct CSRs (and SPIFFE IDs) cycled through by the timed loops. The node makes them, so
/// they are made before the clock starts.
const POOL: usize = 1000;
/// SPIRE's published minting figure, for reference only (not measured here).
const SPIRE_REFERENCE: &str = "~1,000";

/// Runs `op` on this thread for about `seconds`; returns operations per second.
fn rate(seconds: f64, mut op: impl FnMut(usize)) -> f64 {
    // Warm caches and the allocator first.
    for i in 0..POOL.min(200) {
        op(i);
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0usize;
    loop {
        for _ in 0..16 {
            op(n);
            n += 1;
        }
        let elapsed = start.elapsed();
        if elapsed >= budget {
            return n as f64 / elapsed.as_secs_f64();
        }
    }
}

/// ECDSA P-256 sign/s and verify/s as `openssl speed` reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OpensslSpeed {
    pub(crate) sign: f64,
    pub(crate) verify: f64,
}

/// Operations per second when every operation is one sign plus one verify.
fn floor(sign: f64, verify: f64) -> f64 {
    1.0 / (1.0 / sign + 1.0 / verify)
}

/// Finds the `nistp256` line of `openssl speed ecdsap256` output; its last two columns are
/// sign/s and verify/s.
fn parse_openssl_speed(stdout: &str) -> Option<OpensslSpeed> {
    let line = stdout.lines().find(|l| l.contains("(nistp256)"))?;
    let mut cols = line.split_whitespace().rev();
    let verify = cols.next()?.parse().ok()?;
    let sign = cols.next()?.parse().ok()?;
    Some(OpensslSpeed { sign, verify })
}

/// Runs `openssl speed -seconds S ALGS...` and returns its stdout.
pub(crate) fn run_openssl_speed(seconds: f64, algorithms: &[&str]) -> anyhow::Result<String> {
    let secs = (seconds.round() as u64).max(1).to_string();
    let out = Command::new("openssl")
        .args(["speed", "-seconds", &secs])
        .args(algorithms)
        .output()
        .context("running `openssl speed` (bench/run installs openssl when it is missing)")?;
    if !out.status.success() {
        bail!(
            "`openssl speed` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn openssl_speed(seconds: f64) -> anyhow::Result<OpensslSpeed> {
    let stdout = run_openssl_speed(seconds, &["ecdsap256"])?;
    parse_openssl_speed(&stdout)
        .with_context(|| format!("no nistp256 line in `openssl speed` output:\n{stdout}"))
}

/// The same floor with ring, the library agentmesh signs and verifies with.
pub(crate) fn ring_speed(seconds: f64) -> anyhow::Result<OpensslSpeed> {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
        .map_err(|_| anyhow::anyhow!("ring could not generate a key"))?;
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("ring could not load its own key"))?;
    // About the size of an X.509-SVID's to-be-signed part.
    let msg = vec![0x5a_u8; 450];
    let sig = pair
        .sign(&rng, &msg)
        .map_err(|_| anyhow::anyhow!("ring could not sign"))?;
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        pair.public_key().as_ref().to_vec(),
    );
    let sign = rate(seconds, |_| {
        black_box(pair.sign(&rng, black_box(&msg)).is_ok());
    });
    let verify = rate(seconds, |_| {
        black_box(public.verify(black_box(&msg), sig.as_ref()).is_ok());
    });
    Ok(OpensslSpeed { sign, verify })
}

/// Runs the benchmark; `seconds` is the length of each timed loop.
pub fn run(seconds: f64) -> anyhow::Result<Table> {
    let td: TrustDomain = "bench.example".parse().context("the bench trust domain")?;
    let now = SystemTime::now();
    let root_key = PrivateKey::generate()?;
    let root = new_root(&td, &root_key, Duration::from_secs(30 * 86_400), now)?;
    let int_key = PrivateKey::generate()?;
    let int = new_intermediate(
        &td,
        &int_key,
        Duration::from_secs(86_400),
        now,
        &root,
        &root_key,
    )?;
    let authority = Authority::new(&td, int, int_key)?;
    let ttl = Duration::from_secs(3600);

    let mut csrs = Vec::with_capacity(POOL);
    let mut ids = Vec::with_capacity(POOL);
    for i in 0..POOL {
        csrs.push(build_csr(&PrivateKey::generate()?)?);
        ids.push(
            format!("spiffe://bench.example/workload/{i}")
                .parse::<SpiffeId>()
                .context("a bench SPIFFE ID")?,
        );
    }
    let keys = csrs
        .iter()
        .map(|c| verify_csr(c))
        .collect::<Result<Vec<_>, _>>()?;
    // Every pre-generated CSR really mints before anything is timed.
    let mut sizes = (0, 0);
    for (id, key) in ids.iter().zip(&keys) {
        let svid = authority.mint_x509_svid(id, key, ttl, &[], now)?;
        sizes = (
            svid.chain[0].len(),
            svid.chain.iter().map(Vec::len).sum::<usize>(),
        );
    }

    let full = rate(seconds, |i| {
        let k = i % POOL;
        let pk = verify_csr(&csrs[k]).expect("a pre-verified CSR verifies again");
        let svid = authority
            .mint_x509_svid(&ids[k], &pk, ttl, &[], SystemTime::now())
            .expect("minting succeeded before the timed loop");
        black_box(svid);
    });
    let verify_only = rate(seconds, |i| {
        black_box(verify_csr(&csrs[i % POOL]).is_ok());
    });
    let mint_only = rate(seconds, |i| {
        let k = i % POOL;
        black_box(
            authority
                .mint_x509_svid(&ids[k], &keys[k], ttl, &[], SystemTime::now())
                .is_ok(),
        );
    });
    let ring = ring_speed(seconds)?;
    let openssl = openssl_speed(seconds)?;
    let openssl_floor = floor(openssl.sign, openssl.verify);
    let ring_floor = floor(ring.sign, ring.verify);

    let mut t = Table::new("mint — X.509-SVIDs minted per second, one core");
    t.row(
        "SVIDs/s: verify_csr + mint_x509_svid (peer: openssl sign+verify floor)",
        count(full),
        count(openssl_floor),
        ratio(full, openssl_floor),
        "≥ 0.50×",
    );
    t.row(
        "SVIDs/s vs ring's own sign+verify floor",
        count(full),
        count(ring_floor),
        ratio(full, ring_floor),
        "",
    );
    t.row(
        "verify_csr only /s (peer: openssl verify/s)",
        count(verify_only),
        count(openssl.verify),
        ratio(verify_only, openssl.verify),
        "",
    );
    t.row(
        "mint_x509_svid only /s (peer: openssl sign/s)",
        count(mint_only),
        count(openssl.sign),
        ratio(mint_only, openssl.sign),
        "",
    );
    t.row(
        "ring ECDSA P-256 sign/s, verify/s (peer: openssl)",
        format!("{} / {}", count(ring.sign), count(ring.verify)),
        format!("{} / {}", count(openssl.sign), count(openssl.verify)),
        format!(
            "{} / {}",
            ratio(ring.sign, openssl.sign),
            ratio(ring.verify, openssl.verify)
        ),
        "",
    );
    t.row(
        "SPIRE server, published (reference, not measured)",
        count(full),
        SPIRE_REFERENCE,
        ratio(full, 1000.0),
        "",
    );
    t.note(format!(
        "Single thread, {seconds} s per loop, {POOL} distinct pre-generated CSRs. Peer: \
         `openssl speed -seconds {} ecdsap256` in the same run, floor = 1/(1/sign + 1/verify).",
        (seconds.round() as u64).max(1)
    ));
    t.note(format!(
        "A minted X.509-SVID here is {} bytes of DER; with its intermediate the chain is {} bytes; \
         the CSR is {} bytes.",
        sizes.0,
        sizes.1,
        csrs[0].len()
    ));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openssl_3_speed_output() {
        let out = "Doing 256 bits sign ecdsa's for 3s: 120000 256 bits ECDSA signs in 3.00s\n\
                   version: 3.0.19\n\
                   \x20                             sign    verify    sign/s verify/s\n\
                   \x20256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0  13000.5\n";
        assert_eq!(
            parse_openssl_speed(out),
            Some(OpensslSpeed {
                sign: 40000.0,
                verify: 13000.5
            })
        );
        assert_eq!(parse_openssl_speed("nothing here"), None);
    }

    #[test]
    fn floor_is_the_harmonic_combination() {
        assert!((floor(3.0, 6.0) - 2.0).abs() < 1e-9);
    }
}
