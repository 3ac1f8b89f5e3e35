//! Generates the etcd v3 and peer gRPC code with the pure-Rust `protox` compiler, so building the
//! store needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/kv.proto", "proto/rpc.proto", "proto/raft.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Watch events are encoded once and shared by every watcher: cheap clones.
        .bytes(".etcdserverpb.WatchResponse.events")
        .compile_fds(fds)?;
    Ok(())
}
