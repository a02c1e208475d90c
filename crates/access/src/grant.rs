//! What an API key may do.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A kind of gateway call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Changes nothing at the vendor.
    Read,
    /// May change state at the vendor.
    Write,
}

impl Operation {
    /// Lower-case name, as in config, logs and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
        }
    }
}

/// A permission beyond Gateway calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Change (and read) quota policies.
    QuotaAdmin,
    /// Read quota policies and usage.
    QuotaView,
    /// Read the audit log (`Admin.QueryAudit`, `SummarizeAudit`). Only ever
    /// granted by name: an admin key does not have it, so whoever manages
    /// credentials and keys is not thereby the one who reads the record of
    /// their use ("the application can write, only ops can read").
    AuditView,
}

impl Permission {
    /// Snake-case name, as in the audit log and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::QuotaAdmin => "quota_admin",
            Permission::QuotaView => "quota_view",
            Permission::AuditView => "audit_view",
        }
    }
}

/// The wildcard for tenants and vendors.
pub const ANY: &str = "*";

/// The scope of an API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Tenants the key may act for; `"*"` for any.
    pub tenants: Vec<String>,
    /// Vendors the key may call; `"*"` for any.
    pub vendors: Vec<String>,
    /// Gateway operations the key may perform.
    pub operations: BTreeSet<Operation>,
    /// Whether the key may use the Admin service.
    pub admin: bool,
    /// Narrower Admin permissions (an admin key has them all).
    #[serde(default)]
    pub permissions: BTreeSet<Permission>,
}

/// Which part of a grant refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The key may not act for this tenant.
    #[error("this API key may not act for tenant")]
    Tenant,
    /// The key may not call this vendor.
    #[error("this API key may not call vendor")]
    Vendor,
    /// The key may not perform this operation.
    #[error("this API key may not perform operation")]
    Operation,
    /// The key may not use the Admin service.
    #[error("this API key is not an admin key")]
    Admin,
    /// An admin key, which has no Gateway grant, was used on the Gateway.
    #[error("this API key is an admin key, which may not make Gateway calls")]
    AdminKey,
    /// The key lacks a permission.
    #[error("this API key lacks a permission")]
    Permission(Permission),
}

impl Grant {
    /// Whether a gateway call for `tenant`, `vendor`, `op` is allowed.
    pub fn allows(&self, tenant: &str, vendor: &str, op: Operation) -> Result<(), Denied> {
        let matches = |list: &[String], name: &str| list.iter().any(|e| e == ANY || e == name);
        if self.admin && self.operations.is_empty() {
            return Err(Denied::AdminKey);
        }
        if !matches(&self.tenants, tenant) {
            return Err(Denied::Tenant);
        }
        if !matches(&self.vendors, vendor) {
            return Err(Denied::Vendor);
        }
        if !self.operations.contains(&op) {
            return Err(Denied::Operation);
        }
        Ok(())
    }

    /// Whether the Admin service is allowed.
    pub fn allows_admin(&self) -> Result<(), Denied> {
        if self.admin { Ok(()) } else { Err(Denied::Admin) }
    }

    /// Whether `permission` is granted (admin keys have every permission
    /// but [`Permission::AuditView`]; quota administration includes viewing).
    pub fn has(&self, permission: Permission) -> Result<(), Denied> {
        let granted = (self.admin && permission != Permission::AuditView)
            || self.permissions.contains(&permission)
            || (permission == Permission::QuotaView && self.permissions.contains(&Permission::QuotaAdmin));
        if granted {
            Ok(())
        } else {
            Err(Denied::Permission(permission))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_matches() {
        let g = Grant {
            tenants: vec!["acme".into()],
            vendors: vec![ANY.into()],
            operations: [Operation::Read].into(),
            admin: false,
            permissions: [Permission::QuotaAdmin].into(),
        };
        assert_eq!(
            g.has(Permission::QuotaView),
            Ok(()),
            "quota admin includes viewing"
        );
        assert_eq!(
            g.has(Permission::AuditView),
            Err(Denied::Permission(Permission::AuditView))
        );
        let admin = Grant {
            admin: true,
            ..g.clone()
        };
        assert_eq!(
            admin.has(Permission::AuditView),
            Err(Denied::Permission(Permission::AuditView)),
            "an admin key does not read the audit log unless granted audit_view"
        );
        assert_eq!(g.allows("acme", "stripe", Operation::Read), Ok(()));
        assert_eq!(g.allows("globex", "stripe", Operation::Read), Err(Denied::Tenant));
        assert_eq!(
            g.allows("acme", "stripe", Operation::Write),
            Err(Denied::Operation)
        );
        assert_eq!(g.allows_admin(), Err(Denied::Admin));
    }
}
