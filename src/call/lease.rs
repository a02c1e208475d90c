//! Step 4: the credential, audited, for this call only.

use super::validate::ValidCall;
use crate::app::{App, LeaseRecorder, actor};
use crate::status::Failure;
use valet_access::Caller;
use valet_credentials::Lease;

/// Leases the call's credential; the audit entry is durable before the
/// envelope is opened, and no entry means no credential.
pub async fn credential(
    app: &App,
    caller: &Caller,
    call: &ValidCall,
    request_id: &str,
) -> Result<Lease, Failure> {
    let recorder = LeaseRecorder { log: &app.audit };
    Ok(app
        .vault
        .lease(&call.key, &actor(caller), &call.reason, request_id, &recorder)
        .await?)
}
