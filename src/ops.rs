//! The ops listener (`server.ops_listen`): plain HTTP for operators and
//! probes, apart from the gRPC listeners.
//!
//! - `GET /metrics`: Prometheus text (see `valet_telemetry::metrics`).
//! - `GET /healthz`: 200 while the process runs (liveness).
//! - `GET /readyz`: 200 when ready for calls (`ready`, or `ready (degraded:
//!   secrets manager unavailable)` while calls are served from the Secrets
//!   Manager cache), else 503 naming why (`draining`, `redis (idempotency)
//!   unavailable`, …) — the same answer `grpc.health.v1.Health` gives.

use crate::app::App;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the ops endpoints until `stop` resolves.
pub async fn serve(listener: TcpListener, app: Arc<App>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    // Connections end with the listener: none may keep `app` alive after.
    let mut connections = tokio::task::JoinSet::new();
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
        let app = app.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(answer(&app, &req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
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
