//! TLS on Valet's own listeners, and mutual TLS where the client
//! certificate's identity is the caller's.

mod support;

use support::{Valet, authed, bearer, get, reason, vendor};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use valet::config::{Config, ListenerTls};
use valet::proto::{CreateApiKeyRequest, Operation};
use valet_testkit::{MockVendor, TestCa};

struct Files {
    _dir: tempfile::TempDir,
    tls: ListenerTls,
}

fn files(ca: &TestCa, mutual: bool) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let tls = ListenerTls {
        cert_file: path("server.pem", ca.server_pem()),
        key_file: path("server.key", ca.server_key_pem()),
        client_ca_file: mutual.then(|| path("clients.pem", ca.ca_pem())),
    };
    Files { _dir: dir, tls }
}

fn client_tls(ca: &TestCa, identity: Option<&str>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.ca_pem()))
        .domain_name("localhost");
    match identity {
        Some(name) => {
            let (cert, key) = ca.client(name);
            tls.identity(Identity::from_pem(cert, key))
        }
        None => tls,
    }
}

async fn start(ca: &TestCa, mock: &MockVendor, mutual: bool) -> (Valet, Files) {
    let files = files(ca, mutual);
    let mut config = Config {
        vendors: vec![vendor("mock", &mock.base_url(), bearer())],
        ..Config::default()
    };
    config.server.tls = Some(files.tls.clone());
    let mut valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    // The harness's own admin calls: TLS, and a client certificate where
    // one is required.
    valet.client_tls = Some(client_tls(ca, mutual.then_some("harness-admin")));
    (valet, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listeners_speak_tls_and_refuse_plaintext() {
    let ca = TestCa::new();
    let mock = MockVendor::start().await;
    let (valet, _files) = start(&ca, &mock, false).await;
    valet
        .put_credential("acme", "mock", "listener-tls-secret-01")
        .await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let answer = valet.call(&key, get("acme", "mock", "/v1/me")).await.unwrap();
    assert_eq!(answer.status, 200);

    let plain = tonic::transport::Channel::from_shared(format!("http://{}", valet.gateway_addr))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => valet::proto::gateway_client::GatewayClient::new(channel)
            .call(authed(get("acme", "mock", "/v1/me"), &key))
            .await
            .is_err(),
    };
    assert!(refused, "plaintext is not served on a TLS listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_and_names_the_caller() {
    let ca = TestCa::new();
    let mock = MockVendor::start().await;
    let (mut valet, _files) = start(&ca, &mock, true).await;
    valet
        .put_credential("acme", "mock", "listener-tls-secret-02")
        .await;
    // A key bound to a client certificate identity.
    let create = |name: &str, identity: &str, admin: bool| CreateApiKeyRequest {
        name: name.into(),
        tenants: vec!["acme".into()],
        vendors: vec!["mock".into()],
        operations: vec![Operation::Read as i32],
        admin,
        client_identity: identity.into(),
        ..Default::default()
    };
    let mut admin = valet.admin().await;
    let created = admin
        .create_api_key(authed(
            create("billing", "Billing.Corp.Example", false),
            &valet.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.info.unwrap().client_identity, "billing.corp.example");
    // One valid key per identity, and never an admin key.
    for (request, why) in [
        (
            create("billing-2", "billing.corp.example", false),
            "already bound",
        ),
        (create("ops", "ops.corp.example", true), "admin key"),
        (create("odd", "not a dns name", false), "not a DNS name"),
    ] {
        let err = admin
            .create_api_key(authed(request, &valet.admin_key))
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "CLIENT_IDENTITY_INVALID", "{why}");
        assert!(err.message().contains(why), "{}", err.message());
    }
    // A certificate naming a key's *name* is not that key: only bindings count.
    valet.client_tls = Some(client_tls(&ca, Some("billing")));
    let by_name = valet
        .gateway()
        .await
        .call(tonic::Request::new(get("acme", "mock", "/v1/me")))
        .await
        .unwrap_err();
    assert_eq!(reason(&by_name), "API_KEY_UNKNOWN");
    valet.client_tls = Some(client_tls(&ca, Some("bootstrap-admin")));
    let bootstrap = valet
        .admin()
        .await
        .list_api_keys(tonic::Request::new(Default::default()))
        .await
        .unwrap_err();
    assert_eq!(
        bootstrap.code(),
        Code::Unauthenticated,
        "the admin key's name gives nothing"
    );
    let bootstrap = valet
        .gateway()
        .await
        .call(tonic::Request::new(get("acme", "mock", "/v1/me")))
        .await
        .unwrap_err();
    assert_eq!(bootstrap.code(), Code::Unauthenticated);

    // A certificate naming the bound identity: no API key needed.
    valet.client_tls = Some(client_tls(&ca, Some("billing.corp.example")));
    let mut gateway = valet.gateway().await;
    let answer = gateway
        .call(tonic::Request::new(get("acme", "mock", "/v1/me")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, 200);
    // Its grant applies: another tenant is refused.
    let denied = gateway
        .call(tonic::Request::new(get("globex", "mock", "/v1/me")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // A certificate naming no key is not a caller.
    valet.client_tls = Some(client_tls(&ca, Some("stranger.corp.example")));
    let unknown = valet
        .gateway()
        .await
        .call(tonic::Request::new(get("acme", "mock", "/v1/me")))
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.code(), reason(&unknown).as_str()),
        (Code::Unauthenticated, "API_KEY_UNKNOWN")
    );

    // The CLI reaches the Admin service over mutual TLS.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.client("ops-laptop.corp.example");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (ca_file, cert_file, key_file) = (
        write("ca.pem", ca.ca_pem()),
        write("client.pem", &cert),
        write("client.key", &key),
    );
    let admin_key_file = dir.path().join("admin.key");
    std::fs::write(&admin_key_file, &valet.admin_key).unwrap();
    let endpoint = format!("https://localhost:{}", valet.admin_addr.port());
    let tls_flags = [
        "--ca-file",
        &ca_file,
        "--client-cert-file",
        &cert_file,
        "--client-key-file",
        &key_file,
    ];
    let out = support::admin_cli(
        &endpoint,
        &admin_key_file,
        &[&tls_flags[..], &["credential", "list"]].concat(),
        "",
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("acme"));
    let without_cert = support::admin_cli(
        &endpoint,
        &admin_key_file,
        &["--ca-file", &ca_file, "credential", "list"],
        "",
    )
    .await;
    assert!(
        !without_cert.status.success(),
        "mutual TLS needs the client certificate"
    );

    // No client certificate: no connection.
    valet.client_tls = Some(client_tls(&ca, None));
    let refused = match valet.channel(valet.gateway_addr).await {
        Err(_) => true,
        Ok(channel) => valet::proto::gateway_client::GatewayClient::new(channel)
            .call(tonic::Request::new(get("acme", "mock", "/v1/me")))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_are_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("server.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let mut config = Config::default();
    config.server.tls = Some(ListenerTls {
        cert_file: not_pem.clone(),
        key_file: dir.path().join("missing.key"),
        client_ca_file: None,
    });
    let err = valet::server::ServeOptions::from_config(&config.server).unwrap_err();
    assert!(
        err.contains("server.tls.key_file") || err.contains("server.tls.cert_file"),
        "{err}"
    );
    std::fs::write(dir.path().join("missing.key"), "x").unwrap();
    let err = valet::server::ServeOptions::from_config(&config.server).unwrap_err();
    assert!(
        err.contains("server.tls.cert_file") && err.contains("no PEM certificate"),
        "{err}"
    );
}
