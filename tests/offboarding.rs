//! Offboarding through the real binary and the CLI: the tenant's
//! credentials are overwritten and deleted at once, its keys revoked, its
//! stored responses purged and its quota policies removed; other tenants
//! are untouched; the audit log lists what was deleted and what is retained
//! until when; `restore` undoes it within the retention, and `--now` leaves
//! nothing to restore. Every output is scanned for the canaries.

mod support;

use support::{ValetProcess, admin_cli, authed, get, reason};
use tonic::Code;
use valet::proto::{CallRequest, Operation};
use valet_testkit::{MockVendor, leak};

fn body(mock: &MockVendor) -> String {
    format!(
        r#"
[[vendors]]
name = "mock"
base_url = "{base}"
allow_insecure_http = true
auth = {{ scheme = "bearer" }}
idempotency_header = "Idempotency-Key"
"#,
        base = mock.base_url()
    )
}

async fn setup(valet: &ValetProcess, tenant: &str, secret: &str) -> String {
    valet
        .admin(
            &["credential", "put", "--tenant", tenant, "--vendor", "mock"],
            &format!("{secret}\n"),
        )
        .await;
    let create = [
        "apikey",
        "create",
        "--name",
        "svc",
        "--tenant",
        tenant,
        "--vendor",
        "mock",
        "--operation",
        "read",
        "--operation",
        "write",
    ];
    valet.admin(&create, "").await.trim().to_owned()
}

fn write(tenant: &str, key: &str) -> CallRequest {
    CallRequest {
        tenant: tenant.into(),
        vendor: "mock".into(),
        operation: Operation::Write as i32,
        method: "POST".into(),
        path: "/v1/charges".into(),
        reason: "test".into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarding_deletes_at_once_retains_what_it_says_and_restore_undoes_it() {
    let mock = MockVendor::start().await;
    let valet = ValetProcess::spawn(&body(&mock)).await;
    let acme_secret = valet_testkit::canary("offboard-acme");
    let globex_secret = valet_testkit::canary("offboard-globex");
    let acme = setup(&valet, "acme", &acme_secret).await;
    let globex = setup(&valet, "globex", &globex_secret).await;
    let mut gateway = valet.gateway().await;
    for (tenant, key) in [("acme", &acme), ("globex", &globex)] {
        gateway.call(authed(write(tenant, "order-1"), key)).await.unwrap();
    }
    valet
        .admin(
            &[
                "quota", "set", "--tenant", "acme", "--vendor", "mock", "--rate", "100/m", "--burst", "10",
            ],
            "",
        )
        .await;
    let sealed = valet.state.join("credentials").join("acme");
    assert!(std::fs::read_dir(&sealed).unwrap().count() > 0);

    let out = valet
        .admin(
            &[
                "tenant",
                "offboard",
                "--tenant",
                "acme",
                "--retention-days",
                "7",
                "--reason",
                "contract ended",
            ],
            "",
        )
        .await;
    assert!(out.contains("credential mock (fingerprint"), "{out}");
    assert!(out.contains("overwritten and deleted"), "{out}");
    assert!(
        out.contains("1 idempotency records and stored responses purged"),
        "{out}"
    );
    assert!(out.contains("quota policy") && out.contains("removed"), "{out}");
    assert!(out.contains("api key") && out.contains("revoked"), "{out}");
    assert!(out.contains("retained until"), "{out}");

    // Nothing of the credential is left on disk; its key and calls fail.
    let left: Vec<_> = std::fs::read_dir(&sealed)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "sealed files left: {left:?}");
    let refused = gateway
        .call(authed(get("acme", "mock", "/v1/x"), &acme))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Unauthenticated, "API_KEY_REVOKED")
    );
    let erased = valet
        .admin(&["tenant", "erase-records", "--tenant", "acme"], "")
        .await;
    assert!(erased.contains("erased 0 stored responses"), "{erased}");
    let policies = valet.admin(&["quota", "list"], "").await;
    assert!(!policies.contains("acme"), "{policies}");
    let status = valet.admin(&["tenant", "status", "--tenant", "acme"], "").await;
    assert!(status.starts_with("acme\toffboarded\tfinal deletion"), "{status}");
    // Enable is not the way back; restore is.
    let enable = admin_cli(
        &valet.admin_url,
        &valet.key_file,
        &["tenant", "enable", "--tenant", "acme"],
        "",
    )
    .await;
    assert!(String::from_utf8_lossy(&enable.stderr).contains("TENANT_OFFBOARDED"));

    // Other tenants are unaffected: globex's replay still answers.
    let replay = gateway
        .call(authed(write("globex", "order-1"), &globex))
        .await
        .unwrap();
    assert_eq!(replay.into_inner().status, 200);

    // Restore, with new credentials and a new key.
    valet.admin(&["tenant", "restore", "--tenant", "acme"], "").await;
    let fresh = valet_testkit::canary("offboard-restored");
    let renewed = setup(&valet, "acme", &fresh).await;
    gateway
        .call(authed(get("acme", "mock", "/v1/x"), &renewed))
        .await
        .unwrap();

    // --now: nothing retained, nothing to restore.
    let out = valet
        .admin(&["tenant", "offboard", "--tenant", "globex", "--now"], "")
        .await;
    assert!(out.contains("retained: nothing"), "{out}");
    let list = valet.admin(&["tenant", "list"], "").await;
    assert!(
        list.contains("globex\tdisabled") && list.contains("retained records swept"),
        "swept at once, and still disabled: {list}"
    );
    let restore = admin_cli(
        &valet.admin_url,
        &valet.key_file,
        &["tenant", "restore", "--tenant", "globex"],
        "",
    )
    .await;
    assert!(String::from_utf8_lossy(&restore.stderr).contains("TENANT_NOT_OFFBOARDED"));
    let keys = valet.admin(&["apikey", "list"], "").await;
    let globex_key_id_gone = !keys.lines().any(|l| l.contains("globex"));
    assert!(
        globex_key_id_gone,
        "the swept tenant's key records are gone: {keys}"
    );

    let audit = std::fs::read_to_string(valet.state.join("audit.log")).unwrap();
    let offboard = audit
        .lines()
        .find(|l| l.contains("\"tenant_offboard\"") && l.contains("acme"))
        .expect("audited");
    assert!(
        offboard.contains("\"deleted\"") && offboard.contains("\"retained\""),
        "{offboard}"
    );
    assert!(offboard.contains("final_deletion_ms"), "{offboard}");
    assert!(audit.contains("\"tenant_restore\""));
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"tenant_sweep\"") && l.contains("globex"))
    );

    let state = valet.state.clone();
    let exited = valet.terminate().await;
    for s in [&acme_secret, &globex_secret, &fresh, &acme, &globex, &renewed] {
        assert!(leak::forms_found(&exited.stdout, s).is_empty());
        assert!(leak::forms_found(&exited.stderr, s).is_empty());
        assert!(leak::forms_found(audit.as_bytes(), s).is_empty());
        assert!(leak::forms_found(out.as_bytes(), s).is_empty());
        assert_eq!(leak::files_containing(&state, s), vec![]);
    }
}
