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

/// `valet serve ARGS` in `dir` with `env`; returns it and its "valet
/// serving" line.
async fn serve(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(valet_bin())
        .current_dir(dir)
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let line = serving(child.stdout.take().unwrap()).await;
    (child, line)
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
    let listen = format!("127.0.0.1:{gateway}");
    let ops_listen = format!("127.0.0.1:{ops}");
    let (mut child, line) = serve(
        dir.path(),
        &["--config", "valet.toml", "--listen", &listen],
        &[("VALET_OPS_LISTEN", &ops_listen)],
    )
    .await;
    assert!(
        line.contains(&format!("\"gateway\":\"127.0.0.1:{gateway}\"")),
        "{line}"
    );
    assert!(line.contains(&format!("\"ops\":\"127.0.0.1:{ops}\"")), "{line}");
    assert!(line.contains(&format!("\"admin\":\"0.0.0.0:{admin}\"")), "{line}");
    // Not a terminal: JSON, every field at the top level.
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["message"], "valet serving", "{line}");
    assert_eq!(json["level"], "INFO", "{line}");
    assert!(json.get("fields").is_none(), "{line}");

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

async fn status(valet: &support::ValetProcess) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(valet_bin())
        .args(["status", "--endpoint", &valet.admin_url, "--api-key-file"])
        .arg(&valet.key_file)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_readiness_backends_breakers_cache_and_counts() {
    let moto = valet_testkit::Moto::start().await;
    let mut redis = valet_testkit::RedisServer::start().await;
    let mock = valet_testkit::MockVendor::start().await;
    let sm = valet_credentials::aws::sdk_config(&valet_credentials::aws::AwsConnection {
        region: "us-east-1".into(),
        endpoint_url: Some(moto.endpoint()),
        static_credentials: Some(("testing".into(), "testing".into())),
    })
    .await;
    let master = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    };
    aws_sdk_secretsmanager::Client::new(&sm)
        .create_secret()
        .name("status-master")
        .secret_string(master)
        .send()
        .await
        .unwrap();
    let body = format!(
        r#"redis_url = "{redis}"
[server]
health_probe_interval_ms = 100
[secrets]
backend = "aws"
region = "us-east-1"
endpoint_url = "{endpoint}"
master_key = {{ aws_secret = "status-master" }}
[control]
backend = "redis"
max_stale_ms = 1000
{vendor}"#,
        redis = redis.url(),
        endpoint = moto.endpoint(),
        vendor = support::vendor_toml("mock", &mock.base_url())
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let valet = support::ValetProcess::spawn_with(&body, &env).await;
    let canary = valet_testkit::canary("status");
    let key = valet.acme_mock_caller(&canary, "read").await;
    for _ in 0..3 {
        let resp = valet
            .gateway()
            .await
            .call(support::authed(support::get("acme", "mock", "/v1/x"), &key))
            .await
            .unwrap();
        assert_eq!(resp.into_inner().status, 200);
    }

    let (code, text) = status(&valet).await;
    assert_eq!(code, Some(0), "{text}");
    for expected in [
        &format!("valet {}", valet::LONG_VERSION),
        "ready: yes",
        "secrets      aws    ok",
        "control      redis  ok",
        "quota        local  ok",
        "audit        local  ok",
        "mock                 breaker closed",
        "api keys: 2 valid",
        "credentials: 1",
        "control state: confirmed by Redis",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    let cache = text.lines().find(|l| l.starts_with("credential cache:")).unwrap();
    assert!(cache.starts_with("credential cache: 1 entries"), "{cache}");
    assert!(
        !cache.contains("hit ratio -"),
        "three leases were counted: {cache}"
    );
    assert!(valet_testkit::leak::forms_found(text.as_bytes(), &canary).is_empty());

    // Redis gone past control.max_stale_ms: not ready. The Admin service
    // itself refuses keys it cannot confirm, so status exits 1 naming that.
    redis.stop();
    let started = std::time::Instant::now();
    let text = loop {
        let (code, text) = status(&valet).await;
        if code == Some(1) {
            break text;
        }
        assert!(
            started.elapsed().as_secs() < 20,
            "still ready without Redis:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(text.contains("[CONTROL_STATE_STALE]"), "{text}");
}

#[tokio::test]
async fn log_lines_are_text_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let addr = || format!("127.0.0.1:{}", free_port());
    let (gateway, admin, ops) = (addr(), addr(), addr());
    let env = [
        ("VALET_LISTEN", &gateway),
        ("VALET_ADMIN_LISTEN", &admin),
        ("VALET_OPS_LISTEN", &ops),
    ];
    let (mut child, line) = serve(
        dir.path(),
        &["--log-format", "text"],
        &env.map(|(k, v)| (k, v.as_str())),
    )
    .await;
    assert!(!line.starts_with('{'), "{line}");
    assert!(line.contains(" INFO valet: valet serving gateway="), "{line}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let (code, _, err) = run(&["serve", "--log-format", "yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a log format: auto, json or text"), "{err}");
}
