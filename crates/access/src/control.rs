//! The control state — API keys, client-certificate identities, tenant
//! status — and where it is kept.
//!
//! - **Embedded** (one replica): `apikeys.json` and `tenants.json` in the
//!   state dir, each rewritten atomically on every change.
//! - **Shared** (a fleet): one JSON document in Redis with a version
//!   counter ([`shared`]). A change is a compare-and-set on the version, so
//!   two admins on two replicas never undo each other; it is published on
//!   a channel, and every replica also polls the version, so each sees it
//!   within a second. Each replica keeps the last state it confirmed in
//!   memory and in `control.snapshot.json`, so a restart during a Redis
//!   outage still authenticates — for as long as the staleness bound
//!   allows, after which calls are refused rather than honour a key that
//!   may have been revoked meanwhile.
//!
//! Only hashes of keys are in the state; nothing in it authenticates.

pub mod shared;

use crate::keys::{ApiKeyRecord, KeyStoreError};
use crate::tenants::TenantStatus;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// Everything that decides who may call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlState {
    /// API keys in creation order (hashes only).
    pub keys: Vec<ApiKeyRecord>,
    /// Disabled tenants and integrations.
    #[serde(default)]
    pub tenants: Vec<TenantStatus>,
}

/// A state and the shared version it was read or written at (0: never
/// written to the shared store), with the token of that write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versioned {
    /// The shared store's version of `state`.
    pub version: u64,
    /// `version:nonce` of the write that stored it: two histories that
    /// reached the same number (after a Redis loss) still differ here, and
    /// a write whose reply was lost is recognised by it.
    #[serde(default)]
    pub token: String,
    /// The state.
    pub state: ControlState,
}

impl Versioned {
    /// `state` as the write after this one: the next version, a new token.
    pub fn successor(&self, state: ControlState) -> Self {
        let version = self.version + 1;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).expect("the OS random source is available");
        Self {
            version,
            token: format!("{version}:{}", hex::encode(nonce)),
            state,
        }
    }
}

/// The version a token names (`None` for a malformed one).
pub fn token_version(token: &str) -> Option<u64> {
    token.split(':').next()?.parse().ok()
}

/// The on-disk copy of the last state a fleet replica confirmed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    /// When the shared store last confirmed it, Unix milliseconds.
    confirmed_ms: u64,
    #[serde(flatten)]
    versioned: Versioned,
}

/// The embedded store's files.
#[derive(Debug, Clone)]
pub struct Embedded {
    keys: PathBuf,
    tenants: PathBuf,
}

impl Embedded {
    /// The files for the key file at `keys` (`tenants.json` beside it).
    pub fn new(keys: &Path) -> Self {
        Self {
            keys: keys.to_owned(),
            tenants: keys.with_file_name("tenants.json"),
        }
    }

    /// Reads both files (empty when missing).
    pub fn load(&self) -> Result<ControlState, KeyStoreError> {
        Ok(ControlState {
            keys: read_json(&self.keys)?.unwrap_or_default(),
            tenants: read_json(&self.tenants)?.unwrap_or_default(),
        })
    }

    /// Writes what changed between `old` and `new`.
    pub fn save(&self, old: &ControlState, new: &ControlState) -> Result<(), KeyStoreError> {
        if old.keys != new.keys || !self.keys.exists() {
            write_json(&self.keys, &new.keys)?;
        }
        if old.tenants != new.tenants {
            write_json(&self.tenants, &new.tenants)?;
        }
        Ok(())
    }

    /// Whether there is anything to import into a shared store.
    pub fn exists(&self) -> bool {
        self.keys.exists() || self.tenants.exists()
    }
}

/// Reads the snapshot at `path`: the state and when it was confirmed.
pub fn read_snapshot(path: &Path) -> Result<Option<(Versioned, u64)>, KeyStoreError> {
    Ok(read_json::<Snapshot>(path)?.map(|s| (s.versioned, s.confirmed_ms)))
}

/// Writes the snapshot at `path`.
pub fn write_snapshot(path: &Path, versioned: &Versioned, confirmed_ms: u64) -> Result<(), KeyStoreError> {
    write_json(
        path,
        &Snapshot {
            confirmed_ms,
            versioned: versioned.clone(),
        },
    )
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, KeyStoreError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| KeyStoreError::Corrupt(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyStoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), KeyStoreError> {
    let bytes = serde_json::to_vec_pretty(value).expect("control state serialises");
    valet_durable::write_atomically(path, &bytes).map_err(|source| KeyStoreError::Io {
        path: path.to_owned(),
        source,
    })
}
