//! The process harness: the built `valet` binary run as a child process
//! (`valet serve` on free ports, `valet admin` against it), its output
//! collected line by line.

use std::path::{Path, PathBuf};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use valet::proto::gateway_client::GatewayClient;

/// The path of the `valet` binary built for these tests.
pub fn valet_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_valet"))
}

/// Runs `valet admin --endpoint … --api-key-file KEY_FILE ARGS` with `stdin`.
pub async fn admin_cli(endpoint: &str, key_file: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(valet_bin())
        .args(["admin", "--endpoint", endpoint, "--api-key-file"])
        .arg(key_file)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("valet runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("write stdin");
    drop(input);
    child.wait_with_output().await.expect("valet exits")
}

/// A free loopback port (bound, then released for a child process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Collects a child's output line by line; resolves `ready` when the
/// "valet serving" log line shows.
pub fn collect(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    ready: Option<oneshot::Sender<()>>,
) -> tokio::task::JoinHandle<()> {
    collect_counting(stream, into, ready, tokio::sync::watch::channel(0).0)
}

/// [`collect`], counting the lines in `lines` so a test can await one.
fn collect_counting(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    ready: Option<oneshot::Sender<()>>,
    lines_seen: tokio::sync::watch::Sender<u64>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncBufReadExt as _;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stream).lines();
        let mut ready = ready;
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("valet serving")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(());
            }
            {
                let mut buf = into.lock().expect("lock");
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
            }
            lines_seen.send_modify(|n| *n += 1);
        }
    })
}

/// The built `valet serve` binary in its own process, on free ports.
pub struct ValetProcess {
    child: tokio::process::Child,
    /// The Gateway's URL.
    pub gateway_url: String,
    /// The Admin service's URL.
    pub admin_url: String,
    /// The ops listener's URL (`/metrics`, `/healthz`, `/readyz`).
    pub ops_url: String,
    /// Its bootstrap admin key file.
    pub key_file: PathBuf,
    /// Its state dir.
    pub state: PathBuf,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stdout_lines: tokio::sync::watch::Receiver<u64>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// Its config file.
    pub config: PathBuf,
    readers: Vec<tokio::task::JoinHandle<()>>,
    _dir: TempDir,
}

/// How a [`ValetProcess`] ended.
pub struct Exited {
    /// Its exit code.
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Keeps its config and state dir until the test is done with them.
    _dir: TempDir,
}

impl Exited {
    /// Its state dir, as it left it.
    pub fn state_dir(&self) -> PathBuf {
        self._dir.path().join("state")
    }
}

impl ValetProcess {
    /// Starts `valet serve` with `[server]`, `[state]` and then `body` as its
    /// config, and waits for it to serve. A `body` that begins with
    /// `[server]` adds its keys to the listeners'.
    pub async fn spawn(body: &str) -> Self {
        Self::spawn_with(body, &[]).await
    }

    /// [`ValetProcess::spawn`] with extra environment variables.
    pub async fn spawn_with(body: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_in(tempfile::tempdir().expect("tempdir"), body, env).await
    }

    /// Kills it with SIGKILL (no chance to clean up) and returns its
    /// directory, state included, for [`ValetProcess::spawn_in`].
    pub async fn kill9(mut self) -> TempDir {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self._dir
    }

    /// Starts `valet serve` on the state kept in `dir` (on new ports).
    pub async fn spawn_in(dir: TempDir, body: &str, env: &[(&str, &str)]) -> Self {
        let (gw, admin, ops) = (free_port(), free_port(), free_port());
        let state = dir.path().join("state");
        let config = dir.path().join("valet.toml");
        // Top-level keys (`redis_url = …`) before the first table go first.
        let (top, body) = match body.find("\n[") {
            Some(i) if !body.trim_start().starts_with('[') => body.split_at(i + 1),
            _ => ("", body),
        };
        // A body may open with its own `[server]` keys; they join ours.
        let (server_extra, body) = match body.trim_start().strip_prefix("[server]\n") {
            Some(rest) => rest.split_at(rest.find("\n[").map_or(rest.len(), |i| i + 1)),
            None => ("", body),
        };
        let text = format!(
            "{top}[server]\nlisten = \"127.0.0.1:{gw}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nops_listen = \"127.0.0.1:{ops}\"\n{server_extra}\n[state]\ndir = \"{}\"\n{body}",
            state.display()
        );
        std::fs::write(&config, text).expect("config");
        let mut child = tokio::process::Command::new(valet_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("valet runs");
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel();
        let (lines_tx, stdout_lines) = tokio::sync::watch::channel(0);
        let readers = vec![
            collect_counting(
                child.stdout.take().expect("stdout"),
                stdout.clone(),
                Some(tx),
                lines_tx,
            ),
            collect(child.stderr.take().expect("stderr"), stderr.clone(), None),
        ];
        if rx.await.is_err() {
            panic!(
                "valet did not start: {}",
                String::from_utf8_lossy(&stderr.lock().expect("lock"))
            );
        }
        Self {
            child,
            gateway_url: format!("http://127.0.0.1:{gw}"),
            admin_url: format!("http://127.0.0.1:{admin}"),
            ops_url: format!("http://127.0.0.1:{ops}"),
            key_file: state.join("admin.key"),
            state,
            stdout,
            stdout_lines,
            stderr,
            config,
            readers,
            _dir: dir,
        }
    }

    /// Runs `valet admin ARGS` against it; returns stdout, failing on error.
    pub async fn admin(&self, args: &[&str], stdin: &str) -> String {
        let out = admin_cli(&self.admin_url, &self.key_file, args, stdin).await;
        assert!(
            out.status.success(),
            "valet admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Through the CLI: stores `secret` for tenant `acme` × vendor `mock` and
    /// creates a key for them allowed `operation`; returns the key.
    pub async fn acme_mock_caller(&self, secret: &str, operation: &str) -> String {
        self.acme_mock_caller_for(secret, &[operation]).await
    }

    /// [`ValetProcess::acme_mock_caller`] with a key allowed each of
    /// `operations`.
    pub async fn acme_mock_caller_for(&self, secret: &str, operations: &[&str]) -> String {
        self.admin(
            &["credential", "put", "--tenant", "acme", "--vendor", "mock"],
            &format!("{secret}\n"),
        )
        .await;
        self.caller_key("acme", "mock", operations).await
    }

    /// Through the CLI: a key named `caller` for `tenant` × `vendor`,
    /// allowed each of `operations`; returns the key.
    pub async fn caller_key(&self, tenant: &str, vendor: &str, operations: &[&str]) -> String {
        let mut create = vec![
            "apikey", "create", "--name", "caller", "--tenant", tenant, "--vendor", vendor,
        ];
        for operation in operations {
            create.extend(["--operation", operation]);
        }
        self.admin(&create, "").await.trim().to_owned()
    }

    /// A Gateway client.
    pub async fn gateway(&self) -> GatewayClient<Channel> {
        GatewayClient::connect(self.gateway_url.clone())
            .await
            .expect("connect gateway")
    }

    /// What it has written to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("lock")).into_owned()
    }

    /// Waits (up to 30 s) until stdout holds `needle` `times` times; returns
    /// stdout so far.
    pub async fn wait_for_stdout(&self, needle: &str, times: usize) -> String {
        let mut lines = self.stdout_lines.clone();
        let wait = async {
            loop {
                let so_far = self.stdout_so_far();
                if so_far.matches(needle).count() >= times {
                    return so_far;
                }
                if lines.changed().await.is_err() {
                    return self.stdout_so_far(); // stdout closed: the process is gone
                }
            }
        };
        let so_far = tokio::time::timeout(std::time::Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} (x{times}) on stdout: {}", self.stdout_so_far()));
        assert!(
            so_far.matches(needle).count() >= times,
            "stdout closed before {needle:?} (x{times}): {so_far}"
        );
        so_far
    }

    /// Sends `signal` (e.g. "HUP") without waiting for its effect.
    pub async fn signal(&self, signal: &str) {
        assert!(self.kill(signal).await, "kill -{signal}");
    }

    /// `kill -SIGNAL` of the process; whether it was delivered.
    async fn kill(&self, signal: &str) -> bool {
        let pid = self.child.id().expect("running").to_string();
        tokio::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .is_ok_and(|s| s.success())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM without waiting for the exit.
    pub async fn sigterm(&self) {
        self.kill("TERM").await;
    }

    /// SIGTERM; waits for the exit and for all its output.
    pub async fn terminate(mut self) -> Exited {
        self.sigterm().await;
        let code = self.child.wait().await.ok().and_then(|s| s.code());
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        let take =
            |b: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().expect("lock"));
        Exited {
            code,
            stdout: take(&self.stdout),
            stderr: take(&self.stderr),
            _dir: self._dir,
        }
    }
}
