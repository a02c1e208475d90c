//! Readiness: whether this replica should receive calls.
//!
//! A replica is ready while it is not draining and every *required* backend
//! answers. Required means calls cannot succeed without it: the audit log
//! (no entry, no credential), Secrets Manager when credentials live there,
//! Redis for idempotency records, and Redis for quotas when its fallback is
//! `deny`. (With the `local` or `allow` fallback a Redis outage degrades
//! quotas instead — see `valet_quota_fallback_active`.)
//!
//! The probe loop in [`crate::server`] checks them every
//! `server.health_probe_interval_ms` and drives `grpc.health.v1.Health`,
//! `/readyz` and the `valet_ready` gauge from the same answer.

use crate::app::App;
use crate::config::{Config, QuotaBackend, SecretsBackend};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use valet_quota::OnBackendError;

/// How long one backend may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which backends readiness requires, from the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Required {
    /// Secrets Manager holds the credentials.
    pub secrets_manager: bool,
    /// Idempotency records are in Redis.
    pub idempotency_redis: bool,
    /// Quotas are in Redis and refuse calls when it is down.
    pub quota_redis: bool,
}

impl Required {
    /// What `config` makes required.
    pub fn from_config(config: &Config) -> Self {
        Self {
            secrets_manager: config.secrets.backend == SecretsBackend::Aws,
            idempotency_redis: config.idempotency.backend == QuotaBackend::Redis,
            quota_redis: config.quota.backend == QuotaBackend::Redis
                && config.quota.on_backend_error == OnBackendError::Deny,
        }
    }
}

/// The shared readiness state. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    draining: AtomicBool,
    /// Backends that failed their last probe.
    down: Mutex<Vec<&'static str>>,
}

impl Readiness {
    /// Whether calls should be sent here.
    pub fn is_ready(&self) -> bool {
        !self.inner.draining.load(Ordering::Relaxed) && self.inner.down.lock().expect("lock").is_empty()
    }

    /// Marks the replica as shutting down; it never becomes ready again.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Why the replica is not ready, for `/readyz`; empty when it is.
    pub fn reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.inner.draining.load(Ordering::Relaxed) {
            reasons.push("draining".to_owned());
        }
        for backend in self.inner.down.lock().expect("lock").iter() {
            reasons.push(format!("{backend} unavailable"));
        }
        reasons
    }

    fn set_down(&self, down: Vec<&'static str>) {
        *self.inner.down.lock().expect("lock") = down;
    }
}

/// Probes every required backend once and records which are down. Returns
/// whether the replica is ready afterwards.
pub async fn probe(app: &App) -> bool {
    let required = app.required;
    let mut down = Vec::new();
    if !app.audit.writable() {
        down.push("audit log");
    }
    if required.secrets_manager && !answers(app.vault.probe()).await {
        down.push("secrets manager");
    }
    if required.idempotency_redis && !answers(app.idempotency.probe()).await {
        down.push("redis (idempotency)");
    }
    if required.quota_redis && !answers(app.quotas.probe()).await {
        down.push("redis (quota)");
    }
    if !down.is_empty() {
        tracing::warn!(backends = ?down, "required backend unavailable; reporting NOT_SERVING");
    }
    app.readiness.set_down(down);
    app.readiness.is_ready()
}

async fn answers<E>(probe: impl Future<Output = Result<(), E>>) -> bool {
    matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(())))
}
