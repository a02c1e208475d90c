//! Credentials: where vendor secrets live, how they are sealed, and the only
//! way to see one in plaintext — a [`Lease`] for one outbound call.
//!
//! # Layout
//!
//! - [`secret`]: [`Secret`], plaintext in zeroizing memory whose `Debug` and
//!   `Display` print `[REDACTED]`.
//! - [`master_key`]: the 32-byte master key, from a 0600 file (created on
//!   first start) or an environment variable (discouraged).
//! - [`envelope`]: AES-256-GCM sealing under a per-tenant key derived with
//!   HKDF-SHA256, AAD binding tenant, vendor and key id.
//! - [`fingerprint`]: a keyed hash that identifies a secret in logs and
//!   listings without revealing it.
//! - [`key`]: [`CredentialKey`] (tenant × vendor) and the name rules.
//! - [`store`]: the [`SecretStore`] trait: where ciphertexts are kept.
//! - [`local`]: [`LocalStore`], the embedded default: one file per credential
//!   under the state dir, atomically replaced, overwritten before deletion.
//! - [`aws`]: [`aws::AwsStore`], AWS Secrets Manager for fleets: one secret
//!   per tenant × vendor holding the sealed record, read through [`cache`].
//! - [`cache`]: the ciphertext cache — TTL, version check, single-flight
//!   background refresh, stale-if-error within a refresh budget, a bounded
//!   LRU map (moka).
//! - [`vault`]: [`Vault`], put / delete / list, and [`Vault::lease`] — the one
//!   function that decrypts, and only after the access was audited.
//! - [`rotation`]: [`Rotations`] — stage, verify (a [`rotation::Verifier`]
//!   the caller passes: the vendor call is egress's), then promote or
//!   discard, each step journaled; one rotation per credential at a time.
//!
//! Rules (see DESIGN.md, "Secrets: rules that never bend"): plaintext exists
//! only inside a [`Lease`]; nothing here caches or writes plaintext.
#![forbid(unsafe_code)]

pub mod aws;
pub mod cache;
pub mod envelope;
pub mod fingerprint;
pub mod key;
pub mod local;
pub mod master_key;
pub mod rotation;
pub mod secret;
pub mod store;
pub mod vault;

pub use envelope::{Envelope, SealError};
pub use fingerprint::Fingerprint;
pub use key::{CredentialKey, NameError, valid_name};
pub use local::LocalStore;
pub use master_key::{MasterKey, MasterKeyError};
pub use rotation::{RotationError, Rotations};
pub use secret::Secret;
pub use store::{CredentialMeta, SecretStore, StoreError, StoredCredential};
pub use vault::{Lease, LeaseAudit, LeaseEvent, Vault, VaultError};
