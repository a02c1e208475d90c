//! Shipping the log off the box: one task tails the local file and appends
//! every durable entry to a Redis stream, where it is the fleet's copy (what
//! a fleet query reads) and the anchor `valet audit verify --anchor` checks
//! the file against.
//!
//! Why tail the file rather than send from the call: the file is the log,
//! and the call path pays nothing for shipping. A sink that is down or slow
//! leaves entries in the file, where they already are, durable, so the
//! backlog is bounded only by the disk and nothing is lost. When Redis
//! answers again the shipper sends what it missed, oldest first.
//! [`WhenBehind`] says what happens meanwhile: calls go on and the lag is
//! reported (`continue`, the default), or, past `behind_limit` entries,
//! every new entry is refused until the backlog drains (`refuse`), so no
//! credential is used that only the box's own file records.
//!
//! Only durable entries are shipped: the copy never holds an entry a power
//! loss could take out of the file, so a shorter file is always tampering.
//!
//! In Redis (one hash slot, `{audit}`):
//! - `valet:{audit}:log`, a stream: one stream entry per audit entry, with
//!   fields `log` (the log's id), `seq`, `hash` (the line's SHA-256, what the
//!   next entry's `prev` holds) and `line` (the entry exactly as written).
//! - `valet:{audit}:head:<log id>`, a hash: the last shipped `seq` and
//!   `hash`, and the `replica` that shipped it.
//! - `valet:{audit}:logs`, a set: every log id shipped.
//!
//! A log's id is the first 16 hex digits of its first line's hash: stable
//! across restarts, different for every log ([`crate::segment::log_id`]). One Lua script appends a batch
//! and moves the head only if the batch continues it, so a batch resent
//! after a lost answer is not appended twice, and a Redis that lost its data
//! ("GAP 0") is refilled from the file's first entry.

use crate::line_hash;
use crate::log::{AuditLog, DurableSeqs, Hold};
use crate::segment::{Lines, seq_of};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// The stream every log is shipped to.
pub const STREAM_KEY: &str = "valet:{audit}:log";
/// The set of every log id shipped.
pub const LOGS_KEY: &str = "valet:{audit}:logs";

/// The head of log `id` in Redis.
pub fn head_key(id: &str) -> String {
    format!("valet:{{audit}}:head:{id}")
}

/// Entries sent in one script call.
const BATCH: usize = 256;
/// How long one Redis request may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a failed send, doubled up to `MAX_BACKOFF`.
const BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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

/// What to do when shipping falls `behind_limit` entries behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenBehind {
    /// Go on with the local file alone; the lag is reported (metric
    /// `valet_audit_ship_behind`, `valet status`) for an alert.
    #[default]
    Continue,
    /// Refuse every new entry — so every call and admin change, with
    /// UNAVAILABLE `AUDIT_UNAVAILABLE` — until the backlog is under the limit.
    Refuse,
}

/// How to ship.
#[derive(Debug, Clone)]
pub struct ShipSettings {
    /// The Redis to ship to.
    pub redis_url: String,
    /// Entries durable but not shipped past which `when_behind` applies.
    pub behind_limit: u64,
    /// See [`WhenBehind`].
    pub when_behind: WhenBehind,
    /// Trim the stream to about this many entries (0: never). Trimming
    /// bounds Redis's memory and also what `verify --anchor` can compare.
    pub max_stream_entries: u64,
    /// This replica's name, recorded with the head.
    pub replica: String,
}

/// Why shipping could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The Redis URL is not one.
    #[error("audit shipping: redis_url: {0}")]
    Url(String),
}

/// How shipping stands, for metrics and `valet status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipStatus {
    /// The log's id, once it has a first entry.
    pub log_id: Option<String>,
    /// The last entry Redis holds.
    pub shipped: u64,
    /// Durable entries not yet shipped.
    pub behind: u64,
    /// Whether the last send succeeded.
    pub up: bool,
    /// Why the last send failed.
    pub error: Option<String>,
    /// Sends that failed since start.
    pub failures: u64,
    /// Whether new entries are refused (`refuse`, past the limit).
    pub refusing: bool,
}

/// A running shipper; cheap to clone. It stops when the log closes.
#[derive(Clone)]
pub struct Shipper {
    status: watch::Receiver<ShipStatus>,
    conn: redis::aio::ConnectionManager,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper").field("status", &self.status()).finish()
    }
}

/// One entry of the fleet's copy, as shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    /// Its id in the stream (the order entries were shipped in).
    pub stream_id: String,
    /// The log it belongs to.
    pub log_id: String,
    /// The entry exactly as written.
    pub line: String,
}

impl Shipper {
    /// Starts shipping `log` as `settings` say, on the current runtime.
    pub fn start(log: &AuditLog, settings: ShipSettings) -> Result<Self, ShipError> {
        let client =
            redis::Client::open(settings.redis_url.as_str()).map_err(|e| ShipError::Url(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ShipError::Url(e.to_string()))?;
        let (status_tx, status) = watch::channel(ShipStatus::default());
        let task = Task {
            path: log.path().to_owned(),
            durable: log.durable_seqs(),
            hold: log.hold(),
            conn: conn.clone(),
            script: redis::Script::new(SHIP_LUA),
            settings,
            status: status_tx,
        };
        tokio::spawn(task.run());
        Ok(Self { status, conn })
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
        let asked = cmd.query_async::<Vec<(String, Vec<String>)>>(&mut conn);
        let page = match tokio::time::timeout(TIMEOUT, asked).await {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => return Err(format!("redis: {e}")),
            Err(_) => return Err("redis: timed out".into()),
        };
        Ok(page
            .into_iter()
            .map(|(stream_id, fields)| {
                let mut shipped = Shipped {
                    stream_id,
                    log_id: String::new(),
                    line: String::new(),
                };
                for kv in fields.chunks_exact(2) {
                    match kv[0].as_str() {
                        "log" => shipped.log_id = kv[1].clone(),
                        "line" => shipped.line = kv[1].clone(),
                        _ => {}
                    }
                }
                shipped
            })
            .collect())
    }

    /// How shipping stands now.
    pub fn status(&self) -> ShipStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `until`; `false` if the shipper
    /// stopped first (e.g. Redis holds every entry up to a seq).
    pub async fn wait_for(&self, until: impl Fn(&ShipStatus) -> bool) -> bool {
        let mut status = self.status.clone();
        status.wait_for(|s| until(s)).await.is_ok()
    }
}

struct Task {
    path: PathBuf,
    durable: DurableSeqs,
    hold: Hold,
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    settings: ShipSettings,
    status: watch::Sender<ShipStatus>,
}

/// One entry read from the file.
struct Line {
    seq: u64,
    hash: String,
    text: String,
}

/// The log, read forward from one entry, across its segments.
struct Reader {
    lines: Lines,
    /// Entries up to this seq were read.
    read: u64,
    /// A line read past the end of the last batch, for the next one.
    ahead: Option<Vec<u8>>,
}

impl Reader {
    /// Opens the log at `path` positioned after entry `seq`. Lines up to
    /// it are skipped by their seq alone.
    fn open_after(path: &Path, seq: u64) -> std::io::Result<Self> {
        let mut reader = Self {
            lines: Lines::open_from(path, seq + 1)?,
            read: seq,
            ahead: None,
        };
        let mut buf = Vec::new();
        while reader.lines.next_line(&mut buf)? {
            if seq_of(&buf).is_some_and(|s| s > seq) {
                reader.ahead = Some(std::mem::take(&mut buf));
                break;
            }
        }
        Ok(reader)
    }

    /// Up to `max` entries after the last read, up to seq `until`.
    fn read_batch(&mut self, until: u64, max: usize) -> std::io::Result<Vec<Line>> {
        let mut batch = Vec::new();
        while batch.len() < max {
            let buf = match self.ahead.take() {
                Some(buf) => buf,
                None => {
                    let mut buf = Vec::new();
                    if !self.lines.next_line(&mut buf)? {
                        break;
                    }
                    buf
                }
            };
            let seq = seq_of(&buf).ok_or_else(|| std::io::Error::other("an audit entry has no seq"))?;
            if seq > until {
                self.ahead = Some(buf);
                break;
            }
            self.read = seq;
            batch.push(Line {
                seq,
                hash: line_hash(&buf),
                text: String::from_utf8_lossy(&buf).into_owned(),
            });
        }
        Ok(batch)
    }
}

impl Task {
    async fn run(mut self) {
        let mut backoff = BACKOFF;
        let mut shipped: Option<u64> = None;
        let mut reader: Option<Reader> = None;
        let mut log_id: Option<String> = None;
        loop {
            if self.durable.closed() {
                return;
            }
            let durable = self.durable.now();
            if durable == 0 || shipped.is_some_and(|s| s >= durable) {
                self.report(|s| s.behind = 0);
                match self.durable.after(shipped.unwrap_or(0)).await {
                    Some(_) => continue,
                    None => return, // the log is closed
                }
            }
            let id = match &log_id {
                Some(id) => id.clone(),
                None => match crate::segment::log_id(&self.path, true) {
                    Ok(Some(id)) => {
                        self.report(|s| s.log_id = Some(id.clone()));
                        log_id.insert(id).clone()
                    }
                    Ok(None) => {
                        self.failed("the audit log has no first entry yet", &mut backoff)
                            .await;
                        continue;
                    }
                    Err(e) => {
                        self.failed(&format!("cannot read the audit log: {e}"), &mut backoff)
                            .await;
                        continue;
                    }
                },
            };
            let result = self.ship_some(&id, durable, &mut shipped, &mut reader).await;
            match result {
                Ok(()) => {
                    backoff = BACKOFF;
                    let head = shipped.unwrap_or(0);
                    self.report(|s| {
                        s.shipped = head;
                        s.up = true;
                        s.error = None;
                    });
                    self.gate(durable.saturating_sub(head));
                }
                Err(why) => {
                    // Start again from what Redis says it holds.
                    shipped = None;
                    reader = None;
                    self.gate(self.durable.now().saturating_sub(self.status().shipped));
                    self.failed(&why, &mut backoff).await;
                }
            }
        }
    }

    /// Sends one batch of the entries after the head, up to `durable`.
    async fn ship_some(
        &mut self,
        id: &str,
        durable: u64,
        shipped: &mut Option<u64>,
        reader: &mut Option<Reader>,
    ) -> Result<(), String> {
        let head = match *shipped {
            Some(head) => head,
            None => {
                let head = self.head(id).await?;
                *shipped = Some(head);
                head
            }
        };
        if head >= durable {
            return Ok(());
        }
        let batch = self.batch(reader, head, durable).await?;
        if batch.is_empty() {
            return Err(format!(
                "the audit log has no entry after seq {head} up to seq {durable}"
            ));
        }
        let mut invocation = self.script.key(STREAM_KEY);
        invocation
            .key(head_key(id))
            .key(LOGS_KEY)
            .arg(id)
            .arg(&self.settings.replica)
            .arg(self.settings.max_stream_entries)
            .arg(head);
        for line in &batch {
            invocation.arg(line.seq).arg(&line.hash).arg(&line.text);
        }
        let mut conn = self.conn.clone();
        let sent = tokio::time::timeout(TIMEOUT, invocation.invoke_async::<u64>(&mut conn)).await;
        match sent {
            Ok(Ok(new_head)) => {
                *shipped = Some(new_head);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("redis: {e}")),
            Err(_) => Err("redis: timed out".into()),
        }
    }

    /// The entries after `head` up to `durable`, at most [`BATCH`], read
    /// on the blocking pool. A reader left at the end of a segment sealed
    /// under it (its files were opened before the seal) is opened again
    /// once.
    async fn batch(&self, reader: &mut Option<Reader>, head: u64, durable: u64) -> Result<Vec<Line>, String> {
        let path = self.path.clone();
        let kept = reader.take().filter(|r| r.read == head);
        let read = tokio::task::spawn_blocking(move || {
            let mut r = match kept {
                Some(r) => r,
                None => Reader::open_after(&path, head)?,
            };
            let mut batch = r.read_batch(durable, BATCH)?;
            if batch.is_empty() {
                r = Reader::open_after(&path, head)?;
                batch = r.read_batch(durable, BATCH)?;
            }
            Ok::<_, std::io::Error>((r, batch))
        })
        .await
        .map_err(|e| format!("the audit log reader stopped: {e}"))?;
        let (r, batch) = read.map_err(|e| format!("cannot read the audit log: {e}"))?;
        *reader = Some(r);
        Ok(batch)
    }

    /// The seq Redis holds for log `id` (0: none).
    async fn head(&self, id: &str) -> Result<u64, String> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HGET");
        cmd.arg(head_key(id)).arg("seq");
        let asked = cmd.query_async::<Option<u64>>(&mut conn);
        match tokio::time::timeout(TIMEOUT, asked).await {
            Ok(Ok(seq)) => Ok(seq.unwrap_or(0)),
            Ok(Err(e)) => Err(format!("redis: {e}")),
            Err(_) => Err("redis: timed out".into()),
        }
    }

    /// Applies `when_behind` for a backlog of `behind` entries.
    fn gate(&self, behind: u64) {
        let refuse = self.settings.when_behind == WhenBehind::Refuse && behind > self.settings.behind_limit;
        let was = self.status().refusing;
        if refuse && !was {
            tracing::error!(
                behind,
                limit = self.settings.behind_limit,
                "audit shipping too far behind; refusing new entries"
            );
            self.hold.refuse(&format!(
                "audit shipping is {behind} entries behind (limit {}); new entries are refused until Redis takes them",
                self.settings.behind_limit
            ));
        } else if !refuse && was {
            tracing::info!(behind, "audit shipping caught up; accepting entries again");
            self.hold.release();
        }
        self.report(|s| {
            s.behind = behind;
            s.refusing = refuse;
        });
    }

    async fn failed(&self, why: &str, backoff: &mut Duration) {
        tracing::warn!(error = %why, "audit shipping failed; retrying");
        self.report(|s| {
            s.up = false;
            s.error = Some(why.to_owned());
            s.failures += 1;
        });
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
    }

    fn status(&self) -> ShipStatus {
        self.status.borrow().clone()
    }

    fn report(&self, change: impl FnOnce(&mut ShipStatus)) {
        self.status.send_modify(change);
    }
}
