//! Checks an audit log's hash chain, across its segments
//! ([`crate::segment`]), telling entries removed by retention
//! ([`crate::retention`]) from tampering.
//!
//! Two passes: the first collects the `audit_expired` records (they are in
//! the chain themselves, so forging one means rewriting the chain from it
//! on, which the anchor sees); the second walks the chain. Where a line's
//! `prev` is not the previous line's hash, the gap between them must be
//! exactly what the records say was removed, ending at the entry whose hash
//! the line holds.

use crate::event::ExpiredRange;
use crate::segment::Lines;
use crate::{GENESIS, line_hash};
use std::collections::BTreeMap;
use std::path::Path;

/// Where and why the chain is broken.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The entry with seq `line` (its line number while nothing was
    /// removed) does not continue the chain.
    #[error("line {line} (in {file}): {reason}")]
    Broken {
        /// The first broken entry's seq.
        line: u64,
        /// The segment holding it.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// What a verified log holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Entries present.
    pub entries: u64,
    /// The last entry's seq (0: none).
    pub last_seq: u64,
    /// The last entry's hash.
    pub last_hash: String,
    /// Files read (sealed segments and the current one).
    pub files: usize,
    /// Runs of entries removed by retention, as their records say: first
    /// and last seq.
    pub expired: Vec<(u64, u64)>,
}

/// Verifies the chain of the log at `path` (and its sealed segments);
/// returns the number of entries present.
pub fn verify(path: &Path) -> Result<u64, VerifyError> {
    verify_report(path).map(|v| v.entries)
}

/// [`verify`], with what it found.
pub fn verify_report(path: &Path) -> Result<Verified, VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.display().to_string(),
        source,
    };
    let files = crate::segment::files(path).map_err(io)?;
    let records = expiry_records(files.clone()).map_err(io)?;
    let mut lines = Lines::open_files(files.clone()).map_err(io)?;
    let mut prev = GENESIS.to_owned();
    let mut last_seq = 0u64;
    let mut entries = 0u64;
    let mut expired = Vec::new();
    let mut buf = Vec::new();
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    // The file the previous line came from, which a cut link may blame.
    let mut prev_file = String::new();
    while lines.next_line(&mut buf).map_err(io)? {
        let file = name(lines.file());
        let broken_in = |line: u64, file: &str, reason: &str| VerifyError::Broken {
            line,
            file: file.to_owned(),
            reason: reason.to_owned(),
        };
        let broken = |line: u64, reason: &str| broken_in(line, &file, reason);
        let value: serde_json::Value =
            serde_json::from_slice(&buf).map_err(|_| broken(last_seq + 1, "not a JSON object"))?;
        let seq = value["seq"]
            .as_u64()
            .ok_or_else(|| broken(last_seq + 1, "no seq"))?;
        let linked = value["prev"].as_str();
        if seq <= last_seq {
            return Err(broken(seq, "seq is out of order"));
        }
        if seq == last_seq + 1 {
            if linked != Some(prev.as_str()) {
                // The link between the previous line and this one is cut:
                // the previous line was edited, or lines after it were
                // removed or reordered. Name the earliest line at fault.
                return Err(match last_seq {
                    0 => broken(
                        1,
                        "prev is not the genesis hash: lines were removed from the start",
                    ),
                    n => broken_in(
                        n,
                        &prev_file,
                        &format!(
                            "its hash does not match the prev recorded by line {seq}: it was edited, or lines after it were removed or reordered"
                        ),
                    ),
                });
            }
        } else {
            let gap = (last_seq + 1, seq - 1);
            if !covered(&records, gap, linked.unwrap_or_default()) {
                return Err(broken(
                    seq,
                    &format!(
                        "entries {} to {} are missing and no audit_expired record removed them: they were deleted",
                        gap.0, gap.1
                    ),
                ));
            }
            expired.push(gap);
        }
        prev = line_hash(&buf);
        last_seq = seq;
        entries += 1;
        prev_file = file;
    }
    Ok(Verified {
        entries,
        last_seq,
        last_hash: prev,
        files: files.len(),
        expired,
    })
}

/// Removed runs by first seq: (last seq, last hash).
type Records = BTreeMap<u64, Vec<(u64, String)>>;

/// The seqs the log's (linked) `audit_expired` records say were removed:
/// a test for one seq.
pub(crate) fn removed_by_records(current: &Path) -> std::io::Result<impl Fn(u64) -> bool> {
    let records = expiry_records(crate::segment::files(current)?)?;
    Ok(move |seq: u64| {
        records
            .range(..=seq)
            .any(|(_, runs)| runs.iter().any(|(last, _)| seq <= *last))
    })
}

/// Every run the log's `audit_expired` entries say was removed.
///
/// Only a record that is itself linked to the entry just before it (seq
/// one more, `prev` its hash) counts, and only for runs before it: a line
/// planted in a gap to explain that gap explains nothing. (Retention never
/// removes the entry a record would follow: see [`crate::retention`].)
fn expiry_records(files: Vec<std::path::PathBuf>) -> std::io::Result<Records> {
    let mut records = Records::new();
    let mut lines = Lines::open_files(files)?;
    let mut buf = Vec::new();
    // The line before, hashed only when a record follows it.
    let mut before: Option<Vec<u8>> = None;
    let mut last_seq = 0u64;
    while lines.next_line(&mut buf)? {
        // The writer puts `seq` first; a line written by someone else may not.
        let seq = crate::segment::seq_of(&buf)
            .or_else(|| serde_json::from_slice::<serde_json::Value>(&buf).ok()?["seq"].as_u64())
            .unwrap_or(0);
        let hash_before = || before.as_deref().map_or_else(|| GENESIS.to_owned(), line_hash);
        // Cheap test first: most lines are not records.
        if is_expiry_record(&buf)
            && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&buf)
            && seq == last_seq + 1
            && value["prev"].as_str() == Some(hash_before().as_str())
        {
            let ranges: Vec<ExpiredRange> =
                serde_json::from_value(value["ranges"].clone()).unwrap_or_default();
            for r in ranges
                .into_iter()
                .filter(|r| r.first_seq <= r.last_seq && r.last_seq < seq)
            {
                records
                    .entry(r.first_seq)
                    .or_default()
                    .push((r.last_seq, r.last_hash));
            }
        }
        last_seq = seq;
        before = Some(std::mem::take(&mut buf));
    }
    Ok(records)
}

/// Whether `gap` (first and last missing seq) is exactly runs the records
/// removed, one after another, the last ending with the hash `linked`.
fn covered(records: &Records, gap: (u64, u64), linked: &str) -> bool {
    let mut reachable = vec![gap.0];
    let mut seen = std::collections::HashSet::new();
    while let Some(at) = reachable.pop() {
        if !seen.insert(at) {
            continue;
        }
        for (last, hash) in records.get(&at).into_iter().flatten() {
            if *last == gap.1 && hash == linked {
                return true;
            }
            if *last < gap.1 {
                reachable.push(last + 1);
            }
        }
    }
    false
}

/// Whether `line` is an `audit_expired` entry, by its text (cheap: most
/// lines are not, and are not parsed to find out).
pub(crate) fn is_expiry_record(line: &[u8]) -> bool {
    const RECORD: &[u8] = b"\"event\":\"audit_expired\"";
    line.windows(RECORD.len()).any(|w| w == RECORD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditLog, Event};

    #[tokio::test]
    async fn an_edited_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for n in 0..3 {
            let event = Event::ApiKeyRevoke {
                key_id: format!("key_{n}"),
                name: "n".into(),
            };
            log.append("tester", event).await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("key_1", "key_9", 1)).unwrap();
        match verify(&path).unwrap_err() {
            VerifyError::Broken { line, .. } => assert_eq!(line, 2),
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn a_record_planted_in_the_gap_it_explains_is_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for n in 0..10 {
            let event = Event::ApiKeyRevoke {
                key_id: format!("key_{n}"),
                name: "n".into(),
            };
            log.append("tester", event).await.unwrap();
        }
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let hash = |seq: usize| line_hash(lines[seq - 1].as_bytes());
        // Entries 4 to 8 deleted; in their place, seq 6, a record chained
        // to 5 that explains 4–5 and 7–8.
        let forged = serde_json::json!({
            "seq": 6, "ts_ms": 1, "prev": hash(5), "actor": "valet", "event": "audit_expired",
            "ranges": [
                {"first_seq": 4, "last_seq": 5, "last_hash": hash(5)},
                {"first_seq": 7, "last_seq": 8, "last_hash": hash(8)},
            ],
            "segments": [],
        });
        let mut tampered: Vec<String> = lines[..3].iter().map(|l| (*l).to_owned()).collect();
        tampered.push(forged.to_string());
        tampered.extend(lines[8..].iter().map(|l| (*l).to_owned()));
        std::fs::write(&path, tampered.join("\n") + "\n").unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("no audit_expired record removed them"), "{err}");
    }

    #[test]
    fn a_gap_needs_records_that_end_at_its_hash() {
        let mut records = Records::new();
        records.insert(1, vec![(10, "h10".into())]);
        records.insert(11, vec![(20, "h20".into())]);
        assert!(covered(&records, (1, 10), "h10"));
        assert!(covered(&records, (1, 20), "h20"), "adjacent runs chain");
        assert!(covered(&records, (11, 20), "h20"));
        assert!(!covered(&records, (1, 20), "h10"), "wrong hash");
        assert!(!covered(&records, (1, 15), "h20"), "a run that ends elsewhere");
        assert!(!covered(&records, (2, 10), "h10"), "a run that starts elsewhere");
        assert!(!covered(&records, (21, 30), "h30"), "no record");
    }
}
