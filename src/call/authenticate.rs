//! Step 1: who is calling. Shared by the Gateway and the Admin service.

use crate::status::Failure;
use tonic::metadata::MetadataMap;
use valet_access::{AuthError, Caller, KeyStore};

/// Authenticates `authorization: Bearer <api key>`.
pub fn caller(keys: &KeyStore, metadata: &MetadataMap) -> Result<Caller, Failure> {
    let value = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Missing)?;
    let (scheme, key) = value.trim().split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing.into());
    }
    Ok(keys.authenticate(key.trim())?)
}
