//! The control state in Redis: one JSON document and a version counter.
//!
//! - `valet:{control}:state` holds `{"version": N, "token": "N:nonce",
//!   "state": {...}}`;
//! - `valet:{control}:version` holds the token, so a poll is one small GET;
//! - every change is published on `valet:control:changed`.
//!
//! A write is a compare-and-set on the token (a Lua script), so it lands
//! only on the state it was computed from; it returns once Redis has it.
//! Both keys share a hash tag, so the script also runs on Redis Cluster.

use super::Versioned;
use std::time::Duration;

const STATE_KEY: &str = "valet:{control}:state";
const VERSION_KEY: &str = "valet:{control}:version";
/// The channel each change's new version is published on.
pub const CHANNEL: &str = "valet:control:changed";

/// Compare-and-set: KEYS token, state; ARGV expected token ('' for none
/// stored), new token, document, channel. Returns 1 if written, 0 if the
/// token moved.
const WRITE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
"#;

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// Redis did not answer, or refused.
    #[error("control store (redis): {0}")]
    Redis(#[from] redis::RedisError),
    /// The stored document is not a control state.
    #[error("control store (redis): the stored state is corrupt")]
    Corrupt,
    /// Redis did not answer in time.
    #[error("control store (redis): timed out")]
    Timeout,
}

/// A connection to the shared control store. Connects lazily and
/// reconnects by itself, so a replica starts while Redis is down.
#[derive(Clone)]
pub struct Shared {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    write: redis::Script,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared(redis)")
    }
}

/// How long one Redis request may take.
const TIMEOUT: Duration = Duration::from_millis(500);

impl Shared {
    /// A client for `url`; nothing is sent yet.
    pub fn connect(url: &str) -> Result<Self, SharedError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self {
            client,
            conn,
            write: redis::Script::new(WRITE_LUA),
        })
    }

    /// The stored token; `None` when nothing is stored (a new or emptied
    /// Redis).
    pub async fn token(&self) -> Result<Option<String>, SharedError> {
        let mut conn = self.conn.clone();
        bounded(redis::cmd("GET").arg(VERSION_KEY).query_async(&mut conn)).await
    }

    /// The stored state with its version.
    pub async fn read(&self) -> Result<Option<Versioned>, SharedError> {
        let mut conn = self.conn.clone();
        let doc: Option<String> = bounded(redis::cmd("GET").arg(STATE_KEY).query_async(&mut conn)).await?;
        doc.map(|d| serde_json::from_str(&d).map_err(|_| SharedError::Corrupt))
            .transpose()
    }

    /// Writes `next` if the stored token is still `expected` (`""`: none
    /// stored); returns whether it did (`false`: another write came first).
    pub async fn write(&self, expected: &str, next: &Versioned) -> Result<bool, SharedError> {
        let doc = serde_json::to_string(next).expect("control state serialises");
        let mut conn = self.conn.clone();
        let mut invocation = self.write.key(VERSION_KEY);
        invocation
            .key(STATE_KEY)
            .arg(expected)
            .arg(&next.token)
            .arg(doc)
            .arg(CHANNEL);
        let written: i64 = bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(written == 1)
    }

    /// A subscription to change notices.
    pub async fn subscribe(&self) -> Result<redis::aio::PubSubStream, SharedError> {
        let mut pubsub = tokio::time::timeout(TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| SharedError::Timeout)??;
        tokio::time::timeout(TIMEOUT, pubsub.subscribe(CHANNEL))
            .await
            .map_err(|_| SharedError::Timeout)??;
        Ok(pubsub.into_on_message())
    }
}

async fn bounded<T>(request: impl Future<Output = redis::RedisResult<T>>) -> Result<T, SharedError> {
    Ok(tokio::time::timeout(TIMEOUT * 2, request)
        .await
        .map_err(|_| SharedError::Timeout)??)
}
