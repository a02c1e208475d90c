//! AES-256-GCM envelopes under per-tenant keys.
//!
//! Each tenant's key is derived from the master key with HKDF-SHA256
//! (`info = "tenant:" + tenant`), so one tenant's key opens nothing of
//! another's. The AAD binds tenant, vendor and master key id: a ciphertext
//! copied to another tenant or vendor slot fails to open instead of being sent
//! to the wrong place. Every seal uses a fresh random 96-bit nonce.

use crate::key::CredentialKey;
use crate::master_key::MasterKey;
use crate::secret::Secret;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// Envelope format version.
const VERSION: u32 = 1;
const NONCE_LEN: usize = 12;

/// A sealed secret as stored at rest: key id, nonce and ciphertext (with the
/// GCM tag), all public.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Format version.
    pub v: u32,
    /// Id of the master key the tenant key was derived from.
    pub kid: String,
    /// The 96-bit nonce, base64.
    pub nonce: String,
    /// Ciphertext and tag, base64.
    pub ct: String,
}

/// Why sealing or opening failed. Carries no secret and no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The envelope was sealed under another master key.
    #[error("sealed under master key {found}, but the loaded master key is {loaded}")]
    WrongMasterKey {
        /// The envelope's key id.
        found: String,
        /// The loaded key's id.
        loaded: String,
    },
    /// The envelope is malformed or was tampered with, or belongs to another
    /// tenant or vendor.
    #[error("ciphertext does not authenticate for this tenant and vendor")]
    Corrupt,
}

/// Seals `secret` for `key` under the tenant's derived key.
pub fn seal(master: &MasterKey, key: &CredentialKey, secret: &Secret) -> Envelope {
    let cipher = tenant_cipher(master, &key.tenant);
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the OS random source is available");
    let aad = aad(key, master.id());
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: secret.expose(),
                aad: &aad,
            },
        )
        .expect("AES-GCM encryption of a bounded message cannot fail");
    Envelope {
        v: VERSION,
        kid: master.id().to_owned(),
        nonce: STANDARD.encode(nonce),
        ct: STANDARD.encode(ct),
    }
}

/// Opens an envelope sealed for `key`.
pub fn open(master: &MasterKey, key: &CredentialKey, env: &Envelope) -> Result<Secret, SealError> {
    if env.kid != master.id() {
        return Err(SealError::WrongMasterKey {
            found: env.kid.clone(),
            loaded: master.id().to_owned(),
        });
    }
    if env.v != VERSION {
        return Err(SealError::Corrupt);
    }
    let nonce = STANDARD.decode(&env.nonce).map_err(|_| SealError::Corrupt)?;
    let ct = STANDARD.decode(&env.ct).map_err(|_| SealError::Corrupt)?;
    if nonce.len() != NONCE_LEN {
        return Err(SealError::Corrupt);
    }
    let aad = aad(key, &env.kid);
    let plain = tenant_cipher(master, &key.tenant)
        .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ct, aad: &aad })
        .map_err(|_| SealError::Corrupt)?;
    Ok(Secret::new(plain))
}

/// Seals other tenant data (stored vendor responses) under the tenant's key;
/// `label` names what it is and where it belongs, and must match to open.
pub fn seal_data(master: &MasterKey, tenant: &str, label: &str, data: &[u8]) -> Envelope {
    let cipher = tenant_cipher(master, tenant);
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the OS random source is available");
    let aad = data_aad(tenant, label, master.id());
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: data, aad: &aad })
        .expect("AES-GCM encryption of a bounded message cannot fail");
    Envelope {
        v: VERSION,
        kid: master.id().to_owned(),
        nonce: STANDARD.encode(nonce),
        ct: STANDARD.encode(ct),
    }
}

/// Opens data sealed with [`seal_data`] for the same tenant and label.
pub fn open_data(
    master: &MasterKey,
    tenant: &str,
    label: &str,
    env: &Envelope,
) -> Result<Vec<u8>, SealError> {
    if env.kid != master.id() {
        return Err(SealError::WrongMasterKey {
            found: env.kid.clone(),
            loaded: master.id().to_owned(),
        });
    }
    let nonce = STANDARD.decode(&env.nonce).map_err(|_| SealError::Corrupt)?;
    let ct = STANDARD.decode(&env.ct).map_err(|_| SealError::Corrupt)?;
    if nonce.len() != NONCE_LEN || env.v != VERSION {
        return Err(SealError::Corrupt);
    }
    let aad = data_aad(tenant, label, &env.kid);
    tenant_cipher(master, tenant)
        .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ct, aad: &aad })
        .map_err(|_| SealError::Corrupt)
}

fn data_aad(tenant: &str, label: &str, kid: &str) -> Vec<u8> {
    let mut aad = b"valet/data/v1".to_vec();
    for part in [tenant, label, kid] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

fn tenant_cipher(master: &MasterKey, tenant: &str) -> Aes256Gcm {
    let mut info = Vec::with_capacity(7 + tenant.len());
    info.extend_from_slice(b"tenant:");
    info.extend_from_slice(tenant.as_bytes());
    let key = master.derive(&info);
    Aes256Gcm::new_from_slice(&key[..]).expect("a 32-byte key fits AES-256")
}

/// Length-prefixed, so no choice of names can make two keys' AAD equal.
fn aad(key: &CredentialKey, kid: &str) -> Vec<u8> {
    let mut aad = b"valet/credential/v1".to_vec();
    for part in [key.tenant.as_str(), key.vendor.as_str(), kid] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::from("canary-envelope-secret".to_owned())
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let master = MasterKey::generate();
        let key = CredentialKey::new("acme", "stripe");
        let a = seal(&master, &key, &secret());
        let b = seal(&master, &key, &secret());
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ct, b.ct);
        assert_eq!(open(&master, &key, &a).unwrap().expose(), secret().expose());
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains("canary"));
    }

    #[test]
    fn moved_to_another_tenant_or_vendor_fails() {
        let master = MasterKey::generate();
        let env = seal(&master, &CredentialKey::new("acme", "stripe"), &secret());
        let other_tenant = CredentialKey::new("globex", "stripe");
        let other_vendor = CredentialKey::new("acme", "github");
        assert_eq!(
            open(&master, &other_tenant, &env).unwrap_err(),
            SealError::Corrupt
        );
        assert_eq!(
            open(&master, &other_vendor, &env).unwrap_err(),
            SealError::Corrupt
        );
    }

    #[test]
    fn tampering_and_wrong_master_key_fail() {
        let master = MasterKey::generate();
        let key = CredentialKey::new("acme", "stripe");
        let mut env = seal(&master, &key, &secret());
        let other = MasterKey::generate();
        assert!(matches!(
            open(&other, &key, &env),
            Err(SealError::WrongMasterKey { .. })
        ));
        let mut ct = STANDARD.decode(&env.ct).unwrap();
        ct[0] ^= 1;
        env.ct = STANDARD.encode(ct);
        assert_eq!(open(&master, &key, &env).unwrap_err(), SealError::Corrupt);
    }
}
