//! What happens to a connection and a request before a service sees them:
//! the accept loop (a connection cap and a handshake timeout per listener)
//! and the rescue layer, which answers the refusals tonic makes itself —
//! an oversized message, a broken gRPC frame, a message that does not
//! decode — like every other refusal: the documented status and reason, an
//! `x-request-id`, one log line.

use crate::app::App;
use crate::status::{Failure, Reason};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Code, Status};
use valet_proto::codec::Malformed;
use valet_telemetry::metrics::CallLabels;

/// The HTTP/2 client preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

/// At most one warning per this long for the same trouble.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How long to pause accepting after `accept` fails (out of file
/// descriptors, usually), rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Limits on one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections held open at once; more are closed when accepted.
    pub max_connections: usize,
    /// How long a new connection may take to send its first bytes of
    /// HTTP/2 (after TLS, which tonic bounds with the same timeout).
    pub handshake_timeout: Duration,
}

/// The accepted connections of `listener`, within `limits`.
pub fn incoming(listener: TcpListener, limits: ConnectionLimits, name: &'static str) -> Incoming {
    Incoming {
        listener,
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        limits,
        name,
        over_cap: Throttle::default(),
        accept_failed: Throttle::default(),
        backoff: None,
    }
}

/// A listener's accept loop, as the stream tonic serves.
#[derive(Debug)]
pub struct Incoming {
    listener: TcpListener,
    /// One per open connection; a connection holds its permit until closed.
    permits: Arc<Semaphore>,
    limits: ConnectionLimits,
    name: &'static str,
    over_cap: Throttle,
    accept_failed: Throttle,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(backoff) = &mut this.backoff {
                ready!(backoff.as_mut().poll(cx));
                this.backoff = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Err(e) => {
                    if let Some(since) = this.accept_failed.due() {
                        tracing::warn!(listener = this.name, error = %e, failures = since, "cannot accept connections");
                    }
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
                Ok((stream, _peer)) => {
                    // Small gRPC frames must not wait for the peer's delayed
                    // ACK (a 40 ms stall per exchange).
                    let _ = stream.set_nodelay(true);
                    match this.permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            return Poll::Ready(Some(Ok(Connection::new(
                                stream,
                                permit,
                                this.limits.handshake_timeout,
                            ))));
                        }
                        Err(_) => {
                            drop(stream);
                            if let Some(since) = this.over_cap.due() {
                                tracing::warn!(
                                    listener = this.name,
                                    max_connections = this.limits.max_connections,
                                    refused = since,
                                    "connection limit reached; closing new connections"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An accepted connection: closed by a read error if its first bytes of
/// HTTP/2 do not arrive within the handshake timeout; frees its slot under
/// the listener's cap when dropped.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the preface's length has been read.
    handshake: Option<Pin<Box<tokio::time::Sleep>>>,
    received: usize,
}

impl Connection {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, timeout: Duration) -> Self {
        Self {
            stream,
            _permit: permit,
            handshake: Some(Box::pin(tokio::time::sleep(timeout))),
            received: 0,
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some(deadline) = &mut this.handshake else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.received += n;
                if this.received >= PREFACE_LEN || n == 0 {
                    this.handshake = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the handshake timeout",
            ))),
            other => other,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Lets one warning through per [`WARN_EVERY`], counting the rest.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    since: u64,
}

impl Throttle {
    /// Counts one occurrence; `Some(count since the last warning)` when a
    /// warning is due.
    pub(crate) fn due(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// The rescue layer of one listener.
#[derive(Debug, Clone)]
pub struct Rescue {
    app: Arc<App>,
    /// The largest message the listener decodes.
    message_limit: usize,
    /// The documented body limit, named in a Gateway refusal.
    body_limit: Option<usize>,
}

impl Rescue {
    /// For a listener whose services decode at most `message_limit` bytes;
    /// `body_limit` when it serves `valet.v1.Gateway`.
    pub fn new(app: Arc<App>, message_limit: usize, body_limit: Option<usize>) -> Self {
        Self {
            app,
            message_limit,
            body_limit,
        }
    }

    /// The refusal `status` stands for, when tonic (or `valet_proto::codec`)
    /// made it before any service ran; `None` for a service's own answer.
    fn refusal(&self, status: &Status) -> Option<Failure> {
        let too_large = || match self.body_limit {
            Some(limit) => Failure::from(valet_egress::RequestError::BodyTooLarge(limit)),
            None => Failure::invalid(
                "request",
                Reason::BodyTooLarge,
                format!("the message is larger than {} bytes", self.message_limit),
            ),
        };
        let malformed = |why: &str| {
            Failure::new(
                Reason::MessageMalformed,
                format!("the request message is not valid: {why}"),
            )
        };
        if std::error::Error::source(status).is_some_and(|s| s.is::<Malformed>()) {
            return Some(Failure::new(Reason::MessageMalformed, status.message()));
        }
        let message = status.message();
        match status.code() {
            Code::OutOfRange if message.contains("message length too large") => Some(too_large()),
            Code::ResourceExhausted if message.starts_with("Error decompressing") => Some(too_large()),
            Code::Internal if message.contains("compressed-flag") => Some(malformed(
                "the compressed flag is set but no grpc-encoding was sent",
            )),
            Code::Internal if message.contains("compression flag") => {
                Some(malformed("the gRPC frame's compressed flag is neither 0 nor 1"))
            }
            Code::Internal if message.starts_with("Unexpected EOF") => {
                Some(malformed("the stream ended inside a gRPC frame (truncated)"))
            }
            Code::Internal if message.starts_with("Missing request message") => {
                Some(malformed("the request stream holds no message"))
            }
            Code::Unimplemented if message.starts_with("Content is compressed with") => Some(Failure::new(
                Reason::CompressionUnsupported,
                "Valet takes no compressed requests: send them uncompressed (no grpc-encoding, or identity)",
            )),
            // Health and reflection decode with tonic-prost's codec.
            Code::Internal if message.starts_with("failed to decode Protobuf message") => {
                Some(malformed(message))
            }
            _ => None,
        }
    }

    fn rescue<B: Default>(
        &self,
        response: http::Response<B>,
        path: &str,
        started: Instant,
    ) -> http::Response<B> {
        let Some(failure) = response
            .extensions()
            .get::<Status>()
            .and_then(|status| self.refusal(status))
        else {
            return response;
        };
        let request_id = crate::gateway::new_request_id();
        let elapsed = started.elapsed();
        if path == "/valet.v1.Gateway/Call" {
            self.app.metrics.call_finished(
                CallLabels {
                    tenant: None,
                    vendor: None,
                    operation: None,
                },
                failure.reason.as_str(),
                None,
                elapsed,
            );
        }
        tracing::info!(
            request_id = %request_id,
            trace_id = "-",
            caller = "-",
            caller_name = "-",
            tenant = "-",
            vendor = "-",
            operation = "-",
            rpc = path,
            outcome = failure.reason.as_str(),
            grpc_status = failure.code() as i32,
            attempts = 0u32,
            replayed = false,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "call"
        );
        failure.into_status(Some(&request_id)).into_http()
    }
}

impl<S> tower::Layer<S> for Rescue {
    type Service = Rescued<S>;

    fn layer(&self, inner: S) -> Rescued<S> {
        Rescued {
            inner,
            rescue: self.clone(),
        }
    }
}

/// A service behind [`Rescue`].
#[derive(Debug, Clone)]
pub struct Rescued<S> {
    inner: S,
    rescue: Rescue,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for Rescued<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let answer = self.inner.call(request);
        let rescue = self.rescue.clone();
        Box::pin(async move {
            let response = answer.await?;
            Ok(rescue.rescue(response, &path, started))
        })
    }
}
