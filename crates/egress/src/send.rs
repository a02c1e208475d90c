//! The call's loop: attempts through the vendor's breaker and concurrency
//! slots, retried when it is safe and worth it, and the [`Sent`] that says
//! what came of them.
//!
//! Each turn takes the breaker's admission and a slot (per attempt, not
//! across backoff sleeps), makes one [`attempt`](crate::attempt), reports
//! it to the breaker and the metrics, and asks [`retry`](crate::retry)
//! whether to go again. The attempts made and whether any may have reached
//! the vendor are counted here, whatever the result, so the caller never
//! has to work them out from an error.

use crate::breaker::Verdict;
use crate::retry::RetryAfter;
use crate::scrub::Scrubber;
use crate::{AuthScheme, EgressError, Exchange, ProxyRequest, ProxyResponse, Reached, Sent, Vendor};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use valet_credentials::Secret;

/// The least time worth starting a retry with.
const MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// What happened to one attempt, for the retry decision.
enum Next {
    Done,
    RetryAfter(Duration),
}

/// The attempts so far, and the last one's result while a retry is weighed.
struct Tally {
    attempts: u32,
    reached: Reached,
    last: Option<Result<ProxyResponse, EgressError>>,
}

impl Tally {
    /// Counts an attempt that gave `result`.
    fn count(&mut self, result: &Result<ProxyResponse, EgressError>) {
        self.attempts += 1;
        let reached = match result {
            Ok(_) => Reached::Maybe,
            Err(e) => e.reached(),
        };
        self.reached = self.reached.max(reached);
    }

    /// The call's outcome, ending with `result`.
    fn end(self, result: Result<ProxyResponse, EgressError>) -> Sent {
        Sent {
            result,
            attempts: self.attempts,
            reached: self.reached,
        }
    }
}

/// See [`Vendor::send`].
pub(crate) async fn send(vendor: &Vendor, req: ProxyRequest, secret: &Secret, x: &Exchange<'_>) -> Sent {
    vendor.budget.deposit();
    // Built once for the call: every attempt's answer is scrubbed with it.
    let scrubber = Scrubber::with_others(secret, matches!(vendor.auth(), AuthScheme::Basic), x.scrub_also);
    let mut tally = Tally {
        attempts: 0,
        reached: Reached::No,
        last: None,
    };
    loop {
        let admitted = vendor.breaker.admit();
        // The call's span (the current one) says what the breaker was.
        tracing::Span::current().record("valet.vendor.circuit", vendor.breaker.state().as_str());
        let slot = vendor.slots.clone().try_acquire_owned();
        let (ticket, _slot) = match (admitted, slot) {
            (Ok(ticket), Ok(slot)) => (ticket, slot),
            // A retry that cannot be made: the answer in hand stands.
            _ if tally.last.is_some() => {
                let last = tally.last.take().expect("checked");
                return tally.end(last);
            }
            (Err(retry_after), _) => {
                return tally.end(Err(EgressError::CircuitOpen {
                    vendor: vendor.name().to_owned(),
                    retry_after,
                }));
            }
            (Ok(_), Err(_)) => return tally.end(Err(EgressError::Overloaded(vendor.name().to_owned()))),
        };
        let started = Instant::now();
        let result = crate::attempt::make(vendor, req.clone(), secret, &scrubber, x).await;
        tally.count(&result);
        ticket.record(breaker_verdict(&result));
        let status = result.as_ref().ok().map(|r| r.status);
        x.metrics.vendor_attempt(vendor.name(), status, started.elapsed());
        match next(vendor, &result, tally.attempts, x) {
            Next::Done => {
                // A retry that failed outright: the answer before it says
                // more (and says the vendor was reached).
                let result = match (result, tally.last.take()) {
                    (Err(_), Some(Ok(answer))) => Ok(answer),
                    (result, _) => result,
                };
                return tally.end(result);
            }
            Next::RetryAfter(wait) => {
                x.metrics.vendor_retry(vendor.name());
                tracing::info!(
                    vendor = vendor.name(),
                    attempt = tally.attempts,
                    wait_ms = wait.as_millis() as u64,
                    "retrying the vendor call"
                );
                tally.last = Some(result);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Whether attempt number `attempts`, which gave `result`, is retried, and
/// after how long.
fn next(
    vendor: &Vendor,
    result: &Result<ProxyResponse, EgressError>,
    attempts: u32,
    x: &Exchange<'_>,
) -> Next {
    let policy = &vendor.spec.retry;
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
    if !vendor.budget.withdraw() {
        x.metrics.vendor_retry_budget_exhausted(vendor.name());
        return Next::Done;
    }
    Next::RetryAfter(wait)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vendor::tests::spec;
    use crate::{AnswerBudget, Limits, RetryPolicy};
    use bytes::Bytes;
    use http::{HeaderMap, Method};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use valet_telemetry::Metrics;

    /// A loopback vendor at `addr` that retries at once, up to 3 attempts.
    fn vendor(addr: std::net::SocketAddr) -> Vendor {
        let mut s = spec(&format!("http://{addr}"), AuthScheme::Bearer);
        s.timeout = Duration::from_millis(300);
        s.retry = RetryPolicy {
            max_attempts: 3,
            base_backoff_ms: 1,
            max_backoff_ms: 1,
            ..RetryPolicy::default()
        };
        Vendor::new(s).expect("valid vendor")
    }

    /// Sends a repeatable GET to `vendor`.
    async fn get(vendor: &Vendor) -> Sent {
        let req = ProxyRequest {
            method: Method::GET,
            path: "/thing".into(),
            query: None,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        let (limits, answers, metrics) = (Limits::default(), AnswerBudget::new(1 << 20), Metrics::default());
        let x = Exchange {
            limits: &limits,
            answers: &answers,
            deadline: None,
            repeatable: true,
            metrics: &metrics,
            trace: &valet_telemetry::propagation::TraceContext::new_trace(),
            scrub_also: &[],
            identity: None,
        };
        vendor.send(req, &Secret::from("s3cret".to_owned()), &x).await
    }

    /// An address nothing listens on.
    async fn closed_port() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// Reads one request's head from `conn`.
    async fn read_head(conn: &mut TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request head arrives");
            head.extend_from_slice(&buf[..n]);
        }
    }

    fn reason(sent: &Sent) -> &'static str {
        sent.result
            .as_ref()
            .map_or_else(EgressError::reason, |_| "answered")
    }

    #[tokio::test]
    async fn refused_connections_reached_nothing_and_each_counts() {
        let sent = get(&vendor(closed_port().await)).await;
        assert_eq!(reason(&sent), "VENDOR_UNREACHABLE");
        assert_eq!((sent.attempts, sent.reached), (3, Reached::No));
    }

    #[tokio::test]
    async fn no_free_slot_makes_no_attempt() {
        let v = vendor(closed_port().await);
        let _held: Vec<_> = (0..16)
            .map(|_| v.slots.clone().try_acquire_owned().unwrap())
            .collect();
        let sent = get(&v).await;
        assert_eq!(reason(&sent), "VENDOR_OVERLOADED");
        assert_eq!((sent.attempts, sent.reached), (0, Reached::No));
    }

    /// A vendor that takes one request and hands its listener and
    /// connection to `then`.
    async fn serve_once<F, Fut>(then: F) -> (Vendor, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(TcpListener, TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let v = vendor(listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            read_head(&mut conn).await;
            then(listener, conn).await;
        });
        (v, server)
    }

    #[tokio::test]
    async fn a_vendor_that_takes_the_request_and_never_answers_may_have_acted() {
        // Holds the connection open, silent, until the client gives up.
        let (v, server) = serve_once(|_listener, mut conn| async move {
            let _ = conn.read(&mut [0u8; 1]).await;
        })
        .await;
        let sent = get(&v).await;
        assert_eq!(reason(&sent), "VENDOR_TIMEOUT");
        assert_eq!((sent.attempts, sent.reached), (1, Reached::Maybe));
        server.await.unwrap();
    }

    /// The vendor answered the first attempt; the retries found it gone.
    /// The call fails as unreachable, yet a request did reach the vendor.
    #[tokio::test]
    async fn an_answer_before_refused_retries_still_counts_as_reached() {
        let (v, server) = serve_once(|listener, mut conn| async move {
            // Gone before the answer arrives: every retry is refused.
            drop(listener);
            conn.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        })
        .await;
        let sent = get(&v).await;
        server.await.unwrap();
        assert_eq!(reason(&sent), "VENDOR_UNREACHABLE");
        assert_eq!((sent.attempts, sent.reached), (3, Reached::Maybe));
    }
}
