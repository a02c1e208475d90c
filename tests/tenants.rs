//! The kill switch on one replica, through the real binary and the CLI:
//! a disabled tenant (or integration) is refused before any credential is
//! leased; `--compromised` also revokes the tenant's own keys and holds the
//! enable until its credentials are replaced. Every output is scanned for
//! the canary credentials and the callers' keys.

mod support;

use support::{ValetProcess, admin_cli, authed, get, reason};
use tonic::Code;
use valet_testkit::{MockVendor, leak};

fn body(mock: &MockVendor) -> String {
    format!(
        r#"
[[vendors]]
name = "mock"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "bearer" }}

[[vendors]]
name = "other"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "bearer" }}
"#,
        base = mock.base_url()
    )
}

/// Stores `secret` for `tenant` × `vendor` and creates a key for them.
async fn caller(valet: &ValetProcess, tenants: &[&str], vendor: &str, secret: &str) -> String {
    for tenant in tenants {
        valet
            .admin(
                &["credential", "put", "--tenant", tenant, "--vendor", vendor],
                &format!("{secret}\n"),
            )
            .await;
    }
    let mut args = vec![
        "apikey",
        "create",
        "--name",
        "svc",
        "--vendor",
        vendor,
        "--operation",
        "read",
    ];
    for tenant in tenants {
        args.extend(["--tenant", tenant]);
    }
    valet.admin(&args, "").await.trim().to_owned()
}

async fn call(valet: &ValetProcess, key: &str, tenant: &str, vendor: &str) -> Result<(), tonic::Status> {
    valet
        .gateway()
        .await
        .call(authed(get(tenant, vendor, "/v1/x"), key))
        .await
        .map(drop)
}

fn refused_with(result: Result<(), tonic::Status>, code: Code, wire: &str) {
    let status = result.expect_err("refused");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (code, wire),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_tenant_is_refused_before_any_lease_and_enable_restores_it() {
    let mock = MockVendor::start().await;
    let valet = ValetProcess::spawn(&body(&mock)).await;
    let acme_secret = valet_testkit::canary("acme");
    let globex_secret = valet_testkit::canary("globex");
    let acme = caller(&valet, &["acme"], "mock", &acme_secret).await;
    let acme_other = caller(&valet, &["acme"], "other", &acme_secret).await;
    let globex = caller(&valet, &["globex"], "mock", &globex_secret).await;
    call(&valet, &acme, "acme", "mock").await.unwrap();

    // A reason is required.
    let no_reason = admin_cli(
        &valet.admin_url,
        &valet.key_file,
        &["tenant", "disable", "--tenant", "acme", "--reason", " "],
        "",
    )
    .await;
    assert!(!no_reason.status.success());
    assert!(String::from_utf8_lossy(&no_reason.stderr).contains("REASON_REQUIRED"));

    let out = valet
        .admin(
            &[
                "tenant",
                "disable",
                "--tenant",
                "acme",
                "--reason",
                "INC-42 suspected leak",
            ],
            "",
        )
        .await;
    assert!(out.contains("tenant acme disabled for every vendor"), "{out}");
    let before = mock.requests().len();
    refused_with(
        call(&valet, &acme, "acme", "mock").await,
        Code::FailedPrecondition,
        "TENANT_DISABLED",
    );
    refused_with(
        call(&valet, &acme_other, "acme", "other").await,
        Code::FailedPrecondition,
        "TENANT_DISABLED",
    );
    assert_eq!(
        mock.requests().len(),
        before,
        "nothing was sent for a disabled tenant"
    );
    call(&valet, &globex, "globex", "mock").await.unwrap();

    let status = valet.admin(&["tenant", "status", "--tenant", "acme"], "").await;
    assert!(status.starts_with("acme\tdisabled"), "{status}");
    assert!(status.contains("reason: INC-42 suspected leak"), "{status}");
    let list = valet.admin(&["tenant", "list"], "").await;
    assert!(
        list.contains("acme\tdisabled") && list.contains("globex\tenabled"),
        "{list}"
    );

    // Enable the tenant but disable one integration: only that one is refused.
    valet
        .admin(
            &[
                "tenant",
                "disable",
                "--tenant",
                "acme",
                "--vendor",
                "other",
                "--reason",
                "vendor incident",
            ],
            "",
        )
        .await;
    valet.admin(&["tenant", "enable", "--tenant", "acme"], "").await;
    call(&valet, &acme, "acme", "mock").await.unwrap();
    refused_with(
        call(&valet, &acme_other, "acme", "other").await,
        Code::FailedPrecondition,
        "TENANT_DISABLED",
    );
    valet
        .admin(&["tenant", "enable", "--tenant", "acme", "--vendor", "other"], "")
        .await;
    call(&valet, &acme_other, "acme", "other").await.unwrap();

    // Survives a restart.
    valet
        .admin(
            &[
                "tenant",
                "disable",
                "--tenant",
                "globex",
                "--reason",
                "offboarding soon",
            ],
            "",
        )
        .await;
    let dir = valet.kill9().await;
    let valet = ValetProcess::spawn_in(dir, &body(&mock), &[]).await;
    refused_with(
        call(&valet, &globex, "globex", "mock").await,
        Code::FailedPrecondition,
        "TENANT_DISABLED",
    );

    let audit = std::fs::read_to_string(valet.state.join("audit.log")).unwrap();
    let disable = audit
        .lines()
        .find(|l| l.contains("\"tenant_disable\"") && l.contains("INC-42"))
        .expect("the disable is audited");
    assert!(disable.contains("bootstrap-admin"), "with its actor: {disable}");
    assert!(audit.contains("\"tenant_enable\""));
    let exited = valet.terminate().await;
    for secret in [&acme_secret, &globex_secret, &acme, &globex, &acme_other] {
        for (what, bytes) in [("stdout", &exited.stdout), ("stderr", &exited.stderr)] {
            assert!(leak::forms_found(bytes, secret).is_empty(), "{what} leaks");
        }
        assert!(
            leak::forms_found(audit.as_bytes(), secret).is_empty(),
            "audit leaks"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_disable_revokes_the_tenants_keys_and_enable_waits_for_new_credentials() {
    let mock = MockVendor::start().await;
    let valet = ValetProcess::spawn(&body(&mock)).await;
    let secret = valet_testkit::canary("compromised");
    let acme = caller(&valet, &["acme"], "mock", &secret).await;
    let shared = caller(&valet, &["acme", "globex"], "mock", &secret).await;

    let out = valet
        .admin(
            &[
                "tenant",
                "disable",
                "--tenant",
                "acme",
                "--reason",
                "INC-7 token in a public repo",
                "--compromised",
            ],
            "",
        )
        .await;
    assert!(out.contains("revoked 1 API key(s)"), "{out}");
    assert!(out.contains("marked 1 credential(s) compromised"), "{out}");
    assert!(
        out.contains("next steps:") && out.contains("valet admin tenant enable --tenant acme"),
        "{out}"
    );
    refused_with(
        call(&valet, &acme, "acme", "mock").await,
        Code::Unauthenticated,
        "API_KEY_REVOKED",
    );
    // A key for several tenants is not the tenant's own: kept, but refused for acme.
    refused_with(
        call(&valet, &shared, "acme", "mock").await,
        Code::FailedPrecondition,
        "TENANT_DISABLED",
    );
    call(&valet, &shared, "globex", "mock").await.unwrap();

    // A later plain disable (a new reason) keeps the compromise marks.
    valet
        .admin(
            &[
                "tenant",
                "disable",
                "--tenant",
                "acme",
                "--reason",
                "INC-7 still investigating",
            ],
            "",
        )
        .await;
    let early = admin_cli(
        &valet.admin_url,
        &valet.key_file,
        &["tenant", "enable", "--tenant", "acme"],
        "",
    )
    .await;
    assert!(!early.status.success());
    let stderr = String::from_utf8_lossy(&early.stderr);
    assert!(
        stderr.contains("CREDENTIAL_ROTATION_REQUIRED") && stderr.contains("mock"),
        "{stderr}"
    );

    let fresh = valet_testkit::canary("replaced");
    valet
        .admin(
            &["credential", "put", "--tenant", "acme", "--vendor", "mock"],
            &format!("{fresh}\n"),
        )
        .await;
    valet.admin(&["tenant", "enable", "--tenant", "acme"], "").await;
    let renewed = caller(&valet, &["acme"], "mock", &fresh).await;
    call(&valet, &renewed, "acme", "mock").await.unwrap();
    assert_eq!(
        mock.requests().last().unwrap().header("authorization"),
        Some(format!("Bearer {fresh}").as_str())
    );

    let audit = std::fs::read_to_string(valet.state.join("audit.log")).unwrap();
    let line = audit.lines().find(|l| l.contains("\"tenant_disable\"")).unwrap();
    assert!(
        line.contains("\"compromised\":true") && line.contains("revoked_key_ids"),
        "{line}"
    );
    let state = valet.state.clone();
    let exited = valet.terminate().await;
    for s in [&secret, &fresh, &acme, &shared, &renewed] {
        assert!(leak::forms_found(&exited.stdout, s).is_empty());
        assert!(leak::forms_found(&exited.stderr, s).is_empty());
        assert!(leak::forms_found(audit.as_bytes(), s).is_empty());
        assert!(leak::forms_found(out.as_bytes(), s).is_empty());
        assert_eq!(leak::files_containing(&state, s), vec![]);
    }
}
