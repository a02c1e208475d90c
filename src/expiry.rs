//! Audit retention on a timer: every [`EVERY`] (and at start), entries of
//! sealed audit segments past their class's retention (`[audit]
//! retention_days`) are removed, the removal recorded first
//! ([`valet_audit::retention`]).

use crate::app::{App, now_ms};
use std::sync::Arc;
use std::time::Duration;

/// How often retention looks. Segments are sealed daily by default (at the
/// first entry after a day: a quiet log's current segment waits for its
/// next entry), so on a busy log an entry outlives its retention by at most
/// a day and an hour.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Runs retention once.
pub async fn expire(
    app: &App,
) -> Result<valet_audit::retention::Expired, valet_audit::retention::RetentionError> {
    valet_audit::retention::expire(&app.audit, app.audit_retention, now_ms()).await
}

/// Runs [`expire`] now and every [`EVERY`] until the app is dropped.
pub fn spawn(app: &Arc<App>) {
    crate::app::every(app, EVERY, |app| async move {
        if let Err(e) = expire(&app).await {
            tracing::warn!(error = %e, "audit retention failed; retrying later");
        }
    });
}
