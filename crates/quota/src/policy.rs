//! Quota policies: which calls they cover, how many they admit, and which
//! one applies to a call.
//!
//! A policy's key is `(tenant | *, vendor | *, read | write | *)`. For a
//! call, the most specific matching policy wins (an exact tenant outranks an
//! exact vendor, which outranks an exact operation); each tenant gets its own
//! bucket under it. Aggregate policies (`aggregate = true`) are checked in
//! addition: one bucket shared by every tenant, to protect a vendor's overall
//! limit (our shared egress).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// `*` in a policy key.
pub const ANY: &str = "*";

/// The operations a policy covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationMatch {
    /// Reads only.
    Read,
    /// Writes only.
    Write,
    /// Both (`*`).
    #[serde(rename = "*")]
    Any,
}

/// The unit a rate is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

impl Period {
    /// The period's length.
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3600,
        })
    }
}

/// Enforce, or only evaluate and count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse calls over the limit.
    #[default]
    Enforce,
    /// Count and report calls over the limit, refuse none (to try a limit).
    Shadow,
}

/// One quota policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Tenant name or `*`.
    pub tenant: String,
    /// Vendor name or `*`.
    pub vendor: String,
    /// Operations covered.
    pub operation: OperationMatch,
    /// Calls admitted per `period` in the long run.
    pub rate: u32,
    /// The rate's unit.
    pub period: Period,
    /// Calls admitted at once after an idle spell.
    pub burst: u32,
    /// Enforce or shadow.
    #[serde(default)]
    pub mode: Mode,
    /// One bucket for all tenants (a vendor-wide cap) instead of one each.
    #[serde(default)]
    pub aggregate: bool,
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A tenant or vendor that is neither `*` nor a valid name.
    #[error("{field}: must be '*' or 1-128 characters of [A-Za-z0-9._-] starting with a letter or digit")]
    Name {
        /// `tenant` or `vendor`.
        field: &'static str,
    },
    /// Rate or burst of zero.
    #[error("{0}: must be greater than 0")]
    Zero(&'static str),
    /// A rate faster than one call per microsecond.
    #[error("rate: at most 1000000 per second")]
    TooFast,
    /// An aggregate policy with a specific tenant.
    #[error("aggregate: an aggregate policy covers every tenant, so tenant must be '*'")]
    AggregateTenant,
}

impl Policy {
    /// The policy's id: its key, `tenant/vendor/operation`, with `+all` for
    /// aggregate caps. Stable, so a PUT of the same key replaces it.
    pub fn id(&self) -> String {
        let op = match self.operation {
            OperationMatch::Read => "read",
            OperationMatch::Write => "write",
            OperationMatch::Any => ANY,
        };
        let suffix = if self.aggregate { "+all" } else { "" };
        format!("{}/{}/{op}{suffix}", self.tenant, self.vendor)
    }

    /// Checks the policy's values.
    pub fn check(&self) -> Result<(), PolicyError> {
        let name_ok = |n: &str| n == ANY || valid_name(n);
        if !name_ok(&self.tenant) {
            return Err(PolicyError::Name { field: "tenant" });
        }
        if !name_ok(&self.vendor) {
            return Err(PolicyError::Name { field: "vendor" });
        }
        if self.rate == 0 {
            return Err(PolicyError::Zero("rate"));
        }
        if self.burst == 0 {
            return Err(PolicyError::Zero("burst"));
        }
        if self.emission_interval() < Duration::from_micros(1) {
            return Err(PolicyError::TooFast);
        }
        if self.aggregate && self.tenant != ANY {
            return Err(PolicyError::AggregateTenant);
        }
        Ok(())
    }

    /// Time between admitted calls at the steady rate.
    pub fn emission_interval(&self) -> Duration {
        self.period.duration() / self.rate.max(1)
    }

    /// Whether the policy covers a call.
    pub fn matches(&self, tenant: &str, vendor: &str, read: bool) -> bool {
        (self.tenant == ANY || self.tenant == tenant)
            && (self.vendor == ANY || self.vendor == vendor)
            && match self.operation {
                OperationMatch::Any => true,
                OperationMatch::Read => read,
                OperationMatch::Write => !read,
            }
    }

    fn specificity(&self) -> u8 {
        (u8::from(self.tenant != ANY) << 2)
            | (u8::from(self.vendor != ANY) << 1)
            | u8::from(self.operation != OperationMatch::Any)
    }

    /// The bucket a call counts against: per tenant, or one for all.
    pub fn bucket(&self, tenant: &str) -> String {
        if self.aggregate {
            self.id()
        } else {
            format!("{}#{tenant}", self.id())
        }
    }

    /// `ratelimit-policy` window: the time a full burst takes to refill.
    pub fn window(&self) -> Duration {
        self.emission_interval() * self.burst
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The policies that apply to one call.
#[derive(Debug, Clone, Default)]
pub struct Applicable<'a> {
    /// The most specific per-tenant policy, if any matches.
    pub primary: Option<&'a Policy>,
    /// Every matching aggregate cap.
    pub aggregates: Vec<&'a Policy>,
}

/// Picks the policies for a call out of `policies`.
pub fn select<'a>(policies: &'a [Policy], tenant: &str, vendor: &str, read: bool) -> Applicable<'a> {
    let matching = policies.iter().filter(|p| p.matches(tenant, vendor, read));
    let (aggregates, per_tenant): (Vec<&Policy>, Vec<&Policy>) = matching.partition(|p| p.aggregate);
    Applicable {
        primary: per_tenant.into_iter().max_by_key(|p| p.specificity()),
        aggregates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(tenant: &str, vendor: &str, operation: OperationMatch, rate: u32) -> Policy {
        Policy {
            tenant: tenant.into(),
            vendor: vendor.into(),
            operation,
            rate,
            period: Period::Second,
            burst: rate,
            mode: Mode::Enforce,
            aggregate: false,
        }
    }

    #[test]
    fn the_most_specific_policy_wins() {
        let policies = vec![
            p(ANY, ANY, OperationMatch::Any, 1),
            p(ANY, "stripe", OperationMatch::Any, 2),
            p(ANY, "stripe", OperationMatch::Write, 3),
            p("acme", ANY, OperationMatch::Any, 4),
            Policy {
                aggregate: true,
                ..p(ANY, "stripe", OperationMatch::Any, 100)
            },
        ];
        let rate = |t, v, read| select(&policies, t, v, read).primary.map(|p| p.rate);
        assert_eq!(rate("globex", "github", true), Some(1));
        assert_eq!(rate("globex", "stripe", true), Some(2));
        assert_eq!(rate("globex", "stripe", false), Some(3));
        assert_eq!(
            rate("acme", "stripe", false),
            Some(4),
            "an exact tenant outranks vendor and operation"
        );
        assert_eq!(select(&policies, "globex", "stripe", true).aggregates.len(), 1);
        assert!(select(&policies, "globex", "github", true).aggregates.is_empty());
    }

    #[test]
    fn ids_buckets_and_checks() {
        let per = p("acme", "stripe", OperationMatch::Write, 10);
        assert_eq!(per.id(), "acme/stripe/write");
        assert_eq!(per.bucket("acme"), "acme/stripe/write#acme");
        let agg = Policy {
            aggregate: true,
            ..p(ANY, "stripe", OperationMatch::Any, 10)
        };
        assert_eq!(agg.bucket("acme"), agg.bucket("globex"));
        assert!(per.check().is_ok());
        assert_eq!(
            p("acme", "stripe", OperationMatch::Any, 0).check(),
            Err(PolicyError::Zero("rate"))
        );
        assert!(matches!(
            p("a b", "x", OperationMatch::Any, 1).check(),
            Err(PolicyError::Name { field: "tenant" })
        ));
        let bad_agg = Policy {
            aggregate: true,
            ..p("acme", "stripe", OperationMatch::Any, 1)
        };
        assert_eq!(bad_agg.check(), Err(PolicyError::AggregateTenant));
    }
}
