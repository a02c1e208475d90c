//! A mock vendor: a real HTTP server on loopback that records what it got.

use crate::tls::TestCa;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One request as the vendor received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query, as sent.
    pub path_and_query: String,
    /// Headers, names lower case, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Scripted {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
}

impl Scripted {
    /// A status with an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Delays the answer.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

#[derive(Default)]
struct State {
    /// Answers per path, in order; the last one repeats.
    scripts: Mutex<HashMap<String, std::collections::VecDeque<Scripted>>>,
    requests: Mutex<Vec<Recorded>>,
    /// Requests whose connection was dropped before the answer was sent.
    aborted: Mutex<Vec<String>>,
    /// When set, requests without this header value get 401.
    required: Mutex<Option<(String, String)>>,
    changed: Notify,
}

/// The running mock vendor; stops when dropped.
pub struct MockVendor {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockVendor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockVendor {
    /// Starts a plain HTTP mock vendor on a free loopback port.
    pub async fn start() -> Self {
        Self::serve(TcpListener::bind("127.0.0.1:0").await.expect("bind"), None).await
    }

    /// Starts a TLS mock vendor presenting `ca`'s server certificate.
    pub async fn start_tls(ca: &TestCa) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(
            listener,
            Some(tokio_rustls::TlsAcceptor::from(ca.server_config())),
        )
        .await
    }

    /// Serves on `listener` (HTTP, or TLS with `tls`).
    pub async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let is_tls = tls.is_some();
        let task = tokio::spawn(accept_loop(listener, tls, state.clone()));
        Self {
            addr,
            tls: is_tls,
            state,
            task,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL (`https://localhost:PORT` for TLS, so the certificate
    /// name matches).
    pub fn base_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Answers requests to `path` (without query) with `answer`.
    pub fn script(&self, path: &str, answer: Scripted) {
        self.script_sequence(path, vec![answer]);
    }

    /// Answers requests to `path` with `answers` in turn, repeating the last
    /// one (e.g. 503, 503, then 200 for good).
    pub fn script_sequence(&self, path: &str, answers: Vec<Scripted>) {
        assert!(!answers.is_empty(), "at least one answer");
        self.state
            .scripts
            .lock()
            .expect("lock")
            .insert(path.to_owned(), answers.into());
    }

    /// Answers 401 to any request whose `name` header is not `value`, like a
    /// vendor that accepts only one credential.
    pub fn require_header(&self, name: &str, value: &str) {
        *self.state.required.lock().expect("lock") = Some((name.to_owned(), value.to_owned()));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Paths of requests the client abandoned before the answer was sent.
    pub fn aborted(&self) -> Vec<String> {
        self.state.aborted.lock().expect("lock").clone()
    }

    /// Waits until `check` holds for the recorded and aborted requests.
    pub async fn wait_until(&self, check: impl Fn(&[Recorded], &[String]) -> bool) {
        loop {
            let notified = self.state.changed.notified();
            {
                let reqs = self.state.requests.lock().expect("lock");
                let aborted = self.state.aborted.lock().expect("lock");
                if check(&reqs, &aborted) {
                    return;
                }
            }
            notified.await;
        }
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(acceptor) => {
                    // A client that refuses our certificate ends here.
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            }
        });
    }
}

/// Records the request as aborted unless disarmed (the answer was sent).
struct AbortGuard {
    state: Arc<State>,
    path: Option<String>,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            self.state.aborted.lock().expect("lock").push(path);
            self.state.changed.notify_waiters();
        }
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: body.to_vec(),
    };
    state.requests.lock().expect("lock").push(recorded.clone());
    state.changed.notify_waiters();

    let required = state.required.lock().expect("lock").clone();
    if let Some((name, value)) = required
        && recorded.header(&name) != Some(value.as_str())
    {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"unauthorized")));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(resp);
    }
    let script = state
        .scripts
        .lock()
        .expect("lock")
        .get_mut(parts.uri.path())
        .and_then(|answers| {
            if answers.len() > 1 {
                answers.pop_front()
            } else {
                answers.front().cloned()
            }
        });
    let answer = script.unwrap_or_else(|| echo(&recorded));
    if let Some(delay) = answer.delay {
        let guard = AbortGuard {
            state: state.clone(),
            path: Some(parts.uri.path().to_owned()),
        };
        tokio::time::sleep(delay).await;
        let mut guard = guard;
        guard.path = None;
    }
    let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (n, v) in answer.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n.as_bytes()),
            http::HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}

/// The default answer: the request itself, as JSON, with every header echoed
/// in a response header too.
fn echo(req: &Recorded) -> Scripted {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let body = serde_json::json!({
        "method": req.method,
        "path": req.path_and_query,
        "headers": headers,
        "body": String::from_utf8_lossy(&req.body),
    });
    let mut answer = Scripted::status(200)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (n, v) in &req.headers {
        answer = answer.header(&format!("x-echo-{n}"), v);
    }
    answer
}
