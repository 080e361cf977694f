//! W3C trace context for the agents: continue the caller's trace, or start one at the entry
//! point, and hand each outgoing call a `traceparent` so the proxies and the next agent join
//! the same trace.

use ring::rand::{SecureRandom, SystemRandom};

/// The trace an incoming request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// This agent's span, 16 hex digits; the parent of every outgoing call.
    pub span_id: String,
    /// The caller's span, if the request came with a valid `traceparent`.
    pub parent_span_id: Option<String>,
    flags: String,
}

fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    // The system RNG does not fail on Linux; all-zero ids would be invalid, so retry.
    while SystemRandom::new().fill(&mut b).is_err() || b.iter().all(|x| *x == 0) {}
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        && s.bytes().any(|c| c != b'0')
}

impl Trace {
    /// Continues `traceparent` when it is valid (version 00), or starts a new trace.
    pub fn continue_or_start(traceparent: Option<&str>) -> Self {
        let parsed = traceparent.and_then(|h| {
            let mut parts = h.trim().split('-');
            let (v, t, p, f) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            (parts.next().is_none() && v == "00" && is_hex(t, 32) && is_hex(p, 16) && f.len() == 2)
                .then(|| (t.to_owned(), p.to_owned(), f.to_owned()))
        });
        match parsed {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id: random_hex::<8>(),
                parent_span_id: Some(parent),
                flags,
            },
            None => Self {
                trace_id: random_hex::<16>(),
                span_id: random_hex::<8>(),
                parent_span_id: None,
                flags: "01".into(),
            },
        }
    }

    /// The `traceparent` for a call this agent makes.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_anything_else_starts_a_trace() {
        let t = Trace::continue_or_start(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(
            t.header()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(!t.header().contains("00f067aa0ba902b7"));
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let t = Trace::continue_or_start(Some(bad));
            assert_ne!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(t.parent_span_id.is_none() && is_hex(&t.trace_id, 32));
        }
    }
}
