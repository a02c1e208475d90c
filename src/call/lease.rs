//! Step 4: the credential, audited, for this call only.

use super::validate::ValidCall;
use crate::app::{App, LeaseRecorder, actor};
use crate::status::Failure;
use tracing::Instrument as _;
use tracing::field::Empty;
use valet_access::Caller;
use valet_audit::Written;
use valet_credentials::Lease;

/// A leased credential, and (with `[audit] durability = "before_answer"`)
/// its audit entry, written but not yet durable: the answer waits for it.
pub struct Leased {
    /// The credential.
    pub lease: Lease,
    /// See the type docs.
    pub unsynced: Option<Written>,
}

/// Leases the call's credential; the audit entry is written (or, with
/// `before_send`, durable) before the envelope is opened, and no entry
/// means no credential.
pub async fn credential(
    app: &App,
    caller: &Caller,
    call: &ValidCall,
    request_id: &str,
    source: Option<std::net::IpAddr>,
) -> Result<Leased, Failure> {
    let scopes = call.vendor.oauth().map(|o| {
        o.scopes_for(call.operation == valet_access::Operation::Write)
            .join(" ")
    });
    let recorder = LeaseRecorder::new(app).with_scopes(scopes).with_source(source);
    // `valet.cache` is filled in by the Secrets Manager cache (hit, miss,
    // stale); the embedded store has no cache and leaves it out.
    let span = valet_telemetry::sampling::span(|| {
        tracing::info_span!(
            "valet.credential.lease",
            valet.tenant = %call.key.tenant,
            valet.vendor = %call.key.vendor,
            valet.cache = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty
        )
    });
    let lease = app
        .vault
        .lease(&call.key, &actor(caller), &call.reason, request_id, &recorder)
        .instrument(span.clone())
        .await;
    match lease {
        Ok(lease) => Ok(Leased {
            lease,
            unsynced: recorder.into_unsynced(),
        }),
        Err(e) => {
            let failure = Failure::from(e);
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", failure.reason.as_str());
            Err(failure)
        }
    }
}
