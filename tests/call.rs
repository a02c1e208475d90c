//! The core call path: every auth scheme, answers passed through as they
//! are, redirects not followed.

mod support;

use base64::Engine as _;
use support::{Valet, bearer, get, header, reason, vendor};
use valet::config::AuthConfig;
use valet::proto::{CallRequest, Header, Operation};
use valet_testkit::{MockVendor, Scripted};

const SECRET: &str = "tok_live_0123456789abcdef";

async fn one_vendor(auth: AuthConfig, secret: &str) -> (MockVendor, Valet, String) {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), auth)]).await;
    valet.put_credential("acme", "mock", secret).await;
    let key = valet
        .api_key(&["acme"], &["mock"], &[Operation::Read, Operation::Write])
        .await;
    (mock, valet, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_is_injected_and_the_answer_returned() {
    let (mock, valet, key) = one_vendor(bearer(), SECRET).await;
    mock.script(
        "/v1/users",
        Scripted::status(200)
            .header("x-vendor", "yes")
            .body(r#"{"users":[]}"#),
    );
    let mut req = get("acme", "mock", "/v1/users?page=2");
    req.headers.push(Header {
        name: "Accept".into(),
        value: "application/json".into(),
    });
    let resp = valet.call(&key, req).await.unwrap();

    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, br#"{"users":[]}"#);
    assert_eq!(header(&resp, "x-vendor"), Some("yes"));
    assert_eq!(resp.attempts, 1);
    assert!(!resp.replayed);
    assert!(resp.request_id.starts_with("req_"));

    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path_and_query, "/v1/users?page=2");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(seen[0].header("accept"), Some("application/json"));
    assert_eq!(seen[0].header("accept-encoding"), Some("identity"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_header_scheme() {
    let auth = AuthConfig::Header {
        name: "X-Api-Key".into(),
    };
    let (mock, valet, key) = one_vendor(auth, SECRET).await;
    mock.script("/ping", Scripted::status(204));
    let resp = valet.call(&key, get("acme", "mock", "/ping")).await.unwrap();
    assert_eq!(resp.status, 204);
    let seen = &mock.requests()[0];
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_scheme() {
    let (mock, valet, key) = one_vendor(AuthConfig::Basic {}, "svc-user:pa55word-xyz").await;
    mock.script("/ping", Scripted::status(200));
    valet.call(&key, get("acme", "mock", "/ping")).await.unwrap();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("svc-user:pa55word-xyz")
    );
    assert_eq!(
        mock.requests()[0].header("authorization"),
        Some(expected.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_scheme_needs_user_and_password() {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), AuthConfig::Basic {})]).await;
    let req = valet::proto::PutCredentialRequest {
        tenant: "acme".into(),
        vendor: "mock".into(),
        secret: "no-colon-here".into(),
    };
    let err = valet
        .admin()
        .await
        .put_credential(support::authed(req, &valet.admin_key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(reason(&err), "SECRET_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_scheme_appends_an_encoded_parameter() {
    let auth = AuthConfig::Query {
        name: "api_key".into(),
    };
    let (mock, valet, key) = one_vendor(auth, "k+y/with&chars=1234").await;
    mock.script("/search", Scripted::status(200));
    valet
        .call(&key, get("acme", "mock", "/search?q=x"))
        .await
        .unwrap();
    valet.call(&key, get("acme", "mock", "/search")).await.unwrap();
    let seen = mock.requests();
    assert_eq!(
        seen[0].path_and_query,
        "/search?q=x&api_key=k%2By%2Fwith%26chars%3D1234"
    );
    assert_eq!(
        seen[1].path_and_query,
        "/search?api_key=k%2By%2Fwith%26chars%3D1234"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_carry_method_and_body_and_vendor_errors_are_answers() {
    let (mock, valet, key) = one_vendor(bearer(), SECRET).await;
    mock.script("/v1/charges", Scripted::status(502).body("upstream sad"));
    let req = CallRequest {
        tenant: "acme".into(),
        vendor: "mock".into(),
        operation: Operation::Write as i32,
        method: "POST".into(),
        path: "/v1/charges".into(),
        headers: vec![Header {
            name: "content-type".into(),
            value: "application/json".into(),
        }],
        body: br#"{"amount":100}"#.to_vec(),
        reason: "billing".into(),
        idempotency_key: "charge-0001".into(),
    };
    let resp = valet.call(&key, req).await.unwrap();
    assert_eq!(resp.status, 502);
    assert_eq!(resp.body, b"upstream sad");
    let seen = &mock.requests()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, br#"{"amount":100}"#);
    assert_eq!(seen.header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_returned_not_followed() {
    let elsewhere = MockVendor::start().await;
    let (mock, valet, key) = one_vendor(bearer(), SECRET).await;
    let target = format!("{}/steal", elsewhere.base_url());
    mock.script("/moved", Scripted::status(302).header("location", &target));
    let resp = valet.call(&key, get("acme", "mock", "/moved")).await.unwrap();
    assert_eq!(resp.status, 302);
    assert_eq!(header(&resp, "location"), Some(target.as_str()));
    assert_eq!(mock.requests().len(), 1);
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect target was contacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_dropped() {
    let (mock, valet, key) = one_vendor(bearer(), SECRET).await;
    mock.script(
        "/h",
        Scripted::status(200)
            .header("keep-alive", "timeout=5")
            .header("connection", "x-hop-private")
            .header("x-hop-private", "1")
            .header("x-kept", "1"),
    );
    let resp = valet.call(&key, get("acme", "mock", "/h")).await.unwrap();
    assert_eq!(header(&resp, "keep-alive"), None);
    assert_eq!(header(&resp, "connection"), None);
    assert_eq!(
        header(&resp, "x-hop-private"),
        None,
        "named in Connection, so hop-by-hop"
    );
    assert_eq!(header(&resp, "x-kept"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_url_path_prefix_is_kept() {
    let mock = MockVendor::start().await;
    let base = format!("{}/api/v2/", mock.base_url());
    let valet = Valet::start(vec![vendor("mock", &base, bearer())]).await;
    valet.put_credential("acme", "mock", SECRET).await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    mock.script("/api/v2/users", Scripted::status(200));
    let resp = valet.call(&key, get("acme", "mock", "/users")).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(mock.requests()[0].path_and_query, "/api/v2/users");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credential_is_not_found() {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let err = valet.call(&key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(reason(&err), "CREDENTIAL_NOT_FOUND");
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_vendor_answers_are_refused() {
    let mock = MockVendor::start().await;
    let mut config = valet::config::Config {
        vendors: vec![vendor("mock", &mock.base_url(), bearer())],
        ..Default::default()
    };
    config.limits.max_response_body_bytes = 1024;
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    valet.put_credential("acme", "mock", SECRET).await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    mock.script("/big", Scripted::status(200).body(vec![b'x'; 4096]));
    let err = valet.call(&key, get("acme", "mock", "/big")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(reason(&err), "RESPONSE_TOO_LARGE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_answers_that_cannot_be_scrubbed_are_refused() {
    let (mock, valet, key) = one_vendor(bearer(), SECRET).await;
    mock.script(
        "/gz",
        Scripted::status(200)
            .header("content-encoding", "gzip")
            .body(vec![0x1f, 0x8b]),
    );
    let err = valet.call(&key, get("acme", "mock", "/gz")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(reason(&err), "VENDOR_RESPONSE_ENCODED");
    // A second Content-Encoding header counts as much as the first.
    mock.script(
        "/gz2",
        Scripted::status(200)
            .header("content-encoding", "identity")
            .header("content-encoding", "gzip")
            .body(vec![0x1f, 0x8b]),
    );
    let err = valet.call(&key, get("acme", "mock", "/gz2")).await.unwrap_err();
    assert_eq!(reason(&err), "VENDOR_RESPONSE_ENCODED");
}
