//! `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9): the client
//! authenticates with a short-lived JWT signed by the tenant's private key,
//! so no shared secret is ever sent to the provider.
//!
//! The key is the grant material's `private_key`, PKCS#8 PEM: P-256
//! (signed ES256) or RSA (RS256). The assertion names the client as issuer
//! and subject, the token (or revocation) endpoint as audience, a random
//! `jti`, and expires 60 s after it is made; each request gets a new one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject as _;
use valet_egress::GrantMaterial;
use zeroize::Zeroizing;

/// `client_assertion_type` for a JWT.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is good for.
const LIFETIME_S: u64 = 60;

/// Why no assertion could be signed. Never quotes the key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AssertionError {
    /// No private key in the grant material.
    #[error("the grant material has no private_key")]
    NoKey,
    /// The key is not PKCS#8 PEM of a P-256 or RSA key.
    #[error("the private_key is not a PKCS#8 PEM P-256 (ES256) or RSA (RS256) key")]
    Unreadable,
}

/// A loaded signing key.
enum Key {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

fn load(material: &GrantMaterial) -> Result<Key, AssertionError> {
    let pem = material.private_key.as_deref().ok_or(AssertionError::NoKey)?;
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| AssertionError::Unreadable)?;
    let der = Zeroizing::new(der.secret_pkcs8_der().to_vec());
    let rng = SystemRandom::new();
    if let Ok(key) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng) {
        return Ok(Key::Es256(key));
    }
    RsaKeyPair::from_pkcs8(&der)
        .map(Key::Rs256)
        .map_err(|_| AssertionError::Unreadable)
}

/// Checks that `material`'s key can sign assertions.
pub fn check(material: &GrantMaterial) -> Result<(), AssertionError> {
    load(material).map(drop)
}

/// A new assertion for `material`'s client, for `audience` (the endpoint
/// it is sent to), issued at `now_s` (Unix seconds).
pub fn sign(material: &GrantMaterial, audience: &str, now_s: u64) -> Result<String, AssertionError> {
    let key = load(material)?;
    let alg = match key {
        Key::Es256(_) => "ES256",
        Key::Rs256(_) => "RS256",
    };
    let mut header = serde_json::json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = &material.key_id {
        header["kid"] = kid.clone().into();
    }
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti).map_err(|_| AssertionError::Unreadable)?;
    let claims = serde_json::json!({
        "iss": material.client_id,
        "sub": material.client_id,
        "aud": audience,
        "jti": hex_of(&jti),
        "iat": now_s,
        "exp": now_s + LIFETIME_S,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = SystemRandom::new();
    let sig = match key {
        Key::Es256(k) => k
            .sign(&rng, signing_input.as_bytes())
            .map_err(|_| AssertionError::Unreadable)?
            .as_ref()
            .to_vec(),
        Key::Rs256(k) => {
            let mut sig = vec![0u8; k.public().modulus_len()];
            k.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| AssertionError::Unreadable)?;
            sig
        }
    };
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(pem: &str) -> GrantMaterial {
        let mut m = GrantMaterial::default();
        m.client_id = "c".into();
        m.private_key = Some(pem.into());
        m.key_id = Some("k1".into());
        m
    }

    #[test]
    fn an_es256_assertion_verifies_with_the_public_key() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let jwt = sign(&material(&pair.serialize_pem()), "https://idp/token", 1_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(
            (header["alg"].as_str(), header["kid"].as_str()),
            (Some("ES256"), Some("k1"))
        );
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://idp/token");
        assert_eq!(
            (claims["iss"].as_str(), claims["sub"].as_str()),
            (Some("c"), Some("c"))
        );
        assert_eq!(claims["exp"], 1_060);
        let public =
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pair.public_key_raw());
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .expect("the signature verifies");
        // Each assertion is new.
        assert_ne!(
            jwt,
            sign(&material(&pair.serialize_pem()), "https://idp/token", 1_000).unwrap()
        );
    }

    #[test]
    fn a_key_that_is_not_pkcs8_is_refused_without_quoting_it() {
        // A key made now, cut to half its first line: PEM, but no whole key.
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let lines: Vec<&str> = pem.lines().collect();
        let cut = &lines[1][..lines[1].len() / 2];
        let broken = format!("{}\n{cut}\n{}\n", lines[0], lines[lines.len() - 1]);
        let err = check(&material(&broken)).unwrap_err();
        assert!(!err.to_string().contains(cut));
        assert!(matches!(
            check(&GrantMaterial::default()),
            Err(AssertionError::NoKey)
        ));
    }
}
