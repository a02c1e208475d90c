//! Who may call what: authentication, authorization, tenant isolation, and
//! admin-only operations.

mod support;

use support::{Valet, authed, bearer, get, reason, vendor};
use tonic::Code;
use valet::proto::{CreateApiKeyRequest, ListApiKeysRequest, Operation, RevokeApiKeyRequest};
use valet_testkit::MockVendor;

async fn setup() -> (MockVendor, Valet) {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![
        vendor("mock", &mock.base_url(), bearer()),
        vendor("other", &mock.base_url(), bearer()),
    ])
    .await;
    valet
        .put_credential("acme", "mock", "acme-secret-0000000001")
        .await;
    valet
        .put_credential("globex", "mock", "globex-secret-000000002")
        .await;
    (mock, valet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_calls_are_refused() {
    let (mock, valet) = setup().await;
    let mut gw = valet.gateway().await;

    let err = gw.call(get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "API_KEY_MISSING")
    );

    let mut req = tonic::Request::new(get("acme", "mock", "/x"));
    req.metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    let err = gw.call(req).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "AUTH_SCHEME_UNSUPPORTED")
    );
    let mut req = tonic::Request::new(get("acme", "mock", "/x"));
    req.metadata_mut()
        .insert("authorization", "vk_no-scheme".parse().unwrap());
    let err = gw.call(req).await.unwrap_err();
    assert_eq!(reason(&err), "AUTH_SCHEME_UNSUPPORTED");

    // Two authorization entries: ambiguous, whichever is valid.
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let mut req = tonic::Request::new(get("acme", "mock", "/x"));
    for value in [format!("Bearer {key}"), "Bearer vk_other".to_owned()] {
        req.metadata_mut().append("authorization", value.parse().unwrap());
    }
    let err = gw.call(req).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "AUTHORIZATION_AMBIGUOUS")
    );

    // An admin key on the Gateway is told so, not blamed on the tenant.
    let err = valet
        .call(&valet.admin_key, get("acme", "mock", "/x"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "ADMIN_KEY_ON_GATEWAY")
    );

    let err = valet
        .call("vk_not-a-real-key", get("acme", "mock", "/x"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "API_KEY_UNKNOWN")
    );
    assert!(!err.message().contains("vk_not-a-real-key"));
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_stop_working_at_once() {
    let (_mock, valet) = setup().await;
    let (key, id) = valet
        .create_key(&["acme"], &["mock"], &[Operation::Read], 0)
        .await;
    valet.call(&key, get("acme", "mock", "/x")).await.unwrap();

    let revoked = valet
        .admin()
        .await
        .revoke_api_key(authed(
            RevokeApiKeyRequest {
                id: id.clone(),
                ..Default::default()
            },
            &valet.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked.is_some());

    let err = valet.call(&key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "API_KEY_REVOKED")
    );

    let err = valet
        .admin()
        .await
        .revoke_api_key(authed(
            RevokeApiKeyRequest {
                id: "key_0000".into(),
                ..Default::default()
            },
            &valet.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_refused() {
    let (_mock, valet) = setup().await;
    let (key, _) = valet
        .create_key(&["acme"], &["mock"], &[Operation::Read], 1)
        .await;
    // Expiry is wall-clock time passing; there is no event to await instead.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let err = valet.call(&key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "API_KEY_EXPIRED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_limit_tenant_vendor_and_operation() {
    let (mock, valet) = setup().await;
    valet
        .put_credential("acme", "other", "acme-other-secret-00003")
        .await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;

    let cases = [
        (get("globex", "mock", "/x"), "TENANT_NOT_ALLOWED"),
        (get("acme", "other", "/x"), "VENDOR_NOT_ALLOWED"),
        (
            valet::proto::CallRequest {
                operation: Operation::Write as i32,
                method: "POST".into(),
                idempotency_key: "grant-test-1".into(),
                ..get("acme", "mock", "/x")
            },
            "OPERATION_NOT_ALLOWED",
        ),
    ];
    for (req, want) in cases {
        let err = valet.call(&key, req).await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::PermissionDenied, want)
        );
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_a_cannot_use_tenant_b_credential() {
    let (mock, valet) = setup().await;
    let acme = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let globex = valet.api_key(&["globex"], &["mock"], &[Operation::Read]).await;

    valet.call(&acme, get("acme", "mock", "/x")).await.unwrap();
    valet.call(&globex, get("globex", "mock", "/x")).await.unwrap();
    let err = valet.call(&acme, get("globex", "mock", "/x")).await.unwrap_err();
    assert_eq!(reason(&err), "TENANT_NOT_ALLOWED");

    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer acme-secret-0000000001")
    );
    assert_eq!(
        seen[1].header("authorization"),
        Some("Bearer globex-secret-000000002")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_grants() {
    let (_mock, valet) = setup().await;
    let key = valet.api_key(&["*"], &["*"], &[Operation::Read]).await;
    valet.call(&key, get("acme", "mock", "/x")).await.unwrap();
    valet.call(&key, get("globex", "mock", "/x")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_service_needs_an_admin_key() {
    let (_mock, valet) = setup().await;
    let caller_key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let mut admin = valet.admin().await;

    let err = admin
        .list_api_keys(ListApiKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = admin
        .list_api_keys(authed(ListApiKeysRequest::default(), &caller_key))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "ADMIN_REQUIRED")
    );

    // The bootstrap admin key cannot make gateway calls: it has no grant.
    let err = valet
        .call(&valet.admin_key, get("acme", "mock", "/x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Keys are listed without the key itself.
    let keys = admin
        .list_api_keys(authed(ListApiKeysRequest::default(), &valet.admin_key))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 2);
    let caller = keys.iter().find(|k| !k.admin).expect("the caller key");
    assert_eq!(caller.last4, caller_key[caller_key.len() - 4..]);
    assert!(!format!("{keys:?}").contains(&caller_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_key_requests_are_invalid() {
    let (_mock, valet) = setup().await;
    let mut admin = valet.admin().await;
    let base = CreateApiKeyRequest::gateway("ok", &["acme"], &["mock"], &[Operation::Read]);
    let cases = [
        (
            CreateApiKeyRequest {
                name: "".into(),
                ..base.clone()
            },
            "NAME_INVALID",
        ),
        (
            CreateApiKeyRequest {
                vendors: vec!["nope".into()],
                ..base.clone()
            },
            "VENDOR_UNKNOWN",
        ),
        (
            CreateApiKeyRequest {
                tenants: vec!["a b".into()],
                ..base.clone()
            },
            "TENANT_INVALID",
        ),
        (
            CreateApiKeyRequest {
                operations: vec![],
                ..base.clone()
            },
            "GRANT_INCOMPLETE",
        ),
        (
            CreateApiKeyRequest {
                operations: vec![0],
                ..base.clone()
            },
            "OPERATION_INVALID",
        ),
        (
            CreateApiKeyRequest {
                ttl_seconds: u64::MAX,
                ..base.clone()
            },
            "TTL_INVALID",
        ),
    ];
    for (req, want) in cases {
        let err = admin
            .create_api_key(authed(req, &valet.admin_key))
            .await
            .unwrap_err();
        assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, want));
    }
}
