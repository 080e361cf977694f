//! W3C Trace Context: the `traceparent` header every hop continues, and the ids in it.

/// The header that carries the trace context between hops.
pub const TRACEPARENT: &str = "traceparent";

/// One span's place in a trace: the W3C trace context (`traceparent`, version 00) plus the
/// parent span it continues, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// This hop's span id, 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// The span this one continues: the caller's span id from its `traceparent`, or the local
    /// parent for a [`child`](Self::child). `None` for the first span of a trace.
    pub parent_span_id: Option<[u8; 8]>,
    /// Whether the parent came from another process (a `traceparent` header).
    pub parent_is_remote: bool,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Random non-zero bytes for trace and span ids. They come from a per-thread pool refilled
/// from the system RNG a few kilobytes at a time: one syscall per id would sit on every
/// request's path.
fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    const POOL: usize = 4096;
    thread_local! {
        static POOL_BYTES: std::cell::RefCell<(Vec<u8>, usize)> =
            const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    POOL_BYTES.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (pool, used) = &mut *guard;
        loop {
            if pool.len() != POOL || *used + N > POOL {
                pool.resize(POOL, 0);
                // The system RNG failing is not something to carry on from.
                ring::rand::SystemRandom::new()
                    .fill(pool)
                    .unwrap_or_else(|_| panic!("the system random number generator failed"));
                *used = 0;
            }
            let mut b = [0u8; N];
            b.copy_from_slice(&pool[*used..*used + N]);
            *used += N;
            if b.iter().any(|x| *x != 0) {
                return b;
            }
        }
    })
}

/// Lowercase hex only: the W3C spec refuses uppercase in `traceparent`.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Appends the lowercase hex of `b` to `s`.
fn push_hex(s: &mut String, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 0x0f)]));
    }
}

/// Lowercase hex of `b`, in one allocation (this runs for every request's access log line).
pub(crate) fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    push_hex(&mut s, b);
    s
}

/// The trace id and parent span id of a well-formed `traceparent`, and its flags.
fn parse_traceparent(header: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = header.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    // Version 00 has exactly four fields; later versions may append more.
    if version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    parse_hex::<1>(version)?;
    let trace_id = parse_hex::<16>(trace)?;
    let parent_id = parse_hex::<8>(parent)?;
    let flags = parse_hex::<1>(flags)?[0];
    if trace_id.iter().all(|x| *x == 0) || parent_id.iter().all(|x| *x == 0) {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

impl TraceContext {
    /// Starts a new trace (sampled), with this span as its root.
    pub fn start() -> Self {
        Self {
            trace_id: random(),
            span_id: random(),
            parent_span_id: None,
            parent_is_remote: false,
            flags: 1,
        }
    }

    /// Continues the caller's trace with a new span for this hop, whose parent is the
    /// caller's span, or starts a new trace (sampled) when the header is missing or
    /// malformed, as the W3C spec says to.
    pub fn continue_or_start(header: Option<&str>) -> Self {
        match header.and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id: random(),
                parent_span_id: Some(parent),
                parent_is_remote: true,
                flags,
            },
            None => Self::start(),
        }
    }

    /// A new span in the same trace whose parent is this one: for a call this span makes.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: random(),
            parent_span_id: Some(self.span_id),
            parent_is_remote: false,
            flags: self.flags,
        }
    }

    /// Whether the trace is sampled (flag bit 0): only sampled spans are recorded.
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// This span's id as 16 hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` header for the next hop: this trace, with this span as the parent.
    pub fn header(&self) -> String {
        // One allocation: this runs on every proxied request.
        let mut h = String::with_capacity(55);
        h.push_str("00-");
        push_hex(&mut h, &self.trace_id);
        h.push('-');
        push_hex(&mut h, &self.span_id);
        h.push('-');
        push_hex(&mut h, &[self.flags]);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_the_caller_as_parent() {
        let t = TraceContext::continue_or_start(Some(INCOMING));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_span_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(t.parent_is_remote);
        assert_ne!(
            t.span_id_hex(),
            "00f067aa0ba902b7",
            "a new span for this hop"
        );
        let next = t.header();
        assert_eq!(
            next,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", t.span_id_hex()),
            "the next hop's parent is this span"
        );
        // A later version with extra fields is parsed by the fields it shares with 00.
        let v1 = TraceContext::continue_or_start(Some(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-whatever",
        ));
        assert_eq!(v1.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!v1.is_sampled(), "the caller's flags are kept");
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bx-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "garbage",
            "é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let t = TraceContext::continue_or_start(Some(bad));
            assert_ne!(
                t.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
            assert_eq!(t.parent_span_id, None, "{bad}: a new trace has no parent");
            assert!(t.is_sampled(), "{bad}: a new trace is sampled");
            assert_eq!(t.header().len(), 55, "{bad}");
        }
        let fresh = TraceContext::continue_or_start(None);
        assert_eq!(fresh.flags, 1);
        assert_eq!(fresh.parent_span_id, None);
    }

    #[test]
    fn a_child_stays_in_the_trace_with_a_local_parent() {
        let root = TraceContext::start();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(child.parent_span_id, Some(root.span_id));
        assert!(!child.parent_is_remote);
        assert_ne!(child.span_id, root.span_id);
    }

    #[test]
    fn hex_is_lowercase_and_round_trips() {
        let id = [0x00, 0x0f, 0xa0, 0xff];
        assert_eq!(hex(&id), "000fa0ff");
        assert_eq!(parse_hex::<4>("000fa0ff"), Some(id));
    }
}
