//! The audit log: append-only JSON lines, each carrying the SHA-256 of the
//! line before it, so an edited, removed or reordered line breaks the chain.
//!
//! # Layout
//!
//! - [`event`]: [`Event`], what is recorded (credential put, delete and
//!   lease; API key create and revoke), never a secret.
//! - [`log`]: [`AuditLog`], the writer. Each entry is appended by its
//!   caller under one lock (written: it survives the process); one sync
//!   thread group-commits them (durable: one fsync covers every entry
//!   written since the last). [`Durability`] is when a call waits for which.
//! - [`segment`]: the log's files — sealed segments named by their first
//!   seq, then the current one — read as one.
//! - [`index`]: the signed index of sealed segments: whole segments cut
//!   from the end show, to whoever holds the master key.
//! - [`retention`]: entries past their class's retention removed from
//!   sealed segments, the removal recorded in the log first.
//! - [`query`]: [`query::scan`] and [`query::summarize`], the entries
//!   matching a [`query::Filter`], for an investigation.
//! - [`ship`]: [`ship::Shipper`], which tails the file and appends every
//!   durable entry to a Redis stream (off the box; the fleet's copy).
//! - [`anchor`]: the file checked against its shipped copy (`verify
//!   --anchor`): a cut tail or an edited last line shows.
//! - [`mod@verify`]: [`verify()`], walks a file and reports the first broken entry.
//!
//! Line format: `{"seq":N,"ts_ms":T,"prev":"<hex sha256 of previous line>",
//! "actor":"...","event":"...",...}`. The first entry's `prev` is 64 zeros.
#![forbid(unsafe_code)]

pub mod anchor;
pub mod event;
pub mod index;
pub mod log;
pub mod query;
pub mod retention;
pub mod segment;
pub mod ship;
pub mod verify;

pub use event::Event;
pub use log::{AuditError, AuditLog, Durability, DurableSeqs, Hold, Written};
pub use verify::{Verified, VerifyError, verify, verify_report};

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chain hash of one line (without its newline).
pub fn line_hash(line: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(line))
}
