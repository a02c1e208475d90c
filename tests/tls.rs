//! Outbound TLS: a vendor's private CA is trusted when named, a certificate
//! that does not verify fails the call, and nothing falls back to plain text.

mod support;

use support::{Valet, bearer, get, reason, vendor};
use tonic::Code;
use valet::proto::Operation;
use valet_testkit::{MockVendor, TestCa};

const SECRET: &str = "tls-secret-0123456789";

async fn valet_for(base_url: &str, ca_file: Option<std::path::PathBuf>) -> (Valet, String) {
    let mut v = vendor("mock", base_url, bearer());
    v.ca_file = ca_file;
    v.allow_private_addresses = true; // the mock vendor lives on loopback
    let valet = Valet::start(vec![v]).await;
    valet.put_credential("acme", "mock", SECRET).await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    (valet, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_ca_file_is_trusted() {
    let ca = TestCa::new();
    let mock = MockVendor::start_tls(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let (valet, key) = valet_for(&mock.base_url(), Some(ca_file)).await;

    let resp = valet.call(&key, get("acme", "mock", "/v1/me")).await.unwrap();
    assert_eq!(resp.status, 200);
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverifiable_certificate_fails_the_call() {
    let ca = TestCa::new();
    let mock = MockVendor::start_tls(&ca).await;
    // No ca_file: only the public web roots, which never signed the test CA.
    let (valet, key) = valet_for(&mock.base_url(), None).await;
    let err = valet.call(&key, get("acme", "mock", "/v1/me")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unavailable, "VENDOR_TLS_ERROR")
    );
    assert!(
        mock.requests().is_empty(),
        "a request was sent over an unverified connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_fails_the_call() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let mock = MockVendor::start_tls(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("other.pem");
    std::fs::write(&ca_file, other.ca_pem()).unwrap();
    let (valet, key) = valet_for(&mock.base_url(), Some(ca_file)).await;
    let err = valet.call(&key, get("acme", "mock", "/v1/me")).await.unwrap_err();
    assert_eq!(reason(&err), "VENDOR_TLS_ERROR");
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_never_falls_back_to_plain_http() {
    // An https base URL pointing at a plain-HTTP server.
    let mock = MockVendor::start().await;
    let base = format!("https://localhost:{}", mock.addr().port());
    let (valet, key) = valet_for(&base, None).await;
    let err = valet.call(&key, get("acme", "mock", "/v1/me")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        mock.requests().is_empty(),
        "the credential went out in plain text"
    );
}
