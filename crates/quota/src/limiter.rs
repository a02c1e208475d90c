//! GCRA limiters: in-process ([`Embedded`], governor) and shared
//! ([`Shared`], one Lua script per check in Redis).

use crate::policy::Policy;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

type Keyed<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// Each policy's limiter, with the numbers it was built for.
type ByPolicy<C> = HashMap<String, (Policy, Arc<Keyed<C>>)>;

/// In-process GCRA on governor's keyed limiters, one per policy, rebuilt when
/// the policy's numbers change. Idle buckets are dropped periodically, so
/// memory stays bounded by the active tenants.
pub struct Embedded<C: Clock = DefaultClock> {
    clock: C,
    limiters: Mutex<ByPolicy<C>>,
    pauses: Mutex<HashMap<String, Instant>>,
    checks: AtomicU64,
}

impl Default for Embedded<DefaultClock> {
    fn default() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl<C: Clock> std::fmt::Debug for Embedded<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

/// How often (in checks) idle buckets are swept.
const SWEEP_EVERY: u64 = 1 << 16;

impl<C: Clock + Clone + Send + Sync> Embedded<C>
where
    C::Instant: Send + Sync,
{
    /// A limiter on `clock` (tests drive a fake one).
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            limiters: Mutex::new(HashMap::new()),
            pauses: Mutex::new(HashMap::new()),
            checks: AtomicU64::new(0),
        }
    }

    fn limiter(&self, policy: &Policy) -> Arc<Keyed<C>> {
        let mut limiters = self.limiters.lock().expect("lock");
        let id = policy.id();
        if let Some((known, limiter)) = limiters.get(&id)
            && same_numbers(known, policy)
        {
            return limiter.clone();
        }
        let quota = Quota::with_period(policy.emission_interval())
            .expect("a checked policy has a non-zero interval")
            .allow_burst(NonZeroU32::new(policy.burst).expect("a checked policy has a burst"));
        let limiter = Arc::new(
            RateLimiter::<
                String,
                DashMapStateStore<String>,
                C,
                governor::middleware::NoOpMiddleware<C::Instant>,
            >::new(quota, DashMapStateStore::default(), self.clock.clone())
            .with_middleware::<StateInformationMiddleware>(),
        );
        limiters.insert(id, (policy.clone(), limiter.clone()));
        limiter
    }

    /// The check itself, synchronous.
    pub fn decide(&self, bucket: &str, policy: &Policy) -> Decision {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for (_, limiter) in self.limiters.lock().expect("lock").values() {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
        let t = policy.emission_interval();
        match self.limiter(policy).check_key(&bucket.to_owned()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    remaining,
                    reset: t * (policy.burst - remaining.min(policy.burst)),
                    retry_after: Duration::ZERO,
                    paused: false,
                    unavailable: false,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    remaining: 0,
                    reset: wait + t * policy.burst.saturating_sub(1),
                    retry_after: wait,
                    paused: false,
                    unavailable: false,
                }
            }
        }
    }
}

impl<C: Clock> Embedded<C> {
    fn pause_left(&self, pause_key: &str) -> Option<Duration> {
        let mut pauses = self.pauses.lock().expect("lock");
        let now = Instant::now();
        match pauses.get(pause_key) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                pauses.remove(pause_key);
                None
            }
            None => None,
        }
    }
}

/// A refusal because the vendor asked us to back off.
fn paused(left: Duration) -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        reset: left,
        retry_after: left,
        paused: true,
        unavailable: false,
    }
}

fn same_numbers(a: &Policy, b: &Policy) -> bool {
    (a.rate, a.period, a.burst) == (b.rate, b.period, b.burst)
}

impl<C: Clock + Clone + Send + Sync> Limiter for Embedded<C>
where
    C::Instant: Send + Sync,
{
    fn check<'a>(
        &'a self,
        bucket: &'a str,
        pause_key: Option<&'a str>,
        policy: &'a Policy,
    ) -> CheckFuture<'a> {
        let decision = match pause_key.and_then(|k| self.pause_left(k)) {
            Some(left) => paused(left),
            None => self.decide(bucket, policy),
        };
        Box::pin(async move { Ok(decision) })
    }

    fn peek<'a>(&'a self, _bucket: &'a str, _policy: &'a Policy) -> PeekFuture<'a> {
        // governor offers no read without a check; the engine's record of the
        // last decision serves instead.
        Box::pin(async { None })
    }

    fn paused<'a>(
        &'a self,
        pause_key: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Duration>> + Send + 'a>> {
        let left = self.pause_left(pause_key);
        Box::pin(async move { left })
    }

    fn pause<'a>(
        &'a self,
        pause_key: &'a str,
        for_: Duration,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        let until = Instant::now() + for_;
        let mut pauses = self.pauses.lock().expect("lock");
        let entry = pauses.entry(pause_key.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
        Box::pin(async {})
    }
}

/// Redis's clock and the bucket's theoretical arrival time (TAT), shared
/// by both scripts. KEYS[1] is the bucket; ARGV is {interval_us, burst}.
const GCRA_STATE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
"#;

/// GCRA on one Redis key, atomically, with Redis's own clock so every
/// replica agrees; the vendor pause key (KEYS[2]) is checked in the same
/// round trip. Returns {allowed, remaining, reset_us, retry_after_us, paused}.
const CHECK_LUA: &str = r#"
local allow_at = tat - tolerance
if now < allow_at then
  return {0, 0, tat - now, allow_at - now, 0}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
local remaining = math.floor((tolerance - (new_tat - now)) / interval) + 1
if remaining < 0 then remaining = 0 end
return {1, remaining, new_tat - now, 0, 0}
"#;

/// Refuses, uncounted, while a vendor's push-back pause runs.
const PAUSE_LUA: &str = r#"
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then
  return {0, 0, 0, pause * 1000, 1}
end
"#;

/// A bucket's state without counting a call: {remaining, reset_us}.
const PEEK_LUA: &str = r#"
local remaining = math.floor((tolerance - (tat - now)) / interval) + 1
if remaining < 0 then remaining = 0 end
return {remaining, tat - now}
"#;

/// What to do when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendError {
    /// Fall back to an in-process limiter at `rate / replicas`.
    #[default]
    Local,
    /// Refuse every call.
    Deny,
    /// Admit every call.
    Allow,
}

/// How long Redis is skipped after it failed, before it is tried again.
const RETRY_REDIS_AFTER: Duration = Duration::from_secs(1);

/// A limiter shared by every replica through Redis.
pub struct Shared {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    peek: redis::Script,
    on_error: OnBackendError,
    replicas: u32,
    fallback: Embedded,
    down_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Connects to Redis at `url`.
    pub async fn connect(url: &str, on_error: OnBackendError, replicas: u32) -> Result<Self, BackendError> {
        let client = redis::Client::open(url).map_err(|e| BackendError(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| BackendError(e.to_string()))?;
        Ok(Self {
            conn,
            script: redis::Script::new(&format!("{PAUSE_LUA}{GCRA_STATE_LUA}{CHECK_LUA}")),
            peek: redis::Script::new(&format!("{GCRA_STATE_LUA}{PEEK_LUA}")),
            on_error,
            replicas: replicas.max(1),
            fallback: Embedded::default(),
            down_until: Mutex::new(None),
        })
    }

    /// A connection for policy storage.
    pub fn connection(&self) -> redis::aio::ConnectionManager {
        self.conn.clone()
    }

    fn skipping_redis(&self) -> bool {
        let mut down = self.down_until.lock().expect("lock");
        match *down {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *down = None;
                false
            }
            None => false,
        }
    }

    /// Until Redis is tried again after a failure (at least 1 ms).
    fn retry_redis_in(&self) -> Duration {
        let down = *self.down_until.lock().expect("lock");
        down.map_or(RETRY_REDIS_AFTER, |until| {
            until.saturating_duration_since(Instant::now())
        })
        .max(Duration::from_millis(1))
    }

    fn failed(&self, err: &redis::RedisError) {
        let mut down = self.down_until.lock().expect("lock");
        if down.is_none() {
            tracing::warn!(error = %err, fallback = ?self.on_error, "quota backend unavailable; using the fallback");
        }
        *down = Some(Instant::now() + RETRY_REDIS_AFTER);
    }

    async fn gcra(
        &self,
        bucket: &str,
        pause_key: &str,
        policy: &Policy,
    ) -> Result<Decision, redis::RedisError> {
        let mut conn = self.conn.clone();
        let answer: Vec<i64> = self
            .script
            .key(format!("valet:quota:{bucket}"))
            .key(format!("valet:pause:{pause_key}"))
            .arg(policy.emission_interval().as_micros() as u64)
            .arg(policy.burst)
            .invoke_async(&mut conn)
            .await?;
        let us = |i: usize| Duration::from_micros(answer.get(i).copied().unwrap_or(0).max(0) as u64);
        Ok(Decision {
            allowed: answer.first() == Some(&1),
            remaining: answer.get(1).copied().unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
            reset: us(2),
            retry_after: us(3),
            paused: answer.get(4) == Some(&1),
            unavailable: false,
        })
    }

    fn fallback(&self, bucket: &str, policy: &Policy) -> Decision {
        match self.on_error {
            OnBackendError::Allow => Decision {
                allowed: true,
                remaining: policy.burst,
                reset: Duration::ZERO,
                retry_after: Duration::ZERO,
                paused: false,
                unavailable: false,
            },
            OnBackendError::Deny => {
                // Until Redis is tried again; a retry before then meets the
                // same refusal.
                let wait = self.retry_redis_in();
                Decision {
                    allowed: false,
                    remaining: 0,
                    reset: wait,
                    retry_after: wait,
                    paused: false,
                    unavailable: true,
                }
            }
            OnBackendError::Local => {
                let share = Policy {
                    rate: (policy.rate / self.replicas).max(1),
                    burst: (policy.burst / self.replicas).max(1),
                    ..policy.clone()
                };
                self.fallback.decide(bucket, &share)
            }
        }
    }
}

impl Limiter for Shared {
    /// Whether the fallback is in use right now.
    fn degraded(&self) -> bool {
        self.down_until.lock().expect("lock").is_some()
    }

    /// The GCRA check and the pause check in one round trip.
    fn check<'a>(
        &'a self,
        bucket: &'a str,
        pause_key: Option<&'a str>,
        policy: &'a Policy,
    ) -> CheckFuture<'a> {
        Box::pin(async move {
            if !self.skipping_redis() {
                match self.gcra(bucket, pause_key.unwrap_or("-"), policy).await {
                    Ok(d) => return Ok(d),
                    Err(e) => self.failed(&e),
                }
            }
            if let Some(left) = pause_key.and_then(|k| self.fallback.pause_left(k)) {
                return Ok(paused(left));
            }
            Ok(self.fallback(bucket, policy))
        })
    }

    fn peek<'a>(&'a self, bucket: &'a str, policy: &'a Policy) -> PeekFuture<'a> {
        Box::pin(async move {
            if self.skipping_redis() {
                return None;
            }
            let mut conn = self.conn.clone();
            let answer: Vec<i64> = self
                .peek
                .key(format!("valet:quota:{bucket}"))
                .arg(policy.emission_interval().as_micros() as u64)
                .arg(policy.burst)
                .invoke_async(&mut conn)
                .await
                .ok()?;
            Some(Decision {
                allowed: true,
                remaining: answer.first().copied().unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
                reset: Duration::from_micros(answer.get(1).copied().unwrap_or(0).max(0) as u64),
                retry_after: Duration::ZERO,
                paused: false,
                unavailable: false,
            })
        })
    }

    fn paused<'a>(
        &'a self,
        pause_key: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Duration>> + Send + 'a>> {
        Box::pin(async move {
            if self.skipping_redis() {
                return self.fallback.paused(pause_key).await;
            }
            let mut conn = self.conn.clone();
            match redis::cmd("PTTL")
                .arg(format!("valet:pause:{pause_key}"))
                .query_async::<i64>(&mut conn)
                .await
            {
                Ok(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
                Ok(_) => None,
                Err(e) => {
                    self.failed(&e);
                    self.fallback.paused(pause_key).await
                }
            }
        })
    }

    fn pause<'a>(
        &'a self,
        pause_key: &'a str,
        for_: Duration,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            self.fallback.pause(pause_key, for_).await;
            let mut conn = self.conn.clone();
            let ms = for_.as_millis().max(1) as u64;
            let set: Result<(), _> = redis::cmd("SET")
                .arg(format!("valet:pause:{pause_key}"))
                .arg(1)
                .arg("PX")
                .arg(ms)
                .query_async(&mut conn)
                .await;
            if let Err(e) = set {
                self.failed(&e);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, OperationMatch, Period};
    use governor::clock::FakeRelativeClock;

    fn policy(rate: u32, burst: u32) -> Policy {
        Policy {
            tenant: "*".into(),
            vendor: "v".into(),
            operation: OperationMatch::Any,
            rate,
            period: Period::Second,
            burst,
            mode: Mode::Enforce,
            aggregate: false,
        }
    }

    #[test]
    fn burst_then_the_steady_rate() {
        let clock = FakeRelativeClock::default();
        let limiter = Embedded::with_clock(clock.clone());
        let p = policy(10, 5);
        // A full burst at once, then refusals.
        let admitted = (0..20).filter(|_| limiter.decide("a", &p).allowed).count();
        assert_eq!(admitted, 5);
        let refused = limiter.decide("a", &p);
        assert!(
            !refused.allowed
                && refused.retry_after > Duration::ZERO
                && refused.retry_after <= Duration::from_millis(100)
        );
        // Then 10 per second: over 3 s of driven time, 30 more (±1).
        let mut steady = 0;
        for _ in 0..300 {
            clock.advance(Duration::from_millis(10));
            if limiter.decide("a", &p).allowed {
                steady += 1;
            }
        }
        assert!((29..=31).contains(&steady), "{steady}");
        // Another bucket is untouched.
        assert_eq!(limiter.decide("b", &p).remaining, 4);
    }

    #[tokio::test]
    async fn a_pause_refuses_without_counting() {
        let limiter = Embedded::default();
        let p = policy(10, 2);
        limiter.pause("acme/v", Duration::from_secs(30)).await;
        let d = limiter.check("acme", Some("acme/v"), &p).await.unwrap();
        assert!(d.paused && !d.allowed && d.retry_after > Duration::from_secs(29));
        assert!(
            limiter
                .check("globex", Some("globex/v"), &p)
                .await
                .unwrap()
                .allowed
        );
        assert_eq!(
            limiter.decide("acme", &p).remaining,
            1,
            "the paused call was not counted"
        );
    }
}
