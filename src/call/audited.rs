//! Step 7, end: with `[audit] durability = "before_answer"`, the answer is
//! released only once the lease's audit entry is durable. The entry was
//! written before the credential was used, and its fsync ran while the
//! vendor answered; here the call waits for whatever of it is left.

use super::Call;
use crate::app::App;
use crate::status::Failure;
use valet_audit::Written;
use valet_egress::Sent;

/// Waits (within the caller's deadline) until `unsynced` is durable. If it
/// cannot be made durable, the caller gets UNAVAILABLE `AUDIT_UNAVAILABLE`
/// instead of the answer: no success is ever reported that the audit log
/// might not hold after a power loss. The vendor did get the request, and
/// [`Sent::reached`] still says so.
pub async fn settle(app: &App, call: &Call, sent: Sent<Failure>, unsynced: Option<Written>) -> Sent<Failure> {
    let Some(unsynced) = unsynced else {
        return sent;
    };
    let durable = async { unsynced.durable().await.map_err(Failure::from) };
    match call.within("making the audit entry durable", durable).await {
        Ok(()) => sent,
        Err(failure) => {
            app.metrics.audit_write_failed();
            Sent {
                result: Err(failure),
                ..sent
            }
        }
    }
}
