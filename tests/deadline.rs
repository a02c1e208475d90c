//! The caller's deadline: `grpc-timeout` read strictly, a spent deadline
//! refused before anything is sent — every time.

mod support;

use support::{Valet, bearer, get, reason, vendor};
use tonic::Code;
use valet::proto::Operation;
use valet_testkit::MockVendor;

/// One Gateway call over raw HTTP/2 with the given `grpc-timeout` values,
/// as a client that does not enforce the deadline itself sends it (tonic's
/// own client would cancel a spent one before Valet could answer). Returns
/// the gRPC status code, the reason and whether an `x-request-id` came back.
async fn call_with_timeout(addr: std::net::SocketAddr, key: &str, values: &[&str]) -> (i32, String, bool) {
    use http_body_util::BodyExt as _;
    use prost::Message as _;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let message = get("acme", "mock", "/v1/x").encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    let mut req = http::Request::post(format!("http://{addr}/valet.v1.Gateway/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {key}"));
    for v in values {
        req = req.header("grpc-timeout", *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let trailers = body.collect().await.unwrap().trailers().cloned();
    // A trailers-only answer carries the status in its headers.
    let status_from = trailers.as_ref().unwrap_or(&parts.headers);
    let status = tonic::Status::from_header_map(status_from).expect("a grpc-status");
    (
        status.code() as i32,
        reason(&status),
        parts.headers.contains_key("x-request-id") || status_from.contains_key("x-request-id"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_and_malformed_deadlines_never_reach_the_vendor() {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    valet.put_credential("acme", "mock", "deadline-secret-0001").await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let addr = valet.gateway_addr;
    for _ in 0..50 {
        let answer = call_with_timeout(addr, &key, &["0n"]).await;
        assert_eq!(
            answer,
            (
                Code::DeadlineExceeded as i32,
                "DEADLINE_EXCEEDED".to_owned(),
                true
            )
        );
    }
    for bad in [
        &["abc"][..],
        &["-1S"],
        &["1.5S"],
        &["123456789S"],
        &["5"],
        &["1S", "2S"],
    ] {
        let answer = call_with_timeout(addr, &key, bad).await;
        assert_eq!(
            answer,
            (Code::InvalidArgument as i32, "DEADLINE_INVALID".to_owned(), true),
            "{bad:?}"
        );
    }
    assert!(mock.requests().is_empty(), "nothing reached the vendor");

    // A deadline with time left runs the call.
    let answer = call_with_timeout(addr, &key, &["5S"]).await;
    assert_eq!(answer.0, Code::Ok as i32);
    assert_eq!(mock.requests().len(), 1);
}
