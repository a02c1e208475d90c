//! What the audit log records. Fields name credentials by fingerprint only.

use serde::Serialize;

/// One auditable action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A credential was decrypted for an outbound call.
    CredentialLease {
        /// Owning tenant.
        tenant: String,
        /// Vendor it is sent to.
        vendor: String,
        /// Fingerprint of the credential.
        fingerprint: String,
        /// The caller's stated reason.
        reason: String,
        /// The call's request id.
        request_id: String,
        /// For an OAuth vendor, the scope set the call's access token is
        /// for (space-separated).
        #[serde(skip_serializing_if = "Option::is_none")]
        scopes: Option<String>,
        /// The caller's source address (the TCP peer, or the forwarded
        /// client behind a trusted proxy), when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// A credential was stored or replaced.
    CredentialPut {
        /// Owning tenant.
        tenant: String,
        /// Vendor.
        vendor: String,
        /// Fingerprint of the new credential.
        fingerprint: String,
        /// Fingerprint of the credential it replaced, if any.
        replaced: Option<String>,
    },
    /// A step of a verified rotation: `staged` (pending stored), then
    /// `committed` (verify answered 2xx, pending made current) or `aborted`
    /// (pending removed, current kept).
    CredentialRotate {
        /// Owning tenant.
        tenant: String,
        /// Vendor.
        vendor: String,
        /// `staged`, `committed` or `aborted`.
        step: String,
        /// Fingerprint of the current credential before the rotation.
        old_fingerprint: String,
        /// Fingerprint of the new credential.
        new_fingerprint: String,
        /// The vendor's status for the verify request, once made.
        vendor_status: Option<u16>,
        /// Why it was aborted, if it was.
        error: Option<String>,
    },
    /// A vendor answered 401 with the cached credential, so the store was
    /// checked for a newer one (and the call retried once if there was).
    CredentialRefresh {
        /// Owning tenant.
        tenant: String,
        /// Vendor.
        vendor: String,
        /// Whether the store held a different current credential.
        changed: bool,
        /// The call's request id.
        request_id: String,
    },
    /// An OAuth vendor's token endpoint was asked for an access token with
    /// the tenant's grant material (seed 002: provider, old token expiry,
    /// new token issued). Tokens by fingerprint only.
    OauthToken {
        /// Owning tenant.
        tenant: String,
        /// The OAuth vendor.
        vendor: String,
        /// `client_credentials` or `refresh_token`.
        grant: String,
        /// The scope set asked for, space-separated.
        scopes: String,
        /// The token replaced, if one was held.
        old_fingerprint: Option<String>,
        /// When it expires(d), Unix milliseconds.
        old_expires_ms: Option<u64>,
        /// The token issued, on success.
        new_fingerprint: Option<String>,
        /// When it expires, Unix milliseconds.
        new_expires_ms: Option<u64>,
        /// Whether the provider rotated the refresh token.
        rotated: bool,
        /// `issued`, `reauth_required`, `refused`, `busy` or `unavailable`.
        outcome: String,
        /// The replica that asked (host name and process id).
        replica: String,
    },
    /// An OAuth vendor's tokens for a tenant were revoked at the provider
    /// (RFC 7009): at offboarding, or when it was disabled as compromised.
    OauthRevoke {
        /// Owning tenant.
        tenant: String,
        /// The OAuth vendor.
        vendor: String,
        /// Each token as `kind:fingerprint:outcome` (`access_token` or
        /// `refresh_token`; `revoked`, `refused`, `busy` or `unavailable`).
        tokens: Vec<String>,
    },
    /// A quota policy was set or replaced.
    QuotaPolicyPut {
        /// The policy's id.
        policy_id: String,
        /// The effective policy before, if any.
        before: Option<serde_json::Value>,
        /// The policy after.
        after: serde_json::Value,
    },
    /// A run-time quota policy was removed.
    QuotaPolicyDelete {
        /// The policy's id.
        policy_id: String,
        /// The policy removed.
        before: serde_json::Value,
    },
    /// A tenant's idempotency records (stored responses) were deleted.
    IdempotencyPurge {
        /// The tenant.
        tenant: String,
        /// Records deleted.
        purged: u64,
    },
    /// A credential was deleted.
    CredentialDelete {
        /// Owning tenant.
        tenant: String,
        /// Vendor.
        vendor: String,
        /// Fingerprint of the deleted credential.
        fingerprint: String,
    },
    /// An API key was created.
    ApiKeyCreate {
        /// The key's id.
        key_id: String,
        /// Its name.
        name: String,
        /// Tenants granted.
        tenants: Vec<String>,
        /// Vendors granted.
        vendors: Vec<String>,
        /// Operations granted.
        operations: Vec<String>,
        /// Whether it is an admin key.
        admin: bool,
        /// Extra permissions granted.
        permissions: Vec<String>,
        /// Expiry, Unix milliseconds, if any.
        expires_ms: Option<u64>,
        /// The client certificate identity bound to it, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_identity: Option<String>,
        /// The source networks it is bound to, if any.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        allow_cidrs: Vec<String>,
    },
    /// An API key was revoked.
    ApiKeyRevoke {
        /// The key's id.
        key_id: String,
        /// Its name.
        name: String,
    },
    /// A tenant, or one integration, was disabled (the kill switch).
    TenantDisable {
        /// The tenant.
        tenant: String,
        /// The one vendor, or `None` for the whole tenant.
        vendor: Option<String>,
        /// Why, as the admin gave it.
        reason: String,
        /// Disabled as compromised.
        compromised: bool,
        /// API keys revoked with it.
        revoked_key_ids: Vec<String>,
        /// Credentials marked compromised, `vendor:fingerprint`.
        compromised_credentials: Vec<String>,
    },
    /// A tenant was offboarded.
    TenantOffboard {
        /// The tenant.
        tenant: String,
        /// Why, as the admin gave it.
        reason: String,
        /// What was deleted, one entry each.
        deleted: Vec<String>,
        /// What is retained until `final_deletion_ms`.
        retained: Vec<String>,
        /// When the sweeper removes what is retained, Unix milliseconds.
        final_deletion_ms: u64,
    },
    /// An offboarding was undone within its retention.
    TenantRestore {
        /// The tenant.
        tenant: String,
    },
    /// The sweeper removed what an offboarding retained.
    TenantSweep {
        /// The tenant.
        tenant: String,
        /// What was removed.
        deleted: Vec<String>,
    },
    /// A disable was lifted.
    TenantEnable {
        /// The tenant.
        tenant: String,
        /// The one vendor, or `None` for the whole tenant.
        vendor: Option<String>,
    },
    /// An authenticated caller was refused: its key used beyond its grant,
    /// from outside its source networks, or for an Admin RPC it lacks the
    /// permission for. (A call with no valid key is not an entry: it names
    /// no one, and is counted in `valet_calls_total`.)
    AccessDenied {
        /// The tenant asked for, on a Gateway call.
        #[serde(skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        /// The vendor asked for, on a Gateway call.
        #[serde(skip_serializing_if = "Option::is_none")]
        vendor: Option<String>,
        /// What was asked: `read` or `write` (a Gateway call), `admin` or a
        /// permission (an Admin RPC), or `use` (the key at all).
        asked: String,
        /// The stable reason it was refused with (`TENANT_NOT_ALLOWED`,
        /// `SOURCE_NOT_ALLOWED`, `PERMISSION_REQUIRED`, …).
        refused: String,
        /// The caller's source address, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// The call's request id, on a Gateway call.
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// Entries past their class's retention were removed from sealed
    /// segments ([`crate::retention`]). Lifecycle class: kept for good, so
    /// `verify` can tell the gaps from tampering.
    AuditExpired {
        /// Each run of removed entries: its first and last seq, and the
        /// last one's hash (what the next entry kept holds as `prev`).
        ranges: Vec<ExpiredRange>,
        /// Segments deleted (every entry removed) or compacted.
        segments: Vec<String>,
    },
    /// The audit log was read (`Admin.QueryAudit`, `SummarizeAudit`):
    /// reading it is itself on the record.
    AuditQuery {
        /// `query` (entries) or `summary` (counts).
        view: String,
        /// The filter as given (JSON object; unset fields left out).
        filter: serde_json::Value,
    },
    /// An API key was rotated: a successor with the same name, grant and
    /// source networks was created, and the old key set to expire at the
    /// end of the overlap. One event, so the log never shows half a rotation.
    ApiKeyRotate {
        /// The old key's id.
        key_id: String,
        /// The successor's id.
        new_key_id: String,
        /// Their name.
        name: String,
        /// When the old key now expires, Unix milliseconds.
        old_expires_ms: Option<u64>,
        /// When the successor expires, if it does.
        new_expires_ms: Option<u64>,
    },
}

/// A run of entries removed by retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ExpiredRange {
    /// The first entry removed.
    pub first_seq: u64,
    /// The last entry removed.
    pub last_seq: u64,
    /// The last entry's hash.
    pub last_hash: String,
}

/// An entry's retention class (`[audit] retention_days`): how long it is
/// kept in sealed segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Security events (changes to keys and credentials, refusals, kill
    /// switch, reads of the log): default 400 days.
    Security,
    /// Per-record access (credential leases, OAuth token requests):
    /// default 90 days.
    Access,
    /// Operational changes (quota policies, idempotency purges): default
    /// 90 days.
    Operational,
    /// Onboarding, offboarding and the log's own expiry: kept for good.
    Lifecycle,
}

impl Class {
    /// The class of an entry of kind `kind` (an unknown kind is kept as a
    /// security event).
    pub fn of(kind: &str) -> Class {
        match kind {
            "credential_lease" | "oauth_token" => Class::Access,
            "quota_policy_put" | "quota_policy_delete" | "idempotency_purge" => Class::Operational,
            "tenant_offboard" | "tenant_restore" | "tenant_sweep" | "audit_expired" => Class::Lifecycle,
            _ => Class::Security,
        }
    }
}

impl Event {
    /// Every event kind, as [`Event::kind`] names them (what a query may
    /// filter by).
    pub const KINDS: &[&str] = &[
        "credential_lease",
        "credential_put",
        "credential_rotate",
        "credential_refresh",
        "oauth_token",
        "oauth_revoke",
        "quota_policy_put",
        "quota_policy_delete",
        "idempotency_purge",
        "credential_delete",
        "api_key_create",
        "api_key_revoke",
        "tenant_disable",
        "tenant_enable",
        "tenant_offboard",
        "tenant_restore",
        "tenant_sweep",
        "api_key_rotate",
        "access_denied",
        "audit_expired",
        "audit_query",
    ];

    /// The event's name as written in the log (`credential_lease`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::CredentialLease { .. } => "credential_lease",
            Event::CredentialPut { .. } => "credential_put",
            Event::CredentialRotate { .. } => "credential_rotate",
            Event::CredentialRefresh { .. } => "credential_refresh",
            Event::OauthToken { .. } => "oauth_token",
            Event::OauthRevoke { .. } => "oauth_revoke",
            Event::QuotaPolicyPut { .. } => "quota_policy_put",
            Event::QuotaPolicyDelete { .. } => "quota_policy_delete",
            Event::IdempotencyPurge { .. } => "idempotency_purge",
            Event::CredentialDelete { .. } => "credential_delete",
            Event::ApiKeyCreate { .. } => "api_key_create",
            Event::ApiKeyRevoke { .. } => "api_key_revoke",
            Event::TenantDisable { .. } => "tenant_disable",
            Event::TenantEnable { .. } => "tenant_enable",
            Event::TenantOffboard { .. } => "tenant_offboard",
            Event::TenantRestore { .. } => "tenant_restore",
            Event::TenantSweep { .. } => "tenant_sweep",
            Event::ApiKeyRotate { .. } => "api_key_rotate",
            Event::AccessDenied { .. } => "access_denied",
            Event::AuditExpired { .. } => "audit_expired",
            Event::AuditQuery { .. } => "audit_query",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_matches_the_serialised_tag() {
        let event = Event::IdempotencyPurge {
            tenant: "acme".into(),
            purged: 0,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], event.kind());
    }

    #[test]
    fn every_kind_is_listed_once() {
        // `kind` is an exhaustive match: each arm's name must be in KINDS.
        let names: std::collections::BTreeSet<_> = Event::KINDS.iter().collect();
        assert_eq!(names.len(), Event::KINDS.len());
        let arms = include_str!("event.rs")
            .lines()
            .filter(|l| l.trim_start().starts_with("Event::") && l.contains("=> \""))
            .count();
        assert_eq!(arms, Event::KINDS.len(), "a kind is missing from KINDS");
    }
}
