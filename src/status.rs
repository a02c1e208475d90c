//! The one place where failures become gRPC statuses.
//!
//! Every refusal carries a stable reason code in a `google.rpc.ErrorInfo`
//! (domain `valet`) and a message that names the field or the step — never a
//! secret, a host address or an internal error chain. Callers match on the
//! reason; the message is for people.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use valet_access::{AuthError, Denied, GrantError, KeyStoreError};
use valet_credentials::VaultError;
use valet_egress::{EgressError, PathError, RequestError};

/// The `ErrorInfo.domain` of every Valet error.
pub const DOMAIN: &str = "valet";

/// A refused or failed call: code, stable reason, safe message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The gRPC code.
    pub code: Code,
    /// The stable reason code.
    pub reason: &'static str,
    /// A message for people; names the field, never a secret.
    pub message: String,
    /// When a retry may succeed (quota refusals).
    pub retry_after: Option<std::time::Duration>,
    /// Extra `ErrorInfo` metadata (the refusing quota policy).
    pub info: Vec<(&'static str, String)>,
}

impl Failure {
    /// A failure with an explicit code and reason.
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            retry_after: None,
            info: Vec::new(),
        }
    }

    /// Adds when a retry may succeed: a `google.rpc.RetryInfo` detail and
    /// `retry-after` (milliseconds) trailing metadata.
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Adds an `ErrorInfo` metadata entry.
    pub fn with_info(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.info.push((key, value.into()));
        self
    }

    /// INVALID_ARGUMENT for `field`.
    pub fn invalid(field: &str, reason: &'static str, why: impl std::fmt::Display) -> Self {
        Self::new(Code::InvalidArgument, reason, format!("{field}: {why}"))
    }

    /// The status sent to the caller, tagged with the call's request id.
    pub fn into_status(self, request_id: Option<&str>) -> Status {
        let info: std::collections::HashMap<String, String> = self
            .info
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let mut details = ErrorDetails::with_error_info(self.reason, DOMAIN, info);
        if let Some(after) = self.retry_after {
            details.set_retry_info(Some(after));
        }
        let mut status = Status::with_error_details(self.code, self.message, details);
        if let Some(ms) = self
            .retry_after
            .and_then(|a| a.as_millis().to_string().parse().ok())
        {
            status.metadata_mut().insert("retry-after", ms);
        }
        if let Some(id) = request_id.and_then(|id| id.parse().ok()) {
            status.metadata_mut().insert("x-request-id", id);
        }
        status
    }
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Self {
        let reason = match e {
            AuthError::Missing => "API_KEY_MISSING",
            AuthError::Scheme => "AUTH_SCHEME_UNSUPPORTED",
            AuthError::Unknown => "API_KEY_UNKNOWN",
            AuthError::Revoked => "API_KEY_REVOKED",
            AuthError::Expired => "API_KEY_EXPIRED",
        };
        Self::new(Code::Unauthenticated, reason, e.to_string())
    }
}

impl From<Denied> for Failure {
    fn from(e: Denied) -> Self {
        let (reason, what) = match e {
            Denied::Tenant => ("TENANT_NOT_ALLOWED", "this tenant"),
            Denied::Vendor => ("VENDOR_NOT_ALLOWED", "this vendor"),
            Denied::Operation => ("OPERATION_NOT_ALLOWED", "this operation"),
            Denied::Admin => ("ADMIN_REQUIRED", "the Admin service"),
            Denied::AdminKey => (
                "ADMIN_KEY_ON_GATEWAY",
                "the Gateway: it is an admin key; create a Gateway key with `valet admin apikey create --tenant …`",
            ),
            Denied::Permission(valet_access::Permission::QuotaAdmin) => (
                "PERMISSION_REQUIRED",
                "quota administration (needs the quota_admin permission)",
            ),
            Denied::Permission(valet_access::Permission::QuotaView) => (
                "PERMISSION_REQUIRED",
                "quota viewing (needs the quota_view permission)",
            ),
        };
        Self::new(
            Code::PermissionDenied,
            reason,
            format!("this API key may not use {what}"),
        )
    }
}

impl From<PathError> for Failure {
    fn from(e: PathError) -> Self {
        Self::new(Code::InvalidArgument, e.reason(), e.to_string())
    }
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Self {
        let message = match &e {
            RequestError::Method | RequestError::MethodNotRead(_) => format!("method: {e}"),
            _ => e.to_string(),
        };
        Self::new(Code::InvalidArgument, e.reason(), message)
    }
}

impl From<VaultError> for Failure {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound(key) => Self::new(
                Code::NotFound,
                "CREDENTIAL_NOT_FOUND",
                format!(
                    "no credential stored for tenant '{}' and vendor '{}'",
                    key.tenant, key.vendor
                ),
            ),
            VaultError::InvalidSecret(why) => Self::invalid("secret", "SECRET_INVALID", why),
            VaultError::AuditUnavailable(cause) => {
                tracing::error!(%cause, "audit log unavailable; refusing credential use");
                Self::new(
                    Code::Unavailable,
                    "AUDIT_UNAVAILABLE",
                    "the audit log cannot be written, so no credential may be used",
                )
            }
            VaultError::Seal { key, source } => {
                tracing::error!(credential = %key, error = %source, "stored credential does not open");
                Self::new(
                    Code::Internal,
                    "CREDENTIAL_UNREADABLE",
                    format!(
                        "the stored credential for tenant '{}' and vendor '{}' cannot be decrypted with the loaded master key",
                        key.tenant, key.vendor
                    ),
                )
            }
            VaultError::Store(valet_credentials::StoreError::Unavailable(cause)) => {
                tracing::error!(%cause, "secret store unavailable and no fresh-enough cached credential");
                Self::new(
                    Code::Unavailable,
                    "CREDENTIAL_STORE_UNAVAILABLE",
                    "the credential store is unavailable and no cached credential is recent enough (max_stale) to use",
                )
            }
            VaultError::Store(valet_credentials::StoreError::Corrupt { context }) => {
                tracing::error!(%context, "stored credential is not a valid sealed record");
                Self::new(
                    Code::Internal,
                    "CREDENTIAL_UNREADABLE",
                    "the stored credential is not a valid Valet sealed record; put or rotate it again",
                )
            }
            VaultError::Store(valet_credentials::StoreError::NoPending(key)) => Self::new(
                Code::Aborted,
                "ROTATION_CONFLICT",
                format!(
                    "the pending credential for {key} is gone; another rotation may have run at the same time"
                ),
            ),
            VaultError::Store(cause) => {
                tracing::error!(error = %cause, "credential store failed");
                Self::new(
                    Code::Unavailable,
                    "STORE_UNAVAILABLE",
                    "the credential store is unavailable",
                )
            }
        }
    }
}

impl From<KeyStoreError> for Failure {
    fn from(e: KeyStoreError) -> Self {
        match e {
            KeyStoreError::NotFound(id) => Self::new(
                Code::NotFound,
                "API_KEY_NOT_FOUND",
                format!("no API key with id '{id}'"),
            ),
            e @ KeyStoreError::Identity(_) => {
                Self::new(Code::InvalidArgument, "CLIENT_IDENTITY_INVALID", e.to_string())
            }
            other => {
                tracing::error!(error = %other, "API key store failed");
                Self::new(
                    Code::Unavailable,
                    "STORE_UNAVAILABLE",
                    "the API key store is unavailable",
                )
            }
        }
    }
}

impl From<EgressError> for Failure {
    fn from(e: EgressError) -> Self {
        let code = match &e {
            EgressError::VendorTimeout { .. } | EgressError::Deadline(_) => Code::DeadlineExceeded,
            EgressError::ResponseTooLarge { .. }
            | EgressError::Overloaded(_)
            | EgressError::AnswersOverBudget(_) => Code::ResourceExhausted,
            EgressError::OriginMismatch(_) => Code::InvalidArgument,
            EgressError::AddressForbidden { .. } => Code::FailedPrecondition,
            EgressError::Unreachable(_)
            | EgressError::Tls(_)
            | EgressError::Protocol(_)
            | EgressError::ResponseEncoded(_)
            | EgressError::CircuitOpen { .. } => Code::Unavailable,
        };
        let retry_after = match &e {
            EgressError::CircuitOpen { retry_after, .. } => Some(*retry_after),
            EgressError::Overloaded(_) | EgressError::AnswersOverBudget(_) => {
                Some(std::time::Duration::from_secs(1))
            }
            _ => None,
        };
        let failure = Self::new(code, e.reason(), e.to_string());
        match retry_after {
            Some(wait) => failure.with_retry_after(wait),
            None => failure,
        }
    }
}

impl From<valet_audit::AuditError> for Failure {
    fn from(e: valet_audit::AuditError) -> Self {
        tracing::error!(error = %e, "audit log unavailable");
        Self::new(
            Code::Unavailable,
            "AUDIT_UNAVAILABLE",
            "the change was made but could not be written to the audit log",
        )
    }
}

impl From<valet_quota::BackendUnavailable> for Failure {
    fn from(e: valet_quota::BackendUnavailable) -> Self {
        Self::new(
            Code::Unavailable,
            "QUOTA_BACKEND_UNAVAILABLE",
            format!(
                "the shared quota backend is unavailable and quota.on_backend_error = \"deny\" refuses calls it cannot count (not the tenant's usage); retry after {} ms",
                e.retry_after.as_millis()
            ),
        )
        .with_retry_after(e.retry_after)
    }
}

impl From<GrantError> for Failure {
    fn from(e: GrantError) -> Self {
        let reason = match e {
            GrantError::Name(_) | GrantError::NameTooLong => "NAME_INVALID",
            GrantError::Tenant { .. } => "TENANT_INVALID",
            GrantError::VendorUnknown(_) => "VENDOR_UNKNOWN",
            GrantError::Operation => "OPERATION_INVALID",
            GrantError::Permission => "PERMISSION_INVALID",
            GrantError::Incomplete => "GRANT_INCOMPLETE",
            GrantError::Ttl => "TTL_INVALID",
        };
        Self::invalid(e.field(), reason, e)
    }
}

impl From<valet_credentials::RotationError<valet_audit::AuditError>> for Failure {
    fn from(e: valet_credentials::RotationError<valet_audit::AuditError>) -> Self {
        use valet_credentials::RotationError;
        match e {
            RotationError::InProgress(_) => Self::new(Code::Aborted, "ROTATION_IN_PROGRESS", e.to_string()),
            RotationError::Vault(e) => e.into(),
            RotationError::Journal(e) => e.into(),
            RotationError::Refused(_) => {
                Self::new(Code::FailedPrecondition, "ROTATION_VERIFY_FAILED", e.to_string())
            }
        }
    }
}
