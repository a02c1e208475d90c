//! Egress: everything between a validated call and the vendor's socket.
//!
//! # Layout
//!
//! - [`path`]: the rules for a caller's relative path (no escapes from the
//!   vendor's base URL).
//! - [`request`]: method, header and size rules, and [`Limits`].
//! - [`vendor`]: [`Vendor`] — base URL, [`AuthScheme`] injection, and a
//!   pooled rustls client per vendor (public roots, or the vendor's
//!   `ca_file`).
//! - [`scrub`]: [`Scrubber`] — removes the credential in every documented
//!   form (raw, Base64 at any alignment, hex, percent and JSON escapes)
//!   from the vendor's answer, one automaton built per call.
//! - [`retry`]: which failed attempts are tried again, backoff with full
//!   jitter, `Retry-After`, and the per-vendor retry budget.
//! - [`breaker`]: the per-vendor circuit breaker.
//! - [`answers`]: [`AnswerBudget`], one memory bound for every vendor answer
//!   buffered at once.
//! - [`resolve`]: SSRF and DNS defences — the resolver that refuses
//!   loopback, private, link-local and similar addresses.
//! - this file: [`Registry`] of vendors and [`Vendor::send`]: a slot in the
//!   vendor's concurrency limit, then attempts through the breaker, each one
//!   outbound request: join and re-check the URL, inject the credential and the
//!   trace context, send without following redirects under a client span,
//!   bound time and size, scrub.
#![forbid(unsafe_code)]

pub mod answers;
pub mod breaker;
pub mod path;
pub mod request;
pub mod resolve;
pub mod retry;
pub mod scrub;
pub mod vendor;

pub use answers::{AnswerBudget, Reservation};
pub use breaker::{BreakerPolicy, BreakerState};
pub use path::{PathError, RelativePath};
pub use request::{Limits, RequestError};
pub use retry::RetryPolicy;
pub use scrub::Scrubber;
pub use vendor::{AuthScheme, Vendor, VendorError, VendorSpec, VerifyRequest};

use breaker::Verdict;
use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use retry::RetryAfter;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tracing::Instrument as _;
use tracing::field::Empty;
use valet_credentials::Secret;
use valet_telemetry::{Metrics, propagation};

/// The configured vendors, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    vendors: HashMap<String, Arc<Vendor>>,
}

impl Registry {
    /// A registry of ready vendors.
    pub fn new(vendors: impl IntoIterator<Item = Vendor>) -> Self {
        Self {
            vendors: vendors
                .into_iter()
                .map(|v| (v.name().to_owned(), Arc::new(v)))
                .collect(),
        }
    }

    /// The vendor called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Vendor>> {
        self.vendors.get(name)
    }

    /// Every vendor.
    pub fn vendors(&self) -> impl Iterator<Item = &Arc<Vendor>> {
        self.vendors.values()
    }
}

/// A checked request, ready to be sent with a credential.
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    /// The HTTP method.
    pub method: Method,
    /// The path part, checked by [`path::parse`].
    pub path: String,
    /// The query, without `?`, checked against the vendor's credential
    /// parameter.
    pub query: Option<String>,
    /// Checked caller headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// The vendor's answer, scrubbed.
#[derive(Debug)]
pub struct ProxyResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers in order, names lower case, hop-by-hop removed.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Requests sent to the vendor.
    pub attempts: u32,
    /// The body's room in the [`AnswerBudget`], given back when dropped.
    pub held: Reservation,
}

/// Why the vendor call failed. Messages name the vendor, never its address
/// or the credential.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// No connection could be made (refused, DNS, connect timeout).
    #[error("vendor {0} is unreachable")]
    Unreachable(String),
    /// The TLS handshake failed (certificate did not verify, protocol).
    #[error("TLS with vendor {0} failed: its certificate did not verify or the handshake failed")]
    Tls(String),
    /// The vendor did not answer within its timeout.
    #[error("vendor {vendor} did not answer within {timeout_ms} ms")]
    VendorTimeout {
        /// The vendor.
        vendor: String,
        /// The timeout that expired.
        timeout_ms: u128,
    },
    /// The caller's deadline expired first.
    #[error("the call's deadline expired while waiting for vendor {0}")]
    Deadline(String),
    /// The connection failed after the request was sent, or the answer was
    /// not valid HTTP (including a status outside 100–599).
    #[error("vendor {0} closed the connection or sent an invalid response")]
    Protocol(String),
    /// The response body exceeded the limit.
    #[error("vendor {vendor} response is larger than {limit} bytes")]
    ResponseTooLarge {
        /// The vendor.
        vendor: String,
        /// The limit.
        limit: usize,
    },
    /// The vendor compressed its response although asked not to; it cannot
    /// be scrubbed, so it is not returned.
    #[error("vendor {0} sent an encoded (compressed) response, which cannot be checked for credentials")]
    ResponseEncoded(String),
    /// The joined URL left the vendor's origin (a bug guard).
    #[error("path would leave vendor {0}'s base URL")]
    OriginMismatch(String),
    /// The vendor's circuit breaker is open.
    #[error("vendor {vendor} is failing; calls to it are paused for {} ms", retry_after.as_millis())]
    CircuitOpen {
        /// The vendor.
        vendor: String,
        /// When a call may be tried again.
        retry_after: Duration,
    },
    /// The vendor's host resolved only to addresses Valet refuses to reach.
    #[error("vendor {vendor}'s host resolves only to {class} addresses, which are refused")]
    AddressForbidden {
        /// The vendor.
        vendor: String,
        /// The refused class.
        class: &'static str,
    },
    /// Too many requests to this vendor are in flight.
    #[error("too many calls to vendor {0} are in flight; retry shortly")]
    Overloaded(String),
    /// The answers buffered by all calls already fill the memory budget.
    #[error(
        "vendor {0}'s answer could not be buffered: answers in memory fill limits.max_buffered_response_bytes; retry shortly"
    )]
    AnswersOverBudget(String),
}

impl EgressError {
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            EgressError::Unreachable(_) => "VENDOR_UNREACHABLE",
            EgressError::Tls(_) => "VENDOR_TLS_ERROR",
            EgressError::VendorTimeout { .. } => "VENDOR_TIMEOUT",
            EgressError::Deadline(_) => "DEADLINE_EXCEEDED",
            EgressError::Protocol(_) => "VENDOR_PROTOCOL_ERROR",
            EgressError::ResponseTooLarge { .. } => "RESPONSE_TOO_LARGE",
            EgressError::ResponseEncoded(_) => "VENDOR_RESPONSE_ENCODED",
            EgressError::OriginMismatch(_) => "PATH_ESCAPES_ORIGIN",
            EgressError::CircuitOpen { .. } => "VENDOR_CIRCUIT_OPEN",
            EgressError::AddressForbidden { .. } => "VENDOR_ADDRESS_FORBIDDEN",
            EgressError::Overloaded(_) => "VENDOR_OVERLOADED",
            EgressError::AnswersOverBudget(_) => "RESPONSE_BUFFER_EXHAUSTED",
        }
    }
}

/// How one call's exchange with a vendor is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// Size limits.
    pub limits: &'a Limits,
    /// Room for buffered answers, shared by every call.
    pub answers: &'a AnswerBudget,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// Whether the request may be sent more than once: a READ, or a WRITE
    /// whose vendor dedupes by our idempotency key.
    pub repeatable: bool,
    /// Where attempts are counted.
    pub metrics: &'a Metrics,
    /// Counts the attempts made, whatever the result (an error carries no
    /// count of its own).
    pub attempts: &'a AtomicU32,
}

/// The least time worth starting a retry with.
const MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// What happened to one attempt, for the retry decision.
enum Next {
    Done,
    RetryAfter(Duration),
}

impl Vendor {
    /// Sends `req` with `secret` injected, retrying when it is safe and
    /// worth it (see [`retry`]), through the vendor's circuit breaker (see
    /// [`breaker`]), and returns the last answer, scrubbed, with the number
    /// of attempts made.
    pub async fn send(
        &self,
        req: ProxyRequest,
        secret: &Secret,
        x: &Exchange<'_>,
    ) -> Result<ProxyResponse, EgressError> {
        self.budget.deposit();
        // Built once for the call: every attempt's answer is scrubbed with it.
        let scrubber = Scrubber::new(secret, matches!(self.auth(), AuthScheme::Basic));
        let mut attempts = 0u32;
        let mut last: Option<Result<ProxyResponse, EgressError>> = None;
        loop {
            let admitted = self.breaker.admit();
            // The call's span (the current one) says what the breaker was.
            tracing::Span::current().record("valet.vendor.circuit", self.breaker.state().as_str());
            // A slot per attempt, not across backoff sleeps.
            let slot = self.slots.clone().try_acquire_owned();
            let (ticket, _slot) = match (admitted, slot) {
                (Ok(ticket), Ok(slot)) => (ticket, slot),
                // A retry that cannot be made: the answer in hand stands.
                _ if last.is_some() => {
                    return last
                        .expect("checked")
                        .map(|answer| ProxyResponse { attempts, ..answer });
                }
                // Nothing was sent: these errors say so to the caller.
                (Err(retry_after), _) => {
                    return Err(EgressError::CircuitOpen {
                        vendor: self.name().to_owned(),
                        retry_after,
                    });
                }
                (Ok(_), Err(_)) => return Err(EgressError::Overloaded(self.name().to_owned())),
            };
            attempts += 1;
            x.attempts.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let result = self.attempt(req.clone(), secret, &scrubber, x).await;
            ticket.record(breaker_verdict(&result));
            let status = result.as_ref().ok().map(|r| r.status);
            x.metrics.vendor_attempt(self.name(), status, started.elapsed());
            match self.next(&result, attempts, x) {
                Next::Done => {
                    // A retry that failed outright: the answer before it
                    // says more (and says the vendor was reached).
                    let result = match (result, last) {
                        (Err(_), Some(Ok(answer))) => Ok(answer),
                        (result, _) => result,
                    };
                    return result.map(|answer| ProxyResponse { attempts, ..answer });
                }
                Next::RetryAfter(wait) => {
                    x.metrics.vendor_retry(self.name());
                    tracing::info!(
                        vendor = self.name(),
                        attempt = attempts,
                        wait_ms = wait.as_millis() as u64,
                        "retrying the vendor call"
                    );
                    last = Some(result);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Whether attempt number `attempts`, which gave `result`, is retried,
    /// and after how long.
    fn next(&self, result: &Result<ProxyResponse, EgressError>, attempts: u32, x: &Exchange<'_>) -> Next {
        let policy = &self.spec.retry;
        if !x.repeatable || attempts >= policy.max_attempts {
            return Next::Done;
        }
        let wait = match result {
            Err(EgressError::Unreachable(_)) => policy.backoff(attempts),
            Ok(answer) if policy.on_status.contains(&answer.status) => {
                let header = answer
                    .headers
                    .iter()
                    .find(|(n, _)| n == "retry-after")
                    .map(|(_, v)| v.as_str());
                match policy.retry_after(header, SystemTime::now()) {
                    RetryAfter::Absent => policy.backoff(attempts),
                    RetryAfter::TooLong => return Next::Done,
                    RetryAfter::Wait(wait) => wait,
                }
            }
            _ => return Next::Done,
        };
        // Never sleep past the deadline, nor retry with no time left for the
        // attempt: the answer in hand is better.
        if x.deadline
            .is_some_and(|d| Instant::now() + wait + MIN_ATTEMPT >= d)
        {
            return Next::Done;
        }
        if !self.budget.withdraw() {
            x.metrics.vendor_retry_budget_exhausted(self.name());
            return Next::Done;
        }
        Next::RetryAfter(wait)
    }

    /// One attempt: `req` with `secret` injected, the scrubbed answer.
    ///
    /// Redirects are never followed: a 3xx goes back to the caller as it is.
    /// The attempt is bounded by the vendor's timeout and by the deadline,
    /// whichever is sooner; when either expires the request is dropped, which
    /// closes its connection.
    async fn attempt(
        &self,
        req: ProxyRequest,
        secret: &Secret,
        scrubber: &Scrubber,
        x: &Exchange<'_>,
    ) -> Result<ProxyResponse, EgressError> {
        let deadline = x.deadline;
        let name = || self.name().to_owned();
        let url = self.url(&req.path, req.query.as_deref(), secret);
        let uri: Uri = url.parse().map_err(|_| EgressError::OriginMismatch(name()))?;
        drop(url);
        if !self.same_origin(&uri) {
            return Err(EgressError::OriginMismatch(name()));
        }
        let span = attempt_span(&req.method, &uri, self.name());
        let mut headers = req.headers;
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        propagation::inject(&span, &mut headers);
        self.inject_header(&mut headers, secret);
        let mut outbound = Request::builder()
            .method(req.method)
            .uri(uri)
            .body(Full::new(req.body))
            .expect("method, URI and body were checked");
        *outbound.headers_mut() = headers;

        let vendor_timeout = self.spec.timeout;
        let now = Instant::now();
        let (limit, by_deadline) = match deadline {
            Some(d) if d.saturating_duration_since(now) < vendor_timeout => {
                (d.saturating_duration_since(now), true)
            }
            _ => (vendor_timeout, false),
        };
        let exchange = async {
            let resp = self
                .client
                .request(outbound)
                .await
                .map_err(|e| self.classify(&e))?;
            let (parts, body) = resp.into_parts();
            // HTTP status codes are three digits, 100 to 599; hyper parses
            // anything up to 999, which no caller can make sense of.
            if !(100..=599).contains(&parts.status.as_u16()) {
                return Err(EgressError::Protocol(name()));
            }
            if encoded(&parts.headers) {
                return Err(EgressError::ResponseEncoded(name()));
            }
            let (body, held) = self.read_body(body, x).await?;
            Ok((parts, body, held))
        };
        let timed = async {
            match tokio::time::timeout(limit, exchange).await {
                Ok(result) => result,
                Err(_) if by_deadline => Err(EgressError::Deadline(name())),
                Err(_) => Err(EgressError::VendorTimeout {
                    vendor: name(),
                    timeout_ms: duration_ms(vendor_timeout),
                }),
            }
        };
        let (parts, body, held) = match timed.instrument(span.clone()).await {
            Ok(answer) => {
                let status = answer.0.status.as_u16();
                span.record("http.response.status_code", i64::from(status));
                if status >= 400 {
                    span.record("error.type", status.to_string());
                    span.record("otel.status_code", "ERROR");
                }
                answer
            }
            Err(e) => {
                span.record("error.type", e.reason());
                span.record("otel.status_code", "ERROR");
                return Err(e);
            }
        };
        let (body, new_len) = match scrubber.scrub(&body) {
            Some(scrubbed) => {
                let len = scrubbed.len();
                (Bytes::from(scrubbed), Some(len))
            }
            None => (body, None),
        };
        Ok(ProxyResponse {
            status: parts.status.as_u16(),
            headers: response_headers(&parts.headers, scrubber, new_len),
            body,
            attempts: 1,
            held,
        })
    }

    /// Reads the answer's body whole, within `max_response_body_bytes` and
    /// with room taken from the [`AnswerBudget`] as its bytes arrive.
    async fn read_body(
        &self,
        mut body: hyper::body::Incoming,
        x: &Exchange<'_>,
    ) -> Result<(Bytes, Reservation), EgressError> {
        let limit = x.limits.max_response_body_bytes;
        let mut held = Reservation::default();
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| EgressError::Protocol(self.name().to_owned()))?;
            let Ok(data) = frame.into_data() else { continue };
            if buf.len() + data.len() > limit {
                return Err(EgressError::ResponseTooLarge {
                    vendor: self.name().to_owned(),
                    limit,
                });
            }
            x.answers
                .reserve(&mut held, data.len())
                .await
                .map_err(|_| EgressError::AnswersOverBudget(self.name().to_owned()))?;
            buf.extend_from_slice(&data);
        }
        Ok((buf.freeze(), held))
    }

    fn classify(&self, err: &hyper_util::client::legacy::Error) -> EgressError {
        let name = self.name().to_owned();
        if let Some(forbidden) = find::<resolve::ForbiddenAddress>(err) {
            EgressError::AddressForbidden {
                vendor: name,
                class: forbidden.class,
            }
        } else if find::<rustls::Error>(err).is_some() {
            EgressError::Tls(name)
        } else if err.is_connect() {
            EgressError::Unreachable(name)
        } else {
            EgressError::Protocol(name)
        }
    }
}

/// One HTTP attempt's client span (HTTP client semantic conventions): method,
/// host, port and scheme — never the path's query, a header or a body.
fn attempt_span(method: &Method, uri: &Uri, vendor: &str) -> tracing::Span {
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    });
    tracing::info_span!(
        "vendor attempt",
        otel.name = %method,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = %method,
        server.address = uri.host().unwrap_or_default(),
        server.port = i64::from(port),
        url.scheme = uri.scheme_str().unwrap_or_default(),
        http.response.status_code = Empty,
        error.type = Empty,
        valet.vendor = vendor,
    )
}

/// Whether the body arrives in a form the scrubber cannot read: any content
/// coding but `identity` (in any of the header's values), or any transfer
/// coding but `chunked` (which hyper removes).
fn encoded(headers: &HeaderMap) -> bool {
    let tokens = |name| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
    };
    tokens(CONTENT_ENCODING).iter().any(|t| t != "identity")
        || tokens(http::header::TRANSFER_ENCODING)
            .iter()
            .any(|t| t != "chunked")
}

fn duration_ms(d: Duration) -> u128 {
    d.as_millis()
}

/// How an attempt's result counts for the breaker: 5xx, timeouts and
/// failed connections are failures; a 4xx means the vendor is up.
fn breaker_verdict(result: &Result<ProxyResponse, EgressError>) -> Verdict {
    match result {
        Ok(answer) if answer.status >= 500 => Verdict::Failure,
        Ok(_) => Verdict::Success,
        Err(
            EgressError::Unreachable(_)
            | EgressError::Tls(_)
            | EgressError::VendorTimeout { .. }
            | EgressError::Protocol(_),
        ) => Verdict::Failure,
        // The caller's deadline, our own limits: nothing said about the vendor.
        Err(_) => Verdict::Neutral,
    }
}

/// The first `E` in `err`'s chain of causes. `io::Error::source` skips the
/// error it wraps, and hyper-rustls wraps tokio-rustls's `io::Error` in
/// another, so an `io::Error`'s inner error is stepped into explicitly.
fn find<'a, E: std::error::Error + 'static>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// The vendor's headers for the caller: hop-by-hop headers dropped (the
/// fixed list and any the vendor names in `Connection`), every value
/// scrubbed, and `content-length` corrected when scrubbing changed the body.
fn response_headers(
    headers: &HeaderMap,
    scrubber: &Scrubber,
    new_len: Option<usize>,
) -> Vec<(String, String)> {
    let named_by_connection: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(name, _)| {
            !request::HOP_BY_HOP.contains(&name.as_str())
                && !named_by_connection.iter().any(|n| n == name.as_str())
                // A header named after the credential goes entirely.
                && scrubber.scrub(name.as_str().as_bytes()).is_none()
        })
        .map(|(name, value)| {
            let bytes = match new_len {
                Some(len) if name == http::header::CONTENT_LENGTH => len.to_string().into_bytes(),
                _ => scrubber
                    .scrub(value.as_bytes())
                    .unwrap_or_else(|| value.as_bytes().to_vec()),
            };
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscrubbable_codings_are_recognised() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        assert!(!encoded(&headers(&[])));
        assert!(!encoded(&headers(&[
            ("content-encoding", "identity"),
            ("transfer-encoding", "chunked")
        ])));
        assert!(encoded(&headers(&[
            ("content-encoding", "identity"),
            ("content-encoding", "gzip")
        ])));
        assert!(encoded(&headers(&[("content-encoding", "identity, br")])));
        assert!(encoded(&headers(&[("transfer-encoding", "gzip, chunked")])));
    }
}
