//! Verified rotation on the embedded store, through the Admin API and the
//! CLI: a new credential is committed only when the vendor accepts it.

mod support;

use support::{Valet, authed, bearer, get, reason, vendor};
use tonic::Code;
use valet::config::{Config, VerifyConfig};
use valet::proto::{Operation, RotateCredentialRequest};
use valet_testkit::MockVendor;

async fn setup(verify: bool) -> (MockVendor, Valet, String) {
    let mock = MockVendor::start().await;
    let mut v = vendor("mock", &mock.base_url(), bearer());
    if verify {
        v.verify = Some(VerifyConfig {
            method: "GET".into(),
            path: "/v1/me".into(),
        });
    }
    let config = Config {
        vendors: vec![v],
        ..Config::default()
    };
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    valet
        .put_credential("acme", "mock", "local-old-secret-00001")
        .await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    (mock, valet, key)
}

fn rotate(secret: &str) -> RotateCredentialRequest {
    RotateCredentialRequest {
        tenant: "acme".into(),
        vendor: "mock".into(),
        secret: secret.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_rotation_keeps_the_current_credential() {
    let (mock, valet, key) = setup(true).await;
    mock.require_header("authorization", "Bearer local-old-secret-00001");
    let err = valet
        .admin()
        .await
        .rotate_credential(authed(rotate("local-bad-secret-00002"), &valet.admin_key))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "ROTATION_VERIFY_FAILED")
    );
    let dir = valet.state_dir().join("credentials/acme");
    assert!(!dir.join("mock.json.pending").exists());
    assert!(!dir.join("mock.json.previous").exists());
    let verify = &mock.requests()[0];
    assert_eq!(
        (verify.path_and_query.as_str(), verify.header("authorization")),
        ("/v1/me", Some("Bearer local-bad-secret-00002"))
    );
    assert_eq!(
        valet.call(&key, get("acme", "mock", "/x")).await.unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_rotation_survives_a_restart_and_keeps_the_previous() {
    let (mock, valet, key) = setup(true).await;
    mock.require_header("authorization", "Bearer local-new-secret-00003");
    let done = valet
        .admin()
        .await
        .rotate_credential(authed(rotate("local-new-secret-00003"), &valet.admin_key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.verify_status, 200);
    let dir = valet.state_dir().join("credentials/acme");
    assert!(dir.join("mock.json.previous").exists() && !dir.join("mock.json.pending").exists());

    let valet = valet.restart().await;
    assert_eq!(
        valet.call(&key, get("acme", "mock", "/x")).await.unwrap().status,
        200
    );
    assert_eq!(
        mock.requests().last().unwrap().header("authorization"),
        Some("Bearer local-new-secret-00003")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_needs_a_verify_request_and_a_current_credential() {
    let (_mock, valet, _key) = setup(false).await;
    let err = valet
        .admin()
        .await
        .rotate_credential(authed(rotate("whatever-secret-000004"), &valet.admin_key))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "VERIFY_NOT_CONFIGURED")
    );

    let (_mock, valet, _key) = setup(true).await;
    let mut req = rotate("whatever-secret-000005");
    req.tenant = "globex".into();
    let err = valet
        .admin()
        .await
        .rotate_credential(authed(req, &valet.admin_key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_rotates_from_stdin() {
    let (mock, valet, _key) = setup(true).await;
    mock.require_header("authorization", "Bearer cli-rotated-secret-06");
    let endpoint = format!("http://{}", valet.admin_addr);
    let out = support::admin_cli(
        &endpoint,
        &valet.state_dir().join("admin.key"),
        &["credential", "rotate", "--tenant", "acme", "--vendor", "mock"],
        "cli-rotated-secret-06\n",
    )
    .await;
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("verify answered 200") && !said.contains("cli-rotated-secret"),
        "{said}"
    );
}

/// Credential age: a credential not replaced within
/// `secrets.rotation_reminder_days` is listed as overdue and counted in
/// `valet_credentials_rotation_overdue`; rotating it clears both.
async fn list(valet: &Valet) -> Vec<valet::proto::CredentialInfo> {
    valet
        .admin()
        .await
        .list_credentials(authed(
            valet::proto::ListCredentialsRequest::default(),
            &valet.admin_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .credentials
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_past_its_reminder_is_listed_overdue_and_counted() {
    let (_mock, valet, _key) = setup(true).await;
    let fresh = list(&valet).await;
    assert!(!fresh[0].rotation_overdue);
    let rotate_by = fresh[0].rotate_by.unwrap().seconds - fresh[0].updated.unwrap().seconds;
    assert_eq!(rotate_by, 90 * 86_400, "default: 90 days");

    // Age the record on disk by 100 days, as if stored then.
    let state = valet.state_dir();
    let valet = {
        let (config, dir) = valet.stop().await;
        let file = state.join("credentials").join("acme").join("mock.json");
        let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let aged = record["updated_ms"].as_u64().unwrap() - 100 * 86_400_000;
        record["updated_ms"] = aged.into();
        std::fs::write(&file, serde_json::to_vec(&record).unwrap()).unwrap();
        Valet::start_with(config, dir).await
    };
    assert!(list(&valet).await[0].rotation_overdue);
    let metrics = format!("http://{}/metrics", valet.ops_addr);
    let started = std::time::Instant::now();
    let counted = loop {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "never counted"
        );
        let text = support::http_get(&metrics).await.1;
        let n = support::sample(&text, "valet_credentials_rotation_overdue", &[]);
        if n > 0.0 {
            break n;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(counted, 1.0);
    let out = support::admin_cli(
        &format!("http://{}", valet.admin_addr),
        &state.join("admin.key"),
        &["credential", "list"],
        "",
    )
    .await;
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("\t100d\t") && out.contains("(overdue)"), "{out}");
}
