//! The Redis sink: every log of the fleet in one stream, the fleet's copy
//! (what a fleet query reads) and the anchor `valet audit verify --anchor`
//! checks a file against.
//!
//! In Redis (one hash slot, `{audit}`):
//! - `valet:{audit}:log`, a stream: one stream entry per audit entry, with
//!   fields `log` (the log's id), `seq`, `hash` (the line's SHA-256, what the
//!   next entry's `prev` holds) and `line` (the entry exactly as written).
//! - `valet:{audit}:head:<log id>`, a hash: the last shipped `seq` and
//!   `hash`, and the `replica` that shipped it.
//! - `valet:{audit}:logs`, a set: every log id shipped.
//!
//! One Lua script appends a batch and moves the head only if Redis holds
//! the head the shipper expects, so a batch resent after a lost answer is
//! not appended twice, and a Redis that lost its data ("GAP 0") is refilled
//! from the file's first entry.

use super::{Line, ShipError, Sink, TIMEOUT};

/// The stream every log is shipped to.
pub const STREAM_KEY: &str = "valet:{audit}:log";
/// The set of every log id shipped.
pub const LOGS_KEY: &str = "valet:{audit}:logs";

/// The head of log `id` in Redis.
pub fn head_key(id: &str) -> String {
    format!("valet:{{audit}}:head:{id}")
}

/// Appends a batch if it continues the head the shipper expects. KEYS:
/// stream, head, logs. ARGV: log id, replica, max stream length (0: never
/// trimmed), the head expected, then (seq, hash, line) for each entry.
/// Returns the head's seq after. (Seqs may skip: retention removes entries
/// from old segments, and a refill after a loss ships what is left.)
const SHIP_LUA: &str = r#"
local head = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local maxlen = tonumber(ARGV[3])
if head ~= tonumber(ARGV[4]) then
  return redis.error_reply('GAP ' .. head)
end
local last = nil
for i = 5, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if seq > head then
    if maxlen > 0 then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'log', ARGV[1], 'seq', ARGV[i], 'hash', ARGV[i + 1], 'line', ARGV[i + 2])
    else
      redis.call('XADD', KEYS[1], '*', 'log', ARGV[1], 'seq', ARGV[i], 'hash', ARGV[i + 1], 'line', ARGV[i + 2])
    end
    head = seq
    last = ARGV[i + 1]
  end
end
if last then
  redis.call('HSET', KEYS[2], 'seq', head, 'hash', last, 'replica', ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[1])
end
return head
"#;

/// Where and how to ship to Redis.
#[derive(Debug, Clone)]
pub struct RedisShipping {
    /// The Redis to ship to.
    pub redis_url: String,
    /// Trim the stream to about this many entries (0: never). Trimming
    /// bounds Redis's memory and also what `verify --anchor` can compare.
    pub max_stream_entries: u64,
    /// This replica's name, recorded with the head.
    pub replica: String,
}

/// One entry of the fleet's copy, as shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    /// Its id in the stream (the order entries were shipped in).
    pub stream_id: String,
    /// The log it belongs to.
    pub log_id: String,
    /// The entry's seq in its log.
    pub seq: u64,
    /// The entry's hash, as it was when shipped.
    pub hash: String,
    /// The entry exactly as written.
    pub line: String,
}

/// A connection to the fleet's copy; cheap to clone.
#[derive(Clone)]
pub struct RedisCopy {
    conn: redis::aio::ConnectionManager,
}

impl RedisCopy {
    /// A lazy connection to the Redis at `url`.
    pub fn connect(url: &str) -> Result<Self, ShipError> {
        let client = redis::Client::open(url).map_err(|e| ShipError::Url(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ShipError::Url(e.to_string()))?;
        Ok(Self { conn })
    }

    /// Up to `count` entries of every log shipped to this Redis, after
    /// stream id `after` (empty: from the start), in the order shipped.
    pub async fn fleet_page(&self, after: &str, count: usize) -> Result<Vec<Shipped>, String> {
        let start = if after.is_empty() {
            "-".to_owned()
        } else {
            format!("({after}")
        };
        let mut conn = self.conn.clone();
        // Each stream entry: its id, then field, value, field, value, …
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(STREAM_KEY).arg(start).arg("+").arg("COUNT").arg(count);
        let page: Vec<(String, Vec<String>)> = bounded(cmd.query_async(&mut conn)).await?;
        Ok(page
            .into_iter()
            .map(|(stream_id, fields)| {
                let mut shipped = Shipped {
                    stream_id,
                    log_id: String::new(),
                    seq: 0,
                    hash: String::new(),
                    line: String::new(),
                };
                for kv in fields.chunks_exact(2) {
                    match kv[0].as_str() {
                        "log" => shipped.log_id = kv[1].clone(),
                        "seq" => shipped.seq = kv[1].parse().unwrap_or(0),
                        "hash" => shipped.hash = kv[1].clone(),
                        "line" => shipped.line = kv[1].clone(),
                        _ => {}
                    }
                }
                shipped
            })
            .collect())
    }

    /// The head of log `id` as Redis holds it (`seq`, `hash`, `replica`);
    /// empty if it was never shipped.
    pub async fn head(&self, id: &str) -> Result<std::collections::HashMap<String, String>, String> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(head_key(id));
        bounded(cmd.query_async(&mut conn)).await
    }

    /// Every log id shipped to this Redis.
    pub async fn log_ids(&self) -> Result<Vec<String>, String> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(LOGS_KEY);
        bounded(cmd.query_async(&mut conn)).await
    }
}

/// A Redis request within [`TIMEOUT`], its error as text.
async fn bounded<T>(asked: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, asked).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(format!("redis: {e}")),
        Err(_) => Err("redis: timed out".into()),
    }
}

/// The sink shipping to Redis.
pub(super) struct RedisSink {
    pub(super) copy: RedisCopy,
    pub(super) script: redis::Script,
    pub(super) settings: RedisShipping,
}

impl RedisSink {
    pub(super) fn new(copy: RedisCopy, settings: RedisShipping) -> Self {
        Self {
            copy,
            script: redis::Script::new(SHIP_LUA),
            settings,
        }
    }
}

impl Sink for RedisSink {
    const NAME: &'static str = "redis";

    async fn head(&self, id: &str) -> Result<u64, String> {
        let mut conn = self.copy.conn.clone();
        let mut cmd = redis::cmd("HGET");
        cmd.arg(head_key(id)).arg("seq");
        let seq: Option<u64> = bounded(cmd.query_async(&mut conn)).await?;
        Ok(seq.unwrap_or(0))
    }

    async fn send(&self, id: &str, head: u64, batch: &[Line]) -> Result<u64, String> {
        let mut invocation = self.script.key(STREAM_KEY);
        invocation
            .key(head_key(id))
            .key(LOGS_KEY)
            .arg(id)
            .arg(&self.settings.replica)
            .arg(self.settings.max_stream_entries)
            .arg(head);
        for line in batch {
            invocation.arg(line.seq).arg(&line.hash).arg(&line.text);
        }
        let mut conn = self.copy.conn.clone();
        bounded(invocation.invoke_async(&mut conn)).await
    }
}
