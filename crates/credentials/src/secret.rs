//! Plaintext secrets in memory that is zeroed on drop and never printed.

use std::fmt;
use zeroize::Zeroizing;

/// A plaintext secret: a vendor credential or key material.
///
/// The bytes are zeroed when the value is dropped. `Debug` and `Display`
/// print `[REDACTED]`, so a secret that ends up in a log line, an error or a
/// panic message shows nothing. The only way to read it is [`Secret::expose`],
/// which makes every use greppable.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps bytes; the caller's buffer moves in and is zeroed with the secret.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The plaintext. Keep the borrow short and never format it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty (never true for a stored credential).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The last 4 characters, for display, when the secret is long enough
    /// (12 bytes or more) that showing them gives little away; else empty.
    pub fn last4(&self) -> String {
        if self.0.len() < 12 {
            return String::new();
        }
        String::from_utf8_lossy(&self.0[self.0.len() - 4..]).into_owned()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self::new(s.into_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_secret() {
        let s = Secret::from("canary-secret-value".to_owned());
        assert_eq!(format!("{s:?}"), "[REDACTED]");
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert_eq!(s.expose(), b"canary-secret-value");
    }

    #[test]
    fn last4_only_for_long_secrets() {
        assert_eq!(Secret::from("short".to_owned()).last4(), "");
        assert_eq!(Secret::from("0123456789abcdef".to_owned()).last4(), "cdef");
    }
}
