//! Quotas in fleet mode: several Valet processes sharing one Redis enforce
//! one limit, see each other's policy changes within a second, and fall back
//! to a local limiter while Redis is down.

mod support;

use std::time::{Duration, Instant};
use support::{Valet, ValetProcess, authed, bearer, get, http_get, reason, sample, vendor};
use tonic::Code;
use tonic_types::StatusExt as _;
use valet::config::{Config, QuotaBackend};
use valet::proto::{
    DeleteQuotaPolicyRequest, GetQuotaUsageRequest, ListQuotaPoliciesRequest, Operation,
    PutQuotaPolicyRequest, QuotaPolicy, RatePeriod,
};
use valet_quota::{Mode, OnBackendError, OperationMatch, Period, Policy};
use valet_testkit::{MockVendor, RedisServer};

fn config(mock: &MockVendor, redis: &RedisServer, policies: Vec<Policy>, replicas: u32) -> Config {
    let mut config = Config {
        vendors: vec![vendor("mock", &mock.base_url(), bearer())],
        ..Config::default()
    };
    config.quota.backend = QuotaBackend::Redis;
    config.quota.redis_url = Some(redis.url());
    config.quota.on_backend_error = OnBackendError::Local;
    config.quota.replicas = replicas;
    config.quota.policies = policies;
    config
}

async fn replica(config: Config) -> (Valet, String) {
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    valet
        .put_credential("acme", "mock", "fleet-quota-secret-0001")
        .await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    (valet, key)
}

fn per_second(rate: u32, burst: u32) -> Policy {
    Policy {
        tenant: "*".into(),
        vendor: "mock".into(),
        operation: OperationMatch::Any,
        rate,
        period: Period::Second,
        burst,
        mode: Mode::Enforce,
        aggregate: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_admit_at_most_burst_plus_rate_times_t() {
    let redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    let (rate, burst) = (20u32, 5u32);
    let body = format!(
        r#"
[quota]
backend = "redis"
redis_url = "{url}"
replicas = 3
[[quota.policies]]
tenant = "*"
vendor = "mock"
operation = "*"
rate = {rate}
period = "second"
burst = {burst}
[[vendors]]
name = "mock"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "bearer" }}
"#,
        url = redis.url(),
        base = mock.base_url()
    );
    let mut processes = Vec::new();
    for _ in 0..3 {
        let p = ValetProcess::spawn(&body).await;
        let key = p.acme_mock_caller("fleet-quota-secret-0001", "read").await;
        processes.push((p, key));
    }

    let window = Duration::from_millis(1500);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, key) in &processes {
        let (mut gateway, key) = (p.gateway().await, key.clone());
        tasks.push(tokio::spawn(async move {
            let (mut admitted, mut refused) = (0u32, 0u32);
            while started.elapsed() < window {
                match gateway.call(authed(get("acme", "mock", "/x"), &key)).await {
                    Ok(_) => admitted += 1,
                    Err(e) if reason(&e) == "QUOTA_EXCEEDED" => refused += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            (admitted, refused)
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for t in tasks {
        let (a, r) = t.await.unwrap();
        admitted += a;
        refused += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bound = f64::from(burst) + f64::from(rate) * elapsed;
    assert!(
        f64::from(admitted) <= bound + 1.0,
        "admitted {admitted} > burst + rate x t = {bound:.1}"
    );
    assert!(
        refused > 0,
        "the limit was never reached: the test proves nothing"
    );
    assert!(admitted >= burst, "admitted {admitted}");
    assert_eq!(mock.requests().len() as u32, admitted);
    for (p, _) in processes {
        assert_eq!(p.terminate().await.code, Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_set_on_one_replica_reaches_the_others_within_a_second() {
    let redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    let (a, _) = replica(config(&mock, &redis, vec![], 2)).await;
    let (b, b_key) = replica(config(&mock, &redis, vec![], 2)).await;

    let policy = QuotaPolicy {
        tenant: "acme".into(),
        vendor: "mock".into(),
        operation: "*".into(),
        rate: 1,
        period: RatePeriod::Hour as i32,
        burst: 1,
        ..Default::default()
    };
    let set_at = Instant::now();
    a.admin()
        .await
        .put_quota_policy(authed(
            PutQuotaPolicyRequest { policy: Some(policy) },
            &a.admin_key,
        ))
        .await
        .unwrap();
    let mut admin_b = b.admin().await;
    loop {
        let seen = admin_b
            .list_quota_policies(authed(ListQuotaPoliciesRequest {}, &b.admin_key))
            .await
            .unwrap()
            .into_inner()
            .policies;
        if seen.iter().any(|p| p.id == "acme/mock/*") {
            break;
        }
        assert!(
            set_at.elapsed() < Duration::from_secs(3),
            "replica b never saw the policy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        set_at.elapsed() < Duration::from_millis(1200),
        "took {:?}",
        set_at.elapsed()
    );
    // And b enforces it against the shared bucket.
    b.call(&b_key, get("acme", "mock", "/x")).await.unwrap();
    let err = b.call(&b_key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(reason(&err), "QUOTA_EXCEEDED");

    // Usage on a, which saw none of these calls, is read from Redis.
    let usage = a
        .admin()
        .await
        .get_quota_usage(authed(
            GetQuotaUsageRequest {
                tenant: "acme".into(),
                vendor: "mock".into(),
                operation: "read".into(),
            },
            &a.admin_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .usage;
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (usage[0].policy_id.as_str(), usage[0].remaining),
        ("acme/mock/*", 0)
    );
    assert!(usage[0].reset_ms > 3_500_000, "{}", usage[0].reset_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_deny_refuses_and_allow_admits() {
    let mut redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    let one = Policy {
        rate: 1,
        period: Period::Hour,
        ..per_second(1, 1)
    };
    let mut deny = config(&mock, &redis, vec![one.clone()], 1);
    deny.quota.on_backend_error = OnBackendError::Deny;
    let mut allow = config(&mock, &redis, vec![one], 1);
    allow.quota.on_backend_error = OnBackendError::Allow;
    let (deny, deny_key) = replica(deny).await;
    let (allow, allow_key) = replica(allow).await;

    redis.stop();
    // Deny refuses, but says why: the backend, not the tenant's usage.
    let err = deny.call(&deny_key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unavailable, "QUOTA_BACKEND_UNAVAILABLE"),
        "deny refuses while Redis is down: {err:?}"
    );
    let details = err.get_error_details();
    assert!(
        !details.error_info().unwrap().metadata.contains_key("policy"),
        "no tenant policy is blamed"
    );
    assert!(!err.message().contains("over quota"), "{}", err.message());
    let retry = details.retry_info().and_then(|r| r.retry_delay).unwrap();
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(2),
        "{retry:?}"
    );
    assert!(err.metadata().get("retry-after").is_some());
    let err = deny.call(&deny_key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(reason(&err), "QUOTA_BACKEND_UNAVAILABLE");
    assert!(mock.requests().is_empty(), "nothing reached the vendor");
    let (_, metrics) = http_get(&format!("http://{}/metrics", deny.ops_addr)).await;
    assert_eq!(
        sample(
            &metrics,
            "valet_quota_backend_unavailable_total",
            &[("vendor", "mock")]
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "valet_quota_refusals_total", &[]),
        0.0,
        "not counted as a policy refusal: {metrics}"
    );
    // GetQuotaUsage still answers (from what this replica last saw).
    let usage = deny
        .admin()
        .await
        .get_quota_usage(authed(
            GetQuotaUsageRequest {
                tenant: "acme".into(),
                vendor: "mock".into(),
                operation: "read".into(),
            },
            &deny.admin_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .usage;
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].policy_id, "*/mock/*");
    for _ in 0..3 {
        allow
            .call(&allow_key, get("acme", "mock", "/x"))
            .await
            .expect("allow admits while Redis is down, beyond the burst");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_falls_back_to_local_and_recovers() {
    let mut redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    let hourly = Policy {
        rate: 1,
        period: Period::Hour,
        ..per_second(1, 2)
    };
    let (valet, key) = replica(config(&mock, &redis, vec![hourly], 1)).await;
    let call = || valet.call(&key, get("acme", "mock", "/x"));

    // Redis enforces: 2, then refused.
    call().await.unwrap();
    call().await.unwrap();
    assert_eq!(reason(&call().await.unwrap_err()), "QUOTA_EXCEEDED");

    // Redis gone: the local fallback takes over (a fresh local bucket), so
    // traffic neither stops nor runs unlimited.
    redis.stop();
    call().await.expect("the local fallback admits");
    call().await.expect("the local fallback admits");
    assert_eq!(
        reason(&call().await.unwrap_err()),
        "QUOTA_EXCEEDED",
        "the fallback limits too"
    );

    // Redis back (empty): after the retry window Valet uses it again — its
    // fresh bucket admits where the exhausted local one would not.
    redis.restart().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut recovered = false;
    for _ in 0..20 {
        if call().await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "Valet did not return to Redis");
}

/// In Redis too, changing a policy carries each bucket's TAT over: a
/// tighter burst hands out no fresh burst, and a slower rate repays what was
/// used at the new rate instead of letting the old TAT fit a wider window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightening_a_policy_in_redis_keeps_the_bucket_state() {
    let redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    let (valet, _) = replica(config(&mock, &redis, vec![], 1)).await;
    valet
        .put_credential("globex", "mock", "fleet-quota-secret-0001")
        .await;
    let key = valet
        .api_key(&["acme", "globex"], &["mock"], &[Operation::Read])
        .await;
    let mut admin = valet.admin().await;
    let put = |p: QuotaPolicy| authed(PutQuotaPolicyRequest { policy: Some(p) }, &valet.admin_key);
    let wire = |tenant: &str, rate: u32, period: RatePeriod, burst: u32| QuotaPolicy {
        tenant: tenant.into(),
        vendor: "mock".into(),
        operation: "*".into(),
        rate,
        period: period as i32,
        burst,
        ..Default::default()
    };
    let outcomes = |tenant: &'static str, n: usize| support::outcomes(&valet, &key, tenant, n);

    // The issue's case: 1/h burst 5, six calls, then burst 3.
    admin
        .put_quota_policy(put(wire("acme", 1, RatePeriod::Hour, 5)))
        .await
        .unwrap();
    let used = outcomes("acme", 6).await;
    assert_eq!(used.iter().filter(|o| *o == "ok").count(), 5, "{used:?}");
    admin
        .put_quota_policy(put(wire("acme", 1, RatePeriod::Hour, 3)))
        .await
        .unwrap();
    assert_eq!(outcomes("acme", 3).await, ["QUOTA_EXCEEDED"; 3]);

    // A slower rate: 1/s burst 3, all used, then 1/h burst 3. Kept as is,
    // the TAT (3 s ahead) would fit the new 2 h tolerance and admit again.
    admin
        .put_quota_policy(put(wire("globex", 1, RatePeriod::Second, 3)))
        .await
        .unwrap();
    assert_eq!(outcomes("globex", 3).await, ["ok", "ok", "ok"]);
    admin
        .put_quota_policy(put(wire("globex", 1, RatePeriod::Hour, 3)))
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
    // The converted state was stored: it still holds once the old TAT (and
    // the old key's expiry) has passed.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(outcomes("globex", 1).await, ["QUOTA_EXCEEDED"]);

    // Loosening keeps what was used: 3 owed under burst 3 → burst 6 admits 3.
    admin
        .put_quota_policy(put(wire("acme", 1, RatePeriod::Hour, 6)))
        .await
        .unwrap();
    assert_eq!(outcomes("acme", 4).await, ["ok", "ok", "ok", "QUOTA_EXCEEDED"]);
    assert_eq!(mock.requests().len(), 5 + 3 + 3);
}

fn hourly(tenant: &str, burst: u32) -> QuotaPolicy {
    QuotaPolicy {
        tenant: tenant.into(),
        vendor: "mock".into(),
        operation: "*".into(),
        rate: 1,
        period: RatePeriod::Hour as i32,
        burst,
        ..Default::default()
    }
}

async fn ids(valet: &Valet) -> Vec<String> {
    let mut ids: Vec<String> = valet
        .admin()
        .await
        .list_quota_policies(authed(ListQuotaPoliciesRequest {}, &valet.admin_key))
        .await
        .unwrap()
        .into_inner()
        .policies
        .into_iter()
        .map(|p| p.id)
        .collect();
    ids.sort();
    ids
}

/// Polls `cond` every 50 ms until it holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn stored_ids(redis: &RedisServer) -> Vec<String> {
    let Ok(client) = redis::Client::open(redis.url()) else {
        return Vec::new();
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return Vec::new();
    };
    let mut ids: Vec<String> = redis::cmd("HKEYS")
        .arg("valet:quota:policies")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    ids.retain(|id| id != "~version"); // the hash's mark of its version
    ids.sort();
    ids
}

/// Redis restarted without persistence (or failed over to an empty
/// replica): the replicas keep their last known policies — they never fall
/// to "no policies", which would leave every tenant unlimited — re-publish
/// them, count it, and keep enforcing; config defaults apply throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_survive_redis_coming_back_empty() {
    let mut redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    let default = Policy {
        tenant: "globex".into(),
        ..per_second(1, 1)
    };
    let (a, _) = replica(config(&mock, &redis, vec![default.clone()], 2)).await;
    let (b, b_key) = replica(config(&mock, &redis, vec![default], 2)).await;
    a.admin()
        .await
        .put_quota_policy(authed(
            PutQuotaPolicyRequest {
                policy: Some(hourly("acme", 1)),
            },
            &a.admin_key,
        ))
        .await
        .unwrap();
    let both = vec!["acme/mock/*".to_owned(), "globex/mock/*".to_owned()];
    eventually(Duration::from_secs(3), "b sees the policy", || async {
        ids(&b).await == both
    })
    .await;

    // Restarted empty: the policy hash and the version key are gone.
    redis.restart().await;
    eventually(Duration::from_secs(5), "a replica re-publishes", || async {
        stored_ids(&redis).await == ["acme/mock/*"]
    })
    .await;
    // Well past the 1.5 s in which every replica used to drop its policies.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(ids(&a).await, both);
    assert_eq!(ids(&b).await, both);
    assert_eq!(stored_ids(&redis).await, ["acme/mock/*"]);
    // Still enforced, against the new (empty) Redis's buckets.
    b.call(&b_key, get("acme", "mock", "/x")).await.unwrap();
    let err = b.call(&b_key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(reason(&err), "QUOTA_EXCEEDED");
    // Loudly: counted on the replica(s) that noticed.
    let mut lost = 0.0;
    for v in [&a, &b] {
        let (_, metrics) = http_get(&format!("http://{}/metrics", v.ops_addr)).await;
        lost += sample(&metrics, "valet_quota_policy_store_lost_total", &[]);
    }
    assert!(lost >= 1.0, "no replica counted the loss");

    // FLUSHALL, and a change made right after it on the other replica: the
    // change lands on top of the last known set, not on an empty one.
    let mut conn = redis_conn(&redis).await;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.unwrap();
    b.admin()
        .await
        .put_quota_policy(authed(
            PutQuotaPolicyRequest {
                policy: Some(hourly("initech", 2)),
            },
            &b.admin_key,
        ))
        .await
        .unwrap();
    let three = vec![
        "acme/mock/*".to_owned(),
        "globex/mock/*".to_owned(),
        "initech/mock/*".to_owned(),
    ];
    eventually(Duration::from_secs(3), "a sees the new policy", || async {
        ids(&a).await == three
    })
    .await;
    assert_eq!(ids(&b).await, three);
    assert_eq!(stored_ids(&redis).await, ["acme/mock/*", "initech/mock/*"]);
}

/// A store whose version went backwards (a failover to a replica that had
/// not seen the last change) is not synced from: the newer set is
/// re-published. An admin deleting the last policy still empties the set
/// everywhere, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_going_backwards_is_repaired_and_deleting_every_policy_sticks() {
    let redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    let (a, _) = replica(config(&mock, &redis, vec![], 2)).await;
    let (b, _) = replica(config(&mock, &redis, vec![], 2)).await;
    let mut admin = a.admin().await;
    let put = |p: QuotaPolicy| authed(PutQuotaPolicyRequest { policy: Some(p) }, &a.admin_key);
    admin.put_quota_policy(put(hourly("acme", 1))).await.unwrap();
    let mut conn = redis_conn(&redis).await;
    let old_version: String = redis::cmd("GET")
        .arg("valet:quota:version")
        .query_async(&mut conn)
        .await
        .unwrap();
    let old_set: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("valet:quota:policies")
        .query_async(&mut conn)
        .await
        .unwrap();
    admin.put_quota_policy(put(hourly("initech", 2))).await.unwrap();
    let both = vec!["acme/mock/*".to_owned(), "initech/mock/*".to_owned()];
    eventually(Duration::from_secs(3), "b sees both", || async {
        ids(&b).await == both
    })
    .await;

    // The store goes back to the state before the second change.
    let mut back = redis::pipe();
    back.atomic().del("valet:quota:policies");
    for (id, json) in &old_set {
        back.hset("valet:quota:policies", id, json);
    }
    back.set("valet:quota:version", &old_version);
    back.query_async::<()>(&mut conn).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the newer set is re-published",
        || async { stored_ids(&redis).await == both },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(ids(&a).await, both);
    assert_eq!(ids(&b).await, both);
    let version: String = redis::cmd("GET")
        .arg("valet:quota:version")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        version.parse::<i64>().unwrap() > old_version.parse::<i64>().unwrap(),
        "{version} <= {old_version}"
    );

    // Deliberate deletion of every policy: the empty set is a real version.
    for id in ["acme/mock/*", "initech/mock/*"] {
        admin
            .delete_quota_policy(authed(DeleteQuotaPolicyRequest { id: id.into() }, &a.admin_key))
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(3), "b drops them", || async {
        ids(&b).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(ids(&a).await.is_empty());
    assert!(ids(&b).await.is_empty(), "nothing re-published a deleted policy");
    assert!(stored_ids(&redis).await.is_empty());
}

/// Only the policy hash is lost (an eviction, a partial restore), the
/// version key stays: still a loss, seen and repaired — and a replica that
/// starts meanwhile takes the re-published set, not an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_only_the_policy_hash_is_repaired() {
    let redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    let (a, _) = replica(config(&mock, &redis, vec![], 2)).await;
    a.admin()
        .await
        .put_quota_policy(authed(
            PutQuotaPolicyRequest {
                policy: Some(hourly("acme", 1)),
            },
            &a.admin_key,
        ))
        .await
        .unwrap();
    let mut conn = redis_conn(&redis).await;
    redis::cmd("DEL")
        .arg("valet:quota:policies")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let (c, c_key) = replica(config(&mock, &redis, vec![], 2)).await;
    eventually(Duration::from_secs(5), "a re-publishes the set", || async {
        stored_ids(&redis).await == ["acme/mock/*"]
    })
    .await;
    eventually(Duration::from_secs(3), "the new replica takes it", || async {
        ids(&c).await == ["acme/mock/*"]
    })
    .await;
    c.call(&c_key, get("acme", "mock", "/x")).await.unwrap();
    let err = c.call(&c_key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(reason(&err), "QUOTA_EXCEEDED");
    let (_, metrics) = http_get(&format!("http://{}/metrics", a.ops_addr)).await;
    assert!(sample(&metrics, "valet_quota_policy_store_lost_total", &[]) >= 1.0);
}
