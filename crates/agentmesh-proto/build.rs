//! Compiles the protos with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with env!(): a build script compiled in one clone is reused from
    // a shared CARGO_TARGET_DIR by another clone, and a baked-in path would point at the first.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let proto_dir = std::path::Path::new(&manifest_dir).join("../../proto");
    let files = [
        "workload.proto",
        "agentmesh.proto",
        // Envoy's SDS, with the secret types it carries (a wire-compatible subset, see
        // proto/envoy/README.md).
        "envoy/service/secret/v3/sds.proto",
        "envoy/extensions/transport_sockets/tls/v3/secret.proto",
        "envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config.proto",
    ];
    let descriptors = protox::compile(files, [&proto_dir])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    for file in files {
        println!("cargo:rerun-if-changed={}", proto_dir.join(file).display());
    }
    // The files the Envoy protos import.
    println!(
        "cargo:rerun-if-changed={}",
        proto_dir.join("envoy").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        proto_dir.join("google").display()
    );
    Ok(())
}
