//! Fingerprints: how logs, listings and the audit log name a secret.

use crate::master_key::MasterKey;
use crate::secret::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A keyed hash of a secret (HMAC-SHA256 under a key derived from the master
/// key, first 8 bytes in hex). Equal secrets give equal fingerprints, so a
/// rotation can be seen to change the value; without the master key a
/// fingerprint cannot be checked against a guessed secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of `secret` under `master`.
    pub fn of(master: &MasterKey, secret: &Secret) -> Self {
        let key = master.derive(b"fingerprint");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key[..]).expect("HMAC takes any key length");
        mac.update(secret.expose());
        let digest = mac.finalize().into_bytes();
        Self(hex::encode(&digest[..8]))
    }

    /// A fingerprint read back from storage metadata (a tag).
    pub fn from_hex(hex: &str) -> Self {
        Self(hex.to_owned())
    }

    /// The 16 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
