//! API keys: created random, shown once, kept as SHA-256 hashes.
//!
//! The key file (`apikeys.json`, mode 0600) holds hashes, last 4 characters
//! and grants — nothing that authenticates. It is rewritten atomically
//! (temporary file, fsync, rename, directory fsync) on every change, and the
//! in-memory index is updated only after the write is durable, so a revoke
//! that returned is a revoke that survives a crash.

use crate::grant::Grant;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// Prefix of every API key, so secret scanners and people recognise one.
pub const KEY_PREFIX: &str = "vk_";

/// A freshly created API key in plaintext. Shown to its creator once, then
/// dropped (and zeroed); `Debug` never prints it.
pub struct ApiKey(Zeroizing<String>);

impl ApiKey {
    /// A fresh random key: `vk_` and 43 characters of base64url (256 bits).
    pub fn generate() -> Self {
        ApiKey(Zeroizing::new(format!(
            "{KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(random::<32>())
        )))
    }

    /// The key, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

/// What is stored about a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    /// Stable public id, `key_` and 16 hex digits.
    pub id: String,
    /// A label for people.
    pub name: String,
    /// SHA-256 of the key, hex.
    pub sha256: String,
    /// The key's last 4 characters.
    pub last4: String,
    /// What the key may do.
    pub grant: Grant,
    /// Created, Unix milliseconds.
    pub created_ms: u64,
    /// Expires, Unix milliseconds; `None` for never.
    pub expires_ms: Option<u64>,
    /// Revoked, Unix milliseconds; `None` while valid.
    pub revoked_ms: Option<u64>,
    /// The client certificate identity (first DNS SAN) that authenticates as
    /// this key on a mutual-TLS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_identity: Option<String>,
}

impl ApiKeyRecord {
    /// Neither revoked nor expired at `now_ms`.
    pub fn valid_at(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| now_ms < e)
    }
}

/// Whether `s` looks like a DNS name.
fn valid_identity(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An authenticated caller.
pub type Caller = Arc<ApiKeyRecord>;

/// Why a presented key was refused. The same for every caller that presents
/// the same key, and never echoes the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No key was presented.
    #[error("missing API key: send metadata 'authorization: Bearer <api key>'")]
    Missing,
    /// An `authorization` value was sent, but not as `Bearer <key>`.
    #[error("unsupported authorization: send metadata 'authorization: Bearer <api key>'")]
    Scheme,
    /// The key is not known.
    #[error("API key not recognised")]
    Unknown,
    /// The key was revoked.
    #[error("API key revoked")]
    Revoked,
    /// The key has expired.
    #[error("API key expired")]
    Expired,
}

/// Why the key store failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// Reading or writing the key file failed.
    #[error("API key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file could not be parsed.
    #[error("API key file {0} is corrupt")]
    Corrupt(PathBuf),
    /// No key has this id.
    #[error("no API key with id {0}")]
    NotFound(String),
    /// The client identity cannot be bound.
    #[error("client_identity: {0}")]
    Identity(String),
}

/// API keys, indexed by hash.
#[derive(Debug)]
pub struct KeyStore {
    path: PathBuf,
    /// Records in creation order; the source of truth written to the file.
    records: Mutex<Vec<ApiKeyRecord>>,
    /// SHA-256 → record, for the hot path.
    by_hash: RwLock<HashMap<[u8; 32], Caller>>,
}

impl KeyStore {
    /// Opens the key file at `path` (empty if it does not exist yet).
    pub fn open(path: &Path) -> Result<Self, KeyStoreError> {
        let records: Vec<ApiKeyRecord> = match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|_| KeyStoreError::Corrupt(path.to_owned()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(KeyStoreError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let by_hash = index(&records).ok_or_else(|| KeyStoreError::Corrupt(path.to_owned()))?;
        Ok(Self {
            path: path.to_owned(),
            records: Mutex::new(records),
            by_hash: RwLock::new(by_hash),
        })
    }

    /// Whether no key was ever created.
    pub fn is_empty(&self) -> bool {
        self.records.lock().expect("lock").is_empty()
    }

    /// Creates a key; returns it (to show once) and its record.
    pub fn create(
        &self,
        name: &str,
        grant: Grant,
        ttl_ms: Option<u64>,
        client_identity: Option<String>,
    ) -> Result<(ApiKey, ApiKeyRecord), KeyStoreError> {
        let key = ApiKey::generate();
        let record = self.insert(&key, name, grant, ttl_ms, client_identity)?;
        Ok((key, record))
    }

    /// Records a key generated by the caller (who may need to save it
    /// somewhere durable before it becomes valid).
    pub fn add(
        &self,
        key: &ApiKey,
        name: &str,
        grant: Grant,
        ttl_ms: Option<u64>,
    ) -> Result<ApiKeyRecord, KeyStoreError> {
        self.insert(key, name, grant, ttl_ms, None)
    }

    fn insert(
        &self,
        key: &ApiKey,
        name: &str,
        grant: Grant,
        ttl_ms: Option<u64>,
        client_identity: Option<String>,
    ) -> Result<ApiKeyRecord, KeyStoreError> {
        let client_identity = client_identity.map(|id| id.to_ascii_lowercase());
        if let Some(identity) = &client_identity {
            if grant.admin || !grant.permissions.is_empty() {
                return Err(KeyStoreError::Identity(
                    "an admin key cannot be bound to a client certificate".into(),
                ));
            }
            if !valid_identity(identity) {
                return Err(KeyStoreError::Identity(format!(
                    "'{identity}' is not a DNS name (letters, digits, '-' and '.')"
                )));
            }
        }
        let now = now_ms();
        let record = ApiKeyRecord {
            id: format!("key_{}", hex::encode(random::<8>())),
            name: name.to_owned(),
            sha256: hex::encode(hash(key.expose())),
            last4: key.expose()[key.expose().len() - 4..].to_owned(),
            grant,
            created_ms: now,
            expires_ms: ttl_ms.map(|t| now.saturating_add(t)),
            revoked_ms: None,
            client_identity,
        };
        self.update(|records| {
            if let Some(identity) = &record.client_identity
                && records
                    .iter()
                    .any(|r| r.client_identity.as_ref() == Some(identity) && r.valid_at(now))
            {
                return Err(KeyStoreError::Identity(format!(
                    "client identity '{identity}' is already bound to a valid key; revoke it first"
                )));
            }
            records.push(record.clone());
            Ok(())
        })?;
        Ok(record)
    }

    /// Revokes the key with `id`; effective at once. Revoking twice keeps the
    /// first revocation time.
    pub fn revoke(&self, id: &str) -> Result<ApiKeyRecord, KeyStoreError> {
        let mut revoked = None;
        self.update(|records| {
            let rec = records
                .iter_mut()
                .find(|r| r.id == id)
                .ok_or_else(|| KeyStoreError::NotFound(id.to_owned()))?;
            rec.revoked_ms.get_or_insert_with(now_ms);
            revoked = Some(rec.clone());
            Ok(())
        })?;
        Ok(revoked.expect("set by the update"))
    }

    /// All keys in creation order.
    pub fn list(&self) -> Vec<ApiKeyRecord> {
        self.records.lock().expect("lock").clone()
    }

    /// Authenticates a presented key: one SHA-256 and one map lookup.
    pub fn authenticate(&self, presented: &str) -> Result<Caller, AuthError> {
        if presented.is_empty() {
            return Err(AuthError::Missing);
        }
        let caller = self
            .by_hash
            .read()
            .expect("lock")
            .get(&hash(presented))
            .cloned()
            .ok_or(AuthError::Unknown)?;
        if caller.revoked_ms.is_some() {
            return Err(AuthError::Revoked);
        }
        if caller.expires_ms.is_some_and(|e| now_ms() >= e) {
            return Err(AuthError::Expired);
        }
        Ok(caller)
    }

    /// The caller a verified client certificate names (mTLS): the valid key
    /// bound to `identity` (compared case-insensitively). Keys are bound
    /// explicitly at creation, never matched by name, and never admin keys.
    pub fn authenticate_identity(&self, identity: &str) -> Result<Caller, AuthError> {
        let identity = identity.to_ascii_lowercase();
        let index = self.by_hash.read().expect("lock");
        let bound: Vec<&Caller> = index
            .values()
            .filter(|c| c.client_identity.as_deref() == Some(identity.as_str()))
            .collect();
        let now = now_ms();
        match bound.iter().find(|c| c.valid_at(now)) {
            Some(caller) => Ok(Arc::clone(caller)),
            None if bound.iter().any(|c| c.revoked_ms.is_some()) => Err(AuthError::Revoked),
            None if !bound.is_empty() => Err(AuthError::Expired),
            None => Err(AuthError::Unknown),
        }
    }

    /// Applies `change` to a copy of the records, writes it durably, then
    /// publishes it to the in-memory index.
    fn update(
        &self,
        change: impl FnOnce(&mut Vec<ApiKeyRecord>) -> Result<(), KeyStoreError>,
    ) -> Result<(), KeyStoreError> {
        let mut records = self.records.lock().expect("lock");
        let mut next = records.clone();
        change(&mut next)?;
        write_atomically(
            &self.path,
            &serde_json::to_vec_pretty(&next).expect("records serialise"),
        )?;
        *self.by_hash.write().expect("lock") = index(&next).expect("ids and hashes are unique");
        *records = next;
        Ok(())
    }
}

fn index(records: &[ApiKeyRecord]) -> Option<HashMap<[u8; 32], Caller>> {
    let mut map = HashMap::with_capacity(records.len());
    for r in records {
        let bytes: [u8; 32] = hex::decode(&r.sha256).ok()?.try_into().ok()?;
        map.insert(bytes, Arc::new(r.clone()));
    }
    Some(map)
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).expect("the OS random source is available");
    bytes
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), KeyStoreError> {
    valet_durable::write_atomically(path, bytes).map_err(|source| KeyStoreError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Operation;

    fn grant() -> Grant {
        Grant {
            tenants: vec!["acme".into()],
            vendors: vec!["mock".into()],
            operations: [Operation::Read].into(),
            admin: false,
            permissions: Default::default(),
        }
    }

    #[test]
    fn create_authenticate_revoke_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apikeys.json");
        let store = KeyStore::open(&path).unwrap();
        let (key, rec) = store.create("sync", grant(), None, None).unwrap();
        assert!(key.expose().starts_with(KEY_PREFIX));
        assert_eq!(store.authenticate(key.expose()).unwrap().id, rec.id);
        assert_eq!(store.authenticate("vk_nope").unwrap_err(), AuthError::Unknown);

        // Only the hash is on disk.
        let on_disk = fs::read_to_string(&path).unwrap();
        assert!(!on_disk.contains(key.expose()));
        assert!(on_disk.contains(&rec.sha256));

        store.revoke(&rec.id).unwrap();
        assert_eq!(store.authenticate(key.expose()).unwrap_err(), AuthError::Revoked);
        let reopened = KeyStore::open(&path).unwrap();
        assert_eq!(
            reopened.authenticate(key.expose()).unwrap_err(),
            AuthError::Revoked
        );
        assert!(matches!(
            reopened.revoke("key_0"),
            Err(KeyStoreError::NotFound(_))
        ));
    }

    #[test]
    fn expired_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("k.json")).unwrap();
        let (key, _) = store.create("short", grant(), Some(0), None).unwrap();
        assert_eq!(store.authenticate(key.expose()).unwrap_err(), AuthError::Expired);
        assert_eq!(format!("{key:?}"), "ApiKey([REDACTED])");
    }
}
