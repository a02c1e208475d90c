//! The rules a new API key's scope must meet before it is created.

use crate::grant::{ANY, Grant, Operation, Permission};
use crate::source::{CidrError, parse_cidr};
use ipnet::IpNet;
use std::collections::BTreeSet;
use valet_credentials::{NameError, valid_name};

/// The longest API key lifetime unless a deployment sets its own
/// (`[api_keys] max_lifetime_days`): ten years.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// The most source networks one key may be bound to.
pub const MAX_CIDRS: usize = 64;

/// The longest key name.
pub const MAX_KEY_NAME_LEN: usize = 64;

/// What an admin asked a new key to be allowed, as sent (operations and
/// permissions the wire could not name are `None`).
#[derive(Debug, Clone, Copy)]
pub struct KeyRequest<'a> {
    /// The key's name, for people.
    pub name: &'a str,
    /// Tenants, or `"*"`.
    pub tenants: &'a [String],
    /// Vendors, or `"*"`.
    pub vendors: &'a [String],
    /// Gateway operations.
    pub operations: &'a [Option<Operation>],
    /// Admin permissions beyond Gateway calls.
    pub permissions: &'a [Option<Permission>],
    /// Whether the key may use the Admin service.
    pub admin: bool,
    /// Lifetime in seconds; 0 for a key that does not expire.
    pub ttl_seconds: u64,
    /// The longest lifetime this deployment allows, in seconds.
    pub max_ttl_seconds: u64,
    /// Source networks (or addresses) the key may be used from; none for
    /// anywhere.
    pub allow_cidrs: &'a [String],
}

/// What a valid request creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyScope {
    /// What the key may do.
    pub grant: Grant,
    /// Its lifetime, ms; `None` for no expiry.
    pub ttl_ms: Option<u64>,
    /// The networks it may be used from; empty for anywhere.
    pub allow_cidrs: Vec<IpNet>,
}

/// Why a requested key scope was refused; each names its request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The name is not a valid name.
    #[error("{0}")]
    Name(NameError),
    /// The name is longer than [`MAX_KEY_NAME_LEN`].
    #[error("must be at most {MAX_KEY_NAME_LEN} characters")]
    NameTooLong,
    /// A tenant is not a valid name.
    #[error("'{tenant}': {why}")]
    Tenant {
        /// The tenant as given.
        tenant: String,
        /// What is wrong with it.
        why: NameError,
    },
    /// A vendor is not configured.
    #[error("'{0}' is not a configured vendor")]
    VendorUnknown(String),
    /// An operation the wire could not name.
    #[error("must be OPERATION_READ or OPERATION_WRITE")]
    Operation,
    /// A permission the wire could not name.
    #[error("must be PERMISSION_QUOTA_ADMIN or PERMISSION_QUOTA_VIEW")]
    Permission,
    /// Some but not all of tenants, vendors and operations.
    #[error(
        "a key needs at least one tenant, vendor and operation for Gateway calls, or none of them with admin or a permission (--admin, --permission) for a key without Gateway calls"
    )]
    Incomplete,
    /// Longer than the deployment's maximum lifetime.
    #[error("must be at most {max_days} days (this deployment's api_keys.max_lifetime_days)")]
    Ttl {
        /// The maximum, in whole days.
        max_days: u64,
    },
    /// A source network is malformed.
    #[error("{0}")]
    Cidr(CidrError),
    /// More than [`MAX_CIDRS`] source networks.
    #[error("at most {MAX_CIDRS} networks")]
    TooManyCidrs,
}

impl GrantError {
    /// The request field the refusal is about.
    pub fn field(&self) -> &'static str {
        match self {
            GrantError::Name(_) | GrantError::NameTooLong => "name",
            GrantError::Tenant { .. } | GrantError::Incomplete => "tenants",
            GrantError::VendorUnknown(_) => "vendors",
            GrantError::Operation => "operations",
            GrantError::Permission => "permissions",
            GrantError::Ttl { .. } => "ttl_seconds",
            GrantError::Cidr(_) | GrantError::TooManyCidrs => "allow_cidrs",
        }
    }
}

impl KeyRequest<'_> {
    /// The grant and lifetime (ms; `None`: no expiry) the request asks for,
    /// or the first rule it breaks. `is_vendor` says which vendors are
    /// configured.
    ///
    /// A key either has a Gateway scope (at least one tenant, vendor and
    /// operation) or none at all and is then admin-only (the Admin service
    /// or narrower permissions): a partial scope is refused rather than
    /// creating a key that can do nothing.
    pub fn grant(&self, is_vendor: impl Fn(&str) -> bool) -> Result<KeyScope, GrantError> {
        valid_name(self.name).map_err(GrantError::Name)?;
        if self.name.len() > MAX_KEY_NAME_LEN {
            return Err(GrantError::NameTooLong);
        }
        for t in self.tenants.iter().filter(|t| *t != ANY) {
            valid_name(t).map_err(|why| GrantError::Tenant {
                tenant: t.clone(),
                why,
            })?;
        }
        if let Some(v) = self.vendors.iter().find(|v| *v != ANY && !is_vendor(v)) {
            return Err(GrantError::VendorUnknown(v.clone()));
        }
        let operations: BTreeSet<Operation> = known(self.operations).ok_or(GrantError::Operation)?;
        let permissions: BTreeSet<Permission> = known(self.permissions).ok_or(GrantError::Permission)?;
        let gateway_scope = !self.tenants.is_empty() && !self.vendors.is_empty() && !operations.is_empty();
        let no_gateway_scope = self.tenants.is_empty() && self.vendors.is_empty() && operations.is_empty();
        let other_scope = self.admin || !permissions.is_empty();
        if !(gateway_scope || (other_scope && no_gateway_scope)) {
            return Err(GrantError::Incomplete);
        }
        if self.ttl_seconds > self.max_ttl_seconds {
            return Err(GrantError::Ttl {
                max_days: self.max_ttl_seconds / 86_400,
            });
        }
        if self.allow_cidrs.len() > MAX_CIDRS {
            return Err(GrantError::TooManyCidrs);
        }
        let mut allow_cidrs = Vec::with_capacity(self.allow_cidrs.len());
        for text in self.allow_cidrs {
            let net = parse_cidr(text).map_err(GrantError::Cidr)?;
            if !allow_cidrs.contains(&net) {
                allow_cidrs.push(net);
            }
        }
        let ttl_ms = (self.ttl_seconds > 0).then(|| self.ttl_seconds * 1000);
        let grant = Grant {
            tenants: self.tenants.to_vec(),
            vendors: self.vendors.to_vec(),
            operations,
            admin: self.admin,
            permissions,
        };
        Ok(KeyScope {
            grant,
            ttl_ms,
            allow_cidrs,
        })
    }
}

/// Every item, or `None` if one is unknown.
fn known<T: Ord + Copy>(items: &[Option<T>]) -> Option<BTreeSet<T>> {
    items.iter().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn request<'a>(
        tenants: &'a [String],
        vendors: &'a [String],
        ops: &'a [Option<Operation>],
    ) -> KeyRequest<'a> {
        KeyRequest {
            name: "ci",
            tenants,
            vendors,
            operations: ops,
            permissions: &[],
            admin: false,
            ttl_seconds: 0,
            max_ttl_seconds: MAX_TTL_SECONDS,
            allow_cidrs: &[],
        }
    }

    #[test]
    fn a_gateway_scope_needs_all_three_parts() {
        let (t, v) = (names(&["acme"]), names(&["stripe", "*"]));
        let ops = [Some(Operation::Read)];
        let scope = request(&t, &v, &ops).grant(|v| v == "stripe").unwrap();
        assert_eq!(scope.grant.operations, [Operation::Read].into());
        assert_eq!(scope.ttl_ms, None);
        assert_eq!(
            request(&t, &[], &ops).grant(|_| true),
            Err(GrantError::Incomplete)
        );
        assert_eq!(
            request(&t, &names(&["nope"]), &ops).grant(|_| false),
            Err(GrantError::VendorUnknown("nope".into()))
        );
        assert_eq!(
            request(&t, &v, &[None]).grant(|_| true),
            Err(GrantError::Operation)
        );
    }

    #[test]
    fn admin_only_keys_and_limits() {
        let admin = KeyRequest {
            admin: true,
            ..request(&[], &[], &[])
        };
        assert!(admin.grant(|_| true).unwrap().grant.admin);
        let long = KeyRequest {
            ttl_seconds: MAX_TTL_SECONDS + 1,
            ..admin
        };
        assert_eq!(long.grant(|_| true), Err(GrantError::Ttl { max_days: 3650 }));
        // A deployment's own maximum.
        let week = KeyRequest {
            ttl_seconds: 8 * 86_400,
            max_ttl_seconds: 7 * 86_400,
            ..admin
        };
        assert_eq!(week.grant(|_| true), Err(GrantError::Ttl { max_days: 7 }));
        let cidrs = names(&["10.0.0.0/8", "::1", "10.0.0.0/8"]);
        let bound = KeyRequest {
            allow_cidrs: &cidrs,
            ..admin
        };
        assert_eq!(bound.grant(|_| true).unwrap().allow_cidrs.len(), 2);
        let bad = names(&["10.0.0.1/8"]);
        let err = KeyRequest {
            allow_cidrs: &bad,
            ..admin
        }
        .grant(|_| true)
        .unwrap_err();
        assert_eq!(err.field(), "allow_cidrs");
        let name = "n".repeat(MAX_KEY_NAME_LEN + 1);
        let named = KeyRequest { name: &name, ..admin };
        assert_eq!(named.grant(|_| true).unwrap_err().field(), "name");
    }
}
