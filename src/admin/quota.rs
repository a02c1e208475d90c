//! The Admin service's quota RPCs: policies and usage. Changing policies
//! needs an admin key or the `quota_admin` permission; reading them also
//! `quota_view`. Every change is audited with the policy before and after.

use super::AdminService;
use crate::app::actor;
use crate::proto;
use crate::status::{Failure, Reason};
use tonic::Request;
use valet_access::Permission;
use valet_audit::Event;
use valet_credentials::valid_name;
use valet_quota::{Mode, OperationMatch, Period, Policy};

impl AdminService {
    pub(super) async fn put_quota_policy(
        &self,
        request: Request<proto::PutQuotaPolicyRequest>,
    ) -> Result<proto::QuotaPolicy, Failure> {
        let caller = self.permitted(&request, Permission::QuotaAdmin)?;
        let wire = request
            .into_inner()
            .policy
            .ok_or_else(|| Failure::invalid("policy", Reason::PolicyInvalid, "is required"))?;
        let policy = self.policy_from_wire(&wire)?;
        let before = self
            .app
            .quotas
            .put(policy.clone())
            .await
            .map_err(|e| store_failure(&e))?;
        let event = Event::QuotaPolicyPut {
            policy_id: policy.id(),
            before: before.map(|p| serde_json::to_value(p).expect("a policy serialises")),
            after: serde_json::to_value(&policy).expect("a policy serialises"),
        };
        self.app.record(&actor(&caller), event).await?;
        Ok(policy_to_wire(&policy))
    }

    pub(super) fn get_quota_policy(
        &self,
        request: Request<proto::GetQuotaPolicyRequest>,
    ) -> Result<proto::QuotaPolicy, Failure> {
        self.permitted(&request, Permission::QuotaView)?;
        let id = request.into_inner().id;
        self.app
            .quotas
            .get(&id)
            .map(|p| policy_to_wire(&p))
            .ok_or_else(|| not_found(&id))
    }

    pub(super) fn list_quota_policies(
        &self,
        request: Request<proto::ListQuotaPoliciesRequest>,
    ) -> Result<proto::ListQuotaPoliciesResponse, Failure> {
        self.permitted(&request, Permission::QuotaView)?;
        Ok(proto::ListQuotaPoliciesResponse {
            policies: self.app.quotas.list().iter().map(policy_to_wire).collect(),
        })
    }

    pub(super) async fn delete_quota_policy(
        &self,
        request: Request<proto::DeleteQuotaPolicyRequest>,
    ) -> Result<(), Failure> {
        let caller = self.permitted(&request, Permission::QuotaAdmin)?;
        let id = request.into_inner().id;
        let removed = self
            .app
            .quotas
            .delete(&id)
            .await
            .map_err(|e| store_failure(&e))?
            .ok_or_else(|| not_found(&id))?;
        let event = Event::QuotaPolicyDelete {
            policy_id: id,
            before: serde_json::to_value(removed).expect("a policy serialises"),
        };
        self.app.record(&actor(&caller), event).await?;
        Ok(())
    }

    pub(super) async fn get_quota_usage(
        &self,
        request: Request<proto::GetQuotaUsageRequest>,
    ) -> Result<proto::GetQuotaUsageResponse, Failure> {
        self.permitted(&request, Permission::QuotaView)?;
        let req = request.into_inner();
        valid_name(&req.tenant).map_err(|e| Failure::invalid("tenant", Reason::TenantInvalid, e))?;
        if self.app.registry.get(&req.vendor).is_none() {
            return Err(Failure::invalid(
                "vendor",
                Reason::VendorUnknown,
                "not a configured vendor",
            ));
        }
        let read = match req.operation.as_str() {
            "read" => true,
            "write" => false,
            _ => {
                return Err(Failure::invalid(
                    "operation",
                    Reason::OperationInvalid,
                    "must be 'read' or 'write'",
                ));
            }
        };
        let usage = self
            .app
            .quotas
            .usage(&req.tenant, &req.vendor, read)
            .await
            .into_iter()
            .map(|u| proto::QuotaUsage {
                policy_id: u.policy_id,
                remaining: u.remaining,
                reset_ms: u.reset.as_millis() as u64,
            })
            .collect();
        Ok(proto::GetQuotaUsageResponse { usage })
    }

    fn policy_from_wire(&self, wire: &proto::QuotaPolicy) -> Result<Policy, Failure> {
        let operation = match wire.operation.as_str() {
            "read" => OperationMatch::Read,
            "write" => OperationMatch::Write,
            "*" | "" => OperationMatch::Any,
            _ => {
                return Err(Failure::invalid(
                    "policy.operation",
                    Reason::PolicyInvalid,
                    "must be 'read', 'write' or '*'",
                ));
            }
        };
        let period = match proto::RatePeriod::try_from(wire.period) {
            Ok(proto::RatePeriod::Second) => Period::Second,
            Ok(proto::RatePeriod::Minute) => Period::Minute,
            Ok(proto::RatePeriod::Hour) => Period::Hour,
            _ => {
                return Err(Failure::invalid(
                    "policy.period",
                    Reason::PolicyInvalid,
                    "must be second, minute or hour",
                ));
            }
        };
        let policy = Policy {
            tenant: wire.tenant.clone(),
            vendor: wire.vendor.clone(),
            operation,
            rate: wire.rate,
            period,
            burst: wire.burst,
            mode: if wire.shadow { Mode::Shadow } else { Mode::Enforce },
            aggregate: wire.aggregate,
        };
        policy
            .check()
            .map_err(|e| Failure::invalid("policy", Reason::PolicyInvalid, format!("policy.{e}")))?;
        if policy.vendor != "*" && self.app.registry.get(&policy.vendor).is_none() {
            return Err(Failure::invalid(
                "policy.vendor",
                Reason::PolicyInvalid,
                "not a configured vendor",
            ));
        }
        Ok(policy)
    }
}

/// The wire form of a policy.
fn policy_to_wire(p: &Policy) -> proto::QuotaPolicy {
    proto::QuotaPolicy {
        id: p.id(),
        tenant: p.tenant.clone(),
        vendor: p.vendor.clone(),
        operation: match p.operation {
            OperationMatch::Read => "read",
            OperationMatch::Write => "write",
            OperationMatch::Any => "*",
        }
        .into(),
        rate: p.rate,
        period: match p.period {
            Period::Second => proto::RatePeriod::Second,
            Period::Minute => proto::RatePeriod::Minute,
            Period::Hour => proto::RatePeriod::Hour,
        } as i32,
        burst: p.burst,
        shadow: p.mode == Mode::Shadow,
        aggregate: p.aggregate,
    }
}

fn not_found(id: &str) -> Failure {
    Failure::new(Reason::PolicyNotFound, format!("no quota policy with id '{id}'"))
}

fn store_failure(e: &valet_quota::QuotaError) -> Failure {
    tracing::error!(error = %e, "quota policy store failed");
    Failure::new(Reason::StoreUnavailable, "the quota policy store is unavailable")
}
