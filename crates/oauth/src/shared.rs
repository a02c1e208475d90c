//! Access tokens shared by a fleet through Redis, and the lock that makes
//! one replica the only one asking the provider.
//!
//! - `valet:oauth:token:<tenant>/<vendor>/<scopes>` — the current token,
//!   sealed by the replica that fetched it (every replica of a fleet has the
//!   same master key), with its fingerprint, the grant material's
//!   fingerprints before and after the fetch, and its expiry; it expires in
//!   Redis with the token.
//! - `valet:oauth:lock:<tenant>/<vendor>` — held by the replica fetching,
//!   `SET NX PX`, its value a fencing token from `valet:oauth:fence`
//!   (`INCR`), released only by its holder (compare and delete). Its
//!   lifetime covers the token request (the vendor's timeout) and storing a
//!   rotated refresh token; a replica that dies holding it stops the others
//!   for at most that long.
//!
//! Redis being down is no outage for client credentials: each replica then
//! fetches for itself, as without a fleet. A rotating refresh token is never
//! presented without the lock: those fetches fail (`TOKEN_ENDPOINT_UNAVAILABLE`)
//! until Redis answers, while held tokens are used until they expire.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a replica publishes about a token it fetched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Published {
    /// The token, sealed.
    pub sealed: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The grant material it was fetched with.
    pub grant_before: String,
    /// The grant material stored after the fetch (differs when the refresh
    /// token rotated).
    pub grant_after: String,
    /// When it was issued and when it expires, Unix milliseconds.
    pub issued_ms: u64,
    /// See `issued_ms`.
    pub expires_ms: u64,
    /// The fencing token of the lock it was fetched under.
    pub fence: u64,
    /// The scope set it is for, space-separated.
    pub scopes: String,
}

impl Published {
    /// The sealed token's bytes.
    pub fn sealed_bytes(&self) -> Option<Vec<u8>> {
        STANDARD.decode(&self.sealed).ok()
    }

    /// `sealed` encoded for the record.
    pub fn encode(sealed: &[u8]) -> String {
        STANDARD.encode(sealed)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const UNLOCK_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

const DROP_IF_LUA: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
if cjson.decode(raw).fingerprint == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// The fleet's tokens in Redis. Cheap to clone.
#[derive(Clone)]
pub struct Shared {
    conn: redis::aio::ConnectionManager,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

fn err(e: impl std::fmt::Display) -> String {
    format!("redis: {e}")
}

/// The key of one tenant × vendor × scope set's token.
pub fn token_key(tenant: &str, vendor: &str, scopes: &str) -> String {
    format!("valet:oauth:token:{tenant}/{vendor}/{scopes}")
}

fn lock_key(tenant: &str, vendor: &str) -> String {
    format!("valet:oauth:lock:{tenant}/{vendor}")
}

fn index_key(tenant: &str, vendor: &str) -> String {
    format!("valet:oauth:tokens:{tenant}/{vendor}")
}

impl Shared {
    /// Connects (lazily: a replica starts while Redis is down) to `url`.
    pub fn connect(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(err)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(err)?;
        Ok(Self { conn })
    }

    /// The token published for `key`, if any (and readable).
    pub async fn get(&self, key: &str) -> Result<Option<Published>, String> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Takes the tenant × vendor's lock for `ttl`; its fencing token, or
    /// `None` if another replica holds it.
    pub async fn lock(&self, tenant: &str, vendor: &str, ttl: Duration) -> Result<Option<u64>, String> {
        let mut conn = self.conn.clone();
        let fence: u64 = redis::cmd("INCR")
            .arg("valet:oauth:fence")
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        let set: Option<String> = redis::cmd("SET")
            .arg(lock_key(tenant, vendor))
            .arg(fence)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(set.map(|_| fence))
    }

    /// Whether anyone holds the tenant × vendor's lock.
    pub async fn locked(&self, tenant: &str, vendor: &str) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let n: u64 = redis::cmd("EXISTS")
            .arg(lock_key(tenant, vendor))
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(n > 0)
    }

    /// Releases the lock if `fence` still holds it.
    pub async fn unlock(&self, tenant: &str, vendor: &str, fence: u64) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(UNLOCK_LUA)
            .key(lock_key(tenant, vendor))
            .arg(fence.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Publishes `token` under `key` until it expires.
    pub async fn publish(
        &self,
        tenant: &str,
        vendor: &str,
        key: &str,
        token: &Published,
    ) -> Result<(), String> {
        let ttl = token.expires_ms.saturating_sub(now_ms()).max(1);
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("SET")
            .arg(key)
            .arg(serde_json::to_string(token).expect("a record serialises"))
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("SADD")
            .arg(index_key(tenant, vendor))
            .arg(key)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(err)
    }

    /// Removes the token under `key` if it is still `fingerprint` (a vendor
    /// refused it).
    pub async fn drop_if(&self, key: &str, fingerprint: &str) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(DROP_IF_LUA)
            .key(key)
            .arg(fingerprint)
            .invoke_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Every token published for the tenant × vendor.
    pub async fn all(&self, tenant: &str, vendor: &str) -> Result<Vec<Published>, String> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = redis::cmd("SMEMBERS")
            .arg(index_key(tenant, vendor))
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        let mut all = Vec::new();
        for key in keys {
            if let Some(p) = self.get(&key).await? {
                all.push(p);
            }
        }
        Ok(all)
    }

    /// Removes every token of the tenant × vendor (its grant material was
    /// replaced or deleted).
    pub async fn forget(&self, tenant: &str, vendor: &str) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let index = index_key(tenant, vendor);
        let keys: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&index)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("DEL").arg(key).ignore();
        }
        pipe.cmd("DEL").arg(index).ignore();
        pipe.query_async::<()>(&mut conn).await.map_err(err)
    }
}
