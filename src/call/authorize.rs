//! Step 3: may this key make this call, and is its tenant enabled.

use super::Call;
use super::validate::ValidCall;
use crate::app::App;
use crate::refusal::{self, Asked};
use crate::status::{Failure, Reason};
use valet_access::Caller;

/// Checks the key's grant against tenant, vendor and operation (a refusal
/// is on the record: [`crate::refusal`]); only then is the tenant the
/// call's (for its span, metrics and log line). Then the kill switch: a
/// disabled tenant or integration is refused here, before any idempotency
/// key is claimed, quota spent or credential leased.
pub fn run(app: &App, call: &mut Call, caller: &Caller, req: &ValidCall) -> Result<(), Failure> {
    let allowed = caller
        .grant
        .allows(&req.key.tenant, &req.key.vendor, req.operation);
    if let Err(denied) = allowed {
        let asked = Asked {
            what: req.operation.as_str(),
            tenant: Some(&req.key.tenant),
            vendor: Some(&req.key.vendor),
            request_id: Some(&call.request_id),
            source: call.source,
        };
        return Err(refusal::record(app, caller, asked, denied.into()));
    }
    call.tenant = Some(req.key.tenant.clone());
    if app
        .keys
        .tenant_disabled(&req.key.tenant, &req.key.vendor)
        .is_some()
    {
        return Err(disabled_failure(&req.key.tenant, &req.key.vendor));
    }
    Ok(())
}

/// The refusal for a disabled tenant. The admin's reason stays in the audit
/// log: it may describe an incident.
pub fn disabled_failure(tenant: &str, vendor: &str) -> Failure {
    Failure::new(
        Reason::TenantDisabled,
        format!(
            "tenant '{tenant}' is disabled for vendor '{vendor}' by an administrator; calls are refused until it is enabled"
        ),
    )
}
