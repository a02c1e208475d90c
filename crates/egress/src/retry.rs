//! When a failed attempt is tried again, and after how long.
//!
//! Only safe retries: the caller says whether the call may be repeated (a
//! READ, or a WRITE whose vendor dedupes by our idempotency key). Then a
//! connection that could not be made (nothing was sent) and the statuses in
//! `on_status` (429, 502, 503, 504 by default) are retried, after an
//! exponential backoff with full jitter, or after the vendor's `Retry-After`
//! when it gives one (seconds or an HTTP-date). A `Retry-After` longer than
//! `max_retry_after_ms`, or any wait that would end past the caller's
//! deadline, ends the retries: the caller gets the vendor's answer.
//!
//! A retry budget per vendor (`RetryBudget`) bounds retries to a share of
//! recent first attempts plus a small floor, over a one-second window, so a
//! vendor's brown-out cannot multiply the traffic sent to it and a reader of
//! the config can compute the worst case.

use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// A vendor's retry settings (`[vendors.retry]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 turns retries off.
    pub max_attempts: u32,
    /// The first backoff's upper bound; it doubles per retry.
    pub base_backoff_ms: u64,
    /// No backoff is longer than this.
    pub max_backoff_ms: u64,
    /// Vendor statuses that are retried.
    pub on_status: Vec<u16>,
    /// A `Retry-After` longer than this is not waited for.
    pub max_retry_after_ms: u64,
    /// Retries allowed, as a percentage of the first attempts in the last
    /// second.
    pub budget_percent: f32,
    /// Retries allowed in any second whatever the traffic.
    pub budget_min_per_sec: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_backoff_ms: 100,
            max_backoff_ms: 2_000,
            on_status: vec![429, 502, 503, 504],
            max_retry_after_ms: 10_000,
            budget_percent: 20.0,
            budget_min_per_sec: 10,
        }
    }
}

impl RetryPolicy {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if self.base_backoff_ms > self.max_backoff_ms {
            return Err("retry.base_backoff_ms must not exceed retry.max_backoff_ms".into());
        }
        if !(0.0..=1000.0).contains(&self.budget_percent) {
            return Err("retry.budget_percent must be between 0 and 1000".into());
        }
        if let Some(s) = self.on_status.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(format!("retry.on_status: {s} is not an HTTP status"));
        }
        Ok(())
    }

    /// The wait before retry number `retry` (1 for the first retry): a
    /// uniformly random time up to min(cap, base × 2^(retry−1)).
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_backoff_ms
            .saturating_mul(1u64 << retry.saturating_sub(1).min(32))
            .min(self.max_backoff_ms);
        Duration::from_millis(random_below(ceiling.saturating_add(1)))
    }

    /// How long to honour a `Retry-After` value; `None` when it is missing,
    /// unreadable, not in the future, or longer than allowed.
    pub fn retry_after(&self, value: Option<&str>, now: SystemTime) -> RetryAfter {
        match value.and_then(|v| retry_after(v, now)) {
            None => RetryAfter::Absent,
            Some(wait) if wait > Duration::from_millis(self.max_retry_after_ms) => RetryAfter::TooLong,
            Some(wait) => RetryAfter::Wait(wait),
        }
    }
}

/// What a vendor's `Retry-After` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// No usable value: back off as usual.
    Absent,
    /// Longer than the policy waits: do not retry.
    TooLong,
    /// Wait this long.
    Wait(Duration),
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date. Garbage, negative
/// numbers and past dates give `None`.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return (secs > 0).then(|| Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// The per-vendor retry budget: in any one-second window, retries are at
/// most `budget_percent` % of the first attempts in it plus
/// `budget_min_per_sec`. So N calls to a vendor that fails every attempt
/// cost at most N × (1 + percent/100) + min_per_sec × (seconds spanned + 1)
/// requests. (tower's `TpsBudget`, used before, keeps ten seconds of the
/// floor in reserve: 100 failing calls made 220 requests.)
///
/// The window slides: the previous second's counts weigh by how much of it
/// the window still covers.
pub(crate) struct RetryBudget {
    percent: f64,
    floor: f64,
    window: Mutex<Window>,
}

/// Counts for the current second and the one before it.
struct Window {
    /// Start of the current second.
    since: Instant,
    firsts: [u64; 2],
    retries: [u64; 2],
}

const SECOND: Duration = Duration::from_secs(1);

impl Window {
    /// Rolls forward to `now`; returns the weight of the previous second.
    fn roll(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= 2 * SECOND {
            *self = Window {
                since: now,
                firsts: [0; 2],
                retries: [0; 2],
            };
        } else if elapsed >= SECOND {
            self.since += SECOND;
            self.firsts = [0, self.firsts[0]];
            self.retries = [0, self.retries[0]];
        }
        let into = now.saturating_duration_since(self.since).as_secs_f64();
        (1.0 - into).max(0.0)
    }
}

impl RetryBudget {
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        Self {
            percent: f64::from(policy.budget_percent) / 100.0,
            floor: f64::from(policy.budget_min_per_sec),
            window: Mutex::new(Window {
                since: Instant::now(),
                firsts: [0; 2],
                retries: [0; 2],
            }),
        }
    }

    /// Counts a first attempt.
    pub(crate) fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Takes one retry from the budget; false when it is spent.
    pub(crate) fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    fn deposit_at(&self, now: Instant) {
        let mut w = self.window.lock().expect("lock");
        w.roll(now);
        w.firsts[0] += 1;
    }

    fn withdraw_at(&self, now: Instant) -> bool {
        let mut w = self.window.lock().expect("lock");
        let prev = w.roll(now);
        let count = |c: [u64; 2]| c[0] as f64 + c[1] as f64 * prev;
        if count(w.retries) + 1.0 > self.percent * count(w.firsts) + self.floor {
            return false;
        }
        w.retries[0] += 1;
        true
    }
}

fn random_below(n: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    u64::from_le_bytes(bytes) % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(" 5 ", now), Some(Duration::from_secs(5)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(90)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        for bad in ["-5", "0", "soon", "", "1.5", earlier.as_str()] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
        assert_eq!(
            retry_after("99999999999", now),
            Some(Duration::from_secs(99_999_999_999)),
            "capped by the caller"
        );
        let policy = RetryPolicy::default();
        assert_eq!(policy.retry_after(Some("99999999999"), now), RetryAfter::TooLong);
        assert_eq!(policy.retry_after(Some("garbage"), now), RetryAfter::Absent);
        assert_eq!(
            policy.retry_after(Some("2"), now),
            RetryAfter::Wait(Duration::from_secs(2))
        );
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_cap() {
        let policy = RetryPolicy {
            base_backoff_ms: 100,
            max_backoff_ms: 300,
            ..RetryPolicy::default()
        };
        for _ in 0..200 {
            assert!(policy.backoff(1) <= Duration::from_millis(100));
            assert!(policy.backoff(2) <= Duration::from_millis(200));
            assert!(policy.backoff(5) <= Duration::from_millis(300));
        }
        let distinct: std::collections::HashSet<_> = (0..50).map(|_| policy.backoff(3)).collect();
        assert!(distinct.len() > 10, "full jitter spreads the waits");
    }

    #[test]
    fn the_budget_runs_out_under_a_brown_out() {
        let policy = RetryPolicy {
            budget_percent: 20.0,
            budget_min_per_sec: 1,
            ..RetryPolicy::default()
        };
        let budget = RetryBudget::new(&policy);
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert!((20..=35).contains(&granted), "{granted} retries for 100 calls");
    }

    /// The worst case the README states: with the defaults (20 %, 10/s),
    /// 100 calls to a vendor that always fails get at most 20 + 10 retries.
    #[test]
    fn a_brown_out_gets_percent_plus_floor_per_second() {
        let budget = RetryBudget::new(&RetryPolicy::default());
        let start = Instant::now();
        let burst = |now: Instant| {
            for _ in 0..100 {
                budget.deposit_at(now);
            }
            (0..300).filter(|_| budget.withdraw_at(now)).count()
        };
        assert_eq!(burst(start), 30);
        // Two seconds later the window has moved on: the same again.
        let later = start + Duration::from_secs(2);
        assert_eq!(burst(later), 30);
        // Half a second into the next second, half of that burst still
        // counts: 50 first attempts and 30 retries → 10 + 10 − 15 = 5 more.
        let next = later + Duration::from_millis(1_500);
        let more = (0..300).filter(|_| budget.withdraw_at(next)).count();
        assert_eq!(more, 5);
    }
}
