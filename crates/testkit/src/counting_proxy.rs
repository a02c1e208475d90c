//! A counting HTTP proxy in front of the Secrets Manager emulator.
//!
//! Tests count Secrets Manager requests here — outside Valet, so a test does
//! not trust Valet's own bookkeeping — by the `X-Amz-Target` operation name.
//! It can also answer as an unavailable or throttling service, or hang: take
//! requests and never answer them, as a wedged endpoint or a black-holed
//! route does.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

struct State {
    counts: Mutex<HashMap<String, usize>>,
    down: AtomicBool,
    hang: AtomicBool,
    throttle: AtomicUsize,
    /// One operation (e.g. `PutSecretValue`) answered 503 while set.
    refused: Mutex<Option<String>>,
    /// Set when the proxy is dropped, so hung requests end with it.
    closed: tokio::sync::watch::Sender<bool>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            counts: Mutex::default(),
            down: AtomicBool::default(),
            hang: AtomicBool::default(),
            throttle: AtomicUsize::default(),
            refused: Mutex::default(),
            closed: tokio::sync::watch::channel(false).0,
        }
    }
}

/// The running proxy; stops when dropped.
pub struct CountingProxy {
    addr: std::net::SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.closed.send_replace(true);
    }
}

impl CountingProxy {
    /// Proxies to `upstream` (an `http://host:port` URL).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let upstream: http::Uri = upstream.parse().expect("upstream URL");
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, client, upstream) = (task_state.clone(), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| forward(req, state.clone(), client.clone(), upstream.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// Its endpoint URL, for Valet's `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen for `operation` (e.g. "GetSecretValue"), answered or not.
    pub fn count(&self, operation: &str) -> usize {
        self.state
            .counts
            .lock()
            .expect("lock")
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    /// Forgets all counts.
    pub fn reset(&self) {
        self.state.counts.lock().expect("lock").clear();
    }

    /// While down, every request gets 503 ServiceUnavailable.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// While hanging, every request is read, counted and never answered (its
    /// connection stays open until the client gives up or the proxy is
    /// dropped). Requests already hung stay hung after this is turned off.
    pub fn set_hang(&self, hang: bool) {
        self.state.hang.store(hang, Ordering::SeqCst);
    }

    /// While set, requests of `operation` (e.g. `PutSecretValue`) get 503
    /// ServiceUnavailable and the rest go through: a store that reads but
    /// cannot write.
    pub fn refuse(&self, operation: Option<&str>) {
        *self.state.refused.lock().expect("lock") = operation.map(str::to_owned);
    }

    /// The next `n` requests get a ThrottlingException.
    pub fn throttle_next(&self, n: usize) {
        self.state.throttle.store(n, Ordering::SeqCst);
    }
}

async fn forward(
    req: Request<Incoming>,
    state: Arc<State>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    upstream: http::Uri,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let op = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("unknown")
        .to_owned();
    *state.counts.lock().expect("lock").entry(op.clone()).or_default() += 1;
    if state.refused.lock().expect("lock").as_deref() == Some(op.as_str()) {
        return Ok(aws_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "emulated write outage",
        ));
    }

    if state.hang.load(Ordering::SeqCst) {
        let mut closed = state.closed.subscribe();
        let _ = closed.wait_for(|closed| *closed).await;
        return Ok(aws_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "proxy closed",
        ));
    }

    if state.down.load(Ordering::SeqCst) {
        return Ok(aws_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "emulated outage",
        ));
    }
    let throttled = state
        .throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if throttled {
        return Ok(aws_error(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Rate exceeded",
        ));
    }

    let (mut parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    parts.uri = format!("{upstream}{}", path.trim_start_matches('/'))
        .parse()
        .expect("uri");
    let resp = match client.request(Request::from_parts(parts, Full::new(body))).await {
        Ok(r) => r,
        Err(_) => {
            return Ok(aws_error(
                StatusCode::BAD_GATEWAY,
                "ServiceUnavailable",
                "emulator unreachable",
            ));
        }
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "__type": kind, "message": message }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    resp
}
