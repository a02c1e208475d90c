//! Resilient egress against a mock vendor that scripts the faults: safe
//! retries with backoff and `Retry-After`, the retry budget, the circuit
//! breaker, per-vendor and per-listener load shedding, and the SSRF
//! defences on the vendor's address.

mod support;

use std::time::{Duration, Instant, SystemTime};
use support::{Valet, authed, bearer, get, http_get, reason, sample, vendor};
use tonic::Code;
use valet::config::{Config, VendorConfig};
use valet::proto::{CallRequest, Operation};
use valet_egress::{BreakerPolicy, RetryPolicy};
use valet_testkit::{MockVendor, Scripted, TestCa};

const SECRET: &str = "resilience-secret-000001";

/// Fast retries, so tests wait milliseconds rather than seconds.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        base_backoff_ms: 5,
        max_backoff_ms: 20,
        ..RetryPolicy::default()
    }
}

fn never_open() -> BreakerPolicy {
    BreakerPolicy {
        consecutive_failures: 0,
        failure_ratio: 0.0,
        ..BreakerPolicy::default()
    }
}

async fn start(v: VendorConfig) -> (Valet, String) {
    start_with(Config {
        vendors: vec![v],
        ..Config::default()
    })
    .await
}

async fn start_with(config: Config) -> (Valet, String) {
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    valet.put_credential("acme", "mock", SECRET).await;
    let key = valet
        .api_key(&["acme"], &["mock"], &[Operation::Read, Operation::Write])
        .await;
    (valet, key)
}

fn mock_vendor(mock: &MockVendor) -> VendorConfig {
    let mut v = vendor("mock", &mock.base_url(), bearer());
    v.retry = quick_retries();
    v.breaker = never_open();
    v
}

fn write(key: &str) -> CallRequest {
    CallRequest {
        operation: Operation::Write as i32,
        method: "POST".into(),
        idempotency_key: key.into(),
        body: b"{}".to_vec(),
        ..get("acme", "mock", "/v1/charges")
    }
}

fn unavailable() -> Scripted {
    Scripted::status(503)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_retried_through_503s() {
    let mock = MockVendor::start().await;
    mock.script_sequence(
        "/v1/users",
        vec![unavailable(), unavailable(), Scripted::status(200).body("ok")],
    );
    let (valet, key) = start(mock_vendor(&mock)).await;
    let answer = valet.call(&key, get("acme", "mock", "/v1/users")).await.unwrap();
    assert_eq!((answer.status, answer.attempts), (200, 3));
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_max_attempts_and_return_the_last_answer() {
    let mock = MockVendor::start().await;
    mock.script("/v1/users", unavailable());
    let (valet, key) = start(mock_vendor(&mock)).await;
    let answer = valet.call(&key, get("acme", "mock", "/v1/users")).await.unwrap();
    assert_eq!((answer.status, answer.attempts), (503, 3));
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_a_vendor_idempotency_header_is_sent_once() {
    let mock = MockVendor::start().await;
    mock.script("/v1/charges", unavailable());
    let (valet, key) = start(mock_vendor(&mock)).await;
    let answer = valet.call(&key, write("charge-1")).await.unwrap();
    assert_eq!((answer.status, answer.attempts), (503, 1));
    assert_eq!(mock.requests().len(), 1, "never a second WRITE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_to_a_deduping_vendor_is_retried_with_the_same_key() {
    let mock = MockVendor::start().await;
    mock.script_sequence("/v1/charges", vec![unavailable(), Scripted::status(201)]);
    let mut v = mock_vendor(&mock);
    v.idempotency_header = Some("Idempotency-Key".into());
    let (valet, key) = start(v).await;
    let answer = valet.call(&key, write("charge-2")).await.unwrap();
    assert_eq!((answer.status, answer.attempts), (201, 2));
    let sent: Vec<_> = mock
        .requests()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0], sent[1], "the vendor dedupes both attempts by one key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_in_seconds_and_as_an_http_date() {
    let mock = MockVendor::start().await;
    mock.script_sequence(
        "/seconds",
        vec![unavailable().header("retry-after", "1"), Scripted::status(200)],
    );
    let (valet, key) = start(mock_vendor(&mock)).await;

    let began = Instant::now();
    let answer = valet.call(&key, get("acme", "mock", "/seconds")).await.unwrap();
    assert_eq!((answer.status, answer.attempts), (200, 2));
    assert!(began.elapsed() >= Duration::from_millis(950), "waited the second");

    // An HTTP-date has one-second resolution: three seconds ahead leaves
    // more than two to wait.
    let in_three_seconds = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
    mock.script_sequence(
        "/date",
        vec![
            unavailable().header("retry-after", &in_three_seconds),
            Scripted::status(200),
        ],
    );
    let began = Instant::now();
    let answer = valet.call(&key, get("acme", "mock", "/date")).await.unwrap();
    assert_eq!((answer.status, answer.attempts), (200, 2));
    assert!(
        began.elapsed() >= Duration::from_millis(1900),
        "waited for the date"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_retry_after_values_fall_back_to_backoff_and_huge_ones_end_the_retries() {
    let mock = MockVendor::start().await;
    for (path, value) in [
        ("/garbage", "soon-ish"),
        ("/negative", "-5"),
        ("/past", "Mon, 01 Jan 2001 00:00:00 GMT"),
    ] {
        mock.script_sequence(
            path,
            vec![unavailable().header("retry-after", value), Scripted::status(200)],
        );
    }
    mock.script("/huge", unavailable().header("retry-after", "86400"));
    let (valet, key) = start(mock_vendor(&mock)).await;

    for path in ["/garbage", "/negative", "/past"] {
        let answer = valet.call(&key, get("acme", "mock", path)).await.unwrap();
        assert_eq!((answer.status, answer.attempts), (200, 2), "{path}");
    }
    let began = Instant::now();
    let answer = valet.call(&key, get("acme", "mock", "/huge")).await.unwrap();
    assert_eq!(
        (answer.status, answer.attempts),
        (503, 1),
        "a day's wait is not waited: the caller gets the answer"
    );
    assert!(support::header(&answer, "retry-after").is_some());
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_past_the_callers_deadline_is_not_waited_for() {
    let mock = MockVendor::start().await;
    mock.script_sequence(
        "/v1/users",
        vec![unavailable().header("retry-after", "5"), Scripted::status(200)],
    );
    let (valet, key) = start(mock_vendor(&mock)).await;
    let mut gateway = valet.gateway().await;
    let mut request = authed(get("acme", "mock", "/v1/users"), &key);
    request.set_timeout(Duration::from_secs(2));
    let began = Instant::now();
    let answer = gateway.call(request).await.unwrap().into_inner();
    assert_eq!((answer.status, answer.attempts), (503, 1));
    assert!(began.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_holds_under_a_brown_out() {
    let mock = MockVendor::start().await;
    mock.script("/v1/users", unavailable());
    let mut v = mock_vendor(&mock);
    v.retry = RetryPolicy {
        budget_percent: 10.0,
        budget_min_per_sec: 1,
        ..quick_retries()
    };
    let (valet, key) = start(v).await;
    let calls = 60;
    for _ in 0..calls {
        valet.call(&key, get("acme", "mock", "/v1/users")).await.unwrap();
    }
    let sent = mock.requests().len();
    // Without a budget: 3 attempts a call, 180 requests. With it: the calls,
    // plus 10 % of them, plus the floor (1/s over the budget's 10 s window).
    assert!(sent >= calls, "{sent}");
    assert!(
        sent <= calls + calls / 10 + 10 + 2,
        "{sent} requests for {calls} calls"
    );
    let (_, metrics) = http_get(&format!("http://{}/metrics", valet.ops_addr)).await;
    let refused = sample(
        &metrics,
        "valet_vendor_retry_budget_exhausted_total",
        &[("vendor", "mock")],
    );
    assert!(refused >= 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_fails_fast_half_opens_and_closes() {
    let mock = MockVendor::start().await;
    mock.script("/v1/users", unavailable());
    let mut v = mock_vendor(&mock);
    v.retry.max_attempts = 1;
    v.breaker = BreakerPolicy {
        consecutive_failures: 3,
        failure_ratio: 0.0,
        open_ms: 2_000,
        half_open_probes: 1,
        ..BreakerPolicy::default()
    };
    let (valet, key) = start(v).await;
    for _ in 0..3 {
        let answer = valet.call(&key, get("acme", "mock", "/v1/users")).await.unwrap();
        assert_eq!(answer.status, 503);
    }
    let opened = Instant::now();
    let refused = valet
        .call(&key, get("acme", "mock", "/v1/users"))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Unavailable, "VENDOR_CIRCUIT_OPEN")
    );
    let retry_after: u64 = refused
        .metadata()
        .get("retry-after")
        .expect("retry-after")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2_000).contains(&retry_after), "retry-after {retry_after} ms");
    assert_eq!(mock.requests().len(), 3, "failed fast: nothing sent");
    let (_, metrics) = http_get(&format!("http://{}/metrics", valet.ops_addr)).await;
    assert_eq!(
        sample(&metrics, "valet_vendor_circuit_state", &[("vendor", "mock")]),
        2.0
    );

    // The breaker's own clock: it half-opens once `open_ms` has passed.
    tokio::time::sleep_until((opened + Duration::from_millis(2_050)).into()).await;
    mock.script("/v1/users", Scripted::status(200));
    let probe = valet.call(&key, get("acme", "mock", "/v1/users")).await.unwrap();
    assert_eq!(probe.status, 200, "the probe goes through");
    let after = valet.call(&key, get("acme", "mock", "/v1/users")).await.unwrap();
    assert_eq!(after.status, 200, "closed again");
    assert_eq!(mock.requests().len(), 5);

    // A failed probe opens it again.
    mock.script("/v1/users", unavailable());
    for _ in 0..3 {
        valet.call(&key, get("acme", "mock", "/v1/users")).await.unwrap();
    }
    let reopened = Instant::now();
    tokio::time::sleep_until((reopened + Duration::from_millis(2_050)).into()).await;
    let failed_probe = valet.call(&key, get("acme", "mock", "/v1/users")).await.unwrap();
    assert_eq!(failed_probe.status, 503);
    let refused = valet
        .call(&key, get("acme", "mock", "/v1/users"))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "VENDOR_CIRCUIT_OPEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundreds_do_not_open_the_breaker() {
    let mock = MockVendor::start().await;
    mock.script("/v1/users", Scripted::status(404));
    let mut v = mock_vendor(&mock);
    v.breaker = BreakerPolicy {
        consecutive_failures: 2,
        ..BreakerPolicy::default()
    };
    let (valet, key) = start(v).await;
    for _ in 0..5 {
        let answer = valet.call(&key, get("acme", "mock", "/v1/users")).await.unwrap();
        assert_eq!((answer.status, answer.attempts), (404, 1));
    }
}

/// Sends `n` slow calls at once; returns how many were served and the
/// reasons the others were refused with. Checks on the way that health says
/// SERVING during the flood and that refusals come at once with a
/// retry-after.
async fn flood(valet: &Valet, key: &str, n: usize) -> (usize, Vec<String>) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let gateway = valet.gateway().await;
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (mut gateway, key) = (gateway.clone(), key.to_owned());
            tokio::spawn(async move {
                let began = Instant::now();
                let result = gateway.call(authed(get("acme", "mock", "/slow"), &key)).await;
                (result, began.elapsed())
            })
        })
        .collect();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", valet.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(health, ServingStatus::Serving as i32, "SERVING during the flood");
    let (mut served, mut shed) = (0, Vec::new());
    for call in calls {
        let (result, took) = call.await.unwrap();
        match result {
            Ok(answer) => {
                assert_eq!(answer.into_inner().status, 200);
                served += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    took < Duration::from_secs(1),
                    "refused at once, not queued: {took:?}"
                );
                assert!(status.metadata().get("retry-after").is_some());
                shed.push(reason(&status));
            }
        }
    }
    (served, shed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_shed_quickly_while_health_stays_serving() {
    let mock = MockVendor::start().await;
    // Long enough that every call of a flood is in flight at once, even on
    // a loaded machine.
    mock.script("/slow", Scripted::status(200).delay(Duration::from_secs(5)));

    // The vendor's own limit.
    let mut v = mock_vendor(&mock);
    v.max_concurrent_requests = 2;
    let (valet, key) = start(v).await;
    let (served, shed) = flood(&valet, &key, 12).await;
    assert_eq!(served, 2, "the vendor's two slots");
    assert_eq!(shed, vec!["VENDOR_OVERLOADED"; 10]);
    assert_eq!(mock.requests().len(), 2);

    // The Gateway listener's limit.
    let mut config = Config {
        vendors: vec![mock_vendor(&mock)],
        ..Config::default()
    };
    config.server.max_concurrent_calls = 3;
    let (valet, key) = start_with(config).await;
    let (served, shed) = flood(&valet, &key, 12).await;
    assert_eq!(served, 3, "the listener's three slots");
    assert_eq!(shed, vec!["OVERLOADED"; 9]);

    // An oversized message is refused before it is decoded, and the
    // replica stays SERVING.
    let huge = CallRequest {
        body: vec![b'x'; 8 << 20],
        ..get("acme", "mock", "/slow")
    };
    let err = valet.gateway().await.call(authed(huge, &key)).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{err:?}"
    );
    let (status, _) = http_get(&format!("http://{}/readyz", valet.ops_addr)).await;
    assert_eq!(status, 200);
    let (_, metrics) = http_get(&format!("http://{}/metrics", valet.ops_addr)).await;
    assert_eq!(
        sample(&metrics, "valet_calls_total", &[("outcome", "OVERLOADED")]),
        9.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_vendor_addresses_are_refused_unless_allowed() {
    // Literal addresses are refused when the config is read.
    for base in [
        "https://169.254.169.254/latest",
        "https://[::ffff:127.0.0.1]:8443",
        "https://10.0.0.8",
        "https://127.0.0.1:8443",
    ] {
        let config = Config {
            vendors: vec![VendorConfig {
                allow_insecure_http: false,
                ..vendor("metadata", base, bearer())
            }],
            ..Config::default()
        };
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains("allow_private_addresses"), "{base}: {err}");
        let allowed = Config {
            vendors: vec![VendorConfig {
                allow_insecure_http: false,
                allow_private_addresses: true,
                ..vendor("metadata", base, bearer())
            }],
            ..Config::default()
        };
        allowed.check().unwrap_or_else(|e| panic!("{base} allowed: {e}"));
    }

    // A host name that resolves to loopback is refused at connect time, and
    // nothing reaches it.
    let ca = TestCa::new();
    let mock = MockVendor::start_tls(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let https = |allow: bool| VendorConfig {
        allow_insecure_http: false,
        allow_private_addresses: allow,
        ca_file: Some(ca_file.clone()),
        retry: quick_retries(),
        ..vendor("mock", &mock.base_url(), bearer())
    };
    assert!(mock.base_url().starts_with("https://localhost:"));
    let (valet, key) = start(https(false)).await;
    let err = valet.call(&key, get("acme", "mock", "/v1/me")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "VENDOR_ADDRESS_FORBIDDEN")
    );
    assert!(err.message().contains("loopback"), "{}", err.message());
    assert!(!err.message().contains("127.0.0.1"), "no address in the message");
    assert!(mock.requests().is_empty());

    let (valet, key) = start(https(true)).await;
    let answer = valet.call(&key, get("acme", "mock", "/v1/me")).await.unwrap();
    assert_eq!(answer.status, 200);

    // Pinned addresses (`resolve_to`) are as literal as a base URL's, so
    // cloud metadata and an IPv4-mapped loopback are refused when the config
    // is read; allowed, the pinned address is the one connected to.
    for (pinned, class) in [
        ("169.254.169.254", "link-local"),
        ("::ffff:127.0.0.1", "ipv4-embedded"),
    ] {
        let config = Config {
            vendors: vec![VendorConfig {
                resolve_to: vec![pinned.parse().unwrap()],
                ..https(false)
            }],
            ..Config::default()
        };
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains("vendors[0].resolve_to"), "{pinned}: {err}");
        assert!(err.to_lowercase().contains(class), "{pinned}: {err}");
    }
    assert!(mock.requests().len() == 1, "nothing but the allowed call arrived");
    let (valet, key) = start(VendorConfig {
        resolve_to: vec!["127.0.0.1".parse().unwrap()],
        ..https(true)
    })
    .await;
    let answer = valet.call(&key, get("acme", "mock", "/v1/me")).await.unwrap();
    assert_eq!(answer.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_cannot_be_made_is_retried_for_a_read_only() {
    // A port with nothing listening: every connect is refused, nothing sent.
    let port = support::free_port();
    let mut v = vendor("mock", &format!("http://127.0.0.1:{port}"), bearer());
    v.retry = quick_retries();
    v.breaker = never_open();
    let (valet, key) = start(v).await;
    let err = valet
        .call(&key, get("acme", "mock", "/v1/users"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "VENDOR_UNREACHABLE");
    let err = valet.call(&key, write("charge-3")).await.unwrap_err();
    assert_eq!(reason(&err), "VENDOR_UNREACHABLE");
    let (_, metrics) = http_get(&format!("http://{}/metrics", valet.ops_addr)).await;
    let attempts = sample(
        &metrics,
        "valet_vendor_request_duration_seconds_count",
        &[("vendor", "mock"), ("status", "error")],
    );
    assert_eq!(
        attempts,
        3.0 + 1.0,
        "three for the READ, one for the WRITE: {metrics}"
    );
    // Nothing reached the vendor, so the WRITE's key is free for a retry.
    let again = valet.call(&key, write("charge-3")).await.unwrap_err();
    assert_eq!(
        reason(&again),
        "VENDOR_UNREACHABLE",
        "not IN_FLIGHT or OUTCOME_UNKNOWN"
    );
}
