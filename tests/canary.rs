//! The canary test: the built binary under `RUST_LOG=trace`, set up through
//! the CLI, driven through every kind of outcome — then every output is
//! scanned for the canary credential and the caller's API key: responses,
//! errors, logs, the audit log, state files, every span and metric exported
//! over OTLP, and `/metrics`.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use support::{authed, collect, free_port, get, http_get, valet_bin};
use tokio::process::{Child, Command};
use valet::proto::gateway_client::GatewayClient;
use valet::proto::{CallRequest, Header, Operation};
use valet_testkit::{MockVendor, OtlpReceiver, Scripted, leak};

/// Runs `valet admin …`; returns (exit code, stdout, stderr).
async fn admin_cli(endpoint: &str, key_file: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    let out = support::admin_cli(endpoint, key_file, args, stdin).await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Checks `bytes` for every form of every secret in `secrets`.
fn assert_clean(label: &str, bytes: &[u8], secrets: &[(&str, &str)]) {
    for (what, secret) in secrets {
        let found = leak::forms_found(bytes, secret);
        assert!(found.is_empty(), "{label} contains {what} ({found:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_appears_nowhere() {
    let canary = valet_testkit::canary("e2e");
    let mock = MockVendor::start().await;
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (gw_port, admin_port, ops_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("valet.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{gw_port}"
admin_listen = "127.0.0.1:{admin_port}"
ops_listen = "127.0.0.1:{ops_port}"
[state]
dir = "{state}"
[telemetry]
otlp_endpoint = "{otlp}"
metrics_export_interval_ms = 100
[[vendors]]
name = "bearer"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "bearer" }}
[[vendors]]
name = "query"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "query", name = "api_key" }}
[[vendors]]
name = "basic"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "basic" }}
[[vendors]]
name = "header"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "header", name = "X-Api-Key" }}
"#,
            state = state.display(),
            base = mock.base_url(),
            otlp = receiver.endpoint
        ),
    )
    .unwrap();

    let mut server: Child = Command::new(valet_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let out_task = collect(server.stdout.take().unwrap(), stdout.clone(), Some(ready_tx));
    let err_task = collect(server.stderr.take().unwrap(), stderr.clone(), None);
    ready_rx.await.expect("valet started");

    // Set up through the CLI: secrets on stdin, keys printed once.
    let endpoint = format!("http://127.0.0.1:{admin_port}");
    let key_file = state.join("admin.key");
    let mut cli_output = Vec::new();
    for (vendor, secret) in [
        ("bearer", canary.clone()),
        ("query", canary.clone()),
        ("basic", format!("svc:{canary}")),
        ("header", canary.clone()),
    ] {
        let (code, out, err) = admin_cli(
            &endpoint,
            &key_file,
            &["credential", "put", "--tenant", "acme", "--vendor", vendor],
            &format!("{secret}\n"),
        )
        .await;
        assert_eq!(code, 0, "{err}");
        cli_output.extend_from_slice(out.as_bytes());
        cli_output.extend_from_slice(err.as_bytes());
    }
    let (code, key_out, err) = admin_cli(
        &endpoint,
        &key_file,
        &[
            "apikey",
            "create",
            "--name",
            "canary-caller",
            "--tenant",
            "acme",
            "--vendor",
            "*",
            "--operation",
            "read",
        ],
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let api_key = key_out.trim().to_owned();
    assert!(
        api_key.starts_with("vk_") && key_out.lines().count() == 1,
        "stdout holds the key alone: {key_out:?}"
    );
    let (code, list, _) = admin_cli(&endpoint, &key_file, &["credential", "list"], "").await;
    assert_eq!(code, 0);
    assert_eq!(list.lines().count(), 5, "{list}");
    cli_output.extend_from_slice(list.as_bytes());

    // Every kind of outcome.
    mock.script(
        "/leaky-401",
        Scripted::status(401)
            .header("www-authenticate", &format!("Bearer token={canary}"))
            .body(canary.clone()),
    );
    let mut gateway = GatewayClient::connect(format!("http://127.0.0.1:{gw_port}"))
        .await
        .unwrap();
    let mut responses = Vec::new();
    let calls: Vec<CallRequest> = vec![
        get("acme", "bearer", "/echo?x=1"),
        get("acme", "query", "/echo"),
        get("acme", "basic", "/echo"),
        get("acme", "header", "/echo"),
        get("acme", "bearer", "/leaky-401"),
        get("acme", "bearer", "/../escape"),
        CallRequest {
            headers: vec![Header {
                name: "authorization".into(),
                value: format!("Bearer {api_key}"),
            }],
            ..get("acme", "bearer", "/x")
        },
        get("globex", "bearer", "/x"),
        CallRequest {
            operation: Operation::Write as i32,
            method: "POST".into(),
            ..get("acme", "bearer", "/x")
        },
    ];
    let mut ok = 0;
    for req in calls {
        match gateway.call(authed(req, &api_key)).await {
            Ok(resp) => {
                ok += 1;
                let resp = resp.into_inner();
                responses.extend_from_slice(&resp.body);
                for h in resp.headers {
                    responses.extend_from_slice(format!("{}: {}\n", h.name, h.value).as_bytes());
                }
            }
            Err(status) => {
                responses.extend_from_slice(status.message().as_bytes());
                responses.extend_from_slice(format!("{:?}", status.metadata()).as_bytes());
                responses.extend_from_slice(status.details());
            }
        }
    }
    assert_eq!(ok, 5, "the echo and 401 calls succeed as proxied answers");
    // The vendor did receive the credential every time: the scan below is
    // not vacuous.
    assert!(mock.requests().iter().any(|r| format!("{r:?}").contains(&canary)));

    // Every call's spans have been exported, and the metrics with them.
    let spans = receiver
        .wait_for_spans(std::time::Duration::from_secs(20), |spans| {
            spans.iter().filter(|s| s.name == "valet.v1.Gateway/Call").count() >= 9
        })
        .await;
    assert!(spans.iter().any(|s| s.name == "valet.credential.lease"));
    receiver
        .wait_for_metric(std::time::Duration::from_secs(20), "valet.calls")
        .await;
    let (status, metrics) = http_get(&format!("http://127.0.0.1:{ops_port}/metrics")).await;
    assert_eq!(status, 200);

    // SIGTERM: a graceful stop, exit 0.
    let pid = server.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    let status = server.wait().await.unwrap();
    assert_eq!(status.code(), Some(0), "valet exits 0 on SIGTERM");
    out_task.await.unwrap();
    err_task.await.unwrap();

    let stdout = stdout.lock().unwrap().clone();
    let stderr = stderr.lock().unwrap().clone();
    assert!(
        String::from_utf8_lossy(&stdout)
            .matches("\"message\":\"call\"")
            .count()
            >= 8,
        "one log line per call"
    );
    let basic = format!("svc:{canary}");
    let admin_key = std::fs::read_to_string(&key_file).unwrap().trim().to_owned();
    let secrets = [
        ("the canary credential", canary.as_str()),
        ("the basic-auth credential", basic.as_str()),
        ("the caller's API key", api_key.as_str()),
        ("the bootstrap admin key", admin_key.as_str()),
    ];
    assert_clean("responses and errors", &responses, &secrets);
    assert_clean("server stdout", &stdout, &secrets);
    assert_clean("server stderr", &stderr, &secrets);
    assert_clean("CLI output", &cli_output, &secrets);
    assert_clean("exported spans and metrics", &receiver.raw(), &secrets);
    assert_clean("/metrics", metrics.as_bytes(), &secrets);
    let audit = std::fs::read(state.join("audit.log")).unwrap();
    assert!(!audit.is_empty());
    assert_clean("audit log", &audit, &secrets);
    for (what, secret) in &secrets[..3] {
        assert_eq!(
            leak::files_containing(&state, secret),
            vec![],
            "state files hold {what}"
        );
    }
    // Only admin.key itself holds the admin key.
    let holders: Vec<_> = leak::files_containing(&state, &admin_key)
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert_eq!(holders, vec![key_file.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_and_the_master_key_appear_nowhere_with_secrets_manager() {
    use base64::Engine as _;
    let canary = valet_testkit::canary("sm");
    let moto = valet_testkit::Moto::start().await;
    let mock = MockVendor::start().await;
    let key_bytes: Vec<u8> = canary.as_bytes().iter().cycle().take(32).copied().collect();
    let master_key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let sm = valet_credentials::aws::sdk_config(&valet_credentials::aws::AwsConnection {
        region: "us-east-1".into(),
        endpoint_url: Some(moto.endpoint()),
        static_credentials: Some(("testing".into(), "testing".into())),
    })
    .await;
    let sm = aws_sdk_secretsmanager::Client::new(&sm);
    sm.create_secret()
        .name("canary-master")
        .secret_string(&master_key)
        .send()
        .await
        .unwrap();

    let body = format!(
        r#"
[secrets]
backend = "aws"
region = "us-east-1"
endpoint_url = "{endpoint}"
master_key = {{ aws_secret = "canary-master" }}
[[vendors]]
name = "bearer"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "bearer" }}
"#,
        endpoint = moto.endpoint(),
        base = mock.base_url()
    );
    let env = [
        ("RUST_LOG", "trace"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let valet = support::ValetProcess::spawn_with(&body, &env).await;
    valet
        .admin(
            &["credential", "put", "--tenant", "acme", "--vendor", "bearer"],
            &format!("{canary}\n"),
        )
        .await;
    let create = [
        "apikey",
        "create",
        "--name",
        "c",
        "--tenant",
        "acme",
        "--vendor",
        "bearer",
        "--operation",
        "read",
    ];
    let api_key = valet.admin(&create, "").await.trim().to_owned();

    let resp = valet
        .gateway()
        .await
        .call(authed(get("acme", "bearer", "/echo"), &api_key))
        .await
        .unwrap()
        .into_inner();
    assert!(mock.requests().iter().any(|r| format!("{r:?}").contains(&canary)));

    let state = valet.state.clone();
    let exited = valet.terminate().await;
    assert_eq!(exited.code, Some(0));
    let secrets = [
        ("the canary credential", canary.as_str()),
        ("the master key", master_key.as_str()),
    ];
    assert_clean("response", &resp.body, &secrets);
    assert_clean("server stdout", &exited.stdout, &secrets);
    assert_clean("server stderr", &exited.stderr, &secrets);
    assert_clean(
        "audit log",
        &std::fs::read(state.join("audit.log")).unwrap(),
        &secrets,
    );
    for (what, secret) in &secrets {
        assert_eq!(
            leak::files_containing(&state, secret),
            vec![],
            "state files hold {what}"
        );
    }
    assert!(!state.join("master.key").exists());
    let stored = sm
        .get_secret_value()
        .secret_id("valet/acme/bearer")
        .send()
        .await
        .unwrap();
    assert_clean(
        "the Secrets Manager value",
        stored.secret_string().unwrap().as_bytes(),
        &secrets,
    );
}
