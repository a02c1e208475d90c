//! The vault: seals credentials on the way in, and leases them out — audited,
//! for one call — on the way out.
//!
//! `grep -rn '\.lease(' src crates` finds every place a credential is
//! decrypted: [`Vault::lease`] is the only function that opens an envelope
//! for use.

use crate::envelope::{self, SealError};
use crate::fingerprint::Fingerprint;
use crate::key::CredentialKey;
use crate::master_key::MasterKey;
use crate::secret::Secret;
use crate::store::{CredentialMeta, SecretStore, StoreError, StoredCredential};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest credential accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 8192;

/// What can go wrong putting or leasing a credential. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// No credential is stored for this tenant and vendor.
    #[error("no credential for {0}")]
    NotFound(CredentialKey),
    /// The secret offered to `put` is not acceptable.
    #[error("secret {0}")]
    InvalidSecret(&'static str),
    /// The lease could not be audited, so it was refused.
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),
    /// The stored envelope did not open.
    #[error("credential {key}: {source}")]
    Seal {
        /// Which credential.
        key: CredentialKey,
        /// Why it did not open.
        source: SealError,
    },
    /// The backing store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who leases a credential and why; written to the audit log before the
/// envelope is opened.
#[derive(Debug, Clone, Copy)]
pub struct LeaseEvent<'a> {
    /// Which credential.
    pub key: &'a CredentialKey,
    /// Its fingerprint (never the value).
    pub fingerprint: &'a Fingerprint,
    /// The caller's identity (API key id and name).
    pub caller: &'a str,
    /// The caller's stated reason.
    pub reason: &'a str,
    /// The call's request id, to join the audit log with logs and traces.
    pub request_id: &'a str,
}

/// Records credential leases durably. If recording fails the lease is refused:
/// credential use is never unaudited.
pub trait LeaseAudit: Send + Sync {
    /// Records `event`; resolves once the record is durable.
    fn record_lease(&self, event: &LeaseEvent<'_>) -> impl Future<Output = Result<(), String>> + Send;
}

/// A credential in plaintext, for one outbound call. Zeroed when dropped.
pub struct Lease {
    secret: Secret,
    fingerprint: Fingerprint,
}

impl Lease {
    /// The plaintext credential; use it only to build the outbound request.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The credential's fingerprint.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("fingerprint", &self.fingerprint)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// Seals, stores and leases credentials.
#[derive(Clone)]
pub struct Vault {
    master: Arc<MasterKey>,
    store: Arc<dyn SecretStore>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("master_key_id", &self.master.id())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A vault over `store`, sealing under `master`.
    pub fn new(master: Arc<MasterKey>, store: Arc<dyn SecretStore>) -> Self {
        Self { master, store }
    }

    /// The fingerprint `secret` would have here.
    pub fn fingerprint(&self, secret: &Secret) -> Fingerprint {
        Fingerprint::of(&self.master, secret)
    }

    /// Seals and stores `secret` for `key`, replacing any previous one.
    /// Returns the stored record and the fingerprint of the one it replaced.
    pub async fn put(
        &self,
        key: &CredentialKey,
        secret: &Secret,
    ) -> Result<(StoredCredential, Option<Fingerprint>), VaultError> {
        check_secret(secret)?;
        let now = now_ms();
        let old = self.store.get(key).await?;
        let created_ms = old.as_ref().map_or(now, |o| o.created_ms);
        let cred = StoredCredential {
            envelope: envelope::seal(&self.master, key, secret),
            fingerprint: self.fingerprint(secret),
            last4: secret.last4(),
            created_ms,
            updated_ms: now,
        };
        self.store.put(key, cred.clone()).await?;
        Ok((cred, old.map(|o| o.fingerprint)))
    }

    /// Deletes the credential for `key`, returning what was deleted.
    pub async fn delete(&self, key: &CredentialKey) -> Result<StoredCredential, VaultError> {
        let old = self
            .store
            .get(key)
            .await?
            .ok_or_else(|| VaultError::NotFound(key.clone()))?;
        if !self.store.delete(key).await? {
            return Err(VaultError::NotFound(key.clone()));
        }
        Ok(old)
    }

    /// Metadata of stored credentials, optionally of one tenant.
    pub async fn list(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<(CredentialKey, CredentialMeta)>, VaultError> {
        Ok(self.store.list(tenant).await?)
    }

    /// Seals tenant data (a stored vendor response) under the tenant's key,
    /// as JSON text; `label` binds it to its use.
    pub fn seal_data(&self, tenant: &str, label: &str, data: &[u8]) -> Vec<u8> {
        let env = envelope::seal_data(&self.master, tenant, label, data);
        serde_json::to_vec(&env).expect("an envelope serialises")
    }

    /// Opens what [`Vault::seal_data`] sealed for the same tenant and label.
    pub fn open_data(&self, tenant: &str, label: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let env: envelope::Envelope = serde_json::from_slice(sealed).map_err(|_| SealError::Corrupt)?;
        envelope::open_data(&self.master, tenant, label, &env)
    }

    /// Checks the backend now for a credential changed outside Valet (after
    /// a vendor 401); true if the current credential differs from `used`, the
    /// one the failed call carried.
    pub async fn refresh(&self, key: &CredentialKey, used: &Fingerprint) -> Result<bool, VaultError> {
        self.store.refresh(key).await?;
        let current = self.store.get(key).await?;
        Ok(current.is_some_and(|c| c.fingerprint != *used))
    }

    /// Rotation, step 1: seals `secret` into the pending slot beside the
    /// current credential, which stays in use. Returns the pending record and
    /// the current one's fingerprint.
    pub async fn stage(
        &self,
        key: &CredentialKey,
        secret: &Secret,
    ) -> Result<(StoredCredential, Fingerprint), VaultError> {
        check_secret(secret)?;
        let current = self
            .store
            .get(key)
            .await?
            .ok_or_else(|| VaultError::NotFound(key.clone()))?;
        let now = now_ms();
        let pending = StoredCredential {
            envelope: envelope::seal(&self.master, key, secret),
            fingerprint: self.fingerprint(secret),
            last4: secret.last4(),
            created_ms: current.created_ms,
            updated_ms: now,
        };
        self.store.put_pending(key, pending.clone()).await?;
        Ok((pending, current.fingerprint))
    }

    /// Rotation, step 2 on success: the pending credential becomes current —
    /// only if it is still the `verified` one.
    pub async fn promote(
        &self,
        key: &CredentialKey,
        verified: &Fingerprint,
    ) -> Result<StoredCredential, VaultError> {
        Ok(self.store.promote_pending(key, verified).await?)
    }

    /// Rotation, step 2 on failure: the pending credential is removed.
    pub async fn discard(&self, key: &CredentialKey) -> Result<(), VaultError> {
        Ok(self.store.discard_pending(key).await?)
    }

    /// Whether the secret store answers (readiness).
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.store.probe().await
    }

    /// When a remote secret store last answered (readiness: past
    /// `max_stale` of it nothing cached can be served).
    pub fn store_last_answered(&self) -> Option<std::time::Instant> {
        self.store.last_answered()
    }

    /// The remote store's cache: entries and lookups (`None`: local store).
    pub fn cache_stats(&self) -> Option<crate::cache::CacheStats> {
        self.store.cache_stats()
    }

    /// Leases the credential for `key`: records the access with `audit`
    /// (refusing if that fails), then decrypts into a zeroizing [`Lease`].
    pub async fn lease(
        &self,
        key: &CredentialKey,
        caller: &str,
        reason: &str,
        request_id: &str,
        audit: &impl LeaseAudit,
    ) -> Result<Lease, VaultError> {
        let stored = self
            .store
            .get(key)
            .await?
            .ok_or_else(|| VaultError::NotFound(key.clone()))?;
        let event = LeaseEvent {
            key,
            fingerprint: &stored.fingerprint,
            caller,
            reason,
            request_id,
        };
        audit
            .record_lease(&event)
            .await
            .map_err(VaultError::AuditUnavailable)?;
        let secret =
            envelope::open(&self.master, key, &stored.envelope).map_err(|source| VaultError::Seal {
                key: key.clone(),
                source,
            })?;
        Ok(Lease {
            secret,
            fingerprint: stored.fingerprint,
        })
    }
}

fn check_secret(secret: &Secret) -> Result<(), VaultError> {
    let bytes = secret.expose();
    if bytes.is_empty() {
        return Err(VaultError::InvalidSecret("must not be empty"));
    }
    if bytes.len() > MAX_SECRET_LEN {
        return Err(VaultError::InvalidSecret("must be at most 8192 bytes"));
    }
    if !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(VaultError::InvalidSecret(
            "must be printable ASCII (no control characters or line breaks)",
        ));
    }
    if bytes[0] == b' ' || bytes[bytes.len() - 1] == b' ' {
        return Err(VaultError::InvalidSecret("must not start or end with a space"));
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalStore;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        events: Mutex<Vec<String>>,
        fail: bool,
    }

    impl LeaseAudit for Recorder {
        async fn record_lease(&self, e: &LeaseEvent<'_>) -> Result<(), String> {
            if self.fail {
                return Err("disk full".into());
            }
            self.events
                .lock()
                .unwrap()
                .push(format!("{} {} {}", e.key, e.reason, e.fingerprint));
            Ok(())
        }
    }

    fn vault(dir: &std::path::Path) -> Vault {
        let store = LocalStore::open(dir).unwrap();
        Vault::new(Arc::new(MasterKey::from_bytes([7; 32])), Arc::new(store))
    }

    #[tokio::test]
    async fn put_lease_delete_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let key = CredentialKey::new("acme", "mock");
        let secret = Secret::from("canary-vault-secret-0001".to_owned());
        let v = vault(dir.path());
        v.put(&key, &secret).await.unwrap();

        // Nothing on disk holds the plaintext.
        let on_disk = std::fs::read(dir.path().join("acme/mock.json")).unwrap();
        assert!(!String::from_utf8_lossy(&on_disk).contains("canary-vault-secret"));

        // A reopened store leases the same secret, audited first.
        let v = vault(dir.path());
        let audit = Recorder::default();
        let lease = v.lease(&key, "key_1", "sync", "req", &audit).await.unwrap();
        assert_eq!(lease.secret().expose(), secret.expose());
        assert_eq!(audit.events.lock().unwrap().len(), 1);

        v.delete(&key).await.unwrap();
        assert!(!dir.path().join("acme/mock.json").exists());
        assert!(matches!(
            v.lease(&key, "key_1", "sync", "req", &audit).await,
            Err(VaultError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn failed_audit_refuses_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let key = CredentialKey::new("acme", "mock");
        let v = vault(dir.path());
        v.put(&key, &Secret::from("some-long-secret-value".to_owned()))
            .await
            .unwrap();
        let audit = Recorder {
            fail: true,
            ..Default::default()
        };
        let err = v.lease(&key, "k", "r", "q", &audit).await.unwrap_err();
        assert!(matches!(err, VaultError::AuditUnavailable(_)));
    }

    #[tokio::test]
    async fn rejects_bad_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let key = CredentialKey::new("acme", "mock");
        for bad in ["", "line\nbreak", " padded", &"x".repeat(8193)] {
            let err = v.put(&key, &Secret::from(bad.to_owned())).await.unwrap_err();
            assert!(matches!(err, VaultError::InvalidSecret(_)), "{bad:?}");
        }
    }
}
