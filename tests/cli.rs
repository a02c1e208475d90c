//! The command line: exit codes, config errors that name the key, and the
//! admin commands against a running server.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use support::{Valet, bearer, get, reason, valet_bin, vendor};
use valet::proto::Operation;
use valet_testkit::MockVendor;

fn run(args: &[&str]) -> Output {
    Command::new(valet_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 2\n", "lisen"),
        ("[state]\ndir = 5\n", "dir"),
        (
            "[[vendors]]\nname = \"v\"\nbase_url = \"http://10.0.0.1\"\nauth = { scheme = \"bearer\" }\n",
            "vendors[0].base_url",
        ),
        (
            "[[vendors]]\nname = \"v\"\nbase_url = \"https://v.example\"\nauth = { scheme = \"bearer\" }\nca_file = \"/nonexistent.pem\"\n",
            "vendors[0].ca_file",
        ),
    ];
    for (body, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, body).unwrap();
        let path = path.to_str().unwrap();
        for args in [
            vec!["config", "check", "--config", path],
            vec!["serve", "--config", path],
        ] {
            let out = run(&args);
            assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out.stderr));
            assert!(
                text(&out.stderr).contains(key),
                "{key} not named in: {}",
                text(&out.stderr)
            );
        }
    }
    let out = run(&["config", "check", "--config", "/nonexistent/valet.toml"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn the_shipped_example_config_checks() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/valet.example.toml");
    let out = run(&["config", "check", "--config", example]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn help_describes_every_command() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["admin", "--help"],
        vec!["admin", "credential", "put", "--help"],
        vec!["admin", "apikey", "create", "--help"],
        vec!["audit", "verify", "--help"],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(text(&out.stdout).contains("Usage"), "{args:?}");
    }
    let put_help = text(&run(&["admin", "credential", "put", "--help"]).stdout);
    assert!(put_help.contains("standard input"), "{put_help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_manage_credentials_and_keys() {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    let admin_key = valet.state_dir().join("admin.key");
    let endpoint = format!("http://{}", valet.admin_addr);
    let admin = async |key_file: &Path, args: &[&str], stdin: &str| {
        support::admin_cli(&endpoint, key_file, args, stdin).await
    };

    // Store a credential from stdin; the secret is never echoed.
    let put = ["credential", "put", "--tenant", "acme", "--vendor", "mock"];
    let out = admin(&admin_key, &put, "cli-secret-abcdef123456\n").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains("fingerprint") && !said.contains("cli-secret-abcdef"),
        "{said}"
    );

    // An empty stdin is refused.
    let out = admin(&admin_key, &put, "").await;
    assert_eq!(out.status.code(), Some(1));

    // Create a key: the key alone on stdout.
    let create = [
        "apikey",
        "create",
        "--name",
        "cli",
        "--tenant",
        "acme",
        "--vendor",
        "mock",
        "--operation",
        "read",
    ];
    let out = admin(&admin_key, &create, "").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = text(&out.stdout).trim().to_owned();
    assert!(key.starts_with("vk_"));
    assert_eq!(
        valet.call(&key, get("acme", "mock", "/x")).await.unwrap().status,
        200
    );
    assert_eq!(
        mock.requests()[0].header("authorization"),
        Some("Bearer cli-secret-abcdef123456")
    );

    // Lists show metadata, never keys or secrets.
    let listing = text(&admin(&admin_key, &["apikey", "list"], "").await.stdout);
    assert!(listing.contains("cli") && listing.contains(&key[key.len() - 4..]));
    assert!(!listing.contains(&key));
    let id = listing
        .lines()
        .find(|l| l.contains("\tcli\t"))
        .and_then(|l| l.split('\t').next())
        .unwrap()
        .to_owned();
    let creds = text(
        &admin(&admin_key, &["credential", "list", "--tenant", "acme"], "")
            .await
            .stdout,
    );
    assert!(
        creds.contains("acme\tmock\t") && !creds.contains("cli-secret"),
        "{creds}"
    );

    // Revoke, then the key is refused.
    let out = admin(&admin_key, &["apikey", "revoke", &id], "").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = valet.call(&key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(reason(&err), "API_KEY_REVOKED");

    // Delete the credential; a second delete says NOT_FOUND with its reason.
    let del = ["credential", "delete", "--tenant", "acme", "--vendor", "mock"];
    assert!(admin(&admin_key, &del, "").await.status.success());
    let out = admin(&admin_key, &del, "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("CREDENTIAL_NOT_FOUND"),
        "{}",
        text(&out.stderr)
    );

    // A non-admin key is refused with a clear reason.
    let caller_key = valet.state.path().join("caller.key");
    std::fs::write(
        &caller_key,
        valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await,
    )
    .unwrap();
    let out = admin(&caller_key, &["apikey", "list"], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("ADMIN_REQUIRED"),
        "{}",
        text(&out.stderr)
    );

    // A missing key file: exit 1 and a clear message.
    let out = admin(Path::new("/nonexistent/key"), &["apikey", "list"], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read API key file"));
}
