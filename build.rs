//! Hands the code its git revision (see `git_revision`); the protocol is
//! compiled by `crates/proto`.

fn main() {
    git_revision();
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
