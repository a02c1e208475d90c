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
//!   endpoint given its pause.
//!
//! Not here yet: the fleet-wide single flight (a Redis lock with a fencing
//! token and tokens shared through Redis), `private_key_jwt`, mutual TLS
//! and DPoP, and revocation at offboarding. Each replica fetches its own
//! tokens; with the `refresh_token` grant, run one replica per vendor whose
//! provider rotates refresh tokens (see the README).
#![forbid(unsafe_code)]

pub mod request;
pub mod tokens;

pub use tokens::{AccessToken, Fetch, Grants, TokenError, Tokens};
