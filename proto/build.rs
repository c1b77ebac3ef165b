//! Compiles `proto/*.proto` with protox (pure Rust): no system `protoc` is needed.
//!
//! Each service's descriptor set is written to `OUT_DIR` on its own, so that gRPC reflection on a
//! port lists that port's services only (the SAE-facing key delivery port never shows the
//! node-to-node protocol).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let sets: [(&[&str], &str); 2] = [
        (
            &["proto/peer.proto", "proto/hybrid.proto"],
            "peer_descriptor.bin",
        ),
        (&["proto/keys.proto"], "keys_descriptor.bin"),
    ];
    for (files, descriptor) in sets {
        for f in files {
            println!("cargo:rerun-if-changed={f}");
        }
        let fds = protox::compile(files, ["proto"])?;
        std::fs::write(out.join(descriptor), prost::Message::encode_to_vec(&fds))?;
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            // `Key` carries key bytes: its Debug is written by hand (src/keys.rs).
            .skip_debug(["qkd.keys.v1.Key"])
            .compile_fds(fds)?;
    }
    Ok(())
}
