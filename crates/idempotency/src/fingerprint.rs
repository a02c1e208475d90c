//! What makes two calls "the same request", and the key the vendor sees.

use crate::Scope;
use sha2::{Digest as _, Sha256};

/// Hex SHA-256 over method, path and query, the caller's headers in order,
/// and the body — each part length-prefixed, so no two requests collide.
/// A key reused with a request whose fingerprint differs is refused.
pub fn fingerprint<'a>(
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
) -> String {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(method.as_bytes());
    part(path.as_bytes());
    part(query.unwrap_or("").as_bytes());
    for (name, value) in headers {
        part(name.as_bytes());
        part(value);
    }
    part(body);
    hex::encode(h.finalize())
}

impl Scope {
    /// The key the vendor sees: per tenant, so two tenants' equal keys never
    /// collide at the vendor, and stable, so the vendor dedupes our retries.
    pub fn vendor_key(&self) -> String {
        let digest = Sha256::digest(format!("{}\u{1f}{}", self.tenant, self.key));
        format!("valet-{}", hex::encode(&digest[..16]))
    }

    /// The label a stored response is sealed under: a record sealed for one
    /// vendor and key does not open as another's.
    pub fn seal_label(&self) -> String {
        format!("idempotency/{}/{}", self.vendor, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(tenant: &str, key: &str) -> Scope {
        Scope {
            tenant: tenant.into(),
            vendor: "stripe".into(),
            key: key.into(),
        }
    }

    #[test]
    fn parts_are_length_prefixed() {
        let a = fingerprint("POST", "/ab", None, [("x", &b"1"[..])], b"");
        let b = fingerprint("POST", "/a", Some("b"), [("x", &b"1"[..])], b"");
        assert_ne!(a, b);
        assert_eq!(a, fingerprint("POST", "/ab", None, [("x", &b"1"[..])], b""));
    }

    #[test]
    fn vendor_keys_are_per_tenant() {
        assert_ne!(scope("acme", "k").vendor_key(), scope("globex", "k").vendor_key());
        assert_eq!(scope("acme", "k").vendor_key(), scope("acme", "k").vendor_key());
        assert!(scope("acme", "k").vendor_key().starts_with("valet-"));
        assert_eq!(scope("acme", "k").seal_label(), "idempotency/stripe/k");
    }
}
