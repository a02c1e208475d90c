//! Tenant status: the kill switch.
//!
//! A tenant, or one tenant × vendor integration, may be disabled. While it
//! is, every call for it is refused before a credential is leased. The
//! status lives in the control state beside the API keys, so a disable made
//! through one replica reaches every replica the way a revoke does.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// One disable: a whole tenant (`vendor: None`) or one integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantStatus {
    /// The tenant.
    pub tenant: String,
    /// The one vendor disabled, or `None` for every vendor of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Why, as the admin gave it.
    pub reason: String,
    /// Who disabled it (`key id:name`).
    pub actor: String,
    /// When, Unix milliseconds.
    pub disabled_ms: u64,
    /// Disabled as compromised: credentials in use at the time, as
    /// `vendor → fingerprint`, must be replaced before it is enabled again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compromised: Vec<CompromisedCredential>,
    /// Offboarded: what is retained is removed at this time, Unix
    /// milliseconds (the sweeper does it; `restore` before then undoes the
    /// offboarding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offboarded_until_ms: Option<u64>,
}

/// A credential marked compromised when its tenant was disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompromisedCredential {
    /// The vendor it is for.
    pub vendor: String,
    /// Its fingerprint then; a credential with another one was replaced.
    pub fingerprint: String,
}

impl TenantStatus {
    /// Whether this disable covers a call for `tenant` and `vendor`.
    pub fn covers(&self, tenant: &str, vendor: &str) -> bool {
        self.tenant == tenant && self.vendor.as_deref().is_none_or(|v| v == vendor)
    }
}

/// Disables by tenant, for the hot path: one map lookup per call, and none
/// but an empty-map check when nothing is disabled.
#[derive(Debug, Default)]
pub struct Disabled {
    by_tenant: HashMap<String, Vec<Arc<TenantStatus>>>,
}

impl Disabled {
    /// Indexes `statuses`.
    pub fn new(statuses: &[TenantStatus]) -> Self {
        let mut by_tenant: HashMap<String, Vec<Arc<TenantStatus>>> = HashMap::new();
        for s in statuses {
            by_tenant
                .entry(s.tenant.clone())
                .or_default()
                .push(Arc::new(s.clone()));
        }
        Self { by_tenant }
    }

    /// The disable covering `tenant` × `vendor`, if any (the tenant-wide one
    /// first).
    pub fn get(&self, tenant: &str, vendor: &str) -> Option<Arc<TenantStatus>> {
        if self.by_tenant.is_empty() {
            return None;
        }
        let list = self.by_tenant.get(tenant)?;
        list.iter()
            .find(|s| s.vendor.is_none())
            .or_else(|| list.iter().find(|s| s.covers(tenant, vendor)))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(tenant: &str, vendor: Option<&str>) -> TenantStatus {
        TenantStatus {
            tenant: tenant.into(),
            vendor: vendor.map(Into::into),
            reason: "test".into(),
            actor: "a".into(),
            disabled_ms: 1,
            compromised: Vec::new(),
            offboarded_until_ms: None,
        }
    }

    #[test]
    fn a_tenant_wide_disable_covers_every_vendor_and_an_integration_only_its_own() {
        let d = Disabled::new(&[status("acme", None), status("globex", Some("mock"))]);
        assert!(d.get("acme", "mock").is_some());
        assert!(d.get("acme", "other").is_some());
        assert!(d.get("globex", "mock").is_some());
        assert!(d.get("globex", "other").is_none());
        assert!(d.get("initech", "mock").is_none());
    }
}
