//! The caller's deadline, read once, strictly, when the request arrives.
//!
//! gRPC sends the deadline as `grpc-timeout: <1–8 digits><H|M|S|m|u|n>`.
//! tonic reads that header too, but ignores a malformed value (the call then
//! ran with no deadline at all) and races its own timer against the call, so
//! a spent deadline (`0n`) ended as DEADLINE_EXCEEDED, CANCELLED or even OK,
//! sometimes after reaching the vendor. [`DeadlineLayer`] sits in front of
//! the Gateway: it parses the header into a [`CallerDeadline`] extension for
//! the call, and answers a Gateway call whose deadline is already spent
//! itself, at once — DEADLINE_EXCEEDED before tonic's timer can fire and
//! before anything is sent. A malformed value is refused by the Gateway
//! handler (INVALID_ARGUMENT `DEADLINE_INVALID`); tonic sets no timer for it.

use crate::app::App;
use crate::status::{Failure, Reason};
use futures_util::future::Either;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Margin kept before the caller's deadline, so Valet answers
/// DEADLINE_EXCEEDED itself instead of the transport cancelling the call.
pub const MARGIN: Duration = Duration::from_millis(10);

const HEADER: &str = "grpc-timeout";

/// The caller's deadline, as read on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerDeadline {
    /// No `grpc-timeout`: the call has no deadline.
    None,
    /// When Valet must have answered (the caller's deadline less [`MARGIN`]).
    At(Instant),
    /// `grpc-timeout` is not of the form the gRPC spec allows.
    Invalid,
}

impl CallerDeadline {
    /// Reads `grpc-timeout` from `headers`, relative to `now`.
    pub fn read(headers: &http::HeaderMap, now: Instant) -> Self {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Self::None;
        };
        if values.next().is_some() {
            return Self::Invalid;
        }
        match value.to_str().ok().and_then(parse) {
            Some(timeout) => Self::At(now + timeout.saturating_sub(MARGIN)),
            None => Self::Invalid,
        }
    }

    /// Whether there is no time left at `now`.
    pub fn is_spent(&self, now: Instant) -> bool {
        matches!(self, Self::At(at) if *at <= now)
    }
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit.
fn parse(raw: &str) -> Option<Duration> {
    let digits = raw.get(..raw.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match &raw[digits.len()..] {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Puts a [`CallerDeadline`] on every request, and answers a Gateway call
/// that arrives with its deadline spent (see the module docs).
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    app: Arc<App>,
}

impl DeadlineLayer {
    /// Reports refused calls through `app`'s call log and metrics.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            app: self.app.clone(),
        }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    app: Arc<App>,
}

impl<S, B> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let now = Instant::now();
        let deadline = CallerDeadline::read(req.headers(), now);
        if deadline.is_spent(now) && req.uri().path().starts_with("/valet.v1.Gateway/") {
            let request_id = crate::gateway::new_request_id();
            let failure = Failure::new(
                Reason::DeadlineExceeded,
                "the call's deadline had passed when it arrived; nothing was sent",
            );
            crate::call::record::refused(&self.app, request_id.clone(), &failure);
            let status = failure.into_status(Some(&request_id));
            return Either::Left(ready(Ok(status.into_http())));
        }
        req.extensions_mut().insert(deadline);
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_is_read_strictly() {
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("0n"), Some(Duration::ZERO));
        assert_eq!(parse("99999999m"), Some(Duration::from_millis(99_999_999)));
        for bad in [
            "",
            "S",
            "abc",
            "-1S",
            "1.5S",
            "+1S",
            " 1S",
            "123456789S",
            "10x",
            "1s",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn spent_and_invalid_deadlines() {
        let now = Instant::now();
        let read = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for v in values {
                headers.append(HEADER, v.parse().unwrap());
            }
            CallerDeadline::read(&headers, now)
        };
        assert_eq!(read(&[]), CallerDeadline::None);
        assert!(read(&["0n"]).is_spent(now));
        assert!(read(&["5m"]).is_spent(now), "within the margin");
        assert!(!read(&["1S"]).is_spent(now));
        assert_eq!(read(&["1.5S"]), CallerDeadline::Invalid);
        assert_eq!(read(&["1S", "2S"]), CallerDeadline::Invalid);
    }
}
