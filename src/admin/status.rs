//! `GetServerStatus`: one replica's state for a person at a terminal
//! (`valet status`), from probes made now rather than the last readiness
//! probe's memory.

use super::AdminService;
use crate::app::now_ms;
use crate::proto;
use crate::readiness::{ControlState, answers, control_state};
use crate::status::Failure;
use tonic::Request;
use valet_egress::BreakerState;

impl AdminService {
    pub(super) async fn server_status(
        &self,
        request: Request<proto::GetServerStatusRequest>,
    ) -> Result<proto::ServerStatus, Failure> {
        self.admin(&request)?;
        let app = &self.app;
        let now = now_ms();
        let credentials = app.vault.list(None).await?.len();
        Ok(proto::ServerStatus {
            version: crate::LONG_VERSION.to_owned(),
            ready: app.readiness.is_ready(),
            not_ready: app.readiness.reasons(),
            degraded: app.readiness.degraded(),
            backends: self.backends().await,
            vendors: vendors(app),
            credential_cache: app.vault.cache_stats().map(|s| proto::CacheStatus {
                entries: s.entries,
                hits: s.hits,
                misses: s.misses,
                stale: s.stale,
            }),
            api_keys: count(app.keys.list().iter().filter(|k| k.valid_at(now)).count()),
            credentials: count(credentials),
            control_state_age_ms: app
                .keys
                .is_shared()
                .then(|| app.keys.unconfirmed_ms().unwrap_or(0)),
            uptime_seconds: app.started.elapsed().as_secs(),
            audit_sinks: audit_sinks(app),
        })
    }

    /// Each backend, probed now (each within the readiness probe's timeout).
    async fn backends(&self) -> Vec<proto::BackendStatus> {
        let app = &self.app;
        let topology = app.topology;
        let backend = |role: &str, kind: &str, ok: bool, detail: String| proto::BackendStatus {
            role: role.to_owned(),
            kind: kind.to_owned(),
            ok,
            detail,
        };
        let failed = |ok: bool| {
            if ok {
                String::new()
            } else {
                "does not answer".to_owned()
            }
        };
        let audit = app.audit.writable();
        let (secrets, quota, idempotency) = tokio::join!(
            answers(app.vault.probe()),
            answers(app.quotas.probe()),
            answers(app.idempotency.probe()),
        );
        let control = match control_state(&app.keys) {
            ControlState::Stale(ms) => (false, format!("stale: not confirmed for {ms} ms; calls refused")),
            ControlState::Unconfirmed(ms) => {
                (true, format!("unconfirmed for {ms} ms; serving the last state"))
            }
            ControlState::Confirmed => (true, String::new()),
        };
        let quota_detail = match (quota, app.quotas.fallback_active()) {
            (_, true) => "Redis unreachable: the local fallback enforces the limits".to_owned(),
            (ok, false) => failed(ok),
        };
        vec![
            backend(
                "audit",
                "local",
                audit,
                if audit {
                    String::new()
                } else {
                    "not writable".to_owned()
                },
            ),
            backend("secrets", topology.secrets, secrets, failed(secrets)),
            backend("control", topology.control, control.0, control.1),
            backend("quota", topology.quota, quota, quota_detail),
            backend(
                "idempotency",
                topology.idempotency,
                idempotency,
                failed(idempotency),
            ),
        ]
    }
}

/// Each vendor's breaker, by name.
fn vendors(app: &crate::app::App) -> Vec<proto::VendorStatus> {
    let registry = app.registry.current();
    let mut vendors: Vec<proto::VendorStatus> = registry
        .vendors()
        .map(|v| proto::VendorStatus {
            name: v.name().to_owned(),
            breaker: match v.breaker_state() {
                BreakerState::Closed => "closed",
                BreakerState::HalfOpen => "half_open",
                BreakerState::Open => "open",
            }
            .to_owned(),
        })
        .collect();
    vendors.sort_by(|a, b| a.name.cmp(&b.name));
    vendors
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Each audit shipper's state.
fn audit_sinks(app: &crate::app::App) -> Vec<proto::AuditSinkStatus> {
    [("redis", &app.audit_ship), ("otlp", &app.audit_otlp)]
        .into_iter()
        .filter_map(|(sink, shipper)| {
            let s = shipper.as_ref()?.status();
            Some(proto::AuditSinkStatus {
                sink: sink.to_owned(),
                up: s.up,
                shipped: s.shipped,
                behind: s.behind,
                refusing: s.refusing,
                error: s.error.unwrap_or_default(),
            })
        })
        .collect()
}
