//! ARCHITECTURE.md's crate map agrees with the `Cargo.toml` manifests.
//!
//! The map is the block between `<!-- crate-map:begin -->` and `<!-- crate-map:end -->` in
//! ARCHITECTURE.md, generated from the `[dependencies]` of every crate under `crates/`: one
//! line per crate, the agentmesh crates it depends on (without the `agentmesh-` prefix;
//! `(optional)` for an optional dependency, which only a feature turns on), ordered so that each
//! crate depends only on crates below it. When a manifest changes, regenerate the block with
//!
//! ```sh
//! AGENTMESH_BLESS=1 cargo test -p agentmesh --test crate_map
//! ```
//!
//! which rewrites it in place (review the diff); without `AGENTMESH_BLESS` the test fails and
//! prints the block it expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const BEGIN: &str = "<!-- crate-map:begin -->\n";
const END: &str = "<!-- crate-map:end -->";
const PREFIX: &str = "agentmesh-";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One crate's agentmesh dependencies: name → optional.
type Deps = BTreeMap<String, bool>;

/// Every crate under `crates/`, by package name, with its agentmesh `[dependencies]`.
fn manifests() -> BTreeMap<String, Deps> {
    let mut crates = BTreeMap::new();
    for dir in std::fs::read_dir(root().join("crates")).unwrap() {
        let manifest = dir.unwrap().path().join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).unwrap();
        let doc: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let name = doc["package"]["name"].as_str().unwrap().to_owned();
        let mut deps = Deps::new();
        if let Some(table) = doc.get("dependencies").and_then(|d| d.as_table()) {
            for (dep, spec) in table {
                if dep.starts_with(PREFIX) {
                    let optional = spec
                        .get("optional")
                        .and_then(|o| o.as_bool())
                        .unwrap_or(false);
                    deps.insert(dep.clone(), optional);
                }
            }
        }
        crates.insert(name, deps);
    }
    crates
}

/// The longest chain of agentmesh dependencies below `name`.
fn depth(name: &str, crates: &BTreeMap<String, Deps>, seen: &mut Vec<String>) -> usize {
    assert!(
        !seen.iter().any(|s| s == name),
        "a dependency cycle: {seen:?} → {name}"
    );
    seen.push(name.to_owned());
    let d = crates
        .get(name)
        .map(|deps| {
            deps.keys()
                .map(|dep| 1 + depth(dep, crates, seen))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    seen.pop();
    d
}

/// The block as the manifests say it should read, between the markers.
fn expected_block() -> String {
    let crates = manifests();
    let mut order: Vec<(usize, &String)> = crates
        .keys()
        .map(|name| (depth(name, &crates, &mut Vec::new()), name))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let width = crates.keys().map(String::len).max().unwrap_or(0) + 2;
    let mut out = String::from("```text\n");
    out.push_str(&format!(
        "{:width$}depends on (agentmesh crates in [dependencies])\n",
        "crate"
    ));
    for (_, name) in order {
        let deps: Vec<String> = crates[name]
            .iter()
            .map(|(dep, optional)| {
                let short = dep.strip_prefix(PREFIX).unwrap_or(dep);
                if *optional {
                    format!("{short} (optional)")
                } else {
                    short.to_owned()
                }
            })
            .collect();
        let deps = if deps.is_empty() {
            "-".to_owned()
        } else {
            deps.join(", ")
        };
        out.push_str(&format!("{name:width$}{deps}\n"));
    }
    out.push_str("```\n");
    out
}

#[test]
fn architecture_crate_map_matches_the_manifests() {
    let path = root().join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find(BEGIN)
        .expect("ARCHITECTURE.md has no crate-map:begin marker")
        + BEGIN.len();
    let end = start
        + text[start..]
            .find(END)
            .expect("ARCHITECTURE.md has no crate-map:end marker");
    let expected = expected_block();
    if text[start..end] == expected {
        return;
    }
    if std::env::var_os("AGENTMESH_BLESS").is_some() {
        let updated = format!("{}{expected}{}", &text[..start], &text[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "ARCHITECTURE.md's crate map disagrees with the manifests; regenerate it with \
         `AGENTMESH_BLESS=1 cargo test -p agentmesh --test crate_map`. Expected:\n{expected}"
    );
}
