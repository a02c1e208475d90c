//! Valet as it ships: `valet serve` as a child process on the embedded
//! defaults (state on disk, the production `tracing` subscriber, the JSON
//! call line on stdout — read by a pipe, as a container runtime would), set
//! up through the admin CLI like a new user does.

use crate::peers::Process;
use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running Valet and the keys the benchmark calls it with.
pub(crate) struct Valet {
    pub(crate) process: Process,
    pub(crate) gateway_port: u16,
    pub(crate) ops_port: u16,
    /// A key granted READ for tenant `acme` × vendor `mock`.
    pub(crate) read_key: String,
    /// A key granted WRITE.
    pub(crate) write_key: String,
    admin: Admin,
}

/// `extra`: lines of `[section]` keys added to the shipped defaults (the
/// audit durability mode). Vendors: `mock` (nginx) and `slow` (20 ms).
pub(crate) fn start(dir: &Path, vendor_http1: u16, slow_vendor: u16, extra: &str) -> Valet {
    let (gateway_port, admin_port, ops_port) = (crate::free_port(), crate::free_port(), crate::free_port());
    let state = dir.join("state");
    let config = dir.join("valet.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{gateway_port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
             ops_listen = \"127.0.0.1:{ops_port}\"\n\n[state]\ndir = \"{}\"\n\n{extra}\n\
             [[vendors]]\nname = \"mock\"\nbase_url = \"http://127.0.0.1:{vendor_http1}\"\n\
             allow_insecure_http = true\nauth = {{ scheme = \"bearer\" }}\ntimeout_ms = 10000\n\n\
             [[vendors]]\nname = \"slow\"\nbase_url = \"http://127.0.0.1:{slow_vendor}\"\n\
             allow_insecure_http = true\nauth = {{ scheme = \"bearer\" }}\ntimeout_ms = 10000\n",
            state.display()
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_valet"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("valet runs");
    drain_until_serving(child.stdout.take().expect("stdout"));
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || std::io::copy(&mut { stderr }, &mut std::io::sink()));
    let process = Process::new(child);
    let admin = Admin {
        endpoint: format!("http://127.0.0.1:{admin_port}"),
        key_file: state.join("admin.key"),
    };
    for vendor in ["mock", "slow"] {
        admin.run(
            &["credential", "put", "--tenant", "acme", "--vendor", vendor],
            "bench-secret-0123456789\n",
        );
    }
    let key = |name: &str, operation: &str| {
        let args = [
            "apikey",
            "create",
            "--name",
            name,
            "--tenant",
            "acme",
            "--vendor",
            "mock",
            "--vendor",
            "slow",
            "--operation",
            operation,
        ];
        admin.run(&args, "").trim().to_owned()
    };
    Valet {
        read_key: key("bench-read", "read"),
        write_key: key("bench-write", "write"),
        admin,
        process,
        gateway_port,
        ops_port,
    }
}

impl Valet {
    /// Stores a credential on `mock` for tenants `t0`…`t{n-1}` over the
    /// Admin API (the CLI would start a process for each) and returns a key
    /// granted READ for all of them.
    pub(crate) async fn many_tenants(&self, n: usize) -> String {
        use valet::proto::admin_client::AdminClient;
        let key: tonic::metadata::MetadataValue<_> = format!(
            "Bearer {}",
            std::fs::read_to_string(&self.admin.key_file)
                .expect("admin key")
                .trim()
        )
        .parse()
        .expect("admin key");
        let channel = tonic::transport::Channel::from_shared(self.admin.endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("admin connects");
        let admin = AdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", key.clone());
            Ok(req)
        });
        let tenants: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        // Sixteen at a time: each put is its own audited transaction.
        let workers: Vec<_> = (0..16)
            .map(|w| {
                let (mut admin, tenants) = (admin.clone(), tenants.clone());
                tokio::spawn(async move {
                    for tenant in tenants.iter().skip(w).step_by(16) {
                        let request = valet::proto::PutCredentialRequest {
                            tenant: tenant.clone(),
                            vendor: "mock".into(),
                            secret: format!("bench-secret-{tenant}-0123456789"),
                        };
                        admin.put_credential(request).await.expect("credential put");
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.expect("puts");
        }
        let request = valet::proto::CreateApiKeyRequest {
            name: "bench-tenants".into(),
            tenants,
            vendors: vec!["mock".into()],
            operations: vec![valet::proto::Operation::Read as i32],
            ..Default::default()
        };
        admin
            .clone()
            .create_api_key(request)
            .await
            .expect("key created")
            .into_inner()
            .key
    }
}

/// Reads stdout until the "valet serving" line, then keeps draining it.
fn drain_until_serving(stdout: std::process::ChildStdout) {
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("valet stdout");
        assert!(n > 0, "valet exited before serving");
        if line.contains("valet serving") {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
}

struct Admin {
    endpoint: String,
    key_file: PathBuf,
}

impl Admin {
    fn run(&self, args: &[&str], stdin: &str) -> String {
        let mut child = Command::new(env!("CARGO_BIN_EXE_valet"))
            .args(["admin", "--endpoint", &self.endpoint, "--api-key-file"])
            .arg(&self.key_file)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("valet admin runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("stdin");
        let out = child.wait_with_output().expect("valet admin exits");
        assert!(
            out.status.success(),
            "valet admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// `valet_calls_total` summed over its series with `outcome="OK"`, and over
/// all outcomes, from `/metrics`: the calls Valet itself counted.
pub(crate) fn calls_counted(ops_port: u16) -> (u64, u64) {
    let text = crate::http_get(ops_port, "/metrics");
    let (mut ok, mut all) = (0, 0);
    for line in text.lines().filter(|l| l.starts_with("valet_calls_total{")) {
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        all += value;
        if line.contains("outcome=\"OK\"") {
            ok += value;
        }
    }
    (ok, all)
}
