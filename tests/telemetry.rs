//! Telemetry an SRE can live in: the span tree of a call exported over OTLP
//! to a real receiver (its parent from the caller's `traceparent`, its
//! client span's context sent on to the vendor), exact metric counts scraped
//! from `/metrics` after known traffic, and the trace id in the log line —
//! with the credential and the caller's key in none of them.

mod support;

use std::time::Duration;
use support::{Valet, ValetProcess, authed, bearer, get, http_get, sample, vendor};
use tonic::Code;
use valet::config::Config;
use valet::proto::{CallRequest, Operation};
use valet_quota::{Mode, OperationMatch, Period, Policy};
use valet_testkit::{MockVendor, OtlpReceiver, ReceivedSpan, Scripted, leak};

const WAIT: Duration = Duration::from_secs(20);

fn child_of<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan, name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.parent_span_id == parent.span_id && s.name == name)
        .unwrap_or_else(|| panic!("no '{name}' under '{}': {spans:#?}", parent.name))
}

fn server_span<'a>(spans: &'a [ReceivedSpan], trace_id: &str) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.name == "valet.v1.Gateway/Call")
}

/// A config exporting to `receiver` (with `telemetry`'s other keys), and
/// the vendor `github` at `mock`.
fn exporting(receiver: &OtlpReceiver, mock: &MockVendor, telemetry: &str) -> String {
    format!(
        r#"
[telemetry]
otlp_endpoint = "{endpoint}"
{telemetry}
[[vendors]]
name = "github"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "bearer" }}
"#,
        endpoint = receiver.endpoint,
        base = mock.base_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_one_trace_from_the_caller_through_valet_to_the_vendor() {
    let receiver = OtlpReceiver::start().await;
    let mock = MockVendor::start().await;
    let canary = valet_testkit::canary("otlp");
    let telemetry = r#"service_name = "valet-under-test"
resource_attributes = { "deployment.environment" = "test" }
metrics_export_interval_ms = 100"#;
    let body = exporting(&receiver, &mock, telemetry);
    let env = [("RUST_LOG", "trace"), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let valet = ValetProcess::spawn_with(&body, &env).await;
    valet
        .admin(
            &["credential", "put", "--tenant", "acme", "--vendor", "github"],
            &format!("{canary}\n"),
        )
        .await;
    let api_key = valet
        .admin(
            &[
                "apikey",
                "create",
                "--name",
                "tracer",
                "--tenant",
                "*",
                "--vendor",
                "github",
                "--operation",
                "read",
            ],
            "",
        )
        .await
        .trim()
        .to_owned();
    let mut gateway = valet.gateway().await;

    // The caller's own trace: Valet's server span must hang under it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = authed(get("acme", "github", "/v1/repos?page=2"), &api_key);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let answer = gateway.call(request).await.unwrap().into_inner();
    assert_eq!(answer.status, 200);

    // A call that fails, in a trace of its own.
    let failed_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut request = authed(get("globex", "github", "/v1/repos"), &api_key);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{failed_trace}-b7ad6b7169203331-01").parse().unwrap(),
    );
    let status = gateway.call(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let spans = receiver
        .wait_for_spans(WAIT, |spans| {
            let tree_done = |trace| {
                server_span(spans, trace).is_some_and(|server| {
                    spans.iter().filter(|s| s.trace_id == trace).count() >= 4
                        && spans.iter().any(|s| s.parent_span_id == server.span_id)
                })
            };
            tree_done(trace_id) && server_span(spans, failed_trace).is_some()
        })
        .await;

    // The server span: RPC conventions, Valet's attributes, the caller's parent.
    let server = server_span(&spans, trace_id).unwrap();
    assert_eq!(
        server.parent_span_id, caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(server.service_name, "valet-under-test");
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "valet.v1.Gateway"),
        ("rpc.method", "Call"),
        ("rpc.grpc.status_code", "0"),
        ("valet.tenant", "acme"),
        ("valet.vendor", "github"),
        ("valet.operation", "read"),
        ("valet.reason", "OK"),
        ("valet.vendor.status", "200"),
        ("valet.attempts", "1"),
        ("valet.idempotency.replayed", "false"),
        ("valet.quota", "unlimited"),
    ] {
        assert_eq!(server.attr(key), Some(value), "{key} on {server:#?}");
    }
    assert_ne!(server.status_code, 2, "a successful call is not an error");

    // Its children: the quota check, the lease (with its audit write) and
    // the vendor attempt.
    let quota = child_of(&spans, server, "valet.quota.check");
    assert_eq!(quota.attr("valet.quota"), Some("unlimited"));
    let lease = child_of(&spans, server, "valet.credential.lease");
    assert_eq!(lease.attr("valet.tenant"), Some("acme"));
    let audit = child_of(&spans, lease, "valet.audit.append");
    assert_eq!(audit.attr("valet.audit.event"), Some("credential_lease"));
    let attempt = child_of(&spans, server, "GET");
    assert_eq!(attempt.kind, 3, "SPAN_KIND_CLIENT");
    let port = mock.addr().port().to_string();
    for (key, value) in [
        ("http.request.method", "GET"),
        ("server.address", "127.0.0.1"),
        ("server.port", port.as_str()),
        ("url.scheme", "http"),
        ("http.response.status_code", "200"),
        ("valet.vendor", "github"),
    ] {
        assert_eq!(attempt.attr(key), Some(value), "{key} on {attempt:#?}");
    }
    assert!(
        attempt.attributes.values().all(|v| !v.contains("page=2")),
        "no query string on the attempt span: {attempt:#?}"
    );

    // The vendor received the attempt's context, so its trace joins ours.
    let sent = mock.requests();
    let traceparent = sent[0]
        .header("traceparent")
        .expect("traceparent sent to the vendor");
    assert_eq!(traceparent, format!("00-{trace_id}-{}-01", attempt.span_id));

    // The failed call: error status with the stable reason, on the call and
    // on the lease that failed.
    let failed = server_span(&spans, failed_trace).unwrap();
    assert_eq!(failed.status_code, 2, "STATUS_CODE_ERROR");
    assert_eq!(failed.status_message, "CREDENTIAL_NOT_FOUND");
    assert_eq!(failed.attr("valet.reason"), Some("CREDENTIAL_NOT_FOUND"));
    assert_eq!(failed.attr("rpc.grpc.status_code"), Some("5"));
    let failed_lease = child_of(&spans, failed, "valet.credential.lease");
    assert_eq!(failed_lease.status_code, 2);

    // Metrics arrive over OTLP too.
    receiver.wait_for_metric(WAIT, "valet.calls").await;

    let exited = valet.terminate().await;
    assert_eq!(exited.code, Some(0));
    let logs = String::from_utf8_lossy(&exited.stdout).into_owned();
    let line = logs
        .lines()
        .find(|l| l.contains("\"message\":\"call\"") && l.contains(trace_id))
        .expect("the call's log line carries the trace id");
    assert!(line.contains(&format!("\"trace_id\":\"{trace_id}\"")), "{line}");
    assert!(line.contains("\"caller_name\":\"tracer\""), "{line}");

    // Not a credential, not an API key, in any span, metric or log line.
    let exported = receiver.raw();
    assert!(!exported.is_empty());
    for (what, secret) in [
        ("the credential", canary.as_str()),
        ("the API key", api_key.as_str()),
    ] {
        for (output, bytes) in [
            ("exported spans and metrics", exported.as_slice()),
            ("stdout", exited.stdout.as_slice()),
            ("stderr", exited.stderr.as_slice()),
        ] {
            let found = leak::forms_found(bytes, secret);
            assert!(found.is_empty(), "{output} hold {what} ({found:?})");
        }
    }
}

/// A call whose trace is not sampled (the caller's flag says so; the
/// sampler is parent-based) makes no spans at all — none exported, and no
/// child span turning into a root of its own — while its trace still goes
/// on to the vendor, unsampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_call_makes_no_spans_and_passes_its_trace_on() {
    let receiver = OtlpReceiver::start().await;
    let mock = MockVendor::start().await;
    let body = exporting(&receiver, &mock, "");
    let valet = ValetProcess::spawn_with(&body, &[("OTEL_BSP_SCHEDULE_DELAY", "50")]).await;
    valet
        .admin(
            &["credential", "put", "--tenant", "acme", "--vendor", "github"],
            "unsampled-test-secret-0001\n",
        )
        .await;
    let args = [
        "apikey",
        "create",
        "--name",
        "sampler",
        "--tenant",
        "acme",
        "--vendor",
        "github",
        "--operation",
        "read",
    ];
    let api_key = valet.admin(&args, "").await.trim().to_owned();
    let mut gateway = valet.gateway().await;
    let call = |trace: &str, flags: &str| {
        let mut request = authed(get("acme", "github", "/v1/repos"), &api_key);
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{trace}-00f067aa0ba902b7-{flags}").parse().unwrap(),
        );
        request
    };
    let unsampled = "5bf92f3577b34da6a3ce929d0e0e4736";
    let sampled = "6bf92f3577b34da6a3ce929d0e0e4736";
    for (trace, flags) in [(unsampled, "00"), (sampled, "01")] {
        let answer = gateway.call(call(trace, flags)).await.unwrap().into_inner();
        assert_eq!(answer.status, 200);
    }
    // The sampled call's spans end after the unsampled call's would have:
    // once they are all here, anything the first call made is here too.
    let spans = receiver
        .wait_for_spans(WAIT, |spans| {
            spans.iter().filter(|s| s.trace_id == sampled).count() >= 5
        })
        .await;
    // (The admin commands above have spans of their own: not a call's.)
    let of_a_call = |s: &ReceivedSpan| {
        [
            "valet.v1.Gateway/Call",
            "valet.quota.check",
            "valet.credential.lease",
            "GET",
        ]
        .contains(&s.name.as_str())
            || s.attr("valet.audit.event") == Some("credential_lease")
    };
    let strays: Vec<_> = spans
        .iter()
        .filter(|s| of_a_call(s) && s.trace_id != sampled)
        .collect();
    assert!(strays.is_empty(), "spans outside the sampled trace: {strays:#?}");
    let sent = mock.requests();
    let first = sent[0]
        .header("traceparent")
        .expect("traceparent sent to the vendor");
    assert!(
        first.starts_with(&format!("00-{unsampled}-")) && first.ends_with("-00"),
        "{first}"
    );
    assert!(!first.contains("00f067aa0ba902b7"), "Valet's own hop: {first}");
    let second = sent[1].header("traceparent").expect("traceparent");
    assert!(
        second.starts_with(&format!("00-{sampled}-")) && second.ends_with("-01"),
        "{second}"
    );
    let exited = valet.terminate().await;
    let logs = String::from_utf8_lossy(&exited.stdout).into_owned();
    assert!(
        logs.lines()
            .any(|l| l.contains("\"message\":\"call\"")
                && l.contains(&format!("\"trace_id\":\"{unsampled}\""))),
        "the unsampled call's log line carries its trace id"
    );
}

fn write(key: &str) -> CallRequest {
    CallRequest {
        operation: Operation::Write as i32,
        method: "POST".into(),
        idempotency_key: key.into(),
        body: b"{\"amount\":1}".to_vec(),
        ..get("acme", "mock", "/v1/charges")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_exactly() {
    let mock = MockVendor::start().await;
    mock.script("/unauthorized", Scripted::status(401));
    mock.script("/busy", Scripted::status(429));
    let mut config = Config {
        vendors: vec![vendor("mock", &mock.base_url(), bearer())],
        ..Config::default()
    };
    let limited = |tenant: &str, mode| Policy {
        tenant: tenant.into(),
        vendor: "mock".into(),
        operation: OperationMatch::Any,
        rate: 1,
        period: Period::Hour,
        burst: 2,
        mode,
        aggregate: false,
    };
    config.quota.policies = vec![
        limited("limited", Mode::Enforce),
        limited("shadowed", Mode::Shadow),
    ];
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    for tenant in ["acme", "limited", "shadowed"] {
        valet
            .put_credential(tenant, "mock", "metrics-test-secret-0001")
            .await;
    }
    let key = valet
        .api_key(&["*"], &["mock"], &[Operation::Read, Operation::Write])
        .await;
    let mut gateway = valet.gateway().await;
    let call = |req: CallRequest| authed(req, &key);

    for _ in 0..3 {
        gateway.call(call(get("acme", "mock", "/ok"))).await.unwrap();
    }
    gateway
        .call(call(get("acme", "mock", "/unauthorized")))
        .await
        .unwrap();
    gateway.call(call(get("acme", "mock", "/busy"))).await.unwrap();
    for _ in 0..2 {
        gateway.call(call(write("charge-1"))).await.unwrap();
    }
    for tenant in ["limited", "shadowed"] {
        for _ in 0..3 {
            let _ = gateway.call(call(get(tenant, "mock", "/ok"))).await;
        }
    }
    let unknown = gateway
        .call(authed(get("acme", "mock", "/ok"), "vk_not_a_key"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);

    let (status, metrics) = http_get(&format!("http://{}/metrics", valet.ops_addr)).await;
    assert_eq!(status, 200);
    let calls = |labels: &[(&str, &str)]| sample(&metrics, "valet_calls_total", labels);
    let acme = [("tenant", "acme"), ("vendor", "mock")];
    let read_ok = [&acme[..], &[("operation", "read"), ("outcome", "OK")]].concat();
    assert_eq!(
        calls(&[&read_ok[..], &[("status_class", "2xx")]].concat()),
        3.0,
        "{metrics}"
    );
    assert_eq!(calls(&[&read_ok[..], &[("status_class", "4xx")]].concat()), 2.0);
    assert_eq!(
        calls(
            &[
                &acme[..],
                &[("operation", "write"), ("outcome", "OK"), ("status_class", "2xx")]
            ]
            .concat()
        ),
        2.0,
        "the replay counts as a call"
    );
    assert_eq!(sample(&metrics, "valet_idempotency_replays_total", &acme), 1.0);
    assert_eq!(
        calls(&[
            ("tenant", "limited"),
            ("outcome", "QUOTA_EXCEEDED"),
            ("status_class", "none")
        ]),
        1.0
    );
    assert_eq!(calls(&[("tenant", "limited"), ("outcome", "OK")]), 2.0);
    assert_eq!(
        sample(
            &metrics,
            "valet_quota_refusals_total",
            &[("tenant", "limited"), ("policy", "limited/mock/*")]
        ),
        1.0
    );
    assert_eq!(calls(&[("tenant", "shadowed"), ("outcome", "OK")]), 3.0);
    assert_eq!(
        sample(
            &metrics,
            "valet_quota_shadow_refusals_total",
            &[("tenant", "shadowed"), ("policy", "shadowed/mock/*")]
        ),
        1.0
    );
    assert_eq!(
        calls(&[("tenant", "-"), ("vendor", "-"), ("outcome", "API_KEY_UNKNOWN")]),
        1.0,
        "an unauthenticated call is counted without caller-chosen labels"
    );
    let attempts = |status: &str| {
        sample(
            &metrics,
            "valet_vendor_request_duration_seconds_count",
            &[("vendor", "mock"), ("status", status)],
        )
    };
    assert_eq!(attempts("401"), 1.0, "a 401 is not retried");
    assert_eq!(attempts("429"), 3.0, "a READ's 429 is retried, up to 3 attempts");
    assert_eq!(
        sample(&metrics, "valet_vendor_retries_total", &[("vendor", "mock")]),
        2.0
    );
    assert_eq!(
        attempts("200"),
        3.0 + 1.0 + 2.0 + 3.0,
        "acme reads, one write, limited, shadowed"
    );
    assert_eq!(
        sample(
            &metrics,
            "valet_call_duration_seconds_count",
            &[("vendor", "mock"), ("operation", "read"), ("outcome", "OK")]
        ),
        3.0 + 2.0 + 2.0 + 3.0
    );
    for gauge in ["valet_calls_in_flight", "valet_quota_fallback_active"] {
        assert!(
            metrics.contains(&format!("\n{gauge} 0")),
            "{gauge} is 0: {metrics}"
        );
    }
    assert!(metrics.contains("\nvalet_ready 1"), "{metrics}");
    assert!(
        metrics.contains("\nvalet_vendor_circuit_state{vendor=\"mock\"} 0"),
        "the breaker is closed: {metrics}"
    );

    assert!(
        leak::forms_found(metrics.as_bytes(), "metrics-test-secret-0001").is_empty()
            && leak::forms_found(metrics.as_bytes(), &key).is_empty(),
        "no secret in /metrics"
    );

    let (status, body) = http_get(&format!("http://{}/healthz", valet.ops_addr)).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(&format!("http://{}/readyz", valet.ops_addr)).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, _) = http_get(&format!("http://{}/nope", valet.ops_addr)).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_labels_can_be_switched_off() {
    let mock = MockVendor::start().await;
    let mut config = Config {
        vendors: vec![vendor("mock", &mock.base_url(), bearer())],
        ..Config::default()
    };
    config.telemetry.tenant_label = false;
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    valet
        .put_credential("acme", "mock", "metrics-test-secret-0002")
        .await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let mut gateway = valet.gateway().await;
    gateway
        .call(authed(get("acme", "mock", "/ok"), &key))
        .await
        .unwrap();
    let (_, metrics) = http_get(&format!("http://{}/metrics", valet.ops_addr)).await;
    assert_eq!(
        sample(
            &metrics,
            "valet_calls_total",
            &[("vendor", "mock"), ("outcome", "OK")]
        ),
        1.0
    );
    assert!(!metrics.contains("tenant="), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_on_stdout_and_stderr_is_json() {
    // A first start: the bootstrap-key notice is among the lines.
    let valet = ValetProcess::spawn("").await;
    let exited = valet.terminate().await;
    let mut notice = false;
    for (stream, bytes) in [("stdout", &exited.stdout), ("stderr", &exited.stderr)] {
        for line in String::from_utf8_lossy(bytes).lines() {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|_| panic!("{stream}: not a JSON line: {line}"));
            assert!(value.is_object(), "{stream}: {line}");
            notice |= line.contains("admin API key was written");
        }
    }
    assert!(notice, "the bootstrap notice is logged");
}
