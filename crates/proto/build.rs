//! Compiles the public contract in `proto/` (at the repository root) into
//! OUT_DIR.
//!
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs no
//! system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Messages that carry a secret get a hand-written, redacted Debug in
    // src/lib.rs instead of the derived one.
    config.skip_debug([
        ".valet.v1.PutCredentialRequest",
        ".valet.v1.RotateCredentialRequest",
        ".valet.v1.CreateApiKeyResponse",
        ".valet.v1.RotateApiKeyResponse",
    ]);
    let include = protoc_bin_vendored::include_path()?;
    // Served by gRPC reflection, so grpcurl needs no .proto files.
    // Cargo hands a build script its output directory in OUT_DIR.
    #[allow(clippy::disallowed_methods)]
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    config.file_descriptor_set_path(out_dir.join("valet_descriptor.bin"));
    let proto = std::path::Path::new("../../proto");
    // Decode errors are the sender's: INVALID_ARGUMENT, not INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::codec::ValetCodec")
        .compile_with_config(
            config,
            &[
                proto.join("valet/v1/gateway.proto"),
                proto.join("valet/v1/admin.proto"),
            ],
            &[proto.to_path_buf(), include],
        )?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}
