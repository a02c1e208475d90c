//! API keys: created random, shown once, kept as SHA-256 hashes.
//!
//! The key file (`apikeys.json`, mode 0600) holds hashes, last 4 characters
//! and grants — nothing that authenticates. It is rewritten atomically
//! (temporary file, fsync, rename, directory fsync) on every change, and the
//! in-memory index is updated only after the write is durable, so a revoke
//! that returned is a revoke that survives a crash.

use crate::control::shared::{Shared, SharedError};
use crate::control::{ControlState, Embedded, Versioned, read_snapshot, token_version, write_snapshot};
use crate::grant::Grant;
use crate::source::{self, SourceNotAllowed};
use crate::tenants::{Disabled, TenantStatus};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
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

    /// Whether this is a Gateway key for `tenant` alone: the keys a
    /// compromised disable or an offboarding revokes (a key for several
    /// tenants is kept, and refused for this one).
    pub fn scoped_only_to(&self, tenant: &str) -> bool {
        !self.grant.admin && self.grant.tenants == [tenant]
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
    /// The shared control state was not confirmed within its bound.
    #[error(
        "this replica could not confirm its access control state recently enough; retry on another replica"
    )]
    Stale,
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
    /// The shared control store (Redis) could not take the change.
    #[error("{0}")]
    Shared(String),
    /// The tenant's status changed since the caller read it.
    #[error("tenant '{0}' changed status meanwhile; read its status and retry")]
    Changed(String),
}

/// The control state — API keys and tenant status — with the index calls
/// read. Changes go through one place ([`KeyStore::update_state`]), which
/// makes them durable (file or Redis) before the index shows them.
#[derive(Debug)]
pub struct KeyStore {
    backend: Backend,
    /// Serialises changes; the state last written or read, with its version.
    current: tokio::sync::Mutex<Versioned>,
    /// What calls read: one `Arc` swapped whole on every change.
    view: RwLock<Arc<View>>,
    /// The clock staleness is measured on: monotonic, so a wall-clock step
    /// cannot stretch or shrink the bound.
    started: std::time::Instant,
    /// When the shared store last confirmed `current`, milliseconds since
    /// `started` (negative: before this process, from the snapshot).
    confirmed_at: AtomicI64,
    /// When the snapshot on disk was last stamped, likewise.
    stamped_at: AtomicI64,
    /// Times the shared store was found empty while we held a state.
    losses: AtomicU64,
    /// Bumped on every change this replica applies (tenant disables cancel
    /// calls in flight when they see it).
    changes: watch::Sender<u64>,
}

#[derive(Debug)]
enum Backend {
    Embedded(Embedded),
    Shared {
        store: Box<Shared>,
        snapshot: PathBuf,
        /// Past this without a confirmation, calls are refused.
        max_stale_ms: u64,
        /// How often the snapshot's confirmation time is refreshed: a
        /// restart during an outage counts staleness from at most this much
        /// earlier than the truth.
        stamp_every_ms: u64,
    },
}

/// The state calls read, indexed.
#[derive(Debug, Default)]
struct View {
    state: ControlState,
    /// SHA-256 → record, for the hot path.
    by_hash: HashMap<[u8; 32], Caller>,
    disabled: Disabled,
}

impl View {
    fn new(state: &ControlState) -> Option<Self> {
        Some(Self {
            by_hash: index(&state.keys)?,
            disabled: Disabled::new(&state.tenants),
            state: state.clone(),
        })
    }
}

/// `confirmed_at` of a state never confirmed: older than any bound.
const NEVER: i64 = i64::MIN / 4;

/// Settings for the shared (Redis) control store.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    /// Redis URL.
    pub redis_url: String,
    /// The on-disk snapshot.
    pub snapshot: PathBuf,
    /// The embedded key file to import on the first fleet start.
    pub import_from: PathBuf,
    /// How long calls are served without a confirmation from Redis.
    pub max_stale: Duration,
}

impl KeyStore {
    /// Opens the embedded store: the key file at `path` and `tenants.json`
    /// beside it (empty if they do not exist yet).
    pub fn open(path: &Path) -> Result<Self, KeyStoreError> {
        let files = Embedded::new(path);
        let state = files.load()?;
        Self::new(
            Backend::Embedded(files),
            Versioned {
                version: 0,
                token: String::new(),
                state,
            },
            0,
        )
        .ok_or_else(|| KeyStoreError::Corrupt(path.to_owned()))
    }

    /// Opens the shared store: starts from the on-disk snapshot (or, on the
    /// first fleet start, the embedded key file, imported if Redis holds
    /// nothing yet), then tries Redis once. Redis being down is not an
    /// error: the snapshot serves within the staleness bound and the sync
    /// loop ([`KeyStore::spawn_sync`]) reconnects.
    pub async fn open_shared(settings: &SharedSettings) -> Result<Self, KeyStoreError> {
        let store = Shared::connect(&settings.redis_url).map_err(|e| KeyStoreError::Shared(e.to_string()))?;
        let (initial, confirmed_ms) = match read_snapshot(&settings.snapshot)? {
            Some(found) => found,
            None => {
                let files = Embedded::new(&settings.import_from);
                let state = if files.exists() {
                    files.load()?
                } else {
                    Default::default()
                };
                (
                    Versioned {
                        version: 0,
                        token: String::new(),
                        state,
                    },
                    0,
                )
            }
        };
        let backend = Backend::Shared {
            store: Box::new(store),
            snapshot: settings.snapshot.clone(),
            max_stale_ms: settings.max_stale.as_millis() as u64,
            stamp_every_ms: (settings.max_stale.as_millis() as u64 / 10).clamp(100, 5_000),
        };
        let keys = Self::new(backend, initial, confirmed_ms)
            .ok_or_else(|| KeyStoreError::Corrupt(settings.snapshot.clone()))?;
        if let Err(e) = keys.sync().await {
            tracing::warn!(error = %e, "control store unreachable at start; serving the on-disk snapshot within control.max_stale_ms");
        }
        Ok(keys)
    }

    /// `confirmed_ms`: when the state was last confirmed, Unix
    /// milliseconds (0: never; a time in the future counts as never).
    fn new(backend: Backend, current: Versioned, confirmed_ms: u64) -> Option<Self> {
        let view = View::new(&current.state)?;
        let now = now_ms();
        let confirmed_at = match confirmed_ms {
            c if c == 0 || c > now => NEVER,
            c => -i64::try_from(now - c).unwrap_or(i64::MAX / 4),
        };
        Some(Self {
            backend,
            current: tokio::sync::Mutex::new(current),
            view: RwLock::new(Arc::new(view)),
            started: std::time::Instant::now(),
            confirmed_at: AtomicI64::new(confirmed_at),
            stamped_at: AtomicI64::new(confirmed_at),
            losses: AtomicU64::new(0),
            changes: watch::channel(0).0,
        })
    }

    /// Milliseconds since `started`.
    fn mono_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// How long since the state was last confirmed.
    fn age_ms(&self) -> u64 {
        let age = self
            .mono_ms()
            .saturating_sub(self.confirmed_at.load(Ordering::Relaxed));
        u64::try_from(age).unwrap_or(0)
    }

    fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.read().expect("lock"))
    }

    /// Whether no key was ever created.
    pub fn is_empty(&self) -> bool {
        self.view().state.keys.is_empty()
    }

    /// Whether the state is shared (Redis) rather than embedded.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Shared { .. })
    }

    /// Creates a key; returns it (to show once) and its record.
    pub async fn create(
        &self,
        name: &str,
        grant: Grant,
        ttl_ms: Option<u64>,
        client_identity: Option<String>,
    ) -> Result<(ApiKey, ApiKeyRecord), KeyStoreError> {
        self.create_restricted(name, grant, ttl_ms, client_identity, Vec::new())
            .await
    }

    /// [`KeyStore::create`] for a key usable only from `allow_cidrs` (any
    /// source when empty), bound in the same durable write that creates it.
    pub async fn create_restricted(
        &self,
        name: &str,
        grant: Grant,
        ttl_ms: Option<u64>,
        client_identity: Option<String>,
        allow_cidrs: Vec<IpNet>,
    ) -> Result<(ApiKey, ApiKeyRecord), KeyStoreError> {
        let key = ApiKey::generate();
        let record = self
            .insert(&key, name, grant, ttl_ms, client_identity, allow_cidrs)
            .await?;
        Ok((key, record))
    }

    /// Records the first key of a store, generated by the caller (who
    /// saves it somewhere durable before it becomes valid): `None`, and
    /// nothing recorded, if the store already has a key — in a fleet,
    /// another replica bootstrapped it first.
    pub async fn add_first(
        &self,
        key: &ApiKey,
        name: &str,
        grant: Grant,
    ) -> Result<Option<ApiKeyRecord>, KeyStoreError> {
        let record = new_record(key, name, grant, None, None, Vec::new())?;
        let mut added = false;
        self.update(|records| {
            added = records.is_empty();
            if added {
                records.push(record.clone());
            }
            Ok(())
        })
        .await?;
        Ok(added.then_some(record))
    }

    async fn insert(
        &self,
        key: &ApiKey,
        name: &str,
        grant: Grant,
        ttl_ms: Option<u64>,
        client_identity: Option<String>,
        allow_cidrs: Vec<IpNet>,
    ) -> Result<ApiKeyRecord, KeyStoreError> {
        let record = new_record(key, name, grant, ttl_ms, client_identity, allow_cidrs)?;
        let now = record.created_ms;
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
        })
        .await?;
        Ok(record)
    }

    /// Revokes the key with `id`; effective at once (on every replica within
    /// the propagation window). Revoking twice keeps the first revocation
    /// time.
    pub async fn revoke(&self, id: &str) -> Result<ApiKeyRecord, KeyStoreError> {
        let mut revoked = None;
        self.update(|records| {
            let rec = records
                .iter_mut()
                .find(|r| r.id == id)
                .ok_or_else(|| KeyStoreError::NotFound(id.to_owned()))?;
            rec.revoked_ms.get_or_insert_with(now_ms);
            revoked = Some(rec.clone());
            Ok(())
        })
        .await?;
        Ok(revoked.expect("set by the update"))
    }

    /// Revokes the one valid key named `name`: refused if none or several
    /// valid keys have it (revoked and expired ones do not count).
    pub async fn revoke_by_name(&self, name: &str) -> Result<ApiKeyRecord, KeyStoreError> {
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
        })
        .await?;
        Ok(revoked.expect("set by the update"))
    }

    /// Replaces key `id` with a successor: a new secret with the same name,
    /// grant, source networks and client identity (which moves to the
    /// successor), and the same lifetime as the old key had, at most
    /// `max_lifetime_ms`. The old key keeps working until `overlap_ms` from
    /// now — never later than it would have — so callers can switch over.
    /// Returns the successor's key, its record, and the old key's record.
    pub async fn rotate(
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
        })
        .await?;
        let (successor, old) = rotated.expect("set by the update");
        Ok((key, successor, old))
    }

    /// All keys in creation order.
    pub fn list(&self) -> Vec<ApiKeyRecord> {
        self.view().state.keys.clone()
    }

    /// Authenticates a presented key: one SHA-256 and one map lookup.
    pub fn authenticate(&self, presented: &str) -> Result<Caller, AuthError> {
        if presented.is_empty() {
            return Err(AuthError::Missing);
        }
        self.fresh()?;
        let caller = self
            .view()
            .by_hash
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
        self.fresh()?;
        let identity = identity.to_ascii_lowercase();
        let view = self.view();
        let bound: Vec<&Caller> = view
            .by_hash
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

    /// Refuses when the shared state was not confirmed within its bound: a
    /// key revoked meanwhile must not pass.
    fn fresh(&self) -> Result<(), AuthError> {
        match self.staleness_ms() {
            Some(_) => Err(AuthError::Stale),
            None => Ok(()),
        }
    }

    /// How long past its bound the control state is unconfirmed; `None`
    /// while it is fresh (always, embedded).
    pub fn staleness_ms(&self) -> Option<u64> {
        let Backend::Shared { max_stale_ms, .. } = &self.backend else {
            return None;
        };
        let age = self.age_ms();
        (age > *max_stale_ms).then_some(age)
    }

    /// How long since the shared store last confirmed the state; `None`
    /// when embedded.
    pub fn unconfirmed_ms(&self) -> Option<u64> {
        match &self.backend {
            Backend::Shared { .. } => Some(self.age_ms()),
            Backend::Embedded(_) => None,
        }
    }

    /// Times the shared store was found emptied (Redis restarted without
    /// its data) and this replica's state re-published.
    pub fn store_losses(&self) -> u64 {
        self.losses.load(Ordering::Relaxed)
    }

    /// The disable covering a call for `tenant` × `vendor`, if any.
    pub fn tenant_disabled(&self, tenant: &str, vendor: &str) -> Option<Arc<TenantStatus>> {
        self.view().disabled.get(tenant, vendor)
    }

    /// Every disable in force.
    pub fn tenant_statuses(&self) -> Vec<TenantStatus> {
        self.view().state.tenants.clone()
    }

    /// Notices of change: the value is bumped on every change applied here.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Disables `status.tenant` (or one integration), replacing an earlier
    /// disable of the same scope. With `revoke_tenant_keys`, every valid
    /// non-admin key scoped only to that tenant is revoked in the same
    /// change. Returns the revoked keys.
    pub async fn disable(
        &self,
        status: TenantStatus,
        revoke_tenant_keys: bool,
    ) -> Result<Vec<ApiKeyRecord>, KeyStoreError> {
        let mut revoked = Vec::new();
        self.update_state(|state| {
            revoked.clear();
            let mut status = status.clone();
            // A disable of an offboarded or compromised tenant keeps it so:
            // a later disable (a new reason) must not lift either.
            if let Some(earlier) = state
                .tenants
                .iter()
                .find(|s| s.tenant == status.tenant && s.vendor == status.vendor)
            {
                if status.offboarded_until_ms.is_none() {
                    status.offboarded_until_ms = earlier.offboarded_until_ms;
                }
                for c in &earlier.compromised {
                    if !status.compromised.contains(c) {
                        status.compromised.push(c.clone());
                    }
                }
            }
            state
                .tenants
                .retain(|s| !(s.tenant == status.tenant && s.vendor == status.vendor));
            state.tenants.push(status.clone());
            if revoke_tenant_keys {
                let now = now_ms();
                for rec in &mut state.keys {
                    if rec.valid_at(now) && rec.scoped_only_to(&status.tenant) {
                        rec.revoked_ms = Some(now);
                        revoked.push(rec.clone());
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(revoked)
    }

    /// Lifts the disable of `tenant` (`vendor: None`: the tenant-wide one)
    /// if it is still the one the caller checked (`seen`: its
    /// `disabled_ms`; another admin may have disabled it again meanwhile,
    /// e.g. as compromised). Returns it, or `None` if there was none.
    pub async fn enable(
        &self,
        tenant: &str,
        vendor: Option<&str>,
        seen: Option<u64>,
    ) -> Result<Option<TenantStatus>, KeyStoreError> {
        let mut lifted = None;
        self.update_state(|state| {
            let at = state
                .tenants
                .iter()
                .position(|s| s.tenant == tenant && s.vendor.as_deref() == vendor);
            if let Some(i) = at
                && Some(state.tenants[i].disabled_ms) != seen
            {
                return Err(KeyStoreError::Changed(tenant.to_owned()));
            }
            lifted = at.map(|i| state.tenants.remove(i));
            Ok(())
        })
        .await?;
        Ok(lifted)
    }

    /// Removes what an offboarding retained once its time is past: the
    /// records of the (revoked) keys scoped only to the tenant; its status
    /// stays, disabled, without the offboarding date (no restore). Returns, per tenant swept, the key ids removed. In a fleet only
    /// the replica whose change lands reports a sweep.
    pub async fn sweep(&self, now_ms: u64) -> Result<Vec<(String, Vec<String>)>, KeyStoreError> {
        let mut swept = Vec::new();
        self.update_state(|state| {
            swept.clear();
            let due: Vec<String> = state
                .tenants
                .iter()
                .filter(|s| s.offboarded_until_ms.is_some_and(|t| t <= now_ms))
                .map(|s| s.tenant.clone())
                .collect();
            for tenant in due {
                // The tenant stays disabled (no restore any more): keys for
                // several tenants, kept at offboarding, must not work for it
                // again, nor a credential another replica still caches.
                for s in state.tenants.iter_mut().filter(|s| s.tenant == tenant) {
                    s.offboarded_until_ms = None;
                    s.reason = format!("offboarded; retained records swept ({})", s.reason);
                }
                let own = |r: &ApiKeyRecord| r.revoked_ms.is_some() && r.scoped_only_to(&tenant);
                let removed = state
                    .keys
                    .iter()
                    .filter(|r| own(r))
                    .map(|r| r.id.clone())
                    .collect();
                state.keys.retain(|r| !own(r));
                swept.push((tenant, removed));
            }
            Ok(())
        })
        .await?;
        Ok(swept)
    }

    /// Applies `change` to a copy of the keys, makes it durable, then
    /// publishes it to the index. See [`KeyStore::update_state`].
    pub async fn update(
        &self,
        mut change: impl FnMut(&mut Vec<ApiKeyRecord>) -> Result<(), KeyStoreError>,
    ) -> Result<(), KeyStoreError> {
        self.update_state(|state| change(&mut state.keys)).await
    }

    /// Applies `change` to a copy of the state, makes it durable (the
    /// files, or Redis — then the snapshot), then publishes it to the index.
    /// Against Redis it is a compare-and-set: if another replica changed
    /// the state first, `change` runs again on the newer state, so it must
    /// be safe to repeat. A write whose reply is lost is looked for by its
    /// token before it is reported as failed.
    pub async fn update_state(
        &self,
        mut change: impl FnMut(&mut ControlState) -> Result<(), KeyStoreError>,
    ) -> Result<(), KeyStoreError> {
        let mut current = self.current.lock().await;
        for _ in 0..8 {
            let mut next = current.state.clone();
            change(&mut next)?;
            if next == current.state {
                return Ok(());
            }
            index(&next.keys).ok_or_else(|| KeyStoreError::Shared("duplicate key hash".into()))?;
            let store = match &self.backend {
                Backend::Embedded(files) => {
                    files.save(&current.state, &next)?;
                    current.state = next;
                    self.apply(&current);
                    return Ok(());
                }
                Backend::Shared { store, .. } => store,
            };
            let proposed = current.successor(next);
            let written = match store.write(&current.token, &proposed).await {
                Ok(written) => written,
                Err(e) => match store.token().await {
                    Ok(Some(token)) if token == proposed.token => true,
                    _ => return Err(shared_err(e)),
                },
            };
            if written {
                *current = proposed;
                self.confirm(&current, true)?;
                return Ok(());
            }
            // Another write came first: take it in (unless it is older
            // than ours: a loss), and compute the change again.
            let stored = store.read().await.map_err(shared_err)?;
            self.reconcile(&mut current, stored)?;
        }
        Err(KeyStoreError::Shared(
            "the control state kept changing under this write; retry".into(),
        ))
    }

    /// Takes in `stored`, what Redis holds, if it is not older than
    /// `current`; an older or missing one is a loss, and `current` is kept
    /// to be written over it (the next write's compare-and-set expects the
    /// stored token).
    fn reconcile(&self, current: &mut Versioned, stored: Option<Versioned>) -> Result<(), KeyStoreError> {
        match stored {
            Some(latest) if latest.version >= current.version => {
                *current = latest;
                self.confirm(current, true)
            }
            Some(older) => {
                self.lost(current.version, Some(older.version));
                current.token = older.token;
                Ok(())
            }
            None => {
                self.lost(current.version, None);
                current.token = String::new();
                Ok(())
            }
        }
    }

    /// Counts and logs a shared store found behind this replica.
    fn lost(&self, known: u64, stored: Option<u64>) {
        if known > 0 {
            self.losses.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                known,
                ?stored,
                "the shared control store is behind this replica (emptied or restored from an older copy); re-publishing this replica's state"
            );
        }
    }

    /// One round with the shared store: confirm the token, take in a newer
    /// state, or write ours over a store that is behind (emptied, restored
    /// from an older copy, or re-published by a replica that knew less).
    /// Never adopts an older state: that would undo revocations.
    pub async fn sync(&self) -> Result<(), KeyStoreError> {
        let Backend::Shared { store, .. } = &self.backend else {
            return Ok(());
        };
        let stored = store.token().await.map_err(shared_err)?;
        let mut current = self.current.lock().await;
        let behind = match &stored {
            Some(token) if *token == current.token => return self.confirm(&current, false),
            Some(token) => token_version(token).is_none_or(|v| v < current.version),
            None => !(current.version == 0 && current.state == ControlState::default()),
        };
        if !behind {
            return match (&stored, store.read().await.map_err(shared_err)?) {
                (None, _) => self.confirm(&current, false),
                (Some(_), Some(latest)) => {
                    *current = latest;
                    self.confirm(&current, true)
                }
                (Some(_), None) => Err(KeyStoreError::Shared(
                    "control store (redis): a version without a state (evicted? run Redis with noeviction)"
                        .into(),
                )),
            };
        }
        let expected = stored.unwrap_or_default();
        self.lost(current.version, token_version(&expected));
        let proposed = current.successor(current.state.clone());
        if store.write(&expected, &proposed).await.map_err(shared_err)? {
            if current.version == 0 {
                tracing::info!(
                    keys = proposed.state.keys.len(),
                    "imported the embedded API keys into the shared control store"
                );
            }
            *current = proposed;
            self.confirm(&current, true)?;
        }
        Ok(())
    }

    /// Notes that the shared store confirmed `current`; with `changed`,
    /// publishes it to the index first and writes the snapshot. A state
    /// that cannot be indexed is not confirmed: the replica goes stale
    /// rather than serve an index that no longer matches the store.
    fn confirm(&self, current: &Versioned, changed: bool) -> Result<(), KeyStoreError> {
        if changed && !self.apply(current) {
            return Err(KeyStoreError::Shared(
                "control store (redis): the stored state has an unusable key hash".into(),
            ));
        }
        let now = self.mono_ms();
        self.confirmed_at.store(now, Ordering::Relaxed);
        if let Backend::Shared {
            snapshot,
            stamp_every_ms,
            ..
        } = &self.backend
            && (changed
                || now.saturating_sub(self.stamped_at.load(Ordering::Relaxed))
                    >= i64::try_from(*stamp_every_ms).unwrap_or(i64::MAX))
        {
            write_snapshot(snapshot, current, now_ms())?;
            self.stamped_at.store(now, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Publishes `current` to the index; `false` if it cannot be indexed.
    fn apply(&self, current: &Versioned) -> bool {
        let Some(view) = View::new(&current.state) else {
            tracing::error!("control state has an unusable or duplicate key hash; keeping the previous one");
            return false;
        };
        *self.view.write().expect("lock") = Arc::new(view);
        self.changes.send_modify(|n| *n += 1);
        true
    }

    /// Keeps the shared state in step: on each change notice, and every
    /// `poll` besides (the fallback when notices are lost). Ends when the
    /// store is dropped.
    pub fn spawn_sync(self: &Arc<Self>, poll: Duration) {
        let Backend::Shared { store, .. } = &self.backend else {
            return;
        };
        let store = Shared::clone(store);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut notices: Option<redis::aio::PubSubStream> = None;
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut warned_ms = 0;
            loop {
                if notices.is_none() {
                    notices = store.subscribe().await.ok();
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    notice = next_notice(&mut notices) => if notice.is_none() { notices = None },
                }
                let Some(keys) = weak.upgrade() else { return };
                if let Err(e) = keys.sync().await {
                    let now = now_ms();
                    if now.saturating_sub(warned_ms) >= 10_000 {
                        warned_ms = now;
                        tracing::warn!(error = %e, "control store unreachable; serving the last confirmed state within control.max_stale_ms");
                    }
                }
            }
        });
    }
}

async fn next_notice(notices: &mut Option<redis::aio::PubSubStream>) -> Option<redis::Msg> {
    use futures_util::StreamExt as _;
    match notices {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

fn shared_err(e: SharedError) -> KeyStoreError {
    KeyStoreError::Shared(e.to_string())
}

/// The record of a new key, its client identity checked.
fn new_record(
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
    Ok(ApiKeyRecord {
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
    })
}

fn index(records: &[ApiKeyRecord]) -> Option<HashMap<[u8; 32], Caller>> {
    let mut map = HashMap::with_capacity(records.len());
    for r in records {
        let bytes: [u8; 32] = hex::decode(&r.sha256).ok()?.try_into().ok()?;
        if map.insert(bytes, Arc::new(r.clone())).is_some() {
            return None;
        }
    }
    Some(map)
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
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

    #[tokio::test]
    async fn create_authenticate_revoke_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apikeys.json");
        let store = KeyStore::open(&path).unwrap();
        let (key, rec) = store.create("sync", grant(), None, None).await.unwrap();
        assert!(key.expose().starts_with(KEY_PREFIX));
        assert_eq!(store.authenticate(key.expose()).unwrap().id, rec.id);
        assert_eq!(store.authenticate("vk_nope").unwrap_err(), AuthError::Unknown);

        // Only the hash is on disk.
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(!on_disk.contains(key.expose()));
        assert!(on_disk.contains(&rec.sha256));

        store.revoke(&rec.id).await.unwrap();
        assert_eq!(store.authenticate(key.expose()).unwrap_err(), AuthError::Revoked);
        let reopened = KeyStore::open(&path).unwrap();
        assert_eq!(
            reopened.authenticate(key.expose()).unwrap_err(),
            AuthError::Revoked
        );
        assert!(matches!(
            reopened.revoke("key_0").await,
            Err(KeyStoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn expired_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("k.json")).unwrap();
        let (key, _) = store.create("short", grant(), Some(0), None).await.unwrap();
        assert_eq!(store.authenticate(key.expose()).unwrap_err(), AuthError::Expired);
        assert_eq!(format!("{key:?}"), "ApiKey([REDACTED])");
    }

    #[tokio::test]
    async fn old_key_files_load_and_bound_keys_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apikeys.json");
        let store = KeyStore::open(&path).unwrap();
        let (_, plain) = store.create("plain", grant(), None, None).await.unwrap();
        // A record written before source binding has no `allow_cidrs`.
        assert!(!std::fs::read_to_string(&path).unwrap().contains("allow_cidrs"));
        let nets = vec!["10.0.0.0/8".parse().unwrap()];
        let (_, bound) = store
            .create_restricted("bound", grant(), None, None, nets.clone())
            .await
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

    #[tokio::test]
    async fn revoke_by_name_needs_exactly_one_valid_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("k.json")).unwrap();
        assert!(matches!(
            store.revoke_by_name("sync").await,
            Err(KeyStoreError::NameNotFound(_))
        ));
        let (_, a) = store.create("sync", grant(), None, None).await.unwrap();
        let (_, _b) = store.create("sync", grant(), None, None).await.unwrap();
        assert!(matches!(
            store.revoke_by_name("sync").await,
            Err(KeyStoreError::NameAmbiguous { count: 2, .. })
        ));
        store.revoke(&a.id).await.unwrap();
        // Only valid keys count: the revoked one no longer makes it ambiguous.
        let revoked = store.revoke_by_name("sync").await.unwrap();
        assert_ne!(revoked.id, a.id);
        assert!(revoked.revoked_ms.is_some());
    }

    #[tokio::test]
    async fn rotate_hands_over_and_never_extends() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("k.json")).unwrap();
        let nets = vec!["127.0.0.0/8".parse().unwrap()];
        let day = 86_400_000;
        let (old_key, old) = store
            .create_restricted("sync", grant(), Some(30 * day), None, nets.clone())
            .await
            .unwrap();
        let (new_key, new, before) = store.rotate(&old.id, day, 3650 * day).await.unwrap();
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
        let (_, _, again) = store.rotate(&old.id, 10 * day, 3650 * day).await.unwrap();
        assert_eq!(again.expires_ms, Some(old_expiry));

        // Nothing to hand over from a revoked key.
        store.revoke(&old.id).await.unwrap();
        assert!(matches!(
            store.rotate(&old.id, day, day).await,
            Err(KeyStoreError::NotActive(_))
        ));
        assert!(matches!(
            store.rotate("key_0", day, day).await,
            Err(KeyStoreError::NotFound(_))
        ));
    }
}
