//! One call, end to end. [`handle`] is the list of steps, in order, one
//! line each; each step is its own module, reads and fills in the one
//! [`Call`] context, and runs under the caller's deadline:
//!
//! 1. [`authenticate`]: who is calling (API key → SHA-256 → record), and
//!    may its key be used from the call's source address.
//! 2. [`validate`]: is the request well-formed and safe (vendor known, path
//!    relative and normalised, headers allowed, sizes bounded, reason given).
//! 3. [`authorize`]: may this key act for this tenant, vendor and operation.
//! 4. [`idempotency`]: claim the call's key — or answer now with the
//!    vendor's earlier answer to it ([`Flow::Respond`], a replay).
//! 5. [`quota`]: is the tenant within its quota (and not paused by the
//!    vendor's push-back) — after the claim, so a replay is never counted or
//!    refused; a refused call frees its key.
//! 6. [`forward`]: the exchange with the vendor — [`lease`] the credential
//!    (audited first), send it to the vendor's origin only through egress
//!    (retries, breaker, scrubbing), note the vendor's push-back, and on a
//!    401 [`refresh`]: if the credential was rotated elsewhere, lease it
//!    and retry once.
//! 7. [`idempotency::finish`]: the answer kept for replays, the key freed,
//!    or the outcome marked unknown; then [`audited`]: with audit
//!    durability `before_answer`, the answer waits until the lease's audit
//!    entry is on disk.
//! 8. [`record`]: the span, metrics and log line of the finished call
//!    (run by the Gateway service, however the call ended).

pub mod audited;
pub mod authenticate;
pub mod authorize;
pub mod forward;
pub mod idempotency;
pub mod lease;
pub mod quota;
pub mod record;
pub mod refresh;
pub mod validate;

use crate::app::App;
use crate::proto;
use crate::status::{Failure, Reason};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use valet_egress::{Reached, Sent};

/// One call's state, from arrival to its record: what the transport said,
/// what each step learned, and how the exchange with the vendor went. The
/// steps fill it in; [`record`] observes it once the call has ended.
#[derive(Debug)]
pub struct Call {
    /// Valet's id for this call.
    pub request_id: String,
    /// When the call arrived.
    pub started: Instant,
    /// When the caller stops waiting (from `grpc-timeout`, less a margin).
    pub deadline: Option<Instant>,
    /// The verified client certificate's identity, on an mTLS listener.
    pub identity: Option<String>,
    /// The caller's source address (see [`crate::source`]), checked
    /// against keys bound to networks; `None` if it cannot be known.
    pub source: Option<std::net::IpAddr>,
    /// The call's server span (disabled when no tracer records spans).
    pub span: tracing::Span,
    /// The call's trace context, kept without a tracer: what the vendor
    /// and the log line get when the span records nothing.
    pub trace: valet_telemetry::propagation::TraceContext,
    /// The caller's key id and name, once authenticated.
    pub caller: Option<String>,
    /// See `caller`.
    pub caller_name: Option<String>,
    /// The tenant, once the caller is authorized for it.
    pub tenant: Option<String>,
    /// The vendor, once the request is validated.
    pub vendor: Option<String>,
    /// `read` or `write`, once the request is validated.
    pub operation: Option<&'static str>,
    /// Whether a stored answer was replayed.
    pub replayed: bool,
    /// The vendor's status, if it answered.
    pub status: Option<u16>,
    /// Requests sent to the vendor.
    pub attempts: u32,
    /// Whether any request may have reached the vendor.
    pub reached: Reached,
    /// RateLimit response metadata for an admitted call.
    pub ratelimit: quota::RateLimitHeaders,
}

/// What a step says: go on with what it produced, or answer now.
#[derive(Debug)]
pub enum Flow<T> {
    /// Go on to the next step.
    Continue(T),
    /// Answer the caller now (an idempotent replay).
    Respond(proto::CallResponse),
}

impl Call {
    /// A call that has just arrived.
    pub fn new(
        request_id: String,
        deadline: Option<Instant>,
        identity: Option<String>,
        trace: valet_telemetry::propagation::TraceContext,
    ) -> Self {
        Self {
            span: record::server_span(&request_id),
            trace,
            request_id,
            started: Instant::now(),
            deadline,
            identity,
            source: None,
            caller: None,
            caller_name: None,
            tenant: None,
            vendor: None,
            operation: None,
            replayed: false,
            status: None,
            attempts: 0,
            reached: Reached::No,
            ratelimit: Vec::new(),
        }
    }

    /// Runs `step` within the caller's deadline: a slow quota backend,
    /// idempotency store or credential store must not keep a caller waiting
    /// past it. `doing` names the step in the error.
    pub async fn within<T>(
        &self,
        doing: &str,
        step: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let Some(deadline) = self.deadline else {
            return step.await;
        };
        tokio::time::timeout_at(deadline, step).await.unwrap_or_else(|_| {
            Err(Failure::new(
                Reason::DeadlineExceeded,
                format!("the call's deadline expired while {doing}"),
            ))
        })
    }
}

/// Runs one call through every step (see the module docs).
pub async fn handle(
    app: &App,
    call: &mut Call,
    metadata: &MetadataMap,
    req: proto::CallRequest,
) -> Result<proto::CallResponse, Failure> {
    let caller = authenticate::run(app, call, metadata)?;
    let mut req = validate::run(app, call, req)?;
    authorize::run(app, call, &caller, &req)?;
    let claim = match idempotency::run(app, call, &mut req).await? {
        Flow::Continue(claim) => claim,
        Flow::Respond(replay) => return Ok(replay),
    };
    if let Err(refused) = quota::run(app, call, &req).await {
        idempotency::release(app, claim).await;
        return Err(refused);
    }
    let mut unsynced = None;
    let sent = forward::run(app, call, &caller, &req, &mut unsynced).await;
    idempotency::finish(app, claim, &sent).await;
    let sent = audited::settle(app, call, sent, unsynced).await;
    respond(call, sent)
}

/// The caller's answer from the vendor's, and what the record reports.
fn respond(call: &mut Call, sent: Sent<Failure>) -> Result<proto::CallResponse, Failure> {
    call.attempts = sent.attempts;
    call.reached = sent.reached;
    let answer = sent.result?;
    call.status = Some(answer.status);
    Ok(proto::CallResponse {
        attempts: call.attempts,
        request_id: call.request_id.clone(),
        ..crate::proto::call_response(answer)
    })
}
