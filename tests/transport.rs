//! The transport, before any service runs: refusals tonic makes itself
//! (oversized, truncated or malformed messages) carry the documented status,
//! a reason and a request id like every other refusal; connections that
//! never speak HTTP/2, ignore pings or exceed the cap are closed; reflection
//! speaks v1 and v1alpha and lists what each listener serves.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use std::time::Duration;
use support::{Valet, ValetProcess, authed, bearer, get, reason, vendor};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use valet::proto::Operation;
use valet_testkit::MockVendor;

/// A gRPC frame: compressed flag, declared length, payload.
fn frame(flag: u8, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A message that is exactly `payload` as one frame.
fn message(payload: &[u8]) -> Vec<u8> {
    frame(0, payload.len() as u32, payload)
}

/// POSTs `body` as a raw gRPC request over HTTP/2 (prior knowledge) and
/// returns the status the server answered, headers and trailers merged.
async fn raw_call(base: &str, path: &str, body: Vec<u8>) -> tonic::Status {
    raw_call_with(base, path, body, &[]).await
}

/// [`raw_call`] with extra request headers.
async fn raw_call_with(base: &str, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> tonic::Status {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut request = http::Request::post(format!("{base}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let response = client.request(request).await.expect("an HTTP/2 answer");
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("the body");
    let mut all = parts.headers;
    if let Some(trailers) = collected.trailers() {
        all.extend(trailers.clone());
    }
    tonic::Status::from_header_map(&all).expect("a grpc-status")
}

fn request_id(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id on {status:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_just_over_the_limit_is_body_too_large() {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    let canary = valet_testkit::canary("transport");
    valet.put_credential("acme", "mock", &canary).await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Write]).await;
    let request = valet::proto::CallRequest {
        operation: Operation::Write as i32,
        method: "POST".into(),
        idempotency_key: "big-1".into(),
        body: vec![b'x'; (1 << 20) + (100 << 10)],
        ..get("acme", "mock", "/v1/upload")
    };
    let err = valet
        .gateway()
        .await
        .call(authed(request, &key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(reason(&err), "BODY_TOO_LARGE");
    assert!(err.message().contains("body"), "{}", err.message());
    request_id(&err);
    assert!(mock.requests().is_empty(), "nothing reached the vendor");
    let shown = format!("{err:?}");
    for secret in [canary.as_str(), key.as_str()] {
        let found = valet_testkit::leak::forms_found(shown.as_bytes(), secret);
        assert!(found.is_empty(), "the refusal holds a secret ({found:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_made_by_the_transport_carry_a_reason_a_request_id_and_a_log_line() {
    let valet = ValetProcess::spawn("").await;
    let call = "/valet.v1.Gateway/Call";
    // Field 1 (tenant) is a string: length-delimited, UTF-8.
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "far over the transport limit",
            call,
            frame(0, 64 << 20, b"xx"),
            "BODY_TOO_LARGE",
        ),
        (
            "invalid UTF-8 in a string",
            call,
            message(&[0x0a, 0x02, 0xff, 0xfe]),
            "MESSAGE_MALFORMED",
        ),
        (
            "wrong wire type",
            call,
            message(&[0x08, 0x01]),
            "MESSAGE_MALFORMED",
        ),
        (
            "truncated protobuf",
            call,
            message(&[0x0a, 0x05, b'a']),
            "MESSAGE_MALFORMED",
        ),
        (
            "truncated frame",
            call,
            frame(0, 10, &[0x0a, 0x01]),
            "MESSAGE_MALFORMED",
        ),
        (
            "compressed flag, no grpc-encoding",
            call,
            frame(1, 2, &[0x0a, 0x00]),
            "MESSAGE_MALFORMED",
        ),
        ("no message at all", call, Vec::new(), "MESSAGE_MALFORMED"),
        (
            "invalid UTF-8 to Health",
            "/grpc.health.v1.Health/Check",
            message(&[0x0a, 0x02, 0xff, 0xfe]),
            "MESSAGE_MALFORMED",
        ),
        (
            "far over the Admin limit",
            "/valet.v1.Admin/ListApiKeys",
            frame(0, 64 << 20, b"xx"),
            "BODY_TOO_LARGE",
        ),
    ];
    let mut ids = Vec::new();
    let mut compressed = Vec::new();
    for (what, path, body, want) in cases {
        let base = if path.starts_with("/valet.v1.Admin") {
            &valet.admin_url
        } else {
            &valet.gateway_url
        };
        let status = raw_call(base, path, body).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(reason(&status), want, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}");
        ids.push((what, request_id(&status), want));
    }
    // A compressed request: UNIMPLEMENTED (Valet takes none), but with a
    // reason, a request id and a log line like every other refusal.
    for encoding in ["gzip", "snappy"] {
        let body = frame(1, 4, b"\x1f\x8b\x08\x00");
        let status = raw_call_with(&valet.gateway_url, call, body, &[("grpc-encoding", encoding)]).await;
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::Unimplemented, "COMPRESSION_UNSUPPORTED"),
            "{encoding}: {status:?}"
        );
        let id = request_id(&status);
        compressed.push(id);
    }
    let exited = valet.terminate().await;
    let logs = String::from_utf8_lossy(&exited.stdout);
    for id in compressed {
        let line = logs
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_else(|| panic!("no log line with {id}"));
        assert!(line.contains("\"outcome\":\"COMPRESSION_UNSUPPORTED\""), "{line}");
    }
    for (what, id, want) in ids {
        let line = logs
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_else(|| panic!("{what}: no log line with {id}: {logs}"));
        assert!(
            line.contains(&format!("\"outcome\":\"{want}\"")),
            "{what}: {line}"
        );
        assert!(line.contains("\"grpc_status\":3"), "{what}: {line}");
    }
}

async fn list_services(addr: &str) -> (Vec<String>, Vec<String>) {
    use tonic_reflection::pb::{v1, v1alpha};
    let channel = tonic::transport::Channel::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let mut current: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let mut alpha: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    current.sort();
    alpha.sort();
    (current, alpha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_speaks_v1_and_v1alpha_and_lists_what_each_listener_serves() {
    let valet = ValetProcess::spawn("").await;
    let reflection = [
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let mut gateway: Vec<String> = ["valet.v1.Gateway", "grpc.health.v1.Health"]
        .iter()
        .chain(&reflection)
        .map(|s| s.to_string())
        .collect();
    gateway.sort();
    let mut admin: Vec<String> = ["valet.v1.Admin"]
        .iter()
        .chain(&reflection)
        .map(|s| s.to_string())
        .collect();
    admin.sort();
    assert_eq!(
        list_services(&valet.gateway_url).await,
        (gateway.clone(), gateway)
    );
    assert_eq!(list_services(&valet.admin_url).await, (admin.clone(), admin));
    drop(valet);
}

/// Reads until the server closes the connection (EOF or reset), within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_the_preface_is_closed() {
    // The default handshake timeout (10 s); it used to stay open for good.
    let valet = ValetProcess::spawn("").await;
    let mut silent = tokio::net::TcpStream::connect(addr(&valet.gateway_url))
        .await
        .unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(20)).await,
        "a connection that never spoke HTTP/2 was still open after 20 s"
    );
    drop(valet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_ignores_pings_is_closed() {
    let valet = ValetProcess::spawn(
        "[server]\nhttp2_keepalive_interval_ms = 200\nhttp2_keepalive_timeout_ms = 300\n",
    )
    .await;
    let mut peer = tokio::net::TcpStream::connect(addr(&valet.gateway_url))
        .await
        .unwrap();
    // The preface and an empty SETTINGS frame; then never a PING ACK.
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    peer.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    assert!(
        closed_within(&mut peer, Duration::from_secs(15)).await,
        "a peer that never answered a PING was still connected"
    );
    drop(valet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once() {
    let valet = ValetProcess::spawn("[server]\nmax_connections = 2\nhandshake_timeout_ms = 60000\n").await;
    let gateway = addr(&valet.gateway_url);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(&gateway).await.unwrap());
    }
    let mut third = tokio::net::TcpStream::connect(&gateway).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(10)).await,
        "a third connection was kept over max_connections = 2"
    );
    // A slot freed is a slot reused: once a held connection closes, calls work.
    drop(held.pop());
    let began = std::time::Instant::now();
    loop {
        let health = async {
            let channel = tonic::transport::Channel::from_shared(valet.gateway_url.clone())
                .ok()?
                .connect()
                .await
                .ok()?;
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .ok()
        };
        if health.await.is_some() {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the freed slot was not reused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exited = valet.terminate().await;
    let logs = String::from_utf8_lossy(&exited.stdout);
    assert!(logs.contains("connection limit reached"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_listener_closes_silent_and_half_sent_connections() {
    let valet = ValetProcess::spawn("[server]\nhandshake_timeout_ms = 500\n").await;
    let ops = addr(&valet.ops_url);
    let mut silent = tokio::net::TcpStream::connect(&ops).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(&ops).await.unwrap();
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for (what, stream) in [("silent", &mut silent), ("half-sent", &mut partial)] {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "a {what} ops connection was still open after 10 s"
        );
    }
    // The listener still answers.
    let (status, _) = support::http_get(&format!("{}/healthz", valet.ops_url)).await;
    assert_eq!(status, 200);
    drop(valet);
}
