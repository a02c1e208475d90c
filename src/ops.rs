//! The ops listener (`server.ops_listen`): plain HTTP for operators and
//! probes, apart from the gRPC listeners.
//!
//! - `GET /metrics`: Prometheus text (see `valet_telemetry::metrics`).
//! - `GET /healthz`: 200 while the process runs (liveness).
//! - `GET /readyz`: 200 when ready for calls (`ready`, or `ready (degraded:
//!   secrets manager unavailable)` while calls are served from the Secrets
//!   Manager cache), else 503 naming why (`draining`, `redis (idempotency)
//!   unavailable`, …) — the same answer `grpc.health.v1.Health` gives.
//!
//! Bounded like the gRPC listeners, so silent sockets cannot exhaust the
//! process's file descriptors: at most [`MAX_CONNECTIONS`] at once (more
//! are closed at accept), a request's headers must arrive within the
//! handshake timeout, and no connection lives past [`MAX_LIFETIME`].

use crate::app::App;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Scrapers and probes need few connections.
pub const MAX_CONNECTIONS: usize = 64;

/// Scrapers reconnect; a connection held longer is closed.
pub const MAX_LIFETIME: Duration = Duration::from_secs(60);

/// Serves the ops endpoints until `stop` resolves. A request's headers must
/// arrive within `header_timeout`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    header_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    // Connections end with the listener: none may keep `app` alive after.
    let mut connections = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            () = &mut stop => {
                connections.shutdown().await;
                return;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "ops listener accept failed");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the cap: closed at once
            continue;
        };
        let app = app.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(answer(&app, &req)) }
            });
            // HTTP/1 only: probing for HTTP/2 would wait on a silent socket
            // before any header timeout applies.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let _ = tokio::time::timeout(
                MAX_LIFETIME,
                builder.serve_connection(TokioIo::new(stream), service),
            )
            .await;
        });
    }
}

fn answer(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, app.metrics.render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let reasons = app.readiness.reasons();
            let degraded = app.readiness.degraded();
            if reasons.is_empty() && degraded.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else if reasons.is_empty() {
                text(
                    StatusCode::OK,
                    format!("ready (degraded: {})\n", degraded.join(", ")),
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", reasons.join(", ")),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
