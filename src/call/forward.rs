//! Step 6: the exchange with the vendor — lease the credential (for an
//! OAuth vendor, the grant material, swapped for an access token), send,
//! note the vendor's push-back, and on a 401 refresh and retry once — and
//! the scrubbed answer. Every part runs under the caller's deadline, and
//! ends the moment the tenant (or this integration) is disabled: the vendor
//! request is dropped mid-flight and pending retries never start.

use super::validate::ValidCall;
use super::{Call, lease, quota, refresh};
use crate::app::App;
use crate::oauth::Bearer;
use crate::status::Failure;
use valet_access::{Caller, Operation};
use valet_audit::Written;
use valet_credentials::Lease;
use valet_egress::{Exchange, Reached, Sent};

/// The step: lease, send, and on a 401 refresh and retry once. Says, with
/// egress, how many requests were made and whether any may have reached
/// the vendor; `unsynced` receives the last lease's audit entry if the
/// answer must wait for it ([`super::audited`]).
pub async fn run(
    app: &App,
    call: &Call,
    caller: &Caller,
    req: &ValidCall,
    unsynced: &mut Option<Written>,
) -> Sent<Failure> {
    let mut changes = app.keys.changes();
    tokio::select! {
        sent = exchange(app, call, caller, req, unsynced) => sent,
        () = disabled(app, &mut changes, req) => {
            tracing::warn!(tenant = req.key.tenant, vendor = req.key.vendor, "tenant disabled; call in flight cancelled");
            Sent {
                result: Err(super::authorize::disabled_failure(&req.key.tenant, &req.key.vendor)),
                attempts: 1,
                reached: Reached::Maybe,
            }
        }
    }
}

/// Resolves once the call's tenant or integration is disabled.
async fn disabled(app: &App, changes: &mut tokio::sync::watch::Receiver<u64>, req: &ValidCall) {
    loop {
        if app
            .keys
            .tenant_disabled(&req.key.tenant, &req.key.vendor)
            .is_some()
        {
            return;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The exchange itself: lease, send, push-back, refresh and retry once.
async fn exchange(
    app: &App,
    call: &Call,
    caller: &Caller,
    req: &ValidCall,
    unsynced: &mut Option<Written>,
) -> Sent<Failure> {
    let failed = |f, attempts, reached| Sent {
        result: Err(f),
        attempts,
        reached,
    };
    let (lease, bearer) = match credential(app, call, caller, req, unsynced).await {
        Ok(both) => both,
        Err(f) => return failed(f, 0, Reached::No),
    };
    let first = send(app, call, req, &lease, bearer.as_ref()).await;
    let (attempts, reached) = (first.attempts, first.reached);
    let answer = match first.result {
        Ok(answer) => answer,
        Err(f) => return failed(f, attempts, reached),
    };
    let used = lease.fingerprint().clone();
    let used_token = bearer.map(|b| (b.token.fingerprint, b.token.scopes));
    drop(lease);
    // The answer is in hand: past the deadline these stop waiting, and the
    // answer stands.
    let pushback = async {
        quota::vendor_pushback(app, req, &answer).await;
        Ok(())
    };
    let _ = call.within("noting the vendor's push-back", pushback).await;
    let answered = |answer| Sent {
        result: Ok(answer),
        attempts,
        reached,
    };
    if answer.status != 401 {
        return answered(answer);
    }
    match &used_token {
        // An OAuth vendor refused the access token: it is dropped (if no
        // other call has replaced it already) and a new one fetched below.
        Some((token, scopes)) => app.tokens.reject(&req.key, scopes, token).await,
        None => {
            let rotated = async { Ok(refresh::changed(app, caller, req, &used, &call.request_id).await) };
            let rotated = call.within("checking for a rotated credential", rotated).await;
            if !rotated.unwrap_or(false) {
                return answered(answer);
            }
        }
    }
    // A later entry is durable only after every earlier one.
    let (lease, bearer) = match credential(app, call, caller, req, unsynced).await {
        Ok(both) => both,
        Err(f) => return failed(f, attempts, reached),
    };
    let same_token =
        matches!((&used_token, &bearer), (Some((old, _)), Some(new)) if *old == new.token.fingerprint);
    if same_token {
        return answered(answer);
    }
    let retry = send(app, call, req, &lease, bearer.as_ref()).await;
    // The vendor refused the first request (401): only the retry may have
    // been acted on.
    Sent {
        attempts: attempts + retry.attempts,
        ..retry
    }
}

/// The call's credential, leased (audited first), and for an OAuth vendor
/// the access token it stands for; `unsynced` receives the lease's audit
/// entry if the answer must wait for it.
async fn credential(
    app: &App,
    call: &Call,
    caller: &Caller,
    req: &ValidCall,
    unsynced: &mut Option<Written>,
) -> Result<(Lease, Option<Bearer>), Failure> {
    let leased = lease::credential(app, caller, req, &call.request_id, call.source);
    let leased = call.within("fetching the credential", leased).await?;
    *unsynced = leased.unsynced;
    let bearer = crate::oauth::bearer(app, req, &leased.lease);
    let bearer = call.within("fetching the OAuth access token", bearer).await?;
    Ok((leased.lease, bearer))
}

/// Sends the call with the leased credential. It may be retried only when
/// repeating it is harmless: a READ, or a WRITE carrying our idempotency
/// key in the header the vendor dedupes by. Egress says how many attempts
/// were made and whether any may have reached the vendor.
///
/// For an OAuth vendor the access token in `bearer` is sent instead of the
/// leased grant material, and the answer is scrubbed of both.
pub async fn send(
    app: &App,
    this: &Call,
    call: &ValidCall,
    lease: &Lease,
    bearer: Option<&Bearer>,
) -> Sent<Failure> {
    let exchange = Exchange {
        limits: &app.limits,
        answers: &app.answers,
        deadline: this.deadline,
        repeatable: repeatable(call),
        metrics: &app.metrics,
        trace: &this.trace,
        scrub_also: bearer.map_or(&[][..], |b| &b.scrub_also[..]),
        identity: bearer.and_then(|b| b.identity.as_ref()),
    };
    let secret = bearer.map_or(lease.secret(), |b| &b.token.secret);
    let sent = call.vendor.send(call.request.clone(), secret, &exchange).await;
    sent.map_err(|e| {
        tracing::warn!(
            vendor = call.key.vendor,
            reason = e.reason(),
            "vendor call failed"
        );
        Failure::from(e)
    })
}

fn repeatable(call: &ValidCall) -> bool {
    match call.operation {
        Operation::Read => true,
        Operation::Write => call
            .vendor
            .idempotency_header()
            .is_some_and(|h| call.request.headers.contains_key(h)),
    }
}
