//! The control state in fleet mode: three `valet serve` processes on one
//! Redis share API keys and tenant status. A key created on one works on
//! the others within a second; a revoke or a disable holds everywhere
//! within a second, cancelling a call in flight; with Redis gone a replica
//! serves from its last confirmed state (in memory, or on disk after a
//! restart) until the staleness bound, then refuses; Redis back — even
//! empty — and it recovers. Every output is scanned for the canaries.

mod support;

use std::time::{Duration, Instant};
use support::{ValetProcess, admin_cli, authed, get, http_get, reason};
use tonic::Code;
use valet_testkit::{MockVendor, RedisServer, Scripted, leak};

fn body(redis: &RedisServer, mock: &MockVendor, max_stale_ms: u64) -> String {
    format!(
        r#"redis_url = "{url}"
[server]
health_probe_interval_ms = 100
[control]
backend = "redis"
max_stale_ms = {max_stale_ms}
poll_interval_ms = 250
[[vendors]]
name = "mock"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "bearer" }}
"#,
        url = redis.url(),
        base = mock.base_url()
    )
}

async fn call(valet: &ValetProcess, key: &str, path: &str) -> Result<(), tonic::Status> {
    valet
        .gateway()
        .await
        .call(authed(get("acme", "mock", path), key))
        .await
        .map(drop)
}

/// Waits (at most `within`) until `check` holds on `valet`; returns how
/// long it took.
async fn until(
    within: Duration,
    valet: &ValetProcess,
    key: &str,
    check: impl Fn(&Result<(), tonic::Status>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let result = call(valet, key, "/v1/x").await;
        if check(&result) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not within {within:?}: last {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_reason(wire: &'static str) -> impl Fn(&Result<(), tonic::Status>) -> bool {
    move |r| r.as_ref().err().is_some_and(|s| reason(s) == wire)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_revokes_and_disables_reach_every_replica_within_a_second() {
    let redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    mock.script("/slow", Scripted::status(200).delay(Duration::from_secs(60)));
    let body = body(&redis, &mock, 30_000);
    let a = ValetProcess::spawn(&body).await;
    let b = ValetProcess::spawn(&body).await;
    let c = ValetProcess::spawn(&body).await;
    // Only the first replica bootstraps an admin key; it works on all three.
    let admin = a.key_file.clone();
    assert!(!b.key_file.exists() && !c.key_file.exists());
    let secret = valet_testkit::canary("fleet-control");
    let mut cli_output = Vec::new();
    for replica in [&a, &b, &c] {
        let out = admin_cli(
            &replica.admin_url,
            &admin,
            &["credential", "put", "--tenant", "acme", "--vendor", "mock"],
            &format!("{secret}\n"),
        )
        .await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        cli_output.extend(out.stdout);
    }

    let second = Duration::from_secs(1);
    let create = [
        "apikey",
        "create",
        "--name",
        "svc",
        "--tenant",
        "acme",
        "--vendor",
        "mock",
        "--operation",
        "read",
    ];
    let out = admin_cli(&a.admin_url, &admin, &create, "").await;
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(key.starts_with("vk_"), "{}", String::from_utf8_lossy(&out.stderr));
    call(&a, &key, "/v1/x").await.unwrap();
    for replica in [&b, &c] {
        until(second, replica, &key, Result::is_ok).await;
    }

    // Revoked on B: refused on A and C within a second.
    let list = admin_cli(&b.admin_url, &admin, &["apikey", "list"], "").await;
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let id = list
        .lines()
        .find(|l| l.contains("svc"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the key is listed on B")
        .to_owned();
    let before_revoke = control_keys(&redis).await;
    let out = admin_cli(&b.admin_url, &admin, &["apikey", "revoke", &id], "").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    call(&b, &key, "/v1/x").await.expect_err("revoked at once on B");
    for replica in [&a, &c] {
        until(second, replica, &key, is_reason("API_KEY_REVOKED")).await;
    }

    // Redis restored from a copy older than the revoke: no replica takes the
    // older state in (that would undo the revoke); they write theirs back.
    restore_control_keys(&redis, &before_revoke).await;
    let restored_at = Instant::now();
    loop {
        let now = control_keys(&redis).await;
        if now[0] != before_revoke[0] {
            break;
        }
        assert!(
            restored_at.elapsed() < second,
            "the older copy was never replaced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for replica in [&a, &b, &c] {
        let refused = call(replica, &key, "/v1/x").await.unwrap_err();
        assert_eq!(reason(&refused), "API_KEY_REVOKED", "the revoke holds");
    }

    // Disabled on C while a call is in flight on A: that call is cancelled
    // and its vendor request aborted; every replica refuses within a second.
    let out = admin_cli(&a.admin_url, &admin, &create, "").await;
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    until(second, &a, &key, Result::is_ok).await;
    let in_flight = {
        let mut gateway = a.gateway().await;
        let key = key.clone();
        tokio::spawn(async move { gateway.call(authed(get("acme", "mock", "/slow"), &key)).await })
    };
    mock.wait_until(|reqs, _| reqs.iter().any(|r| r.path_and_query == "/slow"))
        .await;
    let disabled_at = Instant::now();
    let out = admin_cli(
        &c.admin_url,
        &admin,
        &[
            "tenant",
            "disable",
            "--tenant",
            "acme",
            "--reason",
            "INC-9 containment drill",
        ],
        "",
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cancelled = in_flight.await.unwrap().expect_err("the call in flight ends");
    assert!(
        disabled_at.elapsed() < second,
        "cancelled after {:?}",
        disabled_at.elapsed()
    );
    assert_eq!(
        (cancelled.code(), reason(&cancelled).as_str()),
        (Code::FailedPrecondition, "TENANT_DISABLED")
    );
    mock.wait_until(|_, aborted| aborted.iter().any(|p| p == "/slow"))
        .await;
    for replica in [&a, &b, &c] {
        until(second, replica, &key, is_reason("TENANT_DISABLED")).await;
    }
    let out = admin_cli(
        &b.admin_url,
        &admin,
        &["tenant", "enable", "--tenant", "acme"],
        "",
    )
    .await;
    assert!(out.status.success());
    for replica in [&a, &b, &c] {
        until(second, replica, &key, Result::is_ok).await;
    }

    // Only hashes went to Redis.
    let dump = redis_dump(&redis).await;
    let admin_key = std::fs::read_to_string(&admin).unwrap().trim().to_owned();
    for s in [&secret, &key, &admin_key] {
        assert!(
            leak::forms_found(dump.as_bytes(), s).is_empty(),
            "redis holds a secret"
        );
        assert!(leak::forms_found(&cli_output, s).is_empty());
    }
    for replica in [a, b, c] {
        let state = replica.state.clone();
        let exited = replica.terminate().await;
        assert_eq!(exited.code, Some(0));
        for s in [&secret, &key] {
            assert!(leak::forms_found(&exited.stdout, s).is_empty(), "stdout leaks");
            assert!(leak::forms_found(&exited.stderr, s).is_empty(), "stderr leaks");
            assert_eq!(leak::files_containing(&state, s), vec![], "state leaks");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_replica_serves_its_snapshot_until_the_bound_then_refuses_and_recovers() {
    let mut redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    let max_stale = Duration::from_millis(4_000);
    // Quotas in the same Redis (the one top-level redis_url): a replica
    // restarted during the outage must start anyway, and admit calls under
    // the local fallback.
    let body = body(&redis, &mock, max_stale.as_millis() as u64)
        + "[quota]\nbackend = \"redis\"\non_backend_error = \"local\"\n[[quota.policies]]\ntenant = \"*\"\nvendor = \"mock\"\noperation = \"*\"\nrate = 1000\nperiod = \"second\"\nburst = 1000\n";
    let a = ValetProcess::spawn(&body).await;
    let key = a
        .acme_mock_caller(&valet_testkit::canary("snapshot"), "read")
        .await;
    call(&a, &key, "/v1/x").await.unwrap();

    // Redis gone, then the replica killed and restarted: it still starts,
    // and authenticates from its on-disk snapshot.
    redis.stop();
    let stopped = Instant::now();
    let dir = a.kill9().await;
    let a = ValetProcess::spawn_in(dir, &body, &[]).await;
    call(&a, &key, "/v1/x")
        .await
        .expect("served from the snapshot within the bound");

    // Past the bound: UNAVAILABLE CONTROL_STATE_STALE, and NOT_SERVING.
    until(max_stale * 3, &a, &key, is_reason("CONTROL_STATE_STALE")).await;
    assert!(
        stopped.elapsed() >= max_stale - Duration::from_millis(500),
        "refused too early"
    );
    let status = call(&a, &key, "/v1/x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // The health probe (every 100 ms) follows.
    let readyz = format!("{}/readyz", a.ops_url);
    let probing = Instant::now();
    let (code, body_text) = loop {
        let (code, text) = http_get(&readyz).await;
        if code == 503 || probing.elapsed() > Duration::from_secs(2) {
            break (code, text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, 503, "{body_text}");
    assert!(body_text.contains("control state stale"), "{body_text}");

    // Redis back, empty: the replica re-publishes its state and serves.
    redis.restart().await;
    until(Duration::from_secs(5), &a, &key, Result::is_ok).await;
    let dump = redis_dump(&redis).await;
    assert!(dump.contains("valet:{control}:state"), "re-published: {dump}");
    let metrics = http_get(&format!("{}/metrics", a.ops_url)).await.1;
    assert!(
        support::sample(&metrics, "valet_control_store_lost_total", &[]) >= 1.0,
        "{metrics}"
    );
    assert_eq!(a.terminate().await.code, Some(0));
}

/// The control state's two Redis values: token, document.
async fn control_keys(redis: &RedisServer) -> [String; 2] {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (token, doc): (String, String) = redis::pipe()
        .get("valet:{control}:version")
        .get("valet:{control}:state")
        .query_async(&mut conn)
        .await
        .unwrap();
    [token, doc]
}

/// Puts `values` back (as if Redis were restored from an older copy).
async fn restore_control_keys(redis: &RedisServer, values: &[String; 2]) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::pipe()
        .set("valet:{control}:version", &values[0])
        .set("valet:{control}:state", &values[1])
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Every key and value in `redis`, as text.
async fn redis_dump(redis: &RedisServer) -> String {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    let mut out = String::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(&mut conn).await.unwrap();
        let value: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&k).query_async(&mut conn).await.unwrap()],
            "hash" => redis::cmd("HGETALL")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&k)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap(),
            _ => vec![redis::cmd("DUMP").arg(&k).query_async(&mut conn).await.unwrap()],
        };
        out.push_str(&k);
        for v in value {
            out.push(' ');
            out.push_str(&String::from_utf8_lossy(&v));
        }
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_fleet_started_at_once_bootstraps_one_admin_key() {
    let redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    let body = body(&redis, &mock, 30_000);
    let (a, b, c) = tokio::join!(
        ValetProcess::spawn(&body),
        ValetProcess::spawn(&body),
        ValetProcess::spawn(&body)
    );
    let files: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|p| p.key_file.clone())
        .filter(|f| f.exists())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "exactly one replica keeps an admin.key: {files:?}"
    );
    let listed = admin_cli(&b.admin_url, &files[0], &["apikey", "list"], "").await;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(listed.matches("bootstrap-admin").count(), 1, "{listed}");
    for replica in [&a, &b, &c] {
        let out = admin_cli(&replica.admin_url, &files[0], &["tenant", "list"], "").await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
