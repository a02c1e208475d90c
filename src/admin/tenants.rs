//! The Admin service's tenant RPCs: the kill switch. Admin keys only;
//! every change audited with its actor and reason.
//!
//! A disable is written to the control store (Redis in a fleet) before the
//! RPC returns, so every replica refuses the tenant within the propagation
//! window; this replica's calls in flight for it end at once (see
//! `call::forward`).

use super::{AdminService, landing, timestamp};
use crate::app::{actor, now_ms};
use crate::proto;
use crate::status::{Failure, Reason};
use std::collections::BTreeSet;
use tonic::Request;
use valet_access::{CompromisedCredential, TenantStatus};
use valet_audit::Event;
use valet_credentials::valid_name;

/// Longest reason kept.
const MAX_REASON: usize = 256;

impl AdminService {
    pub(super) async fn set_tenant_status(
        &self,
        request: Request<proto::SetTenantStatusRequest>,
    ) -> Result<proto::SetTenantStatusResponse, Failure> {
        let caller = self.admin(&request)?;
        let req = request.into_inner();
        let tenant = req.tenant.trim();
        valid_name(tenant).map_err(|e| Failure::invalid("tenant", Reason::TenantInvalid, e))?;
        let vendor = Some(req.vendor.trim()).filter(|v| !v.is_empty());
        if let Some(v) = vendor
            && self.app.registry.get(v).is_none()
        {
            return Err(Failure::invalid(
                "vendor",
                Reason::VendorUnknown,
                format!("'{v}' is not a configured vendor"),
            ));
        }
        match proto::TenantState::try_from(req.state) {
            Ok(proto::TenantState::Disabled) => {
                self.disable(&actor(&caller), tenant, vendor, &req.reason, req.compromised)
                    .await
            }
            Ok(proto::TenantState::Enabled) if req.compromised => Err(Failure::invalid(
                "compromised",
                Reason::TenantInvalid,
                "only with state DISABLED",
            )),
            Ok(proto::TenantState::Enabled) => self.enable(&actor(&caller), tenant, vendor).await,
            _ => Err(Failure::invalid(
                "state",
                Reason::TenantInvalid,
                "must be TENANT_STATE_ENABLED or TENANT_STATE_DISABLED",
            )),
        }
    }

    async fn disable(
        &self,
        actor: &str,
        tenant: &str,
        vendor: Option<&str>,
        reason: &str,
        compromised: bool,
    ) -> Result<proto::SetTenantStatusResponse, Failure> {
        let reason = valid_reason(reason)?;
        let status = TenantStatus {
            tenant: tenant.to_owned(),
            vendor: vendor.map(str::to_owned),
            reason: reason.to_owned(),
            actor: actor.to_owned(),
            disabled_ms: now_ms(),
            compromised: Vec::new(),
            offboarded_until_ms: None,
        };
        // Containment first: the disable and the revocations land even if
        // the credential store cannot be listed right now.
        let keys = self.app.keys.clone();
        let first = status.clone();
        // Not cancelled with the request: a disable that started lands.
        let revoked = landing(
            "the disable",
            async move { keys.disable(first, compromised).await },
        )
        .await?;
        let marked = match compromised {
            false => Ok(Vec::new()),
            true => self.mark_compromised(&status).await,
        };
        let revoked_key_ids: Vec<String> = revoked.iter().map(|r| r.id.clone()).collect();
        tracing::warn!(
            tenant,
            vendor,
            compromised,
            revoked = revoked_key_ids.len(),
            "tenant disabled"
        );
        let event = Event::TenantDisable {
            tenant: tenant.to_owned(),
            vendor: vendor.map(str::to_owned),
            reason: reason.to_owned(),
            compromised,
            revoked_key_ids: revoked_key_ids.clone(),
            compromised_credentials: marked
                .iter()
                .flatten()
                .map(|c| format!("{}:{}", c.vendor, c.fingerprint))
                .collect(),
        };
        // Audited whether or not the marks could be added: the disable and
        // the revocations happened.
        self.app.record(actor, event).await?;
        let marked = marked.map_err(|f| {
            f.with_info(
                "tenant_disabled",
                "true: the tenant is disabled and its keys revoked; run the command again to mark its credentials",
            )
        })?;
        Ok(proto::SetTenantStatusResponse {
            status: Some(self.status_of(tenant)),
            revoked_key_ids,
            compromised: marked.iter().map(compromised_info).collect(),
        })
    }

    async fn enable(
        &self,
        actor: &str,
        tenant: &str,
        vendor: Option<&str>,
    ) -> Result<proto::SetTenantStatusResponse, Failure> {
        let lifting = self
            .app
            .keys
            .tenant_statuses()
            .into_iter()
            .find(|s| s.tenant == tenant && s.vendor.as_deref() == vendor);
        if let Some(status) = &lifting
            && status.offboarded_until_ms.is_some()
        {
            return Err(Failure::new(
                Reason::TenantOffboarded,
                format!(
                    "tenant '{tenant}' is offboarded: use `valet admin tenant restore` (within its retention)"
                ),
            ));
        }
        if let Some(status) = &lifting
            && !status.compromised.is_empty()
        {
            let current = self.current_credentials(tenant, None).await?;
            let unchanged: BTreeSet<&str> = status
                .compromised
                .iter()
                .filter(|c| current.contains(c))
                .map(|c| c.vendor.as_str())
                .collect();
            if !unchanged.is_empty() {
                let list = unchanged.into_iter().collect::<Vec<_>>().join(", ");
                return Err(Failure::new(
                    Reason::CredentialRotationRequired,
                    format!(
                        "tenant '{tenant}' was disabled as compromised; rotate or re-put its credentials for {list} first (`valet admin credential rotate` or `put`)"
                    ),
                ));
            }
        }
        let keys = self.app.keys.clone();
        let (t, v) = (tenant.to_owned(), vendor.map(str::to_owned));
        let seen = lifting.as_ref().map(|s| s.disabled_ms);
        let lifted = landing(
            "the enable",
            async move { keys.enable(&t, v.as_deref(), seen).await },
        )
        .await?;
        if lifted.is_some() {
            tracing::info!(tenant, vendor, "tenant enabled");
            let event = Event::TenantEnable {
                tenant: tenant.to_owned(),
                vendor: vendor.map(str::to_owned),
            };
            self.app.record(actor, event).await?;
        }
        Ok(proto::SetTenantStatusResponse {
            status: Some(self.status_of(tenant)),
            ..Default::default()
        })
    }

    pub(super) async fn get_tenant_status(
        &self,
        request: Request<proto::GetTenantStatusRequest>,
    ) -> Result<proto::TenantStatus, Failure> {
        self.admin(&request)?;
        let tenant = request.into_inner().tenant;
        valid_name(&tenant).map_err(|e| Failure::invalid("tenant", Reason::TenantInvalid, e))?;
        Ok(self.status_of(&tenant))
    }

    pub(super) async fn list_tenants(
        &self,
        request: Request<proto::ListTenantsRequest>,
    ) -> Result<proto::ListTenantsResponse, Failure> {
        self.admin(&request)?;
        let mut names: BTreeSet<String> = self
            .app
            .vault
            .list(None)
            .await?
            .into_iter()
            .map(|(k, _)| k.tenant)
            .collect();
        let statuses = self.app.keys.tenant_statuses();
        names.extend(statuses.iter().map(|s| s.tenant.clone()));
        Ok(proto::ListTenantsResponse {
            tenants: names.iter().map(|t| status_from(t, &statuses)).collect(),
        })
    }

    /// Marks the credentials `status` covers as compromised, in a second
    /// change after the disable itself.
    async fn mark_compromised(&self, status: &TenantStatus) -> Result<Vec<CompromisedCredential>, Failure> {
        let marked = self
            .current_credentials(&status.tenant, status.vendor.as_deref())
            .await?;
        let keys = self.app.keys.clone();
        let again = TenantStatus {
            compromised: marked.clone(),
            ..status.clone()
        };
        landing("the disable", async move { keys.disable(again, false).await }).await?;
        // A compromised tenant's OAuth tokens die at the provider too.
        for c in &marked {
            let key = valet_credentials::CredentialKey::new(status.tenant.clone(), c.vendor.clone());
            crate::oauth::revoke(&self.app, &status.actor, &key, "tenant disabled as compromised").await;
        }
        Ok(marked)
    }

    /// The tenant's credentials now (one vendor, or all), by fingerprint.
    async fn current_credentials(
        &self,
        tenant: &str,
        vendor: Option<&str>,
    ) -> Result<Vec<CompromisedCredential>, Failure> {
        Ok(self
            .app
            .vault
            .list(Some(tenant))
            .await?
            .into_iter()
            .filter(|(k, _)| vendor.is_none_or(|v| v == k.vendor))
            .map(|(k, meta)| CompromisedCredential {
                vendor: k.vendor,
                fingerprint: meta.fingerprint.to_string(),
            })
            .collect())
    }

    pub(super) fn status_of(&self, tenant: &str) -> proto::TenantStatus {
        status_from(tenant, &self.app.keys.tenant_statuses())
    }
}

/// `tenant`'s status on the wire, from every disable in force.
fn status_from(tenant: &str, statuses: &[TenantStatus]) -> proto::TenantStatus {
    let disables: Vec<&TenantStatus> = statuses.iter().filter(|s| s.tenant == tenant).collect();
    let state = match disables.iter().any(|s| s.vendor.is_none()) {
        true => proto::TenantState::Disabled,
        false => proto::TenantState::Enabled,
    };
    proto::TenantStatus {
        tenant: tenant.to_owned(),
        state: state as i32,
        disables: disables
            .iter()
            .map(|s| proto::TenantDisable {
                vendor: s.vendor.clone().unwrap_or_default(),
                reason: s.reason.clone(),
                actor: s.actor.clone(),
                disabled_at: Some(timestamp(s.disabled_ms)),
                compromised: s.compromised.iter().map(compromised_info).collect(),
                offboarded_until: s.offboarded_until_ms.map(timestamp),
            })
            .collect(),
    }
}

fn compromised_info(c: &CompromisedCredential) -> proto::CompromisedCredential {
    proto::CompromisedCredential {
        vendor: c.vendor.clone(),
        fingerprint: c.fingerprint.clone(),
    }
}

/// A disable's reason: required, one line, at most [`MAX_REASON`] characters.
pub(super) fn valid_reason(reason: &str) -> Result<&str, Failure> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(Failure::invalid(
            "reason",
            Reason::ReasonRequired,
            "is required to disable a tenant (say why: it goes to the audit log)",
        ));
    }
    let why = if reason.chars().count() > MAX_REASON {
        "is longer than 256 characters"
    } else if reason.chars().any(char::is_control) {
        "must be one line of printable text"
    } else {
        return Ok(reason);
    };
    Err(Failure::invalid("reason", Reason::ReasonInvalid, why))
}
