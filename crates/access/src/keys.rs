//! API keys: created random, shown once, kept as SHA-256 hashes.
//!
//! The key file (`apikeys.json`, mode 0600) holds hashes, last 4 characters
//! and grants — nothing that authenticates. It is rewritten atomically
//! (temporary file, fsync, rename, directory fsync) on every change, and the
//! in-memory index is updated only after the write is durable, so a revoke
//! that returned is a revoke that survives a crash.

use crate::grant::Grant;
use crate::source::{self, SourceNotAllowed};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::net::IpAddr;
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
    /// Source networks the key may be used from; empty for anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_cidrs: Vec<IpNet>,
}

impl ApiKeyRecord {
    /// Neither revoked nor expired at `now_ms`.
    pub fn valid_at(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| now_ms < e)
    }

    /// Valid at `now_ms` and expiring within `window_ms` of it.
    pub fn expires_within(&self, now_ms: u64, window_ms: u64) -> bool {
        self.valid_at(now_ms)
            && self
                .expires_ms
                .is_some_and(|e| e <= now_ms.saturating_add(window_ms))
    }

    /// Whether the key may be used from `source` (see [`source::allows`]).
    pub fn allows_source(&self, source: Option<IpAddr>) -> Result<(), SourceNotAllowed> {
        source::allows(&self.allow_cidrs, source)
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
    /// No valid key has this name.
    #[error("no valid API key is named '{0}'")]
    NameNotFound(String),
    /// Several valid keys have this name, so it does not say which.
    #[error(
        "{count} valid API keys are named '{name}'; give the id of the one you mean (see `valet admin apikey list`)"
    )]
    NameAmbiguous {
        /// The name.
        name: String,
        /// Valid keys with it.
        count: usize,
    },
    /// The key is revoked or expired, so it has nothing to hand over.
    #[error("API key {0} is revoked or expired; create a new key instead")]
    NotActive(String),
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
        self.create_restricted(name, grant, ttl_ms, client_identity, Vec::new())
    }

    /// [`KeyStore::create`] for a key usable only from `allow_cidrs` (any
    /// source when empty), bound in the same durable write that creates it.
    pub fn create_restricted(
        &self,
        name: &str,
        grant: Grant,
        ttl_ms: Option<u64>,
        client_identity: Option<String>,
        allow_cidrs: Vec<IpNet>,
    ) -> Result<(ApiKey, ApiKeyRecord), KeyStoreError> {
        let key = ApiKey::generate();
        let record = self.insert(&key, name, grant, ttl_ms, client_identity, allow_cidrs)?;
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
        self.insert(key, name, grant, ttl_ms, None, Vec::new())
    }

    fn insert(
        &self,
        key: &ApiKey,
        name: &str,
        grant: Grant,
        ttl_ms: Option<u64>,
        client_identity: Option<String>,
        allow_cidrs: Vec<IpNet>,
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
            allow_cidrs,
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

    /// Revokes the one valid key named `name`: refused if none or several
    /// valid keys have it (revoked and expired ones do not count).
    pub fn revoke_by_name(&self, name: &str) -> Result<ApiKeyRecord, KeyStoreError> {
        let mut revoked = None;
        self.update(|records| {
            let now = now_ms();
            let mut named = records.iter_mut().filter(|r| r.name == name && r.valid_at(now));
            let rec = named
                .next()
                .ok_or_else(|| KeyStoreError::NameNotFound(name.to_owned()))?;
            let others = named.count();
            if others > 0 {
                return Err(KeyStoreError::NameAmbiguous {
                    name: name.to_owned(),
                    count: others + 1,
                });
            }
            rec.revoked_ms = Some(now);
            revoked = Some(rec.clone());
            Ok(())
        })?;
        Ok(revoked.expect("set by the update"))
    }

    /// Replaces key `id` with a successor: a new secret with the same name,
    /// grant, source networks and client identity (which moves to the
    /// successor), and the same lifetime as the old key had, at most
    /// `max_lifetime_ms`. The old key keeps working until `overlap_ms` from
    /// now — never later than it would have — so callers can switch over.
    /// Returns the successor's key, its record, and the old key's record.
    pub fn rotate(
        &self,
        id: &str,
        overlap_ms: u64,
        max_lifetime_ms: u64,
    ) -> Result<(ApiKey, ApiKeyRecord, ApiKeyRecord), KeyStoreError> {
        let key = ApiKey::generate();
        let new_id = format!("key_{}", hex::encode(random::<8>()));
        let mut rotated = None;
        self.update(|records| {
            let now = now_ms();
            let old = records
                .iter_mut()
                .find(|r| r.id == id)
                .ok_or_else(|| KeyStoreError::NotFound(id.to_owned()))?;
            if !old.valid_at(now) {
                return Err(KeyStoreError::NotActive(id.to_owned()));
            }
            let lifetime = old
                .expires_ms
                .map(|e| e.saturating_sub(old.created_ms).min(max_lifetime_ms));
            let successor = ApiKeyRecord {
                id: new_id.clone(),
                name: old.name.clone(),
                sha256: hex::encode(hash(key.expose())),
                last4: key.expose()[key.expose().len() - 4..].to_owned(),
                grant: old.grant.clone(),
                created_ms: now,
                expires_ms: lifetime.map(|l| now.saturating_add(l)),
                revoked_ms: None,
                client_identity: old.client_identity.take(),
                allow_cidrs: old.allow_cidrs.clone(),
            };
            let until = now.saturating_add(overlap_ms);
            old.expires_ms = Some(old.expires_ms.map_or(until, |e| e.min(until)));
            let old = old.clone();
            records.push(successor.clone());
            rotated = Some((successor, old));
            Ok(())
        })?;
        let (successor, old) = rotated.expect("set by the update");
        Ok((key, successor, old))
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

    #[test]
    fn old_key_files_load_and_bound_keys_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apikeys.json");
        let store = KeyStore::open(&path).unwrap();
        let (_, plain) = store.create("plain", grant(), None, None).unwrap();
        // A record written before source binding has no `allow_cidrs`.
        assert!(!fs::read_to_string(&path).unwrap().contains("allow_cidrs"));
        let nets = vec!["10.0.0.0/8".parse().unwrap()];
        let (_, bound) = store
            .create_restricted("bound", grant(), None, None, nets.clone())
            .unwrap();
        let reopened = KeyStore::open(&path).unwrap();
        let list = reopened.list();
        assert_eq!(list[0].id, plain.id);
        assert!(list[0].allow_cidrs.is_empty());
        assert_eq!(list[1].id, bound.id);
        assert_eq!(list[1].allow_cidrs, nets);
        assert!(list[1].allows_source(Some("10.1.1.1".parse().unwrap())).is_ok());
        assert!(list[1].allows_source(Some("127.0.0.1".parse().unwrap())).is_err());
    }

    #[test]
    fn revoke_by_name_needs_exactly_one_valid_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("k.json")).unwrap();
        assert!(matches!(
            store.revoke_by_name("sync"),
            Err(KeyStoreError::NameNotFound(_))
        ));
        let (_, a) = store.create("sync", grant(), None, None).unwrap();
        let (_, _b) = store.create("sync", grant(), None, None).unwrap();
        assert!(matches!(
            store.revoke_by_name("sync"),
            Err(KeyStoreError::NameAmbiguous { count: 2, .. })
        ));
        store.revoke(&a.id).unwrap();
        // Only valid keys count: the revoked one no longer makes it ambiguous.
        let revoked = store.revoke_by_name("sync").unwrap();
        assert_ne!(revoked.id, a.id);
        assert!(revoked.revoked_ms.is_some());
    }

    #[test]
    fn rotate_hands_over_and_never_extends() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("k.json")).unwrap();
        let nets = vec!["127.0.0.0/8".parse().unwrap()];
        let day = 86_400_000;
        let (old_key, old) = store
            .create_restricted("sync", grant(), Some(30 * day), None, nets.clone())
            .unwrap();
        let (new_key, new, before) = store.rotate(&old.id, day, 3650 * day).unwrap();
        assert_ne!(new.id, old.id);
        assert_eq!(
            (new.name.as_str(), &new.grant, &new.allow_cidrs),
            ("sync", &old.grant, &nets)
        );
        let old_expiry = before.expires_ms.unwrap();
        assert!(old_expiry <= now_ms() + day && old_expiry > now_ms() + day - 60_000);
        assert!(new.expires_ms.unwrap() >= new.created_ms + 30 * day);
        // Both work during the overlap.
        assert_eq!(store.authenticate(old_key.expose()).unwrap().id, old.id);
        assert_eq!(store.authenticate(new_key.expose()).unwrap().id, new.id);

        // A longer overlap does not extend the old key.
        let (_, _, again) = store.rotate(&old.id, 10 * day, 3650 * day).unwrap();
        assert_eq!(again.expires_ms, Some(old_expiry));

        // Nothing to hand over from a revoked key.
        store.revoke(&old.id).unwrap();
        assert!(matches!(
            store.rotate(&old.id, day, day),
            Err(KeyStoreError::NotActive(_))
        ));
        assert!(matches!(
            store.rotate("key_0", day, day),
            Err(KeyStoreError::NotFound(_))
        ));
    }
}
