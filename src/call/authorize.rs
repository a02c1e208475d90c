//! Step 3: may this key make this call.

use super::validate::ValidCall;
use crate::status::Failure;
use valet_access::Caller;

/// Checks the key's grant against tenant, vendor and operation.
pub fn call(caller: &Caller, call: &ValidCall) -> Result<(), Failure> {
    Ok(caller
        .grant
        .allows(&call.key.tenant, &call.key.vendor, call.operation)?)
}
