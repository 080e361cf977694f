//! Live decisions: every allow and deny a proxy makes, as the same JSON object its access log
//! line carries, for subscribers such as the frontend's Security Inspector.
//!
//! A process has one feed. [`publish`] numbers each line (`seq`, from 1, per process) and
//! keeps the last [`RECENT`] of them, so a subscriber that connects late, or reconnects, asks
//! for what it missed with [`subscribe_after`] instead of getting duplicates. Publishing never
//! waits: a subscriber that falls more than [`CHANNEL`] lines behind loses the oldest ones and
//! is told how many (`Lagged`), the request path never notices.
//!
//! ```
//! use agentmesh_telemetry::decisions;
//! decisions::publish(br#"{"decision":"deny","reason":"no intention"}"#);
//! let (recent, _live) = decisions::subscribe_after(0);
//! let last = recent.last().unwrap();
//! assert!(std::str::from_utf8(last).unwrap().starts_with("{\"seq\":"));
//! ```

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::broadcast;

/// How many recent lines a new subscriber can catch up on.
pub const RECENT: usize = 512;
/// How far a live subscriber may fall behind before it loses lines.
pub const CHANNEL: usize = 1024;

/// Errors of this module: publishing and subscribing cannot fail; the enum keeps the
/// module's shape uniform.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecisionsError {
    /// A line that is not a JSON object cannot be numbered.
    #[error("a decision line must be one JSON object")]
    NotAnObject,
    /// A reader's `?after=` is not a decision number.
    #[error("after= must be a decision number (the `seq` of the last line read)")]
    BadCursor,
}

struct Feed {
    /// (seq, numbered line), oldest first.
    recent: Mutex<(u64, VecDeque<(u64, Bytes)>)>,
    live: broadcast::Sender<Bytes>,
}

fn feed() -> &'static Feed {
    static FEED: OnceLock<Feed> = OnceLock::new();
    FEED.get_or_init(|| Feed {
        recent: Mutex::new((0, VecDeque::with_capacity(RECENT))),
        live: broadcast::channel(CHANNEL).0,
    })
}

/// Numbers `line` (one JSON object, no trailing newline) as `{"seq":N,...}` and hands it to
/// every subscriber. Returns the number given, or 0 if the line was not an object.
pub fn publish(line: &[u8]) -> u64 {
    let line = line.trim_ascii();
    let Some(rest) = line.strip_prefix(b"{") else {
        tracing::debug!(error = %DecisionsError::NotAnObject, "decision not published");
        return 0;
    };
    let f = feed();
    let mut recent = f.recent.lock().unwrap_or_else(|p| p.into_inner());
    recent.0 += 1;
    let seq = recent.0;
    let mut numbered = Vec::with_capacity(line.len() + 24);
    numbered.extend_from_slice(format!("{{\"seq\":{seq}").as_bytes());
    if rest.first() != Some(&b'}') {
        numbered.push(b',');
    }
    numbered.extend_from_slice(rest);
    numbered.push(b'\n');
    let numbered = Bytes::from(numbered);
    if recent.1.len() == RECENT {
        recent.1.pop_front();
    }
    recent.1.push_back((seq, numbered.clone()));
    // Sent under the lock so a subscriber never sees a line both in its catch-up and live.
    let _ = f.live.send(numbered);
    seq
}

/// The recent lines numbered above `after` (all of them for 0, or when `after` is from
/// before this process started), then every line published from now on. Each line ends in
/// `\n`.
pub fn subscribe_after(after: u64) -> (Vec<Bytes>, broadcast::Receiver<Bytes>) {
    let f = feed();
    let recent = f.recent.lock().unwrap_or_else(|p| p.into_inner());
    // A number from the future means the publisher restarted: start over.
    let after = if after > recent.0 { 0 } else { after };
    let catch_up = recent
        .1
        .iter()
        .filter(|(seq, _)| *seq > after)
        .map(|(_, l)| l.clone())
        .collect();
    (catch_up, f.live.subscribe())
}

/// [`subscribe_after`] as one stream: the catch-up lines, then each new line. A reader that
/// falls behind skips what it missed (the `seq` gap shows it) rather than slowing the
/// publisher. Every live feed (a proxy's admin `/decisions`, an SDK agent's) is this stream.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use agentmesh_telemetry::decisions;
/// use futures::StreamExt as _;
/// let seq = decisions::publish(br#"{"decision":"allow"}"#);
/// let mut lines = Box::pin(decisions::stream_after(seq - 1));
/// assert!(lines.next().await.unwrap().starts_with(format!("{{\"seq\":{seq},").as_bytes()));
/// # }
/// ```
pub fn stream_after(after: u64) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    let (catch_up, live) = subscribe_after(after);
    let tail = futures::stream::unfold(live, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(line) => return Some((line, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    futures::StreamExt::chain(futures::stream::iter(catch_up), tail)
}

/// The `after=N` of a `/decisions` query string: 0 when absent.
///
/// # Errors
/// [`DecisionsError::BadCursor`] when it is there but not a number.
///
/// ```
/// use agentmesh_telemetry::decisions::parse_after;
/// assert_eq!(parse_after(Some("after=7")).unwrap(), 7);
/// assert_eq!(parse_after(None).unwrap(), 0);
/// assert!(parse_after(Some("after=yesterday")).is_err());
/// ```
pub fn parse_after(query: Option<&str>) -> Result<u64, DecisionsError> {
    match query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("after="))) {
        None => Ok(0),
        Some(n) => n.parse().map_err(|_| DecisionsError::BadCursor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_numbered_kept_and_streamed_once() {
        let first = publish(br#"{"decision":"allow"}"#);
        let (before, mut live) = subscribe_after(first - 1);
        assert_eq!(before.len(), 1);
        assert_eq!(
            before[0],
            Bytes::from(format!("{{\"seq\":{first},\"decision\":\"allow\"}}\n"))
        );
        let second = publish(b"{}");
        assert!(second > first);
        let got = live.recv().await.unwrap();
        assert_eq!(got, Bytes::from(format!("{{\"seq\":{second}}}\n")));
        // Caught up past `second`: nothing old again.
        let (after, _) = subscribe_after(second);
        assert!(after.iter().all(|l| !l.starts_with(b"{\"seq\":1,")));
        // From the future (the publisher restarted): everything recent.
        let (all, _) = subscribe_after(u64::MAX);
        assert!(all.len() >= 2);
    }

    #[test]
    fn a_line_that_is_not_an_object_is_not_published() {
        assert_eq!(publish(b"[1,2]"), 0);
        assert_eq!(publish(b""), 0);
    }
}
