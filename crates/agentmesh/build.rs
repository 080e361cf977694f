//! Sets `AGENTMESH_BUILD_ID`: a digest of every source that goes into the two executables
//! (the crates' `src`, manifests and build scripts, the protos, the vendored crates, the
//! scenario files and the lock file). `agentmesh up` uses it to recognise an
//! `agentmesh-proxy` built together with it.

use std::hash::Hasher;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .and_then(Path::parent)
        .expect("crates/agentmesh sits two levels under the workspace root");
    let mut inputs = vec![
        root.join("Cargo.lock"),
        root.join("proto"),
        root.join("vendor"),
        root.join("examples"),
    ];
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .expect("read crates/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    crates.sort();
    for krate in crates {
        for part in ["Cargo.toml", "build.rs", "src"] {
            inputs.push(krate.join(part));
        }
    }
    // SipHash with fixed keys: the same sources give the same id for this toolchain.
    let mut digest = std::hash::DefaultHasher::new();
    for input in &inputs {
        if input.exists() {
            println!("cargo::rerun-if-changed={}", input.display());
            add(&mut digest, root, input);
        }
    }
    println!(
        "cargo::rustc-env=AGENTMESH_BUILD_ID={:016x}",
        digest.finish()
    );
}

/// Hashes a file's path and bytes, or a directory's files in name order.
fn add(digest: &mut impl Hasher, root: &Path, path: &Path) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .expect("read a source directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            add(digest, root, &entry);
        }
    } else {
        let relative = path.strip_prefix(root).unwrap_or(path);
        digest.write(relative.as_os_str().as_encoded_bytes());
        digest.write(&std::fs::read(path).expect("read a source file"));
    }
}
