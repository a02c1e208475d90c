//! GCRA limiters behind one face, [`Limiter`], so the engine holds either
//! as a trait object.
//!
//! # Layout
//!
//! - this file: [`Decision`] (one check's answer), [`BackendError`] and the
//!   [`Limiter`] trait.
//! - [`embedded`]: [`Embedded`], in process on governor's keyed limiters,
//!   rebuilt with every bucket carried over ([`carry_over`]) when a policy's
//!   numbers change; vendor push-back pauses kept in memory.
//! - [`shared`]: [`Shared`], one atomic Lua script per check in Redis (with
//!   Redis's clock, so every replica agrees), and the [`OnBackendError`]
//!   fallback to an [`Embedded`] share while Redis is down.

pub mod embedded;
pub mod shared;

pub use embedded::{Embedded, carry_over};
pub use shared::{OnBackendError, Shared};

use crate::policy::Policy;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// One check's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the call is within the limit.
    pub allowed: bool,
    /// Calls still admissible right now after this one.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When refused: until the next call would be admitted.
    pub retry_after: Duration,
    /// Refused because the vendor asked us to back off (a 429), not by the
    /// policy; nothing was counted.
    pub paused: bool,
    /// Refused because the shared backend cannot answer and
    /// `on_backend_error = "deny"`: nothing was counted, and the tenant's
    /// usage had nothing to do with it.
    pub unavailable: bool,
}

/// Why the shared backend could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("quota backend: {0}")]
pub struct BackendError(pub String);

/// A boxed future (the engine holds limiters as trait objects).
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send + 'a>>;

/// A boxed future for [`Limiter::peek`].
pub type PeekFuture<'a> = Pin<Box<dyn Future<Output = Option<Decision>> + Send + 'a>>;

/// Checks one call against one bucket of one policy.
pub trait Limiter: Send + Sync {
    /// Counts a call in `bucket` under `policy` — unless `pause_key` (tenant ×
    /// vendor) is paused by a vendor's push-back, which refuses it uncounted.
    fn check<'a>(
        &'a self,
        bucket: &'a str,
        pause_key: Option<&'a str>,
        policy: &'a Policy,
    ) -> CheckFuture<'a>;
    /// The bucket's state now, counting nothing; `None` when this limiter
    /// cannot tell (the engine then reports what it last saw).
    fn peek<'a>(&'a self, bucket: &'a str, policy: &'a Policy) -> PeekFuture<'a>;
    /// Whether calls for `pause_key` are paused by a vendor's push-back, and
    /// for how long; `None` if not.
    fn paused<'a>(
        &'a self,
        pause_key: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Duration>> + Send + 'a>>;
    /// Pauses `pause_key` for `for_`.
    fn pause<'a>(
        &'a self,
        pause_key: &'a str,
        for_: Duration,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
    /// Whether a fallback stands in for the real backend right now.
    fn degraded(&self) -> bool {
        false
    }
}

/// A refusal because the vendor asked us to back off.
pub(crate) fn paused(left: Duration) -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        reset: left,
        retry_after: left,
        paused: true,
        unavailable: false,
    }
}
