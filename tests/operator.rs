//! Operator tooling: `--version` with the git revision and the matching
//! `valet_build_info` metric, shell completions and the man page, listener
//! addresses from flags and `VALET_*` variables, and `valet admin --config`.

mod support;

use std::process::{Command, Stdio};
use support::{free_port, http_get, valet_bin};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(valet_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn version_names_the_revision() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    let expected = format!("valet {} ({})\n", env!("CARGO_PKG_VERSION"), valet::REVISION);
    assert_eq!(out, expected);
    assert!(!valet::REVISION.is_empty());
}

#[test]
fn completions_and_the_man_page_cover_the_commands() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef valet"),
        ("fish", "complete -c valet"),
    ] {
        let (code, out, err) = run(&["completion", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(
            out.contains("apikey") && out.contains("--api-key-file"),
            "{shell}"
        );
    }
    let (code, _, err) = run(&["completion", "tcsh"]);
    assert_eq!(code, 2, "an unknown shell is a usage error: {err}");
    assert!(err.contains("possible values"), "{err}");

    let (code, man, _) = run(&["man"]);
    assert_eq!(code, 0);
    assert!(
        man.starts_with(".ie") || man.contains(".TH valet"),
        "{}",
        &man[..200.min(man.len())]
    );
    for page in ["valet-serve", "valet-admin", "valet-audit", "valet-completion"] {
        assert!(man.contains(&format!(".TH {page}")), "no {page} section");
    }
}

/// Waits for the "valet serving" line; returns it.
async fn serving(stdout: tokio::process::ChildStdout) -> String {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let wait = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("valet serving") {
                return line;
            }
        }
        panic!("valet exited before serving");
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .expect("serving within 30 s")
}

#[tokio::test]
async fn listeners_come_from_flags_and_env_and_the_admin_cli_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (file_gateway, admin, file_ops) = (free_port(), free_port(), free_port());
    let (gateway, ops) = (free_port(), free_port());
    let config = dir.path().join("valet.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{file_gateway}\"\nadmin_listen = \"0.0.0.0:{admin}\"\nops_listen = \"127.0.0.1:{file_ops}\"\n[state]\ndir = \"state\"\n"
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(valet_bin())
        .current_dir(dir.path())
        .args(["serve", "--config", "valet.toml", "--listen"])
        .arg(format!("127.0.0.1:{gateway}"))
        .env("VALET_OPS_LISTEN", format!("127.0.0.1:{ops}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let line = serving(child.stdout.take().unwrap()).await;
    assert!(
        line.contains(&format!("\"gateway\":\"127.0.0.1:{gateway}\"")),
        "{line}"
    );
    assert!(line.contains(&format!("\"ops\":\"127.0.0.1:{ops}\"")), "{line}");
    assert!(line.contains(&format!("\"admin\":\"0.0.0.0:{admin}\"")), "{line}");

    let (status, metrics) = http_get(&format!("http://127.0.0.1:{ops}/metrics")).await;
    assert_eq!(status, 200);
    let build_info = format!(
        "valet_build_info{{revision=\"{}\",version=\"{}\"}} 1",
        valet::REVISION,
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&build_info), "no {build_info} in:\n{metrics}");

    // The admin CLI finds the endpoint (a wildcard bind, reached on
    // loopback) and the bootstrap key from the server's own config.
    let out = tokio::process::Command::new(valet_bin())
        .current_dir(dir.path())
        .args(["admin", "--config", "valet.toml", "tenant", "list"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Nothing listening: a sentence naming the endpoint and what to check.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let out = tokio::process::Command::new(valet_bin())
        .current_dir(dir.path())
        .args([
            "admin",
            "--config",
            "valet.toml",
            "--endpoint",
            &nowhere,
            "tenant",
            "list",
        ])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot reach the Admin service at {nowhere}")),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("connection refused"),
        "the cause, not a bare transport error: {err}"
    );
    assert!(err.contains("server.admin_listen"), "{err}");

    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
