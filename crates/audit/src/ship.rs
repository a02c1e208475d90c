//! Shipping the log off the box: for each sink, one task tails the local
//! file and sends every durable entry on, oldest first, each with its seq
//! and hash. Two sinks: a Redis stream ([`redis`]: the fleet's copy and the
//! anchor) and OTLP logs to a collector ([`otlp`]: on to any SIEM).
//!
//! Why tail the file rather than send from the call: the file is the log,
//! and the call path pays nothing for shipping. A sink that is down or slow
//! leaves entries in the file, where they already are, durable, so the
//! backlog is bounded only by the disk and nothing is lost. When the sink
//! answers again the shipper sends what it missed, oldest first.
//! [`WhenBehind`] says what happens meanwhile: calls go on and the lag is
//! reported (`continue`, the default), or, past `behind_limit` entries,
//! every new entry is refused until the backlog drains (`refuse`), so no
//! credential is used that only the box's own file records.
//!
//! Only durable entries are shipped: a copy never holds an entry a power
//! loss could take out of the file, so a shorter file is always tampering.
//! A log's id is the first 16 hex digits of its first line's hash: stable
//! across restarts, different for every log ([`crate::segment::log_id`]).

pub mod otlp;
pub mod redis;

pub use self::otlp::OtlpShipping;
pub use self::redis::{LOGS_KEY, RedisCopy, RedisShipping, STREAM_KEY, Shipped, head_key};

use crate::line_hash;
use crate::log::{AuditLog, DurableSeqs, Hold};
use crate::segment::{Lines, seq_of};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// Entries sent at once.
const BATCH: usize = 256;
/// How long one request to a sink may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a failed send, doubled up to `MAX_BACKOFF`.
const BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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

/// What to do when a sink falls behind.
#[derive(Debug, Clone, Copy)]
pub struct ShipSettings {
    /// Entries durable but not shipped past which `when_behind` applies.
    pub behind_limit: u64,
    /// See [`WhenBehind`].
    pub when_behind: WhenBehind,
}

/// Where entries go: what it holds of a log, and how a batch is sent.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Its name in logs, metrics and refusals (`redis`, `otlp`).
    const NAME: &'static str;
    /// The last seq the sink holds of log `id` (0: none).
    fn head(&self, id: &str) -> impl std::future::Future<Output = Result<u64, String>> + Send;
    /// Sends `batch`, which follows `head`; returns the sink's head after.
    fn send(
        &self,
        id: &str,
        head: u64,
        batch: &[Line],
    ) -> impl std::future::Future<Output = Result<u64, String>> + Send;
}

/// Why shipping could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The sink's address is not one.
    #[error("audit shipping: {0}")]
    Url(String),
}

/// How shipping stands, for metrics and `valet status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipStatus {
    /// The log's id, once it has a first entry.
    pub log_id: Option<String>,
    /// The last entry the sink holds.
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
    /// The fleet's copy, for a Redis shipper.
    copy: Option<RedisCopy>,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper").field("status", &self.status()).finish()
    }
}

impl Shipper {
    /// Starts shipping `log` to Redis, on the current runtime.
    pub fn start(log: &AuditLog, settings: ShipSettings, redis: RedisShipping) -> Result<Self, ShipError> {
        let copy = RedisCopy::connect(&redis.redis_url)?;
        let sink = self::redis::RedisSink::new(copy.clone(), redis);
        let mut shipper = Self::spawn(log, settings, sink);
        shipper.copy = Some(copy);
        Ok(shipper)
    }

    /// Starts shipping `log` to an OTLP collector, on the current runtime.
    pub fn start_otlp(
        log: &AuditLog,
        settings: ShipSettings,
        otlp: otlp::OtlpShipping,
    ) -> Result<Self, ShipError> {
        let sink = otlp::OtlpSink::new(log.path(), otlp)?;
        Ok(Self::spawn(log, settings, sink))
    }

    fn spawn<S: Sink>(log: &AuditLog, settings: ShipSettings, sink: S) -> Self {
        let (status_tx, status) = watch::channel(ShipStatus::default());
        let task = Task {
            path: log.path().to_owned(),
            durable: log.durable_seqs(),
            hold: log.hold(),
            sink,
            settings,
            status: status_tx,
        };
        tokio::spawn(task.run());
        Self { status, copy: None }
    }

    /// Up to `count` entries of every log shipped to this Redis, after
    /// stream id `after` (empty: from the start); an error for a shipper
    /// that does not ship to Redis.
    pub async fn fleet_page(&self, after: &str, count: usize) -> Result<Vec<Shipped>, String> {
        match &self.copy {
            Some(copy) => copy.fleet_page(after, count).await,
            None => Err("this shipper does not ship to Redis".into()),
        }
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

struct Task<S> {
    path: PathBuf,
    durable: DurableSeqs,
    hold: Hold,
    sink: S,
    settings: ShipSettings,
    status: watch::Sender<ShipStatus>,
}

/// One entry read from the file.
pub(crate) struct Line {
    pub(crate) seq: u64,
    pub(crate) hash: String,
    pub(crate) text: String,
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

impl<S: Sink> Task<S> {
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
                    // Start again from what the sink says it holds.
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
                let head = self.sink.head(id).await?;
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
        *shipped = Some(self.sink.send(id, head, &batch).await?);
        Ok(())
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
            self.hold.refuse(
                S::NAME,
                &format!(
                    "audit shipping to {} is {behind} entries behind (limit {}); new entries are refused until it takes them",
                    S::NAME,
                    self.settings.behind_limit
                ),
            );
        } else if !refuse && was {
            tracing::info!(behind, "audit shipping caught up; accepting entries again");
            self.hold.release(S::NAME);
        }
        self.report(|s| {
            s.behind = behind;
            s.refusing = refuse;
        });
    }

    async fn failed(&self, why: &str, backoff: &mut Duration) {
        tracing::warn!(sink = S::NAME, error = %why, "audit shipping failed; retrying");
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
