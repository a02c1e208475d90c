//! Access: who the caller is (API keys) and what it may do (grants).
//!
//! # Layout
//!
//! - [`grant`]: [`Grant`] and [`Operation`] — the tenants, vendors and
//!   operations a key may use, and whether it may administer Valet.
//! - [`keys`]: [`KeyStore`] — API keys, random and shown once, stored only as
//!   SHA-256 hashes with their last 4 characters; authentication is one hash
//!   and one map lookup.
//! - [`issue`]: [`KeyRequest`] — the rules a new key's scope must meet
//!   (valid names, configured vendors, a whole Gateway scope or none,
//!   lifetime at most ten years).
#![forbid(unsafe_code)]

pub mod grant;
pub mod issue;
pub mod keys;

pub use grant::{Denied, Grant, Operation, Permission};
pub use issue::{GrantError, KeyRequest};
pub use keys::{ApiKey, ApiKeyRecord, AuthError, Caller, KeyStore, KeyStoreError};
