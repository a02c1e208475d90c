//! Step 3c: the tenant's quota, after the idempotency claim and before the
//! credential lease; and, after the vendor answered, its push-back.

use super::Call;
use super::validate::ValidCall;
use crate::app::App;
use crate::status::{Failure, Reason};
use std::time::{Duration, SystemTime};
use tracing::Instrument as _;
use tracing::field::Empty;
use valet_access::Operation;
use valet_egress::ProxyResponse;
use valet_egress::retry::retry_after;
use valet_quota::Verdict;

/// Response metadata for an admitted call, in the shape of the IETF
/// RateLimit header fields.
pub type RateLimitHeaders = Vec<(&'static str, String)>;

/// The step: the call's quota, under its deadline; an admitted call's
/// RateLimit metadata goes on the call.
pub async fn run(app: &App, call: &mut Call, req: &ValidCall) -> Result<(), Failure> {
    call.ratelimit = call.within("checking the quota", check(app, req)).await?;
    Ok(())
}

/// Checks the call against its policies. Admitted calls get RateLimit
/// metadata; refused ones RESOURCE_EXHAUSTED `QUOTA_EXCEEDED` naming the
/// policy, with a retry-after — or, when the shared backend cannot answer
/// and `on_backend_error = "deny"`, UNAVAILABLE `QUOTA_BACKEND_UNAVAILABLE`,
/// so nobody chases the tenant's usage during a Redis outage. The check has
/// its own span; its outcome (`unlimited`, `admitted`, `shadow_exceeded`,
/// `refused`, `backend_unavailable`) also goes on the call's span as
/// `valet.quota`.
pub async fn check(app: &App, call: &ValidCall) -> Result<RateLimitHeaders, Failure> {
    let read = call.operation == Operation::Read;
    let (tenant, vendor) = (&call.key.tenant, &call.key.vendor);
    let span = valet_telemetry::sampling::span(|| {
        tracing::info_span!(
            "valet.quota.check",
            valet.quota = Empty,
            valet.quota.policy = Empty,
            otel.status_code = Empty
        )
    });
    let verdict = app
        .quotas
        .check(tenant, vendor, read)
        .instrument(span.clone())
        .await;
    let (outcome, policy) = match &verdict {
        Verdict::Unlimited => ("unlimited", None),
        Verdict::Admitted { policy, shadow, .. } => {
            for id in shadow {
                app.metrics.quota_shadow_refused(tenant, vendor, id);
            }
            let outcome = if shadow.is_empty() {
                "admitted"
            } else {
                "shadow_exceeded"
            };
            (outcome, Some(policy.id()))
        }
        Verdict::Refused { policy_id, .. } => {
            app.metrics.quota_refused(tenant, vendor, policy_id);
            span.record("otel.status_code", "ERROR");
            ("refused", Some(policy_id.clone()))
        }
        Verdict::Unavailable(_) => {
            app.metrics.quota_backend_unavailable(vendor);
            span.record("otel.status_code", "ERROR");
            ("backend_unavailable", None)
        }
    };
    span.record("valet.quota", outcome);
    if let Some(policy) = &policy {
        span.record("valet.quota.policy", policy.as_str());
    }
    tracing::Span::current().record("valet.quota", outcome);
    answer(call, verdict)
}

fn answer(call: &ValidCall, verdict: Verdict) -> Result<RateLimitHeaders, Failure> {
    match verdict {
        Verdict::Unlimited => Ok(Vec::new()),
        Verdict::Unavailable(unavailable) => Err(unavailable.into()),
        Verdict::Admitted { policy, decision, .. } => {
            let id = policy.id();
            Ok(vec![
                (
                    "ratelimit-policy",
                    format!("\"{id}\";q={};w={}", policy.burst, ceil_secs(policy.window())),
                ),
                (
                    "ratelimit",
                    format!(
                        "\"{id}\";r={};t={}",
                        decision.remaining,
                        ceil_secs(decision.reset)
                    ),
                ),
            ])
        }
        Verdict::Refused {
            policy_id,
            retry_after,
        } => {
            let why = if policy_id == "vendor-pushback" {
                format!(
                    "vendor '{}' asked Valet to back off (429 Retry-After)",
                    call.key.vendor
                )
            } else {
                format!("over quota policy '{policy_id}'")
            };
            Err(Failure::new(
                Reason::QuotaExceeded,
                format!(
                    "tenant '{}' vendor '{}': {why}; retry after {} ms",
                    call.key.tenant,
                    call.key.vendor,
                    retry_after.as_millis()
                ),
            )
            .with_retry_after(retry_after)
            .with_info("policy", policy_id))
        }
    }
}

/// After a vendor 429 with `Retry-After`, refuses this tenant × vendor
/// locally until then (at most `app.max_pushback`), so the next calls do not
/// hammer the vendor.
pub async fn vendor_pushback(app: &App, call: &ValidCall, answer: &ProxyResponse) {
    if answer.status != 429 {
        return;
    }
    let header = answer
        .headers
        .iter()
        .find(|(n, _)| n == "retry-after")
        .map(|(_, v)| v.as_str());
    if let Some(wait) = header.and_then(|v| retry_after(v, SystemTime::now())) {
        let wait = wait.min(app.max_pushback);
        tracing::info!(
            tenant = call.key.tenant,
            vendor = call.key.vendor,
            pause_ms = wait.as_millis() as u64,
            "vendor push-back"
        );
        app.quotas.pause(&call.key.tenant, &call.key.vendor, wait).await;
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}
