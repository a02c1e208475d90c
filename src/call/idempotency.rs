//! Step 3b: idempotency keys — a write reaches the vendor at most once per
//! key. Before the quota (a replay is never counted or refused; a call the
//! quota refuses frees its key), before the lease.

use super::validate::ValidCall;
use crate::app::{App, now_ms};
use crate::proto;
use crate::status::Failure;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;
use valet_egress::{ProxyRequest, ProxyResponse};
use valet_idempotency::{Begin, Scope, StoredHeader, StoredResponse, Terms};

/// Purge expired records every this many keyed calls.
const PURGE_EVERY: u64 = 4096;

/// The retry-after hint while another call holds the key. Not the lease
/// left (up to minutes): most calls end in well under a second, and a retry
/// then gets the replay.
const IN_FLIGHT_RETRY_HINT: Duration = Duration::from_millis(500);

/// Reasons of failures that prove the request never reached the vendor.
const NOT_SENT: &[&str] = &[
    "VENDOR_UNREACHABLE",
    "VENDOR_TLS_ERROR",
    "PATH_ESCAPES_ORIGIN",
    "VENDOR_ADDRESS_FORBIDDEN",
    "VENDOR_CIRCUIT_OPEN",
    "VENDOR_OVERLOADED",
];

/// What the call does next.
#[derive(Debug)]
pub enum Step {
    /// Go to the vendor; `Some` holds the key's record to complete after.
    Proceed(Option<Scope>),
    /// The vendor already answered this key: return its answer again.
    Replay(proto::CallResponse),
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
    let retry = |code, reason, message: String, after: Option<Duration>| {
        let f = Failure::new(code, reason, message);
        Err(match after {
            Some(d) => f.with_retry_after(d),
            None => f,
        })
    };
    match decision {
        Begin::Proceed => Ok(Step::Proceed(Some(scope))),
        Begin::Replay(sealed) => replay(app, &scope, &sealed).map(Step::Replay),
        Begin::InFlight(lease_left) => retry(
            Code::Aborted,
            "IDEMPOTENCY_IN_FLIGHT",
            "a call with this idempotency key is in flight; retry shortly to get its answer".into(),
            Some(lease_left.min(IN_FLIGHT_RETRY_HINT)),
        ),
        Begin::Reused => retry(
            Code::FailedPrecondition,
            "IDEMPOTENCY_KEY_REUSED",
            "this idempotency key was used with a different request (method, path, headers or body)".into(),
            None,
        ),
        Begin::Unknown(Some(after)) => retry(
            Code::Aborted,
            "IDEMPOTENCY_OUTCOME_UNKNOWN",
            "an earlier call with this key may or may not have reached the vendor; retry after the lease".into(),
            Some(after),
        ),
        Begin::Unknown(None) => retry(
            Code::FailedPrecondition,
            "IDEMPOTENCY_OUTCOME_UNKNOWN",
            "an earlier call with this key may or may not have reached the vendor, and the vendor does not dedupe by key: check with the vendor, then use a new key".into(),
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
pub async fn finish(app: &App, scope: Option<Scope>, result: &Result<ProxyResponse, Failure>, sent: bool) {
    let Some(scope) = scope else { return };
    let store = &app.idempotency;
    let config = &app.idempotency_config;
    let done = match result {
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
                attempts: answer.attempts,
            };
            let sealed = app
                .vault
                .seal_data(&scope.tenant, &scope.seal_label(), &response.to_bytes());
            store
                .complete(&scope, sealed, now_ms(), config.retention_ms)
                .await
        }
        Err(f) if !sent || NOT_SENT.contains(&f.reason) => store.abandon(&scope).await,
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
                Code::Internal,
                "IDEMPOTENCY_RECORD_UNREADABLE",
                "the stored response cannot be read",
            )
        })?;
    let stored = StoredResponse::from_bytes(&plain).map_err(|_| {
        Failure::new(
            Code::Internal,
            "IDEMPOTENCY_RECORD_UNREADABLE",
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

/// The request's fingerprint ([`valet_idempotency::fingerprint`]).
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

fn unavailable() -> Failure {
    Failure::new(
        Code::Unavailable,
        "IDEMPOTENCY_STORE_UNAVAILABLE",
        "the idempotency store is unavailable",
    )
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
