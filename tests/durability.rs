//! What survives a restart, what the audit log proves, and what deletion
//! destroys.

mod support;

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use support::{Valet, authed, bearer, get, reason, valet_bin, vendor};
use tonic::Code;
use valet::config::Config;
use valet::proto::{DeleteCredentialRequest, ListCredentialsRequest, Operation, RevokeApiKeyRequest};
use valet_audit::Durability;
use valet_testkit::{MockVendor, leak};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_credentials_and_api_keys() {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    let stored = valet
        .put_credential("acme", "mock", "restart-secret-00000001")
        .await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let (revoked_key, revoked_id) = valet
        .create_key(&["acme"], &["mock"], &[Operation::Read], 0)
        .await;
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

    let valet = valet.restart().await;
    let resp = valet.call(&key, get("acme", "mock", "/after")).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        mock.requests()[0].header("authorization"),
        Some("Bearer restart-secret-00000001")
    );
    let err = valet
        .call(&revoked_key, get("acme", "mock", "/x"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "API_KEY_REVOKED");

    let listed = valet
        .admin()
        .await
        .list_credentials(authed(ListCredentialsRequest::default(), &valet.admin_key))
        .await
        .unwrap()
        .into_inner()
        .credentials;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].fingerprint, stored.fingerprint);
    assert_eq!(listed[0].last4, "0001");
    assert!(!format!("{listed:?}").contains("restart-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_private_and_credentials_sealed() {
    let canary = valet_testkit::canary("at-rest");
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    valet.put_credential("acme", "mock", &canary).await;
    let dir = valet.state_dir();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for f in [
        "master.key",
        "admin.key",
        "apikeys.json",
        "audit.log",
        "credentials/acme/mock.json",
        "idempotency.redb",
        "lock",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    // Not only the files named above: everything Valet created.
    let mut pending = vec![dir.clone()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                pending.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
        }
    }
    assert_eq!(leak::files_containing(&dir, &canary), vec![]);
    let sealed = std::fs::read_to_string(dir.join("credentials/acme/mock.json")).unwrap();
    assert!(sealed.contains("\"ct\""), "{sealed}");
}

async fn delete(valet: &Valet) -> Result<(), tonic::Status> {
    let req = DeleteCredentialRequest {
        tenant: "acme".into(),
        vendor: "mock".into(),
    };
    valet
        .admin()
        .await
        .delete_credential(authed(req, &valet.admin_key))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_overwrites_then_removes() {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    valet
        .put_credential("acme", "mock", "doomed-secret-000000001")
        .await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let path = valet.state_dir().join("credentials/acme/mock.json");
    // An open handle still sees the file's blocks after the unlink.
    let mut handle = std::fs::File::open(&path).unwrap();

    delete(&valet).await.unwrap();

    assert!(!path.exists());
    let mut left = Vec::new();
    handle.read_to_end(&mut left).unwrap();
    assert!(
        !left.is_empty() && left.iter().all(|b| *b == 0),
        "ciphertext was not overwritten"
    );
    let err = valet.call(&key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let again = delete(&valet).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_leases_and_its_chain_detects_an_edit() {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    let info = valet
        .put_credential("acme", "mock", "audited-secret-0000001")
        .await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let resp = valet.call(&key, get("acme", "mock", "/x")).await.unwrap();
    let log = valet.audit_log();

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("audited-secret"));
    let lease: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "credential_lease")
        .expect("a lease entry");
    assert_eq!(lease["tenant"], "acme");
    assert_eq!(lease["vendor"], "mock");
    assert_eq!(lease["reason"], "e2e-test");
    assert_eq!(lease["request_id"], resp.request_id.as_str());
    assert_eq!(lease["fingerprint"], info.fingerprint.as_str());
    assert!(lease["actor"].as_str().unwrap().starts_with("key_"));
    let events: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
        .collect();
    assert_eq!(
        events,
        [
            "\"api_key_create\"",
            "\"credential_put\"",
            "\"api_key_create\"",
            "\"credential_lease\""
        ]
    );

    let out = Command::new(valet_bin())
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 4 entries"));

    // Edit the second entry: verify names line 2 and fails.
    let edited: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 1 {
                l.replace("\"acme\"", "\"evil\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&log, edited.join("\n") + "\n").unwrap();
    let out = Command::new(valet_bin())
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_audit_means_no_credential_in_every_durability_mode() {
    for durability in [Durability::BeforeSend, Durability::BeforeAnswer, Durability::Os] {
        let mock = MockVendor::start().await;
        let mut config = Config {
            vendors: vec![vendor("mock", &mock.base_url(), bearer())],
            ..Config::default()
        };
        config.audit.durability = durability;
        let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
        valet
            .put_credential("acme", "mock", "unaudited-secret-00001")
            .await;
        let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
        // Audited calls work, and each left its entry in the file.
        for _ in 0..3 {
            valet.call(&key, get("acme", "mock", "/x")).await.unwrap();
        }
        let (config, state) = valet.stop().await;
        let log = config.state.dir.join("audit.log");
        let leases = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"event\":\"credential_lease\""))
            .count();
        assert_eq!(leases, 3, "{durability:?}");

        // Every audit write now fails (ENOSPC).
        std::fs::remove_file(&log).unwrap();
        std::os::unix::fs::symlink("/dev/full", &log).unwrap();
        let valet = Valet::start_with(config, state).await;
        let before = mock.requests().len();
        let err = valet.call(&key, get("acme", "mock", "/x")).await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::Unavailable, "AUDIT_UNAVAILABLE"),
            "{durability:?}"
        );
        assert_eq!(
            mock.requests().len(),
            before,
            "{durability:?}: a credential was used without an audit entry"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_per_state_dir_and_never_a_silent_new_master_key() {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    valet
        .put_credential("acme", "mock", "locked-secret-00000001")
        .await;

    let err = valet::app::App::open(&valet.config).await.unwrap_err();
    assert!(
        err.to_string().contains("in use by another valet process"),
        "{err}"
    );

    let (config, _state) = valet.stop().await;
    std::fs::remove_file(config.state.dir.join("master.key")).unwrap();
    let err = valet::app::App::open(&config).await.unwrap_err();
    assert!(err.to_string().contains("holds sealed credentials"), "{err}");
    assert!(
        !config.state.dir.join("master.key").exists(),
        "a new key was created anyway"
    );
}
