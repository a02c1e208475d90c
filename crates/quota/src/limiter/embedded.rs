//! [`Embedded`]: in-process GCRA on governor's keyed limiters, one per
//! policy, for a single replica (and as [`Shared`](super::Shared)'s fallback
//! while Redis is down).

use super::{CheckFuture, Decision, Limiter, PeekFuture, paused};
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
    pub(crate) fn pause_left(&self, pause_key: &str) -> Option<Duration> {
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
