//! Serving: the Gateway and Admin services on their own listeners, stopped
//! together by one shutdown signal.

use crate::admin::AdminService;
use crate::app::App;
use crate::config::ListenerTls;
use crate::gateway::GatewayService;
use crate::proto::admin_server::AdminServer;
use crate::proto::gateway_server::GatewayServer;
use crate::transport::{self, ConnectionLimits, Rescue};
use crate::{ops, readiness};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::server::NamedService as _;
use tonic::transport::Server;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// Room for the rest of a CallRequest beyond its body.
const MESSAGE_OVERHEAD: usize = 64 << 10;

/// How often API key last-use times are written to their file.
const LAST_USE_FLUSH: Duration = Duration::from_secs(5);

/// The largest Admin request decoded (tonic's default).
const ADMIN_MESSAGE_LIMIT: usize = 4 << 20;

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
        connections,
        keepalive_interval,
        keepalive_timeout,
        tls,
    } = options;
    let builder = || -> Result<Server, tonic::transport::Error> {
        let server = Server::builder()
            // Peers that vanished without closing are found and dropped.
            .http2_keepalive_interval(keepalive_interval)
            .http2_keepalive_timeout(Some(keepalive_timeout));
        match &tls {
            // The TLS handshake is bounded like the HTTP/2 one.
            Some(tls) => server.tls_config(tls.clone().timeout(connections.handshake_timeout)),
            None => Ok(server),
        }
    };
    let health = HealthReporter::new();
    let health_service = HealthService::from_health_reporter(health.clone());
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
    crate::sweeper::spawn(&app);
    crate::expiry::spawn(&app);
    crate::reminder::spawn(&app);
    let flusher = tokio::spawn(flush_last_use(app.clone(), stopped(stop_rx.clone())));
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

    // The transport's limit sits well above the body limit, so a body just
    // over it reaches validation (BODY_TOO_LARGE, with tenant and vendor
    // in the log line); only a message far beyond it is refused unread, and
    // the rescue layer answers that with the same status and reason.
    let body_limit = app.limits.max_request_body_bytes;
    let max_message = 2 * (body_limit + app.limits.max_header_bytes) + MESSAGE_OVERHEAD;
    let gateway = GatewayServer::new(GatewayService::new(app.clone(), max_concurrent_calls))
        .max_decoding_message_size(max_message);
    let admin =
        AdminServer::new(AdminService::new(app.clone())).max_decoding_message_size(ADMIN_MESSAGE_LIMIT);
    let (ops_stop, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let header_timeout = connections.handshake_timeout;
    let ops = tokio::spawn(ops::serve(
        listeners.ops,
        app.clone(),
        header_timeout,
        async move {
            let _ = ops_stopped.await;
        },
    ));

    // Each listener's reflection lists what that listener serves.
    let (gateway_reflection, gateway_reflection_alpha) = reflection(&[
        GatewayServer::<GatewayService>::NAME,
        HealthServer::<Health>::NAME,
    ]);
    let (admin_reflection, admin_reflection_alpha) = reflection(&[AdminServer::<AdminService>::NAME]);
    let health_service = HealthServer::new(Health {
        inner: health_service,
        stop: stop_rx.clone(),
    });
    let gateway = builder()?
        // The caller's deadline is read once, on arrival; a spent one is
        // answered at once (see `deadline`).
        .layer(crate::deadline::DeadlineLayer::new(app.clone()))
        // Oversized and malformed messages answered like any refusal.
        .layer(Rescue::new(app.clone(), max_message, Some(body_limit)))
        .add_service(health_service)
        .add_service(gateway_reflection)
        .add_service(gateway_reflection_alpha)
        .add_service(gateway)
        .serve_with_incoming_shutdown(
            transport::incoming(listeners.gateway, connections, "gateway"),
            stopped(stop_rx.clone()),
        );
    let admin = builder()?
        .layer(Rescue::new(app.clone(), ADMIN_MESSAGE_LIMIT, None))
        .add_service(admin_reflection)
        .add_service(admin_reflection_alpha)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            transport::incoming(listeners.admin, connections, "admin"),
            stopped(stop_rx),
        );
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
    let _ = flusher.await;
    // The uses of the calls just finished.
    let last = app.clone();
    let _ = tokio::task::spawn_blocking(move || last.flush_last_use()).await;
    // Flushing telemetry is the caller's, within what is left of the drain
    // and the grace period (see `valet_telemetry::subscriber::flush`).
    served
}

/// Writes API key last-use times every [`LAST_USE_FLUSH`] until `stop`
/// (the final write follows the drain, in [`serve`]).
async fn flush_last_use(app: Arc<App>, stop: impl Future<Output = ()>) {
    let mut every = tokio::time::interval(LAST_USE_FLUSH);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = every.tick() => {
                let app = app.clone();
                let _ = tokio::task::spawn_blocking(move || app.flush_last_use()).await;
            }
        }
    }
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
    /// Each gRPC listener's connection cap and handshake timeout.
    pub connections: ConnectionLimits,
    /// HTTP/2 PINGs on a silent connection this often (`None`: never).
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered.
    pub keepalive_timeout: Duration,
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
            connections: ConnectionLimits {
                max_connections: server.max_connections,
                handshake_timeout: Duration::from_millis(server.handshake_timeout_ms),
            },
            keepalive_interval: Some(server.http2_keepalive_interval_ms)
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            keepalive_timeout: Duration::from_millis(server.http2_keepalive_timeout_ms),
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
        let ready = app.probe().await;
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

/// gRPC server reflection, v1 and v1alpha (Python's grpcio-reflection and
/// older grpcurl), listing `services` and reflection itself.
fn reflection(
    services: &[&str],
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let configure = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            .include_reflection_service(false);
        services
            .iter()
            .chain(&[
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ])
            .fold(builder, |builder, name| builder.with_service_name(*name))
    };
    (
        configure()
            .build_v1()
            .expect("the compiled descriptors are valid"),
        configure()
            .build_v1alpha()
            .expect("the compiled descriptors are valid"),
    )
}

/// `grpc.health.v1.Health`, whose `Watch` streams end once the listeners
/// stop accepting — NOT_SERVING their last message — so a load balancer's
/// open watch does not hold the exit up for the whole grace period.
#[derive(Debug)]
struct Health {
    inner: HealthService,
    stop: tokio::sync::watch::Receiver<bool>,
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Health {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        self.inner.check(request).await
    }

    type WatchStream = std::pin::Pin<
        Box<
            dyn tonic::codegen::tokio_stream::Stream<Item = Result<HealthCheckResponse, tonic::Status>>
                + Send,
        >,
    >;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let inner = self.inner.watch(request).await?.into_inner();
        Ok(tonic::Response::new(Box::pin(WatchUntilStop {
            inner: Box::pin(inner),
            stop: Box::pin(stop_signal(self.stop.clone())),
            last: None,
            done: false,
        })))
    }
}

async fn stop_signal(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A health watch that ends at shutdown, with NOT_SERVING sent last.
struct WatchUntilStop<S> {
    inner: std::pin::Pin<Box<S>>,
    stop: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    last: Option<i32>,
    done: bool,
}

impl<S> tonic::codegen::tokio_stream::Stream for WatchUntilStop<S>
where
    S: tonic::codegen::tokio_stream::Stream<Item = Result<HealthCheckResponse, tonic::Status>>,
{
    type Item = Result<HealthCheckResponse, tonic::Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // Changes already reported come first, so nothing is skipped.
        if let Poll::Ready(item) = this.inner.as_mut().poll_next(cx) {
            if let Some(Ok(answer)) = &item {
                this.last = Some(answer.status);
            }
            return Poll::Ready(item);
        }
        if this.stop.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.done = true;
        let not_serving = ServingStatus::NotServing as i32;
        if this.last == Some(not_serving) {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Ok(HealthCheckResponse { status: not_serving })))
        }
    }
}
