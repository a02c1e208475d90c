//! The in-process harness: a real Valet server (the library's own `App` and
//! `server::serve`) on free loopback ports in the test's runtime, with real
//! tonic clients to its Gateway and Admin services.

use super::authed;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Status;
use tonic::transport::Channel;
use valet::app::{App, StartOptions};
use valet::config::{Config, VendorConfig};
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
    /// The running server's state (weak: stopping drops it, and its lock).
    pub app: std::sync::Weak<App>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
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
        let weak_app = Arc::downgrade(&app);
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
            app: weak_app,
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

    /// Creates a key with only the audit_view permission; returns the key.
    pub async fn audit_reader(&self) -> String {
        let req = proto::CreateApiKeyRequest {
            name: "ops-audit".into(),
            permissions: vec![proto::Permission::AuditView as i32],
            ..Default::default()
        };
        self.admin()
            .await
            .create_api_key(authed(req, &self.admin_key))
            .await
            .expect("an audit-view key")
            .into_inner()
            .key
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
