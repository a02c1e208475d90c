//! Quotas: per-tenant rate limits the platform team sets at run time,
//! enforced on one replica or a fleet.
//!
//! # Layout
//!
//! - [`policy`]: [`Policy`] — key `(tenant|*, vendor|*, read|write|*)`, rate,
//!   burst, enforce or shadow, aggregate caps — and most-specific-wins
//!   selection.
//! - [`limiter`]: the [`limiter::Limiter`] face and one check's
//!   [`Decision`]; GCRA behind it in two files:
//!   - [`limiter::embedded`]: [`limiter::Embedded`], governor keyed limiters
//!     in process, buckets carried over when a policy's numbers change, and
//!     vendor push-back pauses;
//!   - [`limiter::shared`]: [`limiter::Shared`], one atomic Lua script per
//!     check in Redis, with the `local` / `deny` / `allow` fallback
//!     ([`OnBackendError`]) when Redis is down.
//! - [`quotas`]: [`Quotas`], the engine: effective policies (config
//!   defaults overridden by run-time ones), their persistence and fleet sync,
//!   and the check every call goes through.
#![forbid(unsafe_code)]

pub mod limiter;
pub mod policy;
pub mod quotas;

pub use limiter::{Decision, OnBackendError};
pub use policy::{Mode, OperationMatch, Period, Policy, PolicyError};
pub use quotas::{BackendUnavailable, QuotaError, Quotas, Usage, Verdict};
