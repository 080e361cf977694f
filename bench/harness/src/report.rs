//! Markdown tables and the small statistics the benchmarks need.

use std::fmt;
use std::time::Duration;

/// One benchmark's result: a markdown table with a heading and notes under it.
pub struct Table {
    title: String,
    rows: Vec<[String; 5]>,
    notes: Vec<String>,
}

impl Table {
    /// An empty table under `title`.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row: metric, agentmesh, peer, ratio, target.
    pub fn row(
        &mut self,
        metric: impl Into<String>,
        ours: impl Into<String>,
        peer: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
    ) {
        self.rows.push([
            metric.into(),
            ours.into(),
            peer.into(),
            ratio.into(),
            target.into(),
        ]);
    }

    /// Adds a line under the table.
    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "### {}\n", self.title)?;
        writeln!(f, "| metric | agentmesh | peer | ratio | target |")?;
        writeln!(f, "|---|---:|---:|---:|---|")?;
        for r in &self.rows {
            writeln!(
                f,
                "| {} | {} | {} | {} | {} |",
                r[0], r[1], r[2], r[3], r[4]
            )?;
        }
        if !self.notes.is_empty() {
            writeln!(f)?;
            for n in &self.notes {
                writeln!(f, "{n}")?;
            }
        }
        writeln!(f)
    }
}

/// `ours / peer` as `0.42×`, with two significant digits below 0.1 (`0.014×`, `0.00046×`),
/// or `n/a` when the peer is zero.
pub fn ratio(ours: f64, peer: f64) -> String {
    if peer > 0.0 && ours.is_finite() {
        let r = ours / peer;
        let decimals = if r > 0.0 && r < 0.1 {
            (-r.log10().floor() as usize + 1).min(6)
        } else {
            2
        };
        format!("{r:.decimals$}×")
    } else {
        "n/a".into()
    }
}

/// A count with thousands separators: `12,345`.
pub fn count(n: f64) -> String {
    let whole = n.round().max(0.0) as u64;
    let digits = whole.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A size in MiB, `12.3 MiB` (`/proc` reports KiB; [`crate::scale::memory`] divides).
pub fn mib(m: f64) -> String {
    format!("{m:.1} MiB")
}

/// A latency in microseconds, `123 µs`, or milliseconds from 10 ms on.
pub fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The mean of samples.
pub fn mean(samples: &[Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.iter().sum::<Duration>() / samples.len() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_separators() {
        for (n, want) in [
            (0.0, "0"),
            (999.0, "999"),
            (1000.0, "1,000"),
            (1234567.4, "1,234,567"),
        ] {
            assert_eq!(count(n), want);
        }
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(quantile(&s, 0.5), Duration::from_micros(50));
        assert_eq!(quantile(&s, 0.99), Duration::from_micros(99));
        assert_eq!(quantile(&s, 1.0), Duration::from_micros(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn ratio_of_zero_peer_is_not_a_number() {
        assert_eq!(ratio(1.0, 0.0), "n/a");
        assert_eq!(ratio(1.0, 4.0), "0.25×");
        assert_eq!(ratio(0.436, 30.6), "0.014×");
        assert_eq!(ratio(0.173, 375.5), "0.00046×");
        assert_eq!(ratio(0.0, 1.0), "0.00×");
    }
}
