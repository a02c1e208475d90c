//! Idempotency keys: a write reaches the vendor at most once per key.

mod support;

use std::time::Duration;
use support::{Valet, ValetProcess, authed, bearer, reason, vendor};
use tonic::Code;
use valet::config::{Config, VendorConfig};
use valet::proto::{CallRequest, Operation, PutQuotaPolicyRequest, QuotaPolicy, RatePeriod};
use valet_testkit::{MockVendor, Scripted, leak};

fn write(tenant: &str, key: &str, body: &str) -> CallRequest {
    CallRequest {
        tenant: tenant.into(),
        vendor: "mock".into(),
        operation: Operation::Write as i32,
        method: "POST".into(),
        path: "/v1/charges".into(),
        body: body.as_bytes().to_vec(),
        idempotency_key: key.into(),
        reason: "billing".into(),
        ..Default::default()
    }
}

/// A quota of one call an hour for acme × mock.
fn one_an_hour() -> valet_quota::Policy {
    valet_quota::Policy {
        tenant: "acme".into(),
        vendor: "mock".into(),
        operation: valet_quota::OperationMatch::Any,
        rate: 1,
        period: valet_quota::Period::Hour,
        burst: 1,
        mode: valet_quota::Mode::Enforce,
        aggregate: false,
    }
}

async fn setup(tweak: impl FnOnce(&mut Config)) -> (MockVendor, Valet, String) {
    let mock = MockVendor::start().await;
    let mut config = Config {
        vendors: vec![vendor("mock", &mock.base_url(), bearer())],
        ..Config::default()
    };
    tweak(&mut config);
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    for t in ["acme", "globex"] {
        valet.put_credential(t, "mock", "idempotency-secret-0001").await;
    }
    let key = valet
        .api_key(&["*"], &["*"], &[Operation::Read, Operation::Write])
        .await;
    (mock, valet, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_reaches_the_vendor_once_under_100_concurrent_calls() {
    let (mock, valet, key) = setup(|_| {}).await;
    mock.script(
        "/v1/charges",
        Scripted::status(201)
            .body("{\"id\":\"ch_1\"}")
            .delay(Duration::from_millis(300)),
    );
    let gateway = valet.gateway().await;
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let (mut gateway, key) = (gateway.clone(), key.clone());
            tokio::spawn(async move {
                gateway
                    .call(authed(write("acme", "k-100", "{\"amount\":5}"), &key))
                    .await
            })
        })
        .collect();
    let (mut first, mut replays, mut in_flight) = (0, 0, 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(r) if r.get_ref().replayed => replays += 1,
            Ok(r) => {
                assert_eq!(r.get_ref().status, 201);
                first += 1;
            }
            Err(e) => {
                assert_eq!(
                    (e.code(), reason(&e).as_str()),
                    (Code::Aborted, "IDEMPOTENCY_IN_FLIGHT")
                );
                // A short, honest hint — not the whole lease (120 s).
                let after: u64 = e
                    .metadata()
                    .get("retry-after")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(after <= 500, "retry-after {after} ms");
                in_flight += 1;
            }
        }
    }
    assert_eq!(
        first, 1,
        "exactly one call made the write ({replays} replays, {in_flight} in flight)"
    );
    assert_eq!(mock.requests().len(), 1);

    let again = valet
        .call(&key, write("acme", "k-100", "{\"amount\":5}"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(
        (again.status, again.body.as_slice()),
        (201, b"{\"id\":\"ch_1\"}".as_slice())
    );
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_scoped_and_vendor_errors_replayed() {
    let (mock, valet, key) = setup(|_| {}).await;
    mock.script("/v1/charges", Scripted::status(500).body("boom"));
    let first = valet.call(&key, write("acme", "k-1", "a")).await.unwrap();
    assert_eq!((first.status, first.replayed), (500, false));
    let again = valet.call(&key, write("acme", "k-1", "a")).await.unwrap();
    assert_eq!(
        (again.status, again.replayed, again.body.as_slice()),
        (500, true, b"boom".as_slice())
    );

    let err = valet.call(&key, write("acme", "k-1", "b")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED")
    );

    // The same key for another tenant is its own record.
    assert!(
        !valet
            .call(&key, write("globex", "k-1", "a"))
            .await
            .unwrap()
            .replayed
    );
    assert_eq!(mock.requests().len(), 2);

    // Keys are required for writes and must be printable ASCII.
    let err = valet.call(&key, write("acme", "", "a")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "IDEMPOTENCY_KEY_REQUIRED")
    );
    let err = valet
        .call(&key, write("acme", "bad\nkey", "a"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_INVALID");
    let err = valet
        .call(&key, write("acme", &"k".repeat(256), "a"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_unsent_calls_store_nothing() {
    let dead = support::free_port();
    let (mock, valet, key) = setup(|c| {
        c.vendors
            .push(vendor("dead", &format!("http://127.0.0.1:{dead}"), bearer()));
        c.quota.policies = vec![one_an_hour()];
    })
    .await;
    valet
        .put_credential("acme", "dead", "idempotency-secret-0002")
        .await;
    valet.call(&key, write("acme", "k-a", "x")).await.unwrap();
    let err = valet.call(&key, write("acme", "k-b", "x")).await.unwrap_err();
    assert_eq!(reason(&err), "QUOTA_EXCEEDED");
    // Quota raised: the same key goes through, as a first call.
    let raise = QuotaPolicy {
        tenant: "acme".into(),
        vendor: "mock".into(),
        operation: "*".into(),
        rate: 100,
        period: RatePeriod::Hour as i32,
        burst: 100,
        ..Default::default()
    };
    valet
        .admin()
        .await
        .put_quota_policy(authed(
            PutQuotaPolicyRequest { policy: Some(raise) },
            &valet.admin_key,
        ))
        .await
        .unwrap();
    assert!(
        !valet
            .call(&key, write("acme", "k-b", "x"))
            .await
            .unwrap()
            .replayed
    );
    assert_eq!(mock.requests().len(), 2);

    // A refused connection never sent a byte: the key stays free.
    let unsent = CallRequest {
        vendor: "dead".into(),
        ..write("acme", "k-c", "x")
    };
    for _ in 0..2 {
        let err = valet.call(&key, unsent.clone()).await.unwrap_err();
        assert_eq!(
            reason(&err),
            "VENDOR_UNREACHABLE",
            "not IDEMPOTENCY_*: nothing was stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_restart_expire_and_are_sealed() {
    let canary = valet_testkit::canary("idem-body");
    let (mock, valet, key) = setup(|c| {
        c.idempotency.retention_ms = 1_500;
        c.idempotency.lease_ms = 1_000; // the retention may not be shorter
    })
    .await;
    mock.script("/v1/charges", Scripted::status(200).body(canary.clone()));
    valet.call(&key, write("acme", "k-r", "x")).await.unwrap();
    let valet = valet.restart().await;
    let again = valet.call(&key, write("acme", "k-r", "x")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.body, canary.as_bytes());
    assert_eq!(
        leak::files_containing(&valet.state_dir(), &canary),
        vec![],
        "stored bodies are ciphertext"
    );

    // Past retention the key is free again.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert!(
        !valet
            .call(&key, write("acme", "k-r", "x"))
            .await
            .unwrap()
            .replayed
    );
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_is_retried_only_where_the_vendor_dedupes() {
    let (mock, valet, key) = setup(|c| {
        c.vendors[0].timeout_ms = 200;
        c.idempotency.lease_ms = 600;
        let deduping = VendorConfig {
            idempotency_header: Some("Idempotency-Key".into()),
            ..c.vendors[0].clone()
        };
        c.vendors.push(VendorConfig {
            name: "dedup".into(),
            ..deduping
        });
    })
    .await;
    valet
        .put_credential("acme", "dedup", "idempotency-secret-0003")
        .await;
    mock.script("/v1/charges", Scripted::status(201).delay(Duration::from_secs(2)));

    for vendor in ["mock", "dedup"] {
        let req = CallRequest {
            vendor: vendor.into(),
            ..write("acme", "k-u", "x")
        };
        let err = valet.call(&key, req.clone()).await.unwrap_err();
        assert_eq!(reason(&err), "VENDOR_TIMEOUT");
        let err = valet.call(&key, req.clone()).await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::Aborted, "IDEMPOTENCY_OUTCOME_UNKNOWN")
        );
        assert!(err.metadata().get("retry-after").is_some());
        tokio::time::sleep(Duration::from_millis(700)).await;
        let after = valet.call(&key, req).await;
        if vendor == "mock" {
            let err = after.unwrap_err();
            assert_eq!(
                (err.code(), reason(&err).as_str()),
                (Code::FailedPrecondition, "IDEMPOTENCY_OUTCOME_UNKNOWN")
            );
        } else {
            // Let through: the vendor dedupes by the key we send, the same
            // each time and namespaced per tenant.
            assert_eq!(reason(&after.unwrap_err()), "VENDOR_TIMEOUT");
        }
    }
    let sent: Vec<Option<String>> = mock
        .requests()
        .iter()
        .map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    assert_eq!(sent.len(), 3, "mock once, dedup twice");
    assert_eq!(sent[0], None);
    assert!(
        sent[1]
            .as_deref()
            .is_some_and(|k| k.starts_with("valet-") && !k.contains("k-u"))
    );
    assert_eq!(sent[1], sent[2]);
}

/// Group commit under kill -9: WRITEs from 32 callers at once share
/// commits, and the process dies among them. Every WRITE answered before
/// the kill replays after the restart, and the vendor never sees it again.
/// (A reply sent just before its commit would rarely be caught here: the
/// answer's trip to the caller outlasts the commit. The ordering itself is
/// `group.rs`'s: replies go out after `commit` returns.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_concurrent_writes_keeps_every_answered_one() {
    let mock = MockVendor::start().await;
    let body = format!(
        "[[vendors]]\nname = \"mock\"\nbase_url = \"{}\"\nallow_insecure_http = true\nauth = {{ scheme = \"bearer\" }}\n",
        mock.base_url()
    );
    let first = ValetProcess::spawn(&body).await;
    let key = first.acme_mock_caller("idempotency-secret-0009", "write").await;
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let enough = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut callers = Vec::new();
    for c in 0..32 {
        let (mut gateway, key) = (first.gateway().await, key.clone());
        let (answered, enough) = (answered.clone(), enough.clone());
        callers.push(tokio::spawn(async move {
            for i in 0.. {
                let idem = format!("g-{c}-{i}");
                match gateway.call(authed(write("acme", &idem, "x"), &key)).await {
                    Ok(_) => {
                        let mut answered = answered.lock().unwrap();
                        answered.push(idem);
                        if answered.len() == 300 {
                            enough.notify_one();
                        }
                    }
                    Err(_) => return, // the process is gone
                }
            }
        }));
    }
    enough.notified().await;
    let dir = first.kill9().await;
    for caller in callers {
        caller.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() >= 300);
    let sent = mock.requests().len();

    let second = ValetProcess::spawn_in(dir, &body, &[]).await;
    let mut gateway = second.gateway().await;
    for idem in &answered {
        let replay = gateway.call(authed(write("acme", idem, "x"), &key)).await;
        let replay = replay.unwrap_or_else(|e| panic!("{idem} was answered but does not replay: {e:?}"));
        assert!(replay.into_inner().replayed, "{idem} replays its stored answer");
    }
    assert_eq!(mock.requests().len(), sent, "no answered WRITE was sent again");
    assert_eq!(second.terminate().await.code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_call_leaves_the_outcome_unknown() {
    let mock = MockVendor::start().await;
    mock.script(
        "/v1/charges",
        Scripted::status(201).delay(Duration::from_secs(30)),
    );
    let body = format!(
        "[idempotency]\nlease_ms = 60000\n[[vendors]]\nname = \"mock\"\nbase_url = \"{}\"\nallow_insecure_http = true\nauth = {{ scheme = \"bearer\" }}\n",
        mock.base_url()
    );
    let first = ValetProcess::spawn(&body).await;
    let key = first.acme_mock_caller("idempotency-secret-0004", "write").await;

    let mut gateway = first.gateway().await;
    let call_key = key.clone();
    let pending =
        tokio::spawn(async move { gateway.call(authed(write("acme", "k-9", "x"), &call_key)).await });
    mock.wait_until(|reqs, _| !reqs.is_empty()).await;
    let dir = first.kill9().await;
    assert!(pending.await.unwrap().is_err());

    let second = ValetProcess::spawn_in(dir, &body, &[]).await;
    let err = second
        .gateway()
        .await
        .call(authed(write("acme", "k-9", "x"), &key))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Aborted, "IDEMPOTENCY_OUTCOME_UNKNOWN")
    );
    assert_eq!(mock.requests().len(), 1, "never re-sent");
    assert_eq!(second.terminate().await.code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarding_purges_a_tenants_records() {
    let (mock, valet, key) = setup(|_| {}).await;
    valet.call(&key, write("acme", "k-p", "x")).await.unwrap();
    valet.call(&key, write("globex", "k-p", "x")).await.unwrap();
    let purged = valet
        .admin()
        .await
        .purge_tenant_records(authed(
            valet::proto::PurgeTenantRecordsRequest {
                tenant: "acme".into(),
            },
            &valet.admin_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .purged;
    assert_eq!(purged, 1);
    assert!(
        !valet
            .call(&key, write("acme", "k-p", "x"))
            .await
            .unwrap()
            .replayed,
        "acme's record is gone"
    );
    assert!(
        valet
            .call(&key, write("globex", "k-p", "x"))
            .await
            .unwrap()
            .replayed,
        "globex's is kept"
    );
    assert_eq!(mock.requests().len(), 3);
    let log = std::fs::read_to_string(valet.audit_log()).unwrap();
    assert!(log.contains("\"event\":\"idempotency_purge\""));
}

/// A vendor slower than the lease and the retention: the key's record must
/// outlive them both, so a retry meanwhile is refused — never sent again.
async fn slow_vendor_never_gets_the_write_twice(tweak: impl FnOnce(&mut Config)) {
    let (mock, valet, key) = setup(|c| {
        c.idempotency.lease_ms = 1_000;
        c.idempotency.retention_ms = 1_000;
        tweak(c);
    })
    .await;
    mock.script(
        "/v1/charges",
        Scripted::status(201).delay(Duration::from_millis(2_500)),
    );
    let first = {
        let (gateway, key) = (valet.gateway().await, key.clone());
        tokio::spawn(async move {
            let mut gateway = gateway;
            gateway.call(authed(write("acme", "order-42", "x"), &key)).await
        })
    };
    mock.wait_until(|requests, _| !requests.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let err = valet
        .call(&key, write("acme", "order-42", "x"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "IDEMPOTENCY_OUTCOME_UNKNOWN");
    let answer = first.await.unwrap().unwrap().into_inner();
    assert_eq!((answer.status, answer.replayed), (201, false));
    assert_eq!(mock.requests().len(), 1, "the write reached the vendor once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_outlives_its_lease_and_retention_embedded() {
    slow_vendor_never_gets_the_write_twice(|_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_outlives_its_lease_and_retention_redis() {
    let redis = valet_testkit::RedisServer::start().await;
    let keys = tempfile::tempdir().unwrap();
    let master = keys.path().join("master.key");
    valet_credentials::MasterKey::load_or_create(&master).unwrap();
    slow_vendor_never_gets_the_write_twice(|c| {
        c.idempotency.backend = valet::config::QuotaBackend::Redis;
        c.idempotency.redis_url = Some(redis.url());
        c.secrets.master_key = Some(valet::config::MasterKeySource::File(master));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_neither_counted_nor_refused_by_the_quota() {
    let (mock, valet, key) = setup(|c| {
        c.quota.policies = vec![one_an_hour()];
    })
    .await;
    let first = valet.call(&key, write("acme", "k-q", "x")).await.unwrap();
    assert!(!first.replayed);
    // The quota is spent, but the stored answer costs the vendor nothing.
    for _ in 0..3 {
        let again = valet.call(&key, write("acme", "k-q", "x")).await.unwrap();
        assert!(again.replayed);
    }
    let err = valet.call(&key, write("acme", "k-other", "x")).await.unwrap_err();
    assert_eq!(reason(&err), "QUOTA_EXCEEDED");
    assert_eq!(mock.requests().len(), 1);
}

/// Records written before the stored-response format existed hold an
/// encoded `CallResponse`; they still replay, once, as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_stored_as_a_call_response_still_replays() {
    use prost::Message as _;
    let (mock, valet, key) = setup(|_| {}).await;
    let (config, state) = valet.stop().await;
    {
        let app = valet::app::App::open(&config).await.unwrap();
        let scope = valet_idempotency::Scope {
            tenant: "acme".into(),
            vendor: "mock".into(),
            key: "k-old".into(),
        };
        let fingerprint = valet_idempotency::fingerprint("POST", "/v1/charges", None, [], b"x");
        let now_ms = valet::app::now_ms();
        let terms = valet_idempotency::Terms {
            now_ms,
            lease_ms: config.idempotency.lease_ms,
            retention_ms: config.idempotency.retention_ms,
            vendor_dedupes: false,
        };
        let begun = app.idempotency.begin(&scope, &fingerprint, &terms).await.unwrap();
        assert_eq!(begun, valet_idempotency::Begin::Proceed);
        let old = valet::proto::CallResponse {
            status: 201,
            headers: vec![valet::proto::Header {
                name: "x-old".into(),
                value: "yes".into(),
            }],
            body: b"from an old record".to_vec(),
            attempts: 2,
            replayed: false,
            request_id: String::new(),
        };
        let sealed = app
            .vault
            .seal_data(&scope.tenant, &scope.seal_label(), &old.encode_to_vec());
        let retention_ms = config.idempotency.retention_ms;
        app.idempotency
            .complete(&scope, sealed, now_ms, retention_ms)
            .await
            .unwrap();
    }
    let valet = Valet::start_with(config, state).await;
    let again = valet.call(&key, write("acme", "k-old", "x")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.status, 201);
    assert_eq!(again.body, b"from an old record");
    assert_eq!(again.attempts, 2);
    assert!(
        again
            .headers
            .iter()
            .any(|h| h.name == "x-old" && h.value == "yes")
    );
    assert_eq!(mock.requests().len(), 0, "a replay never reaches the vendor");
}
