//! One call, end to end — the steps in order, each in its own module:
//!
//! 1. [`authenticate`]: who is calling (API key → SHA-256 → record).
//! 2. [`validate`]: is the request well-formed and safe (vendor known, path
//!    relative and normalised, headers allowed, sizes bounded, reason given).
//! 3. [`authorize`]: may this key act for this tenant, vendor and operation.
//!    Then [`idempotency`]: claim the call's key, or replay the vendor's
//!    earlier answer to it. Then [`quota`]: is the tenant within its quota
//!    (and not paused by the vendor's push-back) — after the claim, so a
//!    replay is never counted or refused.
//! 4. [`lease`]: audit the access, then decrypt the credential into a
//!    zeroizing lease for this call only.
//! 5. [`forward`]: send to the vendor's origin only, inject, never follow
//!    redirects, bound by deadline and size, scrub the answer.
//! 6. [`refresh`]: on a vendor 401, check the store for a credential rotated
//!    elsewhere; if there is one, lease it and retry once.

pub mod authenticate;
pub mod authorize;
pub mod forward;
pub mod idempotency;
pub mod lease;
pub mod quota;
pub mod refresh;
pub mod validate;

use crate::app::App;
use crate::proto;
use crate::status::{Failure, Reason};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use valet_egress::{Reached, Sent};

/// Per-call facts from the transport.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Valet's id for this call.
    pub request_id: String,
    /// When the caller stops waiting (from `grpc-timeout`).
    pub deadline: Option<Instant>,
    /// The verified client certificate's identity, on an mTLS listener.
    pub identity: Option<String>,
}

/// What the log line, span and metrics of a finished call report.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// The caller's key id, once authenticated.
    pub caller: Option<String>,
    /// The caller's key name, once authenticated.
    pub caller_name: Option<String>,
    /// The tenant, once the caller is authorized for it.
    pub tenant: Option<String>,
    /// The vendor, once the request is validated.
    pub vendor: Option<String>,
    /// `read` or `write`, once the request is validated.
    pub operation: Option<&'static str>,
    /// Whether a stored answer was replayed.
    pub replayed: bool,
    /// Vendor status, if the vendor answered.
    pub status: Option<u16>,
    /// Requests sent to the vendor.
    pub attempts: u32,
    /// RateLimit response metadata for an admitted call.
    pub ratelimit: quota::RateLimitHeaders,
}

/// Runs one call through every step.
pub async fn handle(
    app: &App,
    metadata: &MetadataMap,
    req: proto::CallRequest,
    ctx: &CallContext,
    outcome: &mut Outcome,
) -> Result<proto::CallResponse, Failure> {
    let caller = authenticate::caller(&app.keys, metadata, ctx.identity.as_deref())?;
    outcome.caller = Some(caller.id.clone());
    outcome.caller_name = Some(caller.name.clone());
    let mut call = validate::call(&app.registry, &app.limits, req)?;
    outcome.vendor = Some(call.key.vendor.clone());
    outcome.operation = Some(call.operation.as_str());
    authorize::call(&caller, &call)?;
    outcome.tenant = Some(call.key.tenant.clone());
    let scope = match within(
        ctx,
        "claiming the idempotency key",
        idempotency::begin(app, &mut call),
    )
    .await?
    {
        idempotency::Step::Replay(mut answer) => {
            answer.replayed = true;
            answer.request_id = ctx.request_id.clone();
            outcome.status = u16::try_from(answer.status).ok();
            outcome.replayed = true;
            app.metrics.replayed(&call.key.tenant, &call.key.vendor);
            return Ok(answer);
        }
        idempotency::Step::Proceed(scope) => scope,
    };
    // The quota after the claim: a replay costs the vendor nothing, so it is
    // neither counted nor refused. A refused call frees its key.
    outcome.ratelimit = match within(ctx, "checking the quota", quota::check(app, &call)).await {
        Ok(headers) => headers,
        Err(refused) => {
            idempotency::release(app, scope).await;
            return Err(refused);
        }
    };
    let sent = exchange(app, &caller, &call, ctx).await;
    outcome.attempts = sent.attempts;
    idempotency::finish(app, scope, &sent).await;
    let answer = sent.result?;
    outcome.status = Some(answer.status);
    Ok(proto::CallResponse {
        status: u32::from(answer.status),
        headers: answer
            .headers
            .into_iter()
            .map(|(name, value)| proto::Header { name, value })
            .collect(),
        body: answer.body.to_vec(),
        attempts: outcome.attempts,
        replayed: false,
        request_id: ctx.request_id.clone(),
    })
}

/// Lease, send, and on a 401 refresh and retry once; says, with egress,
/// how many requests were made and whether any may have reached the vendor.
async fn exchange(
    app: &App,
    caller: &valet_access::Caller,
    call: &validate::ValidCall,
    ctx: &CallContext,
) -> Sent<Failure> {
    let failed = |f, attempts, reached| Sent {
        result: Err(f),
        attempts,
        reached,
    };
    let lease = match within(
        ctx,
        "fetching the credential",
        lease::credential(app, caller, call, &ctx.request_id),
    )
    .await
    {
        Ok(lease) => lease,
        Err(f) => return failed(f, 0, Reached::No),
    };
    let first = forward::send(app, call, &lease, ctx.deadline).await;
    let (attempts, reached) = (first.attempts, first.reached);
    let answer = match first.result {
        Ok(answer) => answer,
        Err(f) => return failed(f, attempts, reached),
    };
    let used = lease.fingerprint().clone();
    drop(lease);
    quota::vendor_pushback(app, call, &answer).await;
    if answer.status == 401 && refresh::changed(app, caller, call, &used, &ctx.request_id).await {
        let lease = match within(
            ctx,
            "fetching the credential",
            lease::credential(app, caller, call, &ctx.request_id),
        )
        .await
        {
            Ok(lease) => lease,
            Err(f) => return failed(f, attempts, reached),
        };
        let retry = forward::send(app, call, &lease, ctx.deadline).await;
        // The vendor refused the first request (401): only the retry may
        // have been acted on.
        return Sent {
            attempts: attempts + retry.attempts,
            ..retry
        };
    }
    Sent {
        result: Ok(answer),
        attempts,
        reached,
    }
}

/// Runs `step` within the caller's deadline: a slow quota backend,
/// idempotency store or credential store must not keep a caller waiting
/// past it. `doing` names the step in the error.
async fn within<T>(
    ctx: &CallContext,
    doing: &str,
    step: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let Some(deadline) = ctx.deadline else {
        return step.await;
    };
    tokio::time::timeout_at(deadline, step).await.unwrap_or_else(|_| {
        Err(Failure::new(
            Reason::DeadlineExceeded,
            format!("the call's deadline expired while {doing}"),
        ))
    })
}
