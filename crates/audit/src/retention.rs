//! Retention by class: entries of sealed segments past their class's
//! retention ([`Class`], `[audit] retention_days`) are removed. A segment
//! left empty is deleted; one that still holds entries (a lifecycle entry
//! is kept for good) is rewritten without the others.
//!
//! In this order, so a crash at any point leaves a log `verify` accepts:
//! 1. the plan: which entries go, as runs of seqs, each with its last
//!    entry's hash;
//! 2. an `audit_expired` entry listing the runs and segments, appended and
//!    made durable (it is in the chain, so it cannot be forged without
//!    breaking it);
//! 3. each segment rewritten to a temporary file, synced, and renamed over
//!    the segment (or the segment deleted), then the directory synced.
//!
//! Killed between 2 and 3, the entries are still there: `verify` accepts
//! entries a record says were removed, and the next run removes them again.
//! The current segment is never touched: only sealed ones
//! ([`crate::segment`]).

use crate::event::{Class, ExpiredRange};
use crate::segment::{Lines, seq_of};
use crate::{AuditError, AuditLog, Event, line_hash};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// How long each class is kept; lifecycle entries always are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Security events.
    pub security_ms: u64,
    /// Per-record access.
    pub access_ms: u64,
    /// Operational changes.
    pub operational_ms: u64,
}

impl Default for Retention {
    /// The seeds' defaults: security 400 days, access and operational 90.
    fn default() -> Self {
        const DAY: u64 = 86_400_000;
        Self {
            security_ms: 400 * DAY,
            access_ms: 90 * DAY,
            operational_ms: 90 * DAY,
        }
    }
}

impl Retention {
    /// How long an entry of `class` is kept (`None`: for good).
    pub fn of(&self, class: Class) -> Option<u64> {
        match class {
            Class::Security => Some(self.security_ms),
            Class::Access => Some(self.access_ms),
            Class::Operational => Some(self.operational_ms),
            Class::Lifecycle => None,
        }
    }
}

/// Why a retention run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// A segment could not be read or rewritten.
    #[error("audit retention: {0}")]
    Io(String),
    /// The record of the removal could not be written; nothing was removed.
    #[error("audit retention: the record could not be written: {0}")]
    Audit(#[from] AuditError),
}

/// What one run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Entries removed.
    pub entries: u64,
    /// The runs removed.
    pub ranges: Vec<ExpiredRange>,
    /// Segments deleted.
    pub deleted: Vec<PathBuf>,
    /// Segments rewritten.
    pub compacted: Vec<PathBuf>,
}

/// A sealed segment's fate: whether it loses entries, and keeps any.
struct SegmentPlan {
    path: PathBuf,
    removes: bool,
    keeps: bool,
}

/// Removes what `retention` no longer keeps from the sealed segments of
/// `log`, as of `now_ms`; records it first (module docs).
pub async fn expire(log: &AuditLog, retention: Retention, now_ms: u64) -> Result<Expired, RetentionError> {
    let current = log.path().to_owned();
    let plan = tokio::task::spawn_blocking(move || plan(&current, retention, now_ms))
        .await
        .map_err(|e| RetentionError::Io(e.to_string()))??;
    let (segments, ranges, entries) = plan;
    if ranges.is_empty() {
        return Ok(Expired::default());
    }
    let names = segments
        .iter()
        .filter(|s| s.removes)
        .map(|s| {
            s.path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let record = Event::AuditExpired {
        ranges: ranges.clone(),
        segments: names,
    };
    log.append("valet", record).await?;
    let current = log.path().to_owned();
    let runs = ranges.clone();
    let key = log.index_key().cloned();
    let indexed = log.clone();
    let (deleted, compacted) = tokio::task::spawn_blocking(move || {
        let done = apply(&current, segments, &runs)?;
        if let Some(key) = key {
            indexed.with_index(|| reindex(&current, &key, &done.0, &done.1))?;
        }
        Ok::<_, RetentionError>(done)
    })
    .await
    .map_err(|e| RetentionError::Io(e.to_string()))??;
    tracing::info!(
        entries,
        deleted = deleted.len(),
        compacted = compacted.len(),
        "audit retention removed expired entries"
    );
    Ok(Expired {
        entries,
        ranges,
        deleted,
        compacted,
    })
}

/// Which entries of the sealed segments go: each segment's fate, the
/// removed runs (split at segment boundaries, so a run cut short by a
/// crash between two rewrites still matches a recorded run), and how many
/// entries they hold.
///
/// Two entries always stay, so every `audit_expired` record is linked to
/// the entry before it (what `verify` asks of a record): the one just
/// before each earlier record, and the newest sealed entry, which the
/// record this run appends may follow.
#[allow(clippy::type_complexity)]
fn plan(
    current: &Path,
    retention: Retention,
    now_ms: u64,
) -> Result<(Vec<SegmentPlan>, Vec<ExpiredRange>, u64), RetentionError> {
    let io = |e: std::io::Error| RetentionError::Io(e.to_string());
    // A rewrite a crash cut short left its temporary file: the segment
    // itself is whole (the rename never happened).
    for (_, path) in crate::segment::sealed(current).map_err(io)? {
        let mut tmp = path.into_os_string();
        tmp.push(".compacting");
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
    }
    let mut planner = Planner::default();
    for (_, path) in crate::segment::sealed(current).map_err(io)? {
        planner.segments.push(SegmentPlan {
            path: path.clone(),
            removes: false,
            keeps: false,
        });
        let mut lines = Lines::open_files(vec![path]).map_err(io)?;
        let mut buf = Vec::new();
        while lines.next_line(&mut buf).map_err(io)? {
            let seq = seq_of(&buf).ok_or_else(|| RetentionError::Io("a sealed entry has no seq".into()))?;
            let is_record = crate::verify::is_expiry_record(&buf);
            if is_record && let Some(before) = planner.pending.as_mut() {
                before.removable = false;
            }
            planner.commit();
            planner.pending = Some(Pending {
                seq,
                hash: line_hash(&buf),
                removable: !is_record && expired(&buf, retention, now_ms),
                segment: planner.segments.len() - 1,
            });
        }
    }
    // The newest sealed entry stays: this run's record may follow it.
    if let Some(last) = planner.pending.as_mut() {
        last.removable = false;
    }
    planner.commit();
    Ok((planner.segments, planner.ranges, planner.removed))
}

/// An entry whose fate waits for the next one (which may be a record).
struct Pending {
    seq: u64,
    hash: String,
    removable: bool,
    segment: usize,
}

/// The plan being built, one entry behind the read.
#[derive(Default)]
struct Planner {
    segments: Vec<SegmentPlan>,
    ranges: Vec<ExpiredRange>,
    removed: u64,
    pending: Option<Pending>,
    /// The entry before the pending one: its seq and segment, and whether
    /// it was removed (a run goes on only from a removed neighbour).
    last: Option<(u64, usize, bool)>,
}

impl Planner {
    /// Decides the pending entry.
    fn commit(&mut self) {
        let Some(p) = self.pending.take() else { return };
        let segment = &mut self.segments[p.segment];
        if p.removable {
            segment.removes = true;
            self.removed += 1;
            let continues =
                matches!(self.last, Some((seq, seg, true)) if seq + 1 == p.seq && seg == p.segment);
            match self.ranges.last_mut() {
                Some(run) if continues => {
                    run.last_seq = p.seq;
                    run.last_hash = p.hash;
                }
                _ => self.ranges.push(ExpiredRange {
                    first_seq: p.seq,
                    last_seq: p.seq,
                    last_hash: p.hash,
                }),
            }
        } else {
            segment.keeps = true;
        }
        self.last = Some((p.seq, p.segment, p.removable));
    }
}

/// The index without the deleted segments and with the compacted ones as
/// they are now.
fn reindex(
    current: &Path,
    key: &crate::index::IndexKey,
    deleted: &[PathBuf],
    compacted: &[PathBuf],
) -> Result<(), RetentionError> {
    let name = |p: &PathBuf| p.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let gone: Vec<String> = deleted.iter().map(name).collect();
    let mut now = Vec::new();
    for path in compacted {
        if let Some(listed) = crate::index::listing(path).map_err(|e| RetentionError::Io(e.to_string()))? {
            now.push(listed);
        }
    }
    crate::index::update(current, key, |segments| {
        segments.retain(|s| !gone.contains(&s.file));
        for s in segments.iter_mut() {
            if let Some(fresh) = now.iter().find(|n| n.file == s.file) {
                *s = fresh.clone();
            }
        }
    })
    .map_err(|e| RetentionError::Io(e.to_string()))
}

/// Whether the entry `line` is past its class's retention.
fn expired(line: &[u8], retention: Retention, now_ms: u64) -> bool {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        ts_ms: u64,
        #[serde(borrow)]
        event: std::borrow::Cow<'a, str>,
    }
    let Ok(head) = serde_json::from_slice::<Head<'_>>(line) else {
        return false; // never remove what cannot be read
    };
    retention
        .of(Class::of(&head.event))
        .is_some_and(|keep| head.ts_ms.saturating_add(keep) < now_ms)
}

/// Rewrites or deletes each segment that loses entries: without the
/// entries of the recorded `runs`, read again from the segment (so no
/// segment is held in memory).
fn apply(
    current: &Path,
    segments: Vec<SegmentPlan>,
    runs: &[ExpiredRange],
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), RetentionError> {
    let io = |e: std::io::Error| RetentionError::Io(e.to_string());
    // Runs are in seq order: the one that may hold `seq` is the last that
    // starts at or before it.
    let removed = |seq: u64| {
        let i = runs.partition_point(|r| r.first_seq <= seq);
        i > 0 && seq <= runs[i - 1].last_seq
    };
    let (mut deleted, mut compacted) = (Vec::new(), Vec::new());
    for segment in segments.into_iter().filter(|s| s.removes) {
        if !segment.keeps {
            std::fs::remove_file(&segment.path).map_err(io)?;
            deleted.push(segment.path);
            continue;
        }
        let mut tmp = segment.path.as_os_str().to_owned();
        tmp.push(".compacting");
        let tmp = PathBuf::from(tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let mut out = std::io::BufWriter::new(&mut file);
        let mut lines = Lines::open_files(vec![segment.path.clone()]).map_err(io)?;
        let mut buf = Vec::new();
        while lines.next_line(&mut buf).map_err(io)? {
            if seq_of(&buf).is_some_and(removed) {
                continue;
            }
            out.write_all(&buf).map_err(io)?;
            out.write_all(b"\n").map_err(io)?;
        }
        out.flush().map_err(io)?;
        drop(out);
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &segment.path).map_err(io)?;
        compacted.push(segment.path);
    }
    if let Some(dir) = current.parent().filter(|d| !d.as_os_str().is_empty()) {
        valet_durable::sync_dir(dir).map_err(io)?;
    }
    Ok((deleted, compacted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Segmenting;
    use crate::{Durability, verify, verify_report};

    const DAY: u64 = 86_400_000;

    fn lease(n: u64) -> Event {
        Event::CredentialLease {
            tenant: "acme".into(),
            vendor: "mock".into(),
            fingerprint: "fp".into(),
            reason: format!("r{n}"),
            request_id: format!("req-{n}"),
            scopes: None,
            source: None,
        }
    }

    fn revoke(n: u64) -> Event {
        Event::ApiKeyRevoke {
            key_id: format!("key_{n}"),
            name: "n".into(),
        }
    }

    fn offboard() -> Event {
        Event::TenantOffboard {
            tenant: "gone".into(),
            reason: "r".into(),
            deleted: vec![],
            retained: vec![],
            final_deletion_ms: 0,
        }
    }

    /// A log sealing a segment every ~600 bytes (three or four entries).
    fn small_segments(path: &Path) -> AuditLog {
        let segmenting = Segmenting {
            max_bytes: 600,
            max_age_ms: 0,
        };
        AuditLog::open_with(path, Durability::BeforeSend, segmenting).unwrap()
    }

    fn kinds(path: &Path) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        crate::query::scan(path, &crate::query::Filter::default(), |e| {
            out.push((e.seq, e.kind));
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        out
    }

    #[tokio::test]
    async fn segments_chain_across_seals_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = small_segments(&path);
        for n in 0..40 {
            log.append("tester", lease(n)).await.unwrap();
        }
        drop(log);
        let sealed = crate::segment::sealed(&path).unwrap();
        assert!(sealed.len() >= 8, "{} segments", sealed.len());
        assert_eq!(sealed[0].0, 1);
        assert_eq!(verify(&path).unwrap(), 40);
        // Reopened, the chain goes on from the current segment.
        let log = small_segments(&path);
        log.append("tester", revoke(40)).await.unwrap();
        assert_eq!(verify(&path).unwrap(), 41);
        let seqs: Vec<u64> = kinds(&path).iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=41).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_seal_cut_short_after_its_rename_recovers_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for n in 0..5 {
            log.append("tester", revoke(n)).await.unwrap();
        }
        drop(log);
        // Killed after the rename, before the new current segment.
        std::fs::rename(&path, crate::segment::sealed_name(&path, 1)).unwrap();
        let log = AuditLog::open(&path).unwrap();
        log.append("tester", revoke(5)).await.unwrap();
        assert_eq!(verify(&path).unwrap(), 6);
    }

    #[tokio::test]
    async fn expired_entries_go_lifecycle_stays_and_verify_reports_the_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = small_segments(&path);
        // Leases (access), revokes (security), one offboarding (lifecycle).
        for n in 0..30 {
            let event = match n % 10 {
                3 => revoke(n),
                7 if n == 17 => offboard(),
                _ => lease(n),
            };
            log.append("tester", event).await.unwrap();
        }
        let before = kinds(&path);
        let current_first = crate::segment::seq_of(
            std::fs::read(&path)
                .unwrap()
                .split(|b| *b == b'\n')
                .next()
                .unwrap(),
        )
        .unwrap();

        // 100 days on: access entries of sealed segments are past 90 days;
        // security (400) and lifecycle (for good) stay; so does everything
        // in the current segment.
        let now = crate::log::now_ms() + 100 * DAY;
        let expired = expire(&log, Retention::default(), now).await.unwrap();
        let after = kinds(&path);
        let gone: Vec<&(u64, String)> = before.iter().filter(|e| !after.contains(e)).collect();
        assert!(!gone.is_empty());
        for (seq, kind) in &gone {
            assert_eq!(kind, "credential_lease", "only access entries expire");
            assert!(*seq < current_first, "the current segment is never touched");
        }
        assert!(
            after.iter().any(|(seq, _)| *seq == current_first - 1),
            "the newest sealed entry stays, for the record to follow"
        );
        assert_eq!(
            after.last().unwrap().1,
            "audit_expired",
            "the removal is on the record"
        );
        assert_eq!(expired.entries as usize, gone.len());
        assert!(
            !expired.deleted.is_empty() && !expired.compacted.is_empty(),
            "{expired:?}"
        );

        let report = verify_report(&path).unwrap();
        assert_eq!(report.entries as usize, after.len());
        let gaps: u64 = report.expired.iter().map(|(a, b)| b - a + 1).sum();
        assert_eq!(gaps, expired.entries, "every gap is a recorded removal");

        // A second run removes nothing the first one left but the newest
        // sealed entry it had to keep and entries sealed since (the
        // record's append sealed the segment), and
        // the log still verifies; deleting a kept entry is not mistaken
        // for retention.
        let second = expire(&log, Retention::default(), now).await.unwrap();
        assert!(
            second.ranges.iter().all(|r| r.first_seq >= current_first - 1),
            "{second:?}"
        );
        assert!(verify(&path).is_ok());
        drop(log);
        // A kept entry deleted (its whole segment): not retention.
        let (_, segment) = crate::segment::sealed(&path).unwrap().remove(0);
        std::fs::remove_file(&segment).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("no audit_expired record removed them"), "{err}");
    }

    #[tokio::test]
    async fn a_run_cut_short_between_record_and_rewrite_leaves_a_valid_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = small_segments(&path);
        for n in 0..12 {
            log.append("tester", lease(n)).await.unwrap();
        }
        let now = crate::log::now_ms() + 100 * DAY;
        let current = log.path().to_owned();
        let (segments, ranges, _) = plan(&current, Retention::default(), now).unwrap();
        assert!(!ranges.is_empty());
        // The record landed; the rewrite did not (a temporary file is left).
        let record = Event::AuditExpired {
            ranges,
            segments: vec![],
        };
        log.append("valet", record).await.unwrap();
        let leftover = format!("{}.compacting", segments[0].path.display());
        std::fs::write(&leftover, "partial").unwrap();
        assert_eq!(
            verify(&path).unwrap(),
            13,
            "entries a record removed may still be there"
        );
        // The next run removes them and the leftover.
        let expired = expire(&log, Retention::default(), now).await.unwrap();
        assert!(expired.entries > 0);
        assert!(!Path::new(&leftover).exists());
        assert!(verify(&path).is_ok());
    }
}
