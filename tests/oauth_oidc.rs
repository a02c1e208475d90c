//! OAuth 2.0 against a real, strict third-party authorization server:
//! `oidc-provider` (OpenID certified) from the npm registry, run by
//! `tests/oidc/provider.mjs` on a free loopback port, with an API beside it
//! that accepts only the access tokens it issued. Skipped, with a message,
//! where Node.js or the package is missing (`npm ci` in `tests/oidc`; the
//! README's test command installs it).

mod support;

use support::{OidcProvider as Provider, Valet, get, reason, vendor};
use valet::config::{AuthConfig, ClientAuthConfig, GrantConfig};
use valet::proto::{CallRequest, Operation};
use valet_testkit::leak;

fn oauth(provider: &Provider, name: &str, client_auth: ClientAuthConfig) -> valet::config::VendorConfig {
    let mut v = vendor(
        name,
        &format!("{}/api", provider.base()),
        AuthConfig::OAuth2 {
            token_url: format!("{}/token", provider.base()),
            grant: GrantConfig::ClientCredentials,
            client_auth,
            scopes: Vec::new(),
            read_scopes: vec!["things.read".into()],
            write_scopes: vec!["things.write".into()],
            audience: None,
            revocation_url: Some(format!("{}/token/revocation", provider.base())),
            refresh_before_ms: 60_000,
            mtls: false,
        },
    );
    v.require_idempotency_key = false;
    v
}

const BASIC_SECRET: &str = "oauth-canary-oidc-basic-0123456789abcdefghijklmnopqrstuvwxyz";
const POST_SECRET: &str = "oauth-canary-oidc-post-0123456789abcdefghijklmnopqrstuvwxyz";

fn material(id: &str, secret: &str) -> String {
    serde_json::json!({"client_id": id, "client_secret": secret}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_against_oidc_provider() {
    // A private_key_jwt client: oidc-provider knows only its public key.
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]), "kid": "k1", "use": "sig", "alg": "ES256"});
    let clients = serde_json::json!([
        {"client_id": "valet-jwt", "token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": "ES256", "jwks": {"keys": [jwk]}},
        {"client_id": "valet-basic", "client_secret": BASIC_SECRET, "token_endpoint_auth_method": "client_secret_basic"},
        {"client_id": "valet-post", "client_secret": POST_SECRET, "token_endpoint_auth_method": "client_secret_post"},
        {"client_id": "valet-rejected", "client_secret": BASIC_SECRET, "token_endpoint_auth_method": "client_secret_basic"},
    ]);
    let Some(provider) = Provider::start(clients, &[]).await else {
        return;
    };
    let valet = Valet::start(vec![
        oauth(&provider, "basic", ClientAuthConfig::ClientSecretBasic),
        oauth(&provider, "post", ClientAuthConfig::ClientSecretPost),
        oauth(&provider, "jwt", ClientAuthConfig::PrivateKeyJwt),
        oauth(&provider, "wrong", ClientAuthConfig::ClientSecretBasic),
    ])
    .await;
    valet
        .put_credential("acme", "basic", &material("valet-basic", BASIC_SECRET))
        .await;
    valet
        .put_credential("acme", "post", &material("valet-post", POST_SECRET))
        .await;
    let jwt_material =
        serde_json::json!({"client_id": "valet-jwt", "private_key": pair.serialize_pem(), "key_id": "k1"});
    valet
        .put_credential("acme", "jwt", &jwt_material.to_string())
        .await;
    // A client secret the provider does not know.
    valet
        .put_credential(
            "acme",
            "wrong",
            &material("valet-rejected", "oauth-canary-not-the-secret"),
        )
        .await;
    let key = valet
        .api_key(
            &["acme"],
            &["basic", "post", "jwt", "wrong"],
            &[Operation::Read, Operation::Write],
        )
        .await;
    let mut bodies = Vec::new();
    for v in ["basic", "post", "jwt"] {
        for i in 0..3 {
            let read = valet.call(&key, get("acme", v, "/things")).await.expect("read");
            assert_eq!(read.status, 200, "{}", String::from_utf8_lossy(&read.body));
            let write = CallRequest {
                operation: Operation::Write as i32,
                method: "POST".into(),
                idempotency_key: format!("{v}-{i}"),
                ..get("acme", v, "/things")
            };
            let wrote = valet.call(&key, write).await.expect("write");
            assert_eq!(wrote.status, 200);
            bodies.push(read.body);
            bodies.push(wrote.body);
        }
    }
    // One token per vendor and scope set, each client authenticated its way.
    let tokens = provider.logged("token");
    let ok: Vec<_> = tokens.iter().filter(|t| t["status"] == 200).collect();
    assert_eq!(ok.len(), 6, "{tokens:?}");
    for t in &ok {
        // (a private_key_jwt client sends its assertion in the form)
        let want = if t["client_id"] == "valet-basic" {
            "basic"
        } else {
            "post"
        };
        assert_eq!(t["auth"], want, "{t}");
        assert_eq!(t["grant_type"], "client_credentials");
    }
    // The API saw each operation's scopes.
    let api = provider.logged("api");
    assert_eq!(api.len(), 18);
    for a in &api {
        let want = if a["method"] == "GET" {
            "things.read"
        } else {
            "things.write"
        };
        assert_eq!(
            (a["status"].as_u64(), a["scope"].as_str()),
            (Some(200), Some(want)),
            "{a}"
        );
    }

    // A refused client: REAUTH_REQUIRED, and the provider is asked once.
    for _ in 0..5 {
        let refused = valet
            .call(&key, get("acme", "wrong", "/things"))
            .await
            .unwrap_err();
        assert_eq!(reason(&refused), "CREDENTIAL_REAUTH_REQUIRED", "{refused:?}");
    }
    let asked = provider
        .logged("token")
        .iter()
        .filter(|t| t["status"] != 200)
        .count();
    assert_eq!(asked, 1);

    // Offboarding the tenant revokes its tokens at the provider (RFC 7009):
    // the API no longer takes them.
    let offboard = valet::proto::OffboardTenantRequest {
        tenant: "acme".into(),
        now: true,
        reason: "contract ended".into(),
        ..Default::default()
    };
    let done = valet
        .admin()
        .await
        .offboard_tenant(support::authed(offboard, &valet.admin_key))
        .await
        .expect("offboarded")
        .into_inner();
    let revocations = provider.logged("revocation");
    assert_eq!(revocations.len(), 6, "{revocations:?}");
    assert!(revocations.iter().all(|r| r["status"] == 200), "{revocations:?}");
    assert_eq!(
        done.deleted
            .iter()
            .filter(|d| d.starts_with("OAuth ") && d.ends_with(" revoked"))
            .count(),
        6,
        "{:?}",
        done.deleted
    );
    for a in &api {
        let token = a["token"].as_str().unwrap();
        assert_eq!(
            api_status(provider.port, token).await,
            401,
            "a revoked token still works"
        );
    }

    // Neither a client secret nor an access token the provider issued is in
    // anything Valet produced.
    let mut secrets: Vec<String> = api
        .iter()
        .filter_map(|a| a["token"].as_str().map(str::to_owned))
        .collect();
    secrets.sort();
    secrets.dedup();
    assert_eq!(secrets.len(), 6);
    secrets.extend([BASIC_SECRET.to_owned(), POST_SECRET.to_owned()]);
    let mut outputs = bodies;
    outputs.push(std::fs::read(valet.audit_log()).unwrap());
    for secret in &secrets {
        for out in &outputs {
            assert_eq!(
                leak::forms_found(out, secret),
                Vec::<&str>::new(),
                "a secret leaked"
            );
        }
    }
}

/// The status the provider's API answers to a GET with `token`.
async fn api_status(port: u16, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!(
        "GET /api/things HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

const RT_SECRET: &str = "oauth-canary-oidc-refresh-0123456789abcdefghijklmnopqrstuvwxyz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_refresh_tokens_against_oidc_provider() {
    let clients = serde_json::json!([{
        "client_id": "valet-rt",
        "client_secret": RT_SECRET,
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": ["https://client.example/cb"],
        "scope": "openid offline_access",
    }]);
    // Access tokens live 3 s: Valet refreshes (and the provider rotates the
    // refresh token) about once a second.
    let env = [("OIDC_REFRESH_CLIENT", "valet-rt"), ("OIDC_TTL", "3")];
    let Some(provider) = Provider::start(clients, &env).await else {
        return;
    };
    let first = provider.logged("refresh_token")[0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut v = oauth(&provider, "crm", ClientAuthConfig::ClientSecretBasic);
    if let AuthConfig::OAuth2 {
        grant,
        read_scopes,
        write_scopes,
        refresh_before_ms,
        ..
    } = &mut v.auth
    {
        *grant = GrantConfig::RefreshToken;
        read_scopes.clear();
        write_scopes.clear();
        *refresh_before_ms = 2_000;
    }
    let valet = Valet::start(vec![v]).await;
    let material =
        serde_json::json!({"client_id": "valet-rt", "client_secret": RT_SECRET, "refresh_token": first});
    valet.put_credential("acme", "crm", &material.to_string()).await;
    let key = valet.api_key(&["acme"], &["crm"], &[Operation::Read]).await;
    let refreshes = |p: &Provider| {
        p.logged("token")
            .into_iter()
            .filter(|t| t["grant_type"] == "refresh_token")
            .collect::<Vec<_>>()
    };
    let began = std::time::Instant::now();
    while refreshes(&provider).len() < 3 {
        let resp = valet
            .call(&key, get("acme", "crm", "/things"))
            .await
            .expect("call");
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        assert!(
            began.elapsed() < std::time::Duration::from_secs(20),
            "too few refreshes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await; // pacing only
    }
    // Each refresh presented the refresh token the one before returned.
    let done = refreshes(&provider);
    assert!(done.iter().all(|t| t["status"] == 200), "{done:?}");
    let presented: Vec<&str> = done
        .iter()
        .map(|t| t["refresh_token"].as_str().unwrap())
        .collect();
    assert_eq!(presented[0], first);
    let distinct: std::collections::HashSet<_> = presented.iter().collect();
    assert_eq!(
        distinct.len(),
        presented.len(),
        "a refresh token presented twice: {presented:?}"
    );

    // The provider does reject reuse: the spent first token, presented
    // again (not by Valet), is refused, and the whole grant revoked; Valet's
    // next refresh then needs the tenant to authorize again.
    let (status, body) = token_request(provider.port, "valet-rt", RT_SECRET, &first).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    let refused = loop {
        match valet.call(&key, get("acme", "crm", "/things")).await {
            Ok(resp) => assert!(resp.status == 200 || resp.status == 401, "{}", resp.status),
            Err(e) => break e,
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(40),
            "never refused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await; // pacing only
    };
    assert_eq!(reason(&refused), "CREDENTIAL_REAUTH_REQUIRED", "{refused:?}");
}

/// A refresh-token request made by the test itself: status and body.
async fn token_request(port: u16, client: &str, secret: &str, refresh_token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{client}:{secret}"),
    );
    let form = format!("grant_type=refresh_token&refresh_token={refresh_token}");
    let request = format!(
        "POST /token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {basic}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
