//! Generates the API's gRPC code with the pure-Rust `protox` compiler (no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/flotilla/api/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Objects are encoded once and shared (watch fan-out, list from the cache): cheap clones.
        .bytes(".flotilla.api.v1")
        .compile_fds(fds)?;
    Ok(())
}
