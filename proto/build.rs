//! Generates the Rust code for `memoire.v1` with a vendored `protoc`, so that building needs no
//! system install. The file descriptor set is kept for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "memoire/v1/types.proto",
        "memoire/v1/memory.proto",
        "memoire/v1/admin.proto",
    ];
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Well-known types come from prost-types; only their include path is needed by protoc.
    let wkt = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("memoire_descriptor.bin"))
        .compile_with_config(
            config,
            &protos.map(|p| PathBuf::from(".").join(p)),
            &[PathBuf::from("."), wkt],
        )?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
