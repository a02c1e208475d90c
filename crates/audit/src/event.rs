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
        /// Expiry, Unix milliseconds, if any.
        expires_ms: Option<u64>,
    },
    /// An API key was revoked.
    ApiKeyRevoke {
        /// The key's id.
        key_id: String,
        /// Its name.
        name: String,
    },
}
