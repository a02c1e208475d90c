//! Serving: the Gateway and Admin services on their own listeners, stopped
//! together by one shutdown signal.

use crate::admin::AdminService;
use crate::app::App;
use crate::gateway::GatewayService;
use crate::proto::admin_server::AdminServer;
use crate::proto::gateway_server::GatewayServer;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// Room for the rest of a CallRequest beyond its body.
const MESSAGE_OVERHEAD: usize = 64 << 10;

/// The bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// For `valet.v1.Gateway`.
    pub gateway: TcpListener,
    /// For `valet.v1.Admin`.
    pub admin: TcpListener,
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
        })
    }
}

/// Serves both services until `shutdown` resolves, then lets in-flight
/// calls finish. The Gateway listener also serves `grpc.health.v1.Health`
/// (SERVING for `valet.v1.Gateway`, `valet.v1.Admin` and the server, turned
/// NOT_SERVING as shutdown begins) and gRPC server reflection, so grpcurl
/// works without the .proto files.
pub async fn serve(
    app: Arc<App>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GatewayServer<GatewayService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the compiled descriptors are valid");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        // Probes see the replica leave before its listeners close.
        health.set_not_serving::<GatewayServer<GatewayService>>().await;
        health.set_not_serving::<AdminServer<AdminService>>().await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let max_message = app.limits.max_request_body_bytes + app.limits.max_header_bytes + MESSAGE_OVERHEAD;
    let gateway = GatewayServer::new(GatewayService::new(app.clone())).max_decoding_message_size(max_message);
    let admin = AdminServer::new(AdminService::new(app));

    let gateway = Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(gateway)
        .serve_with_incoming_shutdown(incoming(listeners.gateway), stopped(stop_rx.clone()));
    let admin = Server::builder()
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming(listeners.admin), stopped(stop_rx));
    tokio::try_join!(gateway, admin).map(|_| ())
}

/// Accepted connections with Nagle's algorithm off: small gRPC frames must
/// not wait for the peer's delayed ACK (a 40 ms stall per exchange).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
