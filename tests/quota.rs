//! Per-tenant quotas on one replica: refusals with the policy and a
//! retry-after, RateLimit metadata, tenant isolation, shadow policies,
//! run-time changes that persist, vendor push-back, permissions.

mod support;

use std::time::Duration;
use support::{Valet, authed, bearer, get, reason, vendor};
use tonic::Code;
use tonic_types::StatusExt as _;
use valet::config::Config;
use valet::proto::{
    CreateApiKeyRequest, DeleteQuotaPolicyRequest, ListQuotaPoliciesRequest, Operation, Permission,
    PutQuotaPolicyRequest, QuotaPolicy, RatePeriod,
};
use valet_quota::{Mode, OperationMatch, Period, Policy};
use valet_testkit::{MockVendor, Scripted};

fn policy(tenant: &str, burst: u32, mode: Mode) -> Policy {
    Policy {
        tenant: tenant.into(),
        vendor: "mock".into(),
        operation: OperationMatch::Any,
        rate: 1,
        period: Period::Hour,
        burst,
        mode,
        aggregate: false,
    }
}

async fn setup(policies: Vec<Policy>) -> (MockVendor, Valet, String) {
    let mock = MockVendor::start().await;
    let mut config = Config {
        vendors: vec![vendor("mock", &mock.base_url(), bearer())],
        ..Config::default()
    };
    config.quota.policies = policies;
    config.quota.max_pushback_ms = 5_000;
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    for t in ["acme", "globex"] {
        valet.put_credential(t, "mock", "quota-test-secret-000001").await;
    }
    let key = valet
        .api_key(&["*"], &["mock"], &[Operation::Read, Operation::Write])
        .await;
    (mock, valet, key)
}

fn wire(tenant: &str, burst: u32, shadow: bool) -> QuotaPolicy {
    QuotaPolicy {
        tenant: tenant.into(),
        vendor: "mock".into(),
        operation: "*".into(),
        rate: 1,
        period: RatePeriod::Hour as i32,
        burst,
        shadow,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_then_quota_exceeded_with_the_policy_and_retry_after() {
    let (mock, valet, key) = setup(vec![policy("*", 3, Mode::Enforce)]).await;
    let mut gateway = valet.gateway().await;
    for remaining in [2, 1, 0] {
        let resp = gateway
            .call(authed(get("acme", "mock", "/x"), &key))
            .await
            .unwrap();
        let meta = resp.metadata();
        assert_eq!(meta.get("ratelimit-policy").unwrap(), "\"*/mock/*\";q=3;w=10800");
        let rl = meta.get("ratelimit").unwrap().to_str().unwrap().to_owned();
        assert!(rl.starts_with(&format!("\"*/mock/*\";r={remaining};t=")), "{rl}");
    }
    let err = gateway
        .call(authed(get("acme", "mock", "/x"), &key))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::ResourceExhausted, "QUOTA_EXCEEDED")
    );
    let details = err.get_error_details();
    assert_eq!(
        details
            .error_info()
            .unwrap()
            .metadata
            .get("policy")
            .map(String::as_str),
        Some("*/mock/*")
    );
    let retry = details.retry_info().and_then(|r| r.retry_delay).unwrap();
    assert!(
        retry > Duration::from_secs(1000) && retry <= Duration::from_secs(3600),
        "{retry:?}"
    );
    let trailer: u64 = err
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(trailer, retry.as_millis() as u64);
    assert_eq!(
        mock.requests().len(),
        3,
        "the refused call never reached the vendor"
    );

    // Tenant isolation: globex has its own bucket.
    assert_eq!(
        valet
            .call(&key, get("globex", "mock", "/x"))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_policies_never_refuse() {
    let (mock, valet, key) = setup(vec![policy("*", 1, Mode::Shadow)]).await;
    for _ in 0..4 {
        assert_eq!(
            valet.call(&key, get("acme", "mock", "/x")).await.unwrap().status,
            200
        );
    }
    assert_eq!(mock.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_change_at_run_time_and_persist() {
    let (_mock, valet, key) = setup(vec![]).await;
    let mut admin = valet.admin().await;
    let put = |p: QuotaPolicy| authed(PutQuotaPolicyRequest { policy: Some(p) }, &valet.admin_key);
    admin.put_quota_policy(put(wire("acme", 1, false))).await.unwrap();
    valet.call(&key, get("acme", "mock", "/x")).await.unwrap();
    let err = valet.call(&key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(reason(&err), "QUOTA_EXCEEDED");

    // Raised without a restart.
    admin.put_quota_policy(put(wire("acme", 5, false))).await.unwrap();
    valet.call(&key, get("acme", "mock", "/x")).await.unwrap();

    // Kept across a restart.
    let valet = valet.restart().await;
    let listed = valet
        .admin()
        .await
        .list_quota_policies(authed(ListQuotaPoliciesRequest {}, &valet.admin_key))
        .await
        .unwrap()
        .into_inner()
        .policies;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id.as_str(), listed[0].burst), ("acme/mock/*", 5));

    // Removed, and audited each time with before and after.
    valet
        .admin()
        .await
        .delete_quota_policy(authed(
            DeleteQuotaPolicyRequest {
                id: "acme/mock/*".into(),
            },
            &valet.admin_key,
        ))
        .await
        .unwrap();
    let log = std::fs::read_to_string(valet.audit_log()).unwrap();
    let changes: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| {
            e["event"]
                .as_str()
                .unwrap_or_default()
                .starts_with("quota_policy")
        })
        .collect();
    assert_eq!(changes.len(), 3);
    assert!(changes[0]["before"].is_null() && changes[0]["after"]["burst"] == 1);
    assert!(changes[1]["before"]["burst"] == 1 && changes[1]["after"]["burst"] == 5);
    assert_eq!(changes[2]["event"], "quota_policy_delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_429_pauses_the_tenant_and_vendor() {
    let (mock, valet, key) = setup(vec![]).await;
    mock.script("/limited", Scripted::status(429).header("retry-after", "30"));
    let resp = valet.call(&key, get("acme", "mock", "/limited")).await.unwrap();
    assert_eq!(resp.status, 429, "the vendor's answer is returned as is");

    let err = valet.call(&key, get("acme", "mock", "/other")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::ResourceExhausted, "QUOTA_EXCEEDED")
    );
    let details = err.get_error_details();
    assert_eq!(
        details
            .error_info()
            .unwrap()
            .metadata
            .get("policy")
            .map(String::as_str),
        Some("vendor-pushback")
    );
    let retry = details.retry_info().and_then(|r| r.retry_delay).unwrap();
    assert!(
        retry <= Duration::from_secs(5) && retry > Duration::from_secs(3),
        "capped at max_pushback_ms: {retry:?}"
    );
    assert_eq!(
        mock.requests().len(),
        1,
        "the paused call never reached the vendor"
    );
    // Another tenant is not paused.
    assert_eq!(
        valet
            .call(&key, get("globex", "mock", "/other"))
            .await
            .unwrap()
            .status,
        200
    );

    // Garbage and negative Retry-After values pause nothing.
    for bad in ["soon", "-5"] {
        mock.script("/odd", Scripted::status(429).header("retry-after", bad));
        valet.call(&key, get("globex", "mock", "/odd")).await.unwrap();
        assert_eq!(
            valet
                .call(&key, get("globex", "mock", "/fine"))
                .await
                .unwrap()
                .status,
            200,
            "{bad}"
        );
    }
    // An HTTP-date works too.
    let at = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(20));
    mock.script("/dated", Scripted::status(429).header("retry-after", &at));
    valet.call(&key, get("globex", "mock", "/dated")).await.unwrap();
    let err = valet
        .call(&key, get("globex", "mock", "/fine"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "QUOTA_EXCEEDED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_invalid_arguments() {
    let (_mock, valet, _key) = setup(vec![]).await;
    let mut admin = valet.admin().await;
    let cases = [
        QuotaPolicy {
            rate: 0,
            ..wire("acme", 1, false)
        },
        QuotaPolicy {
            burst: 0,
            ..wire("acme", 1, false)
        },
        QuotaPolicy {
            vendor: "nope".into(),
            ..wire("acme", 1, false)
        },
        QuotaPolicy {
            tenant: "a b".into(),
            ..wire("acme", 1, false)
        },
        QuotaPolicy {
            operation: "delete".into(),
            ..wire("acme", 1, false)
        },
        QuotaPolicy {
            period: 0,
            ..wire("acme", 1, false)
        },
        QuotaPolicy {
            aggregate: true,
            ..wire("acme", 1, false)
        },
    ];
    for p in cases {
        let shown = format!("{p:?}");
        let err = admin
            .put_quota_policy(authed(
                PutQuotaPolicyRequest { policy: Some(p) },
                &valet.admin_key,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, "POLICY_INVALID"),
            "{shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_permissions() {
    let (_mock, valet, key) = setup(vec![]).await;
    let mut admin = valet.admin().await;
    let create = |p: Permission| CreateApiKeyRequest {
        name: "quota".into(),
        permissions: vec![p as i32],
        ..Default::default()
    };
    let viewer = admin
        .create_api_key(authed(create(Permission::QuotaView), &valet.admin_key))
        .await
        .unwrap()
        .into_inner()
        .key;
    let quota_admin = admin
        .create_api_key(authed(create(Permission::QuotaAdmin), &valet.admin_key))
        .await
        .unwrap()
        .into_inner()
        .key;

    admin
        .list_quota_policies(authed(ListQuotaPoliciesRequest {}, &viewer))
        .await
        .unwrap();
    let err = admin
        .put_quota_policy(authed(
            PutQuotaPolicyRequest {
                policy: Some(wire("acme", 1, false)),
            },
            &viewer,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "PERMISSION_REQUIRED")
    );
    admin
        .put_quota_policy(authed(
            PutQuotaPolicyRequest {
                policy: Some(wire("acme", 1, false)),
            },
            &quota_admin,
        ))
        .await
        .unwrap();
    let err = admin
        .list_quota_policies(authed(ListQuotaPoliciesRequest {}, &key))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "a gateway key cannot read policies"
    );
    // A quota admin is not a credential admin.
    let err = admin
        .list_api_keys(authed(valet::proto::ListApiKeysRequest::default(), &quota_admin))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ADMIN_REQUIRED");
}

/// Tightening a policy carries each bucket over: no fresh burst (issue: 1/h
/// burst 5, six calls, burst set to 3 — the next calls stay refused), and a
/// slower rate repays what was used at the new rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightening_a_policy_keeps_the_bucket_state() {
    let (_mock, valet, key) = setup(vec![]).await;
    let mut admin = valet.admin().await;
    let put = |p: QuotaPolicy| authed(PutQuotaPolicyRequest { policy: Some(p) }, &valet.admin_key);
    admin.put_quota_policy(put(wire("acme", 5, false))).await.unwrap();
    let outcomes = |tenant: &'static str, n: usize| support::outcomes(&valet, &key, tenant, n);
    let used = outcomes("acme", 6).await;
    assert_eq!(used.iter().filter(|o| *o == "ok").count(), 5, "{used:?}");
    admin.put_quota_policy(put(wire("acme", 3, false))).await.unwrap();
    assert_eq!(
        outcomes("acme", 3).await,
        ["QUOTA_EXCEEDED"; 3],
        "a tighter burst hands out no fresh burst"
    );

    // A slower rate: 1/s burst 2, both used, then 1/h burst 2. The old
    // policy would admit again within a second; the new one repays the two
    // calls at one an hour.
    let per_second = QuotaPolicy {
        rate: 1,
        period: RatePeriod::Second as i32,
        ..wire("globex", 2, false)
    };
    admin.put_quota_policy(put(per_second)).await.unwrap();
    assert_eq!(outcomes("globex", 2).await, ["ok", "ok"]);
    admin
        .put_quota_policy(put(wire("globex", 2, false)))
        .await
        .unwrap();
    let err = valet.call(&key, get("globex", "mock", "/x")).await.unwrap_err();
    assert_eq!(reason(&err), "QUOTA_EXCEEDED");
    let retry = err
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap();
    assert!(retry > Duration::from_secs(1800), "{retry:?}");

    // Loosening keeps what was used too: burst 3 → 6 with 3 owed admits 3,
    // not a fresh 6.
    admin.put_quota_policy(put(wire("acme", 6, false))).await.unwrap();
    let after = outcomes("acme", 4).await;
    assert_eq!(after, ["ok", "ok", "ok", "QUOTA_EXCEEDED"], "{after:?}");
}
