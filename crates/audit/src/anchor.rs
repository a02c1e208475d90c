//! `valet audit verify --anchor`: the file checked against its shipped copy
//! in Redis ([`crate::ship`]).
//!
//! A hash chain alone cannot see its tail cut off, nor its last line
//! edited, nor a whole log rewritten with fresh hashes: each is a valid
//! chain. The shipped copy can: every entry shipped carries the hash it had
//! when it was written, and the head says how far the log had come. So:
//!
//! - the file ending before the head's seq is a cut tail;
//! - any shipped entry whose hash differs from the file's line at that seq
//!   is an edit (the last line included);
//! - a rewritten first line changes the log's id, and the log is then not
//!   found: the report lists the logs Redis holds.
//!
//! What it cannot see: entries written after the last one shipped (the
//! shipping lag, normally under a second), and entries trimmed from the
//! stream (`max_stream_entries`) are compared only through the head.

use crate::event::ExpiredRange;
use crate::line_hash;

use crate::ship::RedisCopy;
use std::collections::BTreeMap;
use std::path::Path;

/// Stream entries read per request.
const PAGE: usize = 1_000;

/// What the check found when the file matched its copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The log's id.
    pub log_id: String,
    /// Entries in the file.
    pub entries: u64,
    /// The last seq Redis holds.
    pub shipped: u64,
    /// Shipped entries compared one by one.
    pub compared: u64,
    /// The first seq the stream still holds (later than 1 when trimmed).
    pub first_in_stream: Option<u64>,
}

/// Why the file does not match its copy, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The file's own chain is broken.
    #[error(transparent)]
    Chain(#[from] crate::VerifyError),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Redis could not be asked.
    #[error("the anchor (redis) could not be read: {0}")]
    Redis(String),
    /// No copy of this log was shipped.
    #[error(
        "no shipped copy of log {log_id}: either this log is not shipped, or its first entry was rewritten (which changes its id). Logs in this Redis: {known}"
    )]
    NotShipped {
        /// The file's log id.
        log_id: String,
        /// The logs the anchor holds, with who shipped them.
        known: String,
    },
    /// The file ends before the last entry shipped.
    #[error(
        "truncated: the anchor holds entries up to seq {shipped}, the file ends at seq {entries} ({} entries cut from its tail)", shipped - entries
    )]
    Truncated {
        /// Entries in the file.
        entries: u64,
        /// The last seq shipped.
        shipped: u64,
    },
    /// A shipped entry is not in the file, and no shipped record removed it.
    #[error(
        "entry {seq} was shipped but is not in the file, and no shipped audit_expired record removed it: it was deleted"
    )]
    Deleted {
        /// The entry.
        seq: u64,
    },
    /// A line differs from the copy shipped.
    #[error("line {seq} differs from the copy shipped: it was edited after it was written")]
    Edited {
        /// The line (its seq).
        seq: u64,
    },
}

/// Checks the log at `path` against the copy in the Redis at `url`; the
/// log is found by its own id, or `log_id` when given.
pub async fn check(path: &Path, url: &str, log_id: Option<&str>) -> Result<Matched, AnchorError> {
    let verified = crate::verify_report(path)?;
    let io = |source| AnchorError::Io {
        path: path.display().to_string(),
        source,
    };
    let hashes = line_hashes(path).map_err(io)?;
    let id = match log_id {
        Some(id) => id.to_owned(),
        None => crate::segment::log_id(path, false)
            .map_err(io)?
            .unwrap_or_default(),
    };
    let copy = RedisCopy::connect(url).map_err(|_| {
        // Not echoed: a URL may carry a password.
        AnchorError::Redis("the anchor is not a Redis URL (redis://host:port/ or rediss://…)".into())
    })?;
    let head = copy.head(&id).await.map_err(AnchorError::Redis)?;
    let Some(shipped) = head.get("seq").and_then(|s| s.parse::<u64>().ok()) else {
        return Err(AnchorError::NotShipped {
            log_id: id,
            known: known_logs(&copy).await?,
        });
    };
    if shipped > verified.last_seq {
        return Err(AnchorError::Truncated {
            entries: verified.last_seq,
            shipped,
        });
    }
    // The stream first, oldest first, so the earliest edit is named; then
    // the head, which outlives trimming.
    let (compared, first_in_stream) = compare_stream(&copy, &id, &hashes, verified.last_seq).await?;
    if let Some(ours) = hashes.get(&shipped)
        && head.get("hash") != Some(ours)
    {
        return Err(AnchorError::Edited { seq: shipped });
    }
    Ok(Matched {
        log_id: id,
        entries: verified.entries,
        shipped,
        compared,
        first_in_stream,
    })
}

/// Every shipped entry of log `id` against the file's hash at its seq.
async fn compare_stream(
    copy: &RedisCopy,
    id: &str,
    hashes: &BTreeMap<u64, String>,
    last_seq: u64,
) -> Result<(u64, Option<u64>), AnchorError> {
    let mut after = String::new();
    let mut compared = 0u64;
    let mut first = None;
    // Shipped entries the file lacks, and the runs shipped records removed:
    // a removal counts only if its record was shipped too (a record
    // appended to the file afterwards explains nothing).
    let mut missing = Vec::new();
    let mut removed: Vec<ExpiredRange> = Vec::new();
    loop {
        let page = copy.fleet_page(&after, PAGE).await.map_err(AnchorError::Redis)?;
        for shipped in page.iter().filter(|s| s.log_id == id) {
            let seq = shipped.seq;
            if crate::verify::is_expiry_record(shipped.line.as_bytes())
                && let Ok(record) = serde_json::from_str::<serde_json::Value>(&shipped.line)
            {
                removed.extend(
                    serde_json::from_value::<Vec<ExpiredRange>>(record["ranges"].clone()).unwrap_or_default(),
                );
            }
            match hashes.get(&seq) {
                Some(ours) if *ours == shipped.hash => {}
                Some(_) => return Err(AnchorError::Edited { seq }),
                None if seq > last_seq => {
                    return Err(AnchorError::Truncated {
                        entries: last_seq,
                        shipped: seq,
                    });
                }
                None => {
                    missing.push(seq);
                    continue;
                }
            }
            first.get_or_insert(seq);
            compared += 1;
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after.clone_from(&last.stream_id),
            _ => break,
        }
    }
    match missing
        .into_iter()
        .find(|seq| !removed.iter().any(|r| (r.first_seq..=r.last_seq).contains(seq)))
    {
        Some(seq) => Err(AnchorError::Deleted { seq }),
        None => Ok((compared, first)),
    }
}

/// The logs the anchor holds, for a message: `id (replica, up to seq N)`.
async fn known_logs(copy: &RedisCopy) -> Result<String, AnchorError> {
    let ids = copy.log_ids().await.map_err(AnchorError::Redis)?;
    if ids.is_empty() {
        return Ok("none".into());
    }
    let mut known = Vec::new();
    for id in ids {
        let head = copy.head(&id).await.map_err(AnchorError::Redis)?;
        let replica = head.get("replica").map_or("?", String::as_str);
        let seq = head.get("seq").map_or("?", String::as_str);
        known.push(format!("{id} ({replica}, up to seq {seq})"));
    }
    Ok(known.join(", "))
}

/// The hash of every entry of the log, by seq.
fn line_hashes(path: &Path) -> std::io::Result<BTreeMap<u64, String>> {
    let mut lines = crate::segment::Lines::open(path)?;
    let mut hashes = BTreeMap::new();
    let mut buf = Vec::new();
    while lines.next_line(&mut buf)? {
        // The writer puts `seq` first; a line rewritten by someone else
        // may not.
        let seq = crate::segment::seq_of(&buf).or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&buf)
                .ok()?
                .get("seq")?
                .as_u64()
        });
        if let Some(seq) = seq {
            hashes.insert(seq, line_hash(&buf));
        }
    }
    Ok(hashes)
}
