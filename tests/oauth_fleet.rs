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
    _redis: RedisServer,
    _backends: Backends,
}

/// `n` replicas on one Redis and one Secrets Manager, with a
/// `refresh_token` vendor whose tokens live `lifetime_s`.
async fn fleet(n: usize, lifetime_s: u64) -> Fleet {
    let idp = MockOAuth::start().await;
    idp.set_lifetime(lifetime_s);
    idp.add_client("acme-client", CLIENT_SECRET, ClientAuth::Basic);
    let rt = idp.issue_refresh_token("acme-client");
    let redis = RedisServer::start().await;
    let provider = Provider {
        token_url: idp.token_url(),
        api_url: idp.api_url(),
        client_id: "acme-client",
        client_secret: CLIENT_SECRET,
        refresh_token: &rt,
    };
    let (replicas, backends) = replicas(n, &redis, &provider).await;
    Fleet {
        idp,
        replicas,
        _redis: redis,
        _backends: backends,
    }
}

/// What the fleet authenticates to.
struct Provider<'a> {
    token_url: String,
    api_url: String,
    client_id: &'a str,
    client_secret: &'a str,
    refresh_token: &'a str,
}

/// What the replicas share besides Redis: Secrets Manager and the master key.
struct Backends {
    _moto: Moto,
    _keys: tempfile::TempDir,
}

/// `n` Valet processes on `redis` and one Secrets Manager, with a
/// `refresh_token` vendor at `provider` (tokens replaced 2 s early), the
/// tenant's grant material stored once; each with a caller key.
async fn replicas(
    n: usize,
    redis: &RedisServer,
    provider: &Provider<'_>,
) -> (Vec<(ValetProcess, String)>, Backends) {
    let moto = Moto::start().await;
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
auth = {{ scheme = "oauth2", token_url = "{token}", grant = "refresh_token", refresh_before_ms = 2000 }}
"#,
        redis = redis.url(),
        moto = moto.endpoint(),
        master = master.display(),
        api = provider.api_url,
        token = provider.token_url,
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
            let put = [
                "credential",
                "put",
                "--tenant",
                "acme",
                "--vendor",
                "crm",
                "--oauth-client-id",
                provider.client_id,
                "--oauth-refresh-token",
            ];
            p.admin(
                &put,
                &format!("{}\n{}\n", provider.client_secret, provider.refresh_token),
            )
            .await;
        }
        let key = p.caller_key("acme", "crm", &["read"]).await;
        replicas.push((p, key));
    }
    (
        replicas,
        Backends {
            _moto: moto,
            _keys: keys,
        },
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_against_oidc_provider_refresh_once_and_never_reuse() {
    const SECRET: &str = "oauth-canary-oidc-fleet-0123456789abcdefghijklmnopqrstuvwxyz";
    let clients = serde_json::json!([{
        "client_id": "valet-fleet",
        "client_secret": SECRET,
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": ["https://client.example/cb"],
        "scope": "openid offline_access",
    }]);
    let env = [("OIDC_REFRESH_CLIENT", "valet-fleet"), ("OIDC_TTL", "3")];
    let Some(oidc) = support::OidcProvider::start(clients, &env).await else {
        return;
    };
    let first = oidc.logged("refresh_token")[0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let redis = RedisServer::start().await;
    let provider = Provider {
        token_url: format!("{}/token", oidc.base()),
        api_url: format!("{}/api", oidc.base()),
        client_id: "valet-fleet",
        client_secret: SECRET,
        refresh_token: &first,
    };
    let (replicas, _backends) = replicas(3, &redis, &provider).await;
    // Counted at the server: its own log of every token request.
    let refreshes = || {
        oidc.logged("token")
            .into_iter()
            .filter(|t| t["grant_type"] == "refresh_token")
            .collect::<Vec<_>>()
    };
    for c in call_all(&replicas).await {
        assert_eq!(c.unwrap_or_else(|e| panic!("call: {e:?}")), 200);
    }
    assert_eq!(
        refreshes().len(),
        1,
        "a cold start on three replicas: {:?}",
        refreshes()
    );
    // Tokens live 3 s and are replaced 2 s early: calls on every replica
    // until the fleet has replaced it twice.
    let began = Instant::now();
    while refreshes().len() < 3 {
        for r in &replicas {
            assert_eq!(call(r).await.unwrap_or_else(|e| panic!("call: {e:?}")), 200);
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "too few refreshes: {:?}",
            refreshes()
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing only
    }
    let done = refreshes();
    assert!(done.iter().all(|t| t["status"] == 200), "{done:?}");
    let presented: Vec<&str> = done
        .iter()
        .map(|t| t["refresh_token"].as_str().unwrap())
        .collect();
    let distinct: HashSet<_> = presented.iter().collect();
    assert_eq!(
        distinct.len(),
        presented.len(),
        "a refresh token presented twice: {presented:?}"
    );
    // The refreshes came one token lifetime apart, not one per replica.
    assert!(done.len() <= 4, "{done:?}");
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
