//! Readiness: whether this replica should receive calls, and what it can
//! do without.
//!
//! A replica is ready while it is not draining and every *required* backend
//! answers. Required means calls cannot succeed without it: the audit log
//! (no entry, no credential), Redis for idempotency records, and Redis for
//! quotas when its fallback is `deny`. (With the `local` or `allow` fallback a
//! Redis outage degrades quotas instead — see `valet_quota_fallback_active`.)
//!
//! Secrets Manager, when credentials live there, is required only past its
//! stale window: the cache serves records confirmed within `max_stale`. When
//! its probe fails but Secrets Manager last answered a request (a probe, a
//! version check, a fetch, a write; anything but a server error) no longer
//! than `max_stale` ago, the replica is *degraded* but ready
//! (`valet_secrets_manager_degraded`, `/readyz` says `ready (degraded: …)`).
//! Once that last answer is older than `max_stale`, no cached record can
//! have been confirmed more recently, none can be served, and the replica is
//! not ready; nor is one Secrets Manager has never answered.
//!
//! The probe loop in [`crate::server`] checks them every
//! `server.health_probe_interval_ms` and drives `grpc.health.v1.Health`,
//! `/readyz` and the `valet_ready` gauge from the same answer.

use crate::config::{Config, QuotaBackend, SecretsBackend};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use valet_audit::AuditLog;
use valet_credentials::Vault;
use valet_quota::{OnBackendError, Quotas};

/// How long one backend may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which backends readiness requires, from the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Required {
    /// Secrets Manager holds the credentials; cached ones are served for
    /// this long (`max_stale`) past their last confirmation.
    pub secrets_manager: Option<Duration>,
    /// Idempotency records are in Redis.
    pub idempotency_redis: bool,
    /// Quotas are in Redis and refuse calls when it is down.
    pub quota_redis: bool,
}

impl Required {
    /// What `config` makes required.
    pub fn from_config(config: &Config) -> Self {
        Self {
            secrets_manager: (config.secrets.backend == SecretsBackend::Aws)
                .then(|| Duration::from_millis(config.secrets.max_stale_ms)),
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
    /// Why the last probe found the replica unable to serve.
    down: Mutex<Vec<&'static str>>,
    /// What the last probe found failing while the replica still serves.
    degraded: Mutex<Vec<&'static str>>,
}

/// Why the replica is degraded while Secrets Manager fails its probe within
/// the stale window; and why it is down past it.
const SECRETS_MANAGER_DEGRADED: &str = "secrets manager unavailable";
const SECRETS_MANAGER_DOWN: &str = "secrets manager unavailable longer than max_stale";

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
        reasons.extend(
            self.inner
                .down
                .lock()
                .expect("lock")
                .iter()
                .map(|r| (*r).to_owned()),
        );
        reasons
    }

    /// What is failing while the replica still serves, for `/readyz`.
    pub fn degraded(&self) -> Vec<String> {
        let degraded = self.inner.degraded.lock().expect("lock");
        degraded.iter().map(|r| (*r).to_owned()).collect()
    }

    /// Whether the replica serves from its Secrets Manager cache because
    /// Secrets Manager fails its probe (the `valet_secrets_manager_degraded`
    /// gauge).
    pub fn secrets_manager_degraded(&self) -> bool {
        self.inner
            .degraded
            .lock()
            .expect("lock")
            .contains(&SECRETS_MANAGER_DEGRADED)
    }

    /// Records the probe's findings; returns whether the degraded set changed.
    fn set(&self, down: Vec<&'static str>, degraded: Vec<&'static str>) -> bool {
        *self.inner.down.lock().expect("lock") = down;
        let mut was = self.inner.degraded.lock().expect("lock");
        let changed = *was != degraded;
        *was = degraded;
        changed
    }
}

/// The backends a probe checks, borrowed from the app (so this module need
/// not know the app, which holds the readiness state).
#[derive(Debug, Clone, Copy)]
pub struct Backends<'a> {
    /// The audit log.
    pub audit: &'a AuditLog,
    /// The credential vault and its store.
    pub vault: &'a Vault,
    /// The idempotency records.
    pub idempotency: &'a valet_idempotency::Store,
    /// The quota backend.
    pub quotas: &'a Quotas,
    /// The control state (API keys, tenant status).
    pub keys: &'a valet_access::KeyStore,
}

/// Why the replica is degraded while Redis does not confirm the control
/// state, within its bound; and why it is down past it.
const CONTROL_DEGRADED: &str = "control store unreachable; serving the last confirmed state";
const CONTROL_STALE: &str = "control state stale: not confirmed within control.max_stale_ms";

/// Probes every backend `required` names once and records in `readiness`
/// which are down. Returns whether the replica is ready afterwards.
pub async fn probe(readiness: &Readiness, required: Required, backends: Backends<'_>) -> bool {
    let mut down = Vec::new();
    let mut degraded = Vec::new();
    if !backends.audit.writable() {
        down.push("audit log unavailable");
    }
    if let Some(max_stale) = required.secrets_manager
        && !answers(backends.vault.probe()).await
    {
        // Any request Secrets Manager answered counts, not only probes: a
        // call's refresh may have confirmed a record since the last probe.
        match backends.vault.store_last_answered() {
            Some(at) if at.elapsed() <= max_stale => degraded.push(SECRETS_MANAGER_DEGRADED),
            _ => down.push(SECRETS_MANAGER_DOWN),
        }
    }
    match control_state(backends.keys) {
        ControlState::Stale(_) => down.push(CONTROL_STALE),
        ControlState::Unconfirmed(_) => degraded.push(CONTROL_DEGRADED),
        ControlState::Confirmed => {}
    }
    if required.idempotency_redis && !answers(backends.idempotency.probe()).await {
        down.push("redis (idempotency) unavailable");
    }
    if required.quota_redis && !answers(backends.quotas.probe()).await {
        down.push("redis (quota) unavailable");
    }
    if !down.is_empty() {
        tracing::warn!(reasons = ?down, "required backend unavailable; reporting NOT_SERVING");
    }
    let degraded_now = !degraded.is_empty();
    match readiness.set(down, degraded) {
        true if degraded_now => tracing::warn!(
            reasons = ?readiness.degraded(),
            "degraded: serving from caches until their bounds"
        ),
        true => tracing::info!("no longer degraded"),
        false => {}
    }
    readiness.is_ready()
}

/// How current the control state is, as readiness judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlState {
    /// Confirmed recently (or local: always).
    Confirmed,
    /// Not confirmed for this many ms, but within `control.max_stale_ms`:
    /// served from the last confirmed state (degraded).
    Unconfirmed(u64),
    /// Not confirmed for this many ms, past the bound: calls are refused.
    Stale(u64),
}

/// The control state's [`ControlState`]: unconfirmed once Redis has not
/// confirmed it for over 2 s.
pub fn control_state(keys: &valet_access::KeyStore) -> ControlState {
    match (keys.staleness_ms(), keys.unconfirmed_ms()) {
        (Some(stale), _) => ControlState::Stale(stale),
        (None, Some(age)) if age > 2_000 => ControlState::Unconfirmed(age),
        _ => ControlState::Confirmed,
    }
}

pub(crate) async fn answers<E>(probe: impl Future<Output = Result<(), E>>) -> bool {
    matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(())))
}
