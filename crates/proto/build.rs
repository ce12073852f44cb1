//! Compiles `proto/unclip/v1/*.proto` with protox (pure Rust, no `protoc`), writes the encoded
//! descriptor set for gRPC reflection, and generates prost messages plus tonic clients and
//! servers from it.

use std::path::PathBuf;

use prost::Message;

/// The API files, relative to the workspace's `proto/` folder.
const PROTOS: &[&str] = &[
    "unclip/v1/tensor.proto",
    "unclip/v1/common.proto",
    "unclip/v1/clip.proto",
    "unclip/v1/prior.proto",
    "unclip/v1/decoder.proto",
    "unclip/v1/gateway.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include = manifest_dir.join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // Names relative to the include folder, so the descriptors carry the import paths.
    let fds = protox::compile(PROTOS, [&include])?;

    // compile_fds writes no descriptor file itself; reflection needs one.
    std::fs::write(out_dir.join("unclip_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Tensor data and encoded images can be megabytes: keep them as `bytes::Bytes`, which
        // tonic decodes without an extra copy.
        .bytes(".")
        .compile_fds(fds)?;

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", include.join(proto).display());
    }
    Ok(())
}
