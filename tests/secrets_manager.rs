//! Credentials in AWS Secrets Manager, against a real Secrets Manager API:
//! moto's server mode, reached through a counting proxy so the tests count
//! requests outside Valet, with the real `aws-sdk-secretsmanager` client.

mod support;

use aws_sdk_secretsmanager::Client;
use std::time::{Duration, Instant};
use support::{Valet, authed, bearer, get, reason, sample, vendor};
use tonic::Code;
use valet::app::StartOptions;
use valet::config::{Config, MasterKeySource, SecretsBackend, SecretsConfig, ServerConfig, VerifyConfig};
use valet::proto::{ListCredentialsRequest, Operation, RotateCredentialRequest};
use valet_credentials::aws::{AwsConnection, sdk_config};
use valet_credentials::{CredentialKey, Fingerprint, MasterKey, Secret, StoredCredential, envelope};
use valet_testkit::{CountingProxy, MockVendor, Moto, leak};

const PREFIX: &str = "valet-test";

struct Fleet {
    master: MasterKey,
    moto: Moto,
    proxy: CountingProxy,
    mock: MockVendor,
    valet: Valet,
    key: String,
}

fn options() -> StartOptions {
    StartOptions {
        aws_static_credentials: Some(("testing".into(), "testing".into())),
    }
}

fn config(endpoint: &str, mock: &MockVendor, ttl_ms: u64, max_stale_ms: u64) -> Config {
    let mut v = vendor("mock", &mock.base_url(), bearer());
    v.verify = Some(VerifyConfig {
        method: "GET".into(),
        path: "/v1/me".into(),
    });
    Config {
        secrets: SecretsConfig {
            backend: SecretsBackend::Aws,
            region: Some("us-east-1".into()),
            endpoint_url: Some(endpoint.to_owned()),
            prefix: PREFIX.into(),
            cache_ttl_ms: ttl_ms,
            max_stale_ms,
            ..SecretsConfig::default()
        },
        vendors: vec![v],
        // Readiness probes would add DescribeSecret requests to the counts.
        server: ServerConfig {
            health_probe_interval_ms: 3_600_000,
            ..ServerConfig::default()
        },
        ..Config::default()
    }
}

/// Stores a fresh master key in the emulator, outside the credential prefix.
async fn master_key_secret(moto: &Moto) -> (MasterKey, String) {
    use base64::Engine as _;
    let seed = valet_testkit::canary("master");
    let mut bytes = [0u8; 32];
    for (i, (b, s)) in bytes.iter_mut().zip(seed.bytes().rev().cycle()).enumerate() {
        *b = s ^ (i as u8);
    }
    let name = "valet-master-key".to_owned();
    direct(moto)
        .await
        .create_secret()
        .name(&name)
        .secret_string(base64::engine::general_purpose::STANDARD.encode(bytes))
        .send()
        .await
        .unwrap();
    (MasterKey::from_bytes(bytes), name)
}

async fn scrape(valet: &Valet) -> String {
    support::http_get(&format!("http://{}/metrics", valet.ops_addr))
        .await
        .1
}

async fn fleet(ttl_ms: u64, max_stale_ms: u64) -> Fleet {
    let moto = Moto::start().await;
    let proxy = CountingProxy::start(&moto.endpoint()).await;
    let mock = MockVendor::start().await;
    let (master, name) = master_key_secret(&moto).await;
    let mut config = config(&proxy.endpoint(), &mock, ttl_ms, max_stale_ms);
    config.secrets.master_key = Some(MasterKeySource::AwsSecret(name));
    let valet = Valet::start_with_options(config, tempfile::tempdir().unwrap(), options()).await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    Fleet {
        master,
        moto,
        proxy,
        mock,
        valet,
        key,
    }
}

/// A Secrets Manager client straight to the emulator (not through Valet).
async fn direct(moto: &Moto) -> Client {
    let conn = AwsConnection {
        region: "us-east-1".into(),
        endpoint_url: Some(moto.endpoint()),
        static_credentials: Some(("testing".into(), "testing".into())),
    };
    Client::new(&sdk_config(&conn).await)
}

fn secret_name() -> String {
    format!("{PREFIX}/acme/mock")
}

/// Seals `secret` the way Valet does, with Valet's master key, and makes it
/// AWSCURRENT directly in the emulator: a rotation done outside Valet.
async fn rotate_outside(f: &Fleet, secret: &str) {
    let master = &f.master;
    let key = CredentialKey::new("acme", "mock");
    let secret = Secret::from(secret.to_owned());
    let record = StoredCredential {
        envelope: envelope::seal(master, &key, &secret),
        fingerprint: Fingerprint::of(master, &secret),
        last4: secret.last4(),
        created_ms: 0,
        updated_ms: 0,
    };
    direct(&f.moto)
        .await
        .put_secret_value()
        .secret_id(secret_name())
        .secret_string(serde_json::to_string(&record).unwrap())
        .send()
        .await
        .unwrap();
}

async fn stages(moto: &Moto) -> Vec<Vec<String>> {
    let out = direct(moto)
        .await
        .describe_secret()
        .secret_id(secret_name())
        .send()
        .await
        .unwrap();
    let mut stages: Vec<Vec<String>> = out
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
        .into_values()
        .collect();
    stages.iter_mut().for_each(|s| s.sort());
    stages.sort();
    stages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_live_in_secrets_manager_sealed() {
    let f = fleet(300_000, 3_600_000).await;
    let canary = valet_testkit::canary("sm");
    let info = f.valet.put_credential("acme", "mock", &canary).await;

    let resp = f
        .valet
        .call(&f.key, get("acme", "mock", "/v1/users"))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        f.mock.requests()[0].header("authorization"),
        Some(format!("Bearer {canary}").as_str())
    );

    // What Secrets Manager holds is Valet's envelope, not the token.
    let sm = direct(&f.moto).await;
    let stored = sm
        .get_secret_value()
        .secret_id(secret_name())
        .send()
        .await
        .unwrap();
    let value = stored.secret_string().unwrap();
    assert!(value.contains("\"ct\""), "{value}");
    assert_eq!(leak::forms_found(value.as_bytes(), &canary), Vec::<&str>::new());
    let described = sm
        .describe_secret()
        .secret_id(secret_name())
        .send()
        .await
        .unwrap();
    let tag = |k: &str| {
        described
            .tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_owned)
    };
    assert_eq!(tag("valet:tenant").as_deref(), Some("acme"));
    assert_eq!(tag("valet:vendor").as_deref(), Some("mock"));

    let listed = f
        .valet
        .admin()
        .await
        .list_credentials(authed(ListCredentialsRequest::default(), &f.valet.admin_key))
        .await
        .unwrap()
        .into_inner()
        .credentials;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].fingerprint.as_str(), listed[0].last4.as_str()),
        (info.fingerprint.as_str(), &canary[canary.len() - 4..])
    );

    let del = valet::proto::DeleteCredentialRequest {
        tenant: "acme".into(),
        vendor: "mock".into(),
    };
    f.valet
        .admin()
        .await
        .delete_credential(authed(del, &f.valet.admin_key))
        .await
        .unwrap();
    let err = f.valet.call(&f.key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        sm.describe_secret()
            .secret_id(secret_name())
            .send()
            .await
            .is_err(),
        "the secret is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_cache_costs_one_request_and_expiry_only_a_version_check() {
    let f = fleet(400, 3_600_000).await;
    f.valet
        .put_credential("acme", "mock", "cold-cache-secret-0001")
        .await;
    // A new process: nothing cached.
    let Fleet {
        master,
        moto,
        proxy,
        mock,
        valet,
        key,
    } = f;
    let valet = valet.restart().await;
    proxy.reset();

    let gateway = valet.gateway().await;
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let (mut gateway, key) = (gateway.clone(), key.clone());
            tokio::spawn(async move { gateway.call(authed(get("acme", "mock", "/x"), &key)).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().into_inner().status, 200);
    }
    assert_eq!(proxy.count("GetSecretValue"), 1, "single-flight on a cold cache");
    let metrics = scrape(&valet).await;
    let lookups = |result| {
        sample(
            &metrics,
            "valet_credential_cache_lookups_total",
            &[("result", result)],
        )
    };
    assert_eq!((lookups("miss"), lookups("hit")), (1.0, 199.0), "{metrics}");
    let requests = |operation| {
        sample(
            &metrics,
            "valet_secrets_manager_request_duration_seconds_count",
            &[("operation", operation), ("outcome", "ok")],
        )
    };
    assert_eq!(requests("GetSecretValue"), 1.0, "{metrics}");

    // Past the TTL, with the version unchanged: a DescribeSecret, no value.
    let expired = Instant::now() + Duration::from_millis(450);
    tokio::time::sleep_until(expired.into()).await;
    proxy.reset();
    valet.call(&key, get("acme", "mock", "/x")).await.unwrap();
    assert_eq!(
        (proxy.count("DescribeSecret"), proxy.count("GetSecretValue")),
        (1, 0)
    );
    let metrics = scrape(&valet).await;
    assert_eq!(
        sample(
            &metrics,
            "valet_credential_cache_lookups_total",
            &[("result", "miss")]
        ),
        2.0,
        "a version check is a miss"
    );

    // A rotation made directly in Secrets Manager is picked up at the next
    // version check.
    let f = Fleet {
        master,
        moto,
        proxy,
        mock,
        valet,
        key,
    };
    rotate_outside(&f, "rotated-outside-000002").await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    f.valet.call(&f.key, get("acme", "mock", "/after")).await.unwrap();
    let last = f.mock.requests().pop().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some("Bearer rotated-outside-000002")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_backoff() {
    let f = fleet(300_000, 3_600_000).await;
    f.valet
        .put_credential("acme", "mock", "throttled-secret-00001")
        .await;
    let Fleet {
        proxy, valet, key, ..
    } = f;
    let valet = valet.restart().await;
    proxy.reset();
    proxy.throttle_next(2);
    let resp = valet.call(&key, get("acme", "mock", "/x")).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(proxy.count("GetSecretValue"), 3, "two throttled, then answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_served_from_cache_until_max_stale() {
    let mut f = fleet(200, 2_000).await;
    f.valet
        .put_credential("acme", "mock", "stale-secret-0000001")
        .await;
    f.valet.call(&f.key, get("acme", "mock", "/x")).await.unwrap();
    // The cache confirmed the record at or before this instant.
    let confirmed = Instant::now();

    f.moto.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = f.valet.call(&f.key, get("acme", "mock", "/x")).await.unwrap();
    assert_eq!(
        resp.status, 200,
        "served from cache while Secrets Manager is down"
    );
    let metrics = scrape(&f.valet).await;
    assert_eq!(
        sample(
            &metrics,
            "valet_credential_cache_lookups_total",
            &[("result", "stale")]
        ),
        1.0
    );
    assert!(
        sample(
            &metrics,
            "valet_secrets_manager_request_duration_seconds_count",
            &[("operation", "DescribeSecret"), ("outcome", "error")]
        ) >= 1.0,
        "{metrics}"
    );

    tokio::time::sleep_until((confirmed + Duration::from_millis(2_200)).into()).await;
    let err = f.valet.call(&f.key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unavailable, "CREDENTIAL_STORE_UNAVAILABLE")
    );
    assert_eq!(
        f.mock.requests().len(),
        2,
        "nothing sent once the cache was too stale"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_secrets_manager_is_served_from_cache_within_the_refresh_budget() {
    let f = fleet(200, 3_600_000).await;
    let canary = valet_testkit::canary("hung");
    f.valet.put_credential("acme", "mock", &canary).await;
    f.valet.call(&f.key, get("acme", "mock", "/warm")).await.unwrap();
    // Past the TTL the next lease needs a version check, and Secrets
    // Manager now takes requests and never answers them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.proxy.set_hang(true);
    f.proxy.reset();

    // Callers with a 1 s deadline, well under the SDK's own timeouts: each
    // is served the cached record after the refresh budget, round after
    // round, across the re-check backoff (1 s), while the one refresh stays
    // hung in the background.
    let gateway = f.valet.gateway().await;
    let hang_began = Instant::now();
    for round in 0..6 {
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let (mut gateway, key) = (gateway.clone(), f.key.clone());
                tokio::spawn(async move {
                    let mut request = authed(get("acme", "mock", "/x"), &key);
                    request.set_timeout(Duration::from_secs(1));
                    gateway.call(request).await
                })
            })
            .collect();
        for call in calls {
            let resp = call
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"))
                .into_inner();
            assert_eq!(resp.status, 200, "round {round}");
        }
        // Spreads the rounds past the backoff; not waiting for anything.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        hang_began.elapsed() < Duration::from_secs(5),
        "the rounds outlasted the SDK's 5 s attempt timeout, so the counts below would include its retry"
    );
    assert_eq!(
        (f.proxy.count("DescribeSecret"), f.proxy.count("GetSecretValue")),
        (1, 0),
        "one refresh in flight for the key, whatever the number of callers"
    );
    assert_eq!(
        f.mock.requests().len(),
        61,
        "every call reached the vendor with the cached credential"
    );
    assert!(
        f.mock
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some(format!("Bearer {canary}").as_str()))
    );
    let metrics = scrape(&f.valet).await;
    assert!(
        sample(
            &metrics,
            "valet_credential_cache_lookups_total",
            &[("result", "stale")]
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(leak::forms_found(metrics.as_bytes(), &canary), Vec::<&str>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_commits_only_what_the_vendor_accepts() {
    let f = fleet(300_000, 3_600_000).await;
    let old = f
        .valet
        .put_credential("acme", "mock", "rotation-old-secret-01")
        .await;
    let rotate = |secret: &str| RotateCredentialRequest {
        tenant: "acme".into(),
        vendor: "mock".into(),
        secret: secret.into(),
    };

    // The vendor refuses the new credential: nothing changes.
    f.mock
        .require_header("authorization", "Bearer rotation-old-secret-01");
    let err = f
        .valet
        .admin()
        .await
        .rotate_credential(authed(rotate("rotation-bad-secret-02"), &f.valet.admin_key))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "ROTATION_VERIFY_FAILED")
    );
    assert!(err.message().contains("401"), "{}", err.message());
    // Secrets Manager cannot delete one version; a version stripped of its
    // labels is deprecated and cleaned up by the service.
    let after = stages(&f.moto).await;
    assert!(!after.iter().flatten().any(|s| s == "AWSPENDING"), "{after:?}");
    assert_eq!(after.iter().flatten().filter(|s| *s == "AWSCURRENT").count(), 1);
    f.valet.call(&f.key, get("acme", "mock", "/x")).await.unwrap();
    assert_eq!(
        f.mock.requests().last().unwrap().header("authorization"),
        Some("Bearer rotation-old-secret-01")
    );

    // The vendor accepts it: committed, the old one kept as AWSPREVIOUS.
    f.mock
        .require_header("authorization", "Bearer rotation-new-secret-03");
    let done = f
        .valet
        .admin()
        .await
        .rotate_credential(authed(rotate("rotation-new-secret-03"), &f.valet.admin_key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.verify_status, 200);
    assert_eq!(done.previous_fingerprint, old.fingerprint);
    assert_ne!(done.credential.unwrap().fingerprint, old.fingerprint);
    let all = stages(&f.moto).await;
    assert!(
        all.contains(&vec!["AWSCURRENT".to_owned()]) && all.contains(&vec!["AWSPREVIOUS".to_owned()]),
        "{all:?}"
    );
    let resp = f.valet.call(&f.key, get("acme", "mock", "/x")).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        f.mock.requests().last().unwrap().header("authorization"),
        Some("Bearer rotation-new-secret-03")
    );

    // Every step is audited with both fingerprints.
    let log = std::fs::read_to_string(f.valet.audit_log()).unwrap();
    let steps: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "credential_rotate")
        .map(|e| {
            assert_eq!(e["old_fingerprint"], old.fingerprint.as_str());
            e["step"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(steps, ["staged", "aborted", "staged", "committed"]);
    assert!(!log.contains("rotation-new-secret") && !log.contains("rotation-bad-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_after_an_outside_rotation_refreshes_and_retries_once() {
    let f = fleet(300_000, 3_600_000).await;
    f.valet
        .put_credential("acme", "mock", "refresh-old-secret-001")
        .await;
    f.valet.call(&f.key, get("acme", "mock", "/warm")).await.unwrap();
    rotate_outside(&f, "refresh-new-secret-002").await;
    f.mock
        .require_header("authorization", "Bearer refresh-new-secret-002");

    let resp = f.valet.call(&f.key, get("acme", "mock", "/x")).await.unwrap();
    assert_eq!((resp.status, resp.attempts), (200, 2));
    let seen: Vec<_> = f
        .mock
        .requests()
        .iter()
        .skip(1)
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(
        seen,
        ["Bearer refresh-old-secret-001", "Bearer refresh-new-secret-002"]
    );

    // A 401 with no newer credential is returned as is, after one check.
    f.mock.require_header("authorization", "Bearer something-else");
    let resp = f.valet.call(&f.key, get("acme", "mock", "/y")).await.unwrap();
    assert_eq!((resp.status, resp.attempts), (401, 1));

    let log = std::fs::read_to_string(f.valet.audit_log()).unwrap();
    let refreshes: Vec<bool> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "credential_refresh")
        .map(|e| e["changed"].as_bool().unwrap())
        .collect();
    assert_eq!(refreshes, [true, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_can_live_in_its_own_secret() {
    let moto = Moto::start().await;
    let mock = MockVendor::start().await;
    let master = {
        use base64::Engine as _;
        let mut bytes = [0u8; 32];
        bytes
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i as u8).wrapping_mul(37).wrapping_add(11));
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    direct(&moto)
        .await
        .create_secret()
        .name("valet-master-key")
        .secret_string(&master)
        .send()
        .await
        .unwrap();
    let mut config = config(&moto.endpoint(), &mock, 300_000, 3_600_000);
    config.secrets.master_key = Some(MasterKeySource::AwsSecret("valet-master-key".into()));
    let valet = Valet::start_with_options(config, tempfile::tempdir().unwrap(), options()).await;
    valet
        .put_credential("acme", "mock", "master-in-sm-secret-01")
        .await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    assert_eq!(
        valet.call(&key, get("acme", "mock", "/x")).await.unwrap().status,
        200
    );
    assert!(
        !valet.state_dir().join("master.key").exists(),
        "no local key file was made"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_secret_is_an_error_not_an_outage() {
    let f = fleet(300, 3_600_000).await;
    f.valet
        .put_credential("acme", "mock", "soon-overwritten-00001")
        .await;
    f.valet.call(&f.key, get("acme", "mock", "/x")).await.unwrap();
    direct(&f.moto)
        .await
        .put_secret_value()
        .secret_id(secret_name())
        .secret_string("not a sealed record")
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = f.valet.call(&f.key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Internal, "CREDENTIAL_UNREADABLE")
    );
    assert_eq!(
        f.mock.requests().len(),
        1,
        "nothing was sent with a stale or partial credential"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarding_overwrites_then_deletes_the_secret_without_recovery() {
    let f = fleet(300_000, 3_600_000).await;
    let canary = valet_testkit::canary("sm-offboard");
    f.valet.put_credential("acme", "mock", &canary).await;
    f.valet
        .call(&f.key, get("acme", "mock", "/v1/users"))
        .await
        .unwrap();
    f.proxy.reset();

    let mut admin = f.valet.admin().await;
    let done = admin
        .offboard_tenant(support::authed(
            valet::proto::OffboardTenantRequest {
                tenant: "acme".into(),
                ..Default::default()
            },
            &f.valet.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        done.deleted.iter().any(|d| d.starts_with("credential mock")),
        "{done:?}"
    );
    // Two tombstone versions, then a deletion without recovery window.
    assert_eq!(f.proxy.count("PutSecretValue"), 2);
    assert_eq!(f.proxy.count("DeleteSecret"), 1);
    let sm = direct(&f.moto).await;
    assert!(
        sm.get_secret_value()
            .secret_id(secret_name())
            .send()
            .await
            .is_err()
    );
    let listed = sm
        .list_secrets()
        .include_planned_deletion(true)
        .send()
        .await
        .unwrap();
    assert!(
        listed
            .secret_list()
            .iter()
            .all(|s| s.name() != Some(secret_name().as_str())),
        "no recoverable secret is left"
    );
    let refused = f
        .valet
        .call(&f.key, get("acme", "mock", "/v1/users"))
        .await
        .unwrap_err();
    assert_eq!(support::reason(&refused), "API_KEY_REVOKED");
}
