//! OAuth across a fleet: Valet processes sharing one Redis and one Secrets
//! Manager (moto) fetch each token once for all of them, and a rotating
//! refresh token is never presented twice — not when tokens expire, not
//! when a replica dies in the middle of a refresh.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::{ValetProcess, authed, get};
use valet_testkit::oauth_provider::ClientAuth;
use valet_testkit::{MockOAuth, Moto, RedisServer};

const CLIENT_SECRET: &str = "oauth-canary-fleet-client-secret";

struct Fleet {
    idp: MockOAuth,
    replicas: Vec<(ValetProcess, String)>,
    _moto: Moto,
    _redis: RedisServer,
    _keys: tempfile::TempDir,
}

/// `n` replicas on one Redis and one Secrets Manager, with a
/// `refresh_token` vendor whose tokens live `lifetime_s`.
async fn fleet(n: usize, lifetime_s: u64) -> Fleet {
    let (moto, redis, idp) = (
        Moto::start().await,
        RedisServer::start().await,
        MockOAuth::start().await,
    );
    idp.set_lifetime(lifetime_s);
    idp.add_client("acme-client", CLIENT_SECRET, ClientAuth::Basic);
    let rt = idp.issue_refresh_token("acme-client");
    let keys = tempfile::tempdir().unwrap();
    let master = keys.path().join("master.key");
    valet_credentials::MasterKey::load_or_create(&master).unwrap();
    let body = format!(
        r#"redis_url = "{redis}"
[secrets]
backend = "aws"
region = "us-east-1"
endpoint_url = "{moto}"
master_key = {{ file = "{master}" }}
[[vendors]]
name = "crm"
base_url = "{api}"
allow_insecure_http = true
timeout_ms = 3000
auth = {{ scheme = "oauth2", token_url = "{token}", grant = "refresh_token", scopes = ["things"], refresh_before_ms = 2000 }}
"#,
        redis = redis.url(),
        moto = moto.endpoint(),
        master = master.display(),
        api = idp.api_url(),
        token = idp.token_url(),
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let mut replicas = Vec::new();
    for i in 0..n {
        let p = ValetProcess::spawn_with(&body, &env).await;
        if i == 0 {
            p.admin(
                &[
                    "credential",
                    "put",
                    "--tenant",
                    "acme",
                    "--vendor",
                    "crm",
                    "--oauth-client-id",
                    "acme-client",
                    "--oauth-refresh-token",
                ],
                &format!("{CLIENT_SECRET}\n{rt}\n"),
            )
            .await;
        }
        let key = p.caller_key("acme", "crm", &["read"]).await;
        replicas.push((p, key));
    }
    Fleet {
        idp,
        replicas,
        _moto: moto,
        _redis: redis,
        _keys: keys,
    }
}

async fn call(replica: &(ValetProcess, String)) -> Result<u16, tonic::Status> {
    let mut gateway = replica.0.gateway().await;
    gateway
        .call(authed(get("acme", "crm", "/things"), &replica.1))
        .await
        .map(|r| r.into_inner().status as u16)
}

/// Every refresh token presented, and whether any was presented twice.
fn presented(idp: &MockOAuth) -> (Vec<String>, bool) {
    let all: Vec<String> = idp
        .token_requests()
        .iter()
        .filter_map(|t| t.refresh_token.clone())
        .collect();
    let twice = all.iter().collect::<HashSet<_>>().len() != all.len();
    (all, twice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fetch_each_token_once_and_never_reuse_a_refresh_token() {
    let f = fleet(3, 3).await;
    // A cold start on all three at once: one token request.
    for c in call_all(&f.replicas).await {
        assert_eq!(c.unwrap_or_else(|e| panic!("call: {e:?}")), 200);
    }
    assert_eq!(f.idp.token_requests().len(), 1, "{:?}", f.idp.token_requests());

    // The token comes due (3 s lifetime, replaced 2 s early): calls go on on
    // every replica, and one of them replaces it for all.
    let started = Instant::now();
    let mut round = 0;
    while f.idp.token_requests().len() < 2 {
        for r in &f.replicas {
            assert_eq!(call(r).await.expect("call"), 200);
        }
        round += 1;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no refresh after {round} rounds"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing only
    }
    f.idp
        .wait_for_token_requests(|t| t.len() == 2 && t[1].status == 200)
        .await;
    // Every replica now uses the new token without asking again: one that
    // still holds the first (its refresh point not yet reached) is refused
    // it by the vendor and takes the fleet's new one.
    let first = f.idp.api_requests()[0].token.clone().expect("a bearer token");
    f.idp.revoke_access_token(&first);
    for r in &f.replicas {
        assert_eq!(call(r).await.unwrap_or_else(|e| panic!("call: {e:?}")), 200);
    }
    let tokens = f.idp.token_requests();
    assert_eq!(tokens.len(), 2, "one refresh for the fleet: {tokens:?}");
    let (all, twice) = presented(&f.idp);
    assert!(!twice, "a refresh token presented twice: {all:?}");
    assert_eq!(f.idp.reuse_detected(), 0);

    // A vendor 401 on every replica (the provider revoked the tokens): one
    // refresh, still no reuse.
    f.idp.revoke_access_tokens();
    for c in call_all(&f.replicas).await {
        assert_eq!(c.unwrap_or_else(|e| panic!("call: {e:?}")), 200);
    }
    assert_eq!(f.idp.token_requests().len(), 3);
    assert!(!presented(&f.idp).1);
    assert_eq!(f.idp.reuse_detected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_refresh_is_taken_over_without_a_reuse() {
    let mut f = fleet(2, 3600).await;
    assert_eq!(call(&f.replicas[0]).await.expect("call"), 200);
    assert_eq!(f.idp.token_requests().len(), 1);
    // Replica 0 starts a refresh the provider is slow to answer...
    f.idp.revoke_access_tokens();
    f.idp.set_delay(Some(Duration::from_secs(30)));
    let (dying, dying_key) = f.replicas.remove(0);
    let mut gateway = dying.gateway().await;
    let doomed = tokio::spawn(async move {
        gateway
            .call(authed(get("acme", "crm", "/things"), &dying_key))
            .await
    });
    f.idp.wait_for_started(2).await;
    // ...and is killed before the provider processed it.
    let _dir = dying.kill9().await;
    let _ = doomed.await;
    f.idp.set_delay(None);
    // The survivor waits out the dead replica's lock, then refreshes with
    // the refresh token that was never spent.
    let began = Instant::now();
    assert_eq!(call(&f.replicas[0]).await.expect("call"), 200);
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "took {:?}",
        began.elapsed()
    );
    let answered: Vec<_> = f.idp.token_requests();
    assert_eq!(answered.len(), 2, "{answered:?}");
    assert!(answered.iter().all(|t| t.status == 200));
    assert!(!presented(&f.idp).1);
    assert_eq!(f.idp.reuse_detected(), 0, "the token family survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_after_the_provider_rotated_leaves_reauth_required_at_once() {
    let mut f = fleet(2, 3600).await;
    assert_eq!(call(&f.replicas[0]).await.expect("call"), 200);
    // Replica 0's refresh is processed - the provider rotates the refresh
    // token - but the answer never reaches it: it is killed first.
    f.idp.revoke_access_tokens();
    f.idp.set_answer_delay(Some(Duration::from_secs(30)));
    let (dying, dying_key) = f.replicas.remove(0);
    let mut gateway = dying.gateway().await;
    let doomed = tokio::spawn(async move {
        gateway
            .call(authed(get("acme", "crm", "/things"), &dying_key))
            .await
    });
    f.idp.wait_for_token_requests(|t| t.len() == 2).await;
    let _dir = dying.kill9().await;
    let _ = doomed.await;
    f.idp.set_answer_delay(None);
    // The new refresh token died with it. The survivor's one attempt with the
    // stored (spent) one is refused, and the tenant x vendor is marked at
    // once: no retries, no storm.
    let refused = call(&f.replicas[0]).await.unwrap_err();
    assert_eq!(
        support::reason(&refused),
        "CREDENTIAL_REAUTH_REQUIRED",
        "{refused:?}"
    );
    assert_eq!(f.idp.token_requests().len(), 3);
    for _ in 0..5 {
        let again = call(&f.replicas[0]).await.unwrap_err();
        assert_eq!(support::reason(&again), "CREDENTIAL_REAUTH_REQUIRED");
    }
    assert_eq!(f.idp.token_requests().len(), 3, "asked again after the refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_no_refresh_token_is_presented() {
    let mut f = fleet(2, 3600).await;
    assert_eq!(call(&f.replicas[0]).await.expect("call"), 200);
    assert_eq!(call(&f.replicas[1]).await.expect("call"), 200);
    f._redis.stop();
    // Held tokens still work...
    assert_eq!(call(&f.replicas[1]).await.expect("call"), 200);
    // ...but a refresh needs the fleet's lock: both replicas refuse rather
    // than present the refresh token on their own.
    f.idp.revoke_access_tokens();
    for r in &f.replicas {
        let refused = call(r).await.unwrap_err();
        assert_eq!(
            support::reason(&refused),
            "TOKEN_ENDPOINT_UNAVAILABLE",
            "{refused:?}"
        );
    }
    assert_eq!(f.idp.token_requests().len(), 1);
    // Redis back (an empty one): once each replica has reconnected, one
    // refresh for both, no reuse.
    f._redis.restart().await;
    for r in &f.replicas {
        let began = Instant::now();
        loop {
            match call(r).await {
                Ok(status) => break assert_eq!(status, 200),
                Err(e) => assert_eq!(support::reason(&e), "TOKEN_ENDPOINT_UNAVAILABLE", "{e:?}"),
            }
            assert!(began.elapsed() < Duration::from_secs(10), "no return to Redis");
            tokio::time::sleep(Duration::from_millis(100)).await; // pacing only
        }
    }
    assert_eq!(f.idp.token_requests().len(), 2);
    assert_eq!(f.idp.reuse_detected(), 0);
}

/// One call on every replica at once.
async fn call_all(replicas: &[(ValetProcess, String)]) -> Vec<Result<u16, tonic::Status>> {
    let mut calls = Vec::new();
    for (p, key) in replicas {
        let (mut gateway, key) = (p.gateway().await, key.clone());
        calls.push(tokio::spawn(async move {
            gateway
                .call(authed(get("acme", "crm", "/things"), &key))
                .await
                .map(|r| r.into_inner().status as u16)
        }));
    }
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.expect("task"));
    }
    out
}
