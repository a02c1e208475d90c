//! Step 6: a vendor 401 may mean the credential was rotated outside Valet
//! (in Secrets Manager, or by another replica). Check the store now, past the
//! cache's TTL; the caller retries once only if the credential changed, so a
//! plainly wrong credential costs one extra version check, not a loop.

use super::validate::ValidCall;
use crate::app::{App, actor};
use valet_access::Caller;
use valet_audit::Event;
use valet_credentials::Fingerprint;

/// Whether the store's current credential differs from `used`, the one the
/// refused call carried. The check is audited; if it cannot be, the answer is
/// `false` (no retry).
pub async fn changed(
    app: &App,
    caller: &Caller,
    call: &ValidCall,
    used: &Fingerprint,
    request_id: &str,
) -> bool {
    let changed = match app.vault.refresh(&call.key, used).await {
        Ok(changed) => changed,
        Err(e) => {
            tracing::warn!(credential = %call.key, error = %e, "refresh after a vendor 401 failed");
            false
        }
    };
    let event = Event::CredentialRefresh {
        tenant: call.key.tenant.clone(),
        vendor: call.key.vendor.clone(),
        changed,
        request_id: request_id.to_owned(),
    };
    match app.record(&actor(caller), event).await {
        Ok(()) => changed,
        Err(e) => {
            tracing::error!(error = %e, "cannot audit the refresh; not retrying");
            false
        }
    }
}
