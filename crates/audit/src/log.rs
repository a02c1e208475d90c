//! The audit writer: entries are appended by the caller's own task, in
//! order, under one lock; one sync thread makes them durable in groups.
//!
//! Why written inline: an append is a `write(2)` into the page cache, a few
//! microseconds; handing each entry to a writer thread and back cost two
//! thread wake-ups per call, more than the write. Why a sync thread:
//! `fdatasync` blocks for a disk round trip and must not stall the runtime.
//! Why group commit: while one `fdatasync` runs, later entries pile up and
//! the next one covers them all, so under load there is one per batch.
//!
//! An entry is *written* once [`AuditLog::append_written`] returns (it
//! survives the process being killed) and *durable* once [`Written::durable`]
//! resolves (it survives power loss). [`Durability`] says which of the two a
//! call waits for, and when.

use crate::event::Event;
use crate::{GENESIS, line_hash};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// With [`Durability::Os`], the longest the sync thread waits between two
/// fsyncs while entries keep coming (a power loss may lose this much); a
/// caller waiting for durability (an admin change) cuts the wait short. In
/// the other modes it syncs as soon as the last fsync returns.
pub const OS_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// When a call's credential lease entry must be on disk (`[audit]
/// durability`). Admin changes are always durable before they are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Durable (fsync'd) before the credential is used: survives power loss
    /// even for a call whose answer never left. Costs one fsync of latency
    /// before every vendor request.
    BeforeSend,
    /// Written before the credential is used; the caller's answer is
    /// released only once the entry is durable. The fsync overlaps the
    /// vendor round trip, and no caller sees a success that is not durably
    /// audited.
    #[default]
    BeforeAnswer,
    /// Written before the credential is used, made durable in the
    /// background: survives a crash of Valet, not of the machine.
    Os,
}

impl Durability {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::BeforeSend => "before_send",
            Durability::BeforeAnswer => "before_answer",
            Durability::Os => "os",
        }
    }
}

/// Why an entry was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// Opening or recovering the file failed.
    #[error("audit log {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing or syncing the entry failed; it is not (durably) in the log.
    #[error("audit write failed: {0}")]
    Write(String),
    /// The writer has stopped.
    #[error("audit writer stopped")]
    Closed,
}

/// A handle to the audit log; cheap to clone. When the last handle is
/// dropped, the sync thread makes the rest durable and stops.
#[derive(Debug, Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
    _open: Arc<Open>,
}

/// An entry in the file, not yet known to be durable.
#[derive(Debug)]
#[must_use = "an entry is only durable once `durable` resolves"]
pub struct Written {
    seq: u64,
    synced: watch::Receiver<Synced>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    tail: Mutex<Tail>,
    /// Wakes the sync thread when it waits for entries.
    wake: Condvar,
    synced: watch::Sender<Synced>,
    /// The pause between fsyncs ([`OS_SYNC_INTERVAL`] or none).
    pause: std::time::Duration,
    /// When segments are sealed.
    segmenting: Segmenting,
    /// Signs the index of sealed segments ([`crate::index`]), if given.
    index_key: Option<crate::index::IndexKey>,
    /// Held while the index is rewritten (by the sync thread after a seal,
    /// by retention after a run), so neither loses the other's change.
    index_lock: Mutex<()>,
}

/// A segment sealed (renamed) but not yet made durable and indexed.
#[derive(Debug)]
struct Sealed {
    file: Arc<File>,
    listed: crate::index::Listed,
}

/// When the current segment is sealed and a new one started
/// ([`crate::segment`]); `0` turns a bound off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmenting {
    /// Seal once the current segment holds this many bytes.
    pub max_bytes: u64,
    /// Seal once the current segment's first entry is this old.
    pub max_age_ms: u64,
}

impl Default for Segmenting {
    /// 64 MiB or a day, whichever comes first.
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_age_ms: 86_400_000,
        }
    }
}

/// The end of the chain, owned by whoever holds the lock.
#[derive(Debug)]
struct Tail {
    /// The current segment (shared with the sync thread, which syncs
    /// whichever file is current when it starts an fsync).
    file: Arc<File>,
    len: u64,
    /// The current segment's first entry: its seq (its sealed name) and
    /// time; 0 while it has none.
    first_seq: u64,
    first_ms: u64,
    /// A seal could not rename the segment: entries go on to the same file,
    /// and no seal is tried again until a restart.
    seal_failed: bool,
    /// Segments sealed since the sync thread's last round, for it to make
    /// durable and list in the index.
    sealed: Vec<Sealed>,
    /// The last entry written.
    seq: u64,
    prev: String,
    /// Set when the file can no longer be trusted to extend the chain: a
    /// failed write that could not be cut off, or a failed fsync (after
    /// which the kernel may have dropped written pages). Every later write
    /// is refused; a restart recovers from what is on disk.
    poisoned: Option<String>,
    /// Why each [`Hold`] that refuses new entries does (a sink fell too
    /// far behind, `when_behind = "refuse"`), by sink; empty: none does.
    held: std::collections::BTreeMap<&'static str, String>,
    sync_waiting: bool,
    /// Someone waits for durability: the next fsync starts without a pause.
    hurry: bool,
    closing: bool,
}

/// What the sync thread has made durable.
#[derive(Debug, Clone, Default)]
struct Synced {
    seq: u64,
    failed: Option<Arc<str>>,
}

/// Tells the sync thread to finish once every handle is gone.
#[derive(Debug)]
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.lock().closing = true;
        self.0.wake.notify_one();
    }
}

#[derive(Serialize)]
struct Body<'a> {
    actor: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

impl AuditLog {
    /// Opens (creating with mode 0600) the log at `path` and starts its sync
    /// thread, which fsyncs as soon as there is something to sync. A partial
    /// last line — a write cut off by a crash, so no caller was told it
    /// succeeded — is cut off.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_for(path, Durability::BeforeSend)
    }

    /// [`AuditLog::open`] for calls that wait as `durability` says: with
    /// [`Durability::Os`] nobody waits on the call path, and the sync thread
    /// paces itself ([`OS_SYNC_INTERVAL`]).
    pub fn open_for(path: &Path, durability: Durability) -> Result<Self, AuditError> {
        Self::open_with(path, durability, Segmenting::default())
    }

    /// [`AuditLog::open_for`], sealing segments as `segmenting` says.
    pub fn open_with(
        path: &Path,
        durability: Durability,
        segmenting: Segmenting,
    ) -> Result<Self, AuditError> {
        Self::open_indexed(path, durability, segmenting, None)
    }

    /// [`AuditLog::open_with`], keeping the index of sealed segments
    /// signed with `index_key` ([`crate::index`]).
    pub fn open_indexed(
        path: &Path,
        durability: Durability,
        segmenting: Segmenting,
        index_key: Option<crate::index::IndexKey>,
    ) -> Result<Self, AuditError> {
        let pause = match durability {
            Durability::Os => OS_SYNC_INTERVAL,
            Durability::BeforeSend | Durability::BeforeAnswer => std::time::Duration::ZERO,
        };
        Self::open_paced(path, pause, segmenting, index_key)
    }

    fn open_paced(
        path: &Path,
        pause: std::time::Duration,
        segmenting: Segmenting,
        index_key: Option<crate::index::IndexKey>,
    ) -> Result<Self, AuditError> {
        let fail = |reason: String| AuditError::Open {
            path: path.to_owned(),
            reason,
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        // Make a newly created log's directory entry durable.
        sync_dir(path).map_err(|e| fail(e.to_string()))?;
        let tail = recover(path, &mut file).map_err(fail)?;
        // Keep the log's id while its first entry is there to give it:
        // retention may remove that entry later.
        crate::segment::log_id(path, true).map_err(|e| fail(e.to_string()))?;
        // A log sealed before it had an index gets one; segments sealed
        // just before a crash (the sync thread lists them) are added.
        if let Some(key) = &index_key
            && !crate::segment::sealed(path)
                .map_err(|e| fail(e.to_string()))?
                .is_empty()
            && let Err(e) = crate::index::catch_up(path, key)
        {
            tracing::error!(error = %e, "the audit index was not updated; `valet audit verify --config` reports it");
        }
        let (synced, _) = watch::channel(Synced {
            seq: tail.seq,
            failed: None,
        });
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            tail: Mutex::new(tail),
            wake: Condvar::new(),
            synced,
            pause,
            segmenting,
            index_key,
            index_lock: Mutex::new(()),
        });
        let syncer = shared.clone();
        std::thread::Builder::new()
            .name("valet-audit-sync".into())
            .spawn(move || syncer.sync_loop())
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            _open: Arc::new(Open(shared.clone())),
            shared,
        })
    }

    /// Whether entries can still be written: no failure has made the file
    /// untrustworthy since it was opened, and no [`Hold`] refuses them.
    pub fn writable(&self) -> bool {
        let tail = self.shared.lock();
        tail.poisoned.is_none() && tail.held.is_empty()
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// What is durable, as it changes: the last durable entry's seq. The
    /// sender goes when the log is closed (every handle dropped and the rest
    /// synced), which ends a reader waiting on it.
    pub fn durable_seqs(&self) -> DurableSeqs {
        DurableSeqs(self.shared.synced.subscribe())
    }

    /// The key the index of sealed segments is signed with, if any.
    pub fn index_key(&self) -> Option<&crate::index::IndexKey> {
        self.shared.index_key.as_ref()
    }

    /// Runs `change` on the index with no seal rewriting it meanwhile.
    pub(crate) fn with_index<T>(&self, change: impl FnOnce() -> T) -> T {
        let _index = self
            .shared
            .index_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        change()
    }

    /// A switch that refuses new entries while it is on, without keeping
    /// the log open.
    pub fn hold(&self) -> Hold {
        Hold(Arc::downgrade(&self.shared))
    }

    /// Appends one entry and waits until it is durable.
    pub async fn append(&self, actor: &str, event: Event) -> Result<(), AuditError> {
        self.append_written(actor, &event)?.durable().await
    }

    /// Appends one entry to the file and returns once it is written (in the
    /// OS's page cache: it survives the process, not yet the machine).
    pub fn append_written(&self, actor: &str, event: &Event) -> Result<Written, AuditError> {
        // Everything but the chain fields is formatted outside the lock.
        let body = serde_json::to_vec(&Body { actor, event }).expect("an entry serialises");
        let ts_ms = now_ms();
        let mut tail = self.shared.lock();
        if let Some(why) = tail.poisoned.as_ref().or(tail.held.values().next()) {
            return Err(AuditError::Write(why.clone()));
        }
        if tail.first_seq > 0 && !tail.seal_failed && self.shared.segment_full(&tail, ts_ms) {
            self.shared.seal(&mut tail);
            if let Some(why) = &tail.poisoned {
                return Err(AuditError::Write(why.clone()));
            }
        }
        let seq = tail.seq + 1;
        let mut line = Vec::with_capacity(body.len() + 128);
        line.extend_from_slice(
            format!("{{\"seq\":{seq},\"ts_ms\":{ts_ms},\"prev\":\"{}\",", tail.prev).as_bytes(),
        );
        line.extend_from_slice(&body[1..]); // `{"actor":…` without its `{`
        let hash = line_hash(&line);
        line.push(b'\n');
        if let Err(e) = (&*tail.file).write_all(&line) {
            tracing::error!(error = %e, "audit write failed; refusing the entry");
            let len = tail.len;
            if tail.file.set_len(len).is_err() && tail.file.metadata().is_ok_and(|m| m.is_file()) {
                tracing::error!("audit log could not be rolled back; refusing further writes");
                tail.poisoned =
                    Some("an earlier failed write could not be rolled back; restart to recover".into());
            }
            return Err(AuditError::Write(e.to_string()));
        }
        tail.len += line.len() as u64;
        if tail.first_seq == 0 {
            tail.first_seq = seq;
            tail.first_ms = ts_ms;
        }
        tail.seq = seq;
        tail.prev = hash;
        if tail.sync_waiting {
            tail.sync_waiting = false;
            self.shared.wake.notify_one();
        }
        drop(tail);
        Ok(Written {
            seq,
            synced: self.shared.synced.subscribe(),
            shared: self.shared.clone(),
        })
    }
}

/// The last durable entry's seq, as it changes ([`AuditLog::durable_seqs`]).
#[derive(Debug, Clone)]
pub struct DurableSeqs(watch::Receiver<Synced>);

impl DurableSeqs {
    /// The last durable seq now.
    pub fn now(&self) -> u64 {
        self.0.borrow().seq
    }

    /// Whether the log is closed (nothing more will become durable).
    pub fn closed(&self) -> bool {
        self.0.has_changed().is_err()
    }

    /// Waits until an entry after `seq` is durable and returns the last
    /// durable seq; `None` once the log is closed or its fsync failed.
    pub async fn after(&mut self, seq: u64) -> Option<u64> {
        let synced = self
            .0
            .wait_for(|s| s.seq > seq || s.failed.is_some())
            .await
            .ok()?;
        (synced.seq > seq).then_some(synced.seq)
    }
}

/// Refuses new entries while on ([`AuditLog::hold`]); holds only a weak
/// reference, so it does not keep a closed log alive.
#[derive(Debug, Clone)]
pub struct Hold(std::sync::Weak<Shared>);

impl Hold {
    /// Refuses every new entry with `why`, for `by`, until
    /// [`Hold::release`] for the same `by`.
    pub fn refuse(&self, by: &'static str, why: &str) {
        if let Some(shared) = self.0.upgrade() {
            shared.lock().held.insert(by, why.to_owned());
        }
    }

    /// Accepts entries again, as far as `by` is concerned.
    pub fn release(&self, by: &'static str) {
        if let Some(shared) = self.0.upgrade() {
            shared.lock().held.remove(by);
        }
    }
}

impl Written {
    /// Waits until the entry is durable (fsync'd with its group).
    pub async fn durable(mut self) -> Result<(), AuditError> {
        let seq = self.seq;
        if self.synced.borrow().seq < seq {
            self.shared.hurry();
        }
        let synced = self
            .synced
            .wait_for(|s| s.seq >= seq || s.failed.is_some())
            .await
            .map_err(|_| AuditError::Closed)?;
        match (&synced.failed, synced.seq >= seq) {
            (_, true) => Ok(()),
            (Some(why), false) => Err(AuditError::Write(why.to_string())),
            (None, false) => Err(AuditError::Closed),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the sync thread's pause: someone waits for durability.
    fn hurry(&self) {
        if self.pause.is_zero() {
            return;
        }
        let mut tail = self.lock();
        if !tail.hurry {
            tail.hurry = true;
            self.wake.notify_one();
        }
    }

    /// Whether the current segment is to be sealed before the next entry.
    fn segment_full(&self, tail: &Tail, now_ms: u64) -> bool {
        let s = self.segmenting;
        (s.max_bytes > 0 && tail.len >= s.max_bytes)
            || (s.max_age_ms > 0 && now_ms.saturating_sub(tail.first_ms) >= s.max_age_ms)
    }

    /// Seals the current segment: syncs it, renames it after its first
    /// entry's seq, and starts a new current segment. A seal that cannot
    /// rename leaves the entries going to the same file (logged); one that
    /// renamed but cannot create the new file refuses further writes (a
    /// restart recovers the chain from the sealed segment).
    fn seal(&self, tail: &mut Tail) {
        let sealed = crate::segment::sealed_name(&self.path, tail.first_seq);
        if let Err(e) = fs::rename(&self.path, &sealed) {
            tracing::error!(error = %e, "cannot seal the audit segment; writing on to the same file until a restart");
            tail.seal_failed = true;
            return;
        }
        let opened = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path);
        match opened {
            Ok(file) => {
                tracing::info!(sealed = %sealed.display(), first_seq = tail.first_seq, last_seq = tail.seq, "audit segment sealed");
                // The sync thread makes it durable (the sealed file, the
                // directory entries) and lists it in the index, off the
                // callers' path.
                tail.sealed.push(Sealed {
                    file: std::mem::replace(&mut tail.file, Arc::new(file)),
                    listed: crate::index::Listed {
                        file: sealed
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned(),
                        first_seq: tail.first_seq,
                        last_seq: tail.seq,
                        last_hash: tail.prev.clone(),
                    },
                });
                tail.len = 0;
                tail.first_seq = 0;
                tail.first_ms = 0;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a new audit segment; refusing further writes");
                tail.poisoned = Some(format!(
                    "cannot start a new audit segment ({e}); restart to recover"
                ));
            }
        }
    }

    /// Makes the segments sealed since the last round durable (their data,
    /// then the directory holding the renames) and lists them in the index.
    fn finish_seals(&self, sealed: Vec<Sealed>) -> std::io::Result<()> {
        if sealed.is_empty() {
            return Ok(());
        }
        for s in &sealed {
            s.file.sync_data()?;
        }
        sync_dir(&self.path)?;
        if let Some(key) = &self.index_key {
            let _index = self.index_lock.lock().unwrap_or_else(PoisonError::into_inner);
            let listed: Vec<_> = sealed.into_iter().map(|s| s.listed).collect();
            if let Err(e) = crate::index::update(&self.path, key, |segments| segments.extend(listed)) {
                tracing::error!(error = %e, "the audit index was not updated; `valet audit verify --config` reports it");
            }
        }
        Ok(())
    }

    /// Makes written entries durable, one `fdatasync` for everything
    /// written since the last, until the log is closed and fully synced.
    fn sync_loop(&self) {
        let mut synced = self.synced.borrow().seq;
        loop {
            if !self.pause.is_zero() {
                let tail = self.lock();
                let _ = self
                    .wake
                    .wait_timeout_while(tail, self.pause, |t| !t.hurry && !t.closing)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let (target, file, sealed) = {
                let mut tail = self.lock();
                while tail.seq == synced && tail.sealed.is_empty() && !tail.closing {
                    tail.sync_waiting = true;
                    tail = self.wake.wait(tail).unwrap_or_else(PoisonError::into_inner);
                }
                if tail.seq == synced && tail.sealed.is_empty() {
                    return; // closing, and nothing left to sync
                }
                // Whoever hurried waits for an entry this fsync covers.
                tail.hurry = false;
                // Entries up to `target` are in the segments sealed since
                // the last round and in the current one.
                (tail.seq, tail.file.clone(), std::mem::take(&mut tail.sealed))
            };
            if let Err(e) = self.finish_seals(sealed).and_then(|()| file.sync_data()) {
                let why = format!("audit fsync failed ({e}); restart to recover");
                tracing::error!(error = %e, "audit fsync failed; refusing further writes");
                self.lock().poisoned = Some(why.clone());
                self.synced.send_modify(|s| s.failed = Some(why.into()));
                return;
            }
            synced = target;
            self.synced.send_modify(|s| s.seq = target);
        }
    }
}

/// The time now, Unix milliseconds, as entries record it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Syncs the directory holding `path`, so a created or renamed entry in
/// it survives power loss.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => valet_durable::sync_dir(dir),
        None => Ok(()),
    }
}

/// Finds the last complete entry of the current segment (or, when it has
/// none — a new log, or a seal cut short after its rename — of the newest
/// sealed one); truncates a partial tail.
fn recover(path: &Path, file: &mut File) -> Result<Tail, String> {
    let (len, last) = last_line(file, true)?;
    let first = first_line(file)?;
    let last = match last {
        Some(line) => Some(line),
        None => match crate::segment::sealed(path).map_err(|e| e.to_string())?.pop() {
            Some((_, sealed)) => {
                let mut f = File::open(&sealed).map_err(|e| e.to_string())?;
                last_line(&mut f, false)?.1
            }
            None => None,
        },
    };
    let head = |line: &[u8]| -> Result<serde_json::Value, String> {
        serde_json::from_slice(line).map_err(|_| "an entry is not JSON; run `valet audit verify`".to_owned())
    };
    let (seq, prev) = match last {
        None => (0, GENESIS.to_owned()),
        Some(line) => {
            let seq = head(&line)?["seq"]
                .as_u64()
                .ok_or("last entry has no seq; run `valet audit verify`")?;
            (seq, line_hash(&line))
        }
    };
    let (first_seq, first_ms) = match first {
        None => (0, 0),
        Some(line) => {
            let v = head(&line)?;
            (v["seq"].as_u64().unwrap_or(0), v["ts_ms"].as_u64().unwrap_or(0))
        }
    };
    Ok(Tail {
        file: Arc::new(file.try_clone().map_err(|e| e.to_string())?),
        len,
        first_seq,
        first_ms,
        seal_failed: false,
        sealed: Vec::new(),
        seq,
        prev,
        poisoned: None,
        held: Default::default(),
        sync_waiting: false,
        hurry: false,
        closing: false,
    })
}

/// The file's length and its last whole line; with `cut`, a partial last
/// line (a write cut off by a crash: no caller was told it succeeded) is
/// cut off first.
fn last_line(file: &mut File, cut: bool) -> Result<(u64, Option<Vec<u8>>), String> {
    let (mut len, complete, last) = crate::segment::last_line(file).map_err(|e| e.to_string())?;
    if cut && complete < len {
        len = complete;
        tracing::warn!(
            kept_bytes = len,
            "audit log ended in a partial line; cutting it off"
        );
        file.set_len(len).map_err(|e| e.to_string())?;
    }
    Ok((len, last))
}

/// The file's first whole line, if it has one.
fn first_line(file: &mut File) -> Result<Option<Vec<u8>>, String> {
    crate::segment::first_line(file).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify;

    fn revoke(n: usize) -> Event {
        Event::ApiKeyRevoke {
            key_id: format!("key_{n}"),
            name: "n".into(),
        }
    }

    #[tokio::test]
    async fn concurrent_appends_form_one_chain_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let log = log.clone();
                tokio::spawn(async move { log.append("tester", revoke(n)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(verify(&path).unwrap(), 200);

        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.append("tester", revoke(200)).await.unwrap();
        assert_eq!(verify(&path).unwrap(), 201);
    }

    #[tokio::test]
    async fn written_entries_become_durable_in_order_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let written: Vec<Written> = (0..500)
            .map(|n| log.append_written("tester", &revoke(n)).unwrap())
            .collect();
        let seqs: Vec<u64> = written.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
        // Written is already in the file, before any fsync is awaited.
        assert_eq!(verify(&path).unwrap(), 500);
        for w in written {
            w.durable().await.unwrap();
        }
        // A handle dropped with entries not yet awaited still syncs them.
        let last = log.append_written("tester", &revoke(500)).unwrap();
        drop(log);
        last.durable().await.unwrap();
        assert_eq!(verify(&path).unwrap(), 501);
    }

    #[tokio::test]
    async fn a_caller_waiting_for_durability_cuts_the_pause_short() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // A pause no test would sit out: each append below returns only
        // because waiting for it ends the pause.
        let log = AuditLog::open_paced(
            &path,
            std::time::Duration::from_secs(3600),
            Segmenting::default(),
            None,
        )
        .unwrap();
        let appends = async {
            for n in 0..5 {
                log.append("tester", revoke(n)).await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), appends)
            .await
            .expect("durable without sitting out the pause");
        assert_eq!(verify(&path).unwrap(), 5);
    }

    #[tokio::test]
    async fn a_partial_tail_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.append("tester", revoke(1)).await.unwrap();
        drop(log);
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":2,\"ts_ms\":").unwrap();
        let log = AuditLog::open(&path).unwrap();
        log.append("tester", revoke(2)).await.unwrap();
        assert_eq!(verify(&path).unwrap(), 2);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_not_swallowed() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let log = AuditLog::open(Path::new("/dev/full")).unwrap();
        let err = log.append("tester", revoke(1)).await.unwrap_err();
        assert!(matches!(err, AuditError::Write(_)), "{err}");
    }
}
