//! Where sealed credentials are kept: the [`SecretStore`] trait.
//!
//! A store holds only [`StoredCredential`]s — envelopes plus public metadata —
//! never plaintext. The embedded default is [`crate::LocalStore`]; a fleet
//! backend (AWS Secrets Manager) implements the same trait.

use crate::envelope::Envelope;
use crate::fingerprint::Fingerprint;
use crate::key::CredentialKey;
use std::future::Future;
use std::pin::Pin;

/// A sealed credential and what may be shown about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredCredential {
    /// The sealed secret.
    pub envelope: Envelope,
    /// Keyed hash of the secret, for logs and listings.
    pub fingerprint: Fingerprint,
    /// Last 4 characters of long secrets, for display; empty for short ones.
    pub last4: String,
    /// First stored, Unix milliseconds.
    pub created_ms: u64,
    /// Last replaced, Unix milliseconds.
    pub updated_ms: u64,
}

/// What may be shown about a credential: everything but the sealed secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialMeta {
    /// Keyed hash of the secret.
    pub fingerprint: Fingerprint,
    /// Last 4 characters of long secrets; empty for short ones.
    pub last4: String,
    /// First stored, Unix milliseconds.
    pub created_ms: u64,
    /// Last replaced, Unix milliseconds.
    pub updated_ms: u64,
}

impl StoredCredential {
    /// The record's metadata.
    pub fn meta(&self) -> CredentialMeta {
        CredentialMeta {
            fingerprint: self.fingerprint.clone(),
            last4: self.last4.clone(),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        }
    }
}

/// A store failure. Messages name the credential, never its value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the backing storage failed.
    #[error("credential store: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A stored record could not be parsed.
    #[error("credential store: {context} is corrupt")]
    Corrupt {
        /// Which record.
        context: String,
    },
    /// The backend cannot be reached and nothing fresh enough is cached.
    #[error("credential store unavailable: {0}")]
    Unavailable(String),
    /// A rotation step found no pending credential.
    #[error("no pending credential for {0}")]
    NoPending(String),
}

/// A boxed future, so the trait stays object-safe for backends chosen at run
/// time.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Keeps sealed credentials. Implementations must make `put` and `delete`
/// durable before they return, and `get` cheap: it is on every call's path.
pub trait SecretStore: Send + Sync + 'static {
    /// The sealed credential for `key`, if any.
    fn get<'a>(&'a self, key: &'a CredentialKey) -> StoreFuture<'a, Option<StoredCredential>>;
    /// Checks the backend answers (for readiness). A local store always does.
    fn probe(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    /// When a remote backend last answered any request (a probe, a read, a
    /// write) with anything but a server error: no cached record can have
    /// been confirmed later. `None` if it never has, or for a local store.
    fn last_answered(&self) -> Option<std::time::Instant> {
        None
    }
    /// The cache in front of a remote backend; `None` for a local store,
    /// which has none.
    fn cache_stats(&self) -> Option<crate::cache::CacheStats> {
        None
    }
    /// Stores or replaces the credential for `key`.
    fn put<'a>(&'a self, key: &'a CredentialKey, cred: StoredCredential) -> StoreFuture<'a, ()>;
    /// Removes the credential for `key`; false if there was none.
    fn delete<'a>(&'a self, key: &'a CredentialKey) -> StoreFuture<'a, bool>;
    /// Metadata of every stored credential of `tenant` (all tenants when
    /// `None`), sorted. No secret, sealed or not: a listing never needs one.
    fn list<'a>(&'a self, tenant: Option<&'a str>) -> StoreFuture<'a, Vec<(CredentialKey, CredentialMeta)>>;

    /// Checks now, bypassing any cache TTL, whether the current credential
    /// changed outside this process; true if it did (the new one is then
    /// what `get` returns).
    fn refresh<'a>(&'a self, key: &'a CredentialKey) -> StoreFuture<'a, bool>;

    /// Stores `cred` beside the current credential, not yet in use
    /// (Secrets Manager: stage AWSPENDING).
    fn put_pending<'a>(&'a self, key: &'a CredentialKey, cred: StoredCredential) -> StoreFuture<'a, ()>;

    /// Makes the pending credential current (the old one becomes previous)
    /// and returns it — only if it is the one with fingerprint `expected`
    /// (the one that was verified); otherwise [`StoreError::NoPending`].
    fn promote_pending<'a>(
        &'a self,
        key: &'a CredentialKey,
        expected: &'a crate::Fingerprint,
    ) -> StoreFuture<'a, StoredCredential>;

    /// Removes the pending credential, leaving the current one in use.
    fn discard_pending<'a>(&'a self, key: &'a CredentialKey) -> StoreFuture<'a, ()>;
}
