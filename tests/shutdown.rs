//! Graceful shutdown of the real binary: SIGTERM lets a slow call finish
//! and exits 0 with the audit log intact; a call that outlasts the grace
//! period is cut off, and the process still exits 0 promptly.

mod support;

use std::time::{Duration, Instant};
use support::{ValetProcess, authed, get};
use valet_testkit::{MockVendor, Scripted};

async fn slow_valet(mock: &MockVendor, server: &str) -> (ValetProcess, String) {
    let body = format!(
        r#"[server]
{server}
[[vendors]]
name = "mock"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "bearer" }}
"#,
        base = mock.base_url()
    );
    let valet = ValetProcess::spawn(&body).await;
    let key = valet.acme_mock_caller("shutdown-secret-000001", "read").await;
    (valet, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_call_finish_and_exits_0() {
    let mock = MockVendor::start().await;
    mock.script(
        "/slow",
        Scripted::status(200)
            .body("done")
            .delay(Duration::from_millis(800)),
    );
    let (valet, key) = slow_valet(&mock, "shutdown_grace_ms = 10000").await;
    let mut gateway = valet.gateway().await;
    let call = tokio::spawn(async move { gateway.call(authed(get("acme", "mock", "/slow"), &key)).await });
    mock.wait_until(|seen, _| !seen.is_empty()).await;

    valet.sigterm().await;
    let answer = call
        .await
        .unwrap()
        .expect("the in-flight call finishes")
        .into_inner();
    assert_eq!((answer.status, answer.body.as_slice()), (200, b"done".as_slice()));
    let state = valet.state.clone();
    let exited = valet.terminate().await;
    assert_eq!(
        exited.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&exited.stderr)
    );
    let logs = String::from_utf8_lossy(&exited.stdout);
    assert!(logs.contains("\"outcome\":\"OK\""), "the call was logged: {logs}");
    // Every audit entry made it to disk, chained.
    let verify = tokio::process::Command::new(support::valet_bin())
        .args(["audit", "verify"])
        .arg(state.join("audit.log"))
        .output()
        .await
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_outlasts_the_grace_period_is_cut_off() {
    let mock = MockVendor::start().await;
    mock.script("/stuck", Scripted::status(200).delay(Duration::from_secs(30)));
    let (valet, key) = slow_valet(&mock, "shutdown_grace_ms = 300").await;
    let mut gateway = valet.gateway().await;
    let call = tokio::spawn(async move { gateway.call(authed(get("acme", "mock", "/stuck"), &key)).await });
    mock.wait_until(|seen, _| !seen.is_empty()).await;

    let began = Instant::now();
    valet.sigterm().await;
    let exited = valet.terminate().await;
    assert_eq!(exited.code, Some(0));
    assert!(began.elapsed() < Duration::from_secs(10), "{:?}", began.elapsed());
    assert!(call.await.unwrap().is_err(), "the stuck call did not complete");
    mock.wait_until(|_, aborted| aborted.iter().any(|p| p == "/stuck"))
        .await;
    let logs = String::from_utf8_lossy(&exited.stdout);
    assert!(logs.contains("grace period over"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_drain_delay_health_says_not_serving_but_calls_are_served() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let mock = MockVendor::start().await;
    let (valet, key) = slow_valet(&mock, "drain_delay_ms = 3000").await;
    let channel = tonic::transport::Channel::from_shared(valet.gateway_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    valet.sigterm().await;
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    drop(watch);

    let (status, body) = support::http_get(&format!("{}/readyz", valet.ops_url)).await;
    assert_eq!((status, body.as_str()), (503, "not ready: draining\n"));
    // A new connection is still accepted during the drain delay.
    let mut gateway = valet.gateway().await;
    let answer = gateway
        .call(authed(get("acme", "mock", "/v1/me"), &key))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().status, 200);
    drop(gateway);
    drop(channel);
    let exited = valet.terminate().await;
    assert_eq!(exited.code, Some(0));
}

async fn watch_root(url: &str) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    watch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_health_watch_ends_with_not_serving_and_does_not_hold_up_exit() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mock = MockVendor::start().await;
    let (valet, _key) = slow_valet(&mock, "shutdown_grace_ms = 20000").await;
    // Every load balancer keeps one of these open.
    let mut watch = watch_root(&valet.gateway_url).await;
    let began = Instant::now();
    valet.sigterm().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut last = None;
        while let Some(answer) = watch.message().await.expect("the watch ends cleanly") {
            last = Some(answer.status);
        }
        last
    })
    .await
    .expect("the watch ended well before the 20 s grace period");
    assert_eq!(ended, Some(ServingStatus::NotServing as i32));
    let exited = valet.terminate().await;
    assert_eq!(exited.code, Some(0));
    assert!(began.elapsed() < Duration::from_secs(10), "{:?}", began.elapsed());
}

/// Every line of `bytes` is one JSON object.
fn all_json(stream: &str, bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
            "{stream}: not a JSON line: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_stalled_collector_exit_fits_in_drain_and_grace_and_failed_exports_are_logged() {
    // A collector that accepts connections and never answers.
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = collector.accept().await {
            held.push(socket);
        }
    });
    let body = format!(
        "[server]\ndrain_delay_ms = 200\nshutdown_grace_ms = 1000\n[telemetry]\notlp_endpoint = \"{endpoint}\"\nmetrics_export_interval_ms = 100\n"
    );
    // Each export waits 4 s for the collector; the exit may not.
    let env = [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "4000"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    let valet = ValetProcess::spawn_with(&body, &env).await;
    let watch = watch_root(&valet.gateway_url).await;
    // The failing pushes are reported while they happen, not only at exit.
    let waiting = Instant::now();
    while !valet
        .stdout_so_far()
        .lines()
        .any(|l| l.contains("\"level\":\"WARN\"") && l.contains("export") && l.contains("metrics"))
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "no WARN line for failing exports: {}",
            valet.stdout_so_far()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let began = Instant::now();
    valet.sigterm().await;
    let exited = valet.terminate().await;
    let took = began.elapsed();
    assert_eq!(exited.code, Some(0));
    // drain (0.2 s) + grace (1 s), and a margin for a loaded machine.
    assert!(took < Duration::from_millis(1200 + 2300), "exit took {took:?}");
    // The watch was open throughout and did not hold the exit up.
    drop(watch);
    all_json("stdout", &exited.stdout);
    all_json("stderr", &exited.stderr);
    held.abort();
}
