//! Idempotency: a write reaches the vendor at most once per key.
//!
//! # Layout
//!
//! - this file: the record model — [`Scope`] (tenant × vendor × key, so one
//!   tenant never sees another's record), [`Record`] and its states, and
//!   [`Begin`], what a call may do with its key.
//! - [`embedded`]: [`Embedded`], records in a redb database under the state
//!   dir: every transition is committed (fsync'd) before it is reported, so
//!   records survive a restart and a `kill -9`; concurrent transitions share
//!   one transaction (group commit, `group.rs`).
//! - [`shared`]: [`Shared`], records in Redis for fleets, one Lua script per
//!   transition.
//! - [`store`]: [`Store`], either of them behind one face.
//! - [`fingerprint`](mod@fingerprint): what makes two calls the same request, and the
//!   per-tenant key the vendor sees.
//! - [`response`]: [`StoredResponse`], the vendor answer a record replays, in
//!   Valet's own versioned format (old records, encoded `CallResponse`s, are
//!   still read).
//!
//! States: a first call records `in_flight` (with a lease) before calling the
//! vendor; when the vendor answers — any status, 5xx included — the sealed
//! response is stored as `completed` and replayed for later calls with the
//! same key. A call that never reached the vendor removes its record. When
//! the outcome is unknown (a timeout after sending, a crash), the record
//! becomes `unknown`: retries are refused until the lease expires, and then
//! let through only if the vendor itself dedupes by our key.
#![forbid(unsafe_code)]

pub mod embedded;
pub mod fingerprint;
mod group;
pub mod response;
pub mod shared;
pub mod store;

pub use embedded::Embedded;
pub use fingerprint::fingerprint;
pub use response::{StoredHeader, StoredResponse};
pub use shared::Shared;
pub use store::Store;

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Whose record: tenant, vendor and the caller's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The tenant.
    pub tenant: String,
    /// The vendor.
    pub vendor: String,
    /// The caller's idempotency key.
    pub key: String,
}

impl Scope {
    /// The storage key: the three parts joined by a separator no tenant or
    /// vendor name and no key can contain.
    pub fn storage_key(&self) -> String {
        format!("{}\u{1f}{}\u{1f}{}", self.tenant, self.vendor, self.key)
    }
}

/// A record's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// A call with this key is talking to the vendor.
    InFlight {
        /// Unix ms after which the call is presumed lost.
        lease_until_ms: u64,
    },
    /// The vendor answered; the response, sealed under the tenant's key.
    Completed {
        /// The sealed response (base64).
        sealed: String,
    },
    /// The request may or may not have reached the vendor.
    Unknown {
        /// Unix ms until which retries are refused.
        lease_until_ms: u64,
    },
}

/// One key's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Hex SHA-256 of the request (method, path and query, headers, body).
    pub fingerprint: String,
    /// Where the call is.
    #[serde(flatten)]
    pub state: State,
    /// Unix ms when the record may be purged.
    pub expires_ms: u64,
}

/// What a call may do with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The key is now `in_flight` for this call: go to the vendor.
    Proceed,
    /// The vendor already answered: return this sealed response.
    Replay(Vec<u8>),
    /// Another call with the key is in flight.
    InFlight(Duration),
    /// The key was used with a different request.
    Reused,
    /// The outcome of an earlier call is unknown: retry after the duration,
    /// or `None` if retrying is never safe (the vendor does not dedupe).
    Unknown(Option<Duration>),
}

/// Timing of one `begin`.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    /// Now, Unix ms.
    pub now_ms: u64,
    /// How long an `in_flight` record holds the key.
    pub lease_ms: u64,
    /// How long records are kept.
    pub retention_ms: u64,
    /// Whether the vendor dedupes by the key we send, so a call whose
    /// outcome is unknown may be retried once its lease has run out.
    pub vendor_dedupes: bool,
}

/// When an unsettled record (in flight or unknown) may be purged: never
/// before its lease ends, and then only after a whole retention more. A
/// record that expired with the retention alone would let a retry through
/// while the first call is still talking to a slow vendor — a second write.
pub fn unsettled_expiry_ms(lease_until_ms: u64, retention_ms: u64) -> u64 {
    lease_until_ms.saturating_add(retention_ms)
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store: {0}")]
pub struct StoreError(pub String);

/// Decides `begin` for an existing record (shared by every store).
pub fn decide(existing: Option<&Record>, fingerprint: &str, terms: &Terms) -> Begin {
    use base64::Engine as _;
    let Some(record) = existing.filter(|r| r.expires_ms > terms.now_ms) else {
        return Begin::Proceed;
    };
    if record.fingerprint != fingerprint {
        return Begin::Reused;
    }
    let left = |until: u64| Duration::from_millis(until.saturating_sub(terms.now_ms));
    match &record.state {
        State::Completed { sealed } => base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map(Begin::Replay)
            .unwrap_or(Begin::Unknown(None)),
        State::InFlight { lease_until_ms } if *lease_until_ms > terms.now_ms => {
            Begin::InFlight(left(*lease_until_ms))
        }
        State::Unknown { lease_until_ms } | State::InFlight { lease_until_ms } => {
            if *lease_until_ms > terms.now_ms {
                Begin::Unknown(Some(left(*lease_until_ms)))
            } else if terms.vendor_dedupes {
                Begin::Proceed
            } else {
                Begin::Unknown(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(now_ms: u64, vendor_dedupes: bool) -> Terms {
        Terms {
            now_ms,
            lease_ms: 1_000,
            retention_ms: 10_000,
            vendor_dedupes,
        }
    }

    fn record(state: State) -> Record {
        Record {
            fingerprint: "f".into(),
            state,
            expires_ms: 10_000,
        }
    }

    #[test]
    fn decisions() {
        let t = terms(500, false);
        assert_eq!(decide(None, "f", &t), Begin::Proceed);
        let inflight = record(State::InFlight {
            lease_until_ms: 1_000,
        });
        assert_eq!(
            decide(Some(&inflight), "f", &t),
            Begin::InFlight(Duration::from_millis(500))
        );
        assert_eq!(decide(Some(&inflight), "g", &t), Begin::Reused);
        let unknown = record(State::Unknown {
            lease_until_ms: 1_000,
        });
        assert_eq!(
            decide(Some(&unknown), "f", &t),
            Begin::Unknown(Some(Duration::from_millis(500)))
        );
        assert_eq!(
            decide(Some(&unknown), "f", &terms(2_000, false)),
            Begin::Unknown(None)
        );
        assert_eq!(decide(Some(&unknown), "f", &terms(2_000, true)), Begin::Proceed);
        // A lost in-flight call (its lease ran out) is an unknown outcome.
        assert_eq!(
            decide(Some(&inflight), "f", &terms(2_000, false)),
            Begin::Unknown(None)
        );
        let done = record(State::Completed {
            sealed: "aGk=".into(),
        });
        assert_eq!(decide(Some(&done), "f", &t), Begin::Replay(b"hi".to_vec()));
        // Expired records are gone.
        assert_eq!(decide(Some(&done), "f", &terms(20_000, false)), Begin::Proceed);
    }
}
