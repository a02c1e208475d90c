//! GCRA limiters: in-process ([`Embedded`], governor) and shared
//! ([`Shared`], one Lua script per check in Redis).

use crate::policy::Policy;
use governor::clock::{Clock, DefaultClock, Reference as _};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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

type Keyed<C> = RateLimiter<String, Buckets, C, StateInformationMiddleware>;

/// A limiter's keyed state, shared with the limiter so that a change of the
/// policy's numbers can read every bucket and carry it over.
#[derive(Clone, Default)]
struct Buckets(Arc<DashMapStateStore<String>>);

impl StateStore for Buckets {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<String> for Buckets {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

/// One policy's limiter, with the numbers it was built for.
struct Built<C: Clock> {
    policy: Policy,
    limiter: Keyed<C>,
    buckets: Buckets,
    /// Governor counts a bucket's TAT from the limiter's creation, which lies
    /// between these two readings of the clock.
    started: (C::Instant, C::Instant),
}

/// In-process GCRA on governor's keyed limiters, one per policy, rebuilt when
/// the policy's numbers change — carrying every bucket over (see
/// [`carry_over`]), so a change never hands out a fresh burst. Idle buckets
/// are dropped periodically, so memory stays bounded by the active tenants.
pub struct Embedded<C: Clock = DefaultClock> {
    clock: C,
    /// Checks hold the read lock through the check, so a rebuild (write
    /// lock) sees every call counted by the old limiter.
    limiters: RwLock<HashMap<String, Built<C>>>,
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

/// A bucket's debt — how far its TAT lies ahead of now — under `old`,
/// restated for `new`: the calls it owes are kept, at most `new.burst` of
/// them, and repaid at `new`'s rate.
///
/// In tokens, the bucket keeps `new.burst - owed` (never below 0): for a
/// tighter policy (no faster, no larger burst) that is never more than the
/// old bucket held, and it refills no faster and up to no more, so no
/// sequence of calls gets more admitted than the old policy would have
/// admitted. Keeping the TAT itself would not do: a slower rate widens the
/// tolerance (`interval × (burst - 1)`) and the old TAT would fit in it.
/// Owing more than `new.burst` calls is more than the new policy can ever
/// owe, so that much is clamped rather than made to wait longer than the
/// old policy would have.
pub fn carry_over(debt: Duration, old: &Policy, new: &Policy) -> Duration {
    let (t_old, t_new) = (
        old.emission_interval().as_nanos().max(1),
        new.emission_interval().as_nanos(),
    );
    let owed = (debt.as_nanos() * t_new).div_ceil(t_old);
    let most = t_new * u128::from(new.burst);
    Duration::from_nanos(owed.min(most).min(u128::from(u64::MAX)) as u64)
}

/// A bucket's TAT as governor keeps it, without changing it.
fn read_tat(state: &InMemoryState) -> Option<Nanos> {
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), Option<Nanos>>)
        .err()
        .flatten()
}

impl<C: Clock + Clone + Send + Sync> Embedded<C>
where
    C::Instant: Send + Sync,
{
    /// A limiter on `clock` (tests drive a fake one).
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            limiters: RwLock::new(HashMap::new()),
            pauses: Mutex::new(HashMap::new()),
            checks: AtomicU64::new(0),
        }
    }

    /// A limiter for `policy`, with `previous`'s buckets carried over.
    fn build(&self, policy: &Policy, previous: Option<&Built<C>>) -> Built<C> {
        let quota = Quota::with_period(policy.emission_interval())
            .expect("a checked policy has a non-zero interval")
            .allow_burst(NonZeroU32::new(policy.burst).expect("a checked policy has a burst"));
        let buckets = Buckets::default();
        let before = self.clock.now();
        let limiter =
            RateLimiter::<String, Buckets, C, governor::middleware::NoOpMiddleware<C::Instant>>::new(
                quota,
                buckets.clone(),
                self.clock.clone(),
            )
            .with_middleware::<StateInformationMiddleware>();
        let after = self.clock.now();
        if let Some(old) = previous {
            let now = self.clock.now();
            let mut carried = 0usize;
            for entry in old.buckets.0.iter() {
                // The latest the old TAT can be; and the new one is counted
                // from the earliest the new start can be: both err towards
                // owing more, never less.
                let Some(tat) = read_tat(entry.value()) else {
                    continue;
                };
                let due = old.started.1 + tat;
                if due <= now {
                    continue; // full: nothing to carry
                }
                let debt = Duration::from_nanos(due.duration_since(now).as_u64());
                let owed = carry_over(debt, &old.policy, policy);
                let tat = (now + Nanos::from(owed)).duration_since(before);
                let _ = buckets
                    .0
                    .measure_and_replace(entry.key(), |_| Ok::<_, std::convert::Infallible>(((), tat)));
                carried += 1;
            }
            tracing::info!(policy = %policy, buckets = carried, "quota policy changed; buckets carried over");
        }
        Built {
            policy: policy.clone(),
            limiter,
            buckets,
            started: (before, after),
        }
    }

    /// The check itself, synchronous.
    pub fn decide(&self, bucket: &str, policy: &Policy) -> Decision {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for built in self.limiters.read().expect("lock").values() {
                built.limiter.retain_recent();
                built.limiter.shrink_to_fit();
            }
        }
        let id = policy.id();
        let key = bucket.to_owned();
        {
            let limiters = self.limiters.read().expect("lock");
            if let Some(built) = limiters.get(&id)
                && same_numbers(&built.policy, policy)
            {
                return self.decision(built.limiter.check_key(&key), policy);
            }
        }
        let mut limiters = self.limiters.write().expect("lock");
        let built = match limiters.remove(&id) {
            Some(built) if same_numbers(&built.policy, policy) => built, // rebuilt meanwhile
            previous => self.build(policy, previous.as_ref()),
        };
        let outcome = built.limiter.check_key(&key);
        limiters.insert(id, built);
        self.decision(outcome, policy)
    }

    fn decision(
        &self,
        outcome: Result<governor::middleware::StateSnapshot, governor::NotUntil<C::Instant>>,
        policy: &Policy,
    ) -> Decision {
        let t = policy.emission_interval();
        match outcome {
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
///
/// A bucket is stored as `tat:interval:burst` (µs, µs, calls), the numbers
/// of the policy it was last counted under. When the policy's numbers have
/// changed since, the debt (TAT − now) is carried over as
/// [`carry_over`] does in process: the calls owed are kept, at most the new
/// burst, repaid at the new interval — so a change never hands out a fresh
/// burst and a tighter policy never admits more than the old one would
/// have. (A bare number is a TAT written before the numbers were kept.)
const GCRA_STATE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * (burst - 1)
local tat = now
local converted = false
local stored = redis.call('GET', KEYS[1])
if stored then
  local s_tat, s_interval, s_burst = string.match(stored, '^(%d+):(%d+):(%d+)$')
  if s_tat then
    tat = tonumber(s_tat)
    s_interval = tonumber(s_interval)
    s_burst = tonumber(s_burst)
    if tat > now and (s_interval ~= interval or s_burst ~= burst) then
      local owed = math.ceil((tat - now) * interval / s_interval)
      if owed > interval * burst then owed = interval * burst end
      tat = now + owed
      converted = true
    end
  else
    tat = tonumber(stored) or now
  end
end
if tat < now then tat = now end
local function store(value_tat)
  redis.call('SET', KEYS[1], string.format('%d:%d:%d', value_tat, interval, burst),
    'PX', math.floor((value_tat - now) / 1000) + 1)
end
"#;

/// GCRA on one Redis key, atomically, with Redis's own clock so every
/// replica agrees; the vendor pause key (KEYS[2]) is checked in the same
/// round trip. Returns {allowed, remaining, reset_us, retry_after_us, paused}.
/// A refusal still stores a carried-over bucket, so the old numbers stop
/// counting from the first check under the new ones.
const CHECK_LUA: &str = r#"
local allow_at = tat - tolerance
if now < allow_at then
  if converted then store(tat) end
  return {0, 0, tat - now, allow_at - now, 0}
end
local new_tat = tat + interval
store(new_tat)
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

    fn per(rate: u32, period: Period, burst: u32) -> Policy {
        Policy {
            period,
            ..policy(rate, burst)
        }
    }

    #[test]
    fn a_tighter_burst_gives_no_fresh_burst() {
        let clock = FakeRelativeClock::default();
        let limiter = Embedded::with_clock(clock.clone());
        let old = per(1, Period::Hour, 5);
        let admitted = (0..6).filter(|_| limiter.decide("a", &old).allowed).count();
        assert_eq!(admitted, 5);
        let new = per(1, Period::Hour, 3);
        assert!((0..3).all(|_| !limiter.decide("a", &new).allowed));
        // The old policy would admit one more an hour later; so does the new.
        clock.advance(Duration::from_secs(3600));
        assert!(limiter.decide("a", &new).allowed);
        assert!(!limiter.decide("a", &new).allowed);
    }

    #[test]
    fn a_slower_rate_repays_at_the_new_rate() {
        let clock = FakeRelativeClock::default();
        let limiter = Embedded::with_clock(clock.clone());
        let old = per(10, Period::Second, 5);
        assert_eq!((0..5).filter(|_| limiter.decide("a", &old).allowed).count(), 5);
        let new = per(1, Period::Second, 5);
        let refused = limiter.decide("a", &new);
        assert!(!refused.allowed);
        assert!(
            refused.retry_after > Duration::from_millis(900),
            "{:?}",
            refused.retry_after
        );
        clock.advance(Duration::from_millis(500));
        assert!(
            !limiter.decide("a", &new).allowed,
            "the old rate would admit here"
        );
        clock.advance(Duration::from_millis(500));
        assert!(limiter.decide("a", &new).allowed);
    }

    /// Whatever the calls, after a change to a tighter policy (slower rate,
    /// smaller burst, or both) no prefix admits more than the old policy
    /// would have admitted from the same state.
    #[test]
    fn a_tighter_policy_never_admits_more_than_the_old() {
        let changes = [
            (per(10, Period::Second, 5), per(10, Period::Second, 2)),
            (per(10, Period::Second, 5), per(2, Period::Second, 5)),
            (per(10, Period::Second, 5), per(1, Period::Second, 1)),
            (per(5, Period::Second, 8), per(4, Period::Second, 7)),
            (per(1, Period::Hour, 5), per(1, Period::Hour, 3)),
        ];
        for (old, new) in changes {
            for used in 0..=old.burst + 1 {
                let clock = FakeRelativeClock::default();
                let changed = Embedded::with_clock(clock.clone());
                let kept = Embedded::with_clock(clock.clone());
                for _ in 0..used {
                    changed.decide("a", &old);
                    kept.decide("a", &old);
                }
                let (mut by_new, mut by_old) = (0u32, 0u32);
                // Calls every 37 ms for 6 s, with a quiet spell in between.
                for step in 0..160u32 {
                    if !(60..90).contains(&step) {
                        by_new += u32::from(changed.decide("a", &new).allowed);
                        by_old += u32::from(kept.decide("a", &old).allowed);
                        assert!(
                            by_new <= by_old,
                            "{old:?} -> {new:?}, {used} used: {by_new} > {by_old} at step {step}"
                        );
                    }
                    clock.advance(Duration::from_millis(37));
                }
            }
        }
    }

    #[test]
    fn loosening_keeps_what_was_used() {
        let limiter = Embedded::with_clock(FakeRelativeClock::default());
        let old = per(1, Period::Hour, 1);
        assert!(limiter.decide("a", &old).allowed);
        let new = per(1, Period::Hour, 5);
        let admitted = (0..6).filter(|_| limiter.decide("a", &new).allowed).count();
        assert_eq!(admitted, 4, "one of the five was used already");
    }

    #[test]
    fn carry_over_keeps_the_calls_owed() {
        let (old, new) = (per(10, Period::Second, 5), per(1, Period::Second, 3));
        // 2.5 calls owed at 100 ms each → 2.5 s at 1 s each.
        assert_eq!(
            carry_over(Duration::from_millis(250), &old, &new),
            Duration::from_millis(2500)
        );
        // At most the new burst.
        assert_eq!(
            carry_over(Duration::from_millis(500), &old, &new),
            Duration::from_secs(3)
        );
        assert_eq!(carry_over(Duration::ZERO, &old, &new), Duration::ZERO);
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
