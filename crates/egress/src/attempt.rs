//! One outbound request: the URL joined and re-checked against the vendor's
//! origin, the credential and the trace context injected, sent without
//! following redirects under a client span, bounded by the vendor's timeout
//! and the caller's deadline, the body read whole within its limits, and the
//! answer scrubbed. A failure is classified into an [`EgressError`] here,
//! where the cause is still known.

use crate::answers::Reservation;
use crate::scrub::Scrubber;
use crate::{EgressError, Exchange, ProxyRequest, ProxyResponse, Vendor, resolve};
use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument as _;
use tracing::field::Empty;
use valet_credentials::Secret;
use valet_telemetry::propagation;

/// One attempt: `req` with `secret` injected, the scrubbed answer.
///
/// Redirects are never followed: a 3xx goes back to the caller as it is.
/// The attempt is bounded by the vendor's timeout and by the deadline,
/// whichever is sooner; when either expires the request is dropped, which
/// closes its connection.
pub(crate) async fn make(
    vendor: &Vendor,
    req: ProxyRequest,
    secret: &Secret,
    scrubber: &Scrubber,
    x: &Exchange<'_>,
) -> Result<ProxyResponse, EgressError> {
    let deadline = x.deadline;
    let name = || vendor.name().to_owned();
    let url = vendor.url(&req.path, req.query.as_deref(), secret);
    let uri: Uri = url.parse().map_err(|_| EgressError::OriginMismatch(name()))?;
    drop(url);
    if !vendor.same_origin(&uri) {
        return Err(EgressError::OriginMismatch(name()));
    }
    let span = attempt_span(&req.method, &uri, vendor.name());
    let mut headers = req.headers;
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    propagation::inject(&span, x.trace, &mut headers);
    vendor.inject_header(&mut headers, secret);
    let mut outbound = Request::builder()
        .method(req.method)
        .uri(uri)
        .body(Full::new(req.body))
        .expect("method, URI and body were checked");
    *outbound.headers_mut() = headers;

    let vendor_timeout = vendor.spec.timeout;
    let now = Instant::now();
    let (limit, by_deadline) = match deadline {
        Some(d) if d.saturating_duration_since(now) < vendor_timeout => {
            (d.saturating_duration_since(now), true)
        }
        _ => (vendor_timeout, false),
    };
    let exchange = async {
        let client = vendor
            .clients
            .get(x.identity)
            .map_err(|_| EgressError::Tls(name()))?;
        let resp = client.request(outbound).await.map_err(|e| classify(vendor, &e))?;
        let (parts, body) = resp.into_parts();
        // HTTP status codes are three digits, 100 to 599; hyper parses
        // anything up to 999, which no caller can make sense of.
        if !(100..=599).contains(&parts.status.as_u16()) {
            return Err(EgressError::Protocol(name()));
        }
        if encoded(&parts.headers) {
            return Err(EgressError::ResponseEncoded(name()));
        }
        let (body, held) = read_body(vendor, body, x).await?;
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
    let (headers, body) = scrubber.answer(&parts.headers, body);
    Ok(ProxyResponse {
        status: parts.status.as_u16(),
        headers,
        body,
        held,
    })
}

/// Reads the answer's body whole, within `max_response_body_bytes` and
/// with room taken from the [`AnswerBudget`](crate::AnswerBudget) as its
/// bytes arrive.
async fn read_body(
    vendor: &Vendor,
    mut body: hyper::body::Incoming,
    x: &Exchange<'_>,
) -> Result<(Bytes, Reservation), EgressError> {
    let limit = x.limits.max_response_body_bytes;
    let mut held = Reservation::default();
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| EgressError::Protocol(vendor.name().to_owned()))?;
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > limit {
            return Err(EgressError::ResponseTooLarge {
                vendor: vendor.name().to_owned(),
                limit,
            });
        }
        x.answers
            .reserve(&mut held, data.len())
            .await
            .map_err(|_| EgressError::AnswersOverBudget(vendor.name().to_owned()))?;
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
}

fn classify(vendor: &Vendor, err: &hyper_util::client::legacy::Error) -> EgressError {
    let name = vendor.name().to_owned();
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

/// One HTTP attempt's client span (HTTP client semantic conventions): method,
/// host, port and scheme — never the path's query, a header or a body.
fn attempt_span(method: &Method, uri: &Uri, vendor: &str) -> tracing::Span {
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    });
    valet_telemetry::sampling::span(|| {
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
    })
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
