//! Caller API keys, hardened: keys bound to source networks, lifetimes as
//! durations under a deployment maximum, the expiring-keys listing and
//! gauge, revoke by name, rotation with an overlap, and last use.

mod support;

use support::{Valet, ValetProcess, authed, bearer, get, http_get, reason, sample, vendor};
use tonic::Code;
use valet::config::Config;
use valet::proto::{
    CreateApiKeyRequest, ListApiKeysRequest, Operation, RevokeApiKeyRequest, RotateApiKeyRequest,
};
use valet_testkit::MockVendor;

/// Valet with one mock vendor and a credential for acme, started with
/// `config`'s `[server]` and `[api_keys]`.
async fn setup(config: Config) -> (MockVendor, Valet) {
    let mock = MockVendor::start().await;
    let config = Config {
        vendors: vec![vendor("mock", &mock.base_url(), bearer())],
        ..config
    };
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    valet
        .put_credential("acme", "mock", "acme-secret-0000000001")
        .await;
    (mock, valet)
}

/// Creates an acme × mock READ key named `name` with `req`'s extras.
async fn create(
    valet: &Valet,
    name: &str,
    extra: impl Fn(CreateApiKeyRequest) -> CreateApiKeyRequest,
) -> (String, String) {
    let req = extra(CreateApiKeyRequest::gateway(
        name,
        &["acme"],
        &["mock"],
        &[Operation::Read],
    ));
    let created = valet
        .admin()
        .await
        .create_api_key(authed(req, &valet.admin_key))
        .await
        .expect("create key")
        .into_inner();
    (created.key, created.info.unwrap().id)
}

/// A Gateway call with `key` and extra metadata.
async fn call_with(valet: &Valet, key: &str, forwarded_for: Option<&str>) -> Result<u32, tonic::Status> {
    let mut req = authed(get("acme", "mock", "/x"), key);
    if let Some(xff) = forwarded_for {
        req.metadata_mut().insert("x-forwarded-for", xff.parse().unwrap());
    }
    valet
        .gateway()
        .await
        .call(req)
        .await
        .map(|r| r.into_inner().status)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_bound_to_networks_work_only_from_inside_them() {
    let (mock, valet) = setup(Config::default()).await;
    let (elsewhere, _) = create(&valet, "ten", |r| r.with_allow_cidrs(&["10.0.0.0/8", "fd00::/8"])).await;
    let (loopback, _) = create(&valet, "lo", |r| r.with_allow_cidrs(&["127.0.0.0/8"])).await;

    let err = call_with(&valet, &elsewhere, None).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "SOURCE_NOT_ALLOWED")
    );
    assert!(mock.requests().is_empty(), "a refused key reaches no vendor");
    // Without trusted proxies a caller cannot claim an address.
    let err = call_with(&valet, &elsewhere, Some("10.1.2.3")).await.unwrap_err();
    assert_eq!(reason(&err), "SOURCE_NOT_ALLOWED");
    assert_eq!(call_with(&valet, &loopback, None).await.unwrap(), 200);

    // Counted like any refusal.
    let (_, metrics) = http_get(&format!("http://{}/metrics", valet.ops_addr)).await;
    assert_eq!(
        sample(
            &metrics,
            "valet_calls_total",
            &[("outcome", "SOURCE_NOT_ALLOWED")]
        ),
        2.0
    );

    // The Admin service checks the binding too.
    let admin = CreateApiKeyRequest {
        name: "remote-admin".into(),
        admin: true,
        allow_cidrs: vec!["10.0.0.0/8".into()],
        ..Default::default()
    };
    let remote_admin = valet
        .admin()
        .await
        .create_api_key(authed(admin, &valet.admin_key))
        .await
        .unwrap()
        .into_inner()
        .key;
    let err = valet
        .admin()
        .await
        .list_api_keys(authed(ListApiKeysRequest::default(), &remote_admin))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "SOURCE_NOT_ALLOWED");

    // Malformed networks are refused at creation, naming the field.
    for bad in ["10.1.2.3/8", "10.0.0.0/33", "not-a-net"] {
        let req = CreateApiKeyRequest::gateway("bad", &["acme"], &["mock"], &[Operation::Read])
            .with_allow_cidrs(&[bad]);
        let err = valet
            .admin()
            .await
            .create_api_key(authed(req, &valet.admin_key))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, "CIDR_INVALID"),
            "{bad}"
        );
        assert!(err.message().starts_with("allow_cidrs:"), "{}", err.message());
    }

    // The networks are listed with the key.
    let keys = valet
        .admin()
        .await
        .list_api_keys(authed(ListApiKeysRequest::default(), &valet.admin_key))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let ten = keys.iter().find(|k| k.name == "ten").unwrap();
    assert_eq!(ten.allow_cidrs, ["10.0.0.0/8", "fd00::/8"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_trusted_proxies_the_forwarded_source_counts() {
    let mut config = Config::default();
    // The test's own loopback connection plays the proxy.
    config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let (_mock, valet) = setup(config).await;
    let (ten, _) = create(&valet, "ten", |r| r.with_allow_cidrs(&["10.0.0.0/8"])).await;
    let (lo, _) = create(&valet, "lo", |r| r.with_allow_cidrs(&["127.0.0.0/8"])).await;

    // Only the header's value changes: no traffic goes to 10.x.
    assert_eq!(call_with(&valet, &ten, Some("10.1.2.3")).await.unwrap(), 200);
    // A claim left of the hop the proxy appended is not believed.
    let err = call_with(&valet, &ten, Some("10.9.9.9, 192.0.2.1"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "SOURCE_NOT_ALLOWED");
    // Through the proxy from a client outside 127/8, the loopback key fails.
    let err = call_with(&valet, &lo, Some("10.1.2.3")).await.unwrap_err();
    assert_eq!(reason(&err), "SOURCE_NOT_ALLOWED");
    // Trusted hops are skipped; no header means the proxy itself called.
    assert_eq!(
        call_with(&valet, &ten, Some("10.1.2.3, 127.0.0.9"))
            .await
            .unwrap(),
        200
    );
    assert_eq!(call_with(&valet, &lo, None).await.unwrap(), 200);
    // A hop that is not an address: unknown source, bound keys refused.
    let err = call_with(&valet, &ten, Some("garbage")).await.unwrap_err();
    assert_eq!(reason(&err), "SOURCE_NOT_ALLOWED");

    // Last use shows the forwarded source.
    let keys = valet
        .admin()
        .await
        .list_api_keys(authed(ListApiKeysRequest::default(), &valet.admin_key))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let used = keys.iter().find(|k| k.name == "ten").unwrap();
    assert!(used.last_used.is_some());
    assert_eq!(used.last_used_source, "10.1.2.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_have_a_deployment_maximum_and_expiring_keys_show() {
    let mut config = Config::default();
    config.api_keys.max_lifetime_days = 30;
    let (_mock, valet) = setup(config).await;
    let day = 86_400;

    let too_long = CreateApiKeyRequest::gateway("long", &["acme"], &["mock"], &[Operation::Read])
        .with_ttl_seconds(31 * day);
    let err = valet
        .admin()
        .await
        .create_api_key(authed(too_long, &valet.admin_key))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "TTL_INVALID")
    );
    assert!(err.message().contains("30 days"), "{}", err.message());

    let (soon, soon_id) = create(&valet, "soon", |r| r.with_ttl_seconds(12 * 3600)).await;
    let (_later, _) = create(&valet, "later", |r| r.with_ttl_seconds(30 * day)).await;
    let (_revoked, revoked_id) = create(&valet, "gone", |r| r.with_ttl_seconds(3600)).await;
    valet
        .admin()
        .await
        .revoke_api_key(authed(
            RevokeApiKeyRequest {
                id: revoked_id,
                ..Default::default()
            },
            &valet.admin_key,
        ))
        .await
        .unwrap();
    assert_eq!(call_with(&valet, &soon, None).await.unwrap(), 200);

    // Only valid keys expiring within the window.
    let expiring = valet
        .admin()
        .await
        .list_api_keys(authed(
            ListApiKeysRequest {
                expiring_within_seconds: 7 * day,
            },
            &valet.admin_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let ids: Vec<&str> = expiring.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, [soon_id.as_str()]);

    // The gauge counts the same keys (window: the default 7 days).
    let (_, metrics) = http_get(&format!("http://{}/metrics", valet.ops_addr)).await;
    assert_eq!(sample(&metrics, "valet_api_keys_expiring", &[]), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_by_name_needs_one_valid_key_with_it() {
    let (_mock, valet) = setup(Config::default()).await;
    let revoke = async |name: &str| {
        valet
            .admin()
            .await
            .revoke_api_key(authed(
                RevokeApiKeyRequest {
                    name: name.into(),
                    ..Default::default()
                },
                &valet.admin_key,
            ))
            .await
    };
    let err = revoke("nobody").await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "API_KEY_NOT_FOUND")
    );
    let (one, _) = create(&valet, "dup", |r| r).await;
    let (two, _) = create(&valet, "dup", |r| r).await;
    let err = revoke("dup").await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "API_KEY_NAME_AMBIGUOUS")
    );
    assert!(err.message().contains("2 valid API keys"), "{}", err.message());
    // Neither was revoked.
    assert_eq!(call_with(&valet, &one, None).await.unwrap(), 200);
    assert_eq!(call_with(&valet, &two, None).await.unwrap(), 200);

    // Both id and name, or neither: refused.
    let both = RevokeApiKeyRequest {
        id: "key_1".into(),
        name: "dup".into(),
    };
    let err = valet
        .admin()
        .await
        .revoke_api_key(authed(both, &valet.admin_key))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "API_KEY_SELECTOR_INVALID");

    // With a unique name it revokes that key.
    let (solo, solo_id) = create(&valet, "solo", |r| r).await;
    let revoked = revoke("solo").await.unwrap().into_inner();
    assert_eq!(revoked.id, solo_id);
    let err = call_with(&valet, &solo, None).await.unwrap_err();
    assert_eq!(reason(&err), "API_KEY_REVOKED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_overlaps_then_hands_over_in_one_audit_event() {
    let (_mock, valet) = setup(Config::default()).await;
    let (old_key, old_id) = create(&valet, "sync", |r| {
        r.with_allow_cidrs(&["127.0.0.0/8"]).with_ttl_seconds(30 * 86_400)
    })
    .await;
    let before = valet::app::now_ms();
    let rotated = valet
        .admin()
        .await
        .rotate_api_key(authed(
            RotateApiKeyRequest {
                id: old_id.clone(),
                overlap_seconds: 3600,
            },
            &valet.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    let (new, old) = (rotated.info.unwrap(), rotated.previous.unwrap());
    assert_ne!(new.id, old_id);
    assert_eq!(old.id, old_id);
    assert_eq!(
        (new.name.as_str(), new.allow_cidrs.clone()),
        ("sync", vec!["127.0.0.0/8".to_owned()])
    );
    assert_eq!(
        (new.tenants.clone(), new.operations.clone()),
        (old.tenants.clone(), old.operations.clone())
    );
    let expires = old.expires.unwrap();
    let old_expiry_ms = expires.seconds as u64 * 1000 + expires.nanos as u64 / 1_000_000;
    assert!(old_expiry_ms <= before + 3_600_000 + 1000 && old_expiry_ms >= before + 3_590_000);
    // The successor keeps the original lifetime.
    assert!(new.expires.unwrap().seconds >= new.created.unwrap().seconds + 30 * 86_400 - 1);

    // Both work during the overlap.
    assert_eq!(call_with(&valet, &old_key, None).await.unwrap(), 200);
    assert_eq!(call_with(&valet, &rotated.key, None).await.unwrap(), 200);

    // A longer overlap never extends the old key.
    let again = valet
        .admin()
        .await
        .rotate_api_key(authed(
            RotateApiKeyRequest {
                id: old_id.clone(),
                overlap_seconds: 7 * 86_400,
            },
            &valet.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.previous.unwrap().expires, old.expires);

    // Overlap 0 ends the old key now; rotating it again is refused.
    valet
        .admin()
        .await
        .rotate_api_key(authed(
            RotateApiKeyRequest {
                id: old_id.clone(),
                overlap_seconds: 0,
            },
            &valet.admin_key,
        ))
        .await
        .unwrap();
    let err = call_with(&valet, &old_key, None).await.unwrap_err();
    assert_eq!(reason(&err), "API_KEY_EXPIRED");
    let err = valet
        .admin()
        .await
        .rotate_api_key(authed(
            RotateApiKeyRequest {
                id: old_id.clone(),
                overlap_seconds: 60,
            },
            &valet.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "API_KEY_NOT_ACTIVE")
    );

    // One event per rotation, naming both keys; the key itself never.
    let log = std::fs::read_to_string(valet.audit_log()).unwrap();
    assert!(!log.contains(&rotated.key));
    let rotations: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "api_key_rotate")
        .collect();
    assert_eq!(rotations.len(), 3);
    assert_eq!(rotations[0]["key_id"], old_id.as_str());
    assert_eq!(rotations[0]["new_key_id"], new.id.as_str());
    assert_eq!(rotations[0]["old_expires_ms"], old_expiry_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_use_is_listed_and_survives_a_restart_in_its_own_file() {
    let (_mock, valet) = setup(Config::default()).await;
    let (key, id) = create(&valet, "used", |r| r).await;
    let (_idle, idle_id) = create(&valet, "idle", |r| r).await;
    for _ in 0..3 {
        assert_eq!(call_with(&valet, &key, None).await.unwrap(), 200);
    }
    let list = async |valet: &Valet| {
        valet
            .admin()
            .await
            .list_api_keys(authed(ListApiKeysRequest::default(), &valet.admin_key))
            .await
            .unwrap()
            .into_inner()
            .keys
    };
    let keys = list(&valet).await;
    let used = keys.iter().find(|k| k.id == id).unwrap().clone();
    assert_eq!(used.last_used_source, "127.0.0.1");
    let idle = keys.iter().find(|k| k.id == idle_id).unwrap();
    assert!(idle.last_used.is_none() && idle.last_used_source.is_empty());

    // Written while serving, every few seconds: polled, bounded.
    let file = valet.state_dir().join("apikeys.lastuse.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !std::fs::read_to_string(&file).is_ok_and(|t| t.contains(&id)) {
        assert!(std::time::Instant::now() < deadline, "no periodic flush");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Shutdown flushes; the key records are untouched by use.
    let valet = valet.restart().await;
    let state = valet.state_dir();
    let file = std::fs::read_to_string(state.join("apikeys.lastuse.json")).unwrap();
    assert!(file.contains(&id) && !file.contains(&idle_id), "{file}");
    let records = std::fs::read_to_string(state.join("apikeys.json")).unwrap();
    assert!(
        !records.contains("127.0.0.1") && !records.contains("last_use"),
        "{records}"
    );
    let after = list(&valet).await;
    let again = after.iter().find(|k| k.id == id).unwrap();
    assert_eq!(again.last_used, used.last_used);
    assert_eq!(again.last_used_source, "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_binds_expires_lists_rotates_and_revokes() {
    let valet = ValetProcess::spawn(
        "[api_keys]\nmax_lifetime_days = 90\n\n[[vendors]]\nname = \"mock\"\nbase_url = \"http://127.0.0.1:9\"\nallow_insecure_http = true\nauth = { scheme = \"bearer\" }\n",
    )
    .await;
    let admin = async |args: &[&str]| support::admin_cli(&valet.admin_url, &valet.key_file, args, "").await;
    let base = [
        "apikey",
        "create",
        "--tenant",
        "acme",
        "--vendor",
        "mock",
        "--operation",
        "read",
    ];
    let create = async |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        admin(&args).await
    };

    // Durations: units accepted, zero, negative and garbage refused.
    let out = create(&[
        "--name",
        "bound",
        "--allow-cidr",
        "10.0.0.0/8",
        "--expires-in",
        "12h",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bound = text(&out.stdout).trim().to_owned();
    assert!(bound.starts_with("vk_") && !bound.contains('\n'));
    for bad in ["0d", "-1d", "soon", "12"] {
        let out = create(&["--name", "bad", "--expires-in", bad]).await;
        assert!(!out.status.success(), "{bad}");
        let said = text(&out.stderr);
        assert!(said.contains("positive number and a unit"), "{bad}: {said}");
    }
    let out = create(&["--name", "long", "--expires-in", "91d"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("TTL_INVALID"), "{}", text(&out.stderr));
    // The older spelling still works.
    let out = create(&["--name", "days", "--ttl-days", "60"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The bound key is refused from loopback, and the refusal is in the
    // call's log line with its source.
    let mut req = authed(get("acme", "mock", "/x"), &bound);
    req.metadata_mut()
        .insert("x-forwarded-for", "10.1.1.1".parse().unwrap());
    let err = valet.gateway().await.call(req).await.unwrap_err();
    assert_eq!(reason(&err), "SOURCE_NOT_ALLOWED");
    // Log lines are written in batches: await this one.
    let log = valet
        .wait_for_stdout("\"outcome\":\"SOURCE_NOT_ALLOWED\"", 1)
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("\"outcome\":\"SOURCE_NOT_ALLOWED\""))
        .unwrap_or_else(|| panic!("no refusal line in {log}"));
    assert!(line.contains("\"source\":\"127.0.0.1\""), "{line}");
    assert!(!line.contains(&bound), "{line}");

    // list --expiring: only the 12-hour key is due within a week.
    let listing = text(&admin(&["apikey", "list", "--expiring", "7d"]).await.stdout);
    let rows: Vec<&str> = listing.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{listing}");
    assert!(
        rows[0].contains("\tbound\t") && rows[0].contains("10.0.0.0/8"),
        "{listing}"
    );
    let id = rows[0].split('\t').next().unwrap().to_owned();

    // Rotate: the new key alone on stdout, the old one kept for the overlap.
    let out = admin(&["apikey", "rotate", &id, "--overlap", "30m"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let successor = text(&out.stdout).trim().to_owned();
    assert!(successor.starts_with("vk_") && successor != bound && !successor.contains('\n'));
    assert!(text(&out.stderr).contains(&id), "{}", text(&out.stderr));
    let out = admin(&["apikey", "rotate", &id, "--overlap", "0h"]).await;
    assert!(!out.status.success());

    // Revoke by name: two valid "bound" keys now (old and successor).
    let out = admin(&["apikey", "revoke", "--name", "bound"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("API_KEY_NAME_AMBIGUOUS"),
        "{}",
        text(&out.stderr)
    );
    let out = admin(&["apikey", "revoke", "--name", "days"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("revoked API key"),
        "{}",
        text(&out.stdout)
    );
    let out = admin(&["apikey", "revoke", "--name", "days"]).await;
    assert!(
        text(&out.stderr).contains("API_KEY_NOT_FOUND"),
        "{}",
        text(&out.stderr)
    );
    let exited = valet.terminate().await;
    assert!(!text(&exited.stdout).contains(&successor));
}
