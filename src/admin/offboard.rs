//! Offboarding a tenant: everything deleted at once, a little retained for
//! a documented time, and both listed in the audit log.
//!
//! Deleted at once: credentials (overwritten, then deleted — see the
//! stores), idempotency records with their stored responses, run-time quota
//! policies; the tenant's own API keys are revoked. Retained until the
//! final-deletion date: the tenant's status and its revoked keys' records
//! (hashes, no secret), so `restore` can undo a mistake; then the sweeper
//! ([`crate::sweeper`]) removes them. Audit entries are never removed: the
//! log is a hash chain, and they hold names and fingerprints, no secret.
//!
//! Each step is safe to repeat: an offboarding that failed half-way is
//! finished by running it again.

use super::timestamp;
use super::{AdminService, landing};
use crate::app::{actor, now_ms};
use crate::proto;
use crate::status::{Failure, Reason};
use tonic::Request;
use valet_access::TenantStatus;
use valet_audit::Event;
use valet_credentials::valid_name;

/// Days retained when the request names none.
const DEFAULT_RETENTION_DAYS: u32 = 30;
const DAY_MS: u64 = 86_400_000;

impl AdminService {
    pub(super) async fn offboard_tenant(
        &self,
        request: Request<proto::OffboardTenantRequest>,
    ) -> Result<proto::OffboardTenantResponse, Failure> {
        let caller = self.admin(&request)?;
        let req = request.into_inner();
        let tenant = req.tenant.trim().to_owned();
        valid_name(&tenant).map_err(|e| Failure::invalid("tenant", Reason::TenantInvalid, e))?;
        let reason = match req.reason.trim() {
            "" => "offboarded".to_owned(),
            r => super::tenants::valid_reason(r)?.to_owned(),
        };
        let retention_days = match (req.now, req.retention_days) {
            (true, 0) => 0,
            (true, _) => {
                return Err(Failure::invalid(
                    "retention_days",
                    Reason::TtlInvalid,
                    "give either now or retention_days",
                ));
            }
            (false, 0) => DEFAULT_RETENTION_DAYS,
            (false, d) => d,
        };
        let until = now_ms().saturating_add(u64::from(retention_days) * DAY_MS);
        let actor = actor(&caller);

        // 1. Stop it everywhere, and revoke its own keys, in one change.
        let status = TenantStatus {
            tenant: tenant.clone(),
            vendor: None,
            reason: reason.clone(),
            actor: actor.clone(),
            disabled_ms: now_ms(),
            compromised: Vec::new(),
            offboarded_until_ms: Some(until),
        };
        let keys = self.app.keys.clone();
        let revoked = landing("the offboarding", async move {
            // A second offboarding keeps the first one's keys revoked and
            // only moves the date.
            keys.disable(status, true).await
        })
        .await?;
        let mut deleted: Vec<String> = revoked
            .iter()
            .map(|r| format!("api key {} ({}) revoked", r.id, r.name))
            .collect();

        // 2. Credentials: overwritten, then deleted.
        for (key, meta) in self.app.vault.list(Some(&tenant)).await? {
            let revoked = crate::oauth::revoke(&self.app, &actor, &key, "offboarding").await;
            deleted.extend(revoked.iter().map(|r| {
                format!(
                    "OAuth {} of {} (fingerprint {}) {}",
                    r.kind, key.vendor, r.fingerprint, r.outcome
                )
            }));
            self.app.vault.delete(&key).await?;
            deleted.push(format!(
                "credential {} (fingerprint {}) overwritten and deleted",
                key.vendor, meta.fingerprint
            ));
        }

        // 3. Idempotency records and their stored responses.
        let purged = self
            .purge_records(
                &tenant,
                "the idempotency store is unavailable; run the offboarding again",
            )
            .await?;
        deleted.push(format!(
            "{purged} idempotency records and stored responses purged"
        ));

        // 4. Run-time quota policies (config defaults are in the config file).
        let mut retained = Vec::new();
        for policy in self.app.quotas.list().into_iter().filter(|p| p.tenant == tenant) {
            match self.app.quotas.delete(&policy.id()).await {
                Ok(Some(_)) => deleted.push(format!("quota policy {} removed", policy.id())),
                Ok(None) => retained.push(format!(
                    "quota policy {} (a config default: remove it from the config file)",
                    policy.id()
                )),
                Err(e) => {
                    tracing::error!(error = %e, "quota policy removal failed");
                    return Err(Failure::new(
                        Reason::StoreUnavailable,
                        "the quota policy store is unavailable; run the offboarding again",
                    ));
                }
            }
        }
        let own_keys = self
            .app
            .keys
            .list()
            .iter()
            .filter(|r| r.scoped_only_to(&tenant))
            .count();
        retained.push("tenant status (offboarded, disabled)".to_owned());
        retained.push(format!("{own_keys} revoked API key records (hashes only)"));
        retained.push("audit log entries (kept with the audit log; no secrets)".to_owned());

        // 5. What was done, in the audit log.
        let event = Event::TenantOffboard {
            tenant: tenant.clone(),
            reason,
            deleted: deleted.clone(),
            retained: retained.clone(),
            final_deletion_ms: until,
        };
        self.app.record(&actor, event).await?;
        tracing::warn!(tenant, retention_days, "tenant offboarded");
        if req.now {
            crate::sweeper::sweep(&self.app).await?;
        }
        Ok(proto::OffboardTenantResponse {
            deleted,
            retained,
            final_deletion: Some(timestamp(until)),
        })
    }

    pub(super) async fn restore_tenant(
        &self,
        request: Request<proto::RestoreTenantRequest>,
    ) -> Result<proto::TenantStatus, Failure> {
        let caller = self.admin(&request)?;
        let tenant = request.into_inner().tenant.trim().to_owned();
        valid_name(&tenant).map_err(|e| Failure::invalid("tenant", Reason::TenantInvalid, e))?;
        let seen = self
            .app
            .keys
            .tenant_statuses()
            .into_iter()
            .find(|s| s.tenant == tenant && s.vendor.is_none() && s.offboarded_until_ms.is_some())
            .map(|s| s.disabled_ms);
        if seen.is_none() {
            return Err(Failure::new(
                Reason::TenantNotOffboarded,
                format!("tenant '{tenant}' is not offboarded (or its retention has passed)"),
            ));
        }
        let keys = self.app.keys.clone();
        let t = tenant.clone();
        landing("the restore", async move { keys.enable(&t, None, seen).await }).await?;
        self.app
            .record(
                &actor(&caller),
                Event::TenantRestore {
                    tenant: tenant.clone(),
                },
            )
            .await?;
        Ok(self.status_of(&tenant))
    }
}
