//! Generates the Rust types and service traits of flagd's gRPC schemas (`node/proto/`) at build
//! time: protox compiles the `.proto` files (no `protoc` needed), tonic-prost-build writes the
//! code into `OUT_DIR`, included by `src/flagd/mod.rs`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos =
        ["flagd/evaluation/v1/evaluation.proto", "flagd/evaluation/v2/evaluation.proto", "flagd/sync/v1/sync.proto"];
    for proto in &protos {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // Clients too: the node's tests and benchmarks speak to it as a provider does.
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
