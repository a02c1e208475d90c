//! A circuit breaker per vendor: stop sending to a vendor that is failing,
//! and find out cheaply when it has recovered.
//!
//! Closed, it counts outcomes. It opens after `consecutive_failures`
//! failures in a row, or when at least `min_calls` calls in the last
//! `window_ms` failed at `failure_ratio` or more. Failures are 5xx answers,
//! timeouts and connection errors; a 4xx is the caller's problem and does not
//! count. Open, every attempt fails fast (UNAVAILABLE `VENDOR_CIRCUIT_OPEN`
//! with a retry-after) for `open_ms`; then it is half-open: up to
//! `half_open_probes` calls go through at once; that many successes close it,
//! one failure opens it again.

use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets the failure-ratio window is counted in.
const BUCKETS: usize = 10;

/// A vendor's breaker settings (`[vendors.breaker]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerPolicy {
    /// Failures in a row that open the circuit (0: never by count).
    pub consecutive_failures: u32,
    /// Failure ratio over the window that opens it (0 or above 1: never).
    pub failure_ratio: f64,
    /// The window the ratio is measured over.
    pub window_ms: u64,
    /// Fewest calls in the window before the ratio counts.
    pub min_calls: u32,
    /// How long it stays open before probing.
    pub open_ms: u64,
    /// Probe calls let through when half-open; that many successes close it.
    pub half_open_probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window_ms: 10_000,
            min_calls: 20,
            open_ms: 5_000,
            half_open_probes: 3,
        }
    }
}

impl BreakerPolicy {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.open_ms == 0 || self.window_ms == 0 {
            return Err("breaker.open_ms and breaker.window_ms must be above 0".into());
        }
        if self.half_open_probes == 0 {
            return Err("breaker.half_open_probes must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.failure_ratio) {
            return Err("breaker.failure_ratio must be between 0.0 and 1.0".into());
        }
        Ok(())
    }
}

/// What an attempt's result means to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The vendor answered well (or answered a 4xx: it is up).
    Success,
    /// A 5xx, a timeout or a connection error.
    Failure,
    /// Nothing learnt about the vendor (the caller's deadline ran out, the
    /// attempt was abandoned): counted neither way.
    Neutral,
}

/// The breaker's state, for metrics and spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few probe calls flow.
    HalfOpen,
}

impl BreakerState {
    /// The label: `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Permission to make one attempt; hand it back with [`Ticket::record`].
/// A ticket dropped unrecorded (the call was cancelled) counts as
/// [`Verdict::Neutral`], so an abandoned probe frees its slot.
#[derive(Debug)]
#[must_use]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    /// The half-open period this probe belongs to; `None` when closed.
    probe: Option<u64>,
    recorded: bool,
}

impl Ticket<'_> {
    /// Records the attempt's result.
    pub fn record(mut self, verdict: Verdict) {
        self.recorded = true;
        self.breaker.record(self.probe, verdict);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(self.probe, Verdict::Neutral);
        }
    }
}

enum Mode {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        generation: u64,
        in_flight: u32,
        succeeded: u32,
    },
}

struct State {
    mode: Mode,
    /// Counts half-open periods, so a late probe cannot vote in a later one.
    generation: u64,
    consecutive: u32,
    /// (calls, failures) per bucket, and when the newest bucket began.
    buckets: [(u32, u32); BUCKETS],
    newest: usize,
    newest_started: Instant,
}

/// One vendor's breaker.
pub struct Breaker {
    policy: BreakerPolicy,
    state: Mutex<State>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            state: Mutex::new(State {
                mode: Mode::Closed,
                generation: 0,
                consecutive: 0,
                buckets: [(0, 0); BUCKETS],
                newest: 0,
                newest_started: Instant::now(),
            }),
        }
    }

    /// A ticket for one attempt, or how long until one may be tried.
    pub fn admit(&self) -> Result<Ticket<'_>, Duration> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("lock");
        let probe = match &mut state.mode {
            Mode::Closed => None,
            Mode::Open { until } if now < *until => return Err(*until - now),
            Mode::Open { .. } => {
                state.generation += 1;
                let generation = state.generation;
                state.mode = Mode::HalfOpen {
                    generation,
                    in_flight: 1,
                    succeeded: 0,
                };
                Some(generation)
            }
            Mode::HalfOpen {
                generation,
                in_flight,
                ..
            } if *in_flight < self.policy.half_open_probes => {
                *in_flight += 1;
                Some(*generation)
            }
            // All probes are out; they answer within the attempt timeout.
            Mode::HalfOpen { .. } => return Err(Duration::from_millis(self.policy.open_ms.min(1_000))),
        };
        Ok(Ticket {
            breaker: self,
            probe,
            recorded: false,
        })
    }

    fn record(&self, probe: Option<u64>, verdict: Verdict) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("lock");
        let open = |state: &mut State| {
            state.mode = Mode::Open {
                until: now + Duration::from_millis(self.policy.open_ms),
            };
            state.consecutive = 0;
            state.buckets = [(0, 0); BUCKETS];
        };
        if let Some(of) = probe {
            if let Mode::HalfOpen {
                generation,
                in_flight,
                succeeded,
            } = &mut state.mode
                && *generation == of
            {
                *in_flight = in_flight.saturating_sub(1);
                match verdict {
                    Verdict::Failure => open(&mut state),
                    Verdict::Neutral => {}
                    Verdict::Success => {
                        *succeeded += 1;
                        if *succeeded >= self.policy.half_open_probes {
                            state.mode = Mode::Closed;
                            state.consecutive = 0;
                            state.buckets = [(0, 0); BUCKETS];
                        }
                    }
                }
            }
            return;
        }
        if verdict == Verdict::Neutral || !matches!(state.mode, Mode::Closed) {
            return; // nothing learnt, or admitted before the circuit opened
        }
        self.advance(&mut state, now);
        let newest = state.newest;
        state.buckets[newest].0 += 1;
        if verdict == Verdict::Failure {
            state.buckets[newest].1 += 1;
            state.consecutive += 1;
        } else {
            state.consecutive = 0;
        }
        if self.tripped(&state) {
            open(&mut state);
        }
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        match self.state.lock().expect("lock").mode {
            Mode::Closed => BreakerState::Closed,
            Mode::Open { until } if Instant::now() < until => BreakerState::Open,
            Mode::Open { .. } | Mode::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn tripped(&self, state: &State) -> bool {
        let p = &self.policy;
        if p.consecutive_failures > 0 && state.consecutive >= p.consecutive_failures {
            return true;
        }
        let (calls, failures) = state
            .buckets
            .iter()
            .fold((0u32, 0u32), |(c, f), (bc, bf)| (c + bc, f + bf));
        p.failure_ratio > 0.0
            && calls >= p.min_calls.max(1)
            && f64::from(failures) >= p.failure_ratio * f64::from(calls)
    }

    /// Moves the window forward to `now`, emptying buckets that aged out.
    fn advance(&self, state: &mut State, now: Instant) {
        let width = Duration::from_millis(self.policy.window_ms.div_ceil(BUCKETS as u64).max(1));
        let mut steps = 0;
        while now.saturating_duration_since(state.newest_started) >= width && steps < BUCKETS {
            state.newest = (state.newest + 1) % BUCKETS;
            state.buckets[state.newest] = (0, 0);
            state.newest_started += width;
            steps += 1;
        }
        if steps == BUCKETS {
            state.newest_started = now;
        }
    }
}

#[cfg(test)]
// Plain (no runtime) tests: a 1 ms open period passes on the real clock the
// breaker reads; no worker is blocked.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn breaker(consecutive: u32, open_ms: u64) -> Breaker {
        Breaker::new(BreakerPolicy {
            consecutive_failures: consecutive,
            failure_ratio: 0.0,
            open_ms,
            half_open_probes: 2,
            ..BreakerPolicy::default()
        })
    }

    fn fail(b: &Breaker) {
        b.admit().unwrap().record(Verdict::Failure);
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = breaker(3, 60_000);
        fail(&b);
        fail(&b);
        b.admit().unwrap().record(Verdict::Success);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        let wait = b.admit().unwrap_err();
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(59));
    }

    #[test]
    fn half_open_probes_close_it_or_open_it_again() {
        let b = breaker(1, 1);
        fail(&b);
        std::thread::sleep(Duration::from_millis(5));
        let p1 = b.admit().expect("a probe");
        let p2 = b.admit().expect("a second probe");
        assert!(b.admit().is_err(), "only two probes at once");
        p1.record(Verdict::Success);
        p2.record(Verdict::Success);
        assert_eq!(b.state(), BreakerState::Closed);

        fail(&b);
        std::thread::sleep(Duration::from_millis(5));
        b.admit().unwrap().record(Verdict::Failure);
        assert!(b.admit().is_err(), "a failed probe opens it again");
    }

    #[test]
    fn an_abandoned_probe_frees_its_slot() {
        let b = breaker(1, 1);
        fail(&b);
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..5 {
            let (p1, p2) = (b.admit().unwrap(), b.admit().unwrap());
            drop((p1, p2)); // cancelled calls
        }
        let (p1, p2) = (b.admit().expect("slots free again"), b.admit().unwrap());
        p1.record(Verdict::Success);
        p2.record(Verdict::Success);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn neutral_results_count_neither_way() {
        let b = breaker(2, 60_000);
        for _ in 0..10 {
            b.admit().unwrap().record(Verdict::Neutral);
        }
        fail(&b);
        b.admit().unwrap().record(Verdict::Neutral);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn opens_on_the_failure_ratio() {
        let b = Breaker::new(BreakerPolicy {
            consecutive_failures: 0,
            failure_ratio: 0.5,
            min_calls: 10,
            ..BreakerPolicy::default()
        });
        for i in 0..9 {
            let verdict = if i % 2 == 0 {
                Verdict::Failure
            } else {
                Verdict::Success
            };
            b.admit().unwrap().record(verdict);
        }
        assert_eq!(b.state(), BreakerState::Closed, "below min_calls");
        b.admit().unwrap().record(Verdict::Success);
        assert_eq!(b.state(), BreakerState::Open, "5 of 10 failed");
    }
}
