//! Step 3: may this key make this call, and is its tenant enabled.

use super::Call;
use super::validate::ValidCall;
use crate::app::App;
use crate::status::{Failure, Reason};
use valet_access::Caller;

/// Checks the key's grant against tenant, vendor and operation; only then
/// is the tenant the call's (for its span, metrics and log line). Then the
/// kill switch: a disabled tenant or integration is refused here, before
/// any idempotency key is claimed, quota spent or credential leased.
pub fn run(app: &App, call: &mut Call, caller: &Caller, req: &ValidCall) -> Result<(), Failure> {
    caller
        .grant
        .allows(&req.key.tenant, &req.key.vendor, req.operation)?;
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
