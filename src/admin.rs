//! The `valet.v1.Admin` service: credentials and API keys, admin keys only,
//! every change audited.

use crate::app::{App, actor};
use crate::call::authenticate;
use crate::proto::{self, admin_server::Admin};
use crate::refusal::{self, Asked};
use crate::status::{Failure, Reason};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use valet_access::{ApiKeyRecord, Caller, Grant, KeyRequest, KeyScope, Operation, Permission, Use};
use valet_audit::Event;
use valet_credentials::rotation::{Journal, StepRecord, Verdict, Verifier};
use valet_credentials::{CredentialKey, CredentialMeta, Rotations, Secret, valid_name};

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    app: Arc<App>,
    /// Credentials being rotated by this replica.
    rotations: Rotations,
}

/// A rotation's check: the vendor's verify request, one attempt. For an
/// OAuth vendor, an access token is fetched with the new client
/// credentials first and the verify request carries it.
struct VerifyWith<'a> {
    app: &'a App,
    vendor: &'a Arc<valet_egress::Vendor>,
    request: valet_egress::ProxyRequest,
}

impl Verifier for VerifyWith<'_> {
    async fn verify(&self, secret: &Secret) -> Verdict {
        let token;
        let mut identity = None;
        let secret = match self.vendor.oauth() {
            None => secret,
            Some(spec) => {
                let Ok(material) = valet_egress::GrantMaterial::parse(secret, spec) else {
                    return Verdict::Failed {
                        reason: "SECRET_INVALID",
                        detail: "not OAuth grant material".into(),
                    };
                };
                // An mtls vendor's verify request goes with the new certificate.
                if spec.mtls {
                    identity = material.identity().and_then(Result::ok);
                }
                match valet_oauth::request::token(self.vendor, &material, spec.scopes_for(false)).await {
                    Ok(issued) => {
                        token = issued.access;
                        &token
                    }
                    Err(e) => {
                        return Verdict::Failed {
                            reason: "TOKEN_REQUEST_FAILED",
                            detail: e.to_string(),
                        };
                    }
                }
            }
        };
        // One attempt: a verify answer must come from this credential now.
        let exchange = valet_egress::Exchange {
            limits: &self.app.limits,
            answers: &self.app.answers,
            deadline: None,
            repeatable: false,
            metrics: &self.app.metrics,
            trace: &valet_telemetry::propagation::TraceContext::new_trace(),
            scrub_also: &[],
            identity: identity.as_ref(),
        };
        match self
            .vendor
            .send(self.request.clone(), secret, &exchange)
            .await
            .result
        {
            Ok(answer) => Verdict::Answered(answer.status),
            Err(e) => Verdict::Failed {
                reason: e.reason(),
                detail: e.to_string(),
            },
        }
    }
}

/// A rotation's journal: the audit log.
struct AuditJournal<'a> {
    app: &'a App,
    actor: String,
}

impl Journal for AuditJournal<'_> {
    type Error = valet_audit::AuditError;

    async fn record(&self, r: StepRecord<'_>) -> Result<(), Self::Error> {
        let event = Event::CredentialRotate {
            tenant: r.key.tenant.clone(),
            vendor: r.key.vendor.clone(),
            step: r.step.as_str().to_owned(),
            old_fingerprint: r.old.to_string(),
            new_fingerprint: r.new.to_string(),
            vendor_status: r.vendor_status,
            error: r.error.map(str::to_owned),
        };
        self.app.record(&self.actor, event).await
    }
}

impl AdminService {
    /// Serves admin requests with `app`.
    pub fn new(app: Arc<App>) -> Self {
        Self {
            app,
            rotations: Rotations::default(),
        }
    }

    /// The caller of an RPC for admin keys only.
    fn admin<T>(&self, request: &Request<T>) -> Result<Caller, Failure> {
        self.allowed(request, "admin", Grant::allows_admin)
    }

    /// The caller of an RPC that needs `permission` (admin keys have all
    /// but `audit_view`).
    fn permitted<T>(&self, request: &Request<T>, permission: Permission) -> Result<Caller, Failure> {
        self.allowed(request, permission.as_str(), |grant| grant.has(permission))
    }

    /// Authenticates the caller, then asks `check` of its grant; a refusal
    /// is on the record ([`crate::refusal`]).
    fn allowed<T>(
        &self,
        request: &Request<T>,
        what: &str,
        check: impl FnOnce(&Grant) -> Result<(), valet_access::Denied>,
    ) -> Result<Caller, Failure> {
        let caller = authenticate::request_caller(&self.app, request)?;
        if let Err(denied) = check(&caller.grant) {
            let asked = Asked {
                what,
                source: authenticate::request_source(&self.app, request),
                ..Asked::default()
            };
            return Err(refusal::record(&self.app, &caller, asked, denied.into()));
        }
        Ok(caller)
    }

    fn credential_key(&self, tenant: &str, vendor: &str) -> Result<CredentialKey, Failure> {
        valid_name(tenant).map_err(|e| Failure::invalid("tenant", Reason::TenantInvalid, e))?;
        if self.app.registry.get(vendor).is_none() {
            return Err(Failure::invalid(
                "vendor",
                Reason::VendorUnknown,
                "not a configured vendor",
            ));
        }
        Ok(CredentialKey::new(tenant, vendor))
    }

    async fn put_credential(
        &self,
        request: Request<proto::PutCredentialRequest>,
    ) -> Result<proto::CredentialInfo, Failure> {
        let caller = self.admin(&request)?;
        let req = request.into_inner();
        let key = self.credential_key(&req.tenant, &req.vendor)?;
        let secret = Secret::from(req.secret);
        let vendor = self.app.registry.get(&key.vendor).expect("checked above");
        crate::oauth::check_secret(&vendor, &secret)
            .map_err(|why| Failure::invalid("secret", Reason::SecretInvalid, why))?;
        let (stored, replaced) = self.app.vault.put(&key, &secret).await?;
        drop(secret);
        self.app.tokens.forget(&key).await;
        let event = Event::CredentialPut {
            tenant: key.tenant.clone(),
            vendor: key.vendor.clone(),
            fingerprint: stored.fingerprint.to_string(),
            replaced: replaced.map(|f| f.to_string()),
        };
        self.app.record(&actor(&caller), event).await?;
        Ok(credential_info(
            &key,
            &stored.meta(),
            self.app.rotation_reminder_ms,
        ))
    }

    /// Checks the request, then runs `valet_credentials`' rotation with
    /// the vendor's verify request and the audit log as its journal.
    async fn rotate_credential(
        &self,
        request: Request<proto::RotateCredentialRequest>,
    ) -> Result<proto::RotateCredentialResponse, Failure> {
        let caller = self.admin(&request)?;
        let req = request.into_inner();
        let key = self.credential_key(&req.tenant, &req.vendor)?;
        let vendor = self.app.registry.get(&key.vendor).expect("checked above").clone();
        let Some(request) = vendor.verify_request() else {
            return Err(Failure::new(
                Reason::VerifyNotConfigured,
                format!(
                    "vendor '{}' has no verify request configured, so a rotation cannot be checked; use PutCredential to replace it unchecked",
                    key.vendor
                ),
            ));
        };
        if vendor
            .oauth()
            .is_some_and(|o| o.grant == valet_egress::Grant::RefreshToken)
        {
            return Err(Failure::new(
                Reason::VerifyNotConfigured,
                format!(
                    "vendor '{}' uses the refresh_token grant: checking new material would spend its refresh token; use PutCredential",
                    key.vendor
                ),
            ));
        }
        let secret = Secret::from(req.secret);
        crate::oauth::check_secret(&vendor, &secret)
            .map_err(|why| Failure::invalid("secret", Reason::SecretInvalid, why))?;
        let verifier = VerifyWith {
            app: &self.app,
            vendor: &vendor,
            request,
        };
        let journal = AuditJournal {
            app: &self.app,
            actor: actor(&caller),
        };
        let rotated = self
            .rotations
            .rotate(&self.app.vault, &key, secret, &verifier, &journal)
            .await?;
        self.app.tokens.forget(&key).await;
        Ok(proto::RotateCredentialResponse {
            credential: Some(credential_info(
                &key,
                &rotated.current,
                self.app.rotation_reminder_ms,
            )),
            previous_fingerprint: rotated.previous.to_string(),
            verify_status: u32::from(rotated.verify_status),
        })
    }

    /// Deletes `tenant`'s idempotency records and stored responses;
    /// `unavailable` is the caller's message when the store cannot.
    async fn purge_records(&self, tenant: &str, unavailable: &str) -> Result<u64, Failure> {
        let purged = self.app.idempotency.purge_tenant(tenant).await.map_err(|e| {
            tracing::error!(error = %e, "idempotency purge failed");
            Failure::new(Reason::IdempotencyStoreUnavailable, unavailable)
        })?;
        Ok(purged as u64)
    }

    /// Offboarding: deletes the tenant's stored responses.
    async fn purge_tenant_records(
        &self,
        request: Request<proto::PurgeTenantRecordsRequest>,
    ) -> Result<proto::PurgeTenantRecordsResponse, Failure> {
        let caller = self.admin(&request)?;
        let tenant = request.into_inner().tenant;
        valid_name(&tenant).map_err(|e| Failure::invalid("tenant", Reason::TenantInvalid, e))?;
        let purged = self
            .purge_records(&tenant, "the idempotency store is unavailable")
            .await?;
        let event = Event::IdempotencyPurge {
            tenant: tenant.clone(),
            purged,
        };
        self.app.record(&actor(&caller), event).await?;
        Ok(proto::PurgeTenantRecordsResponse { purged })
    }

    async fn delete_credential(
        &self,
        request: Request<proto::DeleteCredentialRequest>,
    ) -> Result<(), Failure> {
        let caller = self.admin(&request)?;
        let req = request.into_inner();
        valid_name(&req.tenant).map_err(|e| Failure::invalid("tenant", Reason::TenantInvalid, e))?;
        valid_name(&req.vendor).map_err(|e| Failure::invalid("vendor", Reason::VendorInvalid, e))?;
        let key = CredentialKey::new(req.tenant, req.vendor);
        let old = self.app.vault.delete(&key).await?;
        self.app.tokens.forget(&key).await;
        let event = Event::CredentialDelete {
            tenant: key.tenant,
            vendor: key.vendor,
            fingerprint: old.fingerprint.to_string(),
        };
        self.app.record(&actor(&caller), event).await?;
        Ok(())
    }

    async fn list_credentials(
        &self,
        request: Request<proto::ListCredentialsRequest>,
    ) -> Result<proto::ListCredentialsResponse, Failure> {
        self.admin(&request)?;
        let tenant = request.into_inner().tenant;
        let filter = (!tenant.is_empty()).then_some(tenant.as_str());
        let credentials = self
            .app
            .vault
            .list(filter)
            .await?
            .iter()
            .map(|(k, c)| credential_info(k, c, self.app.rotation_reminder_ms))
            .collect();
        Ok(proto::ListCredentialsResponse { credentials })
    }

    async fn create_api_key(
        &self,
        request: Request<proto::CreateApiKeyRequest>,
    ) -> Result<proto::CreateApiKeyResponse, Failure> {
        let caller = self.admin(&request)?;
        let req = request.into_inner();
        let KeyScope {
            grant,
            ttl_ms,
            allow_cidrs,
        } = self.grant(&req)?;
        let keys = self.app.keys.clone();
        let name = req.name.clone();
        let identity = Some(req.client_identity.trim().to_owned()).filter(|s| !s.is_empty());
        let (key, record) = landing("API key creation", async move {
            keys.create_restricted(&name, grant, ttl_ms, identity, allow_cidrs)
                .await
        })
        .await?;
        let event = Event::ApiKeyCreate {
            key_id: record.id.clone(),
            name: record.name.clone(),
            tenants: record.grant.tenants.clone(),
            vendors: record.grant.vendors.clone(),
            operations: record
                .grant
                .operations
                .iter()
                .map(|o| o.as_str().to_owned())
                .collect(),
            admin: record.grant.admin,
            permissions: record
                .grant
                .permissions
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            expires_ms: record.expires_ms,
            client_identity: record.client_identity.clone(),
            allow_cidrs: record.allow_cidrs.iter().map(ToString::to_string).collect(),
        };
        self.app.record(&actor(&caller), event).await?;
        Ok(proto::CreateApiKeyResponse {
            key: key.expose().to_owned(),
            info: Some(self.api_key_info(&record)),
        })
    }

    /// The grant the request asks for, under `valet_access`'s rules.
    fn grant(&self, req: &proto::CreateApiKeyRequest) -> Result<KeyScope, Failure> {
        let operations: Vec<_> = req
            .operations
            .iter()
            .map(|op| match proto::Operation::try_from(*op) {
                Ok(proto::Operation::Read) => Some(Operation::Read),
                Ok(proto::Operation::Write) => Some(Operation::Write),
                _ => None,
            })
            .collect();
        let permissions: Vec<_> = req
            .permissions
            .iter()
            .map(|p| match proto::Permission::try_from(*p) {
                Ok(proto::Permission::QuotaAdmin) => Some(Permission::QuotaAdmin),
                Ok(proto::Permission::QuotaView) => Some(Permission::QuotaView),
                Ok(proto::Permission::AuditView) => Some(Permission::AuditView),
                _ => None,
            })
            .collect();
        let request = KeyRequest {
            name: &req.name,
            tenants: &req.tenants,
            vendors: &req.vendors,
            operations: &operations,
            permissions: &permissions,
            admin: req.admin,
            ttl_seconds: req.ttl_seconds,
            max_ttl_seconds: self.app.api_keys.max_lifetime_seconds(),
            allow_cidrs: &req.allow_cidrs,
        };
        Ok(request.grant(|v| self.app.registry.get(v).is_some())?)
    }

    /// Revokes by id, or by the name of exactly one valid key.
    async fn revoke_api_key(
        &self,
        request: Request<proto::RevokeApiKeyRequest>,
    ) -> Result<proto::ApiKeyInfo, Failure> {
        let caller = self.admin(&request)?;
        let req = request.into_inner();
        let (id, name) = (req.id.trim().to_owned(), req.name.trim().to_owned());
        if id.is_empty() == name.is_empty() {
            return Err(Failure::invalid(
                "id",
                Reason::ApiKeySelectorInvalid,
                "give exactly one of id and name",
            ));
        }
        let keys = self.app.keys.clone();
        let record = landing("API key revocation", async move {
            match id.is_empty() {
                false => keys.revoke(&id).await,
                true => keys.revoke_by_name(&name).await,
            }
        })
        .await?;
        let event = Event::ApiKeyRevoke {
            key_id: record.id.clone(),
            name: record.name.clone(),
        };
        self.app.record(&actor(&caller), event).await?;
        Ok(self.api_key_info(&record))
    }

    /// A successor for a key, the old one kept for an overlap; one audit
    /// event for both changes.
    async fn rotate_api_key(
        &self,
        request: Request<proto::RotateApiKeyRequest>,
    ) -> Result<proto::RotateApiKeyResponse, Failure> {
        let caller = self.admin(&request)?;
        let req = request.into_inner();
        let max_seconds = self.app.api_keys.max_lifetime_seconds();
        if req.overlap_seconds > max_seconds {
            return Err(Failure::invalid(
                "overlap_seconds",
                Reason::TtlInvalid,
                format!(
                    "must be at most {} days (this deployment's api_keys.max_lifetime_days)",
                    self.app.api_keys.max_lifetime_days
                ),
            ));
        }
        let keys = self.app.keys.clone();
        let id = req.id.trim().to_owned();
        let overlap_ms = req.overlap_seconds * 1000;
        let (key, successor, old) = landing("API key rotation", async move {
            keys.rotate(&id, overlap_ms, max_seconds * 1000).await
        })
        .await?;
        let event = Event::ApiKeyRotate {
            key_id: old.id.clone(),
            new_key_id: successor.id.clone(),
            name: successor.name.clone(),
            old_expires_ms: old.expires_ms,
            new_expires_ms: successor.expires_ms,
        };
        self.app.record(&actor(&caller), event).await?;
        Ok(proto::RotateApiKeyResponse {
            key: key.expose().to_owned(),
            info: Some(self.api_key_info(&successor)),
            previous: Some(self.api_key_info(&old)),
        })
    }

    /// Every key, or only valid ones expiring within the window asked for.
    fn list_api_keys(
        &self,
        request: Request<proto::ListApiKeysRequest>,
    ) -> Result<proto::ListApiKeysResponse, Failure> {
        self.admin(&request)?;
        let within = request.into_inner().expiring_within_seconds;
        let now = crate::app::now_ms();
        let keys = self
            .app
            .keys
            .list()
            .iter()
            .filter(|k| within == 0 || k.expires_within(now, within.saturating_mul(1000)))
            .map(|k| self.api_key_info(k))
            .collect();
        Ok(proto::ListApiKeysResponse { keys })
    }

    fn api_key_info(&self, record: &ApiKeyRecord) -> proto::ApiKeyInfo {
        api_key_info(record, self.app.last_use.get(&record.id))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn put_credential(
        &self,
        r: Request<proto::PutCredentialRequest>,
    ) -> Result<Response<proto::CredentialInfo>, Status> {
        reply(self.put_credential(r).await)
    }

    async fn rotate_credential(
        &self,
        r: Request<proto::RotateCredentialRequest>,
    ) -> Result<Response<proto::RotateCredentialResponse>, Status> {
        reply(self.rotate_credential(r).await)
    }

    async fn delete_credential(
        &self,
        r: Request<proto::DeleteCredentialRequest>,
    ) -> Result<Response<proto::DeleteCredentialResponse>, Status> {
        reply(
            self.delete_credential(r)
                .await
                .map(|()| proto::DeleteCredentialResponse {}),
        )
    }

    async fn list_credentials(
        &self,
        r: Request<proto::ListCredentialsRequest>,
    ) -> Result<Response<proto::ListCredentialsResponse>, Status> {
        reply(self.list_credentials(r).await)
    }

    async fn create_api_key(
        &self,
        r: Request<proto::CreateApiKeyRequest>,
    ) -> Result<Response<proto::CreateApiKeyResponse>, Status> {
        reply(self.create_api_key(r).await)
    }

    async fn revoke_api_key(
        &self,
        r: Request<proto::RevokeApiKeyRequest>,
    ) -> Result<Response<proto::ApiKeyInfo>, Status> {
        reply(self.revoke_api_key(r).await)
    }

    async fn purge_tenant_records(
        &self,
        r: Request<proto::PurgeTenantRecordsRequest>,
    ) -> Result<Response<proto::PurgeTenantRecordsResponse>, Status> {
        reply(self.purge_tenant_records(r).await)
    }

    async fn put_quota_policy(
        &self,
        r: Request<proto::PutQuotaPolicyRequest>,
    ) -> Result<Response<proto::QuotaPolicy>, Status> {
        reply(self.put_quota_policy(r).await)
    }

    async fn get_quota_policy(
        &self,
        r: Request<proto::GetQuotaPolicyRequest>,
    ) -> Result<Response<proto::QuotaPolicy>, Status> {
        reply(self.get_quota_policy(r))
    }

    async fn list_quota_policies(
        &self,
        r: Request<proto::ListQuotaPoliciesRequest>,
    ) -> Result<Response<proto::ListQuotaPoliciesResponse>, Status> {
        reply(self.list_quota_policies(r))
    }

    async fn delete_quota_policy(
        &self,
        r: Request<proto::DeleteQuotaPolicyRequest>,
    ) -> Result<Response<proto::DeleteQuotaPolicyResponse>, Status> {
        reply(
            self.delete_quota_policy(r)
                .await
                .map(|()| proto::DeleteQuotaPolicyResponse {}),
        )
    }

    async fn get_quota_usage(
        &self,
        r: Request<proto::GetQuotaUsageRequest>,
    ) -> Result<Response<proto::GetQuotaUsageResponse>, Status> {
        reply(self.get_quota_usage(r).await)
    }

    async fn set_tenant_status(
        &self,
        r: Request<proto::SetTenantStatusRequest>,
    ) -> Result<Response<proto::SetTenantStatusResponse>, Status> {
        reply(self.set_tenant_status(r).await)
    }

    async fn get_tenant_status(
        &self,
        r: Request<proto::GetTenantStatusRequest>,
    ) -> Result<Response<proto::TenantStatus>, Status> {
        reply(self.get_tenant_status(r).await)
    }

    async fn list_tenants(
        &self,
        r: Request<proto::ListTenantsRequest>,
    ) -> Result<Response<proto::ListTenantsResponse>, Status> {
        reply(self.list_tenants(r).await)
    }

    async fn offboard_tenant(
        &self,
        r: Request<proto::OffboardTenantRequest>,
    ) -> Result<Response<proto::OffboardTenantResponse>, Status> {
        reply(self.offboard_tenant(r).await)
    }

    async fn restore_tenant(
        &self,
        r: Request<proto::RestoreTenantRequest>,
    ) -> Result<Response<proto::TenantStatus>, Status> {
        reply(self.restore_tenant(r).await)
    }

    type QueryAuditStream = audit::EntryStream;

    async fn query_audit(
        &self,
        r: Request<proto::QueryAuditRequest>,
    ) -> Result<Response<Self::QueryAuditStream>, Status> {
        reply(self.query_audit(r).await)
    }

    async fn summarize_audit(
        &self,
        r: Request<proto::SummarizeAuditRequest>,
    ) -> Result<Response<proto::AuditSummary>, Status> {
        reply(self.summarize_audit(r).await)
    }

    async fn get_server_status(
        &self,
        r: Request<proto::GetServerStatusRequest>,
    ) -> Result<Response<proto::ServerStatus>, Status> {
        reply(self.server_status(r).await)
    }

    async fn list_api_keys(
        &self,
        r: Request<proto::ListApiKeysRequest>,
    ) -> Result<Response<proto::ListApiKeysResponse>, Status> {
        reply(self.list_api_keys(r))
    }

    async fn rotate_api_key(
        &self,
        r: Request<proto::RotateApiKeyRequest>,
    ) -> Result<Response<proto::RotateApiKeyResponse>, Status> {
        reply(self.rotate_api_key(r).await)
    }
}

mod audit;
mod offboard;
mod quota;
mod status;
mod tenants;

/// Runs a control-store change to its end even if the admin's request is
/// dropped meanwhile: a revoke or a disable that started lands.
async fn landing<T: Send + 'static>(
    what: &str,
    change: impl Future<Output = Result<T, valet_access::KeyStoreError>> + Send + 'static,
) -> Result<T, Failure> {
    let joined = tokio::spawn(change).await;
    let done = joined.map_err(|_| Failure::new(Reason::Internal, format!("{what} was interrupted")))?;
    Ok(done?)
}

fn reply<T>(result: Result<T, Failure>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|f| f.into_status(None))
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn credential_info(key: &CredentialKey, c: &CredentialMeta, reminder_ms: u64) -> proto::CredentialInfo {
    let rotate_by = c.updated_ms.saturating_add(reminder_ms);
    proto::CredentialInfo {
        rotate_by: Some(timestamp(rotate_by)),
        rotation_overdue: crate::app::now_ms() >= rotate_by,
        tenant: key.tenant.clone(),
        vendor: key.vendor.clone(),
        fingerprint: c.fingerprint.to_string(),
        last4: c.last4.clone(),
        created: Some(timestamp(c.created_ms)),
        updated: Some(timestamp(c.updated_ms)),
    }
}

fn api_key_info(r: &ApiKeyRecord, last_use: Option<Use>) -> proto::ApiKeyInfo {
    proto::ApiKeyInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        tenants: r.grant.tenants.clone(),
        vendors: r.grant.vendors.clone(),
        operations: r
            .grant
            .operations
            .iter()
            .map(|o| match o {
                Operation::Read => proto::Operation::Read as i32,
                Operation::Write => proto::Operation::Write as i32,
            })
            .collect(),
        admin: r.grant.admin,
        last4: r.last4.clone(),
        created: Some(timestamp(r.created_ms)),
        expires: r.expires_ms.map(timestamp),
        revoked: r.revoked_ms.map(timestamp),
        client_identity: r.client_identity.clone().unwrap_or_default(),
        permissions: r
            .grant
            .permissions
            .iter()
            .map(|p| match p {
                Permission::QuotaAdmin => proto::Permission::QuotaAdmin as i32,
                Permission::QuotaView => proto::Permission::QuotaView as i32,
                Permission::AuditView => proto::Permission::AuditView as i32,
            })
            .collect(),
        allow_cidrs: r.allow_cidrs.iter().map(ToString::to_string).collect(),
        last_used: last_use.map(|u| timestamp(u.at_ms)),
        last_used_source: last_use
            .and_then(|u| u.source)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
    }
}
