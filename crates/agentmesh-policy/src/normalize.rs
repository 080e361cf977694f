//! Requests in the form the app will see, before anything is decided about them.
//!
//! A rule on `/admin` means nothing if `/v1/../admin`, `//admin` or `/%61dmin` reach the same
//! handler without matching it (CVE-2024-10005 is this bug in Consul). So the path is
//! normalised first, the decision is made on the result, and the same result is what the app
//! receives. [`normalize_path`] is a pure function on the path string, so the sidecar, the SDK
//! layer and `intention check` decide on identical paths, and a fuzzer can call it directly.
//!
//! What normalisation does, in order:
//! 1. Percent-escapes are checked (`%` needs two hex digits) and those of unreserved characters
//!    (RFC 3986 2.3: letters, digits, `-`, `.`, `_`, `~`) are decoded; every other escape keeps
//!    its byte, written in uppercase hex, so `%3f` and `%3F` are one spelling.
//! 2. Escaped slashes and backslashes (`%2F`, `%5C`, and a raw `\`, which some frameworks read
//!    as `/`) follow [`EscapedSlashesAction`].
//! 3. Repeated slashes are merged, and dot-segments are resolved (RFC 3986 5.2.4). A path that
//!    would climb above `/` is refused rather than clamped, because an app that clamps
//!    differently would see another path.

use serde::{Deserialize, Serialize};

/// Why a request path is refused before any intention is checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/` (origin form).
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits: apps disagree on what it means.
    #[error("malformed percent-escape at byte {0}")]
    BadEscape(usize),
    /// A byte that has no place in a path (a control character, space, `?` or `#`).
    #[error("byte 0x{byte:02x} at {at} is not allowed in a path")]
    BadByte {
        /// The offending byte.
        byte: u8,
        /// Its offset.
        at: usize,
    },
    /// More `..` segments than there are segments above them.
    #[error("the path climbs above '/' with '..'")]
    AboveRoot,
    /// `%2F`, `%5C` or `\`, with `path_with_escaped_slashes_action = "reject_request"`.
    #[error(
        "the path holds an escaped slash or a backslash (%2F, %5C or \\), which path_with_escaped_slashes_action = \"reject_request\" refuses"
    )]
    EscapedSlash,
}

/// What to do with `%2F`, `%2f`, `%5C`, `%5c` and a raw `\` in a path; the values are Envoy's
/// `path_with_escaped_slashes_action` (its `unescape_and_redirect` is not offered).
///
/// The default is `reject_request`. Keeping them unchanged lets `/public%2F..%2Fadmin` pass a
/// rule as one segment and reach an app that decodes it into `/admin`; decoding them changes
/// the meaning of a path for apps that carry `/` inside a segment on purpose. Refusing is the
/// one choice that is safe for every app; an app that needs escaped slashes opts in to
/// `unescape_and_forward` (rules then see, and the app receives, real slashes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashesAction {
    /// Leave them as they are: rules see `%2F` as part of a segment. Only for apps that
    /// never decode it.
    KeepUnchanged,
    /// Refuse the request (400).
    #[default]
    RejectRequest,
    /// Decode them to `/` (a backslash too) before deciding, and forward the decoded path.
    UnescapeAndForward,
}

/// What to do with a request header whose name has an underscore (`x_debug`, which CGI, WSGI,
/// PHP and nginx-fronted apps read as `x-debug`); the values are Envoy's
/// `headers_with_underscores_action`.
///
/// The default is `reject_request`: a header rule on `x-debug` cannot see `x_debug`, so
/// allowing it lets a caller send what a deny rule forbids. Dropping the header is as safe
/// for the decision, but it changes the request silently; refusing it is logged with the
/// header's name, so a caller that sends one learns why at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadersWithUnderscoresAction {
    /// Pass them through; rules match them only under their own spelling.
    Allow,
    /// Refuse the request (400).
    #[default]
    RejectRequest,
    /// Remove such headers before deciding, so neither the rules nor the app see them.
    DropHeader,
}

/// How a request is normalised; the defaults are the secure ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NormalizeOptions {
    /// `%2F`, `%5C` and `\` in the path.
    pub escaped_slashes: EscapedSlashesAction,
    /// Header names with `_`.
    pub headers_with_underscores: HeadersWithUnderscoresAction,
}

/// Whether a header name holds an underscore, the spelling
/// [`HeadersWithUnderscoresAction`] is about.
pub fn header_name_has_underscore(name: &str) -> bool {
    name.as_bytes().contains(&b'_')
}

// RFC 3986 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The path in the form it is decided on and forwarded in (see the module docs).
///
/// Never panics, whatever the input: it is a fuzz target.
///
/// # Errors
/// [`PathError`]: not starting with `/`, a malformed escape, a byte that has no place in a
/// path, a path above `/`, or an escaped slash under `reject_request`.
///
/// # Examples
/// ```
/// use agentmesh_policy::{EscapedSlashesAction, NormalizeOptions, PathError, normalize_path};
/// let opts = NormalizeOptions::default();
/// assert_eq!(normalize_path("//v1/./a/../%61dmin", &opts).unwrap(), "/v1/admin");
/// assert_eq!(normalize_path("/a/../..", &opts), Err(PathError::AboveRoot));
/// assert_eq!(normalize_path("/a%2fb", &opts), Err(PathError::EscapedSlash));
/// let decode = NormalizeOptions {
///     escaped_slashes: EscapedSlashesAction::UnescapeAndForward,
///     ..NormalizeOptions::default()
/// };
/// assert_eq!(normalize_path("/a%2F..%5Cb", &decode).unwrap(), "/b");
/// ```
pub fn normalize_path(path: &str, options: &NormalizeOptions) -> Result<String, PathError> {
    let raw = path.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(raw) {
        return Ok(path.to_owned());
    }
    // Pass 1: escapes and slashes, into bytes where `/` is always a real separator.
    let mut decoded: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    raw.get(i + 1).copied().and_then(hex_value),
                    raw.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEscape(i));
                };
                let byte = hi * 16 + lo;
                if is_unreserved(byte) {
                    decoded.push(byte);
                } else if byte == b'/' || byte == b'\\' {
                    match options.escaped_slashes {
                        EscapedSlashesAction::RejectRequest => return Err(PathError::EscapedSlash),
                        EscapedSlashesAction::UnescapeAndForward => decoded.push(b'/'),
                        EscapedSlashesAction::KeepUnchanged => {
                            decoded.extend_from_slice(&[
                                b'%',
                                HEX_UPPER[usize::from(hi)],
                                HEX_UPPER[usize::from(lo)],
                            ]);
                        }
                    }
                } else {
                    decoded.extend_from_slice(&[
                        b'%',
                        HEX_UPPER[usize::from(hi)],
                        HEX_UPPER[usize::from(lo)],
                    ]);
                }
                i += 3;
            }
            b'\\' => {
                match options.escaped_slashes {
                    EscapedSlashesAction::RejectRequest => return Err(PathError::EscapedSlash),
                    EscapedSlashesAction::UnescapeAndForward => decoded.push(b'/'),
                    // Kept, but written as the escape a URI can carry.
                    EscapedSlashesAction::KeepUnchanged => decoded.extend_from_slice(b"%5C"),
                }
                i += 1;
            }
            b'?' | b'#' | 0x00..=0x20 | 0x7f => {
                return Err(PathError::BadByte { byte: b, at: i });
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // Pass 2: segments. Empty segments (repeated slashes) are merged away; `.` and `..` are
    // resolved; a trailing slash, or a final dot-segment, leaves the path ending in `/`.
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded[1..].split(|b| *b == b'/') {
        match segment {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push(b'/');
    }
    // Only ASCII was added or removed around whole UTF-8 sequences, so this cannot fail; the
    // fallback keeps the function panic-free all the same.
    String::from_utf8(out).map_err(|e| PathError::BadByte {
        byte: e.as_bytes().first().copied().unwrap_or_default(),
        at: e.utf8_error().valid_up_to(),
    })
}

/// Whether a path (starting with `/`) is already in normal form, so the common case costs
/// one scan: no escapes, no backslash, no byte the slow path refuses, no empty segment except
/// a trailing one, and no dot-segment.
fn is_normal(raw: &[u8]) -> bool {
    let plain = raw
        .iter()
        .all(|b| !matches!(b, b'%' | b'\\' | b'?' | b'#' | 0x00..=0x20 | 0x7f));
    if !plain {
        return false;
    }
    let mut segments = raw[1..].split(|b| *b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == b"." || segment == b".." {
            return false;
        }
    }
    true
}

/// [`normalize_path`] on the path of a `path?query` string; the query is kept exactly as sent.
///
/// # Errors
/// As [`normalize_path`].
pub fn normalize_path_and_query(
    path_and_query: &str,
    options: &NormalizeOptions,
) -> Result<String, PathError> {
    match path_and_query.split_once('?') {
        Some((path, query)) => Ok(format!("{}?{query}", normalize_path(path, options)?)),
        None => normalize_path(path_and_query, options),
    }
}

#[cfg(test)]
mod tests;
