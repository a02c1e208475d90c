//! OAuth 2.0 vendors: the access tokens Valet gets with each tenant's grant
//! material and sends in its place.
//!
//! # Layout
//!
//! - [`assertion`]: `private_key_jwt` client assertions (RFC 7523), signed
//!   ES256 or RS256 with the tenant's key.
//! - [`request`]: one token request (client credentials or refresh token,
//!   `client_secret_basic`, `client_secret_post` or `private_key_jwt`)
//!   through the vendor's
//!   guarded token endpoint, and how its answer is read.
//! - [`tokens`]: [`Tokens`] — held sealed per tenant × vendor × scope set,
//!   single-flight per tenant × vendor, refreshed before expiry in the
//!   background, a rotated refresh token stored before the new access
//!   token is used, refused grants remembered (`REAUTH_REQUIRED`), a busy
//!   endpoint given its pause, and revocation (RFC 7009) of everything held
//!   when a tenant is offboarded or contained.
//!
//! - [`shared`]: for a fleet, the tokens published in Redis and the lock
//!   (with a fencing token) under which one replica fetches for all.
//!
//! Mutual TLS (a vendor's `mtls`) is egress's: the tenant's certificate
//! travels with each request ([`valet_egress::ClientIdentity`]).
//!
//! Not here: DPoP (RFC 9449).
#![forbid(unsafe_code)]

pub mod assertion;
pub mod request;
pub mod shared;
pub mod tokens;

pub use tokens::{AccessToken, Fetch, Grants, Revoked, TokenError, Tokens};
