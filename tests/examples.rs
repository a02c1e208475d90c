//! The clients in `examples/`, run against a real Valet (the built binary)
//! and a real mock vendor: the Python one (grpcio) and the Node one
//! (@grpc/grpc-js) each read, write with a key, get the write replayed, wait
//! out QUOTA_EXCEEDED as the RetryInfo says, and wait out
//! IDEMPOTENCY_IN_FLIGHT while another caller holds their key. Each is
//! skipped, with a message, where its runtime or packages are missing
//! (`scripts/test` installs them: pip for Python, `npm ci` for Node).

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{ValetProcess, authed};
use valet::proto::{CallRequest, Header, Operation};
use valet_testkit::{MockVendor, Scripted, canary, leak};

const WRITE_BODY: &str = r#"{"amount":100,"currency":"eur"}"#;
const REASON: &str = "example_client";

/// How one run of an example ended.
struct Run {
    code: Option<i32>,
    /// Its stdout, one JSON object a line.
    lines: Vec<Value>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The attempts of call `name`, in order.
    fn attempts(&self, name: &str) -> Vec<&Value> {
        self.lines.iter().filter(|l| l["call"] == name).collect()
    }

    /// The last attempt of call `name`, which must have succeeded.
    fn answered(&self, name: &str) -> &Value {
        let attempts = self.attempts(name);
        let last = attempts
            .last()
            .unwrap_or_else(|| panic!("no {name} in:\n{}", self.stdout));
        assert_eq!(
            last["ok"], true,
            "{name} failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        last
    }

    /// Everything it printed, to look for secrets in.
    fn output(&self) -> Vec<u8> {
        [self.stdout.as_bytes(), self.stderr.as_bytes()].concat()
    }
}

/// A client in `examples/`.
#[derive(Debug, Clone, Copy)]
enum Example {
    Python,
    Node,
}

impl Example {
    fn dir(self) -> PathBuf {
        let name = match self {
            Example::Python => "python",
            Example::Node => "node",
        };
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)
    }

    /// The command that runs it, without its flags.
    fn command(self) -> tokio::process::Command {
        let (program, script) = match self {
            Example::Python => ("python3", "valet_client.py"),
            Example::Node => ("node", "valet_client.js"),
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg(self.dir().join(script)).current_dir(self.dir());
        cmd
    }

    /// Whether its runtime can load what it needs; a message saying what is
    /// missing otherwise.
    async fn ready(self) -> Result<(), String> {
        let (program, check, install) = match self {
            Example::Python => (
                "python3",
                [
                    "-c",
                    "import grpc, grpc_tools.protoc, grpc_status.rpc_status, google.rpc.error_details_pb2",
                ],
                "pip install -r examples/python/requirements.txt",
            ),
            Example::Node => (
                "node",
                [
                    "-e",
                    "require('@grpc/grpc-js'); require('@grpc/proto-loader'); require('protobufjs')",
                ],
                "npm ci in examples/node",
            ),
        };
        let out = tokio::process::Command::new(program)
            .args(check)
            .current_dir(self.dir())
            .output()
            .await
            .map_err(|e| format!("{program} ({e})"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "its packages ({install}): {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .find(|l| l.contains("Error"))
                    .unwrap_or_default()
            ))
        }
    }

    /// Runs it against `valet` with `args`, its API key in `key_file`; at
    /// most a minute.
    async fn run(self, valet: &ValetProcess, key_file: &Path, args: &[&str]) -> Run {
        let endpoint = valet.gateway_url.trim_start_matches("http://");
        let child = self
            .command()
            .args(["--endpoint", endpoint, "--tenant", "acme", "--vendor", "mock"])
            .args(["--write-body", WRITE_BODY, "--reason", REASON])
            .args(args)
            .env("VALET_API_KEY_FILE", key_file)
            .env_remove("VALET_API_KEY")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the example runs");
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("the example ends within a minute")
            .expect("the example exits");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        println!("{self:?} example {args:?}:\n{stdout}{stderr}");
        let lines = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{stderr}")))
            .collect();
        Run {
            code: out.status.code(),
            lines,
            stdout,
            stderr,
        }
    }
}

/// The example's WRITE, as another caller would send it with `key`.
fn same_write(key: &str) -> CallRequest {
    CallRequest {
        tenant: "acme".into(),
        vendor: "mock".into(),
        operation: Operation::Write as i32,
        method: "POST".into(),
        path: "/v1/charges".into(),
        headers: vec![Header {
            name: "content-type".into(),
            value: "application/json".into(),
        }],
        body: WRITE_BODY.as_bytes().to_vec(),
        idempotency_key: key.into(),
        reason: REASON.into(),
    }
}

fn posts(mock: &MockVendor) -> Vec<valet_testkit::Recorded> {
    mock.requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

fn ms(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number of ms: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reads_writes_and_retries_as_valet_says() {
    reads_writes_and_retries_as_valet_says(Example::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_reads_writes_and_retries_as_valet_says() {
    reads_writes_and_retries_as_valet_says(Example::Node).await;
}

/// Runs `example` twice: a READ of two pages (the second refused by a quota
/// of one call at once, then admitted after the RetryInfo delay), a keyed
/// WRITE and its replay; then with a key another caller's WRITE still holds
/// at a slow vendor (IDEMPOTENCY_IN_FLIGHT, then the replay).
async fn reads_writes_and_retries_as_valet_says(example: Example) {
    if let Err(why) = example.ready().await {
        println!("skipped: the {example:?} example needs {why}");
        return;
    }
    let started = std::time::Instant::now();
    let mock = MockVendor::start().await;
    let valet = ValetProcess::spawn(&support::vendor_toml("mock", &mock.base_url())).await;
    let secret = canary(&format!("{example:?}-example"));
    let api_key = valet.acme_mock_caller_for(&secret, &["read", "write"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("api.key");
    std::fs::write(&key_file, format!("{api_key}\n")).expect("key file");
    // One READ at once, then one every 2 s: the example's second page is
    // refused, and admitted once it waits as long as the RetryInfo says.
    valet
        .admin(
            &[
                "quota",
                "set",
                "--tenant",
                "acme",
                "--vendor",
                "mock",
                "--operation",
                "read",
                "--rate",
                "30/m",
                "--burst",
                "1",
            ],
            "",
        )
        .await;

    // A READ, a keyed WRITE, and the same WRITE again.
    let first_key = format!("{example:?}-example-1");
    let run = example
        .run(&valet, &key_file, &["--idempotency-key", &first_key])
        .await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let page1 = run.attempts("read-page-1");
    assert_eq!(page1.len(), 1, "{}", run.stdout);
    assert_eq!(
        (&page1[0]["ok"], &page1[0]["status"]),
        (&Value::from(true), &Value::from(200))
    );
    assert!(ms(&page1[0]["body_bytes"]) > 0, "the echo came back");

    let page2 = run.attempts("read-page-2");
    assert_eq!(page2.len(), 2, "refused once, then admitted:\n{}", run.stdout);
    let refused = page2[0];
    assert_eq!(
        (
            &refused["ok"],
            &refused["code"],
            &refused["reason"],
            &refused["policy"]
        ),
        (
            &Value::from(false),
            &Value::from("RESOURCE_EXHAUSTED"),
            &Value::from("QUOTA_EXCEEDED"),
            &Value::from("acme/mock/read")
        ),
        "{}",
        run.stdout
    );
    let retry_after = ms(&refused["retry_after_ms"]);
    assert!(
        (1..=2000).contains(&retry_after),
        "RetryInfo within the 2 s interval: {retry_after}"
    );
    let admitted = run.answered("read-page-2");
    assert_eq!(admitted["status"], 200);
    assert!(
        ms(&admitted["waited_ms"]) >= retry_after,
        "waited as long as the RetryInfo said: {admitted} after {retry_after} ms"
    );

    let write = run.attempts("write");
    assert_eq!(write.len(), 1, "{}", run.stdout);
    assert_eq!(
        (&write[0]["ok"], &write[0]["status"], &write[0]["replayed"]),
        (&Value::from(true), &Value::from(200), &Value::from(false)),
        "{}",
        run.stdout
    );
    let again = run.answered("write-again");
    assert_eq!(
        (&again["status"], &again["replayed"]),
        (&Value::from(200), &Value::from(true))
    );
    assert_ne!(again["request_id"], write[0]["request_id"]);

    // The vendor saw both pages (not the refused attempt) and one POST, with
    // the credential Valet injected and the example's body.
    let gets: Vec<String> = mock
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(gets, ["/v1/users?page=1", "/v1/users?page=2"]);
    let sent = posts(&mock);
    assert_eq!(sent.len(), 1, "the replay never reached the vendor");
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {secret}").as_str())
    );
    assert_eq!(sent[0].body, WRITE_BODY.as_bytes());

    // IDEMPOTENCY_IN_FLIGHT for real: another caller's WRITE with the key is
    // still at the (slow) vendor when the example sends its own.
    valet.admin(&["quota", "delete", "acme/mock/read"], "").await;
    mock.script(
        "/v1/charges",
        Scripted::status(201)
            .header("content-type", "application/json")
            .body(r#"{"id":"ch_2"}"#)
            .delay(Duration::from_secs(4)),
    );
    let mut gateway = valet.gateway().await;
    let other_key = api_key.clone();
    let inflight_key = format!("{example:?}-inflight");
    let other_write = same_write(&inflight_key);
    let other = tokio::spawn(async move { gateway.call(authed(other_write, &other_key)).await });
    mock.wait_until(|reqs, _| reqs.iter().filter(|r| r.method == "POST").count() == 2)
        .await;
    let inflight = example
        .run(&valet, &key_file, &["--idempotency-key", &inflight_key])
        .await;
    let other = other
        .await
        .expect("task")
        .expect("the other caller's write")
        .into_inner();
    assert_eq!((other.status, other.replayed), (201, false));

    assert_eq!(inflight.code, Some(0), "{}\n{}", inflight.stdout, inflight.stderr);
    let write = inflight.attempts("write");
    assert!(
        write.len() >= 2,
        "refused while in flight, then replayed:\n{}",
        inflight.stdout
    );
    for refused in &write[..write.len() - 1] {
        assert_eq!(
            (&refused["code"], &refused["reason"]),
            (&Value::from("ABORTED"), &Value::from("IDEMPOTENCY_IN_FLIGHT")),
            "{}",
            inflight.stdout
        );
        let hint = ms(&refused["retry_after_ms"]);
        assert!((1..=500).contains(&hint), "a short hint, not the lease: {hint}");
    }
    let replayed = inflight.answered("write");
    assert_eq!(
        (&replayed["status"], &replayed["replayed"]),
        (&Value::from(201), &Value::from(true)),
        "the other caller's answer"
    );
    assert!(ms(&replayed["waited_ms"]) >= ms(&write[write.len() - 2]["retry_after_ms"]));
    let again = inflight.answered("write-again");
    assert_eq!(
        (&again["status"], &again["replayed"]),
        (&Value::from(201), &Value::from(true))
    );
    assert_eq!(posts(&mock).len(), 2, "one POST per key, however many retries");

    // Neither the credential (in any form the scrubber knows) nor the API
    // key appears in anything the example printed.
    for run in [&run, &inflight] {
        assert_eq!(leak::forms_found(&run.output(), &secret), Vec::<&str>::new());
        assert!(!run.stdout.contains(&api_key) && !run.stderr.contains(&api_key));
    }
    assert_eq!(valet.terminate().await.code, Some(0));
    println!("the {example:?} example's test took {:?}", started.elapsed());
}
