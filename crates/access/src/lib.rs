//! Access: who the caller is (API keys) and what it may do (grants).
//!
//! # Layout
//!
//! - [`grant`]: [`Grant`] and [`Operation`] — the tenants, vendors and
//!   operations a key may use, and whether it may administer Valet.
//! - [`keys`]: [`KeyStore`] — API keys, random and shown once, stored only as
//!   SHA-256 hashes with their last 4 characters; authentication is one hash
//!   and one map lookup.
//! - [`tenants`]: [`TenantStatus`] — the kill switch: a tenant, or one
//!   integration, disabled with a reason.
//! - [`control`]: where the keys and tenant status are kept — embedded
//!   files, or one versioned document in Redis shared by the fleet — and
//!   the on-disk snapshot a fleet replica restarts from.
//! - [`source`]: source binding — a key bound to networks
//!   (`allow_cidrs`) authenticates only from an address inside them.
//! - [`last_use`]: [`LastUse`] — when and from where each key last
//!   authenticated, in memory with lock-free updates, flushed to its own file.
//! - [`issue`]: [`KeyRequest`] — the rules a new key's scope must meet
//!   (valid names, configured vendors, a whole Gateway scope or none,
//!   source networks well-formed, lifetime within the deployment's maximum).
#![forbid(unsafe_code)]

pub mod control;
pub mod grant;
pub mod issue;
pub mod keys;
pub mod tenants;

pub mod last_use;
pub mod source;

pub use grant::{Denied, Grant, Operation, Permission};
pub use issue::{GrantError, KeyRequest, KeyScope};
pub use keys::{ApiKey, ApiKeyRecord, AuthError, Caller, KeyStore, KeyStoreError, SharedSettings};
pub use last_use::{LastUse, Use};
pub use source::{CidrError, SourceNotAllowed};
pub use tenants::{CompromisedCredential, TenantStatus};
