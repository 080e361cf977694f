/// The most characters of one user-supplied value that an error message repeats.
pub const MAX_ECHO_CHARS: usize = 200;

/// A user-supplied value as error messages repeat it: quoted, control characters escaped,
/// and cut after [`MAX_ECHO_CHARS`] characters with an ellipsis and the full length, so a
/// megabyte of input never comes back in a gRPC status or a log line.
///
/// # Examples
/// ```
/// use agentmesh_spiffe::echo;
/// assert_eq!(echo("unix:uid:1000"), "\"unix:uid:1000\"");
/// assert_eq!(echo("a\0b"), "\"a\\0b\"");
/// let long = echo(&"x".repeat(5000));
/// assert!(long.len() < 250);
/// assert!(long.ends_with("…\" (5000 bytes)"));
/// ```
pub fn echo(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(MAX_ECHO_CHARS).collect();
    if chars.next().is_none() {
        format!("{head:?}")
    } else {
        let quoted = format!("{head:?}");
        // `{:?}` ends with the closing quote; the ellipsis goes inside it.
        let inner = quoted.strip_suffix('"').unwrap_or(&quoted);
        format!("{inner}…\" ({} bytes)", value.len())
    }
}
