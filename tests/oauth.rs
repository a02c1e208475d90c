//! OAuth 2.0 vendors end to end: a real Valet, the mock provider's token
//! endpoint and the API its tokens open. The grant material is stored once;
//! Valet fetches, caches, refreshes and rotates the access tokens, and no
//! token reaches the caller.

mod support;

use std::time::{Duration, Instant};
use support::{Valet, ValetProcess, admin_cli, authed, get, reason, vendor};
use valet::config::{AuthConfig, ClientAuthConfig, GrantConfig, VendorConfig};
use valet::proto::{self, CallRequest, Operation};
use valet_testkit::oauth_provider::{ClientAuth, Fault};
use valet_testkit::{MockOAuth, leak};

fn oauth_vendor(
    name: &str,
    idp: &MockOAuth,
    grant: GrantConfig,
    client_auth: ClientAuthConfig,
) -> VendorConfig {
    vendor(
        name,
        &idp.api_url(),
        AuthConfig::OAuth2 {
            token_url: idp.token_url(),
            grant,
            client_auth,
            scopes: vec!["things".into()],
            read_scopes: vec!["things.read".into()],
            write_scopes: vec!["things.write".into(), "things.read".into()],
            audience: Some("https://api.example".into()),
            revocation_url: Some(idp.revoke_url()),
            refresh_before_ms: 60_000,
            mtls: false,
        },
    )
}

fn material(id: &str, secret: &str, refresh: Option<&str>) -> String {
    let mut m = serde_json::json!({"client_id": id, "client_secret": secret});
    if let Some(r) = refresh {
        m["refresh_token"] = r.into();
    }
    m.to_string()
}

fn write(tenant: &str, vendor: &str, path: &str, key: &str) -> CallRequest {
    CallRequest {
        operation: Operation::Write as i32,
        method: "POST".into(),
        idempotency_key: key.into(),
        ..get(tenant, vendor, path)
    }
}

/// A Valet with one client-credentials vendor `idp` and a caller key.
async fn client_credentials(idp: &MockOAuth, refresh_before_ms: u64) -> (Valet, String) {
    idp.add_client("acme-client", "oauth-canary-client-secret-1", ClientAuth::Basic);
    let mut v = oauth_vendor(
        "crm",
        idp,
        GrantConfig::ClientCredentials,
        ClientAuthConfig::ClientSecretBasic,
    );
    if let AuthConfig::OAuth2 {
        refresh_before_ms: r, ..
    } = &mut v.auth
    {
        *r = refresh_before_ms;
    }
    v.require_idempotency_key = false;
    let valet = Valet::start(vec![v]).await;
    valet
        .put_credential(
            "acme",
            "crm",
            &material("acme-client", "oauth-canary-client-secret-1", None),
        )
        .await;
    let key = valet
        .api_key(&["acme"], &["crm"], &[Operation::Read, Operation::Write])
        .await;
    (valet, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_each_client_auth_and_scopes_per_operation() {
    let idp = MockOAuth::start().await;
    idp.add_client("basic-client", "oauth-canary-basic-secret", ClientAuth::Basic);
    idp.add_client("post-client", "oauth-canary-post-secret", ClientAuth::Post);
    let valet = Valet::start(vec![
        oauth_vendor(
            "basic",
            &idp,
            GrantConfig::ClientCredentials,
            ClientAuthConfig::ClientSecretBasic,
        ),
        oauth_vendor(
            "post",
            &idp,
            GrantConfig::ClientCredentials,
            ClientAuthConfig::ClientSecretPost,
        ),
    ])
    .await;
    valet
        .put_credential(
            "acme",
            "basic",
            &material("basic-client", "oauth-canary-basic-secret", None),
        )
        .await;
    valet
        .put_credential(
            "acme",
            "post",
            &material("post-client", "oauth-canary-post-secret", None),
        )
        .await;
    let key = valet
        .api_key(
            &["acme"],
            &["basic", "post"],
            &[Operation::Read, Operation::Write],
        )
        .await;
    for v in ["basic", "post"] {
        let read = valet.call(&key, get("acme", v, "/things")).await.expect("read");
        assert_eq!(read.status, 200, "{}", String::from_utf8_lossy(&read.body));
        let wrote = valet
            .call(&key, write("acme", v, "/things", &format!("k-{v}")))
            .await
            .expect("write");
        assert_eq!(wrote.status, 200);
    }
    let tokens = idp.token_requests();
    assert_eq!(tokens.len(), 4, "one token per vendor and scope set: {tokens:?}");
    for t in &tokens {
        assert_eq!(t.grant_type, "client_credentials");
        assert_eq!(t.audience.as_deref(), Some("https://api.example"));
        assert_eq!(t.status, 200);
    }
    let auth_of = |id: &str| {
        tokens
            .iter()
            .filter(|t| t.client_id.as_deref() == Some(id))
            .map(|t| t.auth)
            .collect::<Vec<_>>()
    };
    assert_eq!(auth_of("basic-client"), vec![Some(ClientAuth::Basic); 2]);
    assert_eq!(auth_of("post-client"), vec![Some(ClientAuth::Post); 2]);
    // The vendor saw READs with the read scopes and WRITEs with the write scopes.
    let api = idp.api_requests();
    assert_eq!(api.len(), 4);
    for r in &api {
        let want = if r.method == "GET" {
            "things.read"
        } else {
            "things.write things.read"
        };
        assert_eq!((r.status, r.scope.as_deref()), (200, Some(want)), "{r:?}");
    }
    // The audit log says which scope set each token was for, by fingerprint.
    let audit = std::fs::read_to_string(valet.audit_log()).expect("audit log");
    let fetches: Vec<&str> = audit.lines().filter(|l| l.contains("\"oauth_token\"")).collect();
    assert_eq!(fetches.len(), 4, "{audit}");
    assert!(
        fetches
            .iter()
            .any(|l| l.contains("\"scopes\":\"things.write things.read\""))
    );
    assert!(fetches.iter().all(|l| l.contains("\"replica\":")), "{audit}");
    // Each call's lease names the scope set its token is for.
    let leases: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"credential_lease\"") && l.contains("e2e-test"))
        .collect();
    assert_eq!(leases.len(), 4, "{audit}");
    let reads = leases
        .iter()
        .filter(|l| l.contains("\"scopes\":\"things.read\""))
        .count();
    assert_eq!(reads, 2);
    for t in idp.live_access_tokens() {
        assert!(!audit.contains(&t), "an access token in the audit log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_of_200_calls_makes_one_token_request() {
    let idp = MockOAuth::start().await;
    idp.set_delay(Some(Duration::from_millis(200)));
    let (valet, key) = client_credentials(&idp, 60_000).await;
    let valet = std::sync::Arc::new(valet);
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let (valet, key) = (valet.clone(), key.clone());
            tokio::spawn(async move { valet.call(&key, get("acme", "crm", "/things")).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().expect("call").status, 200);
    }
    assert_eq!(idp.token_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_vendor_401s_causes_one_refresh() {
    let idp = MockOAuth::start().await;
    let (valet, key) = client_credentials(&idp, 60_000).await;
    assert_eq!(
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    // The provider revokes every token: the vendor answers 401.
    idp.revoke_access_tokens();
    let valet = std::sync::Arc::new(valet);
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (valet, key) = (valet.clone(), key.clone());
            tokio::spawn(async move { valet.call(&key, get("acme", "crm", "/things")).await })
        })
        .collect();
    for c in calls {
        let resp = c.await.unwrap().expect("call");
        assert_eq!(resp.status, 200, "retried once with a new token");
    }
    assert_eq!(idp.token_requests().len(), 2, "one refresh for the whole burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_replaced_in_the_background_before_they_expire() {
    let idp = MockOAuth::start().await;
    // Tokens live 3 s and are replaced 2 s before expiry (less a jitter).
    idp.set_lifetime(3);
    let (valet, key) = client_credentials(&idp, 2_000).await;
    let started = Instant::now();
    let mut calls = 0;
    loop {
        let resp = valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .expect("call");
        assert_eq!(resp.status, 200);
        calls += 1;
        if idp.token_requests().len() >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no background refresh"
        );
        // Pacing: the refresh is due about a second after the first token.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    idp.wait_for_token_requests(|t| t.len() == 2 && t.iter().all(|r| r.status == 200))
        .await;
    // The refresh came before the first token expired, and no call waited
    // for it: every call was answered by the vendor on its first attempt.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refreshed at {:?}",
        started.elapsed()
    );
    let api = idp.api_requests();
    assert_eq!(api.len(), calls);
    assert!(api.iter().all(|r| r.status == 200));
    // Calls carry the new token once the background fetch has put it in
    // force (it audits the fetch first), and no third one is fetched.
    let answered = Instant::now();
    loop {
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .expect("call");
        let tokens: std::collections::HashSet<_> = idp
            .api_requests()
            .iter()
            .filter_map(|r| r.token.clone())
            .collect();
        if tokens.len() == 2 {
            break;
        }
        assert!(
            answered.elapsed() < Duration::from_secs(2),
            "the new token is never used"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // pacing only
    }
    assert_eq!(idp.token_requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_tokens_are_never_presented_twice_and_survive_a_restart() {
    let idp = MockOAuth::start().await;
    idp.add_client("acme-client", "oauth-canary-client-secret-2", ClientAuth::Post);
    let first_rt = idp.issue_refresh_token("acme-client");
    let mut v = oauth_vendor(
        "crm",
        &idp,
        GrantConfig::RefreshToken,
        ClientAuthConfig::ClientSecretPost,
    );
    v.require_idempotency_key = false;
    let valet = Valet::start(vec![v]).await;
    let put = valet
        .put_credential(
            "acme",
            "crm",
            &material("acme-client", "oauth-canary-client-secret-2", Some(&first_rt)),
        )
        .await;
    let key = valet.api_key(&["acme"], &["crm"], &[Operation::Read]).await;
    for _ in 0..4 {
        // Each round: the token is revoked, the vendor answers 401, Valet
        // refreshes (rotating the refresh token) and retries.
        assert_eq!(
            valet
                .call(&key, get("acme", "crm", "/things"))
                .await
                .unwrap()
                .status,
            200
        );
        idp.revoke_access_tokens();
    }
    let presented: Vec<String> = idp
        .token_requests()
        .iter()
        .filter_map(|t| t.refresh_token.clone())
        .collect();
    assert_eq!(presented.len(), 4);
    assert_eq!(presented[0], first_rt);
    let distinct: std::collections::HashSet<_> = presented.iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "a refresh token presented twice: {presented:?}"
    );
    assert_eq!(idp.reuse_detected(), 0);
    // The rotated refresh token was stored: the credential changed.
    let listed = valet
        .admin()
        .await
        .list_credentials(authed(
            proto::ListCredentialsRequest {
                tenant: "acme".into(),
            },
            &valet.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(listed.credentials[0].fingerprint, put.fingerprint);

    // After a restart (nothing held in memory) the stored refresh token is
    // the latest one.
    let valet = valet.restart().await;
    assert_eq!(
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        idp.reuse_detected(),
        0,
        "the restarted Valet presented a spent refresh token"
    );
    assert_eq!(idp.token_requests().last().unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grant_needs_reauth_and_is_not_retried() {
    let idp = MockOAuth::start().await;
    idp.add_client("acme-client", "oauth-canary-client-secret-3", ClientAuth::Basic);
    let rt = idp.issue_refresh_token("acme-client");
    let valet = Valet::start(vec![oauth_vendor(
        "crm",
        &idp,
        GrantConfig::RefreshToken,
        ClientAuthConfig::ClientSecretBasic,
    )])
    .await;
    valet
        .put_credential(
            "acme",
            "crm",
            &material("acme-client", "oauth-canary-client-secret-3", Some(&rt)),
        )
        .await;
    let key = valet.api_key(&["acme"], &["crm"], &[Operation::Read]).await;
    idp.set_fault(Some(Fault::InvalidGrant));
    for _ in 0..10 {
        let refused = valet.call(&key, get("acme", "crm", "/things")).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert_eq!(reason(&refused), "CREDENTIAL_REAUTH_REQUIRED");
    }
    assert_eq!(idp.token_requests().len(), 1, "no retry storm");
    // New consent, new material: calls work again.
    idp.set_fault(None);
    let rt = idp.issue_refresh_token("acme-client");
    valet
        .put_credential(
            "acme",
            "crm",
            &material("acme-client", "oauth-canary-client-secret-3", Some(&rt)),
        )
        .await;
    assert_eq!(
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    let audit = std::fs::read_to_string(valet.audit_log()).unwrap();
    assert!(audit.contains("\"outcome\":\"reauth_required\""), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_token_endpoint_costs_nothing_until_the_token_expires() {
    let idp = MockOAuth::start().await;
    idp.set_lifetime(3);
    let (valet, key) = client_credentials(&idp, 2_000).await;
    assert_eq!(
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    let issued = Instant::now();
    idp.set_fault(Some(Fault::Status(503, Some(1))));
    // Calls go on with the held token; past its expiry they fail, as
    // TOKEN_ENDPOINT_UNAVAILABLE, without waiting on the endpoint.
    let refused = loop {
        match valet.call(&key, get("acme", "crm", "/things")).await {
            Ok(resp) => assert_eq!(resp.status, 200),
            Err(status) => break status,
        }
        assert!(issued.elapsed() < Duration::from_secs(10), "never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        issued.elapsed() >= Duration::from_millis(2_900),
        "refused at {:?}",
        issued.elapsed()
    );
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(reason(&refused), "TOKEN_ENDPOINT_UNAVAILABLE");
    // Retry-After (1 s) is honoured: a handful of requests, not one per call.
    let failed = idp.token_requests().iter().filter(|t| t.status == 503).count();
    assert!((1..=6).contains(&failed), "{failed} requests to a down endpoint");
    // The endpoint comes back: calls work again.
    idp.set_fault(None);
    let healed = Instant::now();
    loop {
        if let Ok(resp) = valet.call(&key, get("acme", "crm", "/things")).await {
            assert_eq!(resp.status, 200);
            break;
        }
        assert!(healed.elapsed() < Duration::from_secs(5), "did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_echoing_the_token_or_the_client_secret_is_scrubbed() {
    let idp = MockOAuth::start().await;
    let (valet, key) = client_credentials(&idp, 60_000).await;
    let resp = valet.call(&key, get("acme", "crm", "/echo")).await.expect("call");
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    assert!(body.contains("[REDACTED]"), "{body}");
    let mut secrets = idp.live_access_tokens();
    secrets.push("oauth-canary-client-secret-1".into());
    let mut outputs = vec![resp.body.clone()];
    outputs.push(std::fs::read(valet.audit_log()).unwrap());
    for entry in walk(&valet.state_dir()) {
        outputs.push(std::fs::read(entry).unwrap_or_default());
    }
    for secret in &secrets {
        for out in &outputs {
            assert_eq!(
                leak::forms_found(out, secret),
                Vec::<&str>::new(),
                "{secret} leaked"
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_stores_grant_material_and_no_output_holds_a_token() {
    const CLIENT_SECRET: &str = "oauth-canary-cli-client-secret-0123456789";
    let idp = MockOAuth::start().await;
    idp.add_client("acme-client", CLIENT_SECRET, ClientAuth::Basic);
    let first_rt = idp.issue_refresh_token("acme-client");
    let body = format!(
        "[[vendors]]\nname = \"crm\"\nbase_url = \"{}\"\nallow_insecure_http = true\nauth = {{ scheme = \"oauth2\", token_url = \"{}\", grant = \"refresh_token\", scopes = [\"things\"] }}\n",
        idp.api_url(),
        idp.token_url()
    );
    let valet = ValetProcess::spawn(&body).await;
    let put = [
        "credential",
        "put",
        "--tenant",
        "acme",
        "--vendor",
        "crm",
        "--oauth-client-id",
        "acme-client",
    ];
    // The refresh token is missing: a clear refusal, nothing stored.
    let mut args = put.to_vec();
    args.push("--oauth-refresh-token");
    let refused = admin_cli(
        &valet.admin_url,
        &valet.key_file,
        &args,
        &format!("{CLIENT_SECRET}\n"),
    )
    .await;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("refresh token is missing"), "{err}");
    // A refresh_token vendor refuses material without one (server side).
    let refused = admin_cli(
        &valet.admin_url,
        &valet.key_file,
        &put,
        &format!("{CLIENT_SECRET}\n"),
    )
    .await;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("SECRET_INVALID") && err.contains("refresh_token"),
        "{err}"
    );
    assert!(!err.contains(CLIENT_SECRET));
    valet
        .admin(&args, &format!("{CLIENT_SECRET}\n{first_rt}\n"))
        .await;
    let key = valet.caller_key("acme", "crm", &["read"]).await;
    let mut gateway = valet.gateway().await;
    let mut answers = Vec::new();
    for path in ["/things", "/echo", "/things", "/echo"] {
        let resp = gateway
            .call(authed(get("acme", "crm", path), &key))
            .await
            .expect("call")
            .into_inner();
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        answers.push(resp.body);
        // Force a refresh (and a refresh-token rotation) for the next call.
        idp.revoke_access_tokens();
    }
    assert_eq!(idp.reuse_detected(), 0);
    let exited = valet.terminate().await;
    // Every access and refresh token issued, and the client secret: in no
    // answer, log line, audit entry or state file.
    let mut secrets = idp.issued();
    assert!(secrets.len() >= 8, "{secrets:?}");
    secrets.push(CLIENT_SECRET.to_owned());
    let mut outputs = answers;
    outputs.push(exited.stdout.clone());
    outputs.push(exited.stderr.clone());
    for file in walk(&exited.state_dir()) {
        outputs.push(std::fs::read(file).unwrap_or_default());
    }
    for secret in &secrets {
        for out in &outputs {
            assert_eq!(
                leak::forms_found(out, secret),
                Vec::<&str>::new(),
                "{secret} leaked"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_client_secret_checks_a_token_fetched_with_it() {
    let idp = MockOAuth::start().await;
    idp.add_client("acme-client", "oauth-canary-client-secret-4", ClientAuth::Basic);
    let mut v = oauth_vendor(
        "crm",
        &idp,
        GrantConfig::ClientCredentials,
        ClientAuthConfig::ClientSecretBasic,
    );
    v.verify = Some(valet::config::VerifyConfig {
        method: "GET".into(),
        path: "/me".into(),
    });
    let valet = Valet::start(vec![v]).await;
    valet
        .put_credential(
            "acme",
            "crm",
            &material("acme-client", "oauth-canary-client-secret-4", None),
        )
        .await;
    let key = valet.api_key(&["acme"], &["crm"], &[Operation::Read]).await;
    assert_eq!(
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    let rotate = |secret: &str| proto::RotateCredentialRequest {
        tenant: "acme".into(),
        vendor: "crm".into(),
        secret: material("acme-client-2", secret, None),
    };
    // A secret the provider does not know: no token, so no commit.
    idp.add_client("acme-client-2", "oauth-canary-client-secret-5", ClientAuth::Basic);
    let refused = valet
        .admin()
        .await
        .rotate_credential(authed(rotate("oauth-canary-wrong-secret"), &valet.admin_key))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "ROTATION_VERIFY_FAILED", "{refused:?}");
    assert!(!refused.message().contains("oauth-canary-wrong-secret"));
    // The right one: a token is fetched with it, the verify request carries
    // the token, and calls use the new client from then on.
    let rotated = valet
        .admin()
        .await
        .rotate_credential(authed(rotate("oauth-canary-client-secret-5"), &valet.admin_key))
        .await
        .expect("rotated")
        .into_inner();
    assert_eq!(rotated.verify_status, 200);
    let me = idp
        .api_requests()
        .into_iter()
        .find(|r| r.path == "/api/me")
        .expect("verify request");
    assert_eq!(me.status, 200);
    assert_eq!(
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    let last = idp.token_requests().last().cloned().unwrap();
    assert_eq!(last.client_id.as_deref(), Some("acme-client-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarding_and_containment_revoke_the_tokens_at_the_provider() {
    let idp = MockOAuth::start().await;
    idp.add_client("acme-client", "oauth-canary-client-secret-6", ClientAuth::Post);
    let rt = idp.issue_refresh_token("acme-client");
    idp.add_client("beta-client", "oauth-canary-client-secret-7", ClientAuth::Post);
    let valet = Valet::start(vec![
        oauth_vendor(
            "crm",
            &idp,
            GrantConfig::RefreshToken,
            ClientAuthConfig::ClientSecretPost,
        ),
        oauth_vendor(
            "erp",
            &idp,
            GrantConfig::ClientCredentials,
            ClientAuthConfig::ClientSecretPost,
        ),
    ])
    .await;
    valet
        .put_credential(
            "acme",
            "crm",
            &material("acme-client", "oauth-canary-client-secret-6", Some(&rt)),
        )
        .await;
    valet
        .put_credential(
            "beta",
            "erp",
            &material("beta-client", "oauth-canary-client-secret-7", None),
        )
        .await;
    let key = valet
        .api_key(&["acme", "beta"], &["crm", "erp"], &[Operation::Read])
        .await;
    assert_eq!(
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        valet
            .call(&key, get("beta", "erp", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    let live = idp.live_access_tokens();
    assert_eq!(live.len(), 2);

    // Containment: beta disabled as compromised; its access token dies.
    let disable = proto::SetTenantStatusRequest {
        tenant: "beta".into(),
        state: proto::TenantState::Disabled as i32,
        reason: "leaked key".into(),
        compromised: true,
        ..Default::default()
    };
    valet
        .admin()
        .await
        .set_tenant_status(authed(disable, &valet.admin_key))
        .await
        .expect("disabled");
    let revoked = idp.revocations();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(
        (revoked[0].1.as_deref(), revoked[0].2),
        (Some("access_token"), 200)
    );
    assert_eq!(idp.live_access_tokens().len(), 1);

    // Offboarding acme: its access token and its (rotated) refresh token.
    let offboard = proto::OffboardTenantRequest {
        tenant: "acme".into(),
        now: true,
        reason: "contract ended".into(),
        ..Default::default()
    };
    let done = valet
        .admin()
        .await
        .offboard_tenant(authed(offboard, &valet.admin_key))
        .await
        .expect("offboarded")
        .into_inner();
    let revoked = idp.revocations();
    assert_eq!(revoked.len(), 3, "{revoked:?}");
    let hints: Vec<_> = revoked[1..]
        .iter()
        .map(|r| (r.1.clone().unwrap_or_default(), r.2))
        .collect();
    assert!(
        hints.contains(&("access_token".into(), 200)) && hints.contains(&("refresh_token".into(), 200)),
        "{hints:?}"
    );
    assert!(idp.live_access_tokens().is_empty());
    assert!(
        done.deleted
            .iter()
            .filter(|d| d.starts_with("OAuth ") && d.ends_with(" revoked"))
            .count()
            == 2,
        "{:?}",
        done.deleted
    );
    let audit = std::fs::read_to_string(valet.audit_log()).unwrap();
    assert_eq!(
        audit.lines().filter(|l| l.contains("\"oauth_revoke\"")).count(),
        2,
        "{audit}"
    );
    for token in idp.issued() {
        assert!(!audit.contains(&token), "a token in the audit log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_sends_a_fresh_signed_assertion_and_never_the_key() {
    let idp = MockOAuth::start().await;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    idp.add_jwt_client("jwt-client", pair.public_key_raw());
    let mut v = oauth_vendor(
        "crm",
        &idp,
        GrantConfig::ClientCredentials,
        ClientAuthConfig::PrivateKeyJwt,
    );
    v.require_idempotency_key = false;
    let valet = Valet::start(vec![v]).await;
    // A key that cannot sign is refused when it is stored.
    // (a key made now, cut to half its first line: PEM, but no whole key)
    let pem = pair.serialize_pem();
    let lines: Vec<&str> = pem.lines().collect();
    let cut = format!(
        "{}\n{}\n{}\n",
        lines[0],
        &lines[1][..lines[1].len() / 2],
        lines[lines.len() - 1]
    );
    let bad = serde_json::json!({"client_id": "jwt-client", "private_key": cut});
    let put = |secret: String| proto::PutCredentialRequest {
        tenant: "acme".into(),
        vendor: "crm".into(),
        secret,
    };
    let refused = valet
        .admin()
        .await
        .put_credential(authed(put(bad.to_string()), &valet.admin_key))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "SECRET_INVALID", "{refused:?}");
    let good = serde_json::json!({"client_id": "jwt-client", "private_key": pem, "key_id": "k1"});
    valet
        .admin()
        .await
        .put_credential(authed(put(good.to_string()), &valet.admin_key))
        .await
        .expect("stored");
    let key = valet
        .api_key(&["acme"], &["crm"], &[Operation::Read, Operation::Write])
        .await;
    assert_eq!(
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        valet
            .call(&key, write("acme", "crm", "/things", ""))
            .await
            .unwrap()
            .status,
        200
    );
    // Two scope sets, two token requests, each with its own assertion
    // (the provider refuses a replayed jti), neither with a secret.
    let tokens = idp.token_requests();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(
        tokens
            .iter()
            .all(|t| t.auth == Some(ClientAuth::Jwt) && t.status == 200),
        "{tokens:?}"
    );
    let body_of_key = pem.lines().nth(1).unwrap().to_owned();
    for r in idp.received() {
        assert!(!r.contains("client_secret"), "{r}");
        assert!(!r.contains(&body_of_key), "the private key was sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_stores_a_private_key_for_private_key_jwt() {
    let idp = MockOAuth::start().await;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    idp.add_jwt_client("jwt-client", pair.public_key_raw());
    let body = format!(
        "[[vendors]]\nname = \"crm\"\nbase_url = \"{}\"\nallow_insecure_http = true\nauth = {{ scheme = \"oauth2\", token_url = \"{}\", grant = \"client_credentials\", client_auth = \"private_key_jwt\" }}\n",
        idp.api_url(),
        idp.token_url()
    );
    let valet = ValetProcess::spawn(&body).await;
    let put = [
        "credential",
        "put",
        "--tenant",
        "acme",
        "--vendor",
        "crm",
        "--oauth-client-id",
        "jwt-client",
        "--oauth-private-key",
        "--oauth-key-id",
        "k1",
    ];
    // Something after the key without --oauth-refresh-token: refused.
    let extra = admin_cli(
        &valet.admin_url,
        &valet.key_file,
        &put,
        &format!("{}oops\n", pair.serialize_pem()),
    )
    .await;
    assert!(!extra.status.success());
    assert!(String::from_utf8_lossy(&extra.stderr).contains("more than the PEM key"));
    valet.admin(&put, &pair.serialize_pem()).await;
    let key = valet.caller_key("acme", "crm", &["read"]).await;
    let resp = valet
        .gateway()
        .await
        .call(authed(get("acme", "crm", "/things"), &key))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(resp.status, 200);
    assert_eq!(idp.token_requests()[0].auth, Some(ClientAuth::Jwt));
    let exited = valet.terminate().await;
    let key_body = pair.serialize_pem().lines().nth(1).unwrap().to_owned();
    let outputs = [exited.stdout.clone(), exited.stderr.clone(), resp.body];
    for out in &outputs {
        assert!(
            !String::from_utf8_lossy(out).contains(&key_body),
            "the private key in an output"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_reaches_the_provider_and_vendor_with_each_tenants_certificate() {
    let ca = valet_testkit::TestCa::new();
    let idp = MockOAuth::start_tls(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let mut v = oauth_vendor(
        "crm",
        &idp,
        GrantConfig::ClientCredentials,
        ClientAuthConfig::ClientSecretBasic,
    );
    if let AuthConfig::OAuth2 {
        mtls, revocation_url, ..
    } = &mut v.auth
    {
        *mtls = true;
        *revocation_url = None;
    }
    v.ca_file = Some(ca_file);
    v.allow_private_addresses = true; // the provider lives on loopback
    let valet = Valet::start(vec![v]).await;
    let mut certs = Vec::new();
    for tenant in ["acme", "beta"] {
        let secret = format!("oauth-canary-mtls-secret-{tenant}");
        idp.add_client(&format!("{tenant}-client"), &secret, ClientAuth::Basic);
        let (cert, key) = ca.client(&format!("{tenant}.clients.example"));
        let material = serde_json::json!({
            "client_id": format!("{tenant}-client"),
            "client_secret": secret,
            "client_cert": cert,
            "client_key": key,
        });
        valet.put_credential(tenant, "crm", &material.to_string()).await;
        certs.push(key);
    }
    // Material without a certificate is refused for an mtls vendor.
    let bare = proto::PutCredentialRequest {
        tenant: "gamma".into(),
        vendor: "crm".into(),
        secret: material("gamma-client", "oauth-canary-gamma", None),
    };
    let refused = valet
        .admin()
        .await
        .put_credential(authed(bare, &valet.admin_key))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "SECRET_INVALID", "{refused:?}");

    let key = valet
        .api_key(&["acme", "beta"], &["crm"], &[Operation::Read])
        .await;
    for tenant in ["acme", "beta", "acme", "beta"] {
        let resp = valet
            .call(&key, get(tenant, "crm", "/things"))
            .await
            .expect("call");
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    }
    // Each token is bound to its tenant's certificate, and the vendor saw
    // that certificate with it (the mock refuses a bound token otherwise).
    let bindings = idp.bindings();
    assert_eq!(bindings.len(), 2);
    assert!(bindings.iter().all(Option::is_some), "{bindings:?}");
    assert_ne!(bindings[0], bindings[1], "one certificate per tenant");
    let api = idp.api_requests();
    assert_eq!(api.len(), 4);
    for r in &api {
        assert!(r.thumbprint.is_some() && r.status == 200, "{r:?}");
    }
    let audit = std::fs::read_to_string(valet.audit_log()).unwrap();
    for key_pem in &certs {
        let body = key_pem.lines().nth(1).unwrap();
        assert!(!audit.contains(body), "a client key in the audit log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_the_store_refuses_is_kept_and_stored_before_any_other_refresh() {
    use valet::config::{MasterKeySource, SecretsBackend, SecretsConfig};
    let moto = valet_testkit::Moto::start().await;
    let proxy = valet_testkit::CountingProxy::start(&moto.endpoint()).await;
    let idp = MockOAuth::start().await;
    idp.add_client("acme-client", "oauth-canary-client-secret-8", ClientAuth::Post);
    let rt = idp.issue_refresh_token("acme-client");
    let keys = tempfile::tempdir().unwrap();
    let master = keys.path().join("master.key");
    valet_credentials::MasterKey::load_or_create(&master).unwrap();
    let config = valet::config::Config {
        secrets: SecretsConfig {
            backend: SecretsBackend::Aws,
            region: Some("us-east-1".into()),
            endpoint_url: Some(proxy.endpoint()),
            master_key: Some(MasterKeySource::File(master)),
            ..SecretsConfig::default()
        },
        vendors: vec![oauth_vendor(
            "crm",
            &idp,
            GrantConfig::RefreshToken,
            ClientAuthConfig::ClientSecretPost,
        )],
        ..valet::config::Config::default()
    };
    let options = valet::app::StartOptions {
        aws_static_credentials: Some(("testing".into(), "testing".into())),
    };
    let valet = Valet::start_with_options(config, tempfile::tempdir().unwrap(), options).await;
    valet
        .put_credential(
            "acme",
            "crm",
            &material("acme-client", "oauth-canary-client-secret-8", Some(&rt)),
        )
        .await;
    let key = valet.api_key(&["acme"], &["crm"], &[Operation::Read]).await;
    assert_eq!(
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(idp.token_requests().len(), 1);

    // Secrets Manager takes no writes: the provider rotates the refresh
    // token, Valet cannot store the new one, and the call fails.
    proxy.refuse(Some("PutSecretValue"));
    idp.revoke_access_tokens();
    let failed = valet.call(&key, get("acme", "crm", "/things")).await.unwrap_err();
    assert_eq!(reason(&failed), "CREDENTIAL_STORE_UNAVAILABLE", "{failed:?}");
    assert_eq!(idp.token_requests().len(), 2);
    let metrics = support::http_get(&format!("http://{}/metrics", valet.ops_addr))
        .await
        .1;
    assert_eq!(
        support::sample(&metrics, "valet_oauth_refresh_tokens_unstored", &[]),
        1.0,
        "{metrics}"
    );
    // While the store still refuses, no other refresh starts from the stored
    // (spent) refresh token: the provider is not asked again.
    for _ in 0..3 {
        let failed = valet.call(&key, get("acme", "crm", "/things")).await.unwrap_err();
        assert_eq!(reason(&failed), "CREDENTIAL_STORE_UNAVAILABLE");
    }
    assert_eq!(
        idp.token_requests().len(),
        2,
        "a refresh from the spent refresh token"
    );
    // The store heals: the kept refresh token is stored first, and the access
    // token issued with it put in force, without asking the provider.
    proxy.refuse(None);
    assert_eq!(
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(idp.token_requests().len(), 2);
    assert_eq!(idp.reuse_detected(), 0);
    // The next refresh presents the kept (now stored) refresh token.
    idp.revoke_access_tokens();
    assert_eq!(
        valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(idp.reuse_detected(), 0, "the kept refresh token was lost");
    let metrics = support::http_get(&format!("http://{}/metrics", valet.ops_addr))
        .await
        .1;
    assert_eq!(
        support::sample(&metrics, "valet_oauth_refresh_tokens_unstored", &[]),
        0.0
    );
}
