//! The physical limit of this stack: a minimal hyper reverse proxy that
//! injects `Authorization` and does nothing else — h2c in, pooled HTTP/1.1
//! out, no validation, no audit, no telemetry. Run as a child process of
//! the benchmark (its own CPU time, like the other proxies).

use http::header::{AUTHORIZATION, HeaderValue};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;

/// The environment variable that makes the benchmark binary this proxy:
/// `LISTEN_PORT VENDOR_BASE_URL`.
pub(crate) const ROLE: &str = "VALET_BENCH_LIMIT_PROXY";

/// Serves forever on `port`, forwarding to `vendor` (`http://host:port`).
pub(crate) fn run(port: u16, vendor: String) -> ! {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let bearer = HeaderValue::from_static("Bearer bench-secret-0123456789");
    serve_forever(port, move |req: http::Request<Incoming>| {
        let (client, vendor, bearer) = (client.clone(), vendor.clone(), bearer.clone());
        async move {
            let (mut parts, body) = req.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("{vendor}{path}").parse().expect("uri");
            parts.version = http::Version::HTTP_11;
            parts.headers.insert(AUTHORIZATION, bearer);
            let answer = match client.request(http::Request::from_parts(parts, body)).await {
                Ok(resp) => resp.map(http_body_util::Either::Left),
                Err(_) => http::Response::builder()
                    .status(502)
                    .body(http_body_util::Either::Right(http_body_util::Empty::new()))
                    .expect("response"),
            };
            Ok::<_, Infallible>(answer)
        }
    })
}

/// Serves `handle` forever on `port` (HTTP/1.1 and h2c), on a runtime of
/// its own: the body of both helper processes.
fn serve_forever<F, Fut, B>(port: u16, handle: F) -> !
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the bench helper listens");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = hyper::service::service_fn(handle.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// The environment variable that makes the benchmark binary a vendor that
/// answers every request after 20 ms (`LISTEN_PORT`): a realistic vendor,
/// for the latency an audit fsync adds when it overlaps the round trip.
pub(crate) const SLOW_VENDOR: &str = "VALET_BENCH_SLOW_VENDOR";

/// How long the slow vendor takes.
pub(crate) const SLOW: std::time::Duration = std::time::Duration::from_millis(20);

/// Serves the slow vendor forever on `port` (HTTP/1.1 and h2c).
pub(crate) fn slow_vendor(port: u16) -> ! {
    serve_forever(port, |_req: http::Request<Incoming>| async {
        tokio::time::sleep(SLOW).await;
        let body = http_body_util::Full::new(bytes::Bytes::from_static(crate::peers::BODY.as_bytes()));
        Ok::<_, Infallible>(
            http::Response::builder()
                .status(200)
                .body(body)
                .expect("response"),
        )
    })
}
