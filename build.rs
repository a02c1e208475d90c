//! Compiles the public contract in `proto/` into OUT_DIR.
//!
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs no
//! system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Messages that carry a secret get a hand-written, redacted Debug in
    // src/proto.rs instead of the derived one.
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
    // Decode errors are the sender's: INVALID_ARGUMENT, not INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::codec::ValetCodec")
        .compile_with_config(
            config,
            &[
                std::path::PathBuf::from("proto/valet/v1/gateway.proto"),
                std::path::PathBuf::from("proto/valet/v1/admin.proto"),
            ],
            &[std::path::PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    git_revision();
    Ok(())
}

/// Hands the build's git revision to the code as `VALET_GIT_REVISION`, for
/// `valet --version` and the `valet_build_info` metric: the variable itself
/// when set (a container build has no `.git`), else `git rev-parse`, else
/// "unknown".
fn git_revision() {
    println!("cargo:rerun-if-env-changed=VALET_GIT_REVISION");
    // Cargo hands the builder's environment to build scripts.
    #[allow(clippy::disallowed_methods)]
    let given = std::env::var("VALET_GIT_REVISION").ok().filter(|r| !r.is_empty());
    let revision = given.unwrap_or_else(|| {
        // Rebuild when HEAD moves: HEAD itself, and the branch it names.
        for path in ["HEAD", "refs/heads", "packed-refs"] {
            if let Some(file) = git(&["rev-parse", "--git-path", path]) {
                println!("cargo:rerun-if-changed={file}");
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
    });
    println!("cargo:rustc-env=VALET_GIT_REVISION={revision}");
}

/// One line of git's output, if git ran and succeeded.
fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    let line = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !line.is_empty()).then_some(line)
}
