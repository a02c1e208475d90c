//! Serving: the Gateway and Admin services on their own listeners, stopped
//! together by one shutdown signal.

use crate::admin::AdminService;
use crate::app::App;
use crate::config::ListenerTls;
use crate::gateway::GatewayService;
use crate::proto::admin_server::AdminServer;
use crate::proto::gateway_server::GatewayServer;
use crate::{ops, readiness};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::server::NamedService as _;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Room for the rest of a CallRequest beyond its body.
const MESSAGE_OVERHEAD: usize = 64 << 10;

/// The bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// For `valet.v1.Gateway`.
    pub gateway: TcpListener,
    /// For `valet.v1.Admin`.
    pub admin: TcpListener,
    /// For `/metrics`, `/healthz` and `/readyz`.
    pub ops: TcpListener,
}

impl Listeners {
    /// Binds both addresses from the config; the error names the address.
    pub async fn bind(config: &crate::config::Config) -> Result<Self, String> {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))
        };
        Ok(Self {
            gateway: bind(config.server.listen).await?,
            admin: bind(config.server.admin_listen).await?,
            ops: bind(config.server.ops_listen).await?,
        })
    }
}

/// Serves both services until `shutdown` resolves, then lets in-flight
/// calls finish. The Gateway listener also serves `grpc.health.v1.Health`
/// and gRPC server reflection (so grpcurl works without the .proto files);
/// the ops listener serves `/metrics`, `/healthz` and `/readyz`.
///
/// Health is SERVING for `valet.v1.Gateway`, `valet.v1.Admin` and the server
/// (`""`) while [`readiness`] holds: it turns NOT_SERVING while a required
/// backend fails its probe (every `probe_interval`), and for good as
/// shutdown begins; `drain_delay` later the listeners stop accepting.
/// In-flight calls then have `shutdown_grace` to finish; connections still
/// open after it are closed. The ops listener stays up until the gRPC
/// listeners are done.
pub async fn serve(
    app: Arc<App>,
    listeners: Listeners,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let ServeOptions {
        probe_interval,
        shutdown_grace,
        drain_delay,
        max_concurrent_calls,
        tls,
    } = options;
    let builder = || -> Result<Server, tonic::transport::Error> {
        match &tls {
            Some(tls) => Server::builder().tls_config(tls.clone()),
            None => Ok(Server::builder()),
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the compiled descriptors are valid");
    // One lock orders every report, so a probe that finished just before
    // the drain began cannot report SERVING after it.
    let health = Arc::new(tokio::sync::Mutex::new(health));
    // Start SERVING: `App::open` has just reached every backend it needs.
    // The first probe follows one interval later.
    report(&health, &app.readiness).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_grace = stop_rx.clone();
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let watcher = tokio::spawn(watch_backends(
        app.clone(),
        health.clone(),
        probe_interval,
        stopped(stop_rx.clone()),
    ));
    let draining = app.readiness.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Probes see the replica leave before its listeners close.
        {
            let health = health.lock().await;
            draining.start_draining();
            set_all(&health, false).await;
        }
        // Health pollers see NOT_SERVING while the listeners still accept.
        tokio::time::sleep(drain_delay).await;
        let _ = stop_tx.send(true);
    });

    let max_message = app.limits.max_request_body_bytes + app.limits.max_header_bytes + MESSAGE_OVERHEAD;
    let gateway = GatewayServer::new(GatewayService::new(app.clone(), max_concurrent_calls))
        .max_decoding_message_size(max_message);
    let admin = AdminServer::new(AdminService::new(app.clone()));
    let (ops_stop, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let ops = tokio::spawn(ops::serve(listeners.ops, app.clone(), async move {
        let _ = ops_stopped.await;
    }));

    let gateway = builder()?
        // The caller's deadline is read once, on arrival (see `deadline`).
        .layer(crate::deadline::DeadlineLayer::new(app.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(gateway)
        .serve_with_incoming_shutdown(incoming(listeners.gateway), stopped(stop_rx.clone()));
    let admin = builder()?
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming(listeners.admin), stopped(stop_rx));
    let serving = async { tokio::try_join!(gateway, admin).map(|_| ()) };
    let grace_over = async {
        stopped(stop_rx_grace).await;
        tokio::time::sleep(shutdown_grace).await;
    };
    let served = tokio::select! {
        served = serving => served,
        () = grace_over => {
            tracing::warn!(
                grace_ms = shutdown_grace.as_millis() as u64,
                "shutdown grace period over; closing the connections still open"
            );
            Ok(())
        }
    };
    // The ops listener outlives the gRPC ones, so probes see the drain.
    let _ = ops_stop.send(());
    let _ = ops.await;
    let _ = watcher.await;
    // The OTLP reader's last push blocks; keep it off the runtime's workers.
    let metrics = app.metrics.clone();
    let _ = tokio::task::spawn_blocking(move || metrics.shutdown()).await;
    served
}

/// How [`serve`] runs, from `[server]`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How often required backends are probed.
    pub probe_interval: Duration,
    /// How long in-flight calls may finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// How long the listeners keep accepting after health turns NOT_SERVING.
    pub drain_delay: Duration,
    /// Gateway calls handled at once.
    pub max_concurrent_calls: usize,
    /// TLS for the Gateway and Admin listeners.
    pub tls: Option<ServerTlsConfig>,
}

impl ServeOptions {
    /// The options `[server]` sets, its TLS files read; the error names the
    /// file and what is wrong with it.
    pub fn from_config(server: &crate::config::ServerConfig) -> Result<Self, String> {
        Ok(Self {
            probe_interval: Duration::from_millis(server.health_probe_interval_ms),
            shutdown_grace: Duration::from_millis(server.shutdown_grace_ms),
            drain_delay: Duration::from_millis(server.drain_delay_ms),
            max_concurrent_calls: server.max_concurrent_calls,
            tls: server.tls.as_ref().map(listener_tls).transpose()?,
        })
    }
}

/// Reads `[server.tls]`'s files into tonic's TLS config.
fn listener_tls(tls: &ListenerTls) -> Result<ServerTlsConfig, String> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("server.tls.{key} {}: {e}", path.display()))
    };
    let cert = read("cert_file", &tls.cert_file)?;
    let key = read("key_file", &tls.key_file)?;
    let pem_holds =
        |bytes: &[u8], what: &str| String::from_utf8_lossy(bytes).contains(&format!("-----BEGIN {what}"));
    if !pem_holds(&cert, "CERTIFICATE") {
        return Err(format!(
            "server.tls.cert_file {}: holds no PEM certificate",
            tls.cert_file.display()
        ));
    }
    if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
        return Err(format!(
            "server.tls.key_file {}: holds no PEM private key",
            tls.key_file.display()
        ));
    }
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(path) = &tls.client_ca_file {
        let ca = read("client_ca_file", path)?;
        if !pem_holds(&ca, "CERTIFICATE") {
            return Err(format!(
                "server.tls.client_ca_file {}: holds no PEM certificate",
                path.display()
            ));
        }
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false);
    }
    Ok(config)
}

/// Re-probes the required backends every `interval` until `stop`.
async fn watch_backends(
    app: Arc<App>,
    health: Arc<tokio::sync::Mutex<HealthReporter>>,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut was_ready = app.readiness.is_ready();
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(interval) => {}
        }
        let ready = readiness::probe(&app).await;
        if ready != was_ready {
            tracing::info!(ready, "readiness changed");
            report(&health, &app.readiness).await;
            was_ready = ready;
        }
    }
}

/// Reports the readiness as it is now, under the reporter's lock.
async fn report(health: &tokio::sync::Mutex<HealthReporter>, readiness: &readiness::Readiness) {
    let health = health.lock().await;
    set_all(&health, readiness.is_ready()).await;
}

/// Sets every reported service to SERVING or NOT_SERVING.
async fn set_all(health: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health
        .set_service_status(GatewayServer::<GatewayService>::NAME, status)
        .await;
    health
        .set_service_status(AdminServer::<AdminService>::NAME, status)
        .await;
}

/// Accepted connections with Nagle's algorithm off: small gRPC frames must
/// not wait for the peer's delayed ACK (a 40 ms stall per exchange).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
