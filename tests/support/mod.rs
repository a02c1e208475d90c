//! Shared end-to-end harness: a real Valet server in-process on free
//! loopback ports, real tonic clients, and the real mock vendor.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_types::StatusExt as _;
use valet::app::{App, StartOptions};
use valet::config::{AuthConfig, Config, VendorConfig};
use valet::proto::admin_client::AdminClient;
use valet::proto::gateway_client::GatewayClient;
use valet::proto::{self, CallRequest, CallResponse, Operation};
use valet::server::{self, Listeners};

/// A running Valet. Dropping it drops `stop`, which shuts the server down.
pub struct Valet {
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    /// TLS for this harness's own clients, when the listeners use it.
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
    pub admin_key: String,
    pub config: Config,
    pub options: StartOptions,
    pub state: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// A vendor entry for `base_url`.
pub fn vendor(name: &str, base_url: &str, auth: AuthConfig) -> VendorConfig {
    VendorConfig {
        allow_insecure_http: base_url.starts_with("http://"),
        timeout_ms: 10_000,
        ..VendorConfig::new(name, base_url, auth)
    }
}

pub fn bearer() -> AuthConfig {
    AuthConfig::Bearer {}
}

impl Valet {
    /// Starts Valet with `vendors` on a fresh state dir.
    pub async fn start(vendors: Vec<VendorConfig>) -> Self {
        let config = Config {
            vendors,
            ..Config::default()
        };
        Self::start_with(config, tempfile::tempdir().expect("tempdir")).await
    }

    /// Starts Valet with `config` on `state` (its `state.dir` is replaced).
    pub async fn start_with(config: Config, state: TempDir) -> Self {
        Self::start_with_options(config, state, StartOptions::default()).await
    }

    /// [`Valet::start_with`] with [`StartOptions`] (AWS test credentials).
    pub async fn start_with_options(mut config: Config, state: TempDir, options: StartOptions) -> Self {
        config.state.dir = state.path().join("state");
        let app = Arc::new(App::open_with(&config, &options).await.expect("valet starts"));
        let listeners = Listeners {
            gateway: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            admin: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            ops: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        };
        let gateway_addr = listeners.gateway.local_addr().expect("addr");
        let admin_addr = listeners.admin.local_addr().expect("addr");
        let ops_addr = listeners.ops.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let serve_options = server::ServeOptions::from_config(&config.server).expect("server options");
        let task = tokio::spawn(async move {
            server::serve(app, listeners, serve_options, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        let admin_key = std::fs::read_to_string(config.state.dir.join("admin.key"))
            .expect("bootstrap admin key")
            .trim()
            .to_owned();
        Self {
            gateway_addr,
            admin_addr,
            ops_addr,
            client_tls: None,
            admin_key,
            config,
            options,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Stops gracefully and returns config and state for a restart.
    pub async fn stop(self) -> (Config, TempDir) {
        let (config, _, state) = self.stop_all().await;
        (config, state)
    }

    async fn stop_all(mut self) -> (Config, StartOptions, TempDir) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("server task");
        (self.config, self.options, self.state)
    }

    /// Stops and starts again on the same state; the admin key is kept.
    pub async fn restart(self) -> Self {
        let key = self.admin_key.clone();
        let (config, options, state) = self.stop_all().await;
        let mut again = Self::start_with_options(config, state, options).await;
        again.admin_key = key;
        again
    }

    pub fn state_dir(&self) -> PathBuf {
        self.config.state.dir.clone()
    }

    pub fn audit_log(&self) -> PathBuf {
        self.state_dir().join("audit.log")
    }

    pub async fn gateway(&self) -> GatewayClient<Channel> {
        GatewayClient::new(self.channel(self.gateway_addr).await.expect("connect gateway"))
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel(self.admin_addr).await.expect("connect admin"))
    }

    /// A channel to `addr`: plain, or with [`Valet::client_tls`] when set.
    pub async fn channel(&self, addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
        match &self.client_tls {
            None => {
                Channel::from_shared(format!("http://{addr}"))
                    .expect("url")
                    .connect()
                    .await
            }
            Some(tls) => {
                Channel::from_shared(format!("https://localhost:{}", addr.port()))
                    .expect("url")
                    .tls_config(tls.clone())?
                    .connect()
                    .await
            }
        }
    }

    /// Stores a credential with the admin key.
    pub async fn put_credential(&self, tenant: &str, vendor: &str, secret: &str) -> proto::CredentialInfo {
        let req = proto::PutCredentialRequest {
            tenant: tenant.into(),
            vendor: vendor.into(),
            secret: secret.into(),
        };
        self.admin()
            .await
            .put_credential(authed(req, &self.admin_key))
            .await
            .expect("put credential")
            .into_inner()
    }

    /// Creates a gateway key and returns it.
    pub async fn api_key(&self, tenants: &[&str], vendors: &[&str], ops: &[Operation]) -> String {
        self.create_key(tenants, vendors, ops, 0).await.0
    }

    /// Creates a key; returns the key and its id.
    pub async fn create_key(
        &self,
        tenants: &[&str],
        vendors: &[&str],
        ops: &[Operation],
        ttl: u64,
    ) -> (String, String) {
        let req =
            proto::CreateApiKeyRequest::gateway("test-caller", tenants, vendors, ops).with_ttl_seconds(ttl);
        let resp = self
            .admin()
            .await
            .create_api_key(authed(req, &self.admin_key))
            .await
            .expect("create key")
            .into_inner();
        (resp.key, resp.info.expect("info").id)
    }

    /// Makes a gateway call with `key`.
    pub async fn call(&self, key: &str, req: CallRequest) -> Result<CallResponse, Status> {
        self.gateway()
            .await
            .call(authed(req, key))
            .await
            .map(|r| r.into_inner())
    }
}

/// A request with `authorization: Bearer <key>`.
pub fn authed<T>(msg: T, key: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().expect("ascii"));
    req
}

/// A READ GET of `path` for tenant/vendor with a reason.
pub fn get(tenant: &str, vendor: &str, path: &str) -> CallRequest {
    CallRequest {
        tenant: tenant.into(),
        vendor: vendor.into(),
        operation: Operation::Read as i32,
        method: "GET".into(),
        path: path.into(),
        reason: "e2e-test".into(),
        ..Default::default()
    }
}

/// The ErrorInfo reason of a status.
/// The outcomes of `n` READ calls for `tenant` to `mock`, one after
/// another: `"ok"` or the refusal's reason.
pub async fn outcomes(valet: &Valet, key: &str, tenant: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(match valet.call(key, get(tenant, "mock", "/x")).await {
            Ok(_) => "ok".to_owned(),
            Err(e) => reason(&e),
        });
    }
    out
}

pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// The response header `name`.
pub fn header<'a>(resp: &'a CallResponse, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_str())
}

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
            let mut buf = into.lock().expect("lock");
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
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
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
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
        // A body may open with its own `[server]` keys; they join ours.
        let (server_extra, body) = match body.trim_start().strip_prefix("[server]\n") {
            Some(rest) => rest.split_at(rest.find("\n[").map_or(rest.len(), |i| i + 1)),
            None => ("", body),
        };
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{gw}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nops_listen = \"127.0.0.1:{ops}\"\n{server_extra}\n[state]\ndir = \"{}\"\n{body}",
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
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone(), Some(tx)),
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
            stderr,
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
        self.admin(
            &["credential", "put", "--tenant", "acme", "--vendor", "mock"],
            &format!("{secret}\n"),
        )
        .await;
        let create = [
            "apikey",
            "create",
            "--name",
            "caller",
            "--tenant",
            "acme",
            "--vendor",
            "mock",
            "--operation",
            operation,
        ];
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

    /// Sends SIGTERM without waiting for the exit.
    pub async fn sigterm(&self) {
        let pid = self.child.id().expect("running").to_string();
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await;
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

/// `GET url` over plain HTTP/1.1: (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.parse().expect("url")).await.expect("GET");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the Prometheus sample `name{labels…}` whose labels include
/// every `key="value"` in `labels`; 0 when there is none. Panics if more
/// than one series matches, so a count cannot be a silent sum.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            let rest = format!(",{rest}");
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!(",{k}=\"{v}\""))))
            .then(|| value.parse().expect("a number"))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches {} series",
        matching.len()
    );
    matching.first().copied().unwrap_or(0.0)
}
