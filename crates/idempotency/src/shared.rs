//! Records in Redis, shared by every replica, for fleets.
//!
//! Each transition is one Lua script, so concurrent calls on any replica see
//! one state; records expire with a Redis TTL: the retention after the
//! answer, or after the lease for unsettled records ([`crate::unsettled_expiry_ms`]). The `begin`
//! script is [`crate::decide`] in Lua — it must run inside Redis to be
//! atomic — and the two are kept in step by the same end-to-end tests.

use crate::{Begin, Scope, StoreError, Terms};
use base64::Engine as _;
use std::time::Duration;

const BEGIN_LUA: &str = r#"
local now = tonumber(ARGV[2])
local function claim()
  -- unsettled_expiry_ms: kept a retention beyond the lease
  local lease_until = now + tonumber(ARGV[3])
  local rec = {fingerprint = ARGV[1], state = 'in_flight',
               lease_until_ms = lease_until, expires_ms = lease_until + tonumber(ARGV[4])}
  redis.call('SET', KEYS[1], cjson.encode(rec), 'PX', rec.expires_ms - now)
  return {'proceed'}
end
local raw = redis.call('GET', KEYS[1])
if not raw then return claim() end
local rec = cjson.decode(raw)
if rec.expires_ms <= now then return claim() end
if rec.fingerprint ~= ARGV[1] then return {'reused'} end
if rec.state == 'completed' then return {'replay', rec.sealed} end
if rec.lease_until_ms > now then
  if rec.state == 'in_flight' then return {'in_flight', tostring(rec.lease_until_ms - now)} end
  return {'unknown', tostring(rec.lease_until_ms - now)}
end
if ARGV[5] == '1' then return claim() end
return {'unknown_final'}
"#;

/// Completes (ARGV[1] = "completed", sealed, retention) or marks unknown
/// (ARGV[1] = "unknown", lease_until_ms, retention) an existing record.
const SETTLE_LUA: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
local now = tonumber(ARGV[4])
if ARGV[1] == 'completed' then
  rec.state = 'completed'
  rec.sealed = ARGV[2]
  rec.lease_until_ms = nil
  rec.expires_ms = now + tonumber(ARGV[3])
else
  rec.state = 'unknown'
  rec.lease_until_ms = tonumber(ARGV[2])
  -- unsettled_expiry_ms: kept a retention beyond the lease
  rec.expires_ms = math.max(rec.expires_ms, rec.lease_until_ms + tonumber(ARGV[3]))
end
local ttl = rec.expires_ms - now
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[1], cjson.encode(rec), 'PX', ttl)
return 1
"#;

/// The Redis store. Cheap to clone.
#[derive(Clone)]
pub struct Shared {
    conn: redis::aio::ConnectionManager,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn redis_key(scope: &Scope) -> String {
    format!("valet:idem:{}", scope.storage_key())
}

impl Shared {
    /// Connects to Redis at `url`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(err)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        // Lazy: a replica starts while Redis is down (calls with a key are
        // refused, `IDEMPOTENCY_STORE_UNAVAILABLE`, until it is back), and the
        // manager reconnects by itself.
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(err)?;
        Ok(Self { conn })
    }

    /// Whether Redis answers a PING (readiness).
    pub async fn probe(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(err)
    }

    /// See [`crate::Embedded::begin`].
    pub async fn begin(&self, scope: &Scope, fingerprint: &str, terms: &Terms) -> Result<Begin, StoreError> {
        let mut conn = self.conn.clone();
        let answer: Vec<String> = redis::Script::new(BEGIN_LUA)
            .key(redis_key(scope))
            .arg(fingerprint)
            .arg(terms.now_ms)
            .arg(terms.lease_ms)
            .arg(terms.retention_ms)
            .arg(if terms.vendor_dedupes { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(err)?;
        let ms = |i: usize| Duration::from_millis(answer.get(i).and_then(|v| v.parse().ok()).unwrap_or(0));
        Ok(match answer.first().map(String::as_str) {
            Some("proceed") => Begin::Proceed,
            Some("reused") => Begin::Reused,
            Some("replay") => base64::engine::general_purpose::STANDARD
                .decode(answer.get(1).map(String::as_str).unwrap_or_default())
                .map(Begin::Replay)
                .unwrap_or(Begin::Unknown(None)),
            Some("in_flight") => Begin::InFlight(ms(1)),
            Some("unknown") => Begin::Unknown(Some(ms(1))),
            _ => Begin::Unknown(None),
        })
    }

    /// See [`crate::Embedded::complete`].
    pub async fn complete(
        &self,
        scope: &Scope,
        sealed: &[u8],
        now_ms: u64,
        retention_ms: u64,
    ) -> Result<(), StoreError> {
        let sealed = base64::engine::general_purpose::STANDARD.encode(sealed);
        self.settle(
            scope,
            &[
                "completed",
                &sealed,
                &retention_ms.to_string(),
                &now_ms.to_string(),
            ],
        )
        .await
    }

    /// See [`crate::Embedded::mark_unknown`].
    pub async fn mark_unknown(
        &self,
        scope: &Scope,
        lease_until_ms: u64,
        now_ms: u64,
        retention_ms: u64,
    ) -> Result<(), StoreError> {
        self.settle(
            scope,
            &[
                "unknown",
                &lease_until_ms.to_string(),
                &retention_ms.to_string(),
                &now_ms.to_string(),
            ],
        )
        .await
    }

    async fn settle(&self, scope: &Scope, args: &[&str]) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(SETTLE_LUA);
        let mut invocation = script.key(redis_key(scope));
        for a in args {
            invocation.arg(*a);
        }
        let _: i64 = invocation.invoke_async(&mut conn).await.map_err(err)?;
        Ok(())
    }

    /// Deletes every record of `tenant`; returns how many. Tenant names hold
    /// no glob characters, so the pattern matches exactly that tenant.
    pub async fn purge_tenant(&self, tenant: &str) -> Result<usize, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("valet:idem:{tenant}\u{1f}*");
        let mut cursor: u64 = 0;
        let mut purged = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            if !keys.is_empty() {
                let n: usize = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(err)?;
                purged += n;
            }
            if next == 0 {
                return Ok(purged);
            }
            cursor = next;
        }
    }

    /// See [`crate::Embedded::abandon`].
    pub async fn abandon(&self, scope: &Scope) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(redis_key(scope))
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(())
    }
}
