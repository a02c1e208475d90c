//! The master key every tenant key is derived from.
//!
//! It comes from a file (created with mode 0600 on first start) or, where a
//! file is impossible, from an environment variable — allowed but warned
//! about, because orchestrators and crash reports dump environments. It is
//! never read from the config file. By default the file sits in the state
//! dir; point `secrets.master_key` elsewhere (another volume, a secrets
//! manager) to keep key and ciphertexts apart.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Length of the master key and of every derived key, in bytes.
pub const KEY_LEN: usize = 32;

/// Why the master key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The key file could not be read, created or written.
    #[error("master key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file is readable by group or others.
    #[error("master key file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The file or variable does not hold 32 bytes in base64.
    #[error("master key from {source_name} is not 32 bytes of base64")]
    Malformed {
        /// The file path or variable name (never the value).
        source_name: String,
    },
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
}

/// The 32-byte master key, zeroed on drop and never printed.
pub struct MasterKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    id: String,
}

impl MasterKey {
    /// A key from raw bytes (used by tests and by key sources).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let bytes = Zeroizing::new(bytes);
        let id = key_id(&bytes);
        Self { bytes, id }
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut bytes[..]).expect("the OS random source is available");
        Self::from_bytes(*bytes)
    }

    /// Loads the key file, or creates it with mode 0600 when it does not exist.
    /// Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), MasterKeyError> {
        let io = |source| MasterKeyError::Io {
            path: path.to_owned(),
            source,
        };
        match fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(MasterKeyError::Permissions {
                        path: path.to_owned(),
                        mode,
                    });
                }
                let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
                Ok((Self::decode(text.trim(), &path.display().to_string())?, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                let text = Zeroizing::new(format!("{}\n", STANDARD.encode(*key.bytes)));
                // Never half-written, never replacing a key another process
                // just created.
                valet_durable::create_new(path, text.as_bytes()).map_err(io)?;
                Ok((key, true))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Reads the key from an environment variable holding 32 bytes in base64.
    // The config's `master_key = { env = "..." }` names this variable: the
    // read is the configured source, and its value goes straight into
    // zeroizing memory.
    #[allow(clippy::disallowed_methods)]
    pub fn from_env(var: &str) -> Result<Self, MasterKeyError> {
        let text =
            Zeroizing::new(std::env::var(var).map_err(|_| MasterKeyError::EnvMissing(var.to_owned()))?);
        Self::decode(text.trim(), var)
    }

    /// A key from 32 bytes in base64 read from `source_name` (a secret's
    /// name; never the value).
    pub fn from_base64(text: &str, source_name: &str) -> Result<Self, MasterKeyError> {
        Self::decode(text.trim(), source_name)
    }

    fn decode(text: &str, source_name: &str) -> Result<Self, MasterKeyError> {
        let malformed = || MasterKeyError::Malformed {
            source_name: source_name.to_owned(),
        };
        let raw = Zeroizing::new(STANDARD.decode(text).map_err(|_| malformed())?);
        let bytes: [u8; KEY_LEN] = raw.as_slice().try_into().map_err(|_| malformed())?;
        Ok(Self::from_bytes(bytes))
    }

    /// A short public id of this key (8 hex digits), stored in every envelope
    /// so a ciphertext sealed under another key is recognised as such.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Derives a 32-byte key for one purpose (HKDF-SHA256; `info` names the
    /// purpose and, for tenant keys, the tenant).
    pub fn derive(&self, info: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        let hk = Hkdf::<Sha256>::new(Some(b"valet/v1"), &self.bytes[..]);
        let mut okm = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand(info, &mut okm[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }
}

fn key_id(bytes: &[u8; KEY_LEN]) -> String {
    let hk = Hkdf::<Sha256>::new(Some(b"valet/v1"), &bytes[..]);
    let mut id = [0u8; 4];
    hk.expand(b"key-id", &mut id)
        .expect("4 bytes is a valid HKDF-SHA256 output length");
    hex::encode(id)
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("bytes", &"[REDACTED]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_with_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (k1, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.id(), k2.id());
        assert_eq!(*k1.derive(b"x"), *k2.derive(b"x"));
    }

    #[test]
    fn refuses_a_group_readable_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, MasterKeyError::Permissions { .. }), "{err}");
    }

    #[test]
    fn debug_is_redacted() {
        let key = MasterKey::generate();
        let shown = format!("{key:?}");
        assert!(shown.contains("REDACTED") && shown.contains(key.id()));
    }
}
