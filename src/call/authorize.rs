//! Step 3: may this key make this call.

use super::Call;
use super::validate::ValidCall;
use crate::status::Failure;
use valet_access::Caller;

/// Checks the key's grant against tenant, vendor and operation; only then
/// is the tenant the call's (for its span, metrics and log line).
pub fn run(call: &mut Call, caller: &Caller, req: &ValidCall) -> Result<(), Failure> {
    caller
        .grant
        .allows(&req.key.tenant, &req.key.vendor, req.operation)?;
    call.tenant = Some(req.key.tenant.clone());
    Ok(())
}
