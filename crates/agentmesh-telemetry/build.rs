//! Compiles the vendored OTLP trace protos with protox and prost-build, so no system `protoc`
//! is needed (as `agentmesh-proto` does for the SPIFFE Workload API).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with env!(): a build script compiled in one clone is reused from
    // a shared CARGO_TARGET_DIR by another clone, and a baked-in path would point at the first.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let proto_dir = std::path::Path::new(&manifest_dir).join("../../proto");
    let files = [
        "opentelemetry/proto/common/v1/common.proto",
        "opentelemetry/proto/resource/v1/resource.proto",
        "opentelemetry/proto/trace/v1/trace.proto",
        "opentelemetry/proto/collector/trace/v1/trace_service.proto",
    ];
    let descriptors = protox::compile(files, [&proto_dir])?;
    // The protos' comments hold indented JSON examples that rustdoc would run as Rust
    // doctests; the vendored .proto files are the documentation.
    prost_build::Config::new()
        .disable_comments(["."])
        .compile_fds(descriptors)?;
    for file in files {
        println!("cargo:rerun-if-changed={}", proto_dir.join(file).display());
    }
    Ok(())
}
