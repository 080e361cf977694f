//! Compiles the protos with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["workload.proto", "agentmesh.proto"];
    let descriptors = protox::compile(files, [&proto_dir])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    for file in files {
        println!("cargo:rerun-if-changed={}", proto_dir.join(file).display());
    }
    Ok(())
}
