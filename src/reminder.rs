//! Rotation reminders: counts the credentials not replaced within
//! `secrets.rotation_reminder_days`, for the
//! `valet_credentials_rotation_overdue` gauge (and the alert rule in
//! `deploy/prometheus/valet-alerts.yml`). Counted every [`EVERY`]:
//! listing credentials is a Secrets Manager request in a fleet, so not on
//! every scrape. The embedded store is counted at start too; Secrets
//! Manager first one interval after start, so a fleet restarting at once
//! does not add a burst of ListSecrets to its start.

use crate::app::{App, now_ms};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the count is refreshed.
pub const EVERY: Duration = Duration::from_secs(300);

/// Counts once; keeps the last count if the store does not answer.
pub async fn count(app: &App) {
    match app.vault.list(None).await {
        Ok(list) => {
            let now = now_ms();
            let overdue = list
                .iter()
                .filter(|(_, meta)| now >= meta.updated_ms.saturating_add(app.rotation_reminder_ms))
                .count();
            app.rotation_overdue.store(overdue as u64, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::debug!(error = %e, "rotation reminder: credentials not listed; keeping the last count")
        }
    }
}

/// Runs [`count`] every [`EVERY`] (the embedded store also at once) until
/// the app is dropped.
pub fn spawn(app: &Arc<App>) {
    let weak = Arc::downgrade(app);
    let first = match app.required.secrets_manager {
        Some(_) => tokio::time::Instant::now() + EVERY,
        None => tokio::time::Instant::now(),
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(first, EVERY);
        loop {
            tick.tick().await;
            let Some(app) = weak.upgrade() else { return };
            count(&app).await;
        }
    });
}
