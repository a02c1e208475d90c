//! The command line: exit codes, config errors that name the key, and the
//! admin commands against a running server.

mod support;

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

fn admin(valet: &Valet, key_file: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(valet_bin())
        .args([
            "admin",
            "--endpoint",
            &format!("http://{}", valet.admin_addr),
            "--api-key-file",
        ])
        .arg(key_file)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_manage_credentials_and_keys() {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    let key_file = valet.state_dir().join("admin.key");
    let v = &valet;

    // Store a credential from stdin; the secret is never echoed.
    let out = tokio::task::block_in_place(|| {
        admin(
            v,
            &key_file,
            &["credential", "put", "--tenant", "acme", "--vendor", "mock"],
            Some("cli-secret-abcdef123456\n"),
        )
    });
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains("fingerprint") && !said.contains("cli-secret-abcdef"),
        "{said}"
    );

    // An empty stdin is refused.
    let out = tokio::task::block_in_place(|| {
        admin(
            v,
            &key_file,
            &["credential", "put", "--tenant", "acme", "--vendor", "mock"],
            Some(""),
        )
    });
    assert_eq!(out.status.code(), Some(1));

    // Create a key: the key alone on stdout.
    let out = tokio::task::block_in_place(|| {
        admin(
            v,
            &key_file,
            &[
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
            ],
            None,
        )
    });
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

    // List shows metadata, never keys or secrets.
    let out = tokio::task::block_in_place(|| admin(v, &key_file, &["apikey", "list"], None));
    let listing = text(&out.stdout);
    assert!(listing.contains("cli") && listing.contains(&key[key.len() - 4..]));
    assert!(!listing.contains(&key));
    let id = listing
        .lines()
        .find(|l| l.contains("\tcli\t"))
        .and_then(|l| l.split('\t').next())
        .unwrap()
        .to_owned();
    let out = tokio::task::block_in_place(|| {
        admin(v, &key_file, &["credential", "list", "--tenant", "acme"], None)
    });
    assert!(
        text(&out.stdout).contains("acme\tmock\t"),
        "{}",
        text(&out.stdout)
    );
    assert!(!text(&out.stdout).contains("cli-secret"));

    // Revoke, then the key is refused.
    let args = ["apikey", "revoke", id.as_str()];
    let out = tokio::task::block_in_place(|| admin(v, &key_file, &args, None));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = valet.call(&key, get("acme", "mock", "/x")).await.unwrap_err();
    assert_eq!(reason(&err), "API_KEY_REVOKED");

    // Delete the credential; a second delete says NOT_FOUND with its reason.
    let del = ["credential", "delete", "--tenant", "acme", "--vendor", "mock"];
    let out = tokio::task::block_in_place(|| admin(v, &key_file, &del, None));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = tokio::task::block_in_place(|| admin(v, &key_file, &del, None));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("CREDENTIAL_NOT_FOUND"),
        "{}",
        text(&out.stderr)
    );

    // A non-admin key is refused with a clear reason.
    let caller_key_file = valet.state.path().join("caller.key");
    let caller = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    std::fs::write(&caller_key_file, &caller).unwrap();
    let out = tokio::task::block_in_place(|| admin(v, &caller_key_file, &["apikey", "list"], None));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("ADMIN_REQUIRED"),
        "{}",
        text(&out.stderr)
    );

    // A missing key file or a dead endpoint: exit 1, a clear message.
    let out = tokio::task::block_in_place(|| {
        admin(
            v,
            std::path::Path::new("/nonexistent/key"),
            &["apikey", "list"],
            None,
        )
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read API key file"));
}
