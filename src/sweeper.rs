//! The sweeper: removes what an offboarding retained once its
//! final-deletion date has passed (see `admin/offboard.rs`), and audits
//! each sweep. It runs at start and then every [`EVERY`]; in a fleet every
//! replica runs it, and only the one whose change lands records the sweep.

use crate::app::{App, SYSTEM_ACTOR, now_ms};
use crate::status::Failure;
use std::sync::Arc;
use std::time::Duration;
use valet_audit::Event;

/// How often the sweeper looks.
pub const EVERY: Duration = Duration::from_secs(60);

/// Sweeps once: every offboarded tenant past its date.
pub async fn sweep(app: &App) -> Result<(), Failure> {
    for (tenant, key_ids) in app.keys.sweep(now_ms()).await? {
        let mut deleted = vec!["tenant status".to_owned()];
        deleted.extend(key_ids.iter().map(|id| format!("api key record {id}")));
        tracing::info!(
            tenant,
            keys = key_ids.len(),
            "swept an offboarded tenant's retained records"
        );
        app.record(SYSTEM_ACTOR, Event::TenantSweep { tenant, deleted })
            .await?;
    }
    Ok(())
}

/// Runs [`sweep`] now and every [`EVERY`] until the app is dropped.
pub fn spawn(app: &Arc<App>) {
    crate::app::every(app, EVERY, |app| async move {
        if let Err(e) = sweep(&app).await {
            tracing::warn!(failure = ?e, "offboarding sweep failed; retrying later");
        }
    });
}
