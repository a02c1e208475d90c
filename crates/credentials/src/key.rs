//! Names of tenants and vendors, and the key a credential is stored under.

use std::fmt;

/// Why a tenant or vendor name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("must be at most {MAX_NAME_LEN} characters")]
    TooLong,
    /// The name has a character outside `[A-Za-z0-9._-]` or starts with `.`,
    /// `_` or `-`.
    #[error("must be letters, digits, '.', '_' or '-', starting with a letter or digit")]
    BadCharacter,
}

/// The longest tenant or vendor name.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a tenant or vendor name: 1-128 characters of `[A-Za-z0-9._-]`,
/// starting with a letter or digit. Names become file names and Secrets
/// Manager path segments, so nothing else is allowed.
pub fn valid_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let first = bytes.first().ok_or(NameError::Empty)?;
    if bytes.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if !first.is_ascii_alphanumeric() || !bytes.iter().all(allowed) {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

/// Which credential: the tenant that owns it and the vendor it is sent to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialKey {
    /// The owning tenant.
    pub tenant: String,
    /// The vendor the credential is for.
    pub vendor: String,
}

impl CredentialKey {
    /// A key from names already checked with [`valid_name`].
    pub fn new(tenant: impl Into<String>, vendor: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            vendor: vendor.into(),
        }
    }
}

impl fmt::Display for CredentialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.vendor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("acme-corp.eu_1").is_ok());
        assert_eq!(valid_name(""), Err(NameError::Empty));
        assert_eq!(valid_name(".."), Err(NameError::BadCharacter));
        assert_eq!(valid_name("a/b"), Err(NameError::BadCharacter));
        assert_eq!(valid_name("-a"), Err(NameError::BadCharacter));
        assert_eq!(valid_name(&"a".repeat(129)), Err(NameError::TooLong));
    }
}
