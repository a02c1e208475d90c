//! [`Shared`]: GCRA in Redis, one atomic Lua script per check, so every
//! replica counts against one limit; [`OnBackendError`] says what happens
//! while Redis cannot answer.

use super::{BackendError, CheckFuture, Decision, Embedded, Limiter, PeekFuture, paused};
use crate::policy::Policy;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Redis's clock and the bucket's theoretical arrival time (TAT), shared
/// by both scripts. KEYS[1] is the bucket; ARGV is {interval_us, burst}.
///
/// A bucket is stored as `tat:interval:burst` (µs, µs, calls), the numbers
/// of the policy it was last counted under. When the policy's numbers have
/// changed since, the debt (TAT − now) is carried over as
/// [`carry_over`](super::carry_over) does in process: the calls owed are
/// kept, at most the new burst, repaid at the new interval — so a change
/// never hands out a fresh
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
        // Lazy: a replica starts while Redis is down, and the manager
        // reconnects by itself once it is back.
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
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
