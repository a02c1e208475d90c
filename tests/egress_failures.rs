//! When the vendor is slow, gone, or the caller stops waiting.

mod support;

use std::time::Duration;
use support::{Valet, authed, bearer, get, reason, vendor};
use tonic::Code;
use valet::proto::Operation;
use valet_testkit::{MockVendor, Scripted};

async fn setup(timeout_ms: u64) -> (MockVendor, Valet, String) {
    let mock = MockVendor::start().await;
    let mut v = vendor("mock", &mock.base_url(), bearer());
    v.timeout_ms = timeout_ms;
    let valet = Valet::start(vec![v]).await;
    valet
        .put_credential("acme", "mock", "slow-secret-000000001")
        .await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    (mock, valet, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_deadline_bounds_the_vendor_call() {
    let (mock, valet, key) = setup(30_000).await;
    mock.script("/slow", Scripted::status(200).delay(Duration::from_secs(30)));
    let mut req = authed(get("acme", "mock", "/slow"), &key);
    req.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = valet.gateway().await.call(req).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::DeadlineExceeded, "DEADLINE_EXCEEDED")
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The vendor sees the request abandoned, not left running.
    mock.wait_until(|_, aborted| aborted.iter().any(|p| p == "/slow"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendor_timeout_applies_without_a_deadline() {
    let (mock, valet, key) = setup(200).await;
    mock.script("/slow", Scripted::status(200).delay(Duration::from_secs(30)));
    let err = valet.call(&key, get("acme", "mock", "/slow")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::DeadlineExceeded, "VENDOR_TIMEOUT")
    );
    assert!(err.message().contains("200 ms"), "{}", err.message());
    mock.wait_until(|_, aborted| aborted.iter().any(|p| p == "/slow"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_aborts_the_vendor_request() {
    let (mock, valet, key) = setup(30_000).await;
    mock.script("/slow", Scripted::status(200).delay(Duration::from_secs(30)));
    let mut gateway = valet.gateway().await;
    let call = tokio::spawn(async move { gateway.call(authed(get("acme", "mock", "/slow"), &key)).await });
    mock.wait_until(|reqs, _| !reqs.is_empty()).await;
    call.abort();
    mock.wait_until(|_, aborted| aborted.iter().any(|p| p == "/slow"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_vendor_is_unavailable_without_its_address() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let valet = Valet::start(vec![vendor(
        "gone",
        &format!("http://127.0.0.1:{port}"),
        bearer(),
    )])
    .await;
    valet
        .put_credential("acme", "gone", "gone-secret-0000000001")
        .await;
    let key = valet.api_key(&["acme"], &["gone"], &[Operation::Read]).await;
    let err = valet.call(&key, get("acme", "gone", "/x")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unavailable, "VENDOR_UNREACHABLE")
    );
    assert!(!err.message().contains("127.0.0.1") && !err.message().contains(&port.to_string()));
    assert!(err.metadata().get("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_outside_100_to_599_is_a_protocol_error() {
    let (mock, valet, key) = setup(30_000).await;
    for status in [999, 600] {
        let path = format!("/odd-{status}");
        mock.script(&path, Scripted::status(status).body("odd"));
        let err = valet.call(&key, get("acme", "mock", &path)).await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::Unavailable, "VENDOR_PROTOCOL_ERROR"),
            "{status}: {}",
            err.message()
        );
        assert!(!err.message().contains("127.0.0.1"), "{}", err.message());
    }
    // The edges of the range are ordinary answers.
    mock.script("/edge", Scripted::status(599));
    let ok = valet.call(&key, get("acme", "mock", "/edge")).await.unwrap();
    assert_eq!(ok.status, 599);
}
