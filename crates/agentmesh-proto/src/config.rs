//! Reading a component's TOML config file: the one pattern the proxy, frontend, agents and
//! gateway share (read the file, parse with serde, then each checks its own values).
//!
//! Parse errors come out as one line (with the line, column and key), because operators read them in a
//! journal where toml's multi-line source excerpt would be split across entries.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a config file could not be read or did not parse; both name the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a wrongly typed value.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file, or whatever the text was said to come from.
        path: PathBuf,
        /// toml's message on one line, with the line, column and key it points at.
        message: String,
    },
}

/// Reads a config file's text.
///
/// # Errors
/// [`LoadError::Read`].
pub fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses config text as `T`; `path` only names it in errors.
///
/// # Errors
/// [`LoadError::Parse`].
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, LoadError> {
    // toml's Display names the line, column and key with a source excerpt; folded to one line.
    toml::from_str(text).map_err(|e| LoadError::Parse {
        path: path.to_owned(),
        message: one_line(&e.to_string()),
    })
}

/// Reads and parses a config file as `T`; the caller then checks the values.
///
/// # Errors
/// [`LoadError::Read`] or [`LoadError::Parse`].
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    parse_toml(&read(path)?, path)
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn errors_are_one_line_and_name_the_file_and_line() {
        let e = parse_toml::<Cfg>("name = \"a\"\nport = 1\n", Path::new("/etc/x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/x.toml: "), "{e}");
        assert!(e.contains("port") && e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = load_toml::<Cfg>(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/x.toml: "),
            "{e}"
        );
    }
}
