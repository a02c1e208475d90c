//! The one place where failures become gRPC statuses.
//!
//! Every refusal carries a stable reason code in a `google.rpc.ErrorInfo`
//! (domain `valet`) and a message that names the field or the step — never a
//! secret, a host address or an internal error chain. Callers match on the
//! reason; the message is for people.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use valet_access::{AuthError, Denied, GrantError, KeyStoreError, SourceNotAllowed};
use valet_credentials::VaultError;
use valet_egress::{EgressError, PathError, RequestError};

/// Every stable reason a caller can see: its variant, its gRPC code and its
/// wire string (the `ErrorInfo.reason`, the call log's `outcome`, the span's
/// `valet.reason`). Code compares variants; the unit test below pins every
/// wire string, so renaming one is a visible, deliberate change.
macro_rules! reasons {
    ($($variant:ident => $code:ident, $wire:literal;)*) => {
        /// A stable reason code: its gRPC code and wire string are below.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $(
                #[doc = $wire]
                $variant,
            )*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &[Reason] = &[$(Reason::$variant,)*];

            /// The wire string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $wire,)*
                }
            }

            /// The gRPC code a failure with this reason carries.
            pub const fn code(self) -> Code {
                match self {
                    $(Reason::$variant => Code::$code,)*
                }
            }
        }
    };
}

reasons! {
    Ok => Ok, "OK";
    Cancelled => Cancelled, "CANCELLED";
    ApiKeyMissing => Unauthenticated, "API_KEY_MISSING";
    AuthSchemeUnsupported => Unauthenticated, "AUTH_SCHEME_UNSUPPORTED";
    ApiKeyUnknown => Unauthenticated, "API_KEY_UNKNOWN";
    ApiKeyRevoked => Unauthenticated, "API_KEY_REVOKED";
    ApiKeyExpired => Unauthenticated, "API_KEY_EXPIRED";
    AuthorizationAmbiguous => InvalidArgument, "AUTHORIZATION_AMBIGUOUS";
    TenantNotAllowed => PermissionDenied, "TENANT_NOT_ALLOWED";
    VendorNotAllowed => PermissionDenied, "VENDOR_NOT_ALLOWED";
    OperationNotAllowed => PermissionDenied, "OPERATION_NOT_ALLOWED";
    SourceNotAllowed => PermissionDenied, "SOURCE_NOT_ALLOWED";
    AdminRequired => PermissionDenied, "ADMIN_REQUIRED";
    AdminKeyOnGateway => PermissionDenied, "ADMIN_KEY_ON_GATEWAY";
    PermissionRequired => PermissionDenied, "PERMISSION_REQUIRED";
    TenantInvalid => InvalidArgument, "TENANT_INVALID";
    VendorUnknown => InvalidArgument, "VENDOR_UNKNOWN";
    VendorInvalid => InvalidArgument, "VENDOR_INVALID";
    OperationRequired => InvalidArgument, "OPERATION_REQUIRED";
    OperationInvalid => InvalidArgument, "OPERATION_INVALID";
    MethodInvalid => InvalidArgument, "METHOD_INVALID";
    OperationMethodMismatch => InvalidArgument, "OPERATION_METHOD_MISMATCH";
    PathRequired => InvalidArgument, "PATH_REQUIRED";
    PathTooLong => InvalidArgument, "PATH_TOO_LONG";
    PathNotRelative => InvalidArgument, "PATH_NOT_RELATIVE";
    PathInvalidCharacter => InvalidArgument, "PATH_INVALID_CHARACTER";
    PathInvalidEncoding => InvalidArgument, "PATH_INVALID_ENCODING";
    PathFragment => InvalidArgument, "PATH_FRAGMENT";
    PathTraversal => InvalidArgument, "PATH_TRAVERSAL";
    PathNotNormalised => InvalidArgument, "PATH_NOT_NORMALISED";
    PathEscapesOrigin => InvalidArgument, "PATH_ESCAPES_ORIGIN";
    HeaderNameInvalid => InvalidArgument, "HEADER_NAME_INVALID";
    HeaderValueInvalid => InvalidArgument, "HEADER_VALUE_INVALID";
    HeaderForbidden => InvalidArgument, "HEADER_FORBIDDEN";
    HeadersTooLarge => InvalidArgument, "HEADERS_TOO_LARGE";
    QueryParamForbidden => InvalidArgument, "QUERY_PARAM_FORBIDDEN";
    BodyTooLarge => InvalidArgument, "BODY_TOO_LARGE";
    ReasonRequired => InvalidArgument, "REASON_REQUIRED";
    ReasonInvalid => InvalidArgument, "REASON_INVALID";
    IdempotencyKeyRequired => InvalidArgument, "IDEMPOTENCY_KEY_REQUIRED";
    IdempotencyKeyInvalid => InvalidArgument, "IDEMPOTENCY_KEY_INVALID";
    MessageMalformed => InvalidArgument, "MESSAGE_MALFORMED";
    DeadlineInvalid => InvalidArgument, "DEADLINE_INVALID";
    CompressionUnsupported => Unimplemented, "COMPRESSION_UNSUPPORTED";
    DeadlineExceeded => DeadlineExceeded, "DEADLINE_EXCEEDED";
    VendorTimeout => DeadlineExceeded, "VENDOR_TIMEOUT";
    QuotaExceeded => ResourceExhausted, "QUOTA_EXCEEDED";
    QuotaBackendUnavailable => Unavailable, "QUOTA_BACKEND_UNAVAILABLE";
    Overloaded => ResourceExhausted, "OVERLOADED";
    VendorOverloaded => ResourceExhausted, "VENDOR_OVERLOADED";
    ResponseTooLarge => ResourceExhausted, "RESPONSE_TOO_LARGE";
    ResponseBufferExhausted => ResourceExhausted, "RESPONSE_BUFFER_EXHAUSTED";
    IdempotencyInFlight => Aborted, "IDEMPOTENCY_IN_FLIGHT";
    IdempotencyKeyReused => FailedPrecondition, "IDEMPOTENCY_KEY_REUSED";
    IdempotencyOutcomeUnknown => Aborted, "IDEMPOTENCY_OUTCOME_UNKNOWN";
    IdempotencyOutcomeUnknownFinal => FailedPrecondition, "IDEMPOTENCY_OUTCOME_UNKNOWN";
    IdempotencyRecordUnreadable => Internal, "IDEMPOTENCY_RECORD_UNREADABLE";
    IdempotencyStoreUnavailable => Unavailable, "IDEMPOTENCY_STORE_UNAVAILABLE";
    CredentialNotFound => NotFound, "CREDENTIAL_NOT_FOUND";
    CredentialUnreadable => Internal, "CREDENTIAL_UNREADABLE";
    CredentialStoreUnavailable => Unavailable, "CREDENTIAL_STORE_UNAVAILABLE";
    CredentialReauthRequired => FailedPrecondition, "CREDENTIAL_REAUTH_REQUIRED";
    TokenEndpointUnavailable => Unavailable, "TOKEN_ENDPOINT_UNAVAILABLE";
    TokenRequestRefused => FailedPrecondition, "TOKEN_REQUEST_REFUSED";
    SecretInvalid => InvalidArgument, "SECRET_INVALID";
    AuditUnavailable => Unavailable, "AUDIT_UNAVAILABLE";
    AuditKindUnknown => InvalidArgument, "AUDIT_KIND_UNKNOWN";
    AuditRangeInvalid => InvalidArgument, "AUDIT_RANGE_INVALID";
    AuditLimitInvalid => InvalidArgument, "AUDIT_LIMIT_INVALID";
    AuditLogUnreadable => FailedPrecondition, "AUDIT_LOG_UNREADABLE";
    AuditNotShipped => FailedPrecondition, "AUDIT_NOT_SHIPPED";
    AuditCopyUnavailable => Unavailable, "AUDIT_COPY_UNAVAILABLE";
    AuditCursorInvalid => InvalidArgument, "AUDIT_CURSOR_INVALID";
    StoreUnavailable => Unavailable, "STORE_UNAVAILABLE";
    RotationConflict => Aborted, "ROTATION_CONFLICT";
    RotationInProgress => Aborted, "ROTATION_IN_PROGRESS";
    RotationVerifyFailed => FailedPrecondition, "ROTATION_VERIFY_FAILED";
    VerifyNotConfigured => FailedPrecondition, "VERIFY_NOT_CONFIGURED";
    VendorUnreachable => Unavailable, "VENDOR_UNREACHABLE";
    VendorTlsError => Unavailable, "VENDOR_TLS_ERROR";
    VendorProtocolError => Unavailable, "VENDOR_PROTOCOL_ERROR";
    VendorResponseEncoded => Unavailable, "VENDOR_RESPONSE_ENCODED";
    VendorCircuitOpen => Unavailable, "VENDOR_CIRCUIT_OPEN";
    VendorAddressForbidden => FailedPrecondition, "VENDOR_ADDRESS_FORBIDDEN";
    ApiKeyNotFound => NotFound, "API_KEY_NOT_FOUND";
    ApiKeyNameAmbiguous => FailedPrecondition, "API_KEY_NAME_AMBIGUOUS";
    ApiKeyNotActive => FailedPrecondition, "API_KEY_NOT_ACTIVE";
    ApiKeySelectorInvalid => InvalidArgument, "API_KEY_SELECTOR_INVALID";
    CidrInvalid => InvalidArgument, "CIDR_INVALID";
    ClientIdentityInvalid => InvalidArgument, "CLIENT_IDENTITY_INVALID";
    NameInvalid => InvalidArgument, "NAME_INVALID";
    PermissionInvalid => InvalidArgument, "PERMISSION_INVALID";
    GrantIncomplete => InvalidArgument, "GRANT_INCOMPLETE";
    TtlInvalid => InvalidArgument, "TTL_INVALID";
    PolicyInvalid => InvalidArgument, "POLICY_INVALID";
    PolicyNotFound => NotFound, "POLICY_NOT_FOUND";
    ControlStateStale => Unavailable, "CONTROL_STATE_STALE";
    TenantDisabled => FailedPrecondition, "TENANT_DISABLED";
    CredentialRotationRequired => FailedPrecondition, "CREDENTIAL_ROTATION_REQUIRED";
    TenantOffboarded => FailedPrecondition, "TENANT_OFFBOARDED";
    TenantNotOffboarded => FailedPrecondition, "TENANT_NOT_OFFBOARDED";
    TenantStatusChanged => Aborted, "TENANT_STATUS_CHANGED";
    Internal => Internal, "INTERNAL";
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `ErrorInfo.domain` of every Valet error.
pub const DOMAIN: &str = "valet";

/// A refused or failed call: code, stable reason, safe message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The stable reason; it also says the gRPC code.
    pub reason: Reason,
    /// A message for people; names the field, never a secret.
    pub message: String,
    /// When a retry may succeed (quota refusals).
    pub retry_after: Option<std::time::Duration>,
    /// Extra `ErrorInfo` metadata (the refusing quota policy).
    pub info: Vec<(&'static str, String)>,
}

impl Failure {
    /// A failure for `reason`, with a message for people.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            retry_after: None,
            info: Vec::new(),
        }
    }

    /// The gRPC code, from the reason.
    pub fn code(&self) -> Code {
        self.reason.code()
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
    pub fn invalid(field: &str, reason: Reason, why: impl std::fmt::Display) -> Self {
        debug_assert_eq!(reason.code(), Code::InvalidArgument, "{reason}");
        Self::new(reason, format!("{field}: {why}"))
    }

    /// The status sent to the caller, tagged with the call's request id.
    pub fn into_status(self, request_id: Option<&str>) -> Status {
        let info: std::collections::HashMap<String, String> = self
            .info
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let mut details = ErrorDetails::with_error_info(self.reason.as_str(), DOMAIN, info);
        if let Some(after) = self.retry_after {
            details.set_retry_info(Some(after));
        }
        let mut status = Status::with_error_details(self.reason.code(), self.message, details);
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
            AuthError::Missing => Reason::ApiKeyMissing,
            AuthError::Scheme => Reason::AuthSchemeUnsupported,
            AuthError::Unknown => Reason::ApiKeyUnknown,
            AuthError::Revoked => Reason::ApiKeyRevoked,
            AuthError::Expired => Reason::ApiKeyExpired,
            AuthError::Stale => {
                return Self::new(Reason::ControlStateStale, e.to_string())
                    .with_retry_after(std::time::Duration::from_secs(1));
            }
        };
        Self::new(reason, e.to_string())
    }
}

impl From<SourceNotAllowed> for Failure {
    fn from(e: SourceNotAllowed) -> Self {
        Self::new(
            Reason::SourceNotAllowed,
            format!("{e}: it is bound to networks (allow_cidrs) that do not include it"),
        )
    }
}

impl From<Denied> for Failure {
    fn from(e: Denied) -> Self {
        let (reason, what) = match e {
            Denied::Tenant => (Reason::TenantNotAllowed, "this tenant"),
            Denied::Vendor => (Reason::VendorNotAllowed, "this vendor"),
            Denied::Operation => (Reason::OperationNotAllowed, "this operation"),
            Denied::Admin => (Reason::AdminRequired, "the Admin service"),
            Denied::AdminKey => (
                Reason::AdminKeyOnGateway,
                "the Gateway: it is an admin key; create a Gateway key with `valet admin apikey create --tenant …`",
            ),
            Denied::Permission(valet_access::Permission::QuotaAdmin) => (
                Reason::PermissionRequired,
                "quota administration (needs the quota_admin permission)",
            ),
            Denied::Permission(valet_access::Permission::QuotaView) => (
                Reason::PermissionRequired,
                "quota viewing (needs the quota_view permission)",
            ),
            Denied::Permission(valet_access::Permission::AuditView) => (
                Reason::PermissionRequired,
                "the audit log (needs the audit_view permission, which admin keys do not have: create a key with `valet admin apikey create --permission audit-view`)",
            ),
        };
        Self::new(reason, format!("this API key may not use {what}"))
    }
}

impl From<PathError> for Failure {
    fn from(e: PathError) -> Self {
        let reason = match e {
            PathError::Empty => Reason::PathRequired,
            PathError::TooLong => Reason::PathTooLong,
            PathError::NotRelative => Reason::PathNotRelative,
            PathError::BadCharacter | PathError::EncodedCharacter => Reason::PathInvalidCharacter,
            PathError::BadPercentEncoding => Reason::PathInvalidEncoding,
            PathError::Fragment => Reason::PathFragment,
            PathError::Traversal => Reason::PathTraversal,
            PathError::NotNormalised => Reason::PathNotNormalised,
        };
        Self::new(reason, e.to_string())
    }
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Self {
        let message = match &e {
            RequestError::Method | RequestError::MethodNotRead(_) => format!("method: {e}"),
            _ => e.to_string(),
        };
        let reason = match &e {
            RequestError::Method => Reason::MethodInvalid,
            RequestError::MethodNotRead(_) => Reason::OperationMethodMismatch,
            RequestError::HeaderName(_) => Reason::HeaderNameInvalid,
            RequestError::HeaderValue { .. } => Reason::HeaderValueInvalid,
            RequestError::HeaderForbidden { .. } => Reason::HeaderForbidden,
            RequestError::HeadersTooLarge { .. } => Reason::HeadersTooLarge,
            RequestError::BodyTooLarge(_) => Reason::BodyTooLarge,
            RequestError::QueryParamForbidden(_) => Reason::QueryParamForbidden,
        };
        Self::new(reason, message)
    }
}

impl From<valet_oauth::TokenError> for Failure {
    fn from(e: valet_oauth::TokenError) -> Self {
        use valet_oauth::TokenError;
        match e {
            TokenError::ReauthRequired {
                tenant,
                vendor,
                error,
            } => Self::new(
                Reason::CredentialReauthRequired,
                format!(
                    "the OAuth provider refused the grant stored for tenant '{tenant}' and vendor '{vendor}' ({error}); store new grant material (valet admin credential put --oauth-client-id ...)"
                ),
            ),
            TokenError::EndpointUnavailable { vendor, cause } => Self::new(
                Reason::TokenEndpointUnavailable,
                format!(
                    "vendor '{vendor}' token endpoint is unavailable ({cause}) and no unexpired access token is held"
                ),
            ),
            TokenError::Refused { vendor, error } => Self::new(
                Reason::TokenRequestRefused,
                format!(
                    "vendor '{vendor}' token endpoint refused the token request ({error}); check the vendor's scopes and grant in the config"
                ),
            ),
            TokenError::Material(why) => Self::new(
                Reason::CredentialUnreadable,
                format!("the stored OAuth grant material {why}"),
            ),
            TokenError::Store(cause) => {
                tracing::error!(%cause, "credential store failed during an OAuth token fetch");
                Self::new(
                    Reason::CredentialStoreUnavailable,
                    "the credential store could not be read or written for an OAuth token fetch",
                )
            }
            TokenError::Audit(cause) => {
                tracing::error!(%cause, "audit log unavailable; the OAuth token is not used");
                Self::new(
                    Reason::AuditUnavailable,
                    "the audit log cannot be written, so no credential may be used",
                )
            }
        }
    }
}

impl From<VaultError> for Failure {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound(key) => Self::new(
                Reason::CredentialNotFound,
                format!(
                    "no credential stored for tenant '{}' and vendor '{}'",
                    key.tenant, key.vendor
                ),
            ),
            VaultError::InvalidSecret(why) => Self::invalid("secret", Reason::SecretInvalid, why),
            VaultError::AuditUnavailable(cause) => {
                tracing::error!(%cause, "audit log unavailable; refusing credential use");
                Self::new(
                    Reason::AuditUnavailable,
                    "the audit log cannot be written, so no credential may be used",
                )
            }
            VaultError::Seal { key, source } => {
                tracing::error!(credential = %key, error = %source, "stored credential does not open");
                Self::new(
                    Reason::CredentialUnreadable,
                    format!(
                        "the stored credential for tenant '{}' and vendor '{}' cannot be decrypted with the loaded master key",
                        key.tenant, key.vendor
                    ),
                )
            }
            VaultError::Store(valet_credentials::StoreError::Unavailable(cause)) => {
                tracing::error!(%cause, "secret store unavailable and no fresh-enough cached credential");
                Self::new(
                    Reason::CredentialStoreUnavailable,
                    "the credential store is unavailable and no cached credential is recent enough (max_stale) to use",
                )
            }
            VaultError::Store(valet_credentials::StoreError::Corrupt { context }) => {
                tracing::error!(%context, "stored credential is not a valid sealed record");
                Self::new(
                    Reason::CredentialUnreadable,
                    "the stored credential is not a valid Valet sealed record; put or rotate it again",
                )
            }
            VaultError::Store(valet_credentials::StoreError::NoPending(key)) => Self::new(
                Reason::RotationConflict,
                format!(
                    "the pending credential for {key} is gone; another rotation may have run at the same time"
                ),
            ),
            VaultError::Store(cause) => {
                tracing::error!(error = %cause, "credential store failed");
                Self::new(Reason::StoreUnavailable, "the credential store is unavailable")
            }
        }
    }
}

impl From<KeyStoreError> for Failure {
    fn from(e: KeyStoreError) -> Self {
        match e {
            KeyStoreError::NotFound(id) => {
                Self::new(Reason::ApiKeyNotFound, format!("no API key with id '{id}'"))
            }
            e @ KeyStoreError::NameNotFound(_) => Self::new(Reason::ApiKeyNotFound, e.to_string()),
            e @ KeyStoreError::NameAmbiguous { .. } => Self::new(Reason::ApiKeyNameAmbiguous, e.to_string()),
            e @ KeyStoreError::NotActive(_) => Self::new(Reason::ApiKeyNotActive, e.to_string()),
            e @ KeyStoreError::Identity(_) => Self::new(Reason::ClientIdentityInvalid, e.to_string()),
            e @ KeyStoreError::Changed(_) => Self::new(Reason::TenantStatusChanged, e.to_string()),
            other => {
                tracing::error!(error = %other, "control store failed");
                Self::new(
                    Reason::StoreUnavailable,
                    "the access control store is unavailable; the change may not have been applied: list, then retry",
                )
            }
        }
    }
}

impl From<EgressError> for Failure {
    fn from(e: EgressError) -> Self {
        let reason = match &e {
            EgressError::Unreachable(_) => Reason::VendorUnreachable,
            EgressError::Tls(_) => Reason::VendorTlsError,
            EgressError::VendorTimeout { .. } => Reason::VendorTimeout,
            EgressError::Deadline(_) => Reason::DeadlineExceeded,
            EgressError::Protocol(_) => Reason::VendorProtocolError,
            EgressError::ResponseTooLarge { .. } => Reason::ResponseTooLarge,
            EgressError::ResponseEncoded(_) => Reason::VendorResponseEncoded,
            EgressError::OriginMismatch(_) => Reason::PathEscapesOrigin,
            EgressError::CircuitOpen { .. } => Reason::VendorCircuitOpen,
            EgressError::AddressForbidden { .. } => Reason::VendorAddressForbidden,
            EgressError::Overloaded(_) => Reason::VendorOverloaded,
            EgressError::AnswersOverBudget(_) => Reason::ResponseBufferExhausted,
        };
        let retry_after = match &e {
            EgressError::CircuitOpen { retry_after, .. } => Some(*retry_after),
            EgressError::Overloaded(_) | EgressError::AnswersOverBudget(_) => {
                Some(std::time::Duration::from_secs(1))
            }
            _ => None,
        };
        let failure = Self::new(reason, e.to_string());
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
            Reason::AuditUnavailable,
            "the change was made but could not be written to the audit log",
        )
    }
}

impl From<valet_quota::BackendUnavailable> for Failure {
    fn from(e: valet_quota::BackendUnavailable) -> Self {
        Self::new(Reason::QuotaBackendUnavailable,
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
            GrantError::Name(_) | GrantError::NameTooLong => Reason::NameInvalid,
            GrantError::Tenant { .. } => Reason::TenantInvalid,
            GrantError::VendorUnknown(_) => Reason::VendorUnknown,
            GrantError::Operation => Reason::OperationInvalid,
            GrantError::Permission => Reason::PermissionInvalid,
            GrantError::Incomplete => Reason::GrantIncomplete,
            GrantError::Ttl { .. } => Reason::TtlInvalid,
            GrantError::Cidr(_) | GrantError::TooManyCidrs => Reason::CidrInvalid,
        };
        Self::invalid(e.field(), reason, e)
    }
}

impl From<valet_credentials::RotationError<valet_audit::AuditError>> for Failure {
    fn from(e: valet_credentials::RotationError<valet_audit::AuditError>) -> Self {
        use valet_credentials::RotationError;
        match e {
            RotationError::InProgress(_) => Self::new(Reason::RotationInProgress, e.to_string()),
            RotationError::Vault(e) => e.into(),
            RotationError::Journal(e) => e.into(),
            RotationError::Refused(_) => Self::new(Reason::RotationVerifyFailed, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codec in `valet-proto` builds its own status (it cannot depend
    /// on the gateway): with this reason and domain.
    #[test]
    fn the_codecs_malformed_status_is_this_reason() {
        assert_eq!(
            valet_proto::codec::MALFORMED_REASON,
            Reason::MessageMalformed.as_str()
        );
        assert_eq!(valet_proto::codec::DOMAIN, DOMAIN);
        let status = valet_proto::codec::malformed("x".into());
        assert_eq!(status.code(), Reason::MessageMalformed.code());
    }

    /// Every wire string, pinned: renaming a reason must change this list.
    #[test]
    fn wire_strings_are_stable() {
        let wire: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            wire.join(" "),
            "OK CANCELLED API_KEY_MISSING AUTH_SCHEME_UNSUPPORTED API_KEY_UNKNOWN API_KEY_REVOKED API_KEY_EXPIRED AUTHORIZATION_AMBIGUOUS TENANT_NOT_ALLOWED VENDOR_NOT_ALLOWED OPERATION_NOT_ALLOWED SOURCE_NOT_ALLOWED ADMIN_REQUIRED ADMIN_KEY_ON_GATEWAY PERMISSION_REQUIRED TENANT_INVALID VENDOR_UNKNOWN VENDOR_INVALID OPERATION_REQUIRED OPERATION_INVALID METHOD_INVALID OPERATION_METHOD_MISMATCH PATH_REQUIRED PATH_TOO_LONG PATH_NOT_RELATIVE PATH_INVALID_CHARACTER PATH_INVALID_ENCODING PATH_FRAGMENT PATH_TRAVERSAL PATH_NOT_NORMALISED PATH_ESCAPES_ORIGIN HEADER_NAME_INVALID HEADER_VALUE_INVALID HEADER_FORBIDDEN HEADERS_TOO_LARGE QUERY_PARAM_FORBIDDEN BODY_TOO_LARGE REASON_REQUIRED REASON_INVALID IDEMPOTENCY_KEY_REQUIRED IDEMPOTENCY_KEY_INVALID MESSAGE_MALFORMED DEADLINE_INVALID COMPRESSION_UNSUPPORTED DEADLINE_EXCEEDED VENDOR_TIMEOUT QUOTA_EXCEEDED QUOTA_BACKEND_UNAVAILABLE OVERLOADED VENDOR_OVERLOADED RESPONSE_TOO_LARGE RESPONSE_BUFFER_EXHAUSTED IDEMPOTENCY_IN_FLIGHT IDEMPOTENCY_KEY_REUSED IDEMPOTENCY_OUTCOME_UNKNOWN IDEMPOTENCY_OUTCOME_UNKNOWN IDEMPOTENCY_RECORD_UNREADABLE IDEMPOTENCY_STORE_UNAVAILABLE CREDENTIAL_NOT_FOUND CREDENTIAL_UNREADABLE CREDENTIAL_STORE_UNAVAILABLE CREDENTIAL_REAUTH_REQUIRED TOKEN_ENDPOINT_UNAVAILABLE TOKEN_REQUEST_REFUSED SECRET_INVALID AUDIT_UNAVAILABLE AUDIT_KIND_UNKNOWN AUDIT_RANGE_INVALID AUDIT_LIMIT_INVALID AUDIT_LOG_UNREADABLE AUDIT_NOT_SHIPPED AUDIT_COPY_UNAVAILABLE AUDIT_CURSOR_INVALID STORE_UNAVAILABLE ROTATION_CONFLICT ROTATION_IN_PROGRESS ROTATION_VERIFY_FAILED VERIFY_NOT_CONFIGURED VENDOR_UNREACHABLE VENDOR_TLS_ERROR VENDOR_PROTOCOL_ERROR VENDOR_RESPONSE_ENCODED VENDOR_CIRCUIT_OPEN VENDOR_ADDRESS_FORBIDDEN API_KEY_NOT_FOUND API_KEY_NAME_AMBIGUOUS API_KEY_NOT_ACTIVE API_KEY_SELECTOR_INVALID CIDR_INVALID CLIENT_IDENTITY_INVALID NAME_INVALID PERMISSION_INVALID GRANT_INCOMPLETE TTL_INVALID POLICY_INVALID POLICY_NOT_FOUND CONTROL_STATE_STALE TENANT_DISABLED CREDENTIAL_ROTATION_REQUIRED TENANT_OFFBOARDED TENANT_NOT_OFFBOARDED TENANT_STATUS_CHANGED INTERNAL"
        );
    }

    /// A reason's code is the one its failures carry on the wire.
    #[test]
    fn statuses_carry_the_reason_and_its_code() {
        for &reason in Reason::ALL {
            let status = Failure::new(reason, "m").into_status(Some("req_1"));
            assert_eq!(status.code(), reason.code(), "{reason}");
            let details = tonic_types::StatusExt::get_details_error_info(&status);
            assert_eq!(details.map(|i| i.reason), Some(reason.as_str().to_owned()));
        }
    }
}
