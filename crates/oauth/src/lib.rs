//! OAuth 2.0 vendors: the access tokens Valet gets with each tenant's grant
//! material and sends in its place.
//!
//! # Layout
//!
//! - [`request`]: one token request (client credentials or refresh token,
//!   `client_secret_basic` or `client_secret_post`) through the vendor's
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
//! Not here yet: `private_key_jwt`, mutual TLS and DPoP.
#![forbid(unsafe_code)]

pub mod request;
pub mod shared;
pub mod tokens;

pub use tokens::{AccessToken, Fetch, Grants, Revoked, TokenError, Tokens};
