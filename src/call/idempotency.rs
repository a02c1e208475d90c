//! Step 3b: idempotency keys — a write reaches the vendor at most once per
//! key. Before the quota (a replay is never counted or refused; a call the
//! quota refuses frees its key), before the lease.

use super::validate::ValidCall;
use super::{Call, Flow};
use crate::app::{App, now_ms};
use crate::proto;
use crate::status::{Failure, Reason};
use std::sync::atomic::Ordering;
use std::time::Duration;
use valet_egress::{ProxyRequest, Reached, Sent};
use valet_idempotency::{Begin, Scope, StoredHeader, StoredResponse, Terms};

/// Purge expired records every this many keyed calls.
const PURGE_EVERY: u64 = 4096;

/// The retry-after hint while another call holds the key. Not the lease
/// left (up to minutes): most calls end in well under a second, and a retry
/// then gets the replay.
const IN_FLIGHT_RETRY_HINT: Duration = Duration::from_millis(500);

/// What the call does next.
#[derive(Debug)]
pub enum Step {
    /// Go to the vendor; `Some` holds the key's record to complete after.
    Proceed(Option<Scope>),
    /// The vendor already answered this key: return its answer again.
    Replay(proto::CallResponse),
}

/// The step: claims the call's key under its deadline — or answers now
/// with the vendor's earlier answer to it.
pub async fn run(app: &App, call: &mut Call, req: &mut ValidCall) -> Result<Flow<Option<Scope>>, Failure> {
    match call
        .within("claiming the idempotency key", begin(app, req))
        .await?
    {
        Step::Proceed(claim) => Ok(Flow::Continue(claim)),
        Step::Replay(mut answer) => {
            answer.replayed = true;
            answer.request_id = call.request_id.clone();
            call.status = u16::try_from(answer.status).ok();
            call.replayed = true;
            app.metrics.replayed(&req.key.tenant, &req.key.vendor);
            Ok(Flow::Respond(answer))
        }
    }
}

/// Claims the call's key, or answers from its record.
pub async fn begin(app: &App, call: &mut ValidCall) -> Result<Step, Failure> {
    let Some(key) = call.idempotency_key.clone() else {
        return Ok(Step::Proceed(None));
    };
    let scope = Scope {
        tenant: call.key.tenant.clone(),
        vendor: call.key.vendor.clone(),
        key,
    };
    let fingerprint = fingerprint(&call.request);
    let header = call.vendor.idempotency_header().cloned();
    if let Some(name) = &header {
        let value = scope.vendor_key().parse().expect("hex is a valid header value");
        call.request.headers.insert(name.clone(), value);
    }
    let terms = Terms {
        now_ms: now_ms(),
        lease_ms: app.idempotency_config.lease_ms,
        retention_ms: app.idempotency_config.retention_ms,
        vendor_dedupes: header.is_some(),
    };
    maybe_purge(app);
    let decision = app
        .idempotency
        .begin(&scope, &fingerprint, &terms)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "idempotency store failed");
            unavailable()
        })?;
    let retry = |reason, message: &str, after: Option<Duration>| {
        let f = Failure::new(reason, message);
        Err(match after {
            Some(d) => f.with_retry_after(d),
            None => f,
        })
    };
    match decision {
        Begin::Proceed => Ok(Step::Proceed(Some(scope))),
        Begin::Replay(sealed) => replay(app, &scope, &sealed).map(Step::Replay),
        Begin::InFlight(lease_left) => retry(
            Reason::IdempotencyInFlight,
            "a call with this idempotency key is in flight; retry shortly to get its answer",
            Some(lease_left.min(IN_FLIGHT_RETRY_HINT)),
        ),
        Begin::Reused => retry(
            Reason::IdempotencyKeyReused,
            "this idempotency key was used with a different request (method, path, headers or body)",
            None,
        ),
        Begin::Unknown(Some(after)) => retry(
            Reason::IdempotencyOutcomeUnknown,
            "an earlier call with this key may or may not have reached the vendor; retry after the lease",
            Some(after),
        ),
        Begin::Unknown(None) => retry(
            Reason::IdempotencyOutcomeUnknownFinal,
            "an earlier call with this key may or may not have reached the vendor, and the vendor does not dedupe by key: check with the vendor, then use a new key",
            None,
        ),
    }
}

/// Frees the call's key: nothing was sent (the quota refused the call), so
/// a retry with the key proceeds as a first call.
pub async fn release(app: &App, scope: Option<Scope>) {
    let Some(scope) = scope else { return };
    if let Err(e) = app.idempotency.abandon(&scope).await {
        tracing::error!(error = %e, "cannot free an idempotency key");
    }
}

/// Records how the call ended: the vendor's answer (sealed) for replays; the
/// key freed when the request provably never left; `unknown` otherwise.
pub async fn finish(app: &App, scope: Option<Scope>, sent: &Sent<Failure>) {
    let Some(scope) = scope else { return };
    let store = &app.idempotency;
    let config = &app.idempotency_config;
    let done = match &sent.result {
        Ok(answer) => {
            let response = StoredResponse {
                status: u32::from(answer.status),
                headers: answer
                    .headers
                    .iter()
                    .map(|(name, value)| StoredHeader {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                body: answer.body.to_vec(),
                attempts: sent.attempts,
            };
            let sealed = app
                .vault
                .seal_data(&scope.tenant, &scope.seal_label(), &response.to_bytes());
            store
                .complete(&scope, sealed, now_ms(), config.retention_ms)
                .await
        }
        Err(_) if sent.reached == Reached::No => store.abandon(&scope).await,
        Err(_) => {
            store
                .mark_unknown(&scope, now_ms() + config.lease_ms, now_ms(), config.retention_ms)
                .await
        }
    };
    if let Err(e) = done {
        tracing::error!(error = %e, "cannot record how an idempotent call ended");
    }
}

fn replay(app: &App, scope: &Scope, sealed: &[u8]) -> Result<proto::CallResponse, Failure> {
    let plain = app
        .vault
        .open_data(&scope.tenant, &scope.seal_label(), sealed)
        .map_err(|e| {
            tracing::error!(error = %e, "stored idempotent response does not open");
            Failure::new(
                Reason::IdempotencyRecordUnreadable,
                "the stored response cannot be read",
            )
        })?;
    let stored = StoredResponse::from_bytes(&plain).map_err(|_| {
        Failure::new(
            Reason::IdempotencyRecordUnreadable,
            "the stored response cannot be read",
        )
    })?;
    Ok(proto::CallResponse {
        status: stored.status,
        headers: stored
            .headers
            .into_iter()
            .map(|h| proto::Header {
                name: h.name,
                value: h.value,
            })
            .collect(),
        body: stored.body,
        attempts: stored.attempts,
        replayed: false,
        request_id: String::new(),
    })
}

/// The request's fingerprint ([`valet_idempotency::fingerprint()`]).
pub fn fingerprint(req: &ProxyRequest) -> String {
    let headers = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    valet_idempotency::fingerprint(
        req.method.as_str(),
        &req.path,
        req.query.as_deref(),
        headers,
        &req.body,
    )
}

/// The store could not record the key: the write is refused, never sent
/// unrecorded. Redis is retried on the next call.
fn unavailable() -> Failure {
    Failure::new(
        Reason::IdempotencyStoreUnavailable,
        "the idempotency store is unavailable, so the write was not sent; retry shortly",
    )
    .with_retry_after(Duration::from_secs(1))
}

fn maybe_purge(app: &App) {
    if app.idempotency_calls.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1 {
        let store = app.idempotency.clone();
        tokio::spawn(async move {
            if let Err(e) = store.purge_expired(now_ms()).await {
                tracing::warn!(error = %e, "purging expired idempotency records failed");
            }
        });
    }
}
